//! The consuming side of the pipeline: the consumer's context (logs, lag, rebalances), batch
//! collection, the partitions paused while a tenant waits for its vault, and the offset tracker
//! that decides what may be committed.
//!
//! The rule it keeps: an offset is committed only once every record produced from the records
//! before it was acknowledged, batch after batch in order; a partition revoked in a rebalance
//! commits what was acknowledged before it moves. This module must never commit an offset past a
//! batch that is in flight or failed, and never seal or produce anything itself.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

use super::health::Health;
use crate::config::Config;

/// A partition of a topic.
pub type Partition = (String, i32);

/// The next offset to commit, per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(pub BTreeMap<Partition, i64>);

impl Offsets {
    /// The commit points of a batch: per partition, one past its last record.
    pub fn of_batch(batch: &[OwnedMessage]) -> Self {
        let mut next: BTreeMap<Partition, i64> = BTreeMap::new();
        for m in batch {
            let e = next
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        Offsets(next)
    }

    /// The same offsets as a list for the client.
    pub fn to_list(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in &self.0 {
            // cannot fail for an offset (only for an invalid partition list element)
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        tpl
    }

    /// The same offsets as a list, each with its commit metadata when it has one.
    pub fn to_list_with(
        &self,
        meta: &std::collections::BTreeMap<Partition, String>,
    ) -> TopicPartitionList {
        let tpl = self.to_list();
        for ((t, p), m) in meta {
            if let Some(mut e) = tpl.find_partition(t, *p) {
                e.set_metadata(m.as_str());
            }
        }
        tpl
    }

    /// Only the partitions `keep` accepts.
    pub fn filtered(&self, keep: impl Fn(&str, i32) -> bool) -> Self {
        Offsets(
            self.0
                .iter()
                .filter(|((t, p), _)| keep(t, *p))
                .map(|(k, o)| (k.clone(), *o))
                .collect(),
        )
    }

    /// Takes the larger offset of each partition of `other`.
    fn merge_max(&mut self, other: &Offsets) {
        for (k, o) in &other.0 {
            let e = self.0.entry(k.clone()).or_insert(*o);
            *e = (*e).max(*o);
        }
    }

    /// No partition.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Seeks each partition of `batch` that is still assigned back to its first record in the
/// batch, so that its records are read again; false when a seek failed (the caller then keeps
/// the batch: nothing is skipped).
pub fn rewind(consumer: &StreamConsumer<SourceContext>, batch: &[OwnedMessage]) -> bool {
    let mut first: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = first
            .entry((m.topic(), m.partition()))
            .or_insert(m.offset());
        *e = (*e).min(m.offset());
    }
    let assigned = consumer.assignment().unwrap_or_default();
    for ((t, p), offset) in first {
        if !holds(&assigned, t, p) {
            continue;
        }
        if let Err(e) = consumer.seek(t, p, Offset::Offset(offset), Duration::from_secs(5)) {
            tracing::warn!(topic = t, partition = p, offset, error = %e, "cannot seek back to a batch given back; it is retried as it is");
            return false;
        }
    }
    true
}

/// Whether `list` holds partition `p` of `topic`.
pub fn holds(list: &TopicPartitionList, topic: &str, p: i32) -> bool {
    list.elements()
        .iter()
        .any(|e| e.topic() == topic && e.partition() == p)
}

/// Where a batch handed to the producer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    /// Produced, not every record acknowledged yet.
    InFlight,
    /// Every record acknowledged by the broker.
    Acked,
    /// A record was refused: nothing from this batch on may be committed.
    Failed,
}

/// The offset tracker's lock was poisoned by a panic elsewhere: its bookkeeping can no longer be
/// trusted, so the worker stops without committing (the records are redelivered).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error(
    "the offset tracker's lock was poisoned by a panic; stopping without committing (the records are redelivered to the next owner)"
)]
pub struct TrackerPoisoned;

#[derive(Debug)]
struct Tracked {
    seq: u64,
    next: Offsets,
    status: BatchStatus,
}

