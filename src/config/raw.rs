//! The configuration file's sections as serde reads them (`deny_unknown_fields`), with their
//! named defaults, before [`super::load`] checks them into typed values. Nothing here may be
//! used outside loading.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{CertFormat, Delivery, LogFormat};
use crate::dek::DekLimits;
use crate::envelope::DEFAULT_ZSTD_LEVEL;

pub(super) const fn default_true() -> bool {
    true
}
pub(super) fn default_group_id() -> String {
    "byok-pipeline".into()
}
pub(super) fn default_input_topics() -> Vec<String> {
    vec!["capture.messages".into()]
}
pub(super) fn default_archive_topic() -> String {
    "archive.messages".into()
}
pub(super) fn default_registry_topic() -> String {
    "byok.deks".into()
}
pub(super) fn default_keks_topic() -> String {
    "byok.keks".into()
}
pub(super) fn default_quarantine_topic() -> String {
    "byok.quarantine".into()
}
pub(super) const fn default_delivery() -> Delivery {
    Delivery::AtLeastOnce
}
pub(super) const fn default_batch_max_records() -> usize {
    500
}
pub(super) fn default_batch_max_bytes() -> Size {
    Size(1 << 20)
}
pub(super) const fn default_batch_max_wait() -> Duration {
    Duration::from_millis(50)
}
pub(super) const fn default_batch_in_flight() -> usize {
    4
}
pub(super) fn default_parallel_min_bytes() -> Size {
    Size(4 << 20)
}
pub(super) const fn default_dek_max_messages() -> u64 {
    DekLimits::DEFAULT_MAX_MESSAGES
}
pub(super) fn default_dek_max_bytes() -> Size {
    Size(DekLimits::DEFAULT_MAX_BYTES)
}
pub(super) const fn default_dek_max_age() -> Duration {
    DekLimits::DEFAULT_MAX_AGE
}
pub(super) fn default_compress_min_size() -> Size {
    Size(2048)
}
pub(super) const fn default_zstd_level() -> i32 {
    DEFAULT_ZSTD_LEVEL
}
pub(super) const fn default_unknown_key_hold() -> Duration {
    Duration::from_secs(24 * 3600)
}

pub(super) const fn default_check_interval() -> Duration {
    Duration::from_secs(60)
}
pub(super) const fn default_vault_requests_per_10s() -> u32 {
    200
}
pub(super) const fn default_unwrapped_cache_entries() -> usize {
    100_000
}
pub(super) const fn default_unwrapped_cache_ttl() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}
pub(super) const fn default_drain_deadline() -> Duration {
    Duration::from_secs(30)
}
pub(super) const fn default_stall_timeout() -> Duration {
    Duration::from_secs(120)
}
pub(super) const fn default_log_format() -> LogFormat {
    LogFormat::Text
}

/// A byte size: an integer, or text such as "64 GiB" or "512 KiB".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size(pub(super) u64);

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

/// A passthrough value: TOML strings, integers, floats and booleans become librdkafka strings;
/// `{ file = "path" }` is read from a file (for secrets such as `sasl.password`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum PassValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    File { file: PathBuf },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KafkaRaw {
    pub(super) bootstrap_servers: String,
    #[serde(default = "default_group_id")]
    pub(super) group_id: String,
    #[serde(default = "default_input_topics")]
    pub(super) input_topics: Vec<String>,
    #[serde(default = "default_archive_topic")]
    pub(super) archive_topic: String,
    #[serde(default = "default_registry_topic")]
    pub(super) registry_topic: String,
    #[serde(default = "default_keks_topic")]
    pub(super) keks_topic: String,
    #[serde(default = "default_quarantine_topic")]
    pub(super) quarantine_topic: String,
    #[serde(default = "default_delivery")]
    pub(super) delivery: Delivery,
    /// Removed (source headers are never copied); accepted to say so.
    #[serde(default)]
    pub(super) copy_source_headers: Option<bool>,
    #[serde(default)]
    pub(super) consumer: BTreeMap<String, PassValue>,
    #[serde(default)]
    pub(super) producer: BTreeMap<String, PassValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRaw {
    #[serde(default = "default_batch_max_records")]
    pub(super) max_records: usize,
    #[serde(default = "default_batch_max_bytes")]
    pub(super) max_bytes: Size,
    #[serde(default = "default_batch_max_wait", with = "humantime_serde")]
    pub(super) max_wait: Duration,
    #[serde(default = "default_parallel_min_bytes")]
    pub(super) parallel_min_bytes: Size,
    #[serde(default)]
    pub(super) seal_threads: Option<usize>,
    #[serde(default = "default_batch_in_flight")]
    pub(super) in_flight: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DekRaw {
    #[serde(default = "default_dek_max_messages")]
    pub(super) max_messages: u64,
    #[serde(default = "default_dek_max_bytes")]
    pub(super) max_bytes: Size,
    #[serde(default = "default_dek_max_age", with = "humantime_serde")]
    pub(super) max_age: Duration,
    #[serde(default = "default_true")]
    pub(super) compress: bool,
    #[serde(default = "default_compress_min_size")]
    pub(super) compress_min_size: Size,
    #[serde(default = "default_zstd_level")]
    pub(super) zstd_level: i32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeysRaw {
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub(super) check_interval: Duration,
    #[serde(default = "default_vault_requests_per_10s")]
    pub(super) vault_requests_per_10s: u32,
    #[serde(default = "default_unwrapped_cache_entries")]
    pub(super) unwrapped_cache_entries: usize,
    #[serde(default = "default_unwrapped_cache_ttl", with = "humantime_serde")]
    pub(super) unwrapped_cache_ttl: Duration,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) resolve: BTreeMap<String, std::net::IpAddr>,
    #[serde(default = "default_true")]
    pub(super) drain_on_restore: bool,
    #[serde(default = "default_unknown_key_hold", with = "humantime_serde")]
    pub(super) unknown_key_hold: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsRaw {
    #[serde(default = "default_metrics_listen")]
    pub(super) listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkerRaw {
    #[serde(default)]
    pub(super) id: Option<String>,
    #[serde(default = "default_drain_deadline", with = "humantime_serde")]
    pub(super) drain_deadline: Duration,
    #[serde(default = "default_stall_timeout", with = "humantime_serde")]
    pub(super) stall_timeout: Duration,
    #[serde(default = "default_log_format")]
    pub(super) log_format: LogFormat,
}

pub(super) fn default_audit_topic() -> String {
    "byok.audit".into()
}

/// `[audit]`: the audit log (docs/audit-v1.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditRaw {
    /// `false` turns the audit log off (the section is still checked).
    #[serde(default = "default_true")]
    pub(super) enabled: bool,
    #[serde(default = "default_audit_topic")]
    pub(super) topic: String,
    pub(super) cluster: Option<String>,
    /// Pinned signing key versions (kids) readers trust.
    #[serde(default)]
    pub(super) signing_keys: Vec<String>,
    pub(super) signing_key: Option<KeyRaw>,
    /// `<topic>:<partition>:<offset>`: unsigned registry and key records below it predate signing.
    #[serde(default)]
    pub(super) trust_unsigned_below: Vec<String>,
}

/// The Key Vault fields shared by a tenant and the quarantine key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyRaw {
    pub(super) vault_url: Option<String>,
    pub(super) key_name: Option<String>,
    #[serde(default)]
    pub(super) key_version: Option<String>,
    pub(super) entra_tenant_id: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) credential: Option<CredentialRaw>,
    #[serde(default)]
    pub(super) authority_host: Option<String>,
    #[serde(default)]
    pub(super) ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum CredentialRaw {
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
