//! The worker's configuration: a TOML file (documented field by field in
//! `config/byok.example.toml`), plus optionally a directory of one TOML file per tenant.
//!
//! Loading parses each section into typed values (durations, sizes, URLs, tenant ids) and then
//! checks the whole, collecting **every** problem with the field, the reason and the fix, so that
//! `byok config check` reports them all at once and a bad config never starts the worker.
//! Secrets never sit in the TOML: a client secret comes from an environment variable or a file,
//! a certificate from a file with its password in an environment variable. Loading checks that
//! they are there, never reads them into the config, and never prints them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use url::Url;

use crate::dek::{DekLimits, InvalidDekLimits, MAX_MESSAGES_CEILING};
use crate::envelope::{Compression, DEFAULT_ZSTD_LEVEL};
pub use crate::tenant::TenantId;

/// Default Entra ID authority host (public cloud).
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com";

/// Host suffixes of Azure Key Vault endpoints (public and sovereign clouds, Private Link).
pub const KEY_VAULT_SUFFIXES: [&str; 5] = [
    ".vault.azure.net",
    ".privatelink.vaultcore.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".vault.microsoftazure.de",
];

/// Settings of the Kafka clients that the worker owns: setting them in a passthrough table would
/// break the delivery guarantee, so they are refused with the reason.
pub const OWNED_CONSUMER_SETTINGS: [(&str, &str); 8] = [
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    ("group.id", "set kafka.group_id instead"),
    (
        "enable.auto.commit",
        "the worker commits offsets itself, only after every record produced from them is acknowledged",
    ),
    (
        "enable.auto.offset.store",
        "the worker stores offsets itself, only after the producer acknowledged their records",
    ),
    (
        "isolation.level",
        "the worker reads read_committed; with delivery = \"exactly-once\" anything else would read aborted records",
    ),
    (
        "partition.assignment.strategy",
        "the worker uses cooperative-sticky so a rebalance drains only the partitions that move",
    ),
    (
        "group.protocol",
        "the worker relies on the classic group protocol's rebalance callbacks",
    ),
    (
        "enable.partition.eof",
        "the worker's consume loop sets this itself",
    ),
];

/// Producer settings the worker owns.
pub const OWNED_PRODUCER_SETTINGS: [(&str, &str); 6] = [
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    (
        "enable.idempotence",
        "the producer is always idempotent so retries never duplicate or reorder archive records",
    ),
    (
        "acks",
        "the producer always waits for acks=all before an offset is committed",
    ),
    (
        "transactional.id",
        "set kafka.delivery = \"exactly-once\"; the worker derives transactional ids itself",
    ),
    (
        "max.in.flight.requests.per.connection",
        "idempotence needs at most 5; the worker sets it",
    ),
    (
        "retries",
        "the producer retries until delivery.timeout.ms; the worker relies on that",
    ),
];

/// How sure a problem is to stop the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The worker will not start.
    Error,
    /// The worker starts, but this is probably not what was meant, or is unsafe.
    Warning,
}

/// One thing wrong with a configuration: which field, why, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// Where: `file: section.field` or `file: tenants[2].vault_url`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
    /// What to do about it.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{tag}: {}: {}", self.field, self.reason)?;
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// Every problem, errors first.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let errors = self
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .count();
        writeln!(f, "the configuration has {errors} error(s):")?;
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The result of checking a configuration: the config when it has no errors, and every problem.
#[derive(Debug)]
pub struct Checked {
    /// The configuration, if it has no errors.
    pub config: Option<Config>,
    /// Errors and warnings.
    pub problems: Vec<Problem>,
}

/// A whole, checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was loaded from.
    pub source: PathBuf,
    /// Kafka topics and clients.
    pub kafka: KafkaConfig,
    /// Batching.
    pub batch: BatchConfig,
    /// DEK limits and compression.
    pub dek: DekConfig,
    /// Key Vault access.
    pub keys: KeysConfig,
    /// Metrics and health endpoint.
    pub metrics: MetricsConfig,
    /// Process settings.
    pub worker: WorkerConfig,
    /// The operator's quarantine key.
    pub quarantine: KeyVaultKey,
    /// Tenants by id, in id order.
    pub tenants: BTreeMap<TenantId, Tenant>,
}

/// Kafka settings.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `host:port[,host:port…]`.
    pub bootstrap_servers: String,
    /// Consumer group id.
    pub group_id: String,
    /// Topics of captured plaintext messages.
    pub input_topics: Vec<String>,
    /// Archive topic, or a template with `{tenant}`.
    pub archive_topic: TopicTemplate,
    /// DEK registry topic (compacted).
    pub registry_topic: String,
    /// Tenants' last known public keys (compacted).
    pub keks_topic: String,
    /// Quarantine topic.
    pub quarantine_topic: String,
    /// Delivery guarantee.
    pub delivery: Delivery,
    /// Copy the source record's headers onto archive records.
    pub copy_source_headers: bool,
    /// librdkafka consumer passthrough.
    pub consumer: BTreeMap<String, String>,
    /// librdkafka producer passthrough.
    pub producer: BTreeMap<String, String>,
}

/// The archive topic: one name, or a template where `{tenant}` is replaced by the tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(String);

impl TopicTemplate {
    /// A topic name, or a template with `{tenant}`, checked for what Kafka allows in a name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let name = text.replace("{tenant}", "t");
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.contains(['{', '}']) {
            Err(format!("{text:?} has a placeholder other than {{tenant}}"))
        } else if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
            Err(format!(
                "{text:?} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')"
            ))
        } else if let Some(c) = name.chars().find(|c| !legal(*c)) {
            Err(format!(
                "topic {text:?} has {c:?}, which Kafka does not allow (letters, digits, '.', '_', '-')"
            ))
        } else {
            Ok(Self(text.to_owned()))
        }
    }

    /// The topic for a tenant.
    pub fn topic_for(&self, tenant: &TenantId) -> String {
        self.0.replace("{tenant}", tenant.as_str())
    }
    /// Whether the name depends on the tenant.
    pub fn is_per_tenant(&self) -> bool {
        self.0.contains("{tenant}")
    }
    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Offsets committed after outputs are acknowledged; duplicates carry the same `byok.src`.
    AtLeastOnce,
    /// Outputs and offsets in one Kafka transaction (needs a broker with transactions).
    ExactlyOnce,
}

