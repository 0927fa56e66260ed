//! Every Kafka client configuration of the crate (the worker's consumer and producer, the
//! tools' producer, the readers' consumers), and reading a topic's partitions from a start to
//! the end they had when opened.
//!
//! Settings the worker owns (`enable.auto.commit`, `isolation.level`, idempotence, ...) are set
//! here after the configuration's passthrough table, so they always win. This module must never
//! hold business logic: it knows topics, partitions and offsets, not tenants or keys.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{Config, Delivery};

/// What to read.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Topic.
    pub topic: String,
    /// Only these partitions (all when empty).
    pub partitions: Vec<i32>,
    /// First offset per partition (inclusive).
    pub from_offset: Option<i64>,
    /// First offset of these partitions (inclusive), over `from_offset`.
    pub start_offsets: HashMap<i32, i64>,
    /// Last offset per partition (exclusive).
    pub to_offset: Option<i64>,
    /// Only records with a timestamp at or after this (ms since the epoch).
    pub from_time_ms: Option<i64>,
    /// Only records with a timestamp before this (ms since the epoch).
    pub to_time_ms: Option<i64>,
    /// Only this tenant.
    pub tenant: Option<String>,
    /// Keep duplicates (same byok.src).
    pub duplicates: bool,
}

impl ReadOptions {
    /// The whole of `topic`: every partition, every offset, every tenant, duplicates dropped.
    pub fn topic(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partitions: Vec::new(),
            from_offset: None,
            start_offsets: HashMap::new(),
            to_offset: None,
            from_time_ms: None,
            to_time_ms: None,
            tenant: None,
            duplicates: false,
        }
    }
}

/// Reading a topic failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The consumer could not be made.
    #[error("Kafka consumer: {0}")]
    Client(#[source] rdkafka::error::KafkaError),
    /// Metadata, watermarks, offsets or a record could not be read (the message names the
    /// topic and partition).
    #[error("{0}")]
    Msg(String),
}

/// The worker's id for registry records: configured, else `<hostname>-<pid>`.
pub fn worker_id(config: &Config) -> String {
    config.worker.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "byok".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// The producer of the operator's tools (replay, drain, rewrap): the worker's settings without a
/// transactional id (their writes are idempotent and de-duplicated by `byok.src` instead).
pub fn tool_producer_config(config: &Config) -> ClientConfig {
    let mut c = producer_config(config);
    c.remove("transactional.id");
    c
}

/// A client for looking at the cluster (metadata, topic configs): the bootstrap servers and the
/// consumer passthrough (which carries the security settings).
pub fn admin_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in config.kafka.consumer.iter() {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers);
    c
}

/// Settings the worker owns for its consumer.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in config.kafka.consumer.iter() {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false");
    if !config.kafka.consumer.contains_key("auto.offset.reset") {
        c.set("auto.offset.reset", "earliest");
    }
    // consumer lag comes from librdkafka's statistics
    if !config.kafka.consumer.contains_key("statistics.interval.ms") {
        c.set("statistics.interval.ms", "5000");
    }
    c
}

/// Settings the worker owns for its producer.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in config.kafka.producer.iter() {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5");
    if config.kafka.delivery == Delivery::ExactlyOnce {
        // one id per process: consumer-group metadata fences zombies (KIP-447)
        c.set(
            "transactional.id",
            format!("{}-{}", config.kafka.group_id, worker_id(config)),
        );
    }
    c
}

pub(crate) fn reader_consumer(config: &Config) -> Result<StreamConsumer, TopicError> {
    group_consumer(config, &format!("byok-reader-{}", uuid::Uuid::new_v4()))
}

