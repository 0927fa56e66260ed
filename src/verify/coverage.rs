//! Coverage (docs/audit-v1.md §7): every archive, quarantine, registry and key record a leaf of
//! exactly one checkpoint, roots recomputed; a record that is no leaf is an orphan when the live
//! branch covers its source again after a crash, else injected.

use std::collections::{HashMap, HashSet};

use rdkafka::Message;

use super::chains::Forks;
use super::{VerifyError, VerifyReport};
use crate::audit::codec::b64;
use crate::audit::merkle::{self, Hash};
use crate::audit::records::Checkpoint;
use crate::config::Config;
use crate::kafka::{owned_headers, read_all, reader_consumer};

/// Where a record is: topic, partition, offset.
type Place = (String, i32, i64);

/// Every output record a leaf of exactly one checkpoint; roots recomputed. The leaves of
/// checkpoints a crash abandoned are orphans (a notice), as are records named by no checkpoint
/// whose source the live branch covered again after the crash with a leaf of the same source;
/// any other record named by no checkpoint is injected.
pub(super) async fn coverage(
    config: &Config,
    checkpoints: &[Checkpoint],
    ended: &HashSet<String>,
    forks: &Forks,
    rejected: &HashSet<(String, i32, i64)>,
    report: &mut VerifyReport,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(), VerifyError> {
    let mut named = named_leaves(checkpoints, report);
    // sources covered again after a crash: those of live leaves, and records named by none
    let mut live_sources: HashSet<String> = HashSet::new();
    let mut unnamed: Vec<(Place, String)> = Vec::new();
    let mut hashes: Vec<Vec<(Place, Hash)>> = vec![Vec::new(); checkpoints.len()];
    let consumer = reader_consumer(config)?;
    let mut read = 0u64;
    for topic in topics_to_read(config, checkpoints) {
        read_all(&consumer, &topic, None, |m| {
            read += 1;
            if read.is_multiple_of(1000) {
                progress(read, 0);
            }
            let headers = owned_headers(m);
            let hs: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            let leaf = crate::auditor::leaf_of(
                &topic,
                m.partition(),
                m.offset(),
                m.key(),
                m.payload(),
                &hs,
            );
            let at = (topic.clone(), m.partition(), m.offset());
            let src = recovered_source(forks, &headers);
            match named.remove(&at) {
                Some(i) => {
                    if let Some(src) = src
                        && !forks.abandoned.contains(&i)
                    {
                        live_sources.insert(src);
                    }
                    hashes[i].push((at, leaf.hash));
                }
                None if rejected.contains(&at) => {} // reported as what it is
                None => match (src, crashed_writer(m.payload(), ended, &topic, config)) {
                    (Some(src), _) => unnamed.push((at, src)),
                    // a registry or key record that verifies (else it is in `rejected`), signed by
                    // a writer that died before a checkpoint named it: no one else can sign one
                    (None, Some(w)) => report.notice(
                        "orphan",
                        format!(
                            "{}/{}/{}: a record of writer {w}, which died before its checkpoint",
                            at.0, at.1, at.2
                        ),
                    ),
                    (None, None) => report.finding(
                        "injected",
                        format!("{}/{}/{} is named by no checkpoint", at.0, at.1, at.2),
                    ),
                },
            }
        })
        .await?;
    }
    for ((t, p, o), src) in unnamed {
        if live_sources.contains(&src) {
            report.notice(
                "orphan",
                format!("{t}/{p}/{o}: written for {src} by a writer that died before its checkpoint; the live branch archived {src} again"),
            );
        } else {
            report.finding("injected", format!("{t}/{p}/{o} is named by no checkpoint"));
        }
    }
    for (t, p, o) in named.keys() {
        report.finding(
            "removed",
            format!("{t}/{p}/{o} is named by a checkpoint and absent"),
        );
    }
    roots(checkpoints, hashes, forks, report);
    Ok(())
}

/// The record's `byok.src` when it names an input offset the live branch covered again after a
/// crash.
fn recovered_source(forks: &Forks, headers: &[(String, Option<Vec<u8>>)]) -> Option<String> {
    let src = headers
        .iter()
        .find(|(k, _)| k == crate::envelope::headers::names::SRC)
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())?;
    let mut it = src.rsplitn(3, '/');
    let offset: i64 = it.next()?.parse().ok()?;
    let partition: i32 = it.next()?.parse().ok()?;
    let topic = it.next()?;
    forks
        .recovered(topic, partition, offset)
        .then(|| src.to_owned())
}