/// Batching of captured messages.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most records in one batch.
    pub max_records: NonZeroUsize,
    /// Most value bytes in one batch.
    pub max_bytes: u64,
    /// Longest a batch waits to fill.
    pub max_wait: Duration,
    /// Batches with at least this many value bytes are sealed on the sealing pool.
    pub parallel_min_bytes: u64,
    /// Threads of the sealing pool.
    pub seal_threads: NonZeroUsize,
    /// Batches produced and not yet acknowledged at once (offsets are committed in order as
    /// each is acknowledged); 1 with exactly-once delivery.
    pub in_flight: NonZeroUsize,
}

/// DEK limits and compression.
#[derive(Debug, Clone, Copy)]
pub struct DekConfig {
    /// Retirement limits.
    pub limits: DekLimits,
    /// When to zstd-compress before sealing.
    pub compression: Compression,
}

/// Key Vault access shared by all tenants.
#[derive(Debug, Clone)]
pub struct KeysConfig {
    /// How often each tenant's key state is read (`GET key`).
    pub check_interval: Duration,
    /// Most Key Vault requests per vault per 10 s (Key Vault's own budget is higher).
    pub vault_requests_per_10s: u32,
    /// Most unwrapped DEKs kept in memory.
    pub unwrapped_cache_entries: usize,
    /// How long an unwrapped DEK stays in memory unused.
    pub unwrapped_cache_ttl: Duration,
    /// Extra CA certificate (PEM) to trust for vault and Entra endpoints, e.g. the emulator's.
    pub ca_file: Option<PathBuf>,
    /// Host names resolved to fixed addresses instead of DNS (like curl --resolve), for the
    /// local emulator or split-horizon DNS.
    pub resolve: BTreeMap<String, std::net::IpAddr>,
    /// The worker drains the quarantine into the archive by itself when a tenant's key comes
    /// back (one member of the group does: the one assigned partition 0 of the first input
    /// topic), as `byok replay --quarantine` does.
    pub drain_on_restore: bool,
}

/// Metrics and health endpoint.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Address `/metrics` and `/health` listen on.
    pub listen: SocketAddr,
}

/// Process settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This process's id in registry records; default `<hostname>-<pid>`.
    pub id: Option<String>,
    /// How long SIGTERM waits for in-flight batches to be produced and committed.
    pub drain_deadline: Duration,
    /// How long the worker may go without completing a batch while records wait on its
    /// partitions before `/live` turns 503 (liveness is progress).
    pub stall_timeout: Duration,
    /// Log format.
    pub log_format: LogFormat,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// One tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant id.
    pub id: TenantId,
    /// Whether BYOK is enabled (off: its messages go to the quarantine, reason `byok-disabled`).
    pub byok_enabled: bool,
    /// Its key, required when BYOK is enabled.
    pub key: Option<KeyVaultKey>,
    /// Where it was defined (config file or a file of the tenants directory).
    pub defined_in: PathBuf,
}

/// An RSA key in Azure Key Vault and the Entra ID app that may use it.
#[derive(Debug, Clone)]
pub struct KeyVaultKey {
    /// `https://<vault>.vault.azure.net` or the Private Link host.
    pub vault_url: Url,
    /// Key name.
    pub key_name: String,
    /// Pinned key version; latest enabled version when absent.
    pub key_version: Option<String>,
    /// Entra ID (directory) tenant id.
    pub entra_tenant_id: String,
    /// Application (client) id of the app registration.
    pub client_id: String,
    /// How the app authenticates.
    pub credential: Credential,
    /// Entra ID authority host.
    pub authority_host: Url,
    /// Extra CA to trust for this vault (overrides `keys.ca_file`).
    pub ca_file: Option<PathBuf>,
}

impl KeyVaultKey {
    /// Whether the vault URL is a Private Link host.
    pub fn is_private_link(&self) -> bool {
        self.vault_url
            .host_str()
            .is_some_and(|h| h.ends_with(".privatelink.vaultcore.azure.net"))
    }
}

/// How an app registration authenticates to Entra ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A certificate uploaded to the app registration (recommended by the setup guide).
    Certificate {
        /// The certificate and its private key.
        path: PathBuf,
        /// The next certificate during a rotation (same format and password): the credential
        /// uses the newest certificate Entra ID accepts.
        next: Option<PathBuf>,
        /// PEM or PKCS#12.
        format: CertFormat,
        /// Where the PKCS#12 or encrypted-PEM password comes from.
        password: Option<SecretSource>,
    },
    /// A client secret.
    ClientSecret(SecretSource),
}

/// Certificate file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertFormat {
    /// PEM: certificate and private key in one file.
    Pem,
    /// PKCS#12 (`.pfx`, `.p12`).
    Pfx,
}

/// Where a secret is read from. The secret itself never sits in the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file (trailing newline ignored).
    File(PathBuf),
}

/// A secret could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The environment variable is unset or empty.
    #[error("environment variable {0} is not set (or empty)")]
    EnvMissing(String),
    /// The file cannot be read or is empty.
    #[error("secret file {path} cannot be read: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl SecretSource {
    /// Reads the secret.
    pub fn load(&self) -> Result<secrecy::SecretString, SecretError> {
        match self {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(v.into()),
                _ => Err(SecretError::EnvMissing(name.clone())),
            },
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.clone(),
                    reason: e.kind().to_string(),
                })?;
                let trimmed = text.trim_end_matches(['\r', '\n']);
                if trimmed.is_empty() {
                    return Err(SecretError::File {
                        path: path.clone(),
                        reason: "it is empty".into(),
                    });
                }
                Ok(trimmed.to_owned().into())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw sections: serde shapes of the TOML, each with its defaults.

