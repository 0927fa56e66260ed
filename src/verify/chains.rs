//! Chains per input partition (docs/audit-v1.md §3): ranges contiguous and linked in audit
//! order, restarts reported, and forks: a writer that died between a checkpoint and its commit
//! leaves checkpoints the next owner covers again from the same `from` and `prev`.

use std::collections::{BTreeMap, HashSet};

use super::VerifyReport;
use crate::audit::codec::{b64, unb64_32};
use crate::audit::merkle::{self, ChainStep, Hash};
use crate::audit::records::Checkpoint;

/// What the chains say about crashes, for coverage.
#[derive(Debug, Default)]
pub(super) struct Forks {
    /// Checkpoints (by index) abandoned by a writer that died before committing them: their
    /// outputs are orphans, not live leaves.
    pub(super) abandoned: HashSet<usize>,
    /// Per input partition, offset ranges the live branch covered again after a writer died
    /// (its in-flight outputs, named or not, are orphans there).
    pub(super) recovered: BTreeMap<(String, i32), Vec<(i64, i64)>>,
    /// Per input partition, the live chain's (`to`, `link`) in order (a witness is checked
    /// against it).
    pub(super) live: BTreeMap<(String, i32), Vec<(i64, Hash)>>,
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

/// Per input partition: ranges contiguous and linked, in audit order. A range that starts again
/// where an earlier one of the same partition started, with the same `prev`, after which only a
/// writer that never wrote `end` continued, is a fork (a crash between checkpoint and commit):
/// a notice; any other re-covered range is a rewind. `ended` are the writers that ended cleanly.
pub(super) fn chains(
    checkpoints: &[Checkpoint],
    ended: &HashSet<String>,
    report: &mut VerifyReport,
) -> Forks {
    let mut forks = Forks::default();
    let mut history: BTreeMap<(String, i32), Vec<Link>> = BTreeMap::new();
    // per partition, the live owner still covering what a dead writer had in flight
    let mut recovering: BTreeMap<(String, i32), String> = BTreeMap::new();
    for (i, c) in checkpoints.iter().enumerate() {
        let Ok(root) = unb64_32(&c.root, "root") else {
            report.finding(
                "chain break",
                format!("checkpoint {} seq {}: bad root", c.writer, c.seq),
            );
            continue;
        };
        for r in &c.ranges {
            let key = (r.topic.clone(), r.partition);
            let at = format!("{}/{} [{}, {})", r.topic, r.partition, r.from, r.to);
            let Ok(prev) = unb64_32(&r.prev, "prev") else {
                report.finding("chain break", at);
                continue;
            };
            let hist = history.entry(key.clone()).or_default();
            if let Some(h) = hist.last().cloned() {
                if r.from > h.to {
                    report.finding(
                        "range gap",
                        format!("{at}: previous range ended at {}", h.to),
                    );
                } else if r.from < h.to {
                    match fork_point(hist, r.from, &prev, &c.writer, ended) {
                        Some(p) => {
                            let dead = hist[p].writer.clone();
                            let lost: Vec<usize> = hist[p..].iter().map(|l| l.checkpoint).collect();
                            report.notice(
                                "fork",
                                format!("{at}: writer {dead} died after {} checkpoint(s) from offset {} it never committed; {} covered them again", lost.len(), r.from, c.writer),
                            );
                            forks.abandoned.extend(lost);
                            hist.truncate(p);
                            recovering.insert(key.clone(), c.writer.clone());
                            forks
                                .recovered
                                .entry(key.clone())
                                .or_default()
                                .push((r.from, h.to.max(r.to)));
                        }
                        None => report
                            .finding("rewind", format!("{at}: previous range ended at {}", h.to)),
                    }
                } else if r.restart.is_none() && prev != h.link {
                    report.finding("chain break", at.clone());
                } else if h.writer != c.writer && !ended.contains(&h.writer) {
                    // the partition changed hands after a writer that never ended: what it
                    // wrote after its last checkpoint is covered again from here
                    recovering.insert(key.clone(), c.writer.clone());
                    forks
                        .recovered
                        .entry(key.clone())
                        .or_default()
                        .push((r.from, r.to));
                } else if recovering.get(&key) == Some(&c.writer) {
                    // the dead writer had several batches in flight: the recovery lasts while
                    // the new owner keeps the partition
                    if let Some(last) = forks.recovered.get_mut(&key).and_then(|v| v.last_mut()) {
                        last.1 = last.1.max(r.to);
                    }
                } else {
                    recovering.remove(&key);
                }
            }
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
            hist.push(Link {
                from: r.from,
                to: r.to,
                prev,
                link,
                writer: c.writer.clone(),
                checkpoint: i,
            });
        }
    }
    forks.live = history
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().map(|l| (l.to, l.link)).collect()))
        .collect();
    forks
}

/// Where a range starting at `from` with `prev` forks a partition's history: the position of
/// the earlier range with the same start and `prev`, when everything from there on was written by
/// one other writer that never ended.
fn fork_point(
    hist: &[Link],
    from: i64,
    prev: &Hash,
    writer: &str,
    ended: &HashSet<String>,
) -> Option<usize> {
    let p = hist
        .iter()
        .rposition(|l| l.from == from && l.prev == *prev)?;
    let dead = &hist[p].writer;
    let one_writer = hist[p..].iter().all(|l| l.writer == *dead);
    (one_writer && dead != writer && !ended.contains(dead)).then_some(p)
}
