//! Key scenarios on a real broker (Tansu) with the Key Vault emulator over HTTPS: the tenant
//! changes its key while traffic flows, and the worker follows within one key-check interval.
//! Each scenario ends with the same proof: every source offset is in the archive or (for a
//! revoked period not yet drained) in the quarantine with the right reason; quarantined records
//! of a revoked tenant cannot be opened while its key is revoked, not even with the operator's
//! key; after recovery and drain everything is in the archive and decrypts to the original; no
//! plaintext in any topic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use byok::archive::{self as reader, ReadOptions};
use byok::config::Config;
use byok::kms::KeyProvider;
use byok::lifecycle::drain::{DrainOptions, drain_quarantine};
use byok::pipeline::health::Health;
use common::emu::*;
use common::tansu::Tansu;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message};
use serde_json::json;

const MARKER: &str = "PLAINTEXT-MARKER";
const TOPICS: [&str; 5] = [
    "capture.messages",
    "archive.messages",
    "byok.deks",
    "byok.keks",
    "byok.quarantine",
];

struct Scenario {
    tansu: Tansu,
    emu: Emu,
    config: Config,
    config_path: std::path::PathBuf,
    producer: FutureProducer,
    sent: BTreeMap<String, String>, // message id -> body
    next: usize,
    started: Instant,
}

impl Scenario {
    async fn start(extra_toml: &str) -> Scenario {
        Self::start_with(extra_toml, |_| {}).await
    }

    /// With the emulator's options tweaked.
    async fn start_with(
        extra_toml: &str,
        emu_options: impl FnOnce(&mut byok::emulator::Options),
    ) -> Scenario {
        let tansu = Tansu::start();
        for t in TOPICS {
            tansu.create_topic(t, if t.starts_with("byok.") { 1 } else { 3 });
        }
        let emu = Emu::start_with(emu_options).await;
        let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(
                "bootstrap_servers = \"127.0.0.1:9092\"",
                &format!(
                    "bootstrap_servers = \"{}\"\ngroup_id = \"byok-keys\"",
                    tansu.bootstrap()
                ),
            )
            .replace(
                "[keys]",
                &format!("[batch]\nmax_wait = \"20ms\"\n{extra_toml}\n[keys]"),
            );
        std::fs::write(&path, text).unwrap();
        let config = Config::load(&path).unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", tansu.bootstrap())
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Scenario {
            tansu,
            emu,
            config,
            config_path: path,
            producer,
            sent: BTreeMap::new(),
            next: 0,
            started: Instant::now(),
        }
    }

    /// Captures `n` messages, alternating acme and globex.
    async fn capture(&mut self, n: usize) {
        let mut bodies = Vec::new();
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let tenant = ["acme", "globex"][i % 2];
            let body = format!(
                r#"{{"tenant_id":"{tenant}","message_id":"m{i}","body":"{MARKER} {i} please confirm the trade"}}"#
            );
            self.sent.insert(format!("m{i}"), body.clone());
            bodies.push((format!("conv-{}", i % 7), body));
        }
        let sends = bodies.iter().map(|(k, b)| {
            self.producer.send(
                FutureRecord::to("capture.messages").key(k).payload(b),
                Timeout::Never,
            )
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
    }

    /// Captures `n` messages of `tenant` into one partition of the capture topic.
    async fn capture_to(&mut self, partition: i32, tenant: &str, n: usize) {
        for _ in 0..n {
            let i = self.next;
            self.next += 1;
            let body = format!(
                r#"{{"tenant_id":"{tenant}","message_id":"m{i}","body":"{MARKER} {i} see you at the desk"}}"#
            );
            self.sent.insert(format!("m{i}"), body.clone());
            self.producer
                .send(
                    FutureRecord::to("capture.messages")
                        .partition(partition)
                        .key(&format!("conv-{i}"))
                        .payload(&body),
                    Timeout::Never,
                )
                .await
                .unwrap();
        }
    }

    fn count(&self, topic: &str) -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.tansu.bootstrap())
            .set("group.id", "byok-test-counter")
            .create()
            .unwrap();
        let partitions = if topic.starts_with("byok.") { 1 } else { 3 };
        (0..partitions)
            .map(|p| {
                let (lo, hi) = (0..5)
                    .find_map(|_| c.fetch_watermarks(topic, p, Duration::from_secs(20)).ok())
                    .unwrap();
                hi - lo
            })
            .sum()
    }

    /// Waits until the worker has processed everything captured so far.
    async fn settle(&self, health: &Health, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while health.records_done() < self.next as u64 {
            assert!(
                Instant::now() < deadline,
                "{what}: {} of {} processed",
                health.records_done(),
                self.next
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every message captured is in the archive exactly as captured (duplicates dropped), and no
    /// output topic holds plaintext.
    async fn assert_everything_archived(&self) {
        self.assert_within_budget().await;
        let (archive, failed, _) = open_all(&self.config, "archive.messages").await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(
            archive.len(),
            self.sent.len(),
            "every message is in the archive"
        );
        for (id, body) in &self.sent {
            assert_eq!(archive.get(id), Some(body), "{id} decrypts to the original");
        }
        self.assert_no_plaintext().await;
    }

    /// The requests every vault received since the scenario started (from the emulator: the
    /// worker's, and those of any tool the scenario ran) stay within the budget one worker is
    /// configured with (`keys.vault_requests_per_10s`, bursting to half of it).
    async fn assert_within_budget(&self) {
        let stats = self.emu.admin.stats().await.unwrap();
        let secs = self.started.elapsed().as_secs_f64();
        let per_10s = f64::from(self.config.keys.vault_requests_per_10s);
        let budget = (per_10s / 2.0).max(1.0) + per_10s * secs / 10.0;
        for vault in ["acme-vault", "globex-kv"] {
            let calls = vault_calls(&stats, vault);
            assert!(
                calls as f64 <= budget,
                "{calls} requests to {vault} in {secs:.0} s: over the budget of {budget:.0}"
            );
            eprintln!("budget: {calls} requests to {vault} in {secs:.0} s (budget {budget:.0})");
        }
    }

    /// Every raw value of every output topic: no plaintext marker anywhere but the capture topic.
    async fn assert_no_plaintext(&self) {
        let outputs: Vec<&str> = TOPICS
            .into_iter()
            .filter(|t| *t != "capture.messages")
            .collect();
        self.assert_no_plaintext_in(&outputs).await;
    }

    /// No plaintext marker in any record of `topics`.
    async fn assert_no_plaintext_in(&self, topics: &[&str]) {
        for topic in topics {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", self.tansu.bootstrap())
                .set("group.id", format!("byok-scan-{topic}"))
                .set("auto.offset.reset", "earliest")
                .create()
                .unwrap();
            c.subscribe(&[topic]).unwrap();
            let total = self.count(topic);
            let mut n = 0;
            let deadline = Instant::now() + Duration::from_secs(60);
            while n < total && Instant::now() < deadline {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
                    n += 1;
                    let mut bytes = m.payload().unwrap_or_default().to_vec();
                    if let Some(h) = m.headers() {
                        for h in h.iter() {
                            bytes.extend_from_slice(h.value.unwrap_or_default());
                        }
                    }
                    assert!(
                        !String::from_utf8_lossy(&bytes).contains(MARKER),
                        "plaintext in {topic} at offset {}",
                        m.offset()
                    );
                }
            }
            assert_eq!(n, total, "scanned every record of {topic}");
        }
    }
}

fn start_worker(
    config: &Config,
) -> (
    tokio::sync::watch::Sender<bool>,
    Arc<Health>,
    tokio::task::JoinHandle<Result<byok::pipeline::RunStats, byok::pipeline::WorkerError>>,
) {
    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run_with(
        config.clone(),
        stopped,
        Arc::clone(&health),
        byok::pipeline::seal_stage,
    ));
    (stop, health, worker)
}

