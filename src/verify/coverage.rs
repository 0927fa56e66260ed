//! Coverage (docs/audit-v1.md §7): every archive, quarantine, registry and key record a leaf of
//! exactly one checkpoint, roots recomputed; a record that is no leaf is an orphan when the live
//! branch covers its source again after a crash, else injected.
//!
//! Streaming, in memory bounded by a window: checkpoints are taken in audit order; once their
//! leaves number `window`, each output partition is read from where it was left up to the
//! highest offset they name, the named records are hashed into their checkpoints' roots, and
//! the records no checkpoint has named yet wait, until a later checkpoint names them or the
//! partition has been read `window` records past them (then they are classified: orphan or
//! injected). Registry and key records wait until the end (they are few).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use rdkafka::Message;
use rdkafka::consumer::StreamConsumer;

use super::chains::Forks;
use super::intervals::Intervals;
use super::{VerifyError, VerifyReport};
use crate::audit::codec::b64;
use crate::audit::merkle::{self, Hash};
use crate::audit::records::Checkpoint;
use crate::config::Config;
use crate::kafka::{ReadOptions, TopicReader};

/// Where a record is: topic, partition, offset.
type Place = (String, i32, i64);
/// An output partition.
type Part = (String, i32);

/// How many checkpoints back a fork can still turn counted leaves into orphans.
const RECENT: usize = 65_536;

/// A record read that no checkpoint read so far names.
#[derive(Debug)]
struct Unnamed {
    hash: Hash,
    /// its `byok.src` header
    src: Option<String>,
    /// the writer a registry or key record names
    writer: Option<String>,
    /// its timestamp (ms; the producer's time of the write)
    ts: Option<i64>,
}

/// How long after its write a record may still wait for its checkpoint (a live writer names
/// its outputs within a batch's time): younger unnamed records are `pending`, not injected,
/// while a writer that has not ended wrote within this time.
pub(super) const SETTLE: time::Duration = time::Duration::minutes(2);
const SETTLE_MS: i64 = SETTLE.whole_milliseconds() as i64;

/// One output partition's state.
#[derive(Debug, Default)]
struct PartState {
    /// every offset any checkpoint named so far
    named: Intervals,
    /// read up to here (exclusive); `None`: not read yet
    read_upto: Option<i64>,
    unnamed: BTreeMap<i64, Unnamed>,
}

/// A checkpoint in range whose leaves are not read yet.
#[derive(Debug)]
struct Open {
    index: usize,
    writer: String,
    seq: u64,
    root: String,
    leaves: u64,
    hashes: Vec<(Place, Hash)>,
}

/// Coverage, fed checkpoint by checkpoint.
pub(super) struct Coverage<'a> {
    config: &'a Config,
    consumer: &'a StreamConsumer,
    rejected: &'a HashSet<Place>,
    window: usize,
    /// the whole log: each partition read from its start
    whole: bool,
    parts: HashMap<Part, PartState>,
    open: Vec<Open>,
    /// leaves of the open checkpoints -> position in `open`
    open_named: HashMap<Place, usize>,
    /// checkpoints counted as passed lately: (index, leaves)
    recent: VecDeque<(usize, u64)>,
    /// sources the live branch covered again after a crash
    live_sources: HashSet<String>,
    topics: BTreeSet<String>,
    /// output records read
    pub(super) read: u64,
    /// when verify started (ms since the epoch)
    started_ms: i64,
    /// a writer that has not ended wrote lately (its newest outputs may be pending)
    writers_live: bool,
}

