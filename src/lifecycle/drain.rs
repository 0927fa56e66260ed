//! `byok replay --quarantine`: drains the quarantine into the archive for tenants whose keys are
//! usable again (docs/envelope-v1.md §3).
//!
//! - A record sealed under a DEK of its tenant (wrapped locally while the key was revoked, or by
//!   Key Vault): the DEK is first opened through Key Vault `decrypt` (proof the record can be
//!   read), then the record moves to the archive unchanged (same value, key and `byok.src`).
//! - A record under the operator's quarantine key whose tenant is now configured with BYOK
//!   (unknown tenant or BYOK off at the time, or no public key known): opened with the operator's
//!   key and re-sealed under a new DEK of the tenant.
//! - Records of tenants still revoked, and records without a tenant, stay, counted by reason.
//!
//! Records whose `byok.src` is already in the archive are not written again, so running it twice,
//! or again after a crash, adds nothing twice. The archive is searched from an hour before the
//! oldest record that could move (not from its beginning). Progress is kept as offsets of the
//! consumer group `<group_id>.drain` on the quarantine topic: each partition's first record not
//! yet resolved (moved, re-sealed or found archived), so a later drain starts there.
//!
//! It must never move a record into the archive without first proving its DEK through Key Vault,
//! and never write one twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

use crate::archive::{ReadOptions, load_registry};
use crate::config::{Config, TenantId};
use crate::dek::DekId;
use crate::deks::DekSet;
use crate::envelope::{
    self,
    headers::{ArchiveHeaders, HeaderError, QuarantineHeaders},
};
use crate::kafka::{read_all, reader_consumer};
use crate::kms::KeyProvider;
use crate::registry::QUARANTINE_TENANT;

/// How far before the oldest movable quarantine record the archive is searched for copies.
const ARCHIVE_SEARCH_MARGIN_MS: i64 = 3_600_000;

/// The consumer group whose offsets on the quarantine topic keep the drain's progress.
pub fn drain_group(config: &Config) -> String {
    format!("{}.drain", config.kafka.group_id)
}

/// What to drain.
#[derive(Debug, Clone, Default)]
pub struct DrainOptions {
    /// Only this tenant's records.
    pub tenant: Option<String>,
    /// Count what would move, write nothing.
    pub dry_run: bool,
}

/// What draining did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainStats {
    /// Quarantine records read.
    pub read: u64,
    /// Moved to the archive unchanged (tenant DEK proven through Key Vault).
    pub moved: u64,
    /// Opened with the operator's key and re-sealed under the tenant's key.
    pub resealed: u64,
    /// Already in the archive (same byok.src): not written again.
    pub already_archived: u64,
    /// Left in the quarantine, by reason.
    pub stayed: BTreeMap<String, u64>,
    /// Records that could not be handled, with the reason (never skipped silently).
    pub failed: Vec<String>,
}