/// Opens a topic with the reader; returns (message id -> plaintext, failures).
async fn open_all(config: &Config, topic: &str) -> (HashMap<String, String>, Vec<String>, u64) {
    let mut opened = HashMap::new();
    let mut failed = Vec::new();
    let stats = reader::read(
        config,
        &ReadOptions::topic(topic),
        |o| {
            let v = o.value.unwrap();
            let id = serde_json::from_str::<serde_json::Value>(&v).unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned();
            opened.insert(id, v);
        },
        |f| failed.push(f.reason),
    )
    .await
    .unwrap();
    (opened, failed, stats.read)
}

/// How the tenant takes its key away, and gives it back.
#[derive(Debug, Clone, Copy)]
enum Revoke {
    /// Disable the key (the pinned version), then enable it.
    Disable,
    /// Soft-delete the key, then recover it.
    SoftDelete,
    /// Remove the app's role on the vault, then assign it again.
    RemoveRole,
}

impl Revoke {
    fn reason(self) -> &'static str {
        match self {
            Revoke::Disable => "key-disabled",
            // the customer's role (keys/read, encrypt, decrypt) cannot read deleted keys, so a
            // soft-deleted key looks not found; with deletedKeys/read it is key-deleted
            // (tests/kms_provider.rs)
            Revoke::SoftDelete => "key-not-found",
            Revoke::RemoveRole => "access-denied",
        }
    }
    async fn revoke(self, emu: &Emu) {
        match self {
            Revoke::Disable => emu
                .admin
                .set_key_enabled("acme-vault", "byok-key", None, false)
                .await
                .unwrap(),
            Revoke::SoftDelete => emu
                .admin
                .key_action("acme-vault", "byok-key", "delete", None)
                .await
                .unwrap(),
            Revoke::RemoveRole => emu
                .admin
                .remove_role("acme-vault", ACME_APP, None)
                .await
                .unwrap(),
        };
    }
    async fn restore(self, emu: &Emu) {
        match self {
            Revoke::Disable => emu
                .admin
                .set_key_enabled("acme-vault", "byok-key", None, true)
                .await
                .unwrap(),
            Revoke::SoftDelete => emu
                .admin
                .key_action("acme-vault", "byok-key", "recover", None)
                .await
                .unwrap(),
            Revoke::RemoveRole => emu
                .admin
                .add_role("acme-vault", ACME_APP, "byok")
                .await
                .unwrap(),
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_the_key_then_recover_and_drain() {
    revoke_recover_drain(Revoke::Disable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_delete_the_key_then_recover_it_and_drain() {
    revoke_recover_drain(Revoke::SoftDelete).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remove_the_role_then_assign_it_again_and_drain() {
    revoke_recover_drain(Revoke::RemoveRole).await;
}

async fn revoke_recover_drain(how: Revoke) {
    let mut s = Scenario::start("").await;
    let (stop, health, worker) = start_worker(&s.config);

    // 1. traffic while the key is usable
    s.capture(200).await;
    s.settle(&health, "before").await;
    let archived_before = s.count("archive.messages");
    assert_eq!(archived_before, 200);

    // 2. the tenant takes its key away; traffic continues until the worker quarantines acme
    how.revoke(&s.emu).await;
    let disabled_at = s.next;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        s.capture(20).await;
        s.settle(&health, "while disabled").await;
        if s.count("byok.quarantine") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "acme never quarantined");
    }
    s.capture(100).await;
    s.settle(&health, "while disabled").await;
    let quarantined = s.count("byok.quarantine");
    let archived_during = s.count("archive.messages") - archived_before;

    // quarantined records are acme's, reason key-disabled, under acme DEKs wrapped locally
    let registry = reader::load_registry(&s.config).await.unwrap();
    let (q_open, q_failed, q_read) = open_all(&s.config, "byok.quarantine").await;
    assert!(
        q_open.is_empty(),
        "nothing of a revoked tenant opens: {q_open:?}"
    );
    assert_eq!(q_read as i64, quarantined);
    assert!(
        q_failed
            .iter()
            .all(|f| f.contains("cannot be unwrapped") && f.contains("acme")),
        "{q_failed:?}"
    );
    let local: Vec<_> = registry.values().filter(|r| r.wrapped_locally).collect();
    assert!(
        !local.is_empty(),
        "DEKs wrapped locally with acme's public key"
    );
    assert!(local.iter().all(|r| r.tenant == "acme"));
    // not even the operator's quarantine key opens them
    let mut limiters = HashMap::new();
    let operator = byok::kms::tenant_kms(
        "_quarantine",
        &s.config.quarantine,
        &s.config.keys,
        &mut limiters,
    )
    .unwrap();
    for r in &local {
        assert!(operator.unwrap(&r.kek, r.dek, &r.wrapped).await.is_err());
    }
    {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", s.tansu.bootstrap())
            .set("group.id", "byok-test-reasons")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        c.subscribe(&["byok.quarantine"]).unwrap();
        let mut reasons = HashSet::new();
        let mut n = 0;
        while n < quarantined {
            if let Some(Ok(m)) = c.poll(Duration::from_secs(1)) {
                n += 1;
                let h = m.headers().unwrap();
                let get = |k: &str| {
                    h.iter()
                        .find(|h| h.key == k)
                        .and_then(|h| h.value)
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                };
                reasons.insert((get("byok.tenant"), get("byok.reason")));
            }
        }
        assert_eq!(
            reasons,
            HashSet::from([(Some("acme".to_owned()), Some(how.reason().to_owned()))])
        );
    }

    // 3. the tenant gives its key back; traffic continues into the archive
    how.restore(&s.emu).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = s.count("byok.quarantine");
        s.capture(20).await;
        s.settle(&health, "after recovery").await;
        if s.count("byok.quarantine") == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acme still quarantined after recovery"
        );
    }
    s.capture(100).await;
    s.settle(&health, "after recovery").await;
    // records captured after the key came back but before the next key check are quarantined too
    let quarantined = s.count("byok.quarantine");

    // 4. the worker drains acme's quarantine into the archive by itself (records moved
    // unchanged, each DEK proven through Key Vault first)
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.count("archive.messages") < s.sent.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "the worker did not drain the quarantine: {} of {} archived",
            s.count("archive.messages"),
            s.sent.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let run = worker.await.unwrap().unwrap();
    assert_eq!(run.drained as i64, quarantined, "drained by the worker");
    // the drain's progress is saved: `byok replay --quarantine` then has nothing left to do
    let again = drain_quarantine(&s.config, &DrainOptions::default(), |_, _| {})
        .await
        .unwrap();
    assert!(again.failed.is_empty(), "{:?}", again.failed);
    assert_eq!(again.moved + again.resealed, 0, "{again:?}");
    let drained = run.drained;

    // 5. everything captured is in the archive and decrypts to the original
    let (archive, failed, read) = open_all(&s.config, "archive.messages").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        archive.len(),
        s.sent.len(),
        "every message is in the archive"
    );
    for (id, body) in &s.sent {
        assert_eq!(archive.get(id), Some(body), "{id} decrypts to the original");
    }
    s.assert_no_plaintext().await;
    s.assert_within_budget().await;
    eprintln!(
        "{how:?} then restore and drain: {} messages captured ({} before the key was taken away, {} during or after); \
         quarantined: {quarantined} (acme, {}, {} DEKs wrapped locally); archived while revoked: {archived_during} \
         (globex, and acme within the check interval); drained by the worker: {drained}; archive records read back: {read}, all {} \
         decrypt to the original; no plaintext in any topic",
        s.sent.len(),
        disabled_at,
        s.sent.len() - disabled_at,
        how.reason(),
        local.len(),
        archive.len()
    );
}

