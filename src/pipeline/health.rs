//! What `/health` and `/live` report and what a load harness watches: shared, lock-free state of
//! a worker.
//!
//! Ready (`/health`): joined its group, its vaults answered, not stopping. Live (`/live`): making
//! progress: a worker with assigned partitions, records waiting on them (paused partitions
//! aside) and no batch completed for `worker.stall_timeout` is stalled, whatever the reason (a
//! hung stage, a broker that never acknowledges), and an orchestrator should restart it. This
//! module must never block: the HTTP handlers and the consumer's callbacks read it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// No time recorded.
const NEVER: u64 = u64::MAX;

/// The state a worker publishes while it runs.
#[derive(Debug)]
pub struct Health {
    joined: AtomicBool,
    vaults_checked: AtomicBool,
    stopping: AtomicBool,
    records_done: AtomicU64,
    batches_done: AtomicU64,
    /// Partitions assigned to this member.
    assigned: AtomicU64,
    /// Records waiting on the assigned partitions that are not paused.
    lag: AtomicU64,
    /// Records consumed and not yet committed (the batch being sealed, the batches in flight).
    in_hand: AtomicU64,
    born: Instant,
    /// Milliseconds since `born` of the last completed batch.
    last_progress_ms: AtomicU64,
    /// Milliseconds since `born` since which records have been waiting, or [`NEVER`].
    waiting_since_ms: AtomicU64,
    stall_timeout_ms: AtomicU64,
    stalled: AtomicBool,
    /// Produce tasks retrying records the broker refused for now.
    backing_off: AtomicU64,
    /// Tenants whose records wait with no DEK possible and no public key known.
    held: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            joined: AtomicBool::new(false),
            vaults_checked: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            records_done: AtomicU64::new(0),
            batches_done: AtomicU64::new(0),
            assigned: AtomicU64::new(0),
            lag: AtomicU64::new(0),
            in_hand: AtomicU64::new(0),
            born: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            waiting_since_ms: AtomicU64::new(NEVER),
            stall_timeout_ms: AtomicU64::new(120_000),
            stalled: AtomicBool::new(false),
            backing_off: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }
    /// The consumer got its first assignment: it is a member of the group.
    pub fn set_joined(&self) {
        self.joined.store(true, Ordering::Release);
    }
    /// Every vault the worker needs answered (a revoked key still answers).
    pub fn set_vaults_checked(&self) {
        self.vaults_checked.store(true, Ordering::Release);
    }
    /// A stop was requested: no longer ready for new work.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }
    /// How long without progress, with records waiting, is a stall.
    pub fn set_stall_timeout(&self, timeout: Duration) {
        self.stall_timeout_ms
            .store(timeout.as_millis() as u64, Ordering::Relaxed);
    }
    /// The number of partitions assigned to this member.
    pub fn set_assigned(&self, partitions: u64) {
        self.assigned.store(partitions, Ordering::Relaxed);
    }
    /// Partitions added to (positive) or taken from (negative) this member's assignment.
    pub fn add_assigned(&self, delta: i64) {
        let _ = self
            .assigned
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(delta))
            });
    }
    /// Records waiting on the assigned partitions that are not paused.
    pub fn set_lag(&self, records: u64) {
        self.lag.store(records, Ordering::Relaxed);
    }
    /// Records consumed and not yet committed: the batch being sealed and the batches in
    /// flight (the batch loop sets it; the lag from librdkafka's statistics stops moving when
    /// the loop stops polling, this does not).
    pub fn set_in_hand(&self, records: u64) {
        self.in_hand.store(records, Ordering::Relaxed);
    }
    /// A batch of `records` was produced and committed.
    pub fn batch_done(&self, records: u64) {
        self.records_done.fetch_add(records, Ordering::Relaxed);
        self.batches_done.fetch_add(1, Ordering::Relaxed);
        self.last_progress_ms
            .store(self.now_ms(), Ordering::Relaxed);
        self.stalled.store(false, Ordering::Relaxed);
    }
    /// Records processed (produced and acknowledged) so far.
    pub fn records_done(&self) -> u64 {
        self.records_done.load(Ordering::Relaxed)
    }
    /// Batches processed so far.
    pub fn batches_done(&self) -> u64 {
        self.batches_done.load(Ordering::Relaxed)
    }
    /// Tenants whose records wait (partitions paused) with no DEK possible and no public key
    /// known, for at most `keys.unknown_key_hold`.
    pub fn set_held(&self, tenants: u64) {
        self.held.store(tenants, Ordering::Relaxed);
    }
    /// What `/health` adds to a ready worker's answer: tenants held, if any.
    pub fn notes(&self) -> Option<String> {
        let held = self.held.load(Ordering::Relaxed);
        (held > 0).then(|| {
            format!(
                "{held} tenant(s) held: no DEK can be made and no public key of theirs was ever seen; their partitions are paused for at most keys.unknown_key_hold, then their records go to the quarantine under the operator's key (byok_tenants_held)"
            )
        })
    }
    /// A produce task started (`1`) or stopped (`-1`) retrying records the broker refused for
    /// now.
    pub fn add_backing_off(&self, delta: i64) {
        let _ = self
            .backing_off
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add_signed(delta))
            });
        ::metrics::gauge!("byok_produce_backing_off")
            .set(self.backing_off.load(Ordering::Relaxed) as f64);
    }
    /// Ready: joined its group, its vaults answered, not stopping, the broker accepting what it
    /// is sent.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Acquire) {
            Err("stopping: draining the batch in flight")
        } else if self.backing_off.load(Ordering::Relaxed) > 0 {
            Err(
                "the broker refuses records for now; retrying them with backoff, nothing committed meanwhile (byok_produce_retries_total; see the log for the error)",
            )
        } else if !self.joined.load(Ordering::Acquire) {
            Err("not yet a member of its consumer group (no partitions assigned yet)")
        } else if !self.vaults_checked.load(Ordering::Acquire) {
            Err("the tenants' key vaults have not all answered yet")
        } else {
            Ok(())
        }
    }

    /// Looks for a stall now (the worker's watchdog calls it every second); returns true when
    /// a stall has just begun (counted once per stall).
    pub fn watch(&self) -> bool {
        self.watch_at(self.now_ms())
    }

    fn watch_at(&self, now: u64) -> bool {
        let waiting = self.assigned.load(Ordering::Relaxed) > 0
            && (self.lag.load(Ordering::Relaxed) > 0 || self.in_hand.load(Ordering::Relaxed) > 0)
            && !self.stopping.load(Ordering::Relaxed);
        if !waiting {
            self.waiting_since_ms.store(NEVER, Ordering::Relaxed);
            self.stalled.store(false, Ordering::Relaxed);
            return false;
        }
        let _ = self.waiting_since_ms.compare_exchange(
            NEVER,
            now,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        // progress is counted from the later of the last batch and the start of the wait (an
        // idle worker that gets records is not stalled at once)
        let since = self
            .waiting_since_ms
            .load(Ordering::Relaxed)
            .max(self.last_progress_ms.load(Ordering::Relaxed));
        let stall = now.saturating_sub(since) > self.stall_timeout_ms.load(Ordering::Relaxed);
        if !stall {
            self.stalled.store(false, Ordering::Relaxed);
            return false;
        }
        !self.stalled.swap(true, Ordering::Relaxed)
    }

    /// Live: not stalled.
    pub fn live(&self) -> Result<(), Stalled> {
        if !self.stalled.load(Ordering::Relaxed) {
            return Ok(());
        }
        Err(Stalled {
            idle_s: self
                .now_ms()
                .saturating_sub(self.last_progress_ms.load(Ordering::Relaxed))
                / 1000,
            in_hand: self.in_hand.load(Ordering::Relaxed),
            behind: self.lag.load(Ordering::Relaxed),
            partitions: self.assigned.load(Ordering::Relaxed),
            stall_timeout_s: self.stall_timeout_ms.load(Ordering::Relaxed) / 1000,
        })
    }
}

