//! Which records of a chunk are already in the archive (a drain that ran before, or a batch the
//! worker sealed twice): an archive record counts as a copy only when it carries the same
//! `byok.src` **and** opens, under the same tenant, to the same plaintext. A record that merely
//! copies a `byok.src` header hides nothing.
//!
//! Memory is bounded by the chunk: only archive records whose `byok.src` a chunk record has are
//! looked at, one at a time.

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

/// The indices (into `wanted`) of records already in the archive.
pub(super) async fn find(
    config: &Config,
    keyring: &Keyring,
    registry: &HashMap<DekId, DekRecord>,
    wanted: &[Wanted],
    oldest_ms: Option<i64>,
) -> Result<HashSet<usize>, crate::kafka::TopicError> {
    let mut by_src: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, w) in wanted.iter().enumerate() {
        by_src.entry(w.src.as_str()).or_default().push(i);
    }
    let topics: BTreeSet<String> = wanted
        .iter()
        .filter_map(|w| crate::tenant::TenantId::parse(&w.tenant).ok())
        .map(|t| config.kafka.archive_topic.topic_for(&t))
        .collect();
    let since = oldest_ms
        .filter(|t| *t > ARCHIVE_SEARCH_MARGIN_MS)
        .map(|t| t - ARCHIVE_SEARCH_MARGIN_MS);
    let mut found = HashSet::new();
    for topic in &topics {
        let consumer = reader_consumer(config)?;
        let opts = ReadOptions {
            from_time_ms: since,
            ..ReadOptions::topic(topic.clone())
        };
        let mut reader = match TopicReader::open(&consumer, topic, Some(&opts)).await {
            Ok(r) if r.total == 0 && since.is_some() => {
                // no offset for the time: nothing after it, or a broker without a time index
                // (librdkafka's mock cluster): read the whole topic rather than miss a copy
                drop(r);
                let whole = ReadOptions::topic(topic.clone());
                TopicReader::open(&consumer, topic, Some(&whole)).await?
            }
            Ok(r) => r,
            Err(e) => {
                // a per-tenant archive topic that does not exist yet holds nothing
                tracing::info!(topic, error = %e, "archive topic not read");
                continue;
            }
        };
        while let Some(m) = reader.next().await? {
            let Some(src) = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "byok.src").and_then(|h| h.value))
                .and_then(|v| std::str::from_utf8(v).ok())
            else {
                continue;
            };
            let Some(candidates) = by_src.get(src) else {
                continue;
            };
            let value = m.payload().unwrap_or_default();
            for &i in candidates {
                let w = &wanted[i];
                if !found.contains(&i)
                    && crate::archive::opens_to(keyring, registry, &w.tenant, m.key(), value).await
                        == Some(w.digest)
                {
                    found.insert(i);
                }
            }
        }
    }
    Ok(found)
}
