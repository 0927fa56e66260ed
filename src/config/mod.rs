//! The worker's configuration: a TOML file (documented field by field in
//! `config/byok.example.toml`), plus optionally a directory of one TOML file per tenant.
//!
//! Loading parses each section into typed values (durations, sizes, URLs, tenant ids) and then
//! checks the whole, collecting **every** problem with the field, the reason and the fix, so that
//! `byok config check` reports them all at once and a bad config never starts the worker.
//! Secrets never sit in the TOML: a client secret comes from an environment variable or a file,
//! a certificate from a file with its password in an environment variable. Loading checks that
//! they are there, never reads them into the config, and never prints them.

mod keys;
mod load;
mod raw;

use load::Loader;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::dek::DekLimits;
use crate::envelope::Compression;
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
    /// The audit log (docs/audit-v1.md), when configured.
    pub audit: Option<AuditConfig>,
    /// Tenants by id, in id order.
    pub tenants: BTreeMap<TenantId, Tenant>,
}

/// `[audit]`: where the audit log goes and the operator's key that certifies its writers.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The audit topic (`cleanup.policy=delete`).
    pub topic: String,
    /// The cluster name signer statements carry (a verifier is configured for one).
    pub cluster: String,
    /// The operator's signing key in Key Vault (RSA ≥ 3072, `keys/sign/action`).
    pub signing_key: KeyVaultKey,
    /// Signing key versions readers trust (pinned; a record's own claim is never trusted).
    pub trusted: Vec<String>,
    /// Unsigned registry and key records below these offsets predate signing and are trusted
    /// (a one-time migration: `audit.trust_unsigned_below`).
    pub unsigned_below: Vec<UnsignedMark>,
}

/// `<topic>:<partition>:<offset>`: records of that partition below the offset were written before
/// signing existed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedMark {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The first offset that must be signed.
    pub offset: i64,
}

impl UnsignedMark {
    /// Reads `<topic>:<partition>:<offset>`.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let mut it = text.rsplitn(3, ':');
        let (Some(offset), Some(partition), Some(topic)) = (it.next(), it.next(), it.next()) else {
            return Err("is not <topic>:<partition>:<offset>");
        };
        let partition = partition
            .parse::<i32>()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or("has a partition that is not a number ≥ 0")?;
        let offset = offset
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or("has an offset that is not a number ≥ 0")?;
        if topic.is_empty() {
            return Err("names no topic");
        }
        Ok(Self {
            topic: topic.to_owned(),
            partition,
            offset,
        })
    }

    /// Whether `offset` of `topic`/`partition` is below one of `marks`.
    pub fn covers(marks: &[UnsignedMark], topic: &str, partition: i32, offset: i64) -> bool {
        marks
            .iter()
            .any(|m| m.topic == topic && m.partition == partition && offset < m.offset)
    }
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
    /// librdkafka consumer passthrough.
    pub consumer: Passthrough,
    /// librdkafka producer passthrough.
    pub producer: Passthrough,
}

/// librdkafka settings that hold a secret: never given inline in the file (a `{ file = .. }`
/// value instead) and never shown by `Debug`.
pub const SECRET_CLIENT_SETTINGS: [&str; 7] = [
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.truststore.password",
];

/// librdkafka passthrough settings (`[kafka.consumer]`, `[kafka.producer]`). `Debug` shows the
/// names of secret settings, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Passthrough(BTreeMap<String, String>);

impl Passthrough {
    /// A setting's value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Whether a setting is given.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The settings, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl FromIterator<(String, String)> for Passthrough {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        Passthrough(iter.into_iter().collect())
    }
}

impl fmt::Debug for Passthrough {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.0 {
            if SECRET_CLIENT_SETTINGS.contains(&k.as_str()) {
                m.entry(k, &"<redacted>");
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

/// Why a topic name or template is not one Kafka accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicNameError {
    /// A `{...}` other than `{tenant}`.
    #[error("{text:?} has a placeholder other than {{tenant}}")]
    Placeholder {
        /// The name as written.
        text: String,
    },
    /// Empty, `.`, `..` or longer than 249.
    #[error("{text:?} is not a Kafka topic name (1 to 249 letters, digits, '.', '_', '-')")]
    Length {
        /// The name as written.
        text: String,
    },
    /// A character Kafka refuses.
    #[error(
        "topic {text:?} has {found:?}, which Kafka does not allow (letters, digits, '.', '_', '-')"
    )]
    Character {
        /// The name as written.
        text: String,
        /// The first character refused.
        found: char,
    },
}

/// The archive topic: one name, or a template where `{tenant}` is replaced by the tenant id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate(String);

impl TopicTemplate {
    /// A topic name, or a template with `{tenant}`, checked for what Kafka allows in a name.
    pub fn parse(text: &str) -> Result<Self, TopicNameError> {
        let name = text.replace("{tenant}", "t");
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        let text = text.to_owned();
        if name.contains(['{', '}']) {
            Err(TopicNameError::Placeholder { text })
        } else if name.is_empty() || name.len() > 249 || name == "." || name == ".." {
            Err(TopicNameError::Length { text })
        } else if let Some(found) = name.chars().find(|c| !legal(*c)) {
            Err(TopicNameError::Character { text, found })
        } else {
            Ok(Self(text))
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
    /// How long the records of a BYOK tenant wait (their partitions paused) when no DEK can be
    /// made for it and no public key of it was ever seen (its vault does not answer, or its key is
    /// revoked before any worker read it). Past this, as a last resort before the input topic's
    /// retention deletes them, they are quarantined under the operator's key (`key-unknown`,
    /// `vault-unavailable`).
    pub unknown_key_hold: Duration,
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

/// How strict loading is where the operator may choose.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Accept secret files (client secrets, certificates, passthrough `{ file = .. }` values)
    /// that other users can read, with a warning instead of an error
    /// (`--allow-insecure-permissions`).
    pub allow_insecure_permissions: bool,
}

impl Config {
    /// The largest record a worker with this configuration can have captured, so the largest
    /// plaintext a reader ever needs to inflate: the consumer's `receive.message.max.bytes`
    /// (librdkafka refuses larger fetch responses; 100 000 000 by default).
    pub fn max_record_bytes(&self) -> usize {
        self.kafka
            .consumer
            .get("receive.message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000_000)
    }
}

impl Config {
    /// Loads and checks a configuration file; any error refuses the whole configuration.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with(path, LoadOptions::default())
    }

    /// Loads with options (see [`LoadOptions`]).
    pub fn load_with(path: &Path, options: LoadOptions) -> Result<Config, ConfigError> {
        let checked = Self::check_with(path, options);
        match checked.config {
            Some(c) => Ok(c),
            None => Err(ConfigError {
                problems: checked.problems,
            }),
        }
    }

    /// Checks a configuration file, collecting every problem.
    pub fn check(path: &Path) -> Checked {
        Self::check_with(path, LoadOptions::default())
    }

    /// Checks with options (see [`LoadOptions`]).
    pub fn check_with(path: &Path, options: LoadOptions) -> Checked {
        let mut l = Loader {
            problems: Vec::new(),
            file: path.display().to_string(),
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            options,
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