/// Calls to a vault the emulator saw (answered or refused by a fault).
fn vault_calls(stats: &serde_json::Value, vault: &str) -> u64 {
    stats["calls"][vault]
        .as_object()
        .map_or(0, |ops| ops.values().filter_map(|n| n.as_u64()).sum())
}

/// acme's vault drops every connection for 60 s while traffic keeps arriving (20 messages every
/// 2 s), with a request budget of 20 per 10 s toward each vault. Held for its full length: the
/// archive grows in every 10 s of it, for both tenants; nothing is quarantined; acme's new DEKs
/// are wrapped locally; the worker's calls to the vault (refused ones included) stay within the
/// budget; once the vault is back every record opens through Key Vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_60_s_vault_outage_keeps_archiving_within_the_request_budget() {
    // small DEKs so that the outage needs new ones
    let mut s = Scenario::start("[dek]\nmax_messages = 50\n").await;
    let text = std::fs::read_to_string(&s.config_path)
        .unwrap()
        .replace("[keys]", "[keys]\nvault_requests_per_10s = 20");
    std::fs::write(&s.config_path, text).unwrap();
    s.config = Config::load(&s.config_path).unwrap();
    assert_eq!(s.config.keys.vault_requests_per_10s, 20);
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(100).await;
    s.settle(&health, "before").await;

    let calls_before = vault_calls(&s.emu.admin.stats().await.unwrap(), "acme-vault");
    s.emu
        .admin
        .set_fault(json!({"target": "acme-vault", "outage_seconds": 60}))
        .await
        .unwrap();
    let started = Instant::now();
    let mut windows = Vec::new(); // archive records added in each 10 s of the outage
    let mut last = s.count("archive.messages");
    let mut window_start = Instant::now();
    while started.elapsed() < Duration::from_secs(58) {
        s.capture(20).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if window_start.elapsed() >= Duration::from_secs(10) {
            let now = s.count("archive.messages");
            windows.push(now - last);
            last = now;
            window_start = Instant::now();
        }
    }
    let outage_calls =
        vault_calls(&s.emu.admin.stats().await.unwrap(), "acme-vault") - calls_before;
    let outage_secs = started.elapsed().as_secs_f64();
    let during = s.next;
    assert!(
        windows.len() >= 5 && windows.iter().all(|n| *n > 0),
        "the archive grew in every 10 s of the outage: {windows:?}"
    );
    assert_eq!(
        s.count("byok.quarantine"),
        0,
        "never quarantined for an outage"
    );
    // the budget: 20 per 10 s, bursting to 10
    let budget = 10 + (outage_secs / 10.0 * 20.0).ceil() as u64;
    assert!(
        outage_calls <= budget,
        "{outage_calls} calls to acme's vault in {outage_secs:.0} s: over the budget of {budget}"
    );
    let registry = reader::load_registry(&s.config).await.unwrap();
    let local = registry
        .values()
        .filter(|r| r.wrapped_locally && r.tenant == "acme")
        .count();
    assert!(
        local > 0,
        "acme's new DEKs were wrapped locally during the outage"
    );

    // the outage ends by itself; traffic continues
    while started.elapsed() < Duration::from_secs(62) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    s.capture(50).await;
    s.settle(&health, "after the outage").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    // everything, the locally wrapped DEKs' records included, opens through Key Vault
    s.assert_everything_archived().await;
    eprintln!(
        "60 s outage: {} messages ({} captured during it), archive growth per 10 s of outage {windows:?}, {outage_calls} calls to acme's vault in {outage_secs:.0} s (budget {budget}), {local} acme DEKs wrapped locally, 0 quarantined, all opened through Key Vault after",
        s.sent.len(),
        during - 100,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rewraps_the_dek_in_use_and_makes_new_deks_under_the_new_version() {
    // globex follows its key's newest version (acme pins one)
    let mut s = Scenario::start("").await;
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(100).await;
    s.settle(&health, "before").await;
    let globex = |r: &&byok::registry::DekRecord| r.tenant == "globex";
    let registry = reader::load_registry(&s.config).await.unwrap();
    let first: Vec<String> = registry
        .values()
        .filter(globex)
        .map(|r| r.kek.version().to_owned())
        .collect();
    assert_eq!(first.len(), 1, "one globex DEK before the rotation");
    s.emu
        .admin
        .key_action("globex-kv", "archive-kek", "rotate", None)
        .await
        .unwrap();
    // the DEK in use is rewrapped from memory onto the new version, and new DEKs come under it
    let deadline = Instant::now() + Duration::from_secs(60);
    let versions = loop {
        s.capture(20).await;
        s.settle(&health, "after rotation").await;
        let registry = reader::load_registry(&s.config).await.unwrap();
        let deks: Vec<_> = registry.values().filter(globex).collect();
        let versions: HashSet<String> = deks.iter().map(|r| r.kek.version().to_owned()).collect();
        if deks.len() >= 2
            && !versions.contains(&first[0])
            && deks.iter().any(|r| r.rewrapped.is_some())
        {
            break versions;
        }
        assert!(
            Instant::now() < deadline,
            "globex DEKs after the rotation: {deks:?}"
        );
    };
    assert_eq!(versions.len(), 1, "every globex DEK under the new version");
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(s.count("byok.quarantine"), 0);
    s.assert_everything_archived().await;
    eprintln!(
        "rotation: {} messages, globex's DEK in use rewrapped onto the new version and new DEKs under it, all decrypt",
        s.sent.len()
    );
}

/// The version in use is disabled after a rotation: `byok rewrap` first moves every registry DEK
/// onto the newest version (archive records untouched), so the archive still opens with the old
/// version disabled; a second run moves nothing; a dry run writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_then_disable_the_old_version_and_the_archive_still_opens() {
    use byok::lifecycle::rewrap::{RewrapOptions, rewrap};
    let mut s = Scenario::start("[dek]\nmax_messages = 40\n").await;
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(200).await;
    s.settle(&health, "before").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let registry = reader::load_registry(&s.config).await.unwrap();
    let old: HashSet<String> = registry
        .values()
        .filter(|r| r.tenant == "globex")
        .map(|r| r.kek.version().to_owned())
        .collect();
    assert_eq!(old.len(), 1);
    let old = old.into_iter().next().unwrap();
    let globex_deks = registry.values().filter(|r| r.tenant == "globex").count() as u64;
    assert!(globex_deks >= 2, "{globex_deks}");

    s.emu
        .admin
        .key_action("globex-kv", "archive-kek", "rotate", None)
        .await
        .unwrap();
    let only = |dry_run| RewrapOptions {
        tenant: Some("globex".into()),
        to_version: None,
        dry_run,
    };
    // keys usage: every globex record is under the old version
    let before = byok::lifecycle::usage::usage(&s.config, Some("globex"))
        .await
        .unwrap();
    let versions = &before["globex"];
    assert_eq!(versions.len(), 1);
    assert!(versions[0].kek.ends_with(&old));
    assert_eq!(versions[0].records, 100, "globex's 100 messages");
    assert_eq!(versions[0].deks.len() as u64, globex_deks);
    let dry = rewrap(&s.config, &only(true), |_, _| {}).await.unwrap();
    assert_eq!(dry["globex"].rewrapped, globex_deks);
    let after_dry = reader::load_registry(&s.config).await.unwrap();
    assert!(
        after_dry
            .values()
            .filter(|r| r.tenant == "globex")
            .all(|r| r.kek.version() == old),
        "a dry run writes nothing"
    );

    let done = rewrap(&s.config, &only(false), |_, _| {}).await.unwrap();
    let g = &done["globex"];
    assert!(g.failed.is_empty(), "{:?}", g.failed);
    assert_eq!(
        (g.deks, g.rewrapped, g.already),
        (globex_deks, globex_deks, 0)
    );
    assert!(!g.target.ends_with(&old), "moved to the new version");
    // keys usage: nothing left under the old version, so it can be retired
    let after = byok::lifecycle::usage::usage(&s.config, Some("globex"))
        .await
        .unwrap();
    assert_eq!(after["globex"].len(), 1);
    assert!(!after["globex"][0].kek.ends_with(&old));
    assert_eq!(after["globex"][0].records, 100);
    let again = rewrap(&s.config, &only(false), |_, _| {}).await.unwrap();
    assert_eq!(
        (again["globex"].rewrapped, again["globex"].already),
        (0, globex_deks)
    );

    // the tenant disables the old version: the archive still opens
    s.emu
        .admin
        .set_key_enabled("globex-kv", "archive-kek", Some(&old), false)
        .await
        .unwrap();
    let registry = reader::load_registry(&s.config).await.unwrap();
    assert!(
        registry
            .values()
            .filter(|r| r.tenant == "globex")
            .all(|r| r.kek.version() != old && r.rewrapped.is_some())
    );
    s.assert_everything_archived().await;
    eprintln!(
        "rewrap: {globex_deks} globex DEKs moved from {old} to {}, old version disabled, all {} messages open",
        g.target,
        s.sent.len()
    );
}

