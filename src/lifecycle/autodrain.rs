//! The worker's automatic drain: when a tenant's key comes back, one member of the group moves
//! that tenant's quarantined records into the archive (see [`super::drain`]).
//!
//! It must never run two drains at once in a process, nor block the batch loop: the drain runs
//! as a background task and the loop only looks at it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::monitor::KeyViews;
use crate::config::Config;
use crate::keyring::Keyring;

/// Drains the quarantine when a tenant's key comes back, in one member of the group: the one
/// assigned partition 0 of the first input topic (it also drains once on becoming that member,
/// for keys that came back while it was not). A drain runs in the background, one at a time;
/// it is idempotent (records already archived are not written again), so a leadership change
/// mid-drain loses nothing.
#[derive(Debug, Default)]
pub struct AutoDrain {
    task: Option<tokio::task::JoinHandle<Result<super::drain::DrainStats, super::LifecycleError>>>,
    again: bool,
    leader: bool,
    looked: Option<Instant>,
}

impl AutoDrain {
    /// Looks at the assignment and the keys that came back; starts a drain when this member
    /// leads and one is due, and adds what a finished drain moved to `drained`.
    pub fn look<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        config: &Config,
        keyring: &Arc<Keyring>,
        consumer: &StreamConsumer<C>,
        topics: &[&str],
        views: &KeyViews,
        drained: &mut u64,
    ) {
        let restored = views.take_restored();
        // the assignment is looked at once a second (and at once when a key came back)
        if restored.is_empty()
            && self
                .looked
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.looked = Some(Instant::now());
        let leader = topics.first().is_some_and(|t| {
            consumer.assignment().is_ok_and(|a| {
                a.elements()
                    .iter()
                    .any(|e| e.topic() == *t && e.partition() == 0)
            })
        });
        if leader && (!restored.is_empty() || !self.leader) {
            if !restored.is_empty() {
                tracing::info!(tenants = ?restored, "keys came back: draining the quarantine");
            }
            self.again = true;
        }
        self.leader = leader;
        if self.task.as_ref().is_some_and(|t| t.is_finished()) {
            self.collect(drained);
        }
        if self.again && self.task.is_none() {
            self.again = false;
            let config = config.clone();
            let keyring = Arc::clone(keyring);
            self.task = Some(tokio::spawn(async move {
                let opts = super::drain::DrainOptions::default();
                let drain =
                    super::drain::drain_quarantine_with(&config, &keyring, &opts, |_, _| {});
                crate::kms::receipts::with_purpose("drain", drain).await
            }));
        }
    }

    fn collect(&mut self, drained: &mut u64) {
        let Some(task) = self.task.take() else { return };
        match futures::FutureExt::now_or_never(task) {
            Some(Ok(Ok(d))) => {
                let n = d.moved + d.resealed;
                *drained += n;
                metrics::counter!("byok_quarantine_drained_total").increment(n);
                if n > 0 || !d.failed.is_empty() {
                    tracing::info!(moved = d.moved, resealed = d.resealed, already_archived = d.already_archived, stayed = ?d.stayed, failed = d.failed.len(), "quarantine drained");
                }
                for f in &d.failed {
                    tracing::warn!(record = %f, "quarantine record not drained");
                }
            }
            Some(Ok(Err(e))) => {
                tracing::warn!(error = %e, "quarantine drain failed; it runs again when a key comes back or another member leads");
            }
            Some(Err(e)) => tracing::warn!(error = %e, "quarantine drain task ended"),
            None => {}
        }
    }

    /// At shutdown: gives a drain still running `deadline` to finish, then stops it (what it
    /// did not save is read again by the next drain; nothing is written twice).
    pub async fn stop(&mut self, deadline: Duration, drained: &mut u64) {
        if let Some(t) = self.task.as_mut()
            && tokio::time::timeout(deadline, async {
                while !t.is_finished() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .is_err()
        {
            tracing::warn!("quarantine drain still running at shutdown; stopped");
            t.abort();
            self.task = None;
        }
        self.collect(drained);
    }
}
