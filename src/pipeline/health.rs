//! What `/health` reports and what a load harness watches: shared, lock-free state of a worker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The state a worker publishes while it runs.
#[derive(Debug, Default)]
pub struct Health {
    joined: AtomicBool,
    vaults_checked: AtomicBool,
    stopping: AtomicBool,
    records_done: AtomicU64,
    batches_done: AtomicU64,
}

impl Health {
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
    /// A batch of `records` was produced and committed.
    pub fn batch_done(&self, records: u64) {
        self.records_done.fetch_add(records, Ordering::Relaxed);
        self.batches_done.fetch_add(1, Ordering::Relaxed);
    }
    /// Records processed (produced and acknowledged) so far.
    pub fn records_done(&self) -> u64 {
        self.records_done.load(Ordering::Relaxed)
    }
    /// Batches processed so far.
    pub fn batches_done(&self) -> u64 {
        self.batches_done.load(Ordering::Relaxed)
    }
    /// Ready: joined its group, its vaults answered, not stopping.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Acquire) {
            Err("stopping: draining the batch in flight")
        } else if !self.joined.load(Ordering::Acquire) {
            Err("not yet a member of its consumer group (no partitions assigned yet)")
        } else if !self.vaults_checked.load(Ordering::Acquire) {
            Err("the tenants' key vaults have not all answered yet")
        } else {
            Ok(())
        }
    }
}
