//! The producing side: output records handed to the idempotent producer, the batches in flight
//! (at-least-once: several, committed oldest first once acknowledged), and the exactly-once
//! path (one transaction per batch: outputs, registry records and offsets together).
//!
//! This module must never commit an offset before every record produced from the records before
//! it was acknowledged, and never commit a partition that is no longer assigned (its new owner
//! has it).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use super::health::Health;
use super::refusal::{Refusal, Refusals};
use super::source::{OffsetTracker, Offsets, SourceContext, TrackerPoisoned, holds};
use super::stage::Out;
use crate::audit::records::Leaf;
use crate::auditor::{Auditor, BatchRange};

/// Producing or committing failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// A record was not acknowledged (the batch is not committed; it is redelivered).
    #[error("produce to {topic} failed: {source}; the batch's offsets were not committed")]
    Produce {
        /// Topic.
        topic: String,
        /// Cause.
        source: KafkaError,
    },
    /// A record of the transaction was refused for good: the transaction is aborted, and the
    /// retry sends that record to the quarantine.
    #[error("a record was refused for good; the transaction is retried with it quarantined")]
    Refused,
    /// A step of a transaction failed (the transaction is aborted and the batch retried).
    #[error("transaction {step} failed: {source}")]
    Transaction {
        /// begin, send offsets, commit.
        step: &'static str,
        /// Cause.
        source: KafkaError,
    },
    /// The consumer has no group metadata (it left its group): the transaction cannot carry
    /// the offsets.
    #[error("no consumer group metadata for the transaction (the consumer is not in its group)")]
    NoGroupMetadata,
    /// A produce task ended without an answer.
    #[error("a produce task ended: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The stop's drain deadline passed with records unacknowledged.
    #[error(
        "drain deadline passed before the broker acknowledged {batches} batch(es); exiting without committing them (they are redelivered)"
    )]
    DrainDeadline {
        /// Batches not acknowledged.
        batches: usize,
    },
    /// The offset bookkeeping cannot be trusted.
    #[error(transparent)]
    Tracker(#[from] TrackerPoisoned),
    /// The batch's checkpoint was not written (its offsets are not committed).
    #[error("audit log: {0}; the batch's offsets were not committed")]
    Audit(#[from] crate::auditor::AuditorError),
}

/// Commit metadata per input partition (the chain link of the batch's checkpoint).
pub type CommitMetadata = std::collections::BTreeMap<(String, i32), String>;

/// How [`produce_all`] treats a transient refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnTransient {
    /// Send the refused records again with a bounded backoff until they are acknowledged
    /// (at-least-once: nothing is committed meanwhile).
    Retry,
    /// Fail at once (exactly-once: the transaction is aborted and the batch sealed again).
    Fail,
}

/// Longest wait between two attempts at records the broker refused for now.
pub const MAX_PRODUCE_BACKOFF: Duration = Duration::from_secs(10);

/// Produces `outs` and waits for every acknowledgement. A record refused for good (too large,
/// topic missing, not authorized) goes to the quarantine instead ([`Refusals`]); a transient
/// refusal is retried with a bounded backoff, shown in `/health` and
/// `byok_produce_retries_total` ([`OnTransient::Retry`]), or fails the whole
/// ([`OnTransient::Fail`], after remembering the permanent refusals for the retry).
pub async fn produce_all(
    producer: &FutureProducer,
    outs: &[Out],
    refusals: &Refusals,
    on_transient: OnTransient,
    health: &Health,
    audit: bool,
) -> Result<Vec<Leaf>, SinkError> {
    let mut replacements = Vec::new();
    let to = Attempt {
        producer,
        refusals,
        on_transient,
        health,
        leaves: audit.then(|| std::sync::Mutex::new(Vec::new())),
    };
    let refused = to
        .send_all(outs.iter().collect(), Some(&mut replacements))
        .await?;
    match on_transient {
        // the transaction holds a failed record: it is aborted and retried, and the retry
        // sends the refused records to the quarantine (`Refusals::rewrite`)
        OnTransient::Fail if refused => return Err(SinkError::Refused),
        OnTransient::Fail => {}
        OnTransient::Retry => {
            to.send_all(replacements.iter().collect(), None).await?;
        }
    }
    Ok(to
        .leaves
        .map(|l| {
            l.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        })
        .unwrap_or_default())
}

/// One [`produce_all`]'s settings.
struct Attempt<'a> {
    producer: &'a FutureProducer,
    refusals: &'a Refusals,
    on_transient: OnTransient,
    health: &'a Health,
    /// The leaves of the records acknowledged, when the audit log is written.
    leaves: Option<std::sync::Mutex<Vec<Leaf>>>,
}

