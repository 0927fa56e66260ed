//! Which records of a chunk are already in the archive (a drain that ran before, or a batch the
//! worker sealed twice): an archive record counts as a copy only when it carries the same
//! `byok.src` **and** opens, under the same tenant, to the same plaintext. A record that merely
//! copies a `byok.src` header hides nothing.
//!
//! Memory is bounded: the archive is read once into an [`Index`] (a Bloom filter of its
//! `byok.src` values, 8 MiB whatever its size); a chunk is searched record by record only when
//! the filter says one of its records may be there (a real copy, or a false positive).

use std::collections::{BTreeSet, HashMap, HashSet};

use rdkafka::Message;
use rdkafka::message::Headers;

use crate::archive::ReadOptions;
use crate::config::Config;
use crate::dek::DekId;
use crate::kafka::{TopicReader, reader_consumer};
use crate::keyring::Keyring;
use crate::registry::DekRecord;

/// How far before the oldest record of a chunk the archive is searched for copies (a copy
/// archived by a redelivered batch may predate its quarantine copy).
pub(super) const ARCHIVE_SEARCH_MARGIN_MS: i64 = 3_600_000;

/// One chunk record bound for the archive: its provenance, tenant and plaintext digest.
pub(super) struct Wanted {
    pub(super) src: String,
    pub(super) tenant: String,
    pub(super) digest: [u8; 32],
}

/// Bits of the archive's Bloom filter (8 MiB: about 1% false positives at 7 million records).
const BLOOM_BITS: u64 = 1 << 26;
/// Hashes per value.
const BLOOM_HASHES: u64 = 7;

/// The `byok.src` values of the archive topics from a time on, as a Bloom filter.
pub(super) struct Index {
    bits: Vec<u64>,
    since: Option<i64>,
}

impl Index {
    /// Reads `topics` from `since` (the broker's time index; the whole topic when it has none).
    pub(super) async fn build(
        config: &Config,
        topics: &BTreeSet<String>,
        since: Option<i64>,
    ) -> Result<Self, crate::kafka::TopicError> {
        let mut index = Index {
            bits: vec![0; (BLOOM_BITS / 64) as usize],
            since,
        };
        for topic in topics {
            let consumer = reader_consumer(config)?;
            let Some(mut reader) = open_from(&consumer, topic, since).await? else {
                continue;
            };
            while let Some(m) = reader.next().await? {
                if let Some(src) = src_of(&m) {
                    index.insert(src);
                }
            }
        }
        Ok(index)
    }

    /// Whether the index was read from `since` or earlier.
    pub(super) fn covers(&self, since: Option<i64>) -> bool {
        match (self.since, since) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a <= b,
        }
    }

    fn positions(src: &str) -> impl Iterator<Item = usize> {
        let d = ring::digest::digest(&ring::digest::SHA256, src.as_bytes());
        let h = d.as_ref();
        let h1 = u64::from_le_bytes(h[..8].try_into().unwrap_or_default());
        let h2 = u64::from_le_bytes(h[8..16].try_into().unwrap_or_default()) | 1;
        (0..BLOOM_HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) % BLOOM_BITS) as usize)
    }

    fn insert(&mut self, src: &str) {
        for p in Self::positions(src) {
            self.bits[p / 64] |= 1 << (p % 64);
        }
    }

    /// False when `src` is surely not in the archive.
    pub(super) fn may_hold(&self, src: &str) -> bool {
        Self::positions(src).all(|p| self.bits[p / 64] & (1 << (p % 64)) != 0)
    }
}

/// When the chunk's archive search starts: an hour before its oldest record.
pub(super) fn since(oldest_ms: Option<i64>) -> Option<i64> {
    oldest_ms
        .filter(|t| *t > ARCHIVE_SEARCH_MARGIN_MS)
        .map(|t| t - ARCHIVE_SEARCH_MARGIN_MS)
}

/// The `byok.src` header of a record.
fn src_of<'m>(m: &'m rdkafka::message::BorrowedMessage<'_>) -> Option<&'m str> {
    m.headers()
        .and_then(|h| h.iter().find(|h| h.key == "byok.src").and_then(|h| h.value))
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// A reader of `topic` from `since` (the whole topic when the broker has no time index:
/// librdkafka's mock cluster), or `None` when the topic does not exist.
async fn open_from<'c>(
    consumer: &'c rdkafka::consumer::StreamConsumer,
    topic: &str,
    since: Option<i64>,
) -> Result<Option<TopicReader<'c>>, crate::kafka::TopicError> {
    let opts = ReadOptions {
        from_time_ms: since,
        ..ReadOptions::topic(topic.to_owned())
    };
    match TopicReader::open(consumer, topic, Some(&opts)).await {
        Ok(r) if r.total == 0 && since.is_some() => {
            drop(r);
            let whole = ReadOptions::topic(topic.to_owned());
            Ok(Some(
                TopicReader::open(consumer, topic, Some(&whole)).await?,
            ))
        }
        Ok(r) => Ok(Some(r)),
        Err(e) => {
            // a per-tenant archive topic that does not exist yet holds nothing
            tracing::info!(topic, error = %e, "archive topic not read");
            Ok(None)
        }
    }
}

/// The indices (into `wanted`) of records already in the archive.
pub(super) async fn find(
    config: &Config,
    keyring: &Keyring,
    registry: &HashMap<DekId, DekRecord>,
    wanted: &[Wanted],
    (index, oldest_ms): (&Index, Option<i64>),
) -> Result<HashSet<usize>, crate::kafka::TopicError> {
    let mut by_src: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, w) in wanted.iter().enumerate() {
        if index.may_hold(&w.src) {
            by_src.entry(w.src.as_str()).or_default().push(i);
        }
    }
    if by_src.is_empty() {
        return Ok(HashSet::new());
    }
    let topics: BTreeSet<String> = wanted
        .iter()
        .filter_map(|w| crate::tenant::TenantId::parse(&w.tenant).ok())
        .map(|t| config.kafka.archive_topic.topic_for(&t))
        .collect();
    let mut found = HashSet::new();
    let max = config.max_record_bytes();
    for topic in &topics {
        let consumer = reader_consumer(config)?;
        let Some(mut reader) = open_from(&consumer, topic, since(oldest_ms)).await? else {
            continue;
        };
        while let Some(m) = reader.next().await? {
            let Some(src) = src_of(&m) else {
                continue;
            };
            let Some(candidates) = by_src.get(src) else {
                continue;
            };
            let value = m.payload().unwrap_or_default();
            for &i in candidates {
                let w = &wanted[i];
                if !found.contains(&i)
                    && crate::archive::opens_to(keyring, registry, &w.tenant, m.key(), value, max)
                        .await
                        == Some(w.digest)
                {
                    found.insert(i);
                }
            }
        }
    }
    Ok(found)
}