/// A reader in consumer group `group`, for a tool that keeps its progress in committed offsets.
pub(crate) fn group_consumer(config: &Config, group: &str) -> Result<StreamConsumer, TopicError> {
    let mut c = ClientConfig::new();
    for (k, v) in config.kafka.consumer.iter() {
        c.set(k, v);
    }
    // A reader starts on a backlog: ask for moderate fetches (some brokers, Tansu 0.6 among
    // them, return nothing for very large fetch responses).
    if !config.kafka.consumer.contains_key("fetch.max.bytes") {
        c.set("fetch.max.bytes", "4194304");
    }
    // A tool reads one record at a time: a small prefetch queue keeps its memory bounded
    // (librdkafka's default holds up to 64 MiB per consumer).
    if !config
        .kafka
        .consumer
        .contains_key("queued.max.messages.kbytes")
    {
        c.set("queued.max.messages.kbytes", "16384");
    }
    // (a record larger than this still comes: the broker sends at least one)
    if !config
        .kafka
        .consumer
        .contains_key("max.partition.fetch.bytes")
    {
        c.set("max.partition.fetch.bytes", "262144");
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Outputs are transactional only with delivery = "exactly-once"; otherwise read
        // everything acknowledged (brokers without transactions may never advance the last
        // stable offset past an idempotent producer's batches).
        .set(
            "isolation.level",
            if config.kafka.delivery == Delivery::ExactlyOnce {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .map_err(TopicError::Client)
}

/// Reads the partitions of a topic, each from its start (or the range asked for) to the end it
/// had when opened, one record at a time.
pub(crate) struct TopicReader<'c> {
    consumer: &'c StreamConsumer,
    topic: String,
    ends: HashMap<i32, i64>,
    /// Offsets in the range, over all partitions (an upper bound on the records: compaction and
    /// transaction markers leave gaps).
    pub(crate) total: u64,
}

impl<'c> TopicReader<'c> {
    /// Assigns `topic` (the partitions and offsets of `opts`) to `consumer`. With a start time
    /// and no start offset, each partition starts at the first offset whose timestamp is at or
    /// after it (the broker's time index); the caller still filters by timestamp.
    pub(crate) async fn open(
        consumer: &'c StreamConsumer,
        topic: &str,
        opts: Option<&ReadOptions>,
    ) -> Result<Self, TopicError> {
        let partitions: Vec<i32> = partitions(consumer, topic)?
            .into_iter()
            .filter(|p| opts.is_none_or(|o| o.partitions.is_empty() || o.partitions.contains(p)))
            .collect();
        if partitions.is_empty() {
            return Err(TopicError::Msg(format!(
                "topic {topic} does not exist or has no partition to read"
            )));
        }
        let from_time = opts
            .filter(|o| o.from_offset.is_none())
            .and_then(|o| o.from_time_ms);
        let by_time = match from_time {
            Some(ms) => Some(start_offsets_at(consumer, topic, &partitions, ms)?),
            None => None,
        };
        let mut tpl = TopicPartitionList::new();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let mut total = 0u64;
        for p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .map_err(|e| TopicError::Msg(format!("{topic}/{p}: {e}")))?;
            let from = match &by_time {
                // no record at or after the start time in this partition
                Some(m) => match m.get(p) {
                    Some(o) => Some(*o),
                    None => continue,
                },
                None => opts.and_then(|o| o.start_offsets.get(p).copied().or(o.from_offset)),
            };
            let start = from.map_or(low, |o| o.max(low));
            let end = opts.and_then(|o| o.to_offset).map_or(high, |o| o.min(high));
            if start < end {
                ends.insert(*p, end);
                total += (end - start) as u64;
                // From the beginning unless an offset was asked for: a broker's low watermark
                // may not be a fetchable offset (then the consumer would reset to the end).
                let offset = match from {
                    Some(_) => Offset::Offset(start),
                    None => Offset::Beginning,
                };
                let _ = tpl.add_partition_offset(topic, *p, offset);
            }
        }
        if !ends.is_empty() {
            consumer
                .assign(&tpl)
                .map_err(|e| TopicError::Msg(format!("assign {topic}: {e}")))?;
        }
        Ok(Self {
            consumer,
            topic: topic.to_owned(),
            ends,
            total,
        })
    }

    /// The next record in range, or `None` when every partition reached its end.
    pub(crate) async fn next(
        &mut self,
    ) -> Result<Option<rdkafka::message::BorrowedMessage<'c>>, TopicError> {
        while !self.ends.is_empty() {
            let m = tokio::time::timeout(Duration::from_secs(120), self.consumer.recv())
                .await
                .map_err(|_| {
                    TopicError::Msg(format!(
                        "no record from {} for 120 s; partitions left: {:?}",
                        self.topic,
                        self.ends.keys().collect::<Vec<_>>()
                    ))
                })?
                .map_err(|e| TopicError::Msg(format!("read {}: {e}", self.topic)))?;
            let p = m.partition();
            let Some(end) = self.ends.get(&p).copied() else {
                continue;
            };
            if m.offset() + 1 >= end {
                self.ends.remove(&p);
            }
            if m.offset() < end {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }
}

/// The partitions of `topic` (none when it does not exist).
pub(crate) fn partitions(consumer: &StreamConsumer, topic: &str) -> Result<Vec<i32>, TopicError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| TopicError::Msg(format!("topic {topic}: {e}")))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// The first offset of each partition whose timestamp is at or after `ms` (partitions with
/// none are left out).
fn start_offsets_at(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> Result<HashMap<i32, i64>, TopicError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(ms));
    }
    let found = consumer
        .offsets_for_times(tpl, Duration::from_secs(10))
        .map_err(|e| TopicError::Msg(format!("{topic}: offsets for time {ms}: {e}")))?;
    Ok(offsets_of(&found))
}

