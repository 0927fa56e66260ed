//! Chains per input partition (docs/audit-v1.md §3): ranges contiguous and linked in audit
//! order, restarts reported, and forks: a writer that died between a checkpoint and its commit
//! leaves checkpoints the next owner covers again from the same `from` and `prev`.
//!
//! Streaming: checkpoints are fed in audit order; per partition only the last [`HISTORY`] links
//! are kept (a fork reaches back over a dead writer's batches in flight, never further).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::VerifyReport;
use crate::audit::codec::{b64, unb64_32};
use crate::audit::merkle::{self, ChainStep, Hash};
use crate::audit::records::{Checkpoint, Range};

/// How many links per input partition are kept to explain a fork.
const HISTORY: usize = 1024;

/// An input partition.
type Part = (String, i32);

/// What the chains say about crashes, for coverage.
#[derive(Debug, Default)]
pub(super) struct Forks {
    /// Checkpoints (by index) abandoned by a writer that died before committing them: their
    /// outputs are orphans, not live leaves.
    pub(super) abandoned: HashSet<usize>,
    /// Per input partition, offset ranges the live branch covered again after a writer died
    /// (its in-flight outputs, named or not, are orphans there).
    pub(super) recovered: BTreeMap<Part, Vec<(i64, i64)>>,
}

impl Forks {
    /// Whether `offset` of input `topic`/`partition` was covered again after a crash.
    pub(super) fn recovered(&self, topic: &str, partition: i32, offset: i64) -> bool {
        self.recovered
            .get(&(topic.to_owned(), partition))
            .is_some_and(|v| v.iter().any(|(from, to)| offset >= *from && offset < *to))
    }
}

/// One range of a partition's chain as read.
#[derive(Debug, Clone)]
struct Link {
    from: i64,
    to: i64,
    prev: Hash,
    link: Hash,
    writer: String,
    checkpoint: usize,
}

/// The chains of every input partition, fed one checkpoint at a time.
#[derive(Debug, Default)]
pub(super) struct Chains {
    pub(super) forks: Forks,
    history: BTreeMap<Part, VecDeque<Link>>,
    /// per partition, the live owner still covering what a dead writer had in flight
    recovering: BTreeMap<Part, String>,
    /// (`to`, `link`) a witness states, per partition; those now on the live chain
    wanted: HashMap<(Part, i64), Hash>,
    witnessed_live: HashSet<(Part, i64)>,
}

impl Chains {
    /// Chains that also watch for the (partition, `to`, `link`) a witness states.
    pub(super) fn watching(wanted: HashMap<(Part, i64), Hash>) -> Self {
        Self {
            wanted,
            ..Self::default()
        }
    }

    /// Whether a witnessed (`to`, `link`) of a partition is on its live chain.
    pub(super) fn witnessed_live(&self, part: &Part, to: i64) -> bool {
        self.witnessed_live.contains(&(part.clone(), to))
    }

    /// Where a partition's live chain ends.
    pub(super) fn end(&self, part: &Part) -> Option<i64> {
        self.history.get(part).and_then(|h| h.back()).map(|l| l.to)
    }

    /// Checkpoint `i` in audit order: its ranges contiguous and linked. A range that starts again
    /// where an earlier one of the same partition started, with the same `prev`, after which only
    /// a writer that never wrote `end` (so far) continued, is a fork (a crash between checkpoint
    /// and commit): a notice; any other re-covered range is a rewind. Returns the checkpoints
    /// this one abandoned.
    pub(super) fn step(
        &mut self,
        i: usize,
        c: &Checkpoint,
        ended: &HashSet<String>,
        report: &mut VerifyReport,
    ) -> Vec<usize> {
        let Ok(root) = unb64_32(&c.root, "root") else {
            report.finding(
                "chain break",
                format!("checkpoint {} seq {}: bad root", c.writer, c.seq),
            );
            return Vec::new();
        };
        let mut abandoned = Vec::new();
        for r in &c.ranges {
            let at = format!("{}/{} [{}, {})", r.topic, r.partition, r.from, r.to);
            let Ok(prev) = unb64_32(&r.prev, "prev") else {
                report.finding("chain break", at);
                continue;
            };
            self.follow(i, c, r, &prev, ended, &at, &mut abandoned, report);
            if let Some(why) = &r.restart {
                report.notice("restart", format!("{at}: {why}"));
            }
            let link = merkle::link(&ChainStep {
                prev: &prev,
                topic: &r.topic,
                partition: r.partition,
                from: r.from,
                to: r.to,
                n: r.n,
                root: &root,
            });
            if b64(&link) != r.link {
                report.finding("chain break", format!("{at}: link does not recompute"));
            }
            let key = (r.topic.clone(), r.partition);
            if self.wanted.get(&(key.clone(), r.to)) == Some(&link) {
                self.witnessed_live.insert((key.clone(), r.to));
            }
            let hist = self.history.entry(key).or_default();
            hist.push_back(Link {
                from: r.from,
                to: r.to,
                prev,
                link,
                writer: c.writer.clone(),
                checkpoint: i,
            });
            if hist.len() > HISTORY {
                hist.pop_front();
            }
        }
        abandoned
    }

