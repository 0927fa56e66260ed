//! The audit log (docs/audit-v1.md) written by the worker on Tansu with the Key Vault emulator:
//! a signer record certified by the operator's signing key (PS256 through Key Vault), a signed
//! checkpoint per batch naming every archive, quarantine, registry and key record as a leaf
//! exactly once, per input partition a contiguous chain, `end` on a clean exit; and a second
//! worker continuing the chains from the commit metadata.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use byok::audit::merkle::{self, ChainStep, Hash};
use byok::audit::records::{Checkpoint, verify_session_signed, verify_signer};
use byok::auditor::leaf_of;
use common::audit_run::{OUTPUTS, Raw, Run, read_topic};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// What the audit topic says, checked record by record.
#[derive(Default)]
struct Audit {
    /// Checkpoints in audit order, with their writer.
    checkpoints: Vec<Checkpoint>,
    writers: BTreeSet<String>,
    ended: BTreeSet<String>,
    /// Session keys by writer.
    sessions: BTreeMap<String, Vec<u8>>,
    /// `dek:<id>` / `kek:<tenant>` copies: (key, value).
    copies: Vec<(String, Vec<u8>)>,
}

fn b64_32(s: &str) -> Hash {
    URL_SAFE_NO_PAD.decode(s).unwrap().try_into().unwrap()
}

/// Verifies every writer's records: signer under the operator's key, then each record under the
/// session key, `seq`/`wprev` unbroken, nothing after `end`.
fn verify_audit(records: &[Raw], n: &[u8], e: &[u8]) -> Audit {
    let mut audit = Audit::default();
    // (session key, next seq, wprev) per writer
    let mut state: BTreeMap<String, (Vec<u8>, u64, Hash)> = BTreeMap::new();
    for (_, _, key, value, headers) in records {
        assert!(headers.is_empty(), "audit records carry no headers");
        let value = value.as_ref().unwrap();
        let writer = String::from_utf8(key.clone().unwrap()).unwrap();
        if writer.starts_with("dek:") || writer.starts_with("kek:") {
            audit.copies.push((writer, value.clone()));
            continue;
        }
        let j: serde_json::Value = serde_json::from_slice(value).unwrap();
        assert_eq!(j["writer"], writer.as_str(), "record key is the writer");
        assert!(!audit.ended.contains(&writer), "a record after end");
        match j["t"].as_str().unwrap() {
            "signer" => {
                let st =
                    verify_signer(value, n, e).expect("signer verifies under the operator's key");
                assert_eq!(st.cluster, "test-cluster");
                assert!(st.role == "worker" || st.role == "tool", "{}", st.role);
                // the first statement, or a re-certification continuing the writer's chain
                let (seq, wprev) = state
                    .get(&writer)
                    .map_or((0, [0u8; 32]), |(_, s, w)| (*s, *w));
                assert_eq!(st.seq, seq, "writer chain: seq of a signer statement");
                assert_eq!(
                    b64_32(&st.wprev),
                    wprev,
                    "writer chain: wprev of a signer statement"
                );
                let key = URL_SAFE_NO_PAD.decode(&st.session_key).unwrap();
                state.insert(writer.clone(), (key.clone(), seq + 1, merkle::hash(value)));
                audit.sessions.insert(writer.clone(), key);
                audit.writers.insert(writer);
            }
            t => {
                let (key, seq, wprev) = state.get_mut(&writer).expect("a signer first");
                let signed = verify_session_signed(value, key).expect("signed by the session key");
                let j: serde_json::Value = serde_json::from_str(&signed).unwrap();
                assert_eq!(j["seq"].as_u64().unwrap(), *seq, "writer chain: seq");
                assert_eq!(
                    b64_32(j["wprev"].as_str().unwrap()),
                    *wprev,
                    "writer chain: wprev"
                );
                *seq += 1;
                *wprev = merkle::hash(value);
                match t {
                    "checkpoint" => audit
                        .checkpoints
                        .push(byok::audit::records::parse_checkpoint(&signed).unwrap()),
                    "end" => {
                        audit.ended.insert(writer);
                    }
                    // key-usage receipts and chain heads: signed and chained, checked above
                    "kv" | "heads" => {}
                    other => panic!("unexpected record kind {other}"),
                }
            }
        }
    }
    audit
}