/// The partitions of a list that have an offset, with it.
fn offsets_of(tpl: &TopicPartitionList) -> HashMap<i32, i64> {
    tpl.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Reads every record of `topic` from the beginning to the current end, as (key, value, headers).
pub(crate) async fn read_all<F>(
    consumer: &StreamConsumer,
    topic: &str,
    opts: Option<&ReadOptions>,
    mut f: F,
) -> Result<(), TopicError>
where
    F: FnMut(&rdkafka::message::BorrowedMessage<'_>),
{
    let mut reader = TopicReader::open(consumer, topic, opts).await?;
    while let Some(m) = reader.next().await? {
        f(&m);
    }
    Ok(())
}

/// The offsets `consumer`'s group committed for `topic`, per partition (partitions without one
/// left out).
pub(crate) fn committed(
    consumer: &StreamConsumer,
    topic: &str,
) -> Result<HashMap<i32, i64>, TopicError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| TopicError::Msg(format!("topic {topic}: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let _ = tpl.add_partition(topic, p.id());
        }
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| TopicError::Msg(format!("committed offsets of {topic}: {e}")))?;
    Ok(offsets_of(&got))
}

/// A record's headers as owned (name, value) pairs.
pub(crate) fn owned_headers<M: Message + ?Sized>(m: &M) -> Vec<(String, Option<Vec<u8>>)> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

/// Produces one record (key optional) and waits up to 60 s for its acknowledgement: the tools'
/// write (the worker's sink batches its own). With `pending`, the record's leaf waits there for
/// the tool's next audit checkpoint.
pub(crate) async fn send_record(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    headers: rdkafka::message::OwnedHeaders,
    pending: Option<&crate::audit::leaves::PendingLeaves>,
) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::message::Headers;
    let named: Vec<(String, Option<Vec<u8>>)> = match pending {
        Some(_) => headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect(),
        None => Vec::new(),
    };
    let mut rec = rdkafka::producer::FutureRecord::to(topic)
        .payload(value)
        .headers(headers);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    let d = producer
        .send(rec, rdkafka::util::Timeout::After(Duration::from_secs(60)))
        .await
        .map_err(|(e, _)| e)?;
    if let Some(p) = pending {
        let hs: Vec<(&str, Option<&[u8]>)> = named
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        p.push(crate::audit::leaves::leaf_of(
            topic,
            d.partition,
            d.offset,
            key,
            Some(value),
            &hs,
        ));
    }
    Ok(())
}