#[derive(Debug, Default)]
struct TrackerState {
    /// Batches produced and not yet settled by the loop, oldest first.
    batches: VecDeque<Tracked>,
    /// Acknowledged and handed to an asynchronous commit, not yet known committed.
    acked: HashMap<Partition, i64>,
    next_seq: u64,
}

/// The batches in flight and the offsets acknowledged, shared by the batch loop, the produce
/// tasks (which report acknowledgements) and the rebalance callback (which commits what a revoked
/// partition had acknowledged before it moves).
#[derive(Debug, Default)]
pub struct OffsetTracker {
    state: Mutex<TrackerState>,
    changed: Condvar,
}

impl OffsetTracker {
    fn lock(&self) -> Result<MutexGuard<'_, TrackerState>, TrackerPoisoned> {
        self.state.lock().map_err(|_| TrackerPoisoned)
    }

    /// Registers a batch handed to the producer; returns its sequence number.
    pub fn start(&self, next: Offsets) -> Result<u64, TrackerPoisoned> {
        let mut s = self.lock()?;
        s.next_seq += 1;
        let seq = s.next_seq;
        s.batches.push_back(Tracked {
            seq,
            next,
            status: BatchStatus::InFlight,
        });
        Ok(seq)
    }

    /// The producer's verdict on batch `seq` (called by its produce task).
    pub fn finish(&self, seq: u64, acked: bool) -> Result<(), TrackerPoisoned> {
        let mut s = self.lock()?;
        if let Some(b) = s.batches.iter_mut().find(|b| b.seq == seq) {
            b.status = if acked {
                BatchStatus::Acked
            } else {
                BatchStatus::Failed
            };
        }
        drop(s);
        self.changed.notify_all();
        Ok(())
    }

    /// The status of batch `seq` (`None` once settled).
    pub fn status(&self, seq: u64) -> Result<Option<BatchStatus>, TrackerPoisoned> {
        Ok(self
            .lock()?
            .batches
            .iter()
            .find(|b| b.seq == seq)
            .map(|b| b.status))
    }

    /// The loop settles batch `seq` (oldest first): it leaves the tracker, and `commit`, its
    /// offsets of partitions still assigned, are remembered until the commit is confirmed.
    pub fn settle(&self, seq: u64, commit: &Offsets) -> Result<(), TrackerPoisoned> {
        let mut s = self.lock()?;
        s.batches.retain(|b| b.seq != seq);
        for (k, o) in &commit.0 {
            s.acked.insert(k.clone(), *o);
        }
        Ok(())
    }

    /// A commit was confirmed: forgets what it covered.
    pub fn committed(&self, list: &TopicPartitionList) -> Result<(), TrackerPoisoned> {
        let mut s = self.lock()?;
        for e in list.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let (Some(&o), Offset::Offset(c)) = (s.acked.get(&key), e.offset())
                && o <= c
            {
                s.acked.remove(&key);
            }
        }
        Ok(())
    }

    /// Whether a batch is in flight.
    pub fn any_in_flight(&self) -> Result<bool, TrackerPoisoned> {
        Ok(self
            .lock()?
            .batches
            .iter()
            .any(|b| b.status == BatchStatus::InFlight))
    }

    /// Waits up to `wait` for every batch in flight to be acknowledged or failed.
    pub fn wait_settled(&self, wait: Duration) -> Result<(), TrackerPoisoned> {
        let deadline = Instant::now() + wait;
        let mut s = self.lock()?;
        while s.batches.iter().any(|b| b.status == BatchStatus::InFlight) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .map_err(|_| TrackerPoisoned)?
                .0;
        }
        Ok(())
    }

    /// What may be committed for the `revoked` partitions: what was acknowledged and settled,
    /// then the batches in flight in order up to the first one not acknowledged (a later batch
    /// never commits past an earlier one that failed). Taken out of the tracker.
    pub fn take_revoked(&self, revoked: &TopicPartitionList) -> Result<Offsets, TrackerPoisoned> {
        let mut s = self.lock()?;
        let mut commit = Offsets::default();
        s.acked.retain(|(t, p), o| {
            if holds(revoked, t, *p) {
                commit.0.insert((t.clone(), *p), *o);
                false
            } else {
                true
            }
        });
        for b in &s.batches {
            if b.status != BatchStatus::Acked {
                break;
            }
            commit.merge_max(&b.next.filtered(|t, p| holds(revoked, t, p)));
        }
        Ok(commit)
    }
}

