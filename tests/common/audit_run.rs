//! A worker on Tansu with the Key Vault emulator and the audit log configured, and raw reads
//! of its topics: what the audit tests start from.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use byok::config::Config;
use byok::pipeline::health::Health;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};

use super::emu::*;
use super::tansu::Tansu;

pub(crate) const OUTPUTS: [&str; 4] = [
    "archive.messages",
    "byok.quarantine",
    "byok.deks",
    "byok.keks",
];

/// Every record of a topic: (partition, offset, key, value, headers).
pub(crate) type Raw = (
    i32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

pub(crate) fn read_topic(bootstrap: &str, topic: &str) -> Vec<Raw> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("audit-test-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in &parts {
        let (_, hi) = c
            .fetch_watermarks(topic, *p, Duration::from_secs(20))
            .unwrap();
        ends.insert(*p, hi);
        tpl.add_partition_offset(topic, *p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // read until every partition's position reaches its end (transaction markers included)
    let done = |c: &BaseConsumer| {
        let pos = c.position().unwrap();
        ends.iter().all(|(p, hi)| {
            *hi == 0
                || matches!(pos.find_partition(topic, *p).map(|e| e.offset()), Some(rdkafka::Offset::Offset(o)) if o >= *hi)
        })
    };
    while !done(&c) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(300)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.partition(),
                m.offset(),
                m.key().map(<[u8]>::to_vec),
                m.payload().map(<[u8]>::to_vec),
                headers,
            ));
        }
    }
    out
}

pub(crate) struct Run {
    pub(crate) tansu: Tansu,
    pub(crate) emu: Emu,
    pub(crate) config: Config,
    pub(crate) producer: FutureProducer,
    pub(crate) next: usize,
}

