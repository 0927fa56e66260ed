//! `byok cat`: reads an archive or quarantine topic, opens each record through the DEK registry
//! and the key providers, and yields the plaintext with its provenance. This is how an auditor
//! with decrypt permission reads the archive, and how tests check it. Duplicates (same
//! `byok.src`) are dropped unless asked for. A record that cannot be opened is reported with the
//! reason, never skipped silently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::config::Config;
use crate::dek::DekId;
use crate::envelope::{
    self,
    headers::{ArchiveHeaders, QuarantineHeaders},
};
use crate::kms::{KeyProvider, TenantKms};
use crate::registry::{DekRecord, QUARANTINE_TENANT, RegistryEntry};

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

/// One opened record.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    /// Topic, partition and offset of the sealed record.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Provenance of the captured record.
    pub src: String,
    /// Tenant (as the header names it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Quarantine reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// DEK id.
    pub dek: String,
    /// Record key, base64 (absent when null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// Plaintext, base64.
    pub value_b64: String,
    /// Plaintext as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A record that could not be opened, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unopened {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Why.
    pub reason: String,
}

/// What reading found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReadStats {
    /// Records read.
    pub read: u64,
    /// Opened and yielded.
    pub opened: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Could not be opened.
    pub failed: u64,
}

/// Reading failed as a whole.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ReadError(pub String);

pub(crate) fn reader_consumer(config: &Config) -> Result<StreamConsumer, ReadError> {
    group_consumer(config, &format!("byok-reader-{}", uuid::Uuid::new_v4()))
}

