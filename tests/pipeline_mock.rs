//! The worker end to end on librdkafka's mock cluster, with the Key Vault emulator over HTTPS:
//! every captured message ends in the archive (or, without a usable tenant, the quarantine) and
//! decrypts with `byok cat`'s reader to the original bytes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use byok::config::Config;
use byok::pipeline::reader::{self, ReadOptions};
use common::emu::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

fn count(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "counter")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .unwrap();
            hi - lo
        })
        .sum()
}

fn opts(topic: &str) -> ReadOptions {
    ReadOptions {
        topic: topic.into(),
        partitions: vec![],
        from_offset: None,
        to_offset: None,
        from_time_ms: None,
        to_time_ms: None,
        tenant: None,
        duplicates: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_is_archived_or_quarantined_and_decrypts_to_the_original() {
    let emu = Emu::start().await;
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for (t, p) in [
        ("capture.messages", 4),
        ("archive.messages", 4),
        ("byok.deks", 1),
        ("byok.keks", 1),
        ("byok.quarantine", 1),
    ] {
        cluster.create_topic(t, p, 1).unwrap();
    }
    let path = common::emu_config::write(
        emu.dir.path(),
        emu.port(),
        &emu.running.ca_pem,
        "\n[[tenants]]\nid = \"initech\"\nbyok_enabled = false\n",
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        &format!("bootstrap_servers = \"{bootstrap}\""),
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();

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
    let worker = tokio::spawn(byok::pipeline::worker::run(config.clone(), stopped));
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
    stop.send(true).unwrap();
    let stats = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
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
