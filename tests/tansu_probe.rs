//! Evidence for a Tansu 0.6.0 limit, not a test of ours: records of 8 and 10 MiB are accepted by
//! the broker but never returned to a consumer (1, 2 and 4 MiB are). Run with
//! `cargo test --test tansu_probe -- --ignored --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::time::Duration;

#[tokio::test]
#[ignore = "documents a broker limit; prints what Tansu returns"]
async fn probe_big_values() {
    let t = common::tansu::Tansu::start();
    t.create_topic("big", 1);
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", t.bootstrap())
        .set("message.max.bytes", "33554432")
        .create()
        .unwrap();
    for mib in [1usize, 2, 4, 8, 10] {
        let v = vec![7u8; mib << 20];
        let r = p
            .send(
                FutureRecord::<(), _>::to("big").payload(&v),
                Timeout::After(Duration::from_secs(30)),
            )
            .await;
        eprintln!(
            "produce {mib} MiB: {:?}",
            r.map(|d| (d.partition, d.offset))
                .map_err(|e| e.0.to_string())
        );
    }
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", t.bootstrap())
        .set("group.id", "probe")
        .set("fetch.max.bytes", "67108864")
        .set("max.partition.fetch.bytes", "33554432")
        .set("receive.message.max.bytes", "100000000")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("big", 0, rdkafka::Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    for _ in 0..10 {
        match c.poll(Duration::from_secs(5)) {
            Some(Ok(m)) => eprintln!("consumed offset {} len {}", m.offset(), m.payload_len()),
            Some(Err(e)) => eprintln!("consume error {e}"),
            None => eprintln!("nothing"),
        }
    }
}

#[tokio::test]
#[ignore = "documents a broker behaviour; prints what Tansu returns"]
async fn probe_backlog_read() {
    let t = common::tansu::Tansu::start();
    t.create_topic("backlog", 6);
    for idempotent in ["false", "true"] {
        let p: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", t.bootstrap())
            .set("enable.idempotence", idempotent)
            .set("linger.ms", "10")
            .create()
            .unwrap();
        let body = vec![b'x'; 300];
        let keys: Vec<String> = (0..6000).map(|i| format!("k{i}")).collect();
        let sends: Vec<_> = keys
            .iter()
            .map(|k| {
                p.send(
                    FutureRecord::to("backlog").key(k).payload(&body),
                    Timeout::Never,
                )
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", t.bootstrap())
            .set("group.id", format!("probe-{idempotent}"))
            .set("fetch.max.bytes", "4194304")
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        for part in 0..6 {
            tpl.add_partition_offset("backlog", part, rdkafka::Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut n = 0;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            match c.poll(Duration::from_secs(2)) {
                Some(Ok(_)) => n += 1,
                Some(Err(e)) => eprintln!("error {e}"),
                None => {}
            }
        }
        eprintln!("idempotent={idempotent}: read {n} records in 30 s");
    }
}

/// Like the archive after the 3-worker test: 30k records of ~600 bytes with byok headers from
/// three idempotent producers, read back from the beginning of 6 partitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "documents a broker behaviour; prints what Tansu returns"]
async fn probe_archive_like_read() {
    let t = common::tansu::Tansu::start();
    t.create_topic("arch", 6);
    let producers: Vec<FutureProducer> = (0..3)
        .map(|_| {
            ClientConfig::new()
                .set("bootstrap.servers", t.bootstrap())
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .create()
                .unwrap()
        })
        .collect();
    let body = vec![b'x'; 600];
    let keys: Vec<String> = (0..1000).map(|i| format!("k{i}")).collect();
    for round in 0..30 {
        let sends: Vec<_> = (0..1000)
            .map(|i| {
                let p = &producers[(round + i) % 3];
                let h = rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header {
                        key: "byok.tenant",
                        value: Some("tenant-01"),
                    })
                    .insert(rdkafka::message::Header {
                        key: "byok.dek",
                        value: Some("0190aaaa-bbbb-7ccc-8ddd-eeeeffff0000"),
                    })
                    .insert(rdkafka::message::Header {
                        key: "byok.src",
                        value: Some(
                            format!("capture.messages/{}/{}", i % 6, round * 1000 + i).as_str(),
                        ),
                    });
                let mut r = FutureRecord::to("arch").key(&keys[i]).payload(&body);
                if std::env::var("PROBE_NO_HEADERS").is_err() {
                    r = r.headers(h);
                }
                p.send(r, Timeout::Never)
            })
            .collect();
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
    }
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", t.bootstrap())
        .set("group.id", "probe-arch")
        .set("auto.offset.reset", "earliest");
    // PROBE_CONSUMER="k=v,k=v" sets consumer properties
    for kv in std::env::var("PROBE_CONSUMER")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
    {
        let (k, v) = kv.split_once('=').unwrap();
        cc.set(k, v);
    }
    let c: BaseConsumer = cc.create().unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for part in 0..6 {
        let w = c
            .fetch_watermarks("arch", part, Duration::from_secs(10))
            .unwrap();
        eprintln!("partition {part} watermarks {w:?}");
        tpl.add_partition_offset("arch", part, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut per = [0u64; 6];
    let start = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) && per.iter().sum::<u64>() < 30_000 {
        match c.poll(Duration::from_secs(1)) {
            Some(Ok(m)) => per[m.partition() as usize] += 1,
            Some(Err(e)) => eprintln!("error {e}"),
            None => {}
        }
        if last.elapsed() > Duration::from_secs(5) {
            eprintln!("{:?} read per partition", per);
            last = std::time::Instant::now();
        }
    }
    eprintln!("final {:?} after {:?}", per, start.elapsed());
}

/// AUDIT.md §3 carries the chain link in the commit metadata. Tansu 0.6.0 accepts a commit with
/// metadata and returns the offset with empty metadata (`committed: Offset(42) metadata ""`), so
/// a worker there takes the link from the partition's last checkpoint instead
/// (`auditor::last_checkpoint`). Run with `--ignored --nocapture`.
#[tokio::test]
#[ignore = "documents a broker limit; prints what Tansu returns"]
async fn commit_metadata_is_kept_and_returned() {
    let t = common::tansu::Tansu::start();
    t.create_topic("meta", 2);
    let bootstrap = t.bootstrap();
    let consumer = |group: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    };
    let c = consumer("meta-group");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("meta", 1, rdkafka::Offset::Offset(0))
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut commit = rdkafka::TopicPartitionList::new();
    commit
        .add_partition_offset("meta", 1, rdkafka::Offset::Offset(42))
        .unwrap();
    let meta = "byok-chain-v1:00ff:3:1234";
    commit.elements_for_topic("meta")[0].set_metadata(meta);
    c.commit(&commit, rdkafka::consumer::CommitMode::Sync)
        .unwrap();
    drop(c);
    let other = consumer("meta-group");
    let mut ask = rdkafka::TopicPartitionList::new();
    ask.add_partition("meta", 1);
    let got = other
        .committed_offsets(ask, Duration::from_secs(10))
        .unwrap();
    let e = &got.elements()[0];
    eprintln!("committed: {:?} metadata {:?}", e.offset(), e.metadata());
    assert_eq!(e.offset(), rdkafka::Offset::Offset(42));
    assert_eq!(
        e.metadata(),
        meta,
        "Tansu 0.6.0 does not return the commit metadata"
    );
}