/// A reader in consumer group `group`, for a tool that keeps its progress in committed offsets.
pub(crate) fn group_consumer(config: &Config, group: &str) -> Result<StreamConsumer, ReadError> {
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka.consumer {
        c.set(k, v);
    }
    // A reader starts on a backlog: ask for moderate fetches (some brokers, Tansu 0.6 among
    // them, return nothing for very large fetch responses).
    if !config.kafka.consumer.contains_key("fetch.max.bytes") {
        c.set("fetch.max.bytes", "4194304");
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
            if config.kafka.delivery == crate::config::Delivery::ExactlyOnce {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .map_err(|e| ReadError(format!("Kafka consumer: {e}")))
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
    ) -> Result<Self, ReadError> {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(|e| ReadError(format!("topic {topic}: {e}")))?;
        let partitions: Vec<i32> = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .filter(|p| opts.is_none_or(|o| o.partitions.is_empty() || o.partitions.contains(p)))
            .collect();
        if partitions.is_empty() {
            return Err(ReadError(format!(
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
                .map_err(|e| ReadError(format!("{topic}/{p}: {e}")))?;
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
                .map_err(|e| ReadError(format!("assign {topic}: {e}")))?;
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
    ) -> Result<Option<rdkafka::message::BorrowedMessage<'c>>, ReadError> {
        while !self.ends.is_empty() {
            let m = tokio::time::timeout(Duration::from_secs(120), self.consumer.recv())
                .await
                .map_err(|_| {
                    ReadError(format!(
                        "no record from {} for 120 s; partitions left: {:?}",
                        self.topic,
                        self.ends.keys().collect::<Vec<_>>()
                    ))
                })?
                .map_err(|e| ReadError(format!("read {}: {e}", self.topic)))?;
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

/// The first offset of each partition whose timestamp is at or after `ms` (partitions with
/// none are left out).
fn start_offsets_at(
    consumer: &StreamConsumer,
    topic: &str,
    partitions: &[i32],
    ms: i64,
) -> Result<HashMap<i32, i64>, ReadError> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        let _ = tpl.add_partition_offset(topic, *p, Offset::Offset(ms));
    }
    let found = consumer
        .offsets_for_times(tpl, Duration::from_secs(10))
        .map_err(|e| ReadError(format!("{topic}: offsets for time {ms}: {e}")))?;
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
) -> Result<(), ReadError>
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
) -> Result<HashMap<i32, i64>, ReadError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| ReadError(format!("topic {topic}: {e}")))?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics().iter().filter(|t| t.name() == topic) {
        for p in t.partitions() {
            let _ = tpl.add_partition(topic, p.id());
        }
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .map_err(|e| ReadError(format!("committed offsets of {topic}: {e}")))?;
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

/// Loads the DEK registry (latest record per DEK; tombstones remove).
pub async fn load_registry(config: &Config) -> Result<HashMap<DekId, DekRecord>, ReadError> {
    let consumer = reader_consumer(config)?;
    let mut map = HashMap::new();
    read_all(
        &consumer,
        &config.kafka.registry_topic,
        None,
        |m| match RegistryEntry::decode(m.key(), m.payload()) {
            Ok(RegistryEntry::Live(r)) => {
                map.insert(r.dek, r);
            }
            Ok(RegistryEntry::Destroyed(id)) => {
                map.remove(&id);
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable registry record");
            }
        },
    )
    .await?;
    Ok(map)
}

/// Loads each tenant's last known public key from the `byok.keks` topic (latest per tenant).
pub async fn load_keks(
    config: &Config,
) -> Result<HashMap<String, crate::kms::VersionInfo>, ReadError> {
    let consumer = reader_consumer(config)?;
    let mut map = HashMap::new();
    read_all(&consumer, &config.kafka.keks_topic, None, |m| {
        match m.payload().map(crate::kms::local::KekRecord::from_json) {
            Some(Ok(r)) => {
                map.insert(r.tenant, r.version);
            }
            Some(Err(e)) => tracing::warn!(error = %e, "unreadable byok.keks record"),
            None => {}
        }
    })
    .await?;
    Ok(map)
}

/// Reads and opens `opts.topic`, calling `out` for each opened record and `failed` for each
/// record that could not be opened.
pub async fn read(
    config: &Config,
    opts: &ReadOptions,
    mut out: impl FnMut(Opened),
    mut failed: impl FnMut(Unopened),
) -> Result<ReadStats, ReadError> {
    let registry = load_registry(config).await?;
    let mut providers: BTreeMap<String, Arc<TenantKms>> = crate::kms::providers(config)
        .map_err(|e| ReadError(e.to_string()))?
        .into_iter()
        .map(|(k, v)| (k.as_str().to_owned(), v))
        .collect();
    let mut limiters = HashMap::new();
    let q = crate::kms::tenant_kms(
        QUARANTINE_TENANT,
        &config.quarantine,
        &config.keys,
        &mut limiters,
    )
    .map_err(|e| ReadError(e.to_string()))?;
    providers.insert(QUARANTINE_TENANT.to_owned(), Arc::new(q));

    // Collect the sealed records first (the callback of read_all is synchronous).
    let consumer = reader_consumer(config)?;
    let mut sealed = Vec::new();
    read_all(&consumer, &opts.topic, Some(opts), |m| {
        let ts = m.timestamp().to_millis();
        if opts.from_time_ms.is_some_and(|f| ts.is_some_and(|t| t < f))
            || opts.to_time_ms.is_some_and(|e| ts.is_some_and(|t| t >= e))
        {
            return;
        }
        let headers: Vec<(String, Option<Vec<u8>>)> = owned_headers(m);
        sealed.push((
            m.partition(),
            m.offset(),
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            headers,
        ));
    })
    .await?;

    let mut stats = ReadStats::default();
    let mut seen: HashSet<String> = HashSet::new();
    for (partition, offset, key, value, headers) in sealed {
        stats.read += 1;
        let fail = |reason: String| Unopened {
            topic: opts.topic.clone(),
            partition,
            offset,
            reason,
        };
        let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        let (tenant, reason, src, dek) = match ArchiveHeaders::from_pairs(pairs.clone()) {
            Ok(h) if !headers.iter().any(|(k, _)| k == "byok.reason") => {
                (Some(h.tenant), None, h.src.to_string(), h.dek)
            }
            _ => match QuarantineHeaders::from_pairs(pairs) {
                Ok(q) => (
                    q.tenant,
                    Some(q.reason.as_str().to_owned()),
                    q.src.to_string(),
                    q.dek,
                ),
                Err(e) => {
                    stats.failed += 1;
                    failed(fail(format!("not a byok record: {e}")));
                    continue;
                }
            },
        };
        if opts
            .tenant
            .as_ref()
            .is_some_and(|t| Some(t) != tenant.as_ref())
        {
            continue;
        }
        if !opts.duplicates && !seen.insert(src.clone()) {
            stats.duplicates += 1;
            continue;
        }
        let Some(record) = registry.get(&dek) else {
            stats.failed += 1;
            failed(fail(format!(
                "DEK {dek} is not in the registry topic {}",
                config.kafka.registry_topic
            )));
            continue;
        };
        let Some(provider) = providers.get(&record.tenant) else {
            stats.failed += 1;
            failed(fail(format!(
                "no key provider for tenant {} (not configured with BYOK enabled)",
                record.tenant
            )));
            continue;
        };
        let key_obj = match provider.unwrap(&record.kek, dek, &record.wrapped).await {
            Ok(k) => k,
            Err(e) => {
                stats.failed += 1;
                failed(fail(format!("DEK {dek} cannot be unwrapped: {e}")));
                continue;
            }
        };
        let Some(value) = value else {
            stats.failed += 1;
            failed(fail("null value".into()));
            continue;
        };
        match envelope::open(&key_obj, &record.tenant, key.as_deref(), &value) {
            Ok(plain) => {
                stats.opened += 1;
                out(Opened {
                    topic: opts.topic.clone(),
                    partition,
                    offset,
                    src,
                    tenant,
                    reason,
                    dek: dek.to_string(),
                    key_b64: key.as_ref().map(|k| STANDARD.encode(k)),
                    value_b64: STANDARD.encode(&plain),
                    value: String::from_utf8(plain).ok(),
                });
            }
            Err(e) => {
                stats.failed += 1;
                failed(fail(format!("{e} (DEK {dek}, tenant {})", record.tenant)));
            }
        }
    }
    Ok(stats)
}