    /// How range `r` of checkpoint `i` continues its partition's chain: contiguous and linked,
    /// a gap, a fork after a crash (the abandoned checkpoints go to `abandoned`), a rewind, or a
    /// hand-over after a writer that did not end.
    #[allow(clippy::too_many_arguments)]
    fn follow(
        &mut self,
        i: usize,
        c: &Checkpoint,
        r: &Range,
        prev: &Hash,
        ended: &HashSet<String>,
        at: &str,
        abandoned: &mut Vec<usize>,
        report: &mut VerifyReport,
    ) {
        let key = (r.topic.clone(), r.partition);
        let Some(h) = self.history.get(&key).and_then(|h| h.back()).cloned() else {
            return;
        };
        if r.from > h.to {
            report.finding(
                "range gap",
                format!("{at}: previous range ended at {}", h.to),
            );
        } else if r.from < h.to {
            let hist = self.history.entry(key.clone()).or_default();
            match fork_point(hist, r.from, prev, &c.writer, ended) {
                Some(p) => {
                    let dead = hist[p].writer.clone();
                    let lost: Vec<Link> = hist.drain(p..).collect();
                    report.notice(
                        "fork",
                        format!("{at}: writer {dead} died after {} checkpoint(s) from offset {} it never committed; {} covered them again", lost.len(), r.from, c.writer),
                    );
                    for l in &lost {
                        self.witnessed_live.remove(&(key.clone(), l.to));
                        if l.checkpoint != i {
                            abandoned.push(l.checkpoint);
                        }
                    }
                    self.forks.abandoned.extend(abandoned.iter().copied());
                    self.recovering.insert(key.clone(), c.writer.clone());
                    self.forks
                        .recovered
                        .entry(key)
                        .or_default()
                        .push((r.from, h.to.max(r.to)));
                }
                None => report.finding("rewind", format!("{at}: previous range ended at {}", h.to)),
            }
        } else if r.restart.is_none() && *prev != h.link {
            report.finding("chain break", at.to_owned());
        } else if h.writer != c.writer && !ended.contains(&h.writer) {
            // the partition changed hands after a writer that had not ended: what it wrote
            // after its last checkpoint is covered again from here
            self.recovering.insert(key.clone(), c.writer.clone());
            self.forks
                .recovered
                .entry(key)
                .or_default()
                .push((r.from, r.to));
        } else if self.recovering.get(&key) == Some(&c.writer) {
            // the dead writer had several batches in flight: the recovery lasts while the new
            // owner keeps the partition
            if let Some(last) = self
                .forks
                .recovered
                .get_mut(&key)
                .and_then(|v| v.last_mut())
            {
                last.1 = last.1.max(r.to);
            }
        } else {
            self.recovering.remove(&key);
        }
    }
}

/// Where a range starting at `from` with `prev` forks a partition's history: the position of
/// the earlier range with the same start and `prev`, when everything from there on was written by
/// one other writer that had not ended.
fn fork_point(
    hist: &VecDeque<Link>,
    from: i64,
    prev: &Hash,
    writer: &str,
    ended: &HashSet<String>,
) -> Option<usize> {
    let p = hist
        .iter()
        .rposition(|l| l.from == from && l.prev == *prev)?;
    let dead = &hist[p].writer;
    let one_writer = hist.iter().skip(p).all(|l| l.writer == *dead);
    (one_writer && dead != writer && !ended.contains(dead)).then_some(p)
}