impl Run {
    pub(crate) async fn start() -> Run {
        let tansu = Tansu::start();
        for t in ["capture.messages", "archive.messages", "byok.quarantine"] {
            tansu.create_topic(t, 3);
        }
        for t in ["byok.deks", "byok.keks", "byok.audit"] {
            tansu.create_topic(t, 1);
        }
        let emu = Emu::start().await;
        let port = emu.port();
        let dir = emu.dir.path();
        let path = super::emu_config::write(dir, port, &emu.running.ca_pem, "");
        let operator = dir.join("operator.secret");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "bootstrap_servers = \"127.0.0.1:9092\"",
                &format!(
                    "bootstrap_servers = \"{}\"\ngroup_id = \"byok-audit\"",
                    tansu.bootstrap()
                ),
            )
            .replace("[keys]", "[batch]\nmax_wait = \"20ms\"\n\n[keys]")
            + &super::emu_config::audit_toml(port, &operator);
        std::fs::write(&path, text).unwrap();
        let mut config = Config::load(&path).unwrap();
        assert!(config.audit.is_some());
        // readers trust only pinned versions: pin the one the emulator made
        let kid = operator_key(&config).await.kid.to_string();
        let pinned = std::fs::read_to_string(&path).unwrap().replace(
            "cluster = \"test-cluster\"",
            &format!("cluster = \"test-cluster\"\nsigning_keys = [\"{kid}\"]"),
        );
        std::fs::write(&path, pinned).unwrap();
        config = Config::load(&path).unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", tansu.bootstrap())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Run {
            tansu,
            emu,
            config,
            producer,
            next: 0,
        }
    }

    /// Captures `n` messages: acme, globex and a tenant nobody knows (quarantined).
    pub(crate) async fn capture(&mut self, n: usize) {
        let mut sends = Vec::new();
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let tenant = ["acme", "globex", "nobody"][i % 3];
            let body =
                format!(r#"{{"tenant_id":"{tenant}","message_id":"m{i}","body":"hello {i}"}}"#);
            sends.push((format!("conv-{}", i % 5), body));
        }
        let futs = sends.iter().map(|(k, b)| {
            self.producer.send(
                FutureRecord::to("capture.messages").key(k).payload(b),
                Timeout::Never,
            )
        });
        for r in futures::future::join_all(futs).await {
            r.unwrap();
        }
    }

    /// Runs a worker until `total` records are done, then stops it cleanly.
    pub(crate) async fn work_until(&self, total: u64) {
        let health = Arc::new(Health::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(byok::pipeline::run_with(
            self.config.clone(),
            stopped,
            Arc::clone(&health),
            byok::pipeline::seal_stage,
        ));
        let deadline = Instant::now() + Duration::from_secs(180);
        while health.records_done() < total {
            assert!(
                Instant::now() < deadline,
                "worker stalled at {}",
                health.records_done()
            );
            assert!(
                !worker.is_finished(),
                "the worker stopped: {:?}",
                worker.await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stop.send(true).unwrap();
        worker.await.unwrap().unwrap();
    }

    /// `byok verify` with the operator's signing key version `kid` pinned: (success, output).
    pub(crate) async fn verify_cli(&self, kid: &str) -> (bool, String) {
        assert!(
            self.config.audit.as_ref().unwrap().trusted == [kid],
            "the run pinned {kid}"
        );
        let path = self.config.source.clone();
        super::run_byok(vec!["verify".into(), "--config".into(), path.into()]).await
    }

    /// Rotates globex's key in its vault and runs `byok rewrap --tenant globex`.
    pub(crate) async fn rotate_and_rewrap_globex(
        &self,
    ) -> std::collections::BTreeMap<String, byok::lifecycle::rewrap::RewrapStats> {
        self.emu
            .admin
            .key_action("globex-kv", "archive-kek", "rotate", None)
            .await
            .unwrap();
        let opts = byok::lifecycle::rewrap::RewrapOptions {
            tenant: Some("globex".into()),
            ..Default::default()
        };
        byok::lifecycle::rewrap::rewrap(&self.config, &opts, |_, _| {})
            .await
            .unwrap()
    }

    /// `byok verify` with more arguments: (success, output).
    pub(crate) async fn verify_with(&self, more: &[std::ffi::OsString]) -> (bool, String) {
        let mut args: Vec<std::ffi::OsString> = vec![
            "verify".into(),
            "--config".into(),
            self.config.source.clone().into(),
        ];
        args.extend(more.iter().cloned());
        super::run_byok(args).await
    }

    /// `byok verify --heads`, its JSON array of signed heads saved as a witness file.
    pub(crate) async fn witness(&self) -> std::path::PathBuf {
        let (ok, out) = self.verify_with(&["--heads".into()]).await;
        assert!(ok, "{out}");
        let line = out
            .lines()
            .find(|l| l.starts_with("[\""))
            .unwrap_or_else(|| panic!("no heads printed: {out}"));
        let values: Vec<String> = serde_json::from_str(line).unwrap();
        assert!(!values.is_empty(), "{out}");
        let path = self.config.source.with_file_name("witness.json");
        std::fs::write(&path, line).unwrap();
        path
    }

    /// The signing key version that certified the sessions (from the first signer statement).
    pub(crate) fn signing_kid(&self) -> String {
        read_topic(&self.tansu.bootstrap(), "byok.audit")
            .iter()
            .find_map(|(_, _, _, v, _)| {
                let j: serde_json::Value = serde_json::from_slice(v.as_ref()?).ok()?;
                j["signing_kid"].as_str().map(str::to_owned)
            })
            .expect("a signer statement")
    }

    /// Dumps the audit topic and every output record as the independent verifier reads them
    /// (tests/python/audit_verify.py), with what the run is expected to verify to.
    pub(crate) async fn dump(&self, path: &std::path::Path, writers: usize, verdict: &str) {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let opt = |b: &Option<Vec<u8>>| b.as_deref().map(b64);
        let (n, e) = self.operator_signing_key().await;
        let audit: Vec<serde_json::Value> = read_topic(&self.tansu.bootstrap(), "byok.audit")
            .iter()
            .map(|r| {
                serde_json::json!({
                    "key": String::from_utf8_lossy(r.2.as_deref().unwrap_or_default()),
                    "value": b64(r.3.as_deref().unwrap_or_default()),
                })
            })
            .collect();
        let mut records = Vec::new();
        for topic in OUTPUTS {
            for r in read_topic(&self.tansu.bootstrap(), topic) {
                let headers: Vec<serde_json::Value> =
                    r.4.iter()
                        .map(|(k, v)| serde_json::json!([k, opt(v)]))
                        .collect();
                records.push(serde_json::json!({
                    "topic": topic, "partition": r.0, "offset": r.1,
                    "key": opt(&r.2), "value": opt(&r.3), "headers": headers,
                }));
            }
        }
        let dump = serde_json::json!({
            "about": "a log the worker wrote on Tansu (tests/audit_log.rs), for the independent verifier tests/python/audit_verify.py",
            "cluster": "test-cluster",
            "signing_key": {"n": b64(&n), "e": b64(&e)},
            "expect": {"writers": writers, "verdict": verdict},
            "audit": audit,
            "records": records,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&dump).unwrap()).unwrap();
    }

    pub(crate) async fn operator_signing_key(&self) -> (Vec<u8>, Vec<u8>) {
        let v = operator_key(&self.config).await;
        (v.n, v.e)
    }
}

/// The operator's signing key's current version.
async fn operator_key(config: &Config) -> byok::kms::VersionInfo {
    let audit = config.audit.as_ref().unwrap();
    let http = byok::kms::azure::http_client(&config.keys, None).unwrap();
    let p =
        byok::kms::azure::AzureKeyProvider::new("_audit", &audit.signing_key, http, Duration::ZERO)
            .unwrap();
    p.get_version(None).await.unwrap()
}