impl Attempt<'_> {
    /// Sends `todo` until every record is acknowledged, or refused for good and (when
    /// `redirect` is given) redirected; returns whether any was refused for good.
    async fn send_all(
        &self,
        mut todo: Vec<&Out>,
        mut redirect: Option<&mut Vec<Out>>,
    ) -> Result<bool, SinkError> {
        let (mut refused, mut retrying) = (false, false);
        let mut backoff = Duration::from_millis(100);
        let ended = loop {
            let sends = todo.iter().map(|o| send(self.producer, o));
            let results = futures::future::join_all(sends).await;
            let mut again = Vec::new();
            let mut last = None;
            for (r, o) in results.into_iter().zip(todo) {
                let e = match r {
                    Ok((partition, offset)) => {
                        if let Some(l) = &self.leaves {
                            crate::lock(l).push(leaf(o, partition, offset));
                        }
                        continue;
                    }
                    Err(e) => e,
                };
                match Refusal::classify(&e) {
                    Some(refusal)
                        if redirect.is_some() && self.refusals.redirectable(o, refusal) =>
                    {
                        refused = true;
                        if self.on_transient == OnTransient::Fail || refusal != Refusal::TooLarge {
                            self.refusals.learn(o, refusal);
                        }
                        if let Some(to) = redirect.as_mut()
                            && self.on_transient == OnTransient::Retry
                        {
                            to.push(self.refusals.replacement(o, refusal));
                        }
                    }
                    _ => {
                        again.push(o);
                        last = Some((o.topic.to_string(), e));
                    }
                }
            }
            let Some((topic, source)) = last else {
                break Ok(refused);
            };
            if self.on_transient == OnTransient::Fail {
                break Err(SinkError::Produce { topic, source });
            }
            if !retrying {
                retrying = true;
                self.health.add_backing_off(1);
            }
            ::metrics::counter!("byok_produce_retries_total").increment(again.len() as u64);
            tracing::warn!(%topic, error = %source, records = again.len(), retry_in_ms = backoff.as_millis() as u64, "records refused by the broker for now; retrying (nothing is committed meanwhile)");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_PRODUCE_BACKOFF);
            todo = again;
        };
        if retrying {
            self.health.add_backing_off(-1);
        }
        ended
    }
}

/// The audit leaf of `o` as delivered.
fn leaf(o: &Out, partition: i32, offset: i64) -> Leaf {
    let headers: Vec<(&str, Option<&[u8]>)> = o
        .headers
        .iter()
        .map(|(k, v)| (*k, Some(v.as_ref())))
        .collect();
    crate::audit::leaves::leaf_of(
        &o.topic,
        partition,
        offset,
        o.key.as_deref(),
        Some(&o.value),
        &headers,
    )
}

/// Hands one record to the producer; where it was written.
async fn send(producer: &FutureProducer, o: &Out) -> Result<(i32, i64), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
    for (k, v) in &o.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_ref()),
        });
    }
    let mut rec = FutureRecord::to(&o.topic)
        .payload(&o.value)
        .headers(headers);
    if let Some(k) = &o.key {
        rec = rec.key(k);
    }
    producer
        .send(rec, Timeout::Never)
        .await
        .map(|d| (d.partition, d.offset))
        .map_err(|(e, _)| e)
}

/// A batch produced and not yet settled.
struct InFlight {
    done: tokio::task::JoinHandle<Result<CommitMetadata, SinkError>>,
    /// The task's answer, once seen (kept here so that waiting for it can be cancelled).
    answer: Option<Result<Result<CommitMetadata, SinkError>, tokio::task::JoinError>>,
    seq: u64,
    next: Offsets,
    records: usize,
    started: Instant,
}