/// The worker holds or is behind on records and completed no batch for `worker.stall_timeout`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "stalled: no batch completed for {idle_s} s with records waiting ({in_hand} consumed and not committed, {behind} behind) on {partitions} partitions (worker.stall_timeout {stall_timeout_s} s)"
)]
pub struct Stalled {
    /// Seconds since the last completed batch.
    pub idle_s: u64,
    /// Records consumed and not committed.
    pub in_hand: u64,
    /// Records behind (lag).
    pub behind: u64,
    /// Partitions assigned.
    pub partitions: u64,
    /// The configured stall timeout, in seconds.
    pub stall_timeout_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        let h = Health::default();
        h.set_stall_timeout(Duration::from_secs(120));
        h
    }

    #[test]
    fn records_waiting_without_progress_past_the_timeout_is_a_stall_counted_once() {
        let h = health();
        h.set_assigned(4);
        h.set_lag(10);
        assert!(!h.watch_at(1_000));
        assert!(h.live().is_ok());
        assert!(!h.watch_at(100_000));
        assert!(h.watch_at(121_001), "the stall begins");
        assert!(h.live().unwrap_err().to_string().contains("stalled"));
        assert!(!h.watch_at(200_000), "counted once");
        assert!(h.live().is_err());
        // a batch completes: live again
        h.batch_done(5);
        assert!(h.live().is_ok());
    }

    #[test]
    fn idle_paused_or_unassigned_is_not_a_stall() {
        let h = health();
        h.set_assigned(4);
        h.set_lag(0); // idle
        assert!(!h.watch_at(1_000_000));
        h.set_lag(7); // records arrive after a long idle: the wait starts now
        assert!(!h.watch_at(1_000_100));
        assert!(!h.watch_at(1_100_000));
        assert!(h.live().is_ok());
        h.set_assigned(0); // a rebalance took every partition
        assert!(!h.watch_at(5_000_000));
        assert!(h.live().is_ok());
    }

    #[test]
    fn a_batch_in_hand_without_progress_is_a_stall_even_without_lag_figures() {
        let h = health();
        h.set_assigned(2);
        h.set_in_hand(500);
        assert!(!h.watch_at(1_000));
        assert!(h.watch_at(122_000));
        h.set_in_hand(0);
        assert!(!h.watch_at(123_000));
        assert!(h.live().is_ok());
    }

    #[test]
    fn stopping_is_not_a_stall() {
        let h = health();
        h.set_assigned(1);
        h.set_lag(1);
        h.set_stopping();
        assert!(!h.watch_at(10_000_000));
        assert!(h.live().is_ok());
    }
}