/// The writer of a registry or key record, when that writer never wrote `end` (it crashed). Only
/// called for records that verified as signed by a certified writer.
fn crashed_writer(
    value: Option<&[u8]>,
    ended: &HashSet<String>,
    topic: &str,
    config: &Config,
) -> Option<String> {
    if topic != config.kafka.registry_topic && topic != config.kafka.keks_topic {
        return None;
    }
    let j: serde_json::Value = serde_json::from_slice(value?).ok()?;
    let w = j["writer"].as_str()?;
    (!ended.contains(w)).then(|| w.to_owned())
}

/// Where each checkpoint's leaves are: (topic, partition, offset) -> checkpoint index; an offset
/// named twice is a rewind.
fn named_leaves(
    checkpoints: &[Checkpoint],
    report: &mut VerifyReport,
) -> HashMap<(String, i32, i64), usize> {
    let mut named: HashMap<(String, i32, i64), usize> = HashMap::new();
    for (i, c) in checkpoints.iter().enumerate() {
        for o in &c.out {
            for [first, len] in &o.runs {
                for off in *first..first + len {
                    if named
                        .insert((o.topic.clone(), o.partition, off), i)
                        .is_some()
                    {
                        report.finding(
                            "rewind",
                            format!("{}/{}/{off} named twice", o.topic, o.partition),
                        );
                    }
                }
            }
        }
    }
    named
}

/// The configured outputs, and any other topic a checkpoint names (a replay's target).
fn topics_to_read(config: &Config, checkpoints: &[Checkpoint]) -> Vec<String> {
    let mut topics: Vec<String> = crate::topics::topics_of(config)
        .into_iter()
        .filter(|(_, r)| !matches!(r, crate::topics::Role::Input | crate::topics::Role::Audit))
        .map(|(t, _)| t)
        .collect();
    for c in checkpoints {
        for o in &c.out {
            if !topics.contains(&o.topic) {
                topics.push(o.topic.clone());
            }
        }
    }
    topics
}

/// Each checkpoint's leaves, read back, hashed to its root: live leaves pass, an abandoned
/// checkpoint's are orphans, a root that differs is altered (checkpoints missing leaves were
/// reported removed).
fn roots(
    checkpoints: &[Checkpoint],
    hashes: Vec<Vec<(Place, Hash)>>,
    forks: &Forks,
    report: &mut VerifyReport,
) {
    for (i, mut leaves) in hashes.into_iter().enumerate() {
        let c = &checkpoints[i];
        if leaves.len() as u64 != c.leaves {
            continue; // removed records reported above
        }
        leaves.sort();
        let list: Vec<Hash> = leaves.iter().map(|(_, h)| *h).collect();
        if b64(&merkle::root(&list)) == c.root {
            if forks.abandoned.contains(&i) {
                report.notice(
                    "orphan",
                    format!(
                        "the {} leaves of checkpoint {} seq {}, abandoned by a crash before its commit",
                        list.len(),
                        c.writer,
                        c.seq
                    ),
                );
            } else {
                report.passed += list.len() as u64;
            }
        } else {
            let first = leaves
                .first()
                .map(|((t, p, o), _)| format!("{t}/{p}/{o}"))
                .unwrap_or_default();
            report.finding(
                "altered",
                format!(
                    "the leaves of checkpoint {} seq {} (from {first}) do not hash to its root",
                    c.writer, c.seq
                ),
            );
        }
    }
}