/// The consumer's context: logs through tracing, publishes membership and lag to [`Health`],
/// exports consumer lag from librdkafka's statistics, and on a revocation commits what was
/// acknowledged for the revoked partitions before they move.
#[allow(missing_debug_implementations)] // the producer has no Debug
pub struct SourceContext {
    pub(crate) health: Arc<Health>,
    pub(crate) tracker: Arc<OffsetTracker>,
    /// Flushed on a revocation so that batches in flight are acknowledged first.
    pub(crate) producer: FutureProducer,
    /// How long a revocation may wait for batches in flight.
    pub(crate) drain_deadline: Duration,
    /// Offsets are committed in transactions (exactly-once), not by the consumer.
    pub(crate) transactional: bool,
    /// Partitions paused (their lag is a wait, not a stall), shared with [`Paused`].
    pub(crate) paused: Arc<Mutex<BTreeSet<Partition>>>,
    /// The audit writer: a revocation commits with its chain links and forgets the heads.
    pub(crate) auditor: Option<Arc<crate::auditor::Auditor>>,
}

impl SourceContext {
    /// The offsets to commit for `revoked` partitions, once the batches in flight were given the
    /// drain deadline to be acknowledged.
    fn drain_revoked(&self, revoked: &TopicPartitionList) -> Result<Offsets, TrackerPoisoned> {
        if self.tracker.any_in_flight()? {
            // the delivery reports reach the produce tasks on the runtime's other threads
            let _ = self.producer.flush(Timeout::After(self.drain_deadline));
            self.tracker.wait_settled(Duration::from_secs(5))?;
        }
        self.tracker.take_revoked(revoked)
    }
}

impl rdkafka::ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", fac, "{log_message}"),
            _ => tracing::debug!(target: "librdkafka", fac, "{log_message}"),
        }
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        // a set of partitions: a poisoned lock still holds the last whole set
        let paused = self
            .paused
            .lock()
            .map_or_else(|p| p.into_inner().clone(), |p| p.clone());
        let (mut total, mut waiting) = (0i64, 0i64);
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // "-1" is librdkafka's internal unassigned partition; `desired` marks the ones
                // this member consumes
                let Some(lag) = records_behind(p).filter(|_| *id >= 0 && p.desired) else {
                    continue;
                };
                total += lag;
                if !paused.contains(&(topic.clone(), *id)) {
                    waiting += lag;
                }
                metrics::gauge!("byok_consumer_lag_records", "topic" => topic.clone(), "partition" => id.to_string())
                    .set(lag as f64);
            }
        }
        metrics::gauge!("byok_consumer_lag_records_total").set(total as f64);
        self.health.set_lag(waiting.max(0) as u64);
    }
}