/// Every registry and key record is signed by a session of the log (`t`, `writer`, `prev` before
/// `sig`, its id the Kafka key) and copied byte for byte to the audit topic.
fn check_signed_records(bootstrap: &str, audit: &Audit) -> usize {
    let mut n = 0;
    for (topic, t, id_member) in [("byok.deks", "dek", "dek"), ("byok.keks", "kek", "tenant")] {
        for (_, _, key, value, headers) in read_topic(bootstrap, topic) {
            assert!(headers.is_empty());
            let key = String::from_utf8(key.unwrap()).unwrap();
            let value = value.expect("no tombstone");
            let j: serde_json::Value = serde_json::from_slice(&value).unwrap();
            let writer = j["writer"].as_str().expect("a writer member");
            let session = &audit.sessions[writer];
            let signed = verify_session_signed(&value, session).expect("signed by its writer");
            let s: serde_json::Value = serde_json::from_str(&signed).unwrap();
            assert_eq!(s["t"], t);
            assert_eq!(s[id_member], key.as_str(), "the record names its Kafka key");
            assert_eq!(b64_32(s["prev"].as_str().unwrap()).len(), 32);
            let copy = format!("{t}:{key}");
            assert!(
                audit.copies.iter().any(|(k, v)| *k == copy && *v == value),
                "{topic} record {key} copied to byok.audit"
            );
            n += 1;
        }
    }
    n
}

/// Every output record is a leaf of exactly one checkpoint, with the hash its checkpoint's root
/// was computed from.
fn check_coverage(bootstrap: &str, audit: &Audit) {
    let mut named: BTreeMap<(String, i32, i64), usize> = BTreeMap::new();
    for (i, c) in audit.checkpoints.iter().enumerate() {
        let mut count = 0;
        for o in &c.out {
            for [first, len] in &o.runs {
                for off in *first..first + len {
                    let prev = named.insert((o.topic.clone(), o.partition, off), i);
                    assert!(
                        prev.is_none(),
                        "{}/{}/{off} named twice",
                        o.topic,
                        o.partition
                    );
                    count += 1;
                }
            }
        }
        assert_eq!(count, c.leaves, "leaves count of checkpoint {i}");
    }
    type Place = (String, i32, i64);
    let mut hashes: BTreeMap<usize, Vec<(Place, Hash)>> = BTreeMap::new();
    let mut total = 0;
    for topic in OUTPUTS {
        for (p, o, key, value, headers) in read_topic(bootstrap, topic) {
            let hs: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            let leaf = leaf_of(topic, p, o, key.as_deref(), value.as_deref(), &hs);
            let at = (topic.to_owned(), p, o);
            let i = *named
                .get(&at)
                .unwrap_or_else(|| panic!("{topic}/{p}/{o} is named by no checkpoint (injected?)"));
            hashes.entry(i).or_default().push((at, leaf.hash));
            total += 1;
        }
    }
    assert_eq!(total, named.len(), "every named leaf is present");
    for (i, mut leaves) in hashes {
        leaves.sort();
        let list: Vec<Hash> = leaves.iter().map(|(_, h)| *h).collect();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(merkle::root(&list)),
            audit.checkpoints[i].root,
            "root of checkpoint {i}: a leaf's hash differs (altered?)"
        );
    }
}

