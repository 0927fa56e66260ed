//! Pausing and resuming partitions whose records wait for a tenant's key: only the partitions
//! that hold such a record wait, from that record on; the others keep flowing.
//!
//! This module must never drop a held record: it either stays in the batch or comes again
//! from Kafka after the seek back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};

use super::source::{Partition, SourceContext};
use crate::lifecycle::monitor::KeyViews;

/// Partitions paused because a tenant in them has a vault that does not answer and no public key
/// known to wrap a DEK locally. Only those partitions wait (from that tenant's first record on,
/// other tenants' records after it included, as offsets are committed in order); every other
/// partition keeps flowing. Kafka keeps the data; nothing is committed past the held record.
#[derive(Debug, Default)]
pub struct Paused {
    /// (topic, partition) -> the tenants it waits for, and since when.
    parts: BTreeMap<Partition, (BTreeSet<String>, Instant)>,
    /// The same partitions, for the lag the consumer context reports.
    shared: Arc<Mutex<BTreeSet<Partition>>>,
}

/// A paused partition is tried again after this long even without news from the monitor (the
/// attempt pauses it again if the vault still does not answer).
const PAUSED_RETRY: Duration = Duration::from_secs(60);

impl Paused {
    /// The set of paused partitions the consumer context reads.
    pub fn shared(&self) -> Arc<Mutex<BTreeSet<Partition>>> {
        Arc::clone(&self.shared)
    }