impl<'a> Coverage<'a> {
    pub(super) fn new(
        config: &'a Config,
        consumer: &'a StreamConsumer,
        rejected: &'a HashSet<Place>,
        window: usize,
        whole: bool,
    ) -> Self {
        let topics = crate::topics::topics_of(config)
            .into_iter()
            .filter(|(_, r)| !matches!(r, crate::topics::Role::Input | crate::topics::Role::Audit))
            .map(|(t, _)| t)
            .collect();
        Self {
            config,
            consumer,
            rejected,
            window: window.max(1),
            whole,
            parts: HashMap::new(),
            open: Vec::new(),
            open_named: HashMap::new(),
            recent: VecDeque::new(),
            live_sources: HashSet::new(),
            topics,
            read: 0,
            writers_live: false,
            started_ms: (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64,
        }
    }

    /// Checkpoint `index`: its leaves named (an offset named twice is a rewind); when
    /// `in_range`, they are read and checked. True when the window is full (call `flush`).
    pub(super) fn add(
        &mut self,
        index: usize,
        c: &Checkpoint,
        in_range: bool,
        report: &mut VerifyReport,
    ) -> bool {
        let pos = self.open.len();
        for o in &c.out {
            self.topics.insert(o.topic.clone());
            let part = self
                .parts
                .entry((o.topic.clone(), o.partition))
                .or_default();
            for [first, len] in &o.runs {
                for off in part.named.insert_run(*first, *len) {
                    report.finding(
                        "rewind",
                        format!("{}/{}/{off} named twice", o.topic, o.partition),
                    );
                }
                for off in *first..first + len {
                    if in_range {
                        self.open_named
                            .insert((o.topic.clone(), o.partition, off), pos);
                    } else {
                        // named by a checkpoint out of range: not checked, not injected
                        part.unnamed.remove(&off);
                    }
                }
            }
        }
        if in_range {
            self.open.push(Open {
                index,
                writer: c.writer.clone(),
                seq: c.seq,
                root: c.root.clone(),
                leaves: c.leaves,
                hashes: Vec::new(),
            });
        }
        self.open_named.len() >= self.window
    }

    /// Checkpoints a fork abandoned after their leaves were counted: orphans now.
    pub(super) fn abandon(&mut self, indexes: &[usize], report: &mut VerifyReport) {
        for i in indexes {
            if let Some(p) = self.recent.iter().position(|(j, _)| j == i) {
                let (_, leaves) = self.recent.remove(p).unwrap_or_default();
                report.passed -= leaves;
                report.notice(
                    "orphan",
                    format!("the {leaves} leaves of checkpoint #{i}, abandoned by a crash before its commit"),
                );
            }
        }
    }

    /// Reads what the open checkpoints name, checks their roots, classifies records that have
    /// waited a window.
    pub(super) async fn flush(
        &mut self,
        forks: &Forks,
        ended: &HashSet<String>,
        report: &mut VerifyReport,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), VerifyError> {
        // per partition, the highest offset named (and the lowest, where reading starts)
        let mut spans: BTreeMap<Part, (i64, i64)> = BTreeMap::new();
        for (t, p, o) in self.open_named.keys() {
            let s = spans.entry((t.clone(), *p)).or_insert((*o, *o));
            s.0 = s.0.min(*o);
            s.1 = s.1.max(*o);
        }
        for ((topic, partition), (low, high)) in spans {
            let start = match self
                .parts
                .get(&(topic.clone(), partition))
                .and_then(|s| s.read_upto)
            {
                Some(upto) => Some(upto),
                // the whole log: from the partition's start (records before any leaf count)
                None if self.whole => None,
                None => Some(low),
            };
            if start.is_none_or(|s| high >= s) {
                self.read_part(&topic, partition, start, Some(high + 1), progress)
                    .await?;
            }
        }
        let named = std::mem::take(&mut self.open_named);
        for ((t, p, o), pos) in named {
            let part = self.parts.entry((t.clone(), p)).or_default();
            match part.unnamed.remove(&o) {
                Some(u) => {
                    let live = !forks.abandoned.contains(&self.open[pos].index);
                    if let Some(src) = u.src.filter(|s| live && recovered(forks, s)) {
                        self.live_sources.insert(src);
                    }
                    self.open[pos].hashes.push(((t, p, o), u.hash));
                }
                None => report.finding(
                    "removed",
                    format!("{t}/{p}/{o} is named by a checkpoint and absent"),
                ),
            }
        }
        for c in std::mem::take(&mut self.open) {
            self.root(c, forks, report);
        }
        self.evict(forks, ended, report, false);
        Ok(())
    }

    /// The end: the rest of every output partition read (unless the range ends earlier), and
    /// every record still unnamed classified.
    pub(super) async fn finish(
        &mut self,
        forks: &Forks,
        ended: &HashSet<String>,
        writers_live: bool,
        report: &mut VerifyReport,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), VerifyError> {
        self.flush(forks, ended, report, progress).await?;
        self.writers_live = writers_live;
        if self.whole {
            for topic in self.topics.clone() {
                for partition in crate::kafka::partitions(self.consumer, &topic)? {
                    let from = self
                        .parts
                        .get(&(topic.clone(), partition))
                        .and_then(|s| s.read_upto);
                    self.read_part(&topic, partition, from, None, progress)
                        .await?;
                }
            }
        }
        self.evict(forks, ended, report, true);
        Ok(())
    }

    /// Reads `[from, to)` of one output partition (from its start / to its end when `None`):
    /// each record not named by a checkpoint out of range waits in `unnamed`.
    async fn read_part(
        &mut self,
        topic: &str,
        partition: i32,
        from: Option<i64>,
        to: Option<i64>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<(), VerifyError> {
        let opts = ReadOptions {
            partitions: vec![partition],
            from_offset: from,
            to_offset: to,
            ..ReadOptions::topic(topic)
        };
        let registry = self.is_registry(topic);
        let key = (topic.to_owned(), partition);
        if !crate::kafka::partitions(self.consumer, topic)?.contains(&partition) {
            // the topic or partition is gone: what the checkpoints name there is removed
            let part = self.parts.entry(key).or_default();
            part.read_upto = Some(
                part.read_upto
                    .unwrap_or(i64::MIN)
                    .max(to.unwrap_or(i64::MIN)),
            );
            return Ok(());
        }
        let mut reader = TopicReader::open(self.consumer, topic, Some(&opts)).await?;
        let part = self.parts.entry(key).or_default();
        let mut next = from.unwrap_or(i64::MIN);
        while let Some(m) = reader.next().await? {
            if m.partition() != partition || m.offset() < next {
                continue; // a record fetched for an earlier assignment
            }
            next = m.offset() + 1;
            self.read += 1;
            if self.read.is_multiple_of(1000) {
                progress(self.read, 0);
            }
            let at = (topic.to_owned(), partition, m.offset());
            if self.rejected.contains(&at) {
                continue; // reported as what it is
            }
            if part.named.contains(m.offset()) && !self.open_named.contains_key(&at) {
                continue; // named by a checkpoint out of range
            }
            let headers = crate::kafka::owned_headers(&m);
            let hs: Vec<(&str, Option<&[u8]>)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            let leaf =
                crate::auditor::leaf_of(topic, partition, m.offset(), m.key(), m.payload(), &hs);
            let src = headers
                .iter()
                .find(|(k, _)| k == crate::envelope::headers::names::SRC)
                .and_then(|(_, v)| v.as_deref())
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::to_owned);
            let writer = if registry {
                record_writer(m.payload())
            } else {
                None
            };
            part.unnamed.insert(
                m.offset(),
                Unnamed {
                    hash: leaf.hash,
                    src,
                    writer,
                    ts: m.timestamp().to_millis(),
                },
            );
        }
        part.read_upto = Some(
            part.read_upto
                .unwrap_or(i64::MIN)
                .max(next)
                .max(to.unwrap_or(i64::MIN)),
        );
        Ok(())
    }

    /// A checkpoint's leaves, read back, hashed to its root: live leaves pass, an abandoned
    /// checkpoint's are orphans, a root that differs is altered (a checkpoint missing leaves was
    /// reported removed).
    fn root(&mut self, mut c: Open, forks: &Forks, report: &mut VerifyReport) {
        if c.hashes.len() as u64 != c.leaves {
            return;
        }
        c.hashes.sort();
        let list: Vec<Hash> = c.hashes.iter().map(|(_, h)| *h).collect();
        if b64(&merkle::root(&list)) != c.root {
            let first = c
                .hashes
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
        } else if forks.abandoned.contains(&c.index) {
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
            self.recent.push_back((c.index, list.len() as u64));
            if self.recent.len() > RECENT {
                self.recent.pop_front();
            }
        }
    }

    /// Whether `topic` holds registry or key records (signed by their writer).
    fn is_registry(&self, topic: &str) -> bool {
        topic == self.config.kafka.registry_topic || topic == self.config.kafka.keks_topic
    }

    /// Classifies the records that waited a window (all of them at the end).
    fn evict(
        &mut self,
        forks: &Forks,
        ended: &HashSet<String>,
        report: &mut VerifyReport,
        all: bool,
    ) {
        let window = self.window as i64;
        let mut keys: Vec<Part> = self.parts.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let registry = self.is_registry(&key.0);
            let Some(part) = self.parts.get_mut(&key) else {
                continue;
            };
            let upto = part.read_upto.unwrap_or(i64::MIN);
            let old: Vec<i64> = match all {
                true => part.unnamed.keys().copied().collect(),
                false if registry => Vec::new(),
                false => part
                    .unnamed
                    .range(..upto.saturating_sub(window))
                    .map(|(o, _)| *o)
                    .collect(),
            };
            let gone: Vec<(i64, Unnamed)> = old
                .into_iter()
                .filter_map(|o| part.unnamed.remove(&o).map(|u| (o, u)))
                .collect();
            for (o, u) in gone {
                self.classify((&key.0, key.1, o), u, forks, ended, all, report);
            }
        }
    }