const fn default_true() -> bool {
    true
}
fn default_group_id() -> String {
    "byok-pipeline".into()
}
fn default_input_topics() -> Vec<String> {
    vec!["capture.messages".into()]
}
fn default_archive_topic() -> String {
    "archive.messages".into()
}
fn default_registry_topic() -> String {
    "byok.deks".into()
}
fn default_keks_topic() -> String {
    "byok.keks".into()
}
fn default_quarantine_topic() -> String {
    "byok.quarantine".into()
}
const fn default_delivery() -> Delivery {
    Delivery::AtLeastOnce
}
const fn default_batch_max_records() -> usize {
    500
}
fn default_batch_max_bytes() -> Size {
    Size(1 << 20)
}
const fn default_batch_max_wait() -> Duration {
    Duration::from_millis(50)
}
const fn default_batch_in_flight() -> usize {
    4
}
fn default_parallel_min_bytes() -> Size {
    Size(4 << 20)
}
const fn default_dek_max_messages() -> u64 {
    DekLimits::DEFAULT_MAX_MESSAGES
}
fn default_dek_max_bytes() -> Size {
    Size(DekLimits::DEFAULT_MAX_BYTES)
}
const fn default_dek_max_age() -> Duration {
    DekLimits::DEFAULT_MAX_AGE
}
fn default_compress_min_size() -> Size {
    Size(2048)
}
const fn default_zstd_level() -> i32 {
    DEFAULT_ZSTD_LEVEL
}
const fn default_check_interval() -> Duration {
    Duration::from_secs(60)
}
const fn default_vault_requests_per_10s() -> u32 {
    200
}
const fn default_unwrapped_cache_entries() -> usize {
    100_000
}
const fn default_unwrapped_cache_ttl() -> Duration {
    Duration::from_secs(3600)
}
fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}
const fn default_drain_deadline() -> Duration {
    Duration::from_secs(30)
}
const fn default_stall_timeout() -> Duration {
    Duration::from_secs(120)
}
const fn default_log_format() -> LogFormat {
    LogFormat::Text
}

/// A byte size: an integer, or text such as "64 GiB" or "512 KiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Size(u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => u64::try_from(n)
                .map(Size)
                .map_err(|_| serde::de::Error::custom(format!("size {n} is negative"))),
            Raw::Text(t) => t
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|e| {
                    serde::de::Error::custom(format!(
                        "size {t:?} is not a byte size like \"64 GiB\" or 1048576 ({e})"
                    ))
                }),
        }
    }
}

