//! Loading: reads the file (and the tenants directory), parses each section and checks it,
//! collecting every problem with the field, the reason and the fix. It must never stop at the
//! first problem, and never read a secret's value (only that it is there).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::dek::{DekLimits, InvalidDekLimits, MAX_MESSAGES_CEILING};
use crate::envelope::Compression;

use super::raw::*;
use super::*;

pub(super) struct Loader {
    pub(super) problems: Vec<Problem>,
    /// File being read, for messages.
    pub(super) file: String,
    /// Directory relative paths are resolved against.
    pub(super) base: PathBuf,
    /// What the caller allows.
    pub(super) options: super::LoadOptions,
}

/// The sealer's job size (pipeline/seal.rs `CHUNK_BYTES`).
const MIN_JOB_BYTES: u64 = 256 << 10;

pub(super) const EXAMPLE: &str = "config/byok.example.toml";

impl Loader {
    pub(super) fn error(
        &mut self,
        field: impl fmt::Display,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Error, field, reason, fix);
    }
    pub(super) fn warn(
        &mut self,
        field: impl fmt::Display,
        reason: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Severity::Warning, field, reason, fix);
    }
    pub(super) fn push(
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

    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Deserializes one section, reporting its error against the section's name.
    pub(super) fn section<T: DeserializeOwned>(
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

    pub(super) fn load(&mut self, path: &Path) -> Option<Config> {
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
        let audit = self.audit_section(table.remove("audit"));
        let tenants_dir = table.remove("tenants_dir");
        let tenants_value = table.remove("tenants");
        for (k, _) in table {
            self.error(
                k.as_str(),
                format!("unknown top-level key `{k}`"),
                format!(
                    "the top level has [kafka], [batch], [dek], [keys], [metrics], [worker], [quarantine], [audit], [[tenants]] and tenants_dir; see {EXAMPLE}"
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
        if let (Some(b), Some(d)) = (&batch, &dek) {
            self.dek_fits_a_job(b, d);
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
            audit,
            tenants: tenants?,
        })
    }

    fn audit_section(&mut self, value: Option<toml::Value>) -> Option<AuditConfig> {
        let v = value?;
        self.section::<AuditRaw>("audit", Some(v))
            .and_then(|raw| self.audit(raw))
    }

    /// `[audit]`: the cluster name, the signing key (checked as the quarantine key is), pinned
    /// versions.
    fn audit(&mut self, raw: AuditRaw) -> Option<AuditConfig> {
        self.topic("audit.topic", &raw.topic);
        let cluster = match raw.cluster {
            Some(c) if !c.trim().is_empty() => Some(c),
            _ => {
                self.error(
                    "audit.cluster",
                    "is missing",
                    "name the cluster (for example cluster = \"prod-eu\"): signer statements carry it and a verifier checks it",
                );
                None
            }
        };
        let signing_key = match raw.signing_key {
            Some(k) => self.key("audit.signing_key", k),
            None => {
                self.error(
                    "audit.signing_key",
                    "is missing",
                    "add [audit.signing_key] naming the operator's RSA signing key (vault_url, key_name, entra_tenant_id, client_id, credential), as [quarantine] does",
                );
                None
            }
        };
        let mut trusted = Vec::new();
        for (i, kid) in raw.signing_keys.iter().enumerate() {
            // https://<vault host>/keys/<name>/<version>
            let versioned = url::Url::parse(kid).is_ok_and(|u| {
                let segs: Vec<&str> = u.path_segments().map(Iterator::collect).unwrap_or_default();
                u.scheme() == "https" && segs.len() == 3 && segs[0] == "keys" && !segs[2].is_empty()
            });
            if versioned {
                trusted.push(kid.clone());
            } else {
                self.error(
                    format!("audit.signing_keys[{i}]"),
                    format!("{kid:?} is not a versioned Key Vault key id"),
                    "give the full key id with its version: https://<vault>.vault.azure.net/keys/<name>/<version>",
                );
            }
        }
        let mut unsigned_below = Vec::new();
        for (i, mark) in raw.trust_unsigned_below.iter().enumerate() {
            match UnsignedMark::parse(mark) {
                Ok(m) => unsigned_below.push(m),
                Err(why) => self.error(
                    format!("audit.trust_unsigned_below[{i}]"),
                    format!("{mark:?} {why}"),
                    "write <topic>:<partition>:<offset>, for example \"byok.deks:0:1200\": the first offset written with signing on (an offset, not a time: a forger chooses times)",
                ),
            }
        }
        let audit = AuditConfig {
            topic: raw.topic,
            cluster: cluster?,
            signing_key: signing_key?,
            trusted,
            unsigned_below,
        };
        raw.enabled.then_some(audit)
    }

    fn bootstrap_servers(&mut self, servers: &str) {
        if servers.trim().is_empty() {
            self.error(
                "kafka.bootstrap_servers",
                "is empty",
                "set it to host:port of one or more brokers, comma-separated",
            );
            return;
        }
        for server in servers.split(',') {
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

    pub(super) fn kafka(&mut self, raw: KafkaRaw) -> Option<KafkaConfig> {
        let before = self.problems.len();
        self.bootstrap_servers(&raw.bootstrap_servers);
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
        match raw.copy_source_headers {
            None => {}
            Some(true) => self.error(
                "kafka.copy_source_headers",
                "is not supported: the captured record's headers would sit unencrypted next to the sealed value (they may hold personal data), and a producer could plant byok.* headers",
                "remove the line; put what the archive must keep into the message body, which is sealed",
            ),
            Some(false) => self.warn(
                "kafka.copy_source_headers",
                "has no effect (source headers are never copied)",
                "remove the line",
            ),
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
            consumer,
            producer,
        })
    }

    pub(super) fn has_errors_since(&self, before: usize) -> bool {
        self.problems[before..]
            .iter()
            .any(|p| p.severity == Severity::Error)
    }

    pub(super) fn topic(&mut self, field: &str, name: &str) {
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

    pub(super) fn passthrough(
        &mut self,
        section: &str,
        raw: BTreeMap<String, PassValue>,
        owned: &[(&str, &str)],
    ) -> Passthrough {
        let mut out = Vec::new();
        for (k, v) in raw {
            let field = format!("{section}.\"{k}\"");
            if let Some((_, why)) = owned.iter().find(|(name, _)| *name == k) {
                self.error(
                    field,
                    format!("`{k}` is owned by the worker: {why}"),
                    format!("remove `{k}` from [{section}]"),
                );
                continue;
            }
            let secret = SECRET_CLIENT_SETTINGS.contains(&k.as_str());
            let value = match v {
                PassValue::File { file } => match self.passthrough_file(&field, &file) {
                    Some(v) => v,
                    None => continue,
                },
                _ if secret => {
                    self.error(
                        field,
                        "holds a secret written into the configuration file",
                        format!(
                            "put the value in a file readable only by the worker and write `\"{k}\" = {{ file = \"/run/secrets/kafka_password\" }}`"
                        ),
                    );
                    continue;
                }
                PassValue::Text(s) => s,
                PassValue::Int(i) => i.to_string(),
                PassValue::Float(f) => f.to_string(),
                PassValue::Bool(b) => b.to_string(),
            };
            out.push((k, value));
        }
        out.into_iter().collect()
    }

    /// A passthrough value read from a file: private, one line (a trailing newline dropped).
    fn passthrough_file(&mut self, field: &str, file: &Path) -> Option<String> {
        let path = self.resolve(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                self.private_file(field, &path);
                let value = text.strip_suffix('\n').unwrap_or(&text);
                let value = value.strip_suffix('\r').unwrap_or(value);
                if value.is_empty() {
                    self.error(
                        field,
                        format!("{} is empty", path.display()),
                        "write the value into the file",
                    );
                    return None;
                }
                Some(value.to_string())
            }
            Err(e) => {
                self.error(
                    field,
                    format!("cannot read {}: {e}", path.display()),
                    "give a readable file, relative paths from the configuration file's folder",
                );
                None
            }
        }
    }

    pub(super) fn batch(&mut self, raw: BatchRaw) -> Option<BatchConfig> {
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

    pub(super) fn dek(&mut self, raw: DekRaw) -> Option<DekConfig> {
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

    /// A DEK must take at least one sealing job (a batch's records of one tenant, up to
    /// `batch.max_bytes` plus one record): below that, every new DEK retires before sealing
    /// anything and the worker makes DEKs without end.
    pub(super) fn dek_fits_a_job(&mut self, batch: &BatchConfig, dek: &DekConfig) {
        let job = batch.max_bytes.max(MIN_JOB_BYTES).saturating_mul(2);
        if dek.limits.max_bytes() < job {
            self.error(
                "dek.max_bytes",
                format!(
                    "{} bytes is less than one sealing job (2 x batch.max_bytes, at least 512 KiB: {job} bytes): every DEK would retire before sealing anything",
                    dek.limits.max_bytes()
                ),
                "leave it out for the default (64 GiB), or raise it well above batch.max_bytes",
            );
        }
    }

    pub(super) fn keys(&mut self, raw: KeysRaw) -> Option<KeysConfig> {
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
        if raw.unknown_key_hold < Duration::from_secs(1) {
            self.error(
                "keys.unknown_key_hold",
                "is shorter than 1s: a vault that blinks would send a tenant's records to the operator's key",
                "use \"24h\" (the default), well under the input topic's retention",
            );
        } else if raw.unknown_key_hold > Duration::from_secs(7 * 24 * 3600) {
            self.warn(
                "keys.unknown_key_hold",
                "longer than 7 days, the input topics' default retention: the records it holds could be deleted before it ends",
                "keep it well under the input topics' retention.ms (check with byok config check --connect)",
            );
        }
        (!self.has_errors_since(before)).then_some(KeysConfig {
            check_interval: raw.check_interval,
            vault_requests_per_10s: raw.vault_requests_per_10s,
            unwrapped_cache_entries: raw.unwrapped_cache_entries,
            unwrapped_cache_ttl: raw.unwrapped_cache_ttl,
            ca_file,
            resolve: raw.resolve,
            drain_on_restore: raw.drain_on_restore,
            unknown_key_hold: raw.unknown_key_hold,
        })
    }

    pub(super) fn metrics(&mut self, raw: MetricsRaw) -> Option<MetricsConfig> {
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

    pub(super) fn worker(&mut self, raw: WorkerRaw) -> Option<WorkerConfig> {
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
}

pub(super) fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok() && s.len() == 36
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A fix for a serde message about a section.
pub(super) fn serde_fix(msg: &str, section: &str) -> String {
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