/// The producer and the batches in flight.
#[allow(missing_debug_implementations)] // the producer has no Debug
pub struct Sink {
    producer: FutureProducer,
    tracker: Arc<OffsetTracker>,
    health: Arc<Health>,
    in_flight: VecDeque<InFlight>,
    max_in_flight: usize,
    refusals: Arc<Refusals>,
    /// The audit writer, when the audit log is written.
    auditor: Option<Arc<Auditor>>,
    /// Resolves when the previous batch's checkpoint is written (checkpoints go in batch order).
    previous: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Sink {
    /// Writes a checkpoint for each batch before its offsets are committed.
    pub fn with_auditor(mut self, auditor: Option<Arc<Auditor>>) -> Self {
        self.auditor = auditor;
        self
    }

    /// A sink of at most `max_in_flight` batches in flight; records refused for good go where
    /// `refusals` says.
    pub fn new(
        producer: FutureProducer,
        tracker: Arc<OffsetTracker>,
        health: Arc<Health>,
        max_in_flight: usize,
        refusals: Arc<Refusals>,
    ) -> Self {
        Self {
            producer,
            tracker,
            health,
            in_flight: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
            refusals,
            auditor: None,
            previous: None,
        }
    }

    /// Records quarantined because the broker refused them for good, by reason.
    pub fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// Records in the batches in flight.
    pub fn records_in_flight(&self) -> usize {
        self.in_flight.iter().map(|f| f.records).sum()
    }

    /// As many batches in flight as allowed.
    pub fn full(&self) -> bool {
        self.in_flight.len() >= self.max_in_flight
    }

    /// Hands a sealed batch to the producer (at-least-once); its offsets are committed once it
    /// and every batch before it are acknowledged.
    pub fn send(
        &mut self,
        outs: Vec<Out>,
        next: Offsets,
        ranges: Vec<BatchRange>,
        started: Instant,
    ) -> Result<(), SinkError> {
        let records = ranges.iter().map(|r| r.n as usize).sum();
        let seq = self.tracker.start(next.clone())?;
        let (producer, tracker) = (self.producer.clone(), Arc::clone(&self.tracker));
        let (refusals, health) = (Arc::clone(&self.refusals), Arc::clone(&self.health));
        let auditor = self.auditor.clone();
        let outs = refusals.rewrite(outs);
        // checkpoints are written in batch order: each waits for the one before
        let (written, previous) = match &auditor {
            Some(_) => {
                let (written, next_waits) = tokio::sync::oneshot::channel::<()>();
                (Some(written), self.previous.replace(next_waits))
            }
            None => (None, None),
        };
        let done = tokio::spawn(async move {
            let mut written = written;
            let audit = auditor.is_some();
            let r = produce_all(
                &producer,
                &outs,
                &refusals,
                OnTransient::Retry,
                &health,
                audit,
            )
            .await;
            if let Some(p) = previous {
                let _ = p.await;
            }
            let r = match (r, auditor) {
                (Ok(leaves), Some(a)) => {
                    super::failpoint::hit("before-checkpoint");
                    match a.checkpoint_start(leaves, &ranges).await {
                        Ok(pending) => {
                            // the next batch's checkpoint follows it into the producer now
                            drop(written.take());
                            let meta = pending.written().await.map_err(Into::into);
                            super::failpoint::hit("after-checkpoint");
                            meta
                        }
                        Err(e) => Err(e.into()),
                    }
                }
                (Ok(_), None) => Ok(CommitMetadata::new()),
                (Err(e), _) => Err(e),
            };
            drop(written);
            // "acknowledged" for the tracker (and the rebalance's commit) means checkpointed too
            tracker.finish(seq, r.is_ok())?;
            r
        });
        self.in_flight.push_back(InFlight {
            done,
            answer: None,
            seq,
            next,
            records,
            started,
        });
        Ok(())
    }

    /// Resolves when the oldest batch in flight has its answer (never when none is in flight).
    /// Cancel-safe: the answer is kept.
    pub async fn wait_oldest(&mut self) {
        match self.in_flight.front_mut() {
            Some(f) if f.answer.is_none() => {
                let r = (&mut f.done).await;
                f.answer = Some(r);
            }
            Some(_) => {}
            None => std::future::pending().await,
        }
    }

    /// Commits the batches at the front that have their answer, oldest first.
    pub async fn settle_ready(
        &mut self,
        consumer: &StreamConsumer<SourceContext>,
        stopping: bool,
    ) -> Result<(), SinkError> {
        while let Some(f) = self.in_flight.front_mut() {
            if f.answer.is_none() {
                if !f.done.is_finished() {
                    break;
                }
                let r = (&mut f.done).await;
                f.answer = Some(r);
            }
            if let Some(f) = self.in_flight.pop_front() {
                self.settle(f, consumer, stopping)?;
            }
        }
        Ok(())
    }

    /// After a stop request: every batch in flight gets `deadline` to be acknowledged and is
    /// committed; past it the worker exits without committing them (they are redelivered).
    pub async fn drain(
        &mut self,
        consumer: &StreamConsumer<SourceContext>,
        deadline: Duration,
    ) -> Result<(), SinkError> {
        let waited = tokio::time::timeout(deadline, async {
            while !self.in_flight.is_empty() {
                self.wait_oldest().await;
                self.settle_ready(consumer, true).await?;
            }
            Ok::<_, SinkError>(())
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => Err(SinkError::DrainDeadline {
                batches: self.in_flight.len(),
            }),
        }
    }

    fn settle(
        &mut self,
        f: InFlight,
        consumer: &StreamConsumer<SourceContext>,
        stopping: bool,
    ) -> Result<(), SinkError> {
        let meta = match f.answer {
            Some(answer) => answer??,
            None => CommitMetadata::new(),
        };
        // only partitions still assigned: a revoked one was committed by the rebalance, and a
        // late commit here could move its new owner's offset back
        let assigned = consumer.assignment().unwrap_or_default();
        let commit = f.next.filtered(|t, p| holds(&assigned, t, p));
        self.tracker.settle(f.seq, &commit)?;
        if !commit.is_empty() {
            let mode = if stopping {
                CommitMode::Sync
            } else {
                CommitMode::Async
            };
            if let Err(e) = consumer.commit(&commit.to_list_with(&meta), mode) {
                // Not fatal: the records are archived; another member may own the partition.
                tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (same byok.src)");
            }
        }
        super::metrics::batch_done(&self.health, f.records, f.started);
        Ok(())
    }

    /// Exactly-once: produces `outs` in the open transaction, then sends the batch's offsets of
    /// partitions still assigned and commits. After a stop request the batch gets
    /// `drain_deadline` to be acknowledged.
    pub async fn commit_transaction(
        &self,
        outs: Vec<Out>,
        next: &Offsets,
        ranges: &[BatchRange],
        consumer: &StreamConsumer<SourceContext>,
        shutdown: watch::Receiver<bool>,
        drain_deadline: Duration,
    ) -> Result<(), SinkError> {
        let outs = self.refusals.rewrite(outs);
        let snapshot = match &self.auditor {
            Some(a) => Some(a.snapshot().await),
            None => None,
        };
        let r = self
            .transact(outs, next, ranges, consumer, shutdown, drain_deadline)
            .await;
        if r.is_err()
            && let (Some(a), Some(s)) = (&self.auditor, snapshot)
        {
            a.restore(s).await;
        }
        r
    }

    async fn transact(
        &self,
        outs: Vec<Out>,
        next: &Offsets,
        ranges: &[BatchRange],
        consumer: &StreamConsumer<SourceContext>,
        shutdown: watch::Receiver<bool>,
        drain_deadline: Duration,
    ) -> Result<(), SinkError> {
        let produced = async {
            let leaves = produce_all(
                &self.producer,
                &outs,
                &self.refusals,
                OnTransient::Fail,
                &self.health,
                self.auditor.is_some(),
            )
            .await?;
            // the checkpoint goes in the same transaction, before the offsets
            match &self.auditor {
                Some(a) => Ok::<_, SinkError>(a.checkpoint(leaves, ranges).await?),
                None => Ok(CommitMetadata::new()),
            }
        };
        let meta = tokio::select! {
            r = produced => r?,
            _ = after_stop(shutdown, drain_deadline) => {
                return Err(SinkError::DrainDeadline { batches: 1 });
            }
        };
        let group = consumer
            .group_metadata()
            .ok_or(SinkError::NoGroupMetadata)?;
        let assigned = consumer.assignment().unwrap_or_default();
        let commit = next.filtered(|t, p| holds(&assigned, t, p));
        let t = Timeout::After(Duration::from_secs(60));
        self.producer
            .send_offsets_to_transaction(&commit.to_list_with(&meta), &group, t)
            .map_err(|source| SinkError::Transaction {
                step: "send offsets",
                source,
            })?;
        self.producer
            .commit_transaction(t)
            .map_err(|source| SinkError::Transaction {
                step: "commit",
                source,
            })?;
        self.refusals.settled(&outs);
        Ok(())
    }

    /// Opens a transaction (exactly-once).
    pub fn begin_transaction(&self) -> Result<(), SinkError> {
        self.producer
            .begin_transaction()
            .map_err(|source| SinkError::Transaction {
                step: "begin",
                source,
            })
    }

    /// Aborts the open transaction (exactly-once).
    pub fn abort_transaction(&self) {
        if let Err(e) = self
            .producer
            .abort_transaction(Timeout::After(Duration::from_secs(60)))
        {
            tracing::warn!(error = %e, "aborting the transaction failed");
        }
    }

    /// Writes the audit log's `end` record (a clean exit: nothing signed later by this session
    /// is genuine).
    pub async fn end_audit(&self) {
        if let Some(a) = &self.auditor
            && let Err(e) = a.end().await
        {
            tracing::warn!(error = %e, "the audit log's end record was not written");
        }
    }

    /// Flushes the producer (at the end of a run).
    pub fn flush(&self, deadline: Duration) {
        let _ = self.producer.flush(Timeout::After(deadline));
    }
}

/// Resolves `deadline` after a stop is requested (never if none is).
async fn after_stop(mut shutdown: watch::Receiver<bool>, deadline: Duration) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tokio::time::sleep(deadline).await;
}
