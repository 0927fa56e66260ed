//! The worker end to end on librdkafka's mock cluster, with the Key Vault emulator over HTTPS:
//! every captured message ends in the archive (or, without a usable tenant, the quarantine) and
//! decrypts with `byok cat`'s reader to the original bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use byok::archive::{self as reader, ReadOptions};
use byok::config::Config;
use common::mock::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

fn opts(topic: &str) -> ReadOptions {
    ReadOptions::topic(topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_archived_or_quarantined_and_decrypts_to_the_original() {
    let r = rig("\n[[tenants]]\nid = \"initech\"\nbyok_enabled = false\n").await;
    let (bootstrap, config, cluster) = (r.bootstrap.clone(), r.config.clone(), r.cluster);

    // captured traffic: two tenants by JSON field and by header, plus records the worker cannot archive
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let mut sent: HashMap<String, (Vec<u8>, &str)> = HashMap::new(); // body -> expected route
    let mut bodies = Vec::new();
    for i in 0..400 {
        let tenant = if i % 2 == 0 { "acme" } else { "globex" };
        let body = format!(
            r#"{{"tenant_id":"{tenant}","channel":"whatsapp","conversation":"c-{}","sender":"+4420794600{i:02}","body":"message {i} {}","sent_at":"2026-11-29T10:00:00Z"}}"#,
            i % 17,
            "x".repeat(i % 50)
        );
        bodies.push((Some(format!("c-{}", i % 17)), body, None::<&str>, "archive"));
    }
    bodies.push((
        None,
        r#"{"channel":"sms","body":"by header"}"#.to_owned(),
        Some("acme"),
        "archive",
    ));
    bodies.push((
        Some("k".into()),
        "not json at all".to_owned(),
        None,
        "malformed",
    ));
    bodies.push((
        None,
        r#"{"body":"no tenant"}"#.to_owned(),
        None,
        "malformed",
    ));
    bodies.push((
        None,
        r#"{"tenant_id":"umbrella","body":"unknown"}"#.to_owned(),
        None,
        "unknown-tenant",
    ));
    bodies.push((
        None,
        r#"{"tenant_id":"initech","body":"byok off"}"#.to_owned(),
        None,
        "byok-disabled",
    ));
    for (key, body, header, route) in &bodies {
        let mut rec = FutureRecord::to("capture.messages").payload(body.as_bytes());
        if let Some(k) = key {
            rec = rec.key(k.as_bytes());
        }
        if let Some(t) = header {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: "tenant-id",
                value: Some(t.as_bytes()),
            }));
        }
        producer.send(rec, Timeout::Never).await.unwrap();
        sent.insert(
            body.clone(),
            (
                key.clone().map(String::into_bytes).unwrap_or_default(),
                route,
            ),
        );
    }

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run(config.clone(), stopped));
    let total = bodies.len() as i64;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = count(&bootstrap, "archive.messages") + count(&bootstrap, "byok.quarantine");
        if done >= total {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {done} of {total} records out after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = stop_worker(stop, worker).await;
    assert_eq!(stats.records_in, total as u64);
    assert_eq!(stats.archived, 401);
    assert_eq!(stats.quarantined.get("malformed"), Some(&2));
    assert!(
        stats.deks_created >= 3,
        "acme, globex and the quarantine each got a DEK: {stats:?}"
    );
    // every record opens to the original bytes, with its provenance
    let mut opened = Vec::new();
    let mut failures = Vec::new();
    let a = reader::read(
        &config,
        &opts("archive.messages"),
        |o| opened.push(o),
        |f| failures.push(f),
    )
    .await
    .unwrap();
    let q = reader::read(
        &config,
        &opts("byok.quarantine"),
        |o| opened.push(o),
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(a.opened + q.opened, total as u64);
    let mut srcs = std::collections::HashSet::new();
    for o in &opened {
        let body = o.value.clone().unwrap();
        let (key, route) = sent
            .get(&body)
            .unwrap_or_else(|| panic!("unexpected plaintext {body}"));
        assert!(srcs.insert(o.src.clone()), "one record per source offset");
        match *route {
            "archive" => assert_eq!(o.topic, "archive.messages"),
            reason => assert_eq!(o.reason.as_deref(), Some(reason), "{body}"),
        }
        let got_key = o
            .key_b64
            .as_ref()
            .map(|k| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k).unwrap())
            .unwrap_or_default();
        assert_eq!(&got_key, key);
    }
    assert_eq!(srcs.len(), total as usize);
    // nothing in any output topic is plaintext
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "scan")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (t, n) in [("archive.messages", 4), ("byok.quarantine", 1)] {
        for p in 0..n {
            tpl.add_partition_offset(t, p, rdkafka::Offset::Beginning)
                .unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let mut scanned = 0;
    while scanned < total {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                let v = rdkafka::Message::payload(&m).unwrap();
                assert!(
                    !v.windows(7).any(|w| w == b"message"),
                    "plaintext in an output topic"
                );
                scanned += 1;
            }
            Some(Err(e)) => panic!("{e}"),
            None => panic!("scan stalled at {scanned}"),
        }
    }
    // Clients go before the mock cluster: a producer outliving it waits out its close timeout.
    drop(c);
    drop(producer);
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_quarantined_or_archived_never_lost_and_never_crashes_the_worker() {
    // large records need larger client limits, set through the passthrough tables
    let r = rig("").await;
    let config = r.with_before_keys(
        "[kafka.producer]\n\"message.max.bytes\" = 33554432\n[kafka.consumer]\n\"fetch.max.bytes\" = 67108864\n\"receive.message.max.bytes\" = 100000000",
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .set("message.max.bytes", "33554432")
        .create()
        .unwrap();
    // The mock cluster keeps only 5 MiB per partition, so 2 MiB here (4 MiB on Tansu).
    let mut big = vec![0u8; 2 << 20];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let big_json = [
        br#"{"tenant_id":"acme","body":""#.as_slice(),
        &big.iter()
            .map(|b| b"abcdefghijklmnop"[(*b & 15) as usize])
            .collect::<Vec<u8>>(),
        br#""}"#,
    ]
    .concat();
    let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (b"\x00\x01 binary, not JSON".to_vec(), None, "malformed"),
        (
            br#"{"body":"JSON without tenant"}"#.to_vec(),
            None,
            "malformed",
        ),
        (
            br#"{"tenant_id":"nobody","body":"unknown tenant"}"#.to_vec(),
            None,
            "unknown-tenant",
        ),
        (Vec::new(), None, "malformed"), // empty value, no header
        (Vec::new(), Some("acme"), "archive"), // empty value with a tenant header
        (big_json.clone(), None, "archive"), // 2 MiB JSON (compresses)
        (big.clone(), Some("globex"), "archive"), // 2 MiB of noise (does not compress)
        (br#"{"tenant_id": 7}"#.to_vec(), None, "malformed"),
        (
            br#"{"tenant_id":"../etc/passwd"}"#.to_vec(),
            None,
            "unknown-tenant",
        ),
    ];
    for (i, (value, header, _)) in cases.iter().enumerate() {
        let key = format!("bad-{i}");
        let mut rec = FutureRecord::to("capture.messages")
            .key(key.as_bytes())
            .payload(value.as_slice())
            .partition(i as i32 % 4);
        if let Some(t) = header {
            rec = rec.headers(OwnedHeaders::new().insert(Header {
                key: "tenant-id",
                value: Some(t.as_bytes()),
            }));
        }
        producer.send(rec, Timeout::Never).await.unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run(config.clone(), stopped));
    wait_out(&r.bootstrap, cases.len() as i64, 120).await;
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.records_in, cases.len() as u64);
    let mut opened = Vec::new();
    let mut failures = Vec::new();
    reader::read(
        &config,
        &opts("archive.messages"),
        |o| opened.push(o),
        |f| failures.push(f),
    )
    .await
    .unwrap();
    reader::read(
        &config,
        &opts("byok.quarantine"),
        |o| opened.push(o),
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(opened.len(), cases.len());
    for o in &opened {
        let key = String::from_utf8(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                o.key_b64.as_ref().unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let i: usize = key.trim_start_matches("bad-").parse().unwrap();
        let (value, _, route) = &cases[i];
        let plain =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &o.value_b64)
                .unwrap();
        assert_eq!(&plain, value, "case {i}");
        match *route {
            "archive" => assert!(
                o.reason.is_none() && o.topic == "archive.messages",
                "case {i}: {o:?}"
            ),
            reason => assert_eq!(o.reason.as_deref(), Some(reason), "case {i}"),
        }
    }
    drop(producer);
    drop(r.cluster);
    drop(r.emu);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_batch_in_flight_loses_nothing() {
    let r = rig("").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let total = 3000usize;
    let producer_ref = &producer;
    let sends: Vec<_> = (0..total)
        .map(|i| {
            let body = format!(
                r#"{{"tenant_id":"{}","n":{i},"body":"{}"}}"#,
                if i % 2 == 0 { "acme" } else { "globex" },
                "y".repeat(200)
            );
            async move {
                producer_ref
                    .send(
                        FutureRecord::to("capture.messages")
                            .key(&format!("k{i}"))
                            .payload(&body),
                        Timeout::Never,
                    )
                    .await
                    .unwrap();
            }
        })
        .collect();
    futures::future::join_all(sends).await;
    // a worker process, stopped with SIGTERM as soon as its first records are out
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_byok"))
        .args(["run", "--config"])
        .arg(&r.path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_out(&r.bootstrap, 1, 60).await;
    let rc = unsafe { libc_kill(child.id() as i32, 15) };
    assert_eq!(rc, 0);
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let after_term = count(&r.bootstrap, "archive.messages");
    // a second worker finishes from the committed offsets
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run(r.config.clone(), stopped));
    wait_out(&r.bootstrap, total as i64, 120).await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let mut srcs = std::collections::HashSet::new();
    let mut failures = Vec::new();
    let stats = reader::read(
        &r.config,
        &opts("archive.messages"),
        |o| {
            srcs.insert(o.src);
        },
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        srcs.len(),
        total,
        "every source offset is in the archive (first worker wrote {after_term})"
    );
    assert_eq!(stats.opened as usize, total);
    drop(producer);
    drop(r.cluster);
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `delivery = "exactly-once"`: archive records, registry records and offsets in one transaction
/// per batch. On the mock cluster (it has the transaction API; it does not persist
/// transactional offsets): a read_committed reader sees every message exactly once, no
/// duplicates even with duplicates kept, every DEK in the registry; /health turned ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_puts_outputs_and_offsets_in_one_transaction() {
    let r = rig("").await;
    let (config, bodies, producer) = archive_exactly_once(&r, 600).await;
    let mut seen = read_committed(&config, "archive.messages").await;
    seen.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(seen, want, "every message exactly once, decrypted");
    // the tenants' public keys were published outside the batches' transactions (a
    // transactional producer refuses sends between transactions)
    let keks = byok::archive::load_keks(&config).await.unwrap();
    assert!(
        keks.contains_key("acme") && keks.contains_key("globex"),
        "byok.keks holds {:?}",
        keks.keys().collect::<Vec<_>>()
    );
    drop(producer);
    drop(r.cluster);
}

/// Every record of `topic` opened by a read_committed reader, duplicates kept: the plaintexts.
async fn read_committed(config: &Config, topic: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    let read = reader::read(
        config,
        &ReadOptions {
            duplicates: true,
            ..opts(topic)
        },
        |o| seen.push(o.value.unwrap()),
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(read.duplicates, 0);
    seen
}

/// Switches the rig to `delivery = "exactly-once"`, captures `total` messages and runs a worker
/// until it archived them all; returns the config, the bodies, and the capture producer.
async fn archive_exactly_once(r: &Rig, total: usize) -> (Config, Vec<String>, FutureProducer) {
    let config = r.edit_config(|t| {
        t.replace(
            &format!("bootstrap_servers = \"{}\"", r.bootstrap),
            &format!(
                "bootstrap_servers = \"{}\"\ndelivery = \"exactly-once\"",
                r.bootstrap
            ),
        )
    });
    assert_eq!(config.kafka.delivery, byok::config::Delivery::ExactlyOnce);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    let bodies: Vec<String> = (0..total)
        .map(|i| {
            let t = ["acme", "globex"][i % 2];
            format!(r#"{{"tenant_id":"{t}","body":"eos {i}"}}"#)
        })
        .collect();
    for b in &bodies {
        producer
            .send(
                FutureRecord::<(), _>::to("capture.messages").payload(b),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let (stop, worker, health) = worker_until(&config, total as u64, 120).await;
    assert_eq!(health.ready(), Ok(()), "joined and its vaults answered");
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    assert_eq!(stats.records_in, total as u64);
    (config, bodies, producer)
}

/// `byok replay` with exactly-once delivery: each chunk one transaction under a transactional id
/// of the target. The command is SIGKILLed midway, then run again: the restart fences the killed
/// run (its open transaction aborted), so a read_committed reader finds every message in the
/// target exactly once, under new DEKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_killed_midway_resumes_exactly_once() {
    let r = rig("").await;
    r.cluster.create_topic("archive.v2", 4, 1).unwrap();
    let (config, bodies, producer) = archive_exactly_once(&r, 400).await;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_byok"))
        .args(["replay", "--config"])
        .arg(&r.path)
        .args([
            "--from",
            "archive.messages",
            "--to",
            "archive.v2",
            "--rate",
            "100",
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&r.bootstrap, "archive.v2") < 60 {
        assert!(std::time::Instant::now() < deadline, "replay wrote nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let after_kill = count(&r.bootstrap, "archive.v2");
    let opts = byok::lifecycle::replay::ReplayOptions::new("archive.messages", "archive.v2");
    let resumed = byok::lifecycle::replay::replay(&config, &opts, |_, _| {})
        .await
        .unwrap();
    eprintln!(
        "replay (exactly-once): killed with {after_kill} offsets written; resumed: {} already there, {} re-sealed",
        resumed.already_in_target, resumed.resealed
    );
    assert!(resumed.failed.is_empty(), "{:?}", resumed.failed);
    assert!(
        resumed.already_in_target > 0,
        "the killed run's committed chunks count"
    );
    assert_eq!(resumed.already_in_target + resumed.resealed, 400);
    let mut seen = read_committed(&config, "archive.v2").await;
    seen.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(
        seen, want,
        "every message exactly once in the target, decrypted"
    );
    drop(producer);
    drop(r.cluster);
}

/// A stage that never returns: the batch loop hangs inside it, as it did on the tenant scan's
/// infinite loop before 2026-12.
struct Hangs;

#[async_trait::async_trait]
impl byok::pipeline::Stage for Hangs {
    async fn process(
        &mut self,
        _batch: &std::sync::Arc<Vec<rdkafka::message::OwnedMessage>>,
    ) -> Result<Vec<byok::pipeline::Out>, byok::pipeline::StageError> {
        std::future::pending().await
    }
}

/// Liveness is progress: with partitions assigned, records waiting and a stage that never
/// returns, `/live` turns 503 after `worker.stall_timeout` and the stall is counted, while
/// `/health` (ready) stays 200 as it did when a 7-byte value hung the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_that_blocks_forever_makes_live_fail() {
    let r = rig(
        "\n[worker]\nstall_timeout = \"10s\"\n\n[kafka.consumer]\n\"statistics.interval.ms\" = \"500\"\n",
    )
    .await;
    let health = std::sync::Arc::new(byok::pipeline::health::Health::default());
    let addr = byok::pipeline::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        std::sync::Arc::clone(&health),
    )
    .await
    .unwrap();
    let get = |path: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    for i in 0..50 {
        let body = format!(r#"{{"tenant_id":"acme","body":"m{i}"}}"#);
        producer
            .send(
                FutureRecord::<(), _>::to("capture.messages").payload(&body),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run_with(
        r.config.clone(),
        stopped,
        std::sync::Arc::clone(&health),
        |_| Ok(Box::new(Hangs)),
    ));
    let started = std::time::Instant::now();
    let mut went_503 = None;
    while started.elapsed() < Duration::from_secs(90) {
        let (status, body) = get("/live").await;
        if status == 503 {
            went_503 = Some((started.elapsed(), body));
            break;
        }
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (after, body) = went_503.expect("/live never turned 503 with the stage hung");
    eprintln!("/live turned 503 after {after:?}: {body}");
    assert!(after >= Duration::from_secs(10), "not before stall_timeout");
    assert!(
        body.contains("stalled") && body.contains("records waiting"),
        "{body}"
    );
    assert_eq!(health.records_done(), 0);
    let (_, metrics) = get("/metrics").await;
    let stalls = metrics
        .lines()
        .find(|l| l.starts_with("byok_stalls_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(stalls, Some(1.0), "one stall counted");
    stop.send(true).unwrap();
    worker.abort();
    drop(r.cluster);
}

/// At-least-once commits as it goes: while the worker still runs, the group's committed offsets
/// reach the end of every input partition shortly after the last batch was acknowledged (a
/// worker killed then would redo almost nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_committed_while_the_worker_runs() {
    let r = rig("").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    let total = 2_000u64;
    for i in 0..total {
        let t = ["acme", "globex"][(i % 2) as usize];
        let body = format!(r#"{{"tenant_id":"{t}","body":"c{i}"}}"#);
        producer
            .send(
                FutureRecord::to("capture.messages")
                    .payload(&body)
                    .key(&format!("k{}", i % 13)),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let (stop, worker, _health) = worker_until(&r.config, total, 120).await;
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .set("group.id", &r.config.kafka.group_id)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition("capture.messages", p);
    }
    let mut committed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let got = probe
            .committed_offsets(tpl.clone(), Duration::from_secs(5))
            .unwrap();
        committed = got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            })
            .sum::<i64>();
        if committed == total as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(committed, total as i64, "committed while running");
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    drop(r.cluster);
}

/// Quarantined records are re-sealed only for the tenant they were captured for: a copy of an
/// operator-key quarantine record (initech, BYOK off) relabelled `byok.tenant = acme` does not
/// open (the claim is bound in the AAD), so the drain never re-seals initech's plaintext under
/// acme's key and `byok cat` reports it instead of printing it as acme's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relabelled_quarantine_record_is_never_resealed_for_another_tenant() {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let r = rig("\n[[tenants]]\nid = \"initech\"\nbyok_enabled = false\n").await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    for body in [
        r#"{"tenant_id":"initech","body":"initech's secret"}"#,
        r#"{"tenant_id":"acme","body":"acme's own"}"#,
    ] {
        producer
            .send(
                FutureRecord::<(), _>::to("capture.messages").payload(body),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    let (stop, worker, _health) = worker_until(&r.config, 2, 60).await;
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    // the attacker: copies initech's quarantine record, relabelled for acme
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .set("group.id", "attacker")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    c.subscribe(&["byok.quarantine"]).unwrap();
    let original = loop {
        if let Some(Ok(m)) = c.poll(Duration::from_secs(5)) {
            break m.detach();
        }
    };
    let mut headers = OwnedHeaders::new();
    for h in original.headers().unwrap().iter() {
        let value = if h.key == "byok.tenant" {
            Some(&b"acme"[..])
        } else {
            h.value
        };
        headers = headers.insert(Header { key: h.key, value });
    }
    let mut copy = FutureRecord::<[u8], [u8]>::to("byok.quarantine")
        .payload(original.payload().unwrap())
        .headers(headers);
    if let Some(k) = original.key() {
        copy = copy.key(k);
    }
    producer.send(copy, Timeout::Never).await.unwrap();

    let drained = byok::lifecycle::drain::drain_quarantine(
        &r.config,
        &byok::lifecycle::drain::DrainOptions::default(),
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(drained.resealed, 0, "{drained:?}");
    assert!(
        drained.failed.iter().any(|f| f.contains("relabelled")),
        "{drained:?}"
    );
    // nothing of initech's reached acme's archive
    let mut archived = Vec::new();
    reader::read(
        &r.config,
        &opts("archive.messages"),
        |o| archived.push(o),
        |_| {},
    )
    .await
    .unwrap();
    assert!(
        archived
            .iter()
            .all(|o| !o.value.as_deref().unwrap_or_default().contains("initech")),
        "initech's plaintext in the archive"
    );
    // byok cat shows the original as initech's, reports the copy, never prints it as acme's
    let (mut shown, mut failures) = (Vec::new(), Vec::new());
    reader::read(
        &r.config,
        &opts("byok.quarantine"),
        |o| shown.push(o),
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0].tenant.as_deref(), Some("initech"));
    assert_eq!(failures.len(), 1, "{failures:?}");
    drop(r.cluster);
}