/// Records of a partition not yet committed: from the committed offset (or, before the group
/// committed anything, the log start: librdkafka's own `consumer_lag` is -1 then) to the end of
/// the log (the last stable offset, for a read_committed consumer).
fn records_behind(p: &rdkafka::statistics::Partition) -> Option<i64> {
    let end = if p.ls_offset >= 0 {
        p.ls_offset
    } else {
        p.hi_offset
    };
    let start = if p.committed_offset >= 0 {
        p.committed_offset
    } else {
        p.lo_offset
    };
    (end >= 0 && start >= 0).then(|| (end - start).max(0))
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = r else {
            return;
        };
        metrics::counter!("byok_rebalances_total", "kind" => "revoke").increment(1);
        if self.transactional {
            tracing::info!(partitions = revoked.count(), "partitions revoked");
            return;
        }
        let commit = match self.drain_revoked(revoked) {
            Ok(c) => c,
            Err(e) => {
                // the batch loop meets the same poisoned lock and stops
                tracing::error!(error = %e, "partitions revoked; nothing committed");
                return;
            }
        };
        let meta = self
            .auditor
            .as_ref()
            .map(|a| a.metadata_for(&commit.0))
            .unwrap_or_default();
        if let Some(a) = &self.auditor {
            a.forget(revoked);
        }
        if commit.is_empty() {
            tracing::info!(partitions = revoked.count(), "partitions revoked");
            return;
        }
        match c.commit(&commit.to_list_with(&meta), CommitMode::Sync) {
            Ok(()) => tracing::info!(
                partitions = revoked.count(),
                committed = commit.0.len(),
                "partitions revoked; their batches in flight acknowledged and committed"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "partitions revoked; committing their offsets failed (the new owner may redo a batch: same byok.src)")
            }
        }
    }

    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        // Cooperative rebalancing: the lists are what was added or taken away. Never call into
        // the consumer here (asking it for its assignment inside the callback hangs when the
        // consumer is closing).
        match r {
            Rebalance::Assign(tpl) => {
                self.health.set_joined();
                self.health.add_assigned(tpl.count() as i64);
                metrics::counter!("byok_rebalances_total", "kind" => "assign").increment(1);
                tracing::info!(partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => self.health.add_assigned(-(tpl.count() as i64)),
            Rebalance::Error(_) => {}
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => {
                if let Err(e) = self.tracker.committed(offsets) {
                    tracing::error!(error = %e, "commit confirmed but not recorded");
                }
            }
            Err(e) => {
                metrics::counter!("byok_commit_failures_total").increment(1);
                tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (same byok.src)");
            }
        }
    }
}