/// A passthrough value: TOML strings, integers, floats and booleans become librdkafka strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum PassValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl PassValue {
    fn into_string(self) -> String {
        match self {
            PassValue::Text(s) => s,
            PassValue::Int(i) => i.to_string(),
            PassValue::Float(f) => f.to_string(),
            PassValue::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KafkaRaw {
    bootstrap_servers: String,
    #[serde(default = "default_group_id")]
    group_id: String,
    #[serde(default = "default_input_topics")]
    input_topics: Vec<String>,
    #[serde(default = "default_archive_topic")]
    archive_topic: String,
    #[serde(default = "default_registry_topic")]
    registry_topic: String,
    #[serde(default = "default_keks_topic")]
    keks_topic: String,
    #[serde(default = "default_quarantine_topic")]
    quarantine_topic: String,
    #[serde(default = "default_delivery")]
    delivery: Delivery,
    #[serde(default)]
    copy_source_headers: bool,
    #[serde(default)]
    consumer: BTreeMap<String, PassValue>,
    #[serde(default)]
    producer: BTreeMap<String, PassValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRaw {
    #[serde(default = "default_batch_max_records")]
    max_records: usize,
    #[serde(default = "default_batch_max_bytes")]
    max_bytes: Size,
    #[serde(default = "default_batch_max_wait", with = "humantime_serde")]
    max_wait: Duration,
    #[serde(default = "default_parallel_min_bytes")]
    parallel_min_bytes: Size,
    #[serde(default)]
    seal_threads: Option<usize>,
    #[serde(default = "default_batch_in_flight")]
    in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DekRaw {
    #[serde(default = "default_dek_max_messages")]
    max_messages: u64,
    #[serde(default = "default_dek_max_bytes")]
    max_bytes: Size,
    #[serde(default = "default_dek_max_age", with = "humantime_serde")]
    max_age: Duration,
    #[serde(default = "default_true")]
    compress: bool,
    #[serde(default = "default_compress_min_size")]
    compress_min_size: Size,
    #[serde(default = "default_zstd_level")]
    zstd_level: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysRaw {
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    check_interval: Duration,
    #[serde(default = "default_vault_requests_per_10s")]
    vault_requests_per_10s: u32,
    #[serde(default = "default_unwrapped_cache_entries")]
    unwrapped_cache_entries: usize,
    #[serde(default = "default_unwrapped_cache_ttl", with = "humantime_serde")]
    unwrapped_cache_ttl: Duration,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    resolve: BTreeMap<String, std::net::IpAddr>,
    #[serde(default = "default_true")]
    drain_on_restore: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsRaw {
    #[serde(default = "default_metrics_listen")]
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerRaw {
    #[serde(default)]
    id: Option<String>,
    #[serde(default = "default_drain_deadline", with = "humantime_serde")]
    drain_deadline: Duration,
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    stall_timeout: Duration,
    #[serde(default = "default_log_format")]
    log_format: LogFormat,
}

/// The Key Vault fields shared by a tenant and the quarantine key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRaw {
    vault_url: Option<String>,
    key_name: Option<String>,
    #[serde(default)]
    key_version: Option<String>,
    entra_tenant_id: Option<String>,
    client_id: Option<String>,
    credential: Option<CredentialRaw>,
    #[serde(default)]
    authority_host: Option<String>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
enum CredentialRaw {
    Certificate {
        path: PathBuf,
        #[serde(default)]
        next_path: Option<PathBuf>,
        #[serde(default)]
        format: Option<CertFormat>,
        #[serde(default)]
        password_env: Option<String>,
    },
    ClientSecret {
        #[serde(default)]
        env: Option<String>,
        #[serde(default)]
        file: Option<PathBuf>,
    },
}

// ---------------------------------------------------------------------------------------------
// Loading.

impl Config {
    /// Loads and checks a configuration file; any error refuses the whole configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let checked = Self::check(path);
        match checked.config {
            Some(c) => Ok(c),
            None => Err(ConfigError {
                problems: checked.problems,
            }),
        }
    }

    /// Checks a configuration file, collecting every problem.
    pub fn check(path: &Path) -> Checked {
        let mut l = Loader {
            problems: Vec::new(),
            file: path.display().to_string(),
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let config = l.load(path);
        let mut problems = l.problems;
        problems.sort_by_key(|p| p.severity);
        let has_errors = problems.iter().any(|p| p.severity == Severity::Error);
        Checked {
            config: if has_errors { None } else { config },
            problems,
        }
    }
}

struct Loader {
    problems: Vec<Problem>,
    /// File being read, for messages.
    file: String,
    /// Directory relative paths are resolved against.
    base: PathBuf,
}

const EXAMPLE: &str = "config/byok.example.toml";

impl Loader {
    fn error(
        &mut self,
        field: impl fmt::Display,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Error, field, reason, fix);
    }
    fn warn(
        &mut self,
        field: impl fmt::Display,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Warning, field, reason, fix);
    }
    fn push(
        &mut self,
        severity: Severity,
        field: impl fmt::Display,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity,
            field: format!("{}: {field}", self.file),
            reason: reason.into(),
            fix: fix.into(),
        });
    }

    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Deserializes one section, reporting its error against the section's name.
    fn section<T: DeserializeOwned>(
        &mut self,
        name: &str,
        value: Option<toml::Value>,
    ) -> Option<T> {
        let value = value.unwrap_or_else(|| toml::Value::Table(toml::Table::new()));
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = e.message().trim().to_owned();
                let fix = serde_fix(&msg, name);
                self.error(format!("[{name}]"), msg, fix);
                None
            }
        }
    }

    fn load(&mut self, path: &Path) -> Option<Config> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                self.error(
                    "file",
                    format!("cannot read the configuration: {e}"),
                    format!("pass the path of a TOML file such as {EXAMPLE}"),
                );
                return None;
            }
        };
        let mut table: toml::Table = match toml::from_str(&text) {
            Ok(t) => t,
            Err(e) => {
                let span = e
                    .span()
                    .map(|s| line_col(&text, s.start))
                    .map(|(l, c)| format!("line {l}, column {c}"))
                    .unwrap_or_else(|| "syntax".into());
                self.error(
                    span,
                    e.message().trim().to_owned(),
                    "fix the TOML syntax at that place",
                );
                return None;
            }
        };

        let kafka = match table.remove("kafka") {
            None => {
                self.error(
                    "[kafka]",
                    "the section is missing",
                    "add a [kafka] section with at least bootstrap_servers = \"host:9092\"",
                );
                None
            }
            some => self.section::<KafkaRaw>("kafka", some),
        };
        let batch = self.section::<BatchRaw>("batch", table.remove("batch"));
        let dek = self.section::<DekRaw>("dek", table.remove("dek"));
        let keys = self.section::<KeysRaw>("keys", table.remove("keys"));
        let metrics = self.section::<MetricsRaw>("metrics", table.remove("metrics"));
        let worker = self.section::<WorkerRaw>("worker", table.remove("worker"));
        let quarantine = match table.remove("quarantine") {
            None => {
                self.error(
                    "[quarantine]",
                    "the section is missing: records without a usable tenant key need the operator's quarantine key",
                    format!("add a [quarantine] section naming the operator's Key Vault key (see {EXAMPLE})"),
                );
                None
            }
            Some(v) => self
                .section::<KeyRaw>("quarantine", Some(v))
                .and_then(|raw| self.key("quarantine", raw)),
        };
        let tenants_dir = table.remove("tenants_dir");
        let tenants_value = table.remove("tenants");
        for (k, _) in table {
            self.error(
                k.as_str(),
                format!("unknown top-level key `{k}`"),
                format!(
                    "the top level has [kafka], [batch], [dek], [keys], [metrics], [worker], [quarantine], [[tenants]] and tenants_dir; see {EXAMPLE}"
                ),
            );
        }

        let kafka = kafka.and_then(|k| self.kafka(k));
        let batch = batch.and_then(|b| self.batch(b));
        let dek = dek.and_then(|d| self.dek(d));
        let keys = keys.and_then(|k| self.keys(k));
        let metrics = metrics.and_then(|m| self.metrics(m));
        let worker = worker.and_then(|w| self.worker(w));
        let tenants = self.tenants(tenants_value, tenants_dir);

        if let (Some(k), Some(t)) = (&kafka, &tenants) {
            self.cross_checks(k, t);
        }
        Some(Config {
            source: path.to_path_buf(),
            kafka: kafka?,
            batch: batch?,
            dek: dek?,
            keys: keys?,
            metrics: metrics?,
            worker: worker?,
            quarantine: quarantine?,
            tenants: tenants?,
        })
    }

    fn kafka(&mut self, raw: KafkaRaw) -> Option<KafkaConfig> {
        let before = self.problems.len();
        if raw.bootstrap_servers.trim().is_empty() {
            self.error(
                "kafka.bootstrap_servers",
                "is empty",
                "set it to host:port of one or more brokers, comma-separated",
            );
        } else {
            for server in raw.bootstrap_servers.split(',') {
                let server = server.trim();
                let ok = server
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok {
                    self.error(
                        "kafka.bootstrap_servers",
                        format!("{server:?} is not host:port"),
                        "write each broker as host:port, e.g. \"10.0.0.5:9092,10.0.0.6:9092\"",
                    );
                }
            }
        }
        if raw.group_id.trim().is_empty() {
            self.error(
                "kafka.group_id",
                "is empty",
                "name the consumer group all workers share, e.g. \"byok-pipeline\"",
            );
        }
        if raw.input_topics.is_empty() {
            self.error(
                "kafka.input_topics",
                "lists no topic",
                "list the topics captured messages arrive on, e.g. [\"capture.messages\"]",
            );
        }
        for (i, t) in raw.input_topics.iter().enumerate() {
            self.topic(&format!("kafka.input_topics[{i}]"), t);
        }
        let template = raw.archive_topic.replace("{tenant}", "t");
        if template.contains(['{', '}']) {
            self.error(
                "kafka.archive_topic",
                format!("{:?} has a placeholder other than {{tenant}}", raw.archive_topic),
                "use a fixed name such as \"archive.messages\" or a template such as \"archive.{tenant}\"",
            );
        } else {
            self.topic("kafka.archive_topic", &template);
        }
        self.topic("kafka.registry_topic", &raw.registry_topic);
        self.topic("kafka.keks_topic", &raw.keks_topic);
        self.topic("kafka.quarantine_topic", &raw.quarantine_topic);

        let outputs = [
            ("archive_topic", raw.archive_topic.as_str()),
            ("registry_topic", raw.registry_topic.as_str()),
            ("keks_topic", raw.keks_topic.as_str()),
            ("quarantine_topic", raw.quarantine_topic.as_str()),
        ];
        for (i, (a, ta)) in outputs.iter().enumerate() {
            for (b, tb) in &outputs[i + 1..] {
                if ta == tb {
                    self.error(
                        format!("kafka.{b}"),
                        format!("is the same topic as kafka.{a} ({ta:?})"),
                        "give the archive, registry, keks and quarantine topics distinct names",
                    );
                }
            }
            if raw.input_topics.iter().any(|t| t == ta) {
                self.error(
                    format!("kafka.{a}"),
                    format!("{ta:?} is also an input topic: the worker would read its own output"),
                    "use distinct input and output topics",
                );
            }
        }
        if raw.delivery == Delivery::ExactlyOnce {
            self.warn(
                "kafka.delivery",
                "exactly-once needs a broker with transactions (Apache Kafka >= 2.5); brokers without EndTxn (e.g. Tansu 0.6) cannot commit",
                "keep \"at-least-once\" unless your brokers support transactions; readers drop duplicates by byok.src either way",
            );
        }
        let consumer = self.passthrough("kafka.consumer", raw.consumer, &OWNED_CONSUMER_SETTINGS);
        let producer = self.passthrough("kafka.producer", raw.producer, &OWNED_PRODUCER_SETTINGS);
        (!self.has_errors_since(before)).then_some(KafkaConfig {
            bootstrap_servers: raw.bootstrap_servers,
            group_id: raw.group_id,
            input_topics: raw.input_topics,
            archive_topic: TopicTemplate(raw.archive_topic),
            registry_topic: raw.registry_topic,
            keks_topic: raw.keks_topic,
            quarantine_topic: raw.quarantine_topic,
            delivery: raw.delivery,
            copy_source_headers: raw.copy_source_headers,
            consumer,
            producer,
        })
    }

    fn has_errors_since(&self, before: usize) -> bool {
        self.problems[before..]
            .iter()
            .any(|p| p.severity == Severity::Error)
    }

    fn topic(&mut self, field: &str, name: &str) {
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
            self.error(
                field,
                format!("{name:?} is not a Kafka topic name"),
                "use 1 to 249 characters of letters, digits, '.', '_' and '-'",
            );
        } else if let Some(c) = name.chars().find(|c| !legal(*c)) {
            self.error(
                field,
                format!("topic {name:?} has {c:?}, which Kafka does not allow"),
                "use only letters, digits, '.', '_' and '-'",
            );
        }
    }

    fn passthrough(
        &mut self,
        section: &str,
        raw: BTreeMap<String, PassValue>,
        owned: &[(&str, &str)],
    ) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in raw {
            if let Some((_, why)) = owned.iter().find(|(name, _)| *name == k) {
                self.error(
                    format!("{section}.\"{k}\""),
                    format!("`{k}` is owned by the worker: {why}"),
                    format!("remove `{k}` from [{section}]"),
                );
                continue;
            }
            out.insert(k, v.into_string());
        }
        out
    }

    fn batch(&mut self, raw: BatchRaw) -> Option<BatchConfig> {
        let before = self.problems.len();
        let max_records = NonZeroUsize::new(raw.max_records);
        if max_records.is_none() {
            self.error(
                "batch.max_records",
                "is 0",
                "set at least 1; the default is 500",
            );
        }
        if raw.max_bytes.0 < 1024 {
            self.error(
                "batch.max_bytes",
                format!("{} bytes is too small to batch anything", raw.max_bytes.0),
                "set at least \"1 KiB\"; the default is \"1 MiB\"",
            );
        }
        if raw.max_wait.is_zero() || raw.max_wait > Duration::from_secs(60) {
            self.error(
                "batch.max_wait",
                format!(
                    "{} is outside 1ms..60s",
                    humantime::format_duration(raw.max_wait)
                ),
                "set a short wait such as \"50ms\" (the default)",
            );
        }
        let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let seal_threads = match raw.seal_threads {
            None => NonZeroUsize::new(cores),
            Some(0) => {
                self.error(
                    "batch.seal_threads",
                    "is 0",
                    "leave it out to use one thread per core, or set at least 1",
                );
                None
            }
            Some(n) => NonZeroUsize::new(n),
        };
        let in_flight = NonZeroUsize::new(raw.in_flight).filter(|n| n.get() <= 64);
        if in_flight.is_none() {
            self.error(
                "batch.in_flight",
                format!("is {}: must be 1 to 64", raw.in_flight),
                "leave it out for 4 batches in flight",
            );
        }
        (!self.has_errors_since(before)).then(|| BatchConfig {
            in_flight: in_flight.unwrap_or(NonZeroUsize::MIN),
            max_records: max_records.unwrap_or(NonZeroUsize::MIN),
            max_bytes: raw.max_bytes.0,
            max_wait: raw.max_wait,
            parallel_min_bytes: raw.parallel_min_bytes.0,
            seal_threads: seal_threads.unwrap_or(NonZeroUsize::MIN),
        })
    }

    fn dek(&mut self, raw: DekRaw) -> Option<DekConfig> {
        let before = self.problems.len();
        let limits = match DekLimits::new(raw.max_messages, raw.max_bytes.0, raw.max_age) {
            Ok(l) => Some(l),
            Err(e) => {
                let field = match e {
                    InvalidDekLimits::MaxMessages(_) => "dek.max_messages",
                    InvalidDekLimits::MaxBytes => "dek.max_bytes",
                    _ => "dek.max_age",
                };
                let fix = match e {
                    InvalidDekLimits::MaxMessages(_) => format!(
                        "set a value from 1 to {MAX_MESSAGES_CEILING}; leave it out for the default 16777216"
                    ),
                    _ => "leave it out for the default".to_owned(),
                };
                self.error(field, e.to_string(), fix);
                None
            }
        };
        if !(1..=19).contains(&raw.zstd_level) {
            self.error(
                "dek.zstd_level",
                format!("{} is outside 1..=19", raw.zstd_level),
                "use 3 (the default) unless you measured otherwise",
            );
        }
        let compression = if raw.compress {
            Compression::at_least(raw.compress_min_size.0 as usize, raw.zstd_level)
        } else {
            Compression::off()
        };
        (!self.has_errors_since(before)).then(|| DekConfig {
            limits: limits.unwrap_or_default(),
            compression,
        })
    }

    fn keys(&mut self, raw: KeysRaw) -> Option<KeysConfig> {
        let before = self.problems.len();
        if raw.check_interval < Duration::from_secs(5) {
            self.error(
                "keys.check_interval",
                format!(
                    "{} is shorter than 5s and would spend the vault's request budget",
                    humantime::format_duration(raw.check_interval)
                ),
                "use \"60s\" (the default) or longer",
            );
        } else if raw.check_interval > Duration::from_secs(3600) {
            self.warn(
                "keys.check_interval",
                "longer than 1h: a revoked key keeps being used for that long",
                "use \"60s\" (the default) so revocation takes effect within a minute",
            );
        }
        if raw.vault_requests_per_10s == 0 {
            self.error(
                "keys.vault_requests_per_10s",
                "is 0: nothing could ever be wrapped",
                "use 200 (the default)",
            );
        } else if raw.vault_requests_per_10s > 500 {
            self.warn(
                "keys.vault_requests_per_10s",
                format!(
                    "{} is above Key Vault's own budget for RSA-4096 keys (500 per 10 s per vault)",
                    raw.vault_requests_per_10s
                ),
                "stay below 500 so the vault does not throttle",
            );
        }
        if raw.unwrapped_cache_entries == 0 {
            self.error(
                "keys.unwrapped_cache_entries",
                "is 0: every record would cost a vault call",
                "use 100000 (the default)",
            );
        }
        let ca_file = raw.ca_file.map(|p| self.resolve(&p));
        if let Some(p) = &ca_file {
            self.readable_pem("keys.ca_file", p, "CERTIFICATE");
        }
        (!self.has_errors_since(before)).then_some(KeysConfig {
            check_interval: raw.check_interval,
            vault_requests_per_10s: raw.vault_requests_per_10s,
            unwrapped_cache_entries: raw.unwrapped_cache_entries,
            unwrapped_cache_ttl: raw.unwrapped_cache_ttl,
            ca_file,
            resolve: raw.resolve,
            drain_on_restore: raw.drain_on_restore,
        })
    }

    fn metrics(&mut self, raw: MetricsRaw) -> Option<MetricsConfig> {
        match raw.listen.parse::<SocketAddr>() {
            Ok(listen) => Some(MetricsConfig { listen }),
            Err(_) => {
                self.error(
                    "metrics.listen",
                    format!("{:?} is not an ip:port address", raw.listen),
                    "use e.g. \"127.0.0.1:9464\", or \"0.0.0.0:9464\" in a container",
                );
                None
            }
        }
    }

    fn worker(&mut self, raw: WorkerRaw) -> Option<WorkerConfig> {
        let before = self.problems.len();
        if let Some(id) = &raw.id
            && (id.trim().is_empty() || id.len() > 128 || id.chars().any(char::is_control))
        {
            self.error(
                "worker.id",
                "must be 1 to 128 printable characters",
                "leave it out for <hostname>-<pid>",
            );
        }
        if raw.drain_deadline.is_zero() {
            self.error(
                "worker.drain_deadline",
                "is 0: SIGTERM could not drain anything",
                "use \"30s\" (the default)",
            );
        }
        if raw.stall_timeout < Duration::from_secs(10) {
            self.error(
                "worker.stall_timeout",
                "is under 10 s: a slow vault or a rebalance would look like a stall and restart the worker",
                "use \"120s\" (the default), well above batch.max_wait and a vault round trip",
            );
        }
        (!self.has_errors_since(before)).then_some(WorkerConfig {
            id: raw.id,
            drain_deadline: raw.drain_deadline,
            stall_timeout: raw.stall_timeout,
            log_format: raw.log_format,
        })
    }

    /// Checks the Key Vault fields of a tenant or of the quarantine key.
    fn key(&mut self, at: &str, raw: KeyRaw) -> Option<KeyVaultKey> {
        let before = self.problems.len();
        let required = |l: &mut Self, name: &str, v: Option<String>, fix: &str| {
            if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
                l.error(format!("{at}.{name}"), "is missing", fix);
            }
            v
        };
        let vault_url = required(
            self,
            "vault_url",
            raw.vault_url,
            "copy the Key Vault URI: https://<key-vault-name>.vault.azure.net (or the Private Link URL https://<key-vault-name>.privatelink.vaultcore.azure.net)",
        );
        let key_name = required(
            self,
            "key_name",
            raw.key_name,
            "copy the key's name from Key vaults > <vault> > Objects > Keys",
        );
        let entra_tenant_id = required(
            self,
            "entra_tenant_id",
            raw.entra_tenant_id,
            "copy the Directory (tenant) ID from the app registration's overview in Entra ID",
        );
        let client_id = required(
            self,
            "client_id",
            raw.client_id,
            "copy the Application (client) ID from the app registration's overview in Entra ID",
        );
        if raw.credential.is_none() {
            self.error(
                format!("{at}.credential"),
                "is missing",
                "add credential = { type = \"certificate\", path = \"...\" } (recommended) or { type = \"client-secret\", env = \"VAR\" }",
            );
        }

        let vault_url = vault_url.and_then(|u| self.vault_url(at, &u));
        if let Some(name) = &key_name {
            let ok = (1..=127).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                self.error(
                    format!("{at}.key_name"),
                    format!("{name:?} is not a Key Vault key name"),
                    "key names are 1 to 127 letters, digits and dashes; copy it from the portal",
                );
            }
        }
        if let Some(v) = &raw.key_version
            && (v.len() != 32 || !v.chars().all(|c| c.is_ascii_hexdigit()))
        {
            self.error(
                    format!("{at}.key_version"),
                    format!("{v:?} is not a key version (32 hex digits)"),
                    "copy the last part of the Key Identifier https://<vault>.vault.azure.net/keys/<name>/<version>, or leave it out to use the newest enabled version",
                );
        }
        if let Some(t) = &entra_tenant_id
            && !is_guid(t)
            && !(t.contains('.')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
        {
            self.error(
                    format!("{at}.entra_tenant_id"),
                    format!("{t:?} is neither a GUID nor a domain"),
                    "copy the Directory (tenant) ID, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47",
                );
        }
        if let Some(c) = &client_id
            && !is_guid(c)
        {
            self.error(
                format!("{at}.client_id"),
                format!("{c:?} is not a GUID"),
                "copy the Application (client) ID, a GUID, from the app registration",
            );
        }
        let authority_host = match raw.authority_host {
            None => Url::parse(DEFAULT_AUTHORITY_HOST).ok(),
            Some(a) => match Url::parse(&a) {
                Ok(u) if u.scheme() == "https" => Some(u),
                _ => {
                    self.error(
                        format!("{at}.authority_host"),
                        format!("{a:?} is not an https URL"),
                        format!("leave it out for {DEFAULT_AUTHORITY_HOST}, or give the https authority of your cloud"),
                    );
                    None
                }
            },
        };
        let ca_file = raw.ca_file.map(|p| self.resolve(&p));
        if let Some(p) = &ca_file {
            self.readable_pem(&format!("{at}.ca_file"), p, "CERTIFICATE");
        }
        let credential = raw.credential.and_then(|c| self.credential(at, c));
        if self.has_errors_since(before) {
            return None;
        }
        Some(KeyVaultKey {
            vault_url: vault_url?,
            key_name: key_name?,
            key_version: raw.key_version.map(|v| v.to_ascii_lowercase()),
            entra_tenant_id: entra_tenant_id?,
            client_id: client_id?,
            credential: credential?,
            authority_host: authority_host?,
            ca_file,
        })
    }

    fn vault_url(&mut self, at: &str, text: &str) -> Option<Url> {
        let field = format!("{at}.vault_url");
        let url = match Url::parse(text) {
            Ok(u) => u,
            Err(e) => {
                self.error(
                    &field,
                    format!("{text:?} is not a URL ({e})"),
                    "write it as https://<key-vault-name>.vault.azure.net",
                );
                return None;
            }
        };
        if url.scheme() != "https" {
            self.error(
                &field,
                format!("{text:?} is not https"),
                "Key Vault is only reachable over https: https://<key-vault-name>.vault.azure.net",
            );
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            self.error(
                &field,
                "has a query or fragment",
                "use only the vault's base URL",
            );
            return None;
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if url.path().contains("/keys") {
            self.error(
                &field,
                "contains a key path; vault_url is only the vault's base URL",
                "use https://<key-vault-name>.vault.azure.net and put the key in key_name (and key_version)",
            );
            return None;
        }
        if !KEY_VAULT_SUFFIXES.iter().any(|s| host.ends_with(s)) {
            self.warn(
                &field,
                format!(
                    "{host:?} is not an Azure Key Vault host ({})",
                    KEY_VAULT_SUFFIXES.join(", ")
                ),
                "fine for the local emulator; in production copy the Key Vault URI from the portal",
            );
        }
        Some(url)
    }

    fn credential(&mut self, at: &str, raw: CredentialRaw) -> Option<Credential> {
        let field = format!("{at}.credential");
        match raw {
            CredentialRaw::Certificate {
                path,
                next_path,
                format,
                password_env,
            } => {
                let path = self.resolve(&path);
                let next = next_path.map(|p| self.resolve(&p));
                let format = format.or_else(|| {
                    match path
                        .extension()
                        .and_then(|e| e.to_str())
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                    {
                        Some("pem" | "crt" | "key") => Some(CertFormat::Pem),
                        Some("pfx" | "p12") => Some(CertFormat::Pfx),
                        _ => None,
                    }
                });
                let Some(format) = format else {
                    self.error(
                        format!("{field}.format"),
                        format!(
                            "cannot tell the format of {} from its extension",
                            path.display()
                        ),
                        "add format = \"pem\" or format = \"pfx\"",
                    );
                    return None;
                };
                for (name, p) in
                    std::iter::once(("path", &path)).chain(next.iter().map(|n| ("next_path", n)))
                {
                    let at = format!("{field}.{name}");
                    match format {
                        CertFormat::Pem => {
                            if self.readable_pem(&at, p, "CERTIFICATE") {
                                self.readable_pem(&at, p, "PRIVATE KEY");
                            }
                        }
                        CertFormat::Pfx => {
                            self.readable(&at, p);
                        }
                    }
                    self.private_file(&at, p);
                }
                let password = password_env.map(|name| {
                    self.env_present(&format!("{field}.password_env"), &name);
                    SecretSource::Env(name)
                });
                Some(Credential::Certificate {
                    path,
                    next,
                    format,
                    password,
                })
            }
            CredentialRaw::ClientSecret { env, file } => match (env, file) {
                (Some(name), None) => {
                    self.env_present(&format!("{field}.env"), &name);
                    Some(Credential::ClientSecret(SecretSource::Env(name)))
                }
                (None, Some(path)) => {
                    let path = self.resolve(&path);
                    let source = SecretSource::File(path.clone());
                    if let Err(e) = source.load() {
                        self.error(format!("{field}.file"), e.to_string(), "write the client secret's Value (not its ID) into that file, readable by the worker only");
                    }
                    self.private_file(&format!("{field}.file"), &path);
                    Some(Credential::ClientSecret(source))
                }
                (Some(_), Some(_)) => {
                    self.error(
                        &field,
                        "has both env and file",
                        "keep one: env = \"VAR\" or file = \"/run/secrets/...\"",
                    );
                    None
                }
                (None, None) => {
                    self.error(
                        &field,
                        "a client secret needs env or file",
                        "add env = \"VAR\" (the variable holding the secret's Value) or file = \"/run/secrets/...\"; never the secret itself",
                    );
                    None
                }
            },
        }
    }

    fn env_present(&mut self, field: &str, name: &str) {
        if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
            self.error(
                field,
                format!("environment variable {name} is not set (or empty) in this environment"),
                format!("export {name} in the worker's environment (a Kubernetes secret, a systemd credential); run this check where the worker runs"),
            );
        }
    }

    fn readable(&mut self, field: &str, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => true,
            Ok(_) => {
                self.error(
                    field,
                    format!("{} is not a file", path.display()),
                    "point it at the file itself",
                );
                false
            }
            Err(e) => {
                self.error(
                    field,
                    format!("{} cannot be read: {}", path.display(), e.kind()),
                    "check the path (relative paths are resolved from the config file's folder)",
                );
                false
            }
        }
    }

    fn readable_pem(&mut self, field: &str, path: &Path, block: &str) -> bool {
        if !self.readable(field, path) {
            return false;
        }
        let has = std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .any(|l| l.starts_with("-----BEGIN ") && l.contains(block))
            })
            .unwrap_or(false);
        if !has {
            self.error(
                field,
                format!("{} has no PEM {block} block", path.display()),
                if block == "PRIVATE KEY" {
                    "a PEM credential holds the certificate and its private key; append the key, or use the .pfx with format = \"pfx\""
                } else {
                    "give a PEM file with -----BEGIN CERTIFICATE-----"
                },
            );
            return false;
        }
        true
    }

    fn private_file(&mut self, field: &str, path: &Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                let mode = m.permissions().mode();
                if mode & 0o077 != 0 {
                    self.warn(
                        field,
                        format!(
                            "{} is readable by other users (mode {:o})",
                            path.display(),
                            mode & 0o777
                        ),
                        format!("chmod 600 {}", path.display()),
                    );
                }
            }
        }
    }

    fn tenants(
        &mut self,
        inline: Option<toml::Value>,
        dir: Option<toml::Value>,
    ) -> Option<BTreeMap<TenantId, Tenant>> {
        let before = self.problems.len();
        let mut found: Vec<(String, PathBuf, toml::Table)> = Vec::new();
        let config_file = PathBuf::from(&self.file);
        match inline {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        toml::Value::Table(t) => {
                            found.push((format!("tenants[{i}]"), config_file.clone(), t))
                        }
                        _ => self.error(
                            format!("tenants[{i}]"),
                            "is not a table",
                            "write each tenant as a [[tenants]] table",
                        ),
                    }
                }
            }
            Some(_) => self.error(
                "tenants",
                "is not an array of tables",
                "write each tenant as a [[tenants]] table",
            ),
        }
        match dir {
            None => {}
            Some(toml::Value::String(d)) => {
                let dir = self.resolve(Path::new(&d));
                match std::fs::read_dir(&dir) {
                    Err(e) => self.error(
                        "tenants_dir",
                        format!("{} cannot be read: {}", dir.display(), e.kind()),
                        "point it at a folder of one <tenant>.toml file per tenant",
                    ),
                    Ok(entries) => {
                        let mut files: Vec<PathBuf> = entries
                            .filter_map(Result::ok)
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                            .collect();
                        files.sort();
                        for f in files {
                            let label = f.display().to_string();
                            let parsed = std::fs::read_to_string(&f)
                                .map_err(|e| e.to_string())
                                .and_then(|t| {
                                    toml::from_str::<toml::Table>(&t)
                                        .map_err(|e| e.message().to_owned())
                                });
                            match parsed {
                                Ok(mut t) => {
                                    if !t.contains_key("id")
                                        && let Some(stem) = f.file_stem().and_then(|s| s.to_str())
                                    {
                                        t.insert("id".into(), toml::Value::String(stem.into()));
                                    }
                                    found.push((label, f, t));
                                }
                                Err(e) => self.error(
                                    label,
                                    format!("cannot be read as TOML: {e}"),
                                    "fix the file, or remove it from the tenants folder",
                                ),
                            }
                        }
                    }
                }
            }
            Some(_) => self.error(
                "tenants_dir",
                "is not a path",
                "write tenants_dir = \"tenants.d\"",
            ),
        }
        if found.is_empty() {
            self.warn("tenants", "no tenant is configured: every message will go to the quarantine as unknown-tenant", "add [[tenants]] tables or tenants_dir");
        }

        let mut tenants: BTreeMap<TenantId, Tenant> = BTreeMap::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (label, file, mut table) in found {
            let id = match table.remove("id") {
                Some(toml::Value::String(s)) => s,
                Some(_) => {
                    self.error(
                        format!("{label}.id"),
                        "is not a string",
                        "write id = \"acme\"",
                    );
                    continue;
                }
                None => {
                    self.error(
                        format!("{label}.id"),
                        "is missing",
                        "give each tenant an id, e.g. id = \"acme\"",
                    );
                    continue;
                }
            };
            let at = format!("{label} (tenant {id:?})");
            let byok_enabled = match table.remove("byok_enabled") {
                None => true,
                Some(toml::Value::Boolean(b)) => b,
                Some(_) => {
                    self.error(
                        format!("{at}.byok_enabled"),
                        "is not true or false",
                        "write byok_enabled = true",
                    );
                    true
                }
            };
            let tid = match TenantId::parse(&id) {
                Ok(t) => Some(t),
                Err(e) => {
                    self.error(
                        format!("{at}.id"),
                        e,
                        "use letters, digits, '.', '_' and '-', not starting with '_'",
                    );
                    None
                }
            };
            if let Some(prev) = seen.insert(id.clone(), label.clone()) {
                self.error(
                    format!("{at}.id"),
                    format!("tenant {id:?} is also defined at {prev}"),
                    "keep one definition per tenant id",
                );
            }
            let key = if !byok_enabled && table.is_empty() {
                None
            } else {
                match KeyRaw::deserialize(toml::Value::Table(table)) {
                    Ok(raw) => self.key(&at, raw),
                    Err(e) => {
                        let msg = e.message().trim().to_owned();
                        let fix = serde_fix(&msg, "tenants");
                        self.error(&at, msg, fix);
                        None
                    }
                }
            };
            if let Some(tid) = tid {
                if byok_enabled && key.is_none() {
                    continue; // its problems are recorded
                }
                tenants.insert(
                    tid.clone(),
                    Tenant {
                        id: tid,
                        byok_enabled,
                        key,
                        defined_in: file,
                    },
                );
            }
        }
        (!self.has_errors_since(before)).then_some(tenants)
    }

    fn cross_checks(&mut self, kafka: &KafkaConfig, tenants: &BTreeMap<TenantId, Tenant>) {
        if kafka.archive_topic.is_per_tenant() {
            for id in tenants.keys() {
                let topic = kafka.archive_topic.topic_for(id);
                if topic.len() > 249 {
                    self.error(
                        "kafka.archive_topic",
                        format!("the topic for tenant {id} would be longer than 249 characters"),
                        "use a shorter template",
                    );
                }
            }
        }
    }
}

fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A fix for a serde message about a section.
fn serde_fix(msg: &str, section: &str) -> String {
    if msg.starts_with("unknown field") {
        format!("check the spelling; the fields of [{section}] are listed in {EXAMPLE}")
    } else if msg.starts_with("missing field") {
        format!("add the field to [{section}]; see {EXAMPLE}")
    } else if msg.contains("unknown variant") {
        format!("use one of the values listed in the message; see {EXAMPLE}")
    } else {
        format!("see {EXAMPLE} for the field's type and default")
    }
}