    /// One record no checkpoint named: an orphan when the live branch archived its source again
    /// after a crash, or a registry or key record of a writer that died before its checkpoint;
    /// pending at the end when it is recent and a writer is live; else injected.
    fn classify(
        &self,
        (t, p, o): (&str, i32, i64),
        u: Unnamed,
        forks: &Forks,
        ended: &HashSet<String>,
        all: bool,
        report: &mut VerifyReport,
    ) {
        let recent = u.ts.is_some_and(|ts| {
            ts >= self.started_ms - SETTLE_MS && ts <= self.started_ms + SETTLE_MS
        });
        let src = u.src.filter(|s| recovered(forks, s));
        if let Some(src) = src.as_ref().filter(|s| self.live_sources.contains(*s)) {
            report.notice(
                "orphan",
                format!("{t}/{p}/{o}: written for {src} by a writer that died before its checkpoint; the live branch archived {src} again"),
            );
        } else if all && recent && self.writers_live {
            report.notice(
                "pending",
                format!("{t}/{p}/{o}: written in the {} s before verify started while a writer was live; no checkpoint names it yet (verify again later)", SETTLE_MS / 1000),
            );
        } else if let Some(w) = u.writer.filter(|w| src.is_none() && !ended.contains(w)) {
            // a registry or key record that verifies (else it is rejected), signed by a writer
            // that died before a checkpoint named it
            report.notice(
                "orphan",
                format!("{t}/{p}/{o}: a record of writer {w}, which died before its checkpoint"),
            );
        } else {
            report.finding("injected", format!("{t}/{p}/{o} is named by no checkpoint"));
        }
    }
}

/// Whether a `byok.src` value names an input offset the live branch covered again after a
/// crash.
fn recovered(forks: &Forks, src: &str) -> bool {
    let mut it = src.rsplitn(3, '/');
    let parsed = (|| {
        let offset: i64 = it.next()?.parse().ok()?;
        let partition: i32 = it.next()?.parse().ok()?;
        Some((it.next()?, partition, offset))
    })();
    parsed.is_some_and(|(topic, partition, offset)| forks.recovered(topic, partition, offset))
}

/// The writer a registry or key record names.
fn record_writer(value: Option<&[u8]>) -> Option<String> {
    let j: serde_json::Value = serde_json::from_slice(value?).ok()?;
    j["writer"].as_str().map(str::to_owned)
}
