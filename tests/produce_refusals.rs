//! Records the broker refuses (too large, topic missing, not authorized) on librdkafka's mock
//! cluster, in both delivery modes: nothing is lost, the refused records are in the quarantine
//! (sealed as they were, or as a too-large marker with the provenance only), the other tenant's
//! records keep flowing, and the worker never stops.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use byok::archive::{self as reader, ReadOptions};
use byok::config::Config;
use common::mock::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::util::Timeout;

/// A rig whose archive is one topic per tenant, and whose worker's producer refuses records over
/// 64 KiB (so that a large captured message is refused locally as too large).
async fn refusing_rig(delivery: &str) -> (Rig, Config) {
    let r = rig("").await;
    for t in ["archive.acme", "archive.globex"] {
        r.cluster.create_topic(t, 2, 1).unwrap();
    }
    let config = r.edit_config(|t| {
        t.replace(
            "[keys]",
            "[kafka.producer]\n\"message.max.bytes\" = 65536\n\"topic.metadata.propagation.max.ms\" = 1000\n[kafka.consumer]\n\"fetch.max.bytes\" = 8388608\n[keys]",
        )
        .replacen(
            "[kafka]\n",
            &format!("[kafka]\narchive_topic = \"archive.{{tenant}}\"\ndelivery = \"{delivery}\"\n"),
            1,
        )
    });
    assert!(config.kafka.archive_topic.is_per_tenant());
    (r, config)
}

/// Sends `n` messages of `tenant` (and returns their bodies by body).
async fn capture(
    producer: &FutureProducer,
    tenant: &str,
    n: usize,
    size: usize,
) -> HashMap<String, &'static str> {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut sent = HashMap::new();
    for _ in 0..n {
        let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // hex of pseudo-random bytes (xorshift): zstd gets it to about half, never to nothing
        let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let filler: String = (0..size / 2)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:02x}", x as u8)
            })
            .collect();
        let body = format!(r#"{{"tenant_id":"{tenant}","n":{i},"body":"{filler}"}}"#);
        producer
            .send(
                FutureRecord::to("capture.messages")
                    .payload(body.as_bytes())
                    .key(format!("c-{i}").as_bytes()),
                Timeout::Never,
            )
            .await
            .unwrap();
        sent.insert(body, tenant_static(tenant));
    }
    sent
}

fn tenant_static(t: &str) -> &'static str {
    match t {
        "acme" => "acme",
        "globex" => "globex",
        _ => panic!("{t}"),
    }
}

/// Reads `topic` back: the plaintexts opened, by body, with (topic, reason); and what did not open.
async fn read_back(
    config: &Config,
    topic: &str,
    opened: &mut HashMap<String, (String, Option<String>, String)>,
) -> Vec<String> {
    let mut failures = Vec::new();
    reader::read(
        config,
        &ReadOptions::topic(topic),
        |o| {
            let body = o.value.clone().unwrap();
            let now = (o.topic.clone(), o.reason.clone(), o.src.clone());
            let prev = opened.insert(body, now.clone());
            assert!(prev.is_none(), "a record twice: {prev:?} and {now:?}");
        },
        |f| failures.push(f.reason),
    )
    .await
    .unwrap();
    failures
}

