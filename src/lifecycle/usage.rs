//! `byok keys usage`: for each key version of a tenant, the DEKs wrapped under it and the archive
//! (and quarantine) partitions and offset ranges sealed with them. Answers "can the customer
//! retire version V?" (no DEK left under it: yes, after `byok rewrap`) and "which records does
//! this key protect?". Reads the registry and the topics' headers only; no key is used.
//!
//! It must never open a record or call a vault.

use std::collections::{BTreeMap, BTreeSet};

use rdkafka::Message;
use rdkafka::message::Headers;
use serde::Serialize;

use crate::archive::{ReadError, load_registry};
use crate::config::Config;
use crate::dek::DekId;
use crate::kafka::{read_all, reader_consumer};

/// Offsets of one topic partition sealed with a DEK.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Range {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset.
    pub first: i64,
    /// Last offset (inclusive).
    pub last: i64,
    /// Records in between sealed with the DEK.
    pub records: u64,
}

/// One DEK under a version.
#[derive(Debug, Clone, Serialize)]
pub struct DekUsage {
    /// DEK id.
    pub dek: String,
    /// When it was made.
    pub created: String,
    /// Wrapped locally, not yet proven or rewrapped.
    pub wrapped_locally: bool,
    /// Where its records are.
    pub ranges: Vec<Range>,
}

/// One key version of a tenant.
#[derive(Debug, Clone, Serialize)]
pub struct VersionUsage {
    /// The version's `kid`.
    pub kek: String,
    /// DEKs wrapped under it.
    pub deks: Vec<DekUsage>,
    /// Records sealed with those DEKs.
    pub records: u64,
}

/// Per tenant, per key version.
pub type Usage = BTreeMap<String, Vec<VersionUsage>>;

/// Of one DEK: (topic, partition) -> (first offset, last offset, records).
type Spans = BTreeMap<(String, i32), (i64, i64, u64)>;

/// Builds the usage of every tenant (or one).
pub async fn usage(config: &Config, tenant: Option<&str>) -> Result<Usage, ReadError> {
    let registry = load_registry(config).await?;
    let mut seen: BTreeMap<DekId, Spans> = BTreeMap::new();
    let mut topics: BTreeSet<String> = config
        .tenants
        .keys()
        .map(|t| config.kafka.archive_topic.topic_for(t))
        .collect();
    topics.insert(config.kafka.quarantine_topic.clone());
    for topic in &topics {
        let consumer = reader_consumer(config)?;
        let r = read_all(&consumer, topic, None, |m| {
            let Some(dek) = m
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "byok.dek").and_then(|h| h.value))
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<DekId>().ok())
            else {
                return;
            };
            let e = seen
                .entry(dek)
                .or_default()
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert((m.offset(), m.offset(), 0));
            e.0 = e.0.min(m.offset());
            e.1 = e.1.max(m.offset());
            e.2 += 1;
        })
        .await;
        if let Err(e) = r {
            tracing::info!(topic, error = %e, "topic not read");
        }
    }
    let mut out: Usage = BTreeMap::new();
    let mut by_version: BTreeMap<(String, String), Vec<DekUsage>> = BTreeMap::new();
    for r in registry.values() {
        if tenant.is_some_and(|t| t != r.tenant) {
            continue;
        }
        let ranges: Vec<Range> = seen
            .remove(&r.dek)
            .unwrap_or_default()
            .into_iter()
            .map(|((topic, partition), (first, last, records))| Range {
                topic,
                partition,
                first,
                last,
                records,
            })
            .collect();
        by_version
            .entry((r.tenant.clone(), r.kek.to_string()))
            .or_default()
            .push(DekUsage {
                dek: r.dek.to_string(),
                created: crate::registry::format_time(r.created),
                wrapped_locally: r.wrapped_locally,
                ranges,
            });
    }
    for ((t, kek), mut deks) in by_version {
        deks.sort_by(|a, b| a.created.cmp(&b.created));
        let records = deks
            .iter()
            .flat_map(|d| d.ranges.iter().map(|r| r.records))
            .sum();
        out.entry(t)
            .or_default()
            .push(VersionUsage { kek, deks, records });
    }
    Ok(out)
}

/// The text `byok keys usage` prints: per tenant and key version, its DEKs and the partitions
/// and offset ranges they sealed.
pub fn render_text(usage: &Usage) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for (t, versions) in usage {
        let _ = writeln!(s, "{t}");
        for v in versions {
            let _ = writeln!(
                s,
                "  {}: {} DEK(s), {} record(s)",
                v.kek,
                v.deks.len(),
                v.records
            );
            for d in &v.deks {
                let local = if d.wrapped_locally {
                    " (wrapped locally)"
                } else {
                    ""
                };
                let _ = writeln!(s, "    DEK {} made {}{local}", d.dek, d.created);
                for r in &d.ranges {
                    let _ = writeln!(
                        s,
                        "      {}/{} offsets {}..={} ({} records)",
                        r.topic, r.partition, r.first, r.last, r.records
                    );
                }
            }
        }
    }
    s
}