/// Per input partition: ranges contiguous, each link computed from the previous one; returns
/// how many ranges restarted.
fn check_chains(audit: &Audit, captured: &BTreeMap<i32, i64>) -> usize {
    let mut heads: BTreeMap<i32, (i64, Hash)> = BTreeMap::new();
    let mut restarts = 0;
    for c in &audit.checkpoints {
        let root = b64_32(&c.root);
        for r in &c.ranges {
            assert_eq!(r.topic, "capture.messages");
            let prev = b64_32(&r.prev);
            match heads.get(&r.partition) {
                Some((to, link)) if r.restart.is_none() => {
                    assert_eq!(r.from, *to, "partition {} contiguous", r.partition);
                    assert_eq!(prev, *link, "partition {} linked", r.partition);
                }
                Some((to, _)) => {
                    restarts += 1;
                    assert_eq!(
                        r.from, *to,
                        "partition {} contiguous across a restart",
                        r.partition
                    );
                }
                None => {
                    assert_eq!(r.from, 0, "the first range starts at the first offset");
                    assert_eq!(prev, [0u8; 32]);
                }
            }
            let link = merkle::link(&ChainStep {
                prev: &prev,
                topic: &r.topic,
                partition: r.partition,
                from: r.from,
                to: r.to,
                n: r.n,
                root: &root,
            });
            assert_eq!(URL_SAFE_NO_PAD.encode(link), r.link, "link recomputed");
            heads.insert(r.partition, (r.to, link));
        }
    }
    for (p, end) in captured {
        assert_eq!(
            heads.get(p).map(|h| h.0),
            Some(*end),
            "partition {p} chained to its end"
        );
    }
    restarts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoints_name_every_output_once_chain_each_partition_and_continue_after_a_restart() {
    let mut run = Run::start().await;
    run.capture(300).await;
    run.work_until(300).await;
    // a second worker process (a new session) continues the chains from the commit metadata
    run.capture(150).await;
    run.work_until(150).await;

    let (n, e) = run.operator_signing_key().await;
    let records = read_topic(&run.tansu.bootstrap(), "byok.audit");
    let audit = verify_audit(&records, &n, &e);
    assert_eq!(audit.writers.len(), 2, "one session per worker start");
    assert_eq!(audit.ended, audit.writers, "each clean exit wrote end");
    assert!(audit.checkpoints.len() >= 2);
    check_coverage(&run.tansu.bootstrap(), &audit);
    assert!(check_signed_records(&run.tansu.bootstrap(), &audit) >= 3);
    let captured: BTreeMap<i32, i64> = read_topic(&run.tansu.bootstrap(), "capture.messages")
        .iter()
        .fold(BTreeMap::new(), |mut m, (p, o, ..)| {
            let e = m.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
            m
        });
    let restarts = check_chains(&audit, &captured);
    assert_eq!(
        restarts, 0,
        "the second worker carried every chain on from the commit metadata"
    );
    // byok verify reaches the same verdict: every output verified, no finding
    let kid = records
        .iter()
        .find_map(|(_, _, _, v, _)| {
            let j: serde_json::Value = serde_json::from_slice(v.as_ref()?).ok()?;
            j["signing_kid"].as_str().map(str::to_owned)
        })
        .unwrap();
    let outputs: usize = OUTPUTS
        .iter()
        .map(|t| read_topic(&run.tansu.bootstrap(), t).len())
        .sum();
    let (ok, out) = run.verify_cli(&kid).await;
    assert!(ok, "{out}");
    let verdict = format!("{outputs} passed, 0 failed");
    assert!(out.trim_end().ends_with(&verdict), "{out}");
    // an independent verifier (Python, written from the page) reaches the same verdict
    let dump = run.config.source.with_file_name("dump.json");
    run.dump(&dump, 2, &verdict).await;
    let py = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/audit_verify.py"
        ))
        .arg(&dump)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&py.stdout);
    assert!(
        py.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert!(said.trim_end().ends_with(&verdict), "{said}");
    // the witness: the newest signed heads, copied out of Kafka; the log still holds them
    let witness = run.witness().await;
    let (ok, out) = run.verify_with(&["--witness".into(), witness.into()]).await;
    assert!(ok, "{out}");
    assert!(out.trim_end().ends_with(&verdict), "{out}");
    if std::env::var_os("BYOK_WRITE_GOLDEN").is_some() {
        let golden = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/audit/worker-run.json"
        );
        std::fs::create_dir_all(std::path::Path::new(golden).parent().unwrap()).unwrap();
        std::fs::copy(&dump, golden).unwrap();
    }
    // the worker asked Key Vault to sign twice (one statement per start), nothing else
    let stats = run.emu.admin.stats().await.unwrap();
    eprintln!("operator vault calls: {}", stats["calls"]["byok-operator"]);
    assert_eq!(stats["calls"]["byok-operator"]["sign"].as_u64(), Some(2));

    // an attacker who can write to Kafka copies an archive record and a registry record: both
    // open as before for anyone who trusts headers, and verify names them injected
    let archive = read_topic(&run.tansu.bootstrap(), "archive.messages");
    let registry = read_topic(&run.tansu.bootstrap(), "byok.deks");
    for (topic, (_, _, key, value, headers)) in [
        ("archive.messages", &archive[0]),
        ("byok.deks", &registry[0]),
    ] {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header {
                key: k,
                value: v.as_deref(),
            });
        }
        let mut rec = FutureRecord::to(topic)
            .payload(value.as_deref().unwrap())
            .headers(h);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        run.producer.send(rec, Timeout::Never).await.unwrap();
    }
    let (ok, out) = run.verify_cli(&kid).await;
    assert!(!ok, "{out}");
    assert!(out.contains("injected: archive.messages/"), "{out}");
    assert!(out.contains("injected: byok.deks/0/"), "{out}");
    assert!(
        out.trim_end()
            .ends_with(&format!("{outputs} passed, 2 failed")),
        "{out}"
    );
}

