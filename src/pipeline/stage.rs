//! The stage interface: what the worker does to a batch between consuming and producing, and
//! the run's counts. [`super::seal::Sealer`] is the product's stage; the load harness drives a
//! plaintext pass-through through the same interface.
//!
//! A stage must never produce or commit anything itself: it returns output records, and the
//! loop hands them to the sink.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::OwnedMessage;

use crate::deks::DekError;

/// One output record. Topic names and the tenant and DEK header values are shared by every
/// record of a tenant in a batch.
#[derive(Debug)]
pub struct Out {
    /// Topic.
    pub topic: Arc<str>,
    /// Record key (the captured record's).
    pub key: Option<Vec<u8>>,
    /// Value (sealed, except in a benchmark's pass-through).
    pub value: Vec<u8>,
    /// Headers.
    pub headers: Vec<(&'static str, Bytes)>,
}

impl Out {
    /// Bytes of the value and headers.
    pub fn len(&self) -> usize {
        self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// No bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Counts of a worker run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records consumed.
    pub records_in: u64,
    /// Records sealed into the archive.
    pub archived: u64,
    /// Records sealed into the quarantine, by reason.
    pub quarantined: BTreeMap<String, u64>,
    /// Batches committed.
    pub batches: u64,
    /// DEKs made.
    pub deks_created: u64,
    /// Quarantine records this worker drained into the archive (`keys.drain_on_restore`).
    pub drained: u64,
}

/// A batch could not be turned into output records now.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// These owners' vaults do not answer and no public key of theirs is known: their records
    /// (`held`: batch index and owner) wait, their partitions paused; the rest goes on.
    #[error("vault unavailable and no public key known for {tenants:?}: {detail}")]
    Waiting {
        /// The tenants.
        tenants: Vec<String>,
        /// The first vault error.
        detail: String,
        /// The records that wait.
        held: Vec<(usize, String)>,
    },
    /// Retry the whole batch later (nothing of it was committed).
    #[error(transparent)]
    Retry(DekError),
}

/// What the worker does to a batch between consuming and producing: [`Sealer`](super::seal::Sealer) in `byok run`;
/// the load harness drives a plaintext pass-through through the same loop.
#[async_trait::async_trait]
pub trait Stage: Send {
    /// The output records of `batch`, one per record, in order.
    async fn process(&mut self, batch: &Arc<Vec<OwnedMessage>>) -> Result<Vec<Out>, StageError>;
    /// A transaction was opened (exactly-once).
    fn begin_transaction(&mut self) {}
    /// The open transaction was aborted: forget what was made in it.
    fn abort_transaction(&mut self) {}
    /// Adds the stage's counts to the run's.
    fn report(&self, _stats: &mut RunStats) {}
}
