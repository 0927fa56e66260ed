//! The worker against a real Kafka-protocol broker (Tansu, sqlite storage) and the Key Vault
//! emulator over HTTPS: three `byok run` processes in one consumer group, one killed with
//! SIGKILL midway and restarted. Every source offset ends in the archive (duplicates only with an
//! equal byok.src), everything decrypts to the original bytes, the registry holds every DEK.
//! BYOK_TANSU_MESSAGES raises the message count (default 30000).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use byok::archive::{self as reader, ReadOptions};
use byok::config::Config;
use common::emu::*;
use common::tansu::Tansu;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const PARTITIONS: u32 = 6;

fn watermarks(bootstrap: &str, topic: &str, partitions: u32) -> Vec<(i64, i64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "byok-test-counter")
        .create()
        .unwrap();
    // A loaded broker may answer slowly: ask a few times before giving up.
    (0..partitions as i32)
        .map(|p| {
            (0..5)
                .find_map(|_| c.fetch_watermarks(topic, p, Duration::from_secs(20)).ok())
                .unwrap_or_else(|| panic!("no watermarks for {topic}/{p} after 5 tries"))
        })
        .collect()
}

/// Records of `topic` the consumer group `group` has not committed yet (a partition without a
/// commit counts from its low watermark).
fn group_lag(bootstrap: &str, group: &str, topic: &str, partitions: u32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition(topic, p);
    }
    let Ok(committed) = c.committed_offsets(tpl, Duration::from_secs(20)) else {
        return i64::MAX;
    };
    watermarks(bootstrap, topic, partitions)
        .iter()
        .enumerate()
        .map(|(p, (lo, hi))| {
            let at = committed
                .find_partition(topic, p as i32)
                .and_then(|e| match e.offset() {
                    rdkafka::Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .unwrap_or(*lo);
            (hi - at).max(0)
        })
        .sum()
}

fn worker(config: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(config.with_file_name("workers.log"))
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_byok"))
        .args(["run", "--config"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("BYOK_WORKER_LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Worker processes, killed if the test fails before stopping them.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_lose_nothing_on_a_real_broker() {
    let total: usize = std::env::var("BYOK_TANSU_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30_000);
    let tansu = Tansu::start();
    tansu.create_pipeline_topics(PARTITIONS);
    let emu = Emu::start().await;
    // 20 tenants: acme and globex, and 18 more sharing acme's vault and certificate
    let acme_pem = common::emu_config::acme_pem(emu.dir.path());
    let mut extra = String::from("\n");
    for i in 0..18 {
        extra.push_str(&format!(
            "[[tenants]]\nid = \"tenant-{i:02}\"\nvault_url = \"https://acme-vault.vault.azure.net:{port}\"\nkey_name = \"byok-key\"\nentra_tenant_id = \"{ACME_TENANT}\"\nclient_id = \"{ACME_APP}\"\ncredential = {{ type = \"certificate\", path = \"{pem}\" }}\nauthority_host = \"https://127.0.0.1:{port}\"\n\n",
            port = emu.port(),
            pem = acme_pem.display()
        ));
    }
    let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, &extra);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("bootstrap_servers = \"127.0.0.1:9092\"", &format!("bootstrap_servers = \"{}\"\ngroup_id = \"byok-tansu\"", tansu.bootstrap()))
        .replace("[keys]", "[batch]\nmax_records = 1000\nmax_wait = \"100ms\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[keys]");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let tenants: Vec<String> = config.tenants.keys().map(|t| t.to_string()).collect();
    assert_eq!(tenants.len(), 20);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("linger.ms", "10")
        .create()
        .unwrap();
    let mut expected: HashMap<String, String> = HashMap::new(); // message id -> body
    let mut bodies = Vec::with_capacity(total);
    for i in 0..total {
        let t = &tenants[i % tenants.len()];
        let body = format!(
            r#"{{"tenant_id":"{t}","message_id":"m{i}","channel":"teams","body":"{}"}}"#,
            "z".repeat(100 + i % 300)
        );
        expected.insert(format!("m{i}"), body.clone());
        bodies.push((format!("conv-{}", i % 97), body));
    }
    for chunk in bodies.chunks(5000) {
        let sends = chunk.iter().map(|(k, b)| {
            producer.send(
                FutureRecord::to("capture.messages").key(k).payload(b),
                Timeout::Never,
            )
        });
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
    }
    let produced: i64 = watermarks(&tansu.bootstrap(), "capture.messages", PARTITIONS)
        .iter()
        .map(|(lo, hi)| hi - lo)
        .sum();
    assert_eq!(produced, total as i64);

    let started = Instant::now();
    let mut workers = Workers((0..3).map(|_| worker(&path)).collect());
    // kill one worker with SIGKILL once about a third is archived, and restart it
    let deadline = started + Duration::from_secs(600);
    loop {
        let out: i64 = watermarks(&tansu.bootstrap(), "archive.messages", PARTITIONS)
            .iter()
            .map(|(lo, hi)| hi - lo)
            .sum();
        if out >= total as i64 / 3 {
            break;
        }
        assert!(Instant::now() < deadline, "only {out} archived");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    workers.0[0].kill().unwrap();
    workers.0[0].wait().unwrap();
    workers.0[0] = worker(&path);
    // done when the group has committed every captured record (its offsets are committed only
    // after the archive acknowledged them; the archive's size alone would count the duplicates
    // the kill makes, and could reach the total while the killed member's partitions still wait
    // for their session to expire); then the workers are stopped and the archive read back
    let opts = ReadOptions::topic("archive.messages");
    loop {
        let lag = group_lag(
            &tansu.bootstrap(),
            "byok-tansu",
            "capture.messages",
            PARTITIONS,
        );
        if lag == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{lag} captured records not committed after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let elapsed = started.elapsed();
    for w in &mut workers.0 {
        unsafe { libc_kill(w.id() as i32, 15) };
    }
    for w in &mut workers.0 {
        let status = w.wait().unwrap();
        let log = std::fs::read_to_string(path.with_file_name("workers.log")).unwrap_or_default();
        assert!(
            status.success(),
            "a worker did not stop cleanly on SIGTERM ({status}):\n{log}"
        );
    }

    let opts = ReadOptions {
        duplicates: true,
        ..opts
    };
    let mut by_src: HashMap<String, String> = HashMap::new();
    let mut failures = Vec::new();
    let mut duplicates = 0;
    let stats = reader::read(
        &config,
        &opts,
        |o| {
            let v = o.value.clone().unwrap();
            if let Some(prev) = by_src.insert(o.src.clone(), v.clone()) {
                assert_eq!(
                    prev, v,
                    "a duplicate with the same byok.src has the same plaintext"
                );
                duplicates += 1;
            }
        },
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert!(
        failures.is_empty(),
        "every record opens (its DEK is in the registry): {:?}",
        &failures[..failures.len().min(5)]
    );
    assert_eq!(by_src.len(), total, "every source offset is in the archive");
    let mut ids = HashSet::new();
    for v in by_src.values() {
        let id = serde_json::from_str::<serde_json::Value>(v).unwrap()["message_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(expected.get(&id), Some(v), "decrypts to the original bytes");
        ids.insert(id);
    }
    assert_eq!(ids.len(), total);
    eprintln!(
        "tansu: {total} messages, 20 tenants, 3 workers (one SIGKILLed and restarted): {} archive records, {duplicates} duplicates, {:.0} s",
        stats.read,
        elapsed.as_secs_f64()
    );
    if std::env::var("BYOK_SHOW_WORKER_LOG").is_ok() {
        let log = std::fs::read_to_string(path.with_file_name("workers.log")).unwrap_or_default();
        eprintln!("{log}");
    }
    drop(producer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
/// 4 MiB, not the 10 MiB the issue asks for: Tansu 0.6.0 accepts 8 and 10 MiB records but never
/// returns them to a consumer (tests/tansu_probe.rs shows it), so no client could read them back.
async fn a_4_mib_value_and_bad_input_on_a_real_broker() {
    let tansu = Tansu::start();
    tansu.create_pipeline_topics(2);
    let emu = Emu::start().await;
    let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("bootstrap_servers = \"127.0.0.1:9092\"", &format!("bootstrap_servers = \"{}\"\ngroup_id = \"byok-tansu-bad\"", tansu.bootstrap()))
        .replace("[keys]", "[kafka.producer]\n\"message.max.bytes\" = 33554432\n[kafka.consumer]\n\"fetch.max.bytes\" = 67108864\n\"max.partition.fetch.bytes\" = 33554432\n\"receive.message.max.bytes\" = 100000000\n[keys]");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("message.max.bytes", "33554432")
        .create()
        .unwrap();
    let mut big = vec![0u8; 4 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in big.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let cases: Vec<(Vec<u8>, Option<&str>, &str)> = vec![
        (b"not json".to_vec(), None, "malformed"),
        (br#"{"body":"no tenant"}"#.to_vec(), None, "malformed"),
        (
            br#"{"tenant_id":"nobody"}"#.to_vec(),
            None,
            "unknown-tenant",
        ),
        (Vec::new(), None, "malformed"),
        (big.clone(), Some("acme"), "archive"),
    ];
    for (i, (value, header, _)) in cases.iter().enumerate() {
        let key = format!("bad-{i}");
        let mut rec = FutureRecord::to("capture.messages")
            .key(key.as_bytes())
            .payload(value.as_slice());
        if let Some(t) = header {
            rec = rec.headers(rdkafka::message::OwnedHeaders::new().insert(
                rdkafka::message::Header {
                    key: "tenant-id",
                    value: Some(t.as_bytes()),
                },
            ));
        }
        producer.send(rec, Timeout::Never).await.unwrap();
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run(config.clone(), stopped));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out: i64 = watermarks(&tansu.bootstrap(), "archive.messages", 2)
            .iter()
            .chain(watermarks(&tansu.bootstrap(), "byok.quarantine", 1).iter())
            .map(|(lo, hi)| hi - lo)
            .sum();
        if out >= cases.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{out} of {} out", cases.len());
        assert!(!worker.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    let mut opened = Vec::new();
    let mut failures = Vec::new();
    for topic in ["archive.messages", "byok.quarantine"] {
        let opts = ReadOptions::topic(topic);
        reader::read(&config, &opts, |o| opened.push(o), |f| failures.push(f))
            .await
            .unwrap();
    }
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(opened.len(), cases.len());
    for o in opened {
        let key = String::from_utf8(
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                o.key_b64.unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let i: usize = key.trim_start_matches("bad-").parse().unwrap();
        let plain =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &o.value_b64)
                .unwrap();
        assert_eq!(plain, cases[i].0, "case {i}");
        match cases[i].2 {
            "archive" => assert!(o.reason.is_none()),
            r => assert_eq!(o.reason.as_deref(), Some(r)),
        }
    }
    drop(producer);
}

/// A second worker joins while the first has batches in flight and traffic keeps coming: the
/// cooperative rebalance moves partitions only after the first worker's batches of them are
/// acknowledged and committed (its revocation callback flushes the producer and commits), so
/// the archive holds every message exactly once: no batch is redone by the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_mid_stream_takes_partitions_without_duplicates() {
    let tansu = Tansu::start();
    tansu.create_pipeline_topics(4);
    let emu = Emu::start().await;
    let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("bootstrap_servers = \"127.0.0.1:9092\"", &format!("bootstrap_servers = \"{}\"\ngroup_id = \"byok-join\"", tansu.bootstrap()))
        .replace("[keys]", "[batch]\nmax_records = 50\nmax_wait = \"10ms\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[keys]");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .create()
        .unwrap();
    let keys: Vec<String> = (0..13).map(|i| format!("k{i}")).collect();
    let mut next = 0usize;
    let mut capture = |n: usize| {
        let bodies: Vec<(usize, String)> = (next..next + n)
            .map(|i| {
                (
                    i,
                    format!(
                        r#"{{"tenant_id":"{}","body":"join {i}"}}"#,
                        ["acme", "globex"][i % 2]
                    ),
                )
            })
            .collect();
        next += n;
        let producer = producer.clone();
        let keys = keys.clone();
        async move {
            let sends = bodies.iter().map(|(i, b)| {
                producer.send(
                    FutureRecord::to("capture.messages")
                        .key(&keys[i % 13])
                        .payload(b),
                    Timeout::Never,
                )
            });
            for r in futures::future::join_all(sends).await {
                r.unwrap();
            }
        }
    };
    let archived = || -> i64 {
        watermarks(&tansu.bootstrap(), "archive.messages", 4)
            .iter()
            .map(|(lo, hi)| hi - lo)
            .sum()
    };
    capture(1000).await;
    let mut workers = Workers(vec![worker(&path)]);
    let deadline = Instant::now() + Duration::from_secs(300);
    while archived() < 500 {
        assert!(
            Instant::now() < deadline,
            "the first worker archived nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // the second worker joins; traffic keeps coming through the rebalance (Tansu takes ~20 s)
    workers.0.push(worker(&path));
    let until = Instant::now() + Duration::from_secs(40);
    while Instant::now() < until {
        capture(100).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = next as i64;
    while archived() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} archived",
            archived()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for w in &mut workers.0 {
        unsafe { libc_kill(w.id() as i32, 15) };
    }
    for w in &mut workers.0 {
        assert!(w.wait().unwrap().success());
    }
    let log = std::fs::read_to_string(path.with_file_name("workers.log")).unwrap_or_default();
    let mut seen = HashMap::new();
    let mut failures = Vec::new();
    let stats = reader::read(
        &config,
        &ReadOptions {
            duplicates: true,
            ..ReadOptions::topic("archive.messages")
        },
        |o| {
            *seen.entry(o.value.unwrap()).or_insert(0) += 1;
        },
        |f| failures.push(f),
    )
    .await
    .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(seen.len() as i64, total, "every message archived");
    assert_eq!(
        stats.duplicates, 0,
        "no batch redone by the new owner\n{log}"
    );
    // both workers sealed (each makes its own DEKs): the rebalance did move partitions
    let registry = reader::load_registry(&config).await.unwrap();
    let sealers: HashSet<&str> = registry.values().map(|r| r.worker.as_str()).collect();
    assert_eq!(sealers.len(), 2, "both workers made DEKs: {sealers:?}");
    eprintln!("join: {total} messages through a rebalance, both workers sealing, 0 duplicates");
    drop(producer);
}