/// Exactly-once on the mock cluster: each checkpoint goes in its batch's transaction; a
/// read_committed reader finds the same verified log (every output a leaf once, chains
/// contiguous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_writes_each_checkpoint_in_its_batchs_transaction() {
    let r = common::mock::rig_with(&[
        ("capture.messages", 3),
        ("archive.messages", 3),
        ("byok.deks", 1),
        ("byok.keks", 1),
        ("byok.quarantine", 1),
        ("byok.audit", 1),
    ])
    .await;
    let operator = r.emu.dir.path().join("operator.secret");
    let config = r.edit_config(|t| {
        t.replace(
            &format!("bootstrap_servers = \"{}\"", r.bootstrap),
            &format!(
                "bootstrap_servers = \"{}\"\ndelivery = \"exactly-once\"",
                r.bootstrap
            ),
        ) + &common::emu_config::audit_toml(r.emu.port(), &operator)
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    for i in 0..300 {
        let t = ["acme", "globex", "nobody"][i % 3];
        let body = format!(r#"{{"tenant_id":"{t}","body":"eos {i}"}}"#);
        producer
            .send(
                FutureRecord::<(), _>::to("capture.messages").payload(&body),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let (stop, worker, _) = common::mock::worker_until(&config, 300, 120).await;
    common::mock::stop_worker(stop, worker).await;
    let audit_cfg = config.audit.as_ref().unwrap();
    let http = byok::kms::azure::http_client(&config.keys, None).unwrap();
    let signer = byok::kms::azure::AzureKeyProvider::new(
        "_audit",
        &audit_cfg.signing_key,
        http,
        Duration::ZERO,
    )
    .unwrap();
    let v = signer.get_version(None).await.unwrap();
    let audit = verify_audit(&read_topic(&r.bootstrap, "byok.audit"), &v.n, &v.e);
    assert_eq!(audit.writers.len(), 1);
    assert_eq!(audit.ended, audit.writers);
    check_coverage(&r.bootstrap, &audit);
    assert!(check_signed_records(&r.bootstrap, &audit) >= 2);
    let captured: BTreeMap<i32, i64> = read_topic(&r.bootstrap, "capture.messages").iter().fold(
        BTreeMap::new(),
        |mut m, (p, o, ..)| {
            let e = m.entry(*p).or_insert(0);
            *e = (*e).max(o + 1);
            m
        },
    );
    check_chains(&audit, &captured);
    drop(producer);
}

/// The tools write the audit log too (§4-5): `byok rewrap` after a rotation signs the updated
/// registry records (superseding the worker's) only after the new wrap decrypted back through
/// Key Vault, `byok replay` and `byok drain` name what they wrote in their own checkpoints, each
/// under a session of role `tool` (a drain only once it writes); `byok verify` then passes with every record, the replay's
/// target included, a leaf.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewrap_replay_and_drain_write_signed_records_and_checkpoints() {
    let mut run = Run::start().await;
    run.tansu.create_topic("archive.v2", 3);
    run.capture(90).await;
    run.work_until(90).await;
    let kid = run.signing_kid();

    let stats = run.rotate_and_rewrap_globex().await;
    let globex = &stats["globex"];
    assert!(globex.rewrapped >= 1, "{globex:?}");
    assert!(globex.failed.is_empty(), "{globex:?}");
    let registry = byok::archive::load_registry(&run.config).await.unwrap();
    let moved: Vec<_> = registry.values().filter(|r| r.tenant == "globex").collect();
    assert!(
        moved
            .iter()
            .all(|r| r.rewrapped.is_some() && r.kek.as_str() == globex.target),
        "readers take the rewrapped records (their prev names the worker's): {moved:?}"
    );
    // Key Vault decrypted each new wrap back before its record was written
    let decrypts = run.emu.admin.stats().await.unwrap()["calls"]["globex-kv"]["decrypt"]
        .as_u64()
        .unwrap_or(0);
    assert!(decrypts >= 2 * globex.rewrapped, "{decrypts} decrypts");

    let replay = byok::lifecycle::replay::ReplayOptions::new("archive.messages", "archive.v2");
    let replayed = byok::lifecycle::replay::replay(&run.config, &replay, |_, _| {})
        .await
        .unwrap();
    assert_eq!(replayed.resealed, 60, "{replayed:?}");
    let drained = byok::lifecycle::drain::drain_quarantine(
        &run.config,
        &byok::lifecycle::drain::DrainOptions::default(),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(drained.resealed, 0, "the unknown tenant's records stay");

    let (n, e) = run.operator_signing_key().await;
    let audit = verify_audit(&read_topic(&run.tansu.bootstrap(), "byok.audit"), &n, &e);
    assert_eq!(
        audit.writers.len(),
        3,
        "the worker, rewrap and replay (a drain that moves nothing starts no session)"
    );
    assert_eq!(audit.ended, audit.writers);
    let (ok, out) = run.verify_cli(&kid).await;
    assert!(ok, "{out}");
    let v2 = read_topic(&run.tansu.bootstrap(), "archive.v2").len();
    assert_eq!(v2, 60);
    assert!(out.trim_end().ends_with(" 0 failed"), "{out}");
}

/// Re-certification at half-life (§5): a writer certifies a new session key with a second
/// `signer` statement continuing its chain; what it signs afterwards (a checkpoint, a registry
/// record) verifies under the new key, and readers use the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_certified_again_keeps_its_chain_and_its_records_verify() {
    let mut run = Run::start().await;
    run.capture(30).await;
    run.work_until(30).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", run.tansu.bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let audit = run.config.audit.clone().unwrap();
    let a = byok::auditor::Auditor::start(
        &run.config,
        &audit,
        byok::auditor::Role::Tool,
        "byok-test",
        producer.clone(),
        producer.clone(),
    )
    .await
    .unwrap();
    let signer = a.record_audit().await;
    a.checkpoint(Vec::new(), &[]).await.unwrap();
    a.recertify().await.unwrap();
    // a registry record signed after the re-certification, with the signer handed out before it
    let acme_kid = byok::kms::KekId::parse(
        "https://acme-vault.vault.azure.net/keys/byok-key/0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    let record = byok::registry::DekRecord {
        dek: byok::dek::DekId::new_v7(),
        tenant: "acme".into(),
        kek: acme_kid,
        wrapped: vec![1; 384],
        created: time::OffsetDateTime::now_utc(),
        worker: "byok-test".into(),
        rewrapped: None,
        wrapped_locally: false,
    };
    byok::auditor::publish_record(
        &producer,
        "byok.deks",
        &record.dek.to_string(),
        byok::audit::records::RecordKind::Dek,
        record.to_json(),
        &[0u8; 32],
        Some(&signer),
    )
    .await
    .unwrap();
    a.checkpoint(Vec::new(), &[]).await.unwrap();
    a.end().await.unwrap();

    let (n, e) = run.operator_signing_key().await;
    let log = verify_audit(&read_topic(&run.tansu.bootstrap(), "byok.audit"), &n, &e);
    assert_eq!(log.writers.len(), 2);
    let statements = read_topic(&run.tansu.bootstrap(), "byok.audit")
        .iter()
        .filter(|r| {
            r.3.as_deref()
                .is_some_and(|v| v.starts_with(br#"{"v":1,"t":"signer","#))
        })
        .count();
    assert!(statements >= 3, "the worker's and the tool's two");
    let kid = run.signing_kid();
    let (ok, out) = run.verify_cli(&kid).await;
    assert!(ok, "{out}");
    assert!(out.trim_end().ends_with(" 0 failed"), "{out}");
    let registry = byok::archive::load_registry(&run.config).await.unwrap();
    assert!(
        registry.contains_key(&record.dek),
        "readers use the record signed with the new key"
    );
}