/// The version in use (acme pins one) is disabled while a newer one is enabled: the worker
/// switches to the newer version, and first rewraps the DEK it holds in memory onto it (the
/// disabled version can no longer decrypt), so everything sealed before the switch still opens.
/// Nothing is quarantined: the key is not revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_version_in_use_switches_and_rewraps_from_memory() {
    let mut s = Scenario::start("").await;
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(100).await;
    s.settle(&health, "before").await;
    let pinned = "78deebed173b48e48f55abf87ed4cf71";
    s.emu
        .admin
        .key_action("acme-vault", "byok-key", "rotate", None)
        .await
        .unwrap();
    s.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", Some(pinned), false)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        s.capture(20).await;
        s.settle(&health, "after disabling the pinned version")
            .await;
        let registry = reader::load_registry(&s.config).await.unwrap();
        let acme: Vec<_> = registry.values().filter(|r| r.tenant == "acme").collect();
        if acme.iter().all(|r| r.kek.version() != pinned)
            && acme.iter().any(|r| r.rewrapped.is_some())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acme's DEK still under the disabled version: {acme:?}"
        );
    }
    s.capture(50).await;
    s.settle(&health, "after the switch").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(
        s.count("byok.quarantine"),
        0,
        "a disabled version with a usable one is not a revocation"
    );
    s.assert_everything_archived().await;
    eprintln!(
        "version switch: {} messages; acme's DEK rewrapped from memory off the disabled version, all open",
        s.sent.len()
    );
}