    /// No partition paused.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    fn publish(&self) {
        *self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            self.parts.keys().cloned().collect();
        metrics::gauge!("byok_partitions_paused").set(self.parts.len() as f64);
    }

    /// Takes out of `batch` each partition's records from its first record in `held` (indices
    /// of the batch, with their owner) on, seeks those partitions back to that record and pauses
    /// them; returns the records kept.
    pub fn hold_back(
        &mut self,
        consumer: &StreamConsumer<SourceContext>,
        batch: &[OwnedMessage],
        held: &[(usize, String)],
        detail: &str,
    ) -> Vec<OwnedMessage> {
        let first = first_held(batch, held);
        let mut tpl = TopicPartitionList::new();
        let mut unseekable = BTreeSet::new();
        for ((t, p), (offset, tenant)) in &first {
            let _ = tpl.add_partition(t, *p);
            self.mark((t.clone(), *p), tenant);
            if let Err(e) = consumer.seek(t, *p, Offset::Offset(*offset), Duration::from_secs(5)) {
                // without the seek the held records would not come again: keep them all in this
                // batch's retry instead (nothing skipped)
                tracing::warn!(topic = %t, partition = p, offset, error = %e, "cannot seek back a paused partition; its records stay in the batch");
                unseekable.insert((t.clone(), *p));
            }
            tracing::warn!(tenant = %tenant, topic = %t, partition = p, offset, detail, "vault unavailable and no public key of the tenant known: partition paused from this record (Kafka keeps the data) until the vault answers");
        }
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "cannot pause partitions");
        }
        self.publish();
        kept(batch, &first, &unseekable)
    }

    /// Notes that `partition` waits for `tenant`, from now.
    fn mark(&mut self, partition: Partition, tenant: &str) {
        let e = self
            .parts
            .entry(partition)
            .or_insert_with(|| (BTreeSet::new(), Instant::now()));
        e.0.insert(tenant.to_owned());
        e.1 = Instant::now();
    }

    /// The paused partitions that may flow again: every tenant they wait for is `ready`, or
    /// they waited `retry` already.
    fn ready(&self, retry: Duration, ready: impl Fn(&str) -> bool) -> Vec<Partition> {
        self.parts
            .iter()
            .filter(|(_, (tenants, since))| {
                since.elapsed() >= retry || tenants.iter().all(|t| ready(t))
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Resumes the partitions whose tenants now have a public key (the monitor reached their
    /// vault) or whose hold is over (`keys.unknown_key_hold`), or that waited `PAUSED_RETRY` (60 s).
    pub fn resume_ready(&mut self, consumer: &StreamConsumer<SourceContext>, views: &KeyViews) {
        if self.parts.is_empty() {
            return;
        }
        let ready = self.ready(PAUSED_RETRY, |t| {
            views.public_key(t).is_some() || views.holds.over(t)
        });
        if ready.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (t, p) in &ready {
            let _ = tpl.add_partition(t, *p);
            if let Some((tenants, since)) = self.parts.remove(&(t.clone(), *p)) {
                tracing::info!(topic = %t, partition = p, tenants = ?tenants, paused_s = since.elapsed().as_secs(), "partition resumed");
            }
        }
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(error = %e, "cannot resume partitions");
        }
        self.publish();
    }
}

/// Each partition's first held record in `batch` (indices with their owner): its offset and
/// the tenant it waits for.
fn first_held(
    batch: &[OwnedMessage],
    held: &[(usize, String)],
) -> BTreeMap<Partition, (i64, String)> {
    let mut first: BTreeMap<Partition, (i64, String)> = BTreeMap::new();
    for (i, owner) in held {
        let Some(m) = batch.get(*i) else { continue };
        let e = first
            .entry((m.topic().to_owned(), m.partition()))
            .or_insert((m.offset(), owner.clone()));
        if m.offset() < e.0 {
            *e = (m.offset(), owner.clone());
        }
    }
    first
}

/// The records of `batch` that stay in it: those of partitions not held, those before their
/// partition's first held record, and all of a partition that could not be seeked back.
fn kept(
    batch: &[OwnedMessage],
    first: &BTreeMap<Partition, (i64, String)>,
    unseekable: &BTreeSet<Partition>,
) -> Vec<OwnedMessage> {
    batch
        .iter()
        .filter(|m| {
            let k = (m.topic().to_owned(), m.partition());
            unseekable.contains(&k) || first.get(&k).is_none_or(|(o, _)| m.offset() < *o)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock;
    use crate::pipeline::source::tests::msg;

    #[test]
    fn holding_back_keeps_other_partitions_and_the_records_before_the_first_held() {
        // partition 0: 10, 11 (held: acme), 12 (another tenant after it); partition 1: 20, 21
        // (held: globex, listed after a later one); partition 2 untouched
        let batch = vec![
            msg(0, 10),
            msg(1, 21),
            msg(0, 11),
            msg(1, 20),
            msg(0, 12),
            msg(2, 5),
        ];
        let held = vec![
            (2, "acme".to_owned()),
            (1, "globex".to_owned()),
            (3, "globex".to_owned()),
        ];
        let first = first_held(&batch, &held);
        assert_eq!(first[&("in".to_owned(), 0)], (11, "acme".to_owned()));
        assert_eq!(first[&("in".to_owned(), 1)], (20, "globex".to_owned()));
        let offsets = |v: Vec<OwnedMessage>| -> Vec<(i32, i64)> {
            v.iter().map(|m| (m.partition(), m.offset())).collect()
        };
        assert_eq!(
            offsets(kept(&batch, &first, &BTreeSet::new())),
            vec![(0, 10), (2, 5)]
        );
        // a partition that could not be seeked back keeps all its records in the batch
        let unseekable = BTreeSet::from([("in".to_owned(), 1)]);
        assert_eq!(
            offsets(kept(&batch, &first, &unseekable)),
            vec![(0, 10), (1, 21), (1, 20), (2, 5)]
        );
    }

    #[test]
    fn a_paused_partition_resumes_when_every_tenant_it_waits_for_is_ready_or_after_the_retry() {
        let mut paused = Paused::default();
        paused.mark(("in".into(), 0), "acme");
        paused.mark(("in".into(), 0), "globex");
        paused.mark(("in".into(), 1), "globex");
        let hour = Duration::from_secs(3600);
        // nobody ready: nothing resumes
        assert!(paused.ready(hour, |_| false).is_empty());
        // acme ready: partition 0 still waits for globex
        assert!(paused.ready(hour, |t| t == "acme").is_empty());
        // globex ready: partition 1 resumes, partition 0 still waits for acme
        assert_eq!(
            paused.ready(hour, |t| t == "globex"),
            vec![("in".to_owned(), 1)]
        );
        assert_eq!(paused.ready(hour, |_| true).len(), 2);
        // after the retry time everything is tried again, ready or not
        assert_eq!(paused.ready(Duration::ZERO, |_| false).len(), 2);
        assert!(!paused.is_empty());
        paused.publish();
        assert_eq!(lock(&paused.shared()).len(), 2);
    }
}