/// Collects one batch from its first record: takes more until the count, byte or time limit.
pub async fn collect(
    first: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
    consumer: &StreamConsumer<SourceContext>,
    config: &Config,
) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    match first {
        Ok(m) => {
            bytes += m.payload_len() as u64;
            batch.push(m.detach());
        }
        Err(e) => {
            tracing::warn!(error = %e, "consume error");
            return batch;
        }
    }
    let deadline = tokio::time::Instant::now() + config.batch.max_wait;
    while batch.len() < config.batch.max_records.get() && bytes < config.batch.max_bytes {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => {
                bytes += m.payload_len() as u64;
                batch.push(m.detach());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "consume error");
                break;
            }
            Err(_) => break,
        }
    }
    batch
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn offs(v: &[(&str, i32, i64)]) -> Offsets {
        Offsets(
            v.iter()
                .map(|(t, p, o)| (((*t).to_owned(), *p), *o))
                .collect(),
        )
    }

    fn list(v: &[(&str, i32)]) -> TopicPartitionList {
        let mut l = TopicPartitionList::new();
        for (t, p) in v {
            l.add_partition(t, *p);
        }
        l
    }

    /// A record of topic "in" at partition `p`, offset `o` (also for the pause tests).
    pub(crate) fn msg(p: i32, o: i64) -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "in".into(),
            rdkafka::Timestamp::NotAvailable,
            p,
            o,
            None,
        )
    }

    #[test]
    fn acks_out_of_order_commit_only_up_to_the_first_unacknowledged_batch() {
        let t = OffsetTracker::default();
        let a = t.start(offs(&[("in", 0, 10)])).unwrap();
        let b = t.start(offs(&[("in", 0, 20)])).unwrap();
        let c = t.start(offs(&[("in", 0, 30)])).unwrap();
        // the last two are acknowledged first: nothing can be committed past the first
        t.finish(c, true).unwrap();
        t.finish(b, true).unwrap();
        let revoked = list(&[("in", 0)]);
        assert_eq!(t.take_revoked(&revoked).unwrap(), Offsets::default());
        t.finish(a, true).unwrap();
        assert_eq!(t.take_revoked(&revoked).unwrap(), offs(&[("in", 0, 30)]));
    }

    #[test]
    fn a_failed_batch_stops_the_commit_points_at_it() {
        let t = OffsetTracker::default();
        let a = t.start(offs(&[("in", 0, 10), ("in", 1, 5)])).unwrap();
        let b = t.start(offs(&[("in", 0, 20)])).unwrap();
        let c = t.start(offs(&[("in", 0, 30)])).unwrap();
        t.finish(a, true).unwrap();
        t.finish(b, false).unwrap();
        t.finish(c, true).unwrap();
        assert_eq!(t.status(b).unwrap(), Some(BatchStatus::Failed));
        assert_eq!(
            t.take_revoked(&list(&[("in", 0), ("in", 1)])).unwrap(),
            offs(&[("in", 0, 10), ("in", 1, 5)])
        );
    }

    #[test]
    fn revoked_partitions_take_only_their_own_offsets() {
        let t = OffsetTracker::default();
        // settled and handed to an asynchronous commit, not yet confirmed
        t.settle(0, &offs(&[("in", 0, 7), ("in", 1, 9)])).unwrap();
        let a = t.start(offs(&[("in", 0, 12), ("in", 1, 15)])).unwrap();
        t.finish(a, true).unwrap();
        assert_eq!(
            t.take_revoked(&list(&[("in", 1)])).unwrap(),
            offs(&[("in", 1, 15)])
        );
        // partition 0 stays with us: its acknowledged offset is still remembered
        assert_eq!(
            t.take_revoked(&list(&[("in", 0)])).unwrap(),
            offs(&[("in", 0, 12)])
        );
    }

    #[test]
    fn a_confirmed_commit_is_forgotten_and_settled_batches_leave() {
        let t = OffsetTracker::default();
        let a = t.start(offs(&[("in", 0, 10)])).unwrap();
        t.finish(a, true).unwrap();
        t.settle(a, &offs(&[("in", 0, 10)])).unwrap();
        assert_eq!(t.status(a).unwrap(), None);
        let mut done = TopicPartitionList::new();
        done.add_partition_offset("in", 0, Offset::Offset(10))
            .unwrap();
        t.committed(&done).unwrap();
        assert_eq!(
            t.take_revoked(&list(&[("in", 0)])).unwrap(),
            Offsets::default()
        );
    }

    #[test]
    fn waiting_for_acknowledgements_returns_when_they_come_or_at_the_deadline() {
        let t = Arc::new(OffsetTracker::default());
        let a = t.start(offs(&[("in", 0, 10)])).unwrap();
        let t2 = Arc::clone(&t);
        let acker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            t2.finish(a, true).unwrap();
        });
        let started = Instant::now();
        t.wait_settled(Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        acker.join().unwrap();
        // nothing comes: the deadline ends the wait
        let _b = t.start(offs(&[("in", 0, 20)])).unwrap();
        t.wait_settled(Duration::from_millis(20)).unwrap();
        assert!(t.any_in_flight().unwrap());
    }

    #[test]
    fn a_poisoned_tracker_is_an_error_not_a_skip() {
        let t = Arc::new(OffsetTracker::default());
        let t2 = Arc::clone(&t);
        let _ = std::thread::spawn(move || {
            let _g = t2.state.lock().unwrap();
            panic!("poison the lock");
        })
        .join();
        assert!(t.start(Offsets::default()).is_err());
        assert!(t.take_revoked(&list(&[("in", 0)])).is_err());
    }

    #[test]
    fn commit_points_are_one_past_the_last_record_of_each_partition() {
        let batch = vec![msg(0, 4), msg(1, 9), msg(0, 6), msg(0, 5)];
        assert_eq!(
            Offsets::of_batch(&batch),
            offs(&[("in", 0, 7), ("in", 1, 10)])
        );
    }
}