/// A 429 storm on acme's vault (its budget cut to two RSA-4096 operations per 10 s) while
/// traffic needs new DEKs: archiving continues (new DEKs wrapped locally when the vault keeps
/// refusing), nothing is quarantined for it, and the worker backs off (Retry-After) instead of
/// hammering the vault; afterwards everything opens through Key Vault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_keeps_archiving_and_the_worker_backs_off() {
    let mut s = Scenario::start("[dek]\nmax_messages = 20\n").await;
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(100).await;
    s.settle(&health, "before").await;
    let calls = |stats: &serde_json::Value| vault_calls(stats, "acme-vault");
    let before = calls(&s.emu.admin.stats().await.unwrap());
    s.emu
        .admin
        .vault_settings("acme-vault", json!({"budget_per_10s": 16}))
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        s.capture(20).await;
        s.settle(&health, "during the storm").await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let during = calls(&s.emu.admin.stats().await.unwrap()) - before;
    assert_eq!(
        s.count("byok.quarantine"),
        0,
        "never quarantined for throttling"
    );
    assert_eq!(
        s.count("archive.messages") as usize,
        s.sent.len(),
        "the archive kept growing"
    );
    assert!(
        (during as f64) / seconds.max(1.0) < 5.0,
        "{during} calls to acme's vault in {seconds:.1} s: the worker does not back off"
    );
    s.emu
        .admin
        .vault_settings("acme-vault", json!({"budget_per_10s": 4000}))
        .await
        .unwrap();
    s.capture(20).await;
    s.settle(&health, "after the storm").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    s.assert_everything_archived().await;
    let local = reader::load_registry(&s.config)
        .await
        .unwrap()
        .values()
        .filter(|r| r.wrapped_locally)
        .count();
    eprintln!(
        "429 storm: {} messages, {during} calls to acme's vault in {seconds:.1} s of storm, {local} DEKs wrapped locally, all open",
        s.sent.len()
    );
}

/// Every record of `topic` opened (duplicates kept), with the reader's failures.
async fn open_records(config: &Config, topic: &str) -> (Vec<reader::Opened>, Vec<String>) {
    let mut opened = Vec::new();
    let mut failed = Vec::new();
    let opts = ReadOptions {
        duplicates: true,
        ..ReadOptions::topic(topic)
    };
    reader::read(config, &opts, |o| opened.push(o), |f| failed.push(f.reason))
        .await
        .unwrap();
    (opened, failed)
}