struct Quarantined {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Drains the quarantine; `progress(done, total)` after each record.
pub async fn drain_quarantine(
    config: &Config,
    opts: &DrainOptions,
    progress: impl FnMut(u64, u64),
) -> Result<DrainStats, super::LifecycleError> {
    let keyring = crate::keyring::Keyring::new(config)?;
    drain_quarantine_with(config, &keyring, opts, progress).await
}

/// [`drain_quarantine`] with the process's keyring (the worker's automatic drain shares its
/// rate limiters).
pub async fn drain_quarantine_with(
    config: &Config,
    keyring: &crate::keyring::Keyring,
    opts: &DrainOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<DrainStats, super::LifecycleError> {
    let registry = load_registry(config).await?;
    let tenants = keyring.tenants();
    let operator = keyring.operator();

    // the quarantine, from the first record an earlier drain left unresolved
    let group = crate::kafka::group_consumer(config, &drain_group(config))?;
    let q_topic = config.kafka.quarantine_topic.clone();
    let starts = crate::kafka::committed(&group, &q_topic)?;
    let mut records = Vec::new();
    let mut read_to: HashMap<i32, i64> = HashMap::new();
    let consumer = reader_consumer(config)?;
    read_all(
        &consumer,
        &q_topic,
        Some(&ReadOptions {
            start_offsets: starts,
            ..ReadOptions::topic(q_topic.clone())
        }),
        |m| {
            read_to.insert(m.partition(), m.offset() + 1);
            records.push(Quarantined {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m.timestamp().to_millis(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: crate::kafka::owned_headers(m),
            });
        },
    )
    .await?;

    // byok.src already in the archive topics, searched from an hour before the oldest record
    // that could move (a copy archived by a redelivered batch may predate its quarantine copy)
    let movable = |r: &Quarantined| {
        r.headers
            .iter()
            .find(|(k, _)| k == "byok.tenant")
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .is_some_and(|t| {
                opts.tenant.as_deref().is_none_or(|f| f == t)
                    && TenantId::parse(t).is_ok_and(|t| tenants.contains_key(&t))
            })
    };
    let oldest = records
        .iter()
        .filter(|r| movable(r))
        .map(|r| r.timestamp.unwrap_or(0))
        .min();
    let mut archived: HashSet<String> = HashSet::new();
    let topics: std::collections::BTreeSet<String> = tenants
        .keys()
        .map(|t| config.kafka.archive_topic.topic_for(t))
        .collect();
    let since = oldest
        .filter(|t| *t > ARCHIVE_SEARCH_MARGIN_MS)
        .map(|t| t - ARCHIVE_SEARCH_MARGIN_MS);
    for topic in topics.iter().filter(|_| oldest.is_some()) {
        let consumer = reader_consumer(config)?;
        let r = read_all(
            &consumer,
            topic,
            Some(&ReadOptions {
                from_time_ms: since,
                ..ReadOptions::topic(topic.clone())
            }),
            |m| {
                if let Some(h) = m.headers()
                    && let Some(src) = h.iter().find(|h| h.key == "byok.src").and_then(|h| h.value)
                {
                    archived.insert(String::from_utf8_lossy(src).into_owned());
                }
            },
        )
        .await;
        if let Err(e) = r {
            // a per-tenant archive topic that does not exist yet holds nothing
            tracing::info!(topic, error = %e, "archive topic not read");
        }
    }

    let producer: FutureProducer = super::tool_producer(config)?;
    let mut deks = DekSet::new(
        config.dek.limits,
        format!("drain-{}", crate::kafka::worker_id(config)),
        config.kafka.registry_topic.clone(),
    );
    let mut proven: HashMap<DekId, bool> = HashMap::new();
    let mut stats = DrainStats::default();
    let total = records.len() as u64;
    let offsets: Vec<(i32, i64)> = records.iter().map(|r| (r.partition, r.offset)).collect();
    // moved, re-sealed (once acknowledged) or found archived
    let mut resolved: HashSet<(i32, i64)> = HashSet::new();
    let mut sends = Vec::new();
    for (n, r) in records.into_iter().enumerate() {
        stats.read += 1;
        progress(n as u64 + 1, total);
        let at = format!("{q_topic}/{}/{}", r.partition, r.offset);
        let pairs = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        let q = match QuarantineHeaders::from_pairs(pairs) {
            Ok(q) => q,
            Err(HeaderError::Marker { reason }) => {
                // nothing sealed in it: it stays, counted, and never holds the drain back
                *stats.stayed.entry(reason.as_str().to_owned()).or_default() += 1;
                resolved.insert((r.partition, r.offset));
                continue;
            }
            Err(e) => {
                stats
                    .failed
                    .push(format!("{at}: not a quarantine record: {e}"));
                continue;
            }
        };
        if opts.tenant.is_some() && opts.tenant != q.tenant {
            continue;
        }
        let src = q.src.to_string();
        if archived.contains(&src) {
            stats.already_archived += 1;
            resolved.insert((r.partition, r.offset));
            continue;
        }
        let stay = |stats: &mut DrainStats, why: &str| {
            *stats.stayed.entry(why.to_owned()).or_default() += 1;
        };
        let Some((tenant, kms)) = q
            .tenant
            .as_deref()
            .and_then(|t| TenantId::parse(t).ok())
            .and_then(|t| tenants.get(&t).map(|k| (t, Arc::clone(k))))
        else {
            stay(&mut stats, q.reason.as_str());
            continue;
        };
        let Some(record) = registry.get(&q.dek) else {
            stats.failed.push(format!(
                "{at}: DEK {} is not in the registry topic {}",
                q.dek, config.kafka.registry_topic
            ));
            continue;
        };
        let topic = config.kafka.archive_topic.topic_for(&tenant);
        let value = if record.tenant == tenant.as_str() {
            // the tenant's own DEK: prove it opens through Key Vault, then move unchanged
            let ok = match proven.get(&q.dek) {
                Some(ok) => *ok,
                None => {
                    let ok = kms
                        .unwrap(&record.kek, record.dek, &record.wrapped)
                        .await
                        .is_ok();
                    proven.insert(q.dek, ok);
                    ok
                }
            };
            if !ok {
                stay(&mut stats, q.reason.as_str());
                continue;
            }
            stats.moved += 1;
            r.value
        } else if record.tenant == QUARANTINE_TENANT {
            // under the operator's key: open, re-seal under the tenant's key
            let opened = operator
                .unwrap(&record.kek, record.dek, &record.wrapped)
                .await
                .map_err(|e| e.to_string())
                .and_then(|k| {
                    crate::archive::open_operator(
                        &k,
                        Some(tenant.as_str()),
                        r.key.as_deref(),
                        &r.value,
                    )
                    .map_err(|e| e.to_string())
                });
            let plain = match opened {
                Ok((p, crate::tenant::OperatorClaim::Bound(_))) => p,
                Ok(_) => {
                    // sealed before claims were bound: the header's tenant is only a claim,
                    // and re-sealing on it would hand the plaintext to whoever wrote it
                    stay(&mut stats, "claim-not-bound");
                    continue;
                }
                Err(e) => {
                    stats.failed.push(format!(
                        "{at}: does not open with the operator's key as captured for {tenant} (relabelled or corrupt): {e}"
                    ));
                    continue;
                }
            };
            if opts.dry_run {
                stats.resealed += 1;
                continue;
            }
            let dek = match deks.current(tenant.as_str()) {
                Some(d) => d,
                None => match deks.rotate(tenant.as_str(), kms.as_ref(), &producer).await {
                    Ok(d) => d,
                    Err(e) => {
                        stay(&mut stats, q.reason.as_str());
                        tracing::warn!(tenant = %tenant, error = %e, "no DEK for re-sealing");
                        continue;
                    }
                },
            };
            let mut out = Vec::with_capacity(plain.len() + envelope::OVERHEAD);
            if let Err(e) = envelope::seal_into(
                &dek,
                tenant.as_str(),
                r.key.as_deref(),
                &plain,
                config.dek.compression,
                &mut out,
            ) {
                stats.failed.push(format!("{at}: re-sealing failed: {e}"));
                continue;
            }
            stats.resealed += 1;
            out
        } else {
            stats.failed.push(format!(
                "{at}: DEK {} belongs to {}, not to the record's tenant {tenant}",
                q.dek, record.tenant
            ));
            continue;
        };
        if opts.dry_run {
            continue;
        }
        let dek = envelope::Header::parse(&value)
            .map(|h| h.dek_id)
            .unwrap_or(q.dek);
        let headers = ArchiveHeaders {
            tenant: tenant.to_string(),
            dek,
            src: q.src.clone(),
        };
        let mut oh = OwnedHeaders::new();
        for (k, v) in headers.to_pairs() {
            oh = oh.insert(Header {
                key: k,
                value: Some(&v),
            });
        }
        let producer = producer.clone();
        sends.push(async move {
            let mut rec = FutureRecord::to(&topic).payload(&value).headers(oh);
            if let Some(k) = &r.key {
                rec = rec.key(k);
            }
            producer
                .send(rec, Timeout::After(Duration::from_secs(60)))
                .await
                .map(|_| (r.partition, r.offset))
                .map_err(|(e, _)| format!("{at}: produce to {topic}: {e}"))
        });
    }
    for r in futures::future::join_all(sends).await {
        match r {
            Ok(at) => {
                resolved.insert(at);
            }
            Err(e) => stats.failed.push(e),
        }
    }
    let _ = producer.flush(Timeout::After(Duration::from_secs(30)));
    if !opts.dry_run && opts.tenant.is_none() {
        // the next drain starts at each partition's first record not resolved
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, end) in &read_to {
            let first_open = offsets
                .iter()
                .filter(|(rp, ro)| rp == p && !resolved.contains(&(*rp, *ro)))
                .map(|(_, o)| *o)
                .min()
                .unwrap_or(*end);
            let _ = tpl.add_partition_offset(&q_topic, *p, rdkafka::Offset::Offset(first_open));
        }
        if tpl.count() > 0
            && let Err(e) = group.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        {
            tracing::warn!(error = %e, group = %drain_group(config), "drain progress not saved; the next drain reads these records again (nothing is written twice)");
        }
    }
    Ok(stats)
}