async fn refused_records_are_quarantined(delivery: &str, refusal: RDKafkaRespErr, reason: &str) {
    let (r, config) = refusing_rig(delivery).await;
    r.cluster.topic_error("archive.globex", refusal).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .set("message.max.bytes", "4194304")
        .create()
        .unwrap();
    let mut sent = capture(&producer, "acme", 60, 600).await;
    sent.extend(capture(&producer, "globex", 40, 600).await);
    // one acme message far over the worker's 64 KiB producer limit, in the middle of the stream
    let big = capture(&producer, "acme", 1, 400_000).await;
    let big_body = big.keys().next().unwrap().clone();
    sent.extend(capture(&producer, "acme", 30, 600).await);
    let total = sent.len() as u64 + 1;

    let (stop, worker, health) = worker_until(&config, total, 120).await;
    assert!(!worker.is_finished(), "the worker stopped");
    if delivery == "at-least-once" {
        // (under exactly-once the watermarks count aborted attempts too)
        assert_eq!(count(&r.bootstrap, "archive.acme"), 90);
        assert_eq!(count(&r.bootstrap, "byok.quarantine"), 41);
    }
    assert!(health.ready().is_ok(), "{:?}", health.ready());
    let stats = stop_worker(stop, worker).await;
    assert_eq!(stats.quarantined.get(reason), Some(&40), "{stats:?}");
    assert_eq!(stats.quarantined.get("too-large"), Some(&1), "{stats:?}");

    // nothing lost: every message opens from the archive or the quarantine, except the one
    // too large to store, whose marker names its source
    let mut opened = HashMap::new();
    assert!(
        read_back(&config, "archive.acme", &mut opened)
            .await
            .is_empty()
    );
    let failures = read_back(&config, "byok.quarantine", &mut opened).await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("too-large marker"), "{failures:?}");
    let mut by_place: BTreeMap<(String, Option<String>), usize> = BTreeMap::new();
    for (body, tenant) in &sent {
        let (topic, why, _) = opened
            .get(body)
            .unwrap_or_else(|| panic!("a {tenant} message was lost"));
        *by_place.entry((topic.clone(), why.clone())).or_default() += 1;
    }
    assert!(
        !opened.contains_key(&big_body),
        "the too-large body was stored"
    );
    assert_eq!(
        by_place,
        BTreeMap::from([
            (("archive.acme".into(), None), 90),
            (("byok.quarantine".into(), Some(reason.to_owned())), 40),
        ])
    );
    // the marker holds no value (never the plaintext) and the reason and provenance
    let marker = common::mock::records(&r.bootstrap, "byok.quarantine")
        .into_iter()
        .find(|(_, h)| h.get("byok.reason").map(String::as_str) == Some("too-large"))
        .expect("a too-large marker");
    assert!(marker.0.is_empty());
    assert!(
        marker.1["byok.src"].starts_with("capture.messages/"),
        "{marker:?}"
    );
    assert!(
        marker.1["byok.detail"].contains("archive.acme"),
        "{marker:?}"
    );
    drop(producer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_quarantines_refused_records_and_keeps_going() {
    refused_records_are_quarantined(
        "at-least-once",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        "not-authorized",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_quarantines_refused_records_and_keeps_going() {
    refused_records_are_quarantined(
        "exactly-once",
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
        "topic-missing",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_refusing_for_now_is_retried_with_backoff_shown_in_health() {
    let r = rig("").await;
    let config = r.with_before_keys("[kafka.producer]\n\"message.timeout.ms\" = 1000");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    let mut sent = capture(&producer, "acme", 20, 200).await;
    sent.extend(capture(&producer, "globex", 30, 200).await);
    // the archive topic has no leader for now: the producer's records time out
    // (message.timeout.ms), and the worker backs off and sends them again
    r.cluster
        .topic_error(
            "archive.messages",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        )
        .unwrap();
    let (stop, worker, health) = start_worker(&config);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let why = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "/health never showed the backoff"
        );
        assert!(!worker.is_finished(), "the worker stopped");
        if let Err(why) = health.ready()
            && why.contains("refuses records for now")
        {
            break why;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(health.records_done(), 0, "committed while refused: {why}");
    // the leader is back
    r.cluster
        .topic_error(
            "archive.messages",
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR,
        )
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while health.records_done() < 50 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 50",
            health.records_done()
        );
        assert!(!worker.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while health.ready().is_err() {
        assert!(std::time::Instant::now() < deadline, "{:?}", health.ready());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = stop_worker(stop, worker).await;
    assert_eq!(stats.archived, 50, "{stats:?}");
    let mut opened = HashMap::new();
    assert!(
        read_back(&config, "archive.messages", &mut opened)
            .await
            .is_empty()
    );
    for body in sent.keys() {
        assert!(opened.contains_key(body), "a message was lost");
    }
    drop(producer);
}