/// A record as (key, value, headers).
type RawRecord = (Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

/// Raw archive records, for copying and tampering.
fn raw_records(s: &Scenario, topic: &str) -> Vec<RawRecord> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", s.tansu.bootstrap())
        .set("group.id", format!("byok-raw-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let total = s.count(topic);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < total && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            out.push((
                m.key().map(<[u8]>::to_vec),
                m.payload().unwrap_or_default().to_vec(),
                headers,
            ));
        }
    }
    assert_eq!(out.len() as i64, total, "read every record of {topic}");
    out
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| std::str::from_utf8(v).unwrap())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reseals_into_a_new_topic_resumes_after_a_kill_and_reports_what_it_cannot_open() {
    use byok::lifecycle::replay::{ReplayOptions, replay};
    let mut s = Scenario::start("").await;
    s.tansu.create_topic("archive.v2", 3);
    s.tansu.create_topic("archive.late", 3);
    s.tansu.create_topic("archive.globex.v3", 3);
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(150).await;
    s.settle(&health, "first half").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mid_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1_000_000;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.capture(150).await;
    s.settle(&health, "second half").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    // what at-least-once delivery and an attacker leave behind in the archive: a second copy of
    // an acme record, a globex record with one ciphertext bit flipped (under a src of its own),
    // and a record that is not a byok record at all
    let raws = raw_records(&s, "archive.messages");
    let acme = raws
        .iter()
        .find(|(_, _, h)| header(h, "byok.tenant") == "acme")
        .unwrap()
        .clone();
    let globex = raws
        .iter()
        .find(|(_, _, h)| header(h, "byok.tenant") == "globex")
        .unwrap()
        .clone();
    let mut tampered = globex.clone();
    let last = tampered.1.len() - 20;
    tampered.1[last] ^= 1;
    for (k, v) in &mut tampered.2 {
        if k == "byok.src" {
            *v = b"capture.messages/0/999999".to_vec();
        }
    }
    for (key, value, headers) in [acme.clone(), tampered] {
        let mut oh = rdkafka::message::OwnedHeaders::new();
        for (k, v) in &headers {
            oh = oh.insert(rdkafka::message::Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec = FutureRecord::to("archive.messages")
            .payload(&value)
            .headers(oh);
        if let Some(k) = &key {
            rec = rec.key(k);
        }
        s.producer.send(rec, Timeout::Never).await.unwrap();
    }
    s.producer
        .send(
            FutureRecord::<str, str>::to("archive.messages").payload("not an envelope"),
            Timeout::Never,
        )
        .await
        .unwrap();
    let opts = ReplayOptions {
        dry_run: true,
        ..ReplayOptions::new("archive.messages", "archive.v2")
    };

    // 1. dry run: every record opened, nothing written, no DEK made
    let dry = replay(&s.config, &opts, |_, _| {}).await.unwrap();
    assert_eq!(dry.read, 303);
    assert_eq!(dry.resealed, 300);
    assert_eq!(dry.duplicates, 1, "the second copy of an acme record");
    assert_eq!(dry.failed.len(), 2, "{:?}", dry.failed);
    assert_eq!(dry.deks_made, 0);
    assert_eq!(s.count("archive.v2"), 0, "a dry run writes nothing");
    let reasons: Vec<&str> = dry.failed.iter().map(|f| f.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("tampered")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("not a byok record")),
        "{reasons:?}"
    );

    // 2. the command, slowed down, killed midway
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_byok"))
        .args(["replay", "--config"])
        .arg(&s.config_path)
        .args([
            "--from",
            "archive.messages",
            "--to",
            "archive.v2",
            "--rate",
            "60",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.count("archive.v2") < 40 {
        assert!(Instant::now() < deadline, "replay wrote nothing in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = s.count("archive.v2");
    assert!(after_kill < 300, "killed midway ({after_kill} written)");

    // 3. resumed for acme only, then for everyone
    let acme_run = replay(
        &s.config,
        &ReplayOptions {
            tenants: vec!["acme".into()],
            dry_run: false,
            ..opts.clone()
        },
        |_, _| {},
    )
    .await
    .unwrap();
    let all_run = replay(
        &s.config,
        &ReplayOptions {
            dry_run: false,
            ..opts.clone()
        },
        |_, _| {},
    )
    .await
    .unwrap();
    eprintln!(
        "replay: killed after {after_kill} records; acme run {} re-sealed, {} already there; full run {} re-sealed, {} already there, {} duplicates, {} DEKs made, {} not opened",
        acme_run.resealed,
        acme_run.already_in_target,
        all_run.resealed,
        all_run.already_in_target,
        all_run.duplicates,
        all_run.deks_made,
        all_run.failed.len()
    );
    assert_eq!(acme_run.by_tenant.keys().collect::<Vec<_>>(), vec!["acme"]);
    assert_eq!(all_run.by_tenant.get("acme"), None, "acme was done");
    assert_eq!(all_run.failed.len(), 2, "{:?}", all_run.failed);
    assert!(all_run.deks_made >= 1);

    // 4. the target: every message, under new DEKs, key and byok.src kept. With at-least-once
    // delivery (Tansu has no transactions) a write of the killed run still in flight may land
    // after the next run read the target: at most one chunk of it (6 records at --rate 60) is
    // there twice, under the same byok.src. tests/pipeline_mock.rs shows exactly-once.
    let (source, _) = open_records(&s.config, "archive.messages").await;
    let (target, failed) = open_records(&s.config, "archive.v2").await;
    assert!(failed.is_empty(), "{failed:?}");
    let srcs: HashSet<&str> = target.iter().map(|t| t.src.as_str()).collect();
    assert_eq!(srcs.len(), 300, "every source record in the target");
    let twice = target.len() - srcs.len();
    eprintln!(
        "replay: {twice} records of the killed run landed after the resumed run read the target"
    );
    assert!(
        twice <= 6,
        "{twice} duplicates: more than the killed run's last chunk"
    );
    let by_src: HashMap<&str, &reader::Opened> =
        source.iter().map(|o| (o.src.as_str(), o)).collect();
    let source_deks: HashSet<&str> = source.iter().map(|o| o.dek.as_str()).collect();
    let mut ids = HashSet::new();
    for t in &target {
        let o = by_src[t.src.as_str()];
        assert_eq!(
            t.value_b64, o.value_b64,
            "{} re-sealed to the same plaintext",
            t.src
        );
        assert_eq!(t.key_b64, o.key_b64, "{}: record key kept", t.src);
        assert_eq!(t.tenant, o.tenant);
        assert!(!source_deks.contains(t.dek.as_str()), "a fresh DEK");
        let v: serde_json::Value = serde_json::from_str(t.value.as_ref().unwrap()).unwrap();
        ids.insert(v["message_id"].as_str().unwrap().to_owned());
    }
    for (id, body) in &s.sent {
        assert!(ids.contains(id), "{id} in the target");
        assert!(target.iter().any(|t| t.value.as_ref() == Some(body)));
    }

    // 5. a fourth run writes nothing
    let again = replay(
        &s.config,
        &ReplayOptions {
            dry_run: false,
            ..opts.clone()
        },
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(again.resealed, 0);
    // the 300 and the second copy of the acme record
    assert_eq!(again.already_in_target, 301);
    assert_eq!(again.duplicates, 0);
    assert_eq!(s.count("archive.v2"), target.len() as i64);

    // 6. a time range: only the second half
    let late = replay(
        &s.config,
        &ReplayOptions {
            to: "archive.late".into(),
            from_time_ms: Some(mid_ms),
            dry_run: false,
            ..opts.clone()
        },
        |_, _| {},
    )
    .await
    .unwrap();
    let (late_records, _) = open_records(&s.config, "archive.late").await;
    let late_ids: HashSet<String> = late_records
        .iter()
        .map(|o| {
            let v: serde_json::Value = serde_json::from_str(o.value.as_ref().unwrap()).unwrap();
            v["message_id"].as_str().unwrap().to_owned()
        })
        .collect();
    // the second half, and the copy of an acme record written into the archive after it
    let copied = by_src[header(&acme.2, "byok.src")];
    let copied: serde_json::Value = serde_json::from_str(copied.value.as_ref().unwrap()).unwrap();
    let mut expected: HashSet<String> = (150..300).map(|i| format!("m{i}")).collect();
    expected.insert(copied["message_id"].as_str().unwrap().to_owned());
    assert_eq!(
        late_ids, expected,
        "exactly the records sealed after the mid time"
    );
    assert_eq!(late.resealed, 151);

    // 7. one tenant into a per-tenant topic ({tenant} template)
    let globex_only = replay(
        &s.config,
        &ReplayOptions {
            to: "archive.{tenant}.v3".into(),
            tenants: vec!["globex".into()],
            dry_run: false,
            ..opts.clone()
        },
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        globex_only.by_tenant.keys().collect::<Vec<_>>(),
        vec!["globex"]
    );
    assert_eq!(globex_only.resealed, 150);
    let (v3, failed) = open_records(&s.config, "archive.globex.v3").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(v3.len(), 150);
    assert!(v3.iter().all(|o| o.tenant.as_deref() == Some("globex")));

    // 8. no plaintext in the new topics either; the vaults' budget held with the tools running
    s.assert_no_plaintext_in(&["archive.v2", "archive.late", "archive.globex.v3"])
        .await;
    s.assert_within_budget().await;
}

/// The customer rotates globex's client secret while traffic flows: a new secret is added to the
/// app registration, the operator replaces the mounted secret file, the customer removes the old
/// secret. Tokens live 3 s, so the worker asks Entra for new ones throughout; small DEKs make it
/// call Key Vault `encrypt` after the old secret is gone. Nothing is quarantined, no DEK is
/// wrapped locally (every vault call had a token), and everything is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_client_secret_while_traffic_flows_loses_nothing() {
    let mut s = Scenario::start_with("[dek]\nmax_messages = 20\n", |o| {
        o.token_lifetime = Duration::from_secs(3)
    })
    .await;
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(100).await;
    s.settle(&health, "before").await;

    const NEW_SECRET: &str = "globex-rotated-secret-not-real";
    s.emu
        .admin
        .add_secret(GLOBEX_TENANT, GLOBEX_APP, NEW_SECRET)
        .await
        .unwrap();
    // the operator replaces the file the way a Kubernetes secret volume does: write, then rename
    let file = s.emu.dir.path().join("globex.secret");
    let tmp = s.emu.dir.path().join("globex.secret.new");
    std::fs::write(&tmp, format!("{NEW_SECRET}\n")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    s.capture(40).await;
    s.settle(&health, "after the new secret").await;
    s.emu
        .admin
        .remove_secrets(GLOBEX_TENANT, GLOBEX_APP, Some(GLOBEX_SECRET))
        .await
        .unwrap();
    let removed_at = time::OffsetDateTime::now_utc();
    // the old secret is gone: traffic for 10 s, well past the 3 s tokens
    for _ in 0..10 {
        s.capture(20).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s.settle(&health, "after the old secret was removed").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    assert_eq!(s.count("byok.quarantine"), 0, "nothing quarantined");
    let registry = reader::load_registry(&s.config).await.unwrap();
    let globex_after: Vec<_> = registry
        .values()
        .filter(|r| r.tenant == "globex" && r.created > removed_at)
        .collect();
    assert!(
        globex_after.len() >= 3,
        "globex made new DEKs through Key Vault after the old secret was removed: {}",
        globex_after.len()
    );
    assert!(
        registry.values().all(|r| !r.wrapped_locally),
        "every DEK wrapped by Key Vault: the worker always had a token"
    );
    s.assert_everything_archived().await;
    eprintln!(
        "client secret rotation: {} messages archived, {} globex DEKs made through Key Vault after the old secret was removed, 0 quarantined, 0 local wraps",
        s.sent.len(),
        globex_after.len()
    );
}

/// globex's vault is down from the start and no public key of globex was ever seen (empty
/// byok.keks), so no DEK can be made for it, not even locally. Only the partition holding its
/// records waits (paused from its first globex record on); acme's partitions keep flowing. When
/// the vault answers, the monitor learns the key, the partition resumes, everything is archived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_no_known_public_key_pauses_only_its_partitions_during_an_outage() {
    let mut s = Scenario::start("").await;
    s.emu
        .admin
        .set_fault(json!({"target": "globex-kv", "outage_seconds": 300}))
        .await
        .unwrap();
    // partition 0: 5 acme, then 30 globex, then 10 acme; partitions 1 and 2: acme only
    s.capture_to(0, "acme", 5).await;
    s.capture_to(0, "globex", 30).await;
    s.capture_to(0, "acme", 10).await;
    s.capture_to(1, "acme", 60).await;
    s.capture_to(2, "acme", 60).await;
    let (stop, health, worker) = start_worker(&s.config);

    // acme's records in partitions 1 and 2, and the 5 before globex's in partition 0
    let deadline = Instant::now() + Duration::from_secs(90);
    while s.count("archive.messages") < 125 {
        assert!(
            Instant::now() < deadline,
            "acme's partitions did not flow while globex waited: {} archived",
            s.count("archive.messages")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // more acme traffic in the flowing partitions while partition 0 stays paused
    s.capture_to(1, "acme", 20).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.count("archive.messages") < 145 {
        assert!(Instant::now() < deadline, "partition 1 stopped flowing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.count("archive.messages"),
        145,
        "partition 0 is held from globex's first record on"
    );
    assert_eq!(
        s.count("byok.quarantine"),
        0,
        "never quarantined for an outage"
    );

    // the vault answers: the monitor reads globex's key, partition 0 resumes
    s.emu.admin.clear_faults().await.unwrap();
    let resumed = Instant::now();
    s.settle(&health, "after globex's vault answered").await;
    let waited = resumed.elapsed();
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    assert_eq!(s.count("byok.quarantine"), 0);
    s.assert_everything_archived().await;
    eprintln!(
        "no public key: 145 acme records archived while globex's vault was down, partition 0 held 40 records, all archived {:.1} s after the vault answered",
        waited.as_secs_f64()
    );
}

/// acme's key comes back while no worker runs: the worker started afterwards drains acme's
/// quarantine by itself as soon as it holds partition 0 (no key change seen, no traffic needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_after_the_key_came_back_drains_the_quarantine() {
    let mut s = Scenario::start("").await;
    let (stop, health, worker) = start_worker(&s.config);
    s.capture(100).await;
    s.settle(&health, "before").await;
    Revoke::Disable.revoke(&s.emu).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.count("byok.quarantine") == 0 {
        assert!(Instant::now() < deadline, "acme never quarantined");
        s.capture(20).await;
        s.settle(&health, "while disabled").await;
    }
    s.capture(40).await;
    // and one record of a tenant nobody configured: quarantined under the operator's key
    s.producer
        .send(
            FutureRecord::<(), _>::to("capture.messages")
                .payload(r#"{"tenant_id":"nobody","message_id":"x1","body":"who?"}"#),
            Timeout::Never,
        )
        .await
        .unwrap();
    s.next += 1;
    s.settle(&health, "while disabled").await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let quarantined = s.count("byok.quarantine") - 1;
    assert!(quarantined >= 20);

    // the key comes back while nothing runs
    Revoke::Disable.restore(&s.emu).await;

    // the quarantine replayed into another topic: acme's records re-sealed under acme's key,
    // the unknown tenant's reported
    s.tansu.create_topic("archive.from-quarantine", 3);
    let from_q = byok::lifecycle::replay::replay(
        &s.config,
        &byok::lifecycle::replay::ReplayOptions::new("byok.quarantine", "archive.from-quarantine"),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(from_q.resealed as i64, quarantined);
    assert_eq!(from_q.failed.len(), 1, "{:?}", from_q.failed);
    assert!(
        from_q.failed[0].reason.contains("unknown-tenant"),
        "{:?}",
        from_q.failed
    );
    let (copies, failed) = open_records(&s.config, "archive.from-quarantine").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(copies.len() as i64, quarantined);
    for c in &copies {
        let v = c.value.as_ref().unwrap();
        let id = serde_json::from_str::<serde_json::Value>(v).unwrap()["message_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            s.sent.get(&id),
            Some(v),
            "{id} re-sealed from the quarantine"
        );
        assert_eq!(c.tenant.as_deref(), Some("acme"));
    }

    // a worker starts, with no traffic at all, and drains acme's quarantine into the archive
    let (stop, _health, worker) = start_worker(&s.config);
    let deadline = Instant::now() + Duration::from_secs(90);
    while s.count("archive.messages") < s.sent.len() as i64 {
        assert!(
            Instant::now() < deadline,
            "not drained at start: {} of {} archived",
            s.count("archive.messages"),
            s.sent.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    let run = worker.await.unwrap().unwrap();
    assert_eq!(run.drained as i64, quarantined);
    assert_eq!(
        run.records_in, 0,
        "no traffic: the drain alone archived them"
    );
    s.assert_everything_archived().await;
    eprintln!(
        "drain at start: {quarantined} quarantined records of acme drained by a worker started after the key came back"
    );
}

/// Waits until `topic` holds `n` records.
async fn wait_count(s: &Scenario, topic: &str, n: i64, secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while s.count(topic) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} in {topic} after {secs} s",
            s.count(topic)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The quarantine opened with the operator's key: (reason, tenant) of each record, and whether
/// each body is one that was sent.
async fn quarantine_reasons(s: &Scenario) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut failed = Vec::new();
    reader::read(
        &s.config,
        &ReadOptions::topic("byok.quarantine"),
        |o| {
            let v = o.value.unwrap();
            let id = serde_json::from_str::<serde_json::Value>(&v).unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned();
            assert_eq!(s.sent.get(&id), Some(&v), "{id} opens to what was sent");
            out.push((
                o.reason.unwrap_or_default(),
                o.tenant.or(o.unverified_tenant),
            ));
        },
        |f| failed.push(f.reason),
    )
    .await
    .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    out
}

/// acme's app loses its role on the vault before any worker ever read the key (byok.keks is empty;
/// a disabled key would still show its public key, a key the app may not read does not): no DEK
/// can be made for acme, not even locally. Its records wait (partition paused, `/health` says so) for
/// `keys.unknown_key_hold`, never going to the operator's key before; then, as a last resort,
/// they are sealed under the operator's key with reason `key-unknown`. globex flows throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tenant_whose_public_key_was_never_seen_waits_then_is_quarantined_key_unknown() {
    let mut s = Scenario::start("").await;
    let hold = Duration::from_secs(8);
    s.config.keys.unknown_key_hold = hold;
    Revoke::RemoveRole.revoke(&s.emu).await;
    s.capture_to(0, "acme", 20).await;
    s.capture_to(1, "globex", 30).await;
    s.capture_to(2, "globex", 30).await;
    let started = Instant::now();
    let (stop, health, worker) = start_worker(&s.config);
    wait_count(
        &s,
        "archive.messages",
        60,
        90,
        "globex flows while acme waits",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while health.notes().is_none() {
        if Instant::now() > deadline {
            panic!(
                "/health never showed the hold; quarantine {:?} after {:?}",
                quarantine_reasons(&s).await,
                started.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let note = health.notes().unwrap();
    assert!(note.starts_with("1 tenant(s) held"), "{note}");
    assert!(
        health.ready().is_ok(),
        "a held tenant does not make the worker unready"
    );
    if started.elapsed() < hold {
        assert_eq!(
            s.count("byok.quarantine"),
            0,
            "quarantined before the hold was over"
        );
    }
    wait_count(&s, "byok.quarantine", 20, 120, "acme after the hold").await;
    let waited = started.elapsed();
    assert!(
        waited >= hold,
        "quarantined after {waited:?}, before the hold of {hold:?}"
    );
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.quarantined.get("key-unknown"), Some(&20), "{stats:?}");
    let q = quarantine_reasons(&s).await;
    assert_eq!(q.len(), 20);
    assert!(
        q.iter()
            .all(|(r, t)| r == "key-unknown" && t.as_deref() == Some("acme")),
        "{q:?}"
    );
    assert_eq!(s.count("archive.messages"), 60);
    eprintln!(
        "key-unknown: acme's 20 records held {:.1} s (hold {} s), then quarantined under the operator's key; globex's 60 archived meanwhile",
        waited.as_secs_f64(),
        hold.as_secs()
    );
}

/// globex's vault never answers and no public key of globex was ever seen: its records wait for
/// `keys.unknown_key_hold` (not forever), then go to the quarantine under the operator's key
/// with reason `vault-unavailable`; acme flows throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_that_never_answers_holds_its_tenant_for_the_hold_then_quarantines() {
    let mut s = Scenario::start("").await;
    let hold = Duration::from_secs(6);
    s.config.keys.unknown_key_hold = hold;
    s.emu
        .admin
        .set_fault(json!({"target": "globex-kv", "outage_seconds": 3600}))
        .await
        .unwrap();
    s.capture_to(0, "globex", 15).await;
    s.capture_to(1, "acme", 40).await;
    let started = Instant::now();
    let (stop, health, worker) = start_worker(&s.config);
    wait_count(
        &s,
        "archive.messages",
        40,
        90,
        "acme flows while globex waits",
    )
    .await;
    if started.elapsed() < hold {
        assert_eq!(
            s.count("byok.quarantine"),
            0,
            "quarantined before the hold was over"
        );
    }
    wait_count(&s, "byok.quarantine", 15, 120, "globex after the hold").await;
    assert!(started.elapsed() >= hold);
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(
        stats.quarantined.get("vault-unavailable"),
        Some(&15),
        "{stats:?}"
    );
    let q = quarantine_reasons(&s).await;
    assert!(
        q.iter()
            .all(|(r, t)| r == "vault-unavailable" && t.as_deref() == Some("globex")),
        "{q:?}"
    );
    drop(health);
}
