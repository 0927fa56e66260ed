//! Tenants whose records wait because no DEK can be made for them and no public key of theirs was
//! ever seen (their vault does not answer, or their key was revoked before any worker read it).
//! The wait is bounded by `keys.unknown_key_hold`: past it, as a last resort before the input
//! topic's retention deletes them, the records go to the quarantine under the operator's key.
//!
//! This module must never decide that a tenant with a known public key waits, and never end a
//! hold early: a fault on our side (a vault that blinks) is never a reason for the operator's key.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::lock;
use std::time::{Duration, Instant};

/// The tenants held, and since when.
#[derive(Debug)]
pub struct Holds {
    since: Mutex<HashMap<String, Instant>>,
    limit: Mutex<Duration>,
}

impl Default for Holds {
    fn default() -> Self {
        Self {
            since: Mutex::new(HashMap::new()),
            limit: Mutex::new(Duration::from_secs(24 * 3600)),
        }
    }
}

impl Holds {
    /// Sets `keys.unknown_key_hold`.
    pub fn set_limit(&self, limit: Duration) {
        *lock(&self.limit) = limit;
    }

    /// The tenant's records wait from now on (or since they began waiting); true when its hold
    /// is over.
    pub fn hold(&self, tenant: &str) -> bool {
        let limit = *lock(&self.limit);
        let mut since = lock(&self.since);
        let started = *since.entry(tenant.to_owned()).or_insert_with(|| {
            tracing::warn!(
                tenant,
                hold_s = limit.as_secs(),
                "no DEK can be made and no public key of the tenant was ever seen: its records wait (partitions paused) for at most keys.unknown_key_hold"
            );
            Instant::now()
        });
        publish(since.len());
        started.elapsed() >= limit
    }

    /// Whether the tenant is held and its hold is over (its paused partitions should be read
    /// again, for their records to go to the quarantine).
    pub fn over(&self, tenant: &str) -> bool {
        let limit = *lock(&self.limit);
        lock(&self.since)
            .get(tenant)
            .is_some_and(|s| s.elapsed() >= limit)
    }

    /// The tenant got a DEK or a public key: its records no longer wait.
    pub fn release(&self, tenant: &str) {
        let mut since = lock(&self.since);
        if let Some(s) = since.remove(tenant) {
            tracing::info!(
                tenant,
                held_s = s.elapsed().as_secs(),
                "the tenant's records no longer wait"
            );
        }
        publish(since.len());
    }

    /// Tenants held now.
    pub fn count(&self) -> usize {
        lock(&self.since).len()
    }
}

fn publish(n: usize) {
    ::metrics::gauge!("byok_tenants_held").set(n as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_ends_only_after_its_limit_and_a_release_clears_it() {
        let h = Holds::default();
        h.set_limit(Duration::from_millis(200));
        assert!(!h.hold("acme"));
        assert!(!h.over("acme"));
        assert!(!h.over("globex"), "a tenant never held is not over");
        assert_eq!(h.count(), 1);
        std::thread::sleep(Duration::from_millis(250));
        assert!(h.over("acme"));
        assert!(h.hold("acme"), "the hold keeps its start");
        h.release("acme");
        assert_eq!(h.count(), 0);
        assert!(!h.hold("acme"), "a new hold starts from now");
    }
}
