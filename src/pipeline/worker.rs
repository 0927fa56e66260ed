//! `byok run`: a consumer-group member that reads captured messages in batches, seals each
//! under its tenant's DEK, produces the sealed records, and commits the source offsets only
//! after every record produced from them was acknowledged (at-least-once; duplicates after a
//! crash carry the same `byok.src`, which readers drop).
//!
//! Batches are processed one after the other: a batch is collected (count, bytes, wait), routed
//! (tenant header, else the JSON `tenant_id`), sealed (one nonce block per tenant group), produced
//! with an idempotent producer, awaited, then its offsets are committed. Records without a usable
//! tenant (unknown, BYOK off, unreadable) go to the quarantine sealed under the operator's
//! quarantine key, with the reason. If a key provider is unavailable the batch is retried (never
//! dropped, never quarantined for an outage).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use super::health::Health;
use super::scan::{TenantOf, tenant_of};
use crate::config::{Config, Delivery, TenantId};
use crate::dek::{ActiveDek, DekId};
use crate::deks::{DekError, DekSet};
use crate::envelope::headers::{ArchiveHeaders, QuarantineHeaders, QuarantineReason, SourceRef};
use crate::envelope::{self, SealError};
use crate::kafka::{consumer_config, producer_config, worker_id};
use crate::kms::{KmsError, TenantKms};
use crate::lifecycle::monitor::{KeyView, KeyViews, Revoked};
use crate::registry::QUARANTINE_TENANT;

/// The worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A Kafka client could not be made.
    #[error("Kafka {client}: {source}")]
    Client {
        /// Which client.
        client: &'static str,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// A key provider could not be set up.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// A produced record was not acknowledged (the batch is not committed; a restart redoes it).
    #[error("produce to {topic} failed: {reason}; the batch's offsets were not committed")]
    Produce {
        /// Topic.
        topic: String,
        /// Cause.
        reason: String,
    },
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

/// The consumer's context: logs through tracing, marks the worker joined, exports consumer lag
/// from librdkafka's statistics, and on a revocation commits what was acknowledged for the
/// revoked partitions before they move (batches are processed between polls, so nothing of a
/// revoked partition is in flight then).
struct Ctx {
    health: Arc<Health>,
    /// Acknowledged, not yet known to be committed: (topic, partition) -> next offset.
    acked: Mutex<HashMap<(String, i32), i64>>,
    /// Batches produced and not yet settled by the batch loop, oldest first.
    pending: Mutex<VecDeque<Pending>>,
    /// The producer, flushed on a revocation so that batches in flight are acknowledged first.
    producer: FutureProducer,
    /// How long a revocation may wait for batches in flight.
    drain_deadline: Duration,
    /// Offsets are committed in transactions (exactly-once), not by the consumer.
    transactional: bool,
}

/// A batch in flight as the rebalance callback sees it.
struct Pending {
    seq: u64,
    next: BTreeMap<(String, i32), i64>,
    /// 0 in flight, 1 acknowledged, 2 failed; set by the batch's produce task.
    status: Arc<AtomicU8>,
}

impl Ctx {
    /// The offsets to commit for `revoked` partitions: what was acknowledged and settled, then
    /// the batches in flight once the producer is flushed, in order, up to the first one that
    /// is not acknowledged (a later batch never commits past an earlier one that failed).
    fn drain_revoked(&self, revoked: &TopicPartitionList) -> TopicPartitionList {
        let is_revoked = |t: &str, p: i32| {
            revoked
                .elements()
                .iter()
                .any(|e| e.topic() == t && e.partition() == p)
        };
        let mut commit: BTreeMap<(String, i32), i64> = BTreeMap::new();
        if let Ok(mut acked) = self.acked.lock() {
            acked.retain(|(t, p), o| {
                if is_revoked(t, *p) {
                    commit.insert((t.clone(), *p), *o);
                    false
                } else {
                    true
                }
            });
        }
        let waiting = self.pending.lock().map(|p| !p.is_empty()).unwrap_or(false);
        if waiting {
            let _ = self.producer.flush(Timeout::After(self.drain_deadline));
            // the produce tasks record the acknowledgements (on the runtime's other threads)
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline
                && self
                    .pending
                    .lock()
                    .is_ok_and(|p| p.iter().any(|b| b.status.load(Ordering::Acquire) == 0))
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Ok(pending) = self.pending.lock() {
                for b in pending.iter() {
                    if b.status.load(Ordering::Acquire) != 1 {
                        break;
                    }
                    for ((t, p), o) in &b.next {
                        if is_revoked(t, *p) {
                            let e = commit.entry((t.clone(), *p)).or_insert(*o);
                            *e = (*e).max(*o);
                        }
                    }
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), o) in commit {
            let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
        }
        tpl
    }
}

impl rdkafka::ClientContext for Ctx {
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
        let mut total = 0i64;
        for (topic, t) in &statistics.topics {
            for (id, p) in &t.partitions {
                // librdkafka reports -1 for partitions it does not consume, and "-1" is the
                // internal unassigned partition
                if *id < 0 || p.consumer_lag < 0 {
                    continue;
                }
                total += p.consumer_lag;
                metrics::gauge!("byok_consumer_lag_records", "topic" => topic.clone(), "partition" => id.to_string())
                    .set(p.consumer_lag as f64);
            }
        }
        metrics::gauge!("byok_consumer_lag_records_total").set(total as f64);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = r {
            let tpl = if self.transactional {
                TopicPartitionList::new()
            } else {
                self.drain_revoked(revoked)
            };
            if tpl.count() > 0 {
                match c.commit(&tpl, CommitMode::Sync) {
                    Ok(()) => tracing::info!(
                        partitions = revoked.count(),
                        committed = tpl.count(),
                        "partitions revoked; their batches in flight acknowledged and committed"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "partitions revoked; committing their offsets failed (the new owner may redo a batch: same byok.src)")
                    }
                }
            } else {
                tracing::info!(partitions = revoked.count(), "partitions revoked");
            }
            metrics::counter!("byok_rebalances_total", "kind" => "revoke").increment(1);
        }
    }
    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            self.health.set_joined();
            metrics::counter!("byok_rebalances_total", "kind" => "assign").increment(1);
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => {
                if let Ok(mut acked) = self.acked.lock() {
                    for e in offsets.elements() {
                        let key = (e.topic().to_owned(), e.partition());
                        if let (Some(&o), Offset::Offset(c)) = (acked.get(&key), e.offset())
                            && o <= c
                        {
                            acked.remove(&key);
                        }
                    }
                }
            }
            Err(e) => {
                metrics::counter!("byok_commit_failures_total").increment(1);
                tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (same byok.src)");
            }
        }
    }
}

/// One output record. Topic names and the tenant and DEK header values are shared by every
/// record of a tenant in a batch.
struct Out {
    topic: Arc<str>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(&'static str, Bytes)>,
}

/// Kept across batches: each (owner, route kind)'s output topic and tenant header value, each
/// DEK's id header value (the DEK map is cleared when it grows past a bound).
#[derive(Default)]
struct Shared {
    /// [quarantine routes, archive routes], by owner.
    owners: [HashMap<String, (Arc<str>, Bytes)>; 2],
    deks: HashMap<DekId, Bytes>,
}

impl Shared {
    fn owner(&mut self, route: &Route, config: &Config) -> (Arc<str>, Bytes) {
        let map = &mut self.owners[usize::from(matches!(route, Route::Archive(_)))];
        if let Some((topic, tenant)) = map.get(route.owner()) {
            return (Arc::clone(topic), tenant.clone());
        }
        let topic = match route {
            Route::Archive(t) => config.kafka.archive_topic.topic_for(t),
            Route::Quarantine { .. } | Route::Revoked { .. } => {
                config.kafka.quarantine_topic.clone()
            }
        };
        let entry = (
            Arc::<str>::from(topic),
            Bytes::copy_from_slice(route.owner().as_bytes()),
        );
        map.insert(route.owner().to_owned(), entry.clone());
        entry
    }
    fn dek(&mut self, id: DekId) -> Bytes {
        if self.deks.len() > 65_536 {
            self.deks.clear();
        }
        self.deks
            .entry(id)
            .or_insert_with(|| Bytes::from(id.to_string()))
            .clone()
    }
}

/// Where a record goes.
enum Route {
    Archive(TenantId),
    /// The tenant's key is revoked: quarantine, sealed under a DEK of the tenant wrapped
    /// locally with its last known public key.
    Revoked {
        tenant: TenantId,
        reason: QuarantineReason,
        detail: String,
    },
    Quarantine {
        reason: QuarantineReason,
        tenant: Option<String>,
        detail: String,
    },
}

impl Route {
    /// Whose DEK seals the record: the tenant's, or the operator's quarantine DEK.
    fn owner(&self) -> &str {
        match self {
            Route::Archive(t) | Route::Revoked { tenant: t, .. } => t.as_str(),
            Route::Quarantine { .. } => QUARANTINE_TENANT,
        }
    }
}

/// What the worker does between consuming and producing. `byok run` seals; the load harness
/// measures the same consume, batch and produce path with a plaintext pass-through as its
/// baseline (`Stage::PassThrough` is not reachable from the command line).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Seal every record (the product).
    Seal,
    /// Copy every record to the archive topic unchanged (benchmark baseline only).
    PassThrough,
}

/// Runs the worker until `shutdown` turns true, then drains: the batch in flight is produced
/// and committed, the producer flushed, within the configured drain deadline.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<RunStats, WorkerError> {
    run_with(config, shutdown, Stage::Seal, Arc::new(Health::default())).await
}

/// [`run`] with the stage chosen (the load harness's baseline) and the health state shared
/// with `/health`.
#[doc(hidden)]
pub async fn run_with(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    stage: Stage,
    health: Arc<Health>,
) -> Result<RunStats, WorkerError> {
    describe_metrics();
    let tenants = crate::kms::providers(&config)?;
    let mut limiters = HashMap::new();
    let quarantine = crate::kms::tenant_kms(
        QUARANTINE_TENANT,
        &config.quarantine,
        &config.keys,
        &mut limiters,
    )?;
    let client = |client: &'static str| move |source| WorkerError::Client { client, source };
    let producer: FutureProducer = producer_config(&config)
        .create()
        .map_err(client("producer"))?;
    let transactional = config.kafka.delivery == Delivery::ExactlyOnce;
    if transactional {
        producer
            .init_transactions(Timeout::After(Duration::from_secs(60)))
            .map_err(client("producer (init transactions)"))?;
    }
    let consumer: Arc<StreamConsumer<Ctx>> = Arc::new(
        consumer_config(&config)
            .create_with_context(Ctx {
                health: Arc::clone(&health),
                acked: Mutex::new(HashMap::new()),
                pending: Mutex::new(VecDeque::new()),
                producer: producer.clone(),
                drain_deadline: config.worker.drain_deadline,
                transactional,
            })
            .map_err(client("consumer"))?,
    );
    let topics: Vec<&str> = config
        .kafka
        .input_topics
        .iter()
        .map(String::as_str)
        .collect();
    consumer.subscribe(&topics).map_err(client("consumer"))?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.batch.seal_threads.get())
        .thread_name(|i| format!("byok-seal-{i}"))
        .build()
        .map_err(|e| WorkerError::Produce {
            topic: "(sealing pool)".into(),
            reason: e.to_string(),
        })?;
    let mut deks = DekSet::new(
        config.dek.limits,
        worker_id(&config),
        config.kafka.registry_topic.clone(),
    );
    // one tenant per distinct vault and key is enough to know the vaults answer
    let mut per_vault: BTreeMap<(String, String), Arc<TenantKms>> = BTreeMap::new();
    for (id, kms) in &tenants {
        if let Some(k) = config.tenants.get(id).and_then(|t| t.key.as_ref()) {
            per_vault
                .entry((k.vault_url.to_string(), k.key_name.clone()))
                .or_insert_with(|| Arc::clone(kms));
        }
    }
    tokio::spawn(check_vaults(
        per_vault.into_values().collect(),
        Arc::clone(&health),
    ));
    // the tenants' key states, kept by the monitor; last known public keys from byok.keks
    let views = Arc::new(KeyViews::default());
    match crate::archive::load_keks(&config).await {
        Ok(keys) => views.seed_public(keys),
        Err(e) => {
            tracing::warn!(error = %e, topic = %config.kafka.keks_topic, "last known public keys not loaded (they are read again from Key Vault)")
        }
    }
    let mut seen = Seen::default();
    let monitor = {
        let views = Arc::clone(&views);
        let producer = producer.clone();
        let tenants: Vec<(String, Arc<TenantKms>)> = tenants
            .iter()
            .map(|(id, k)| (id.to_string(), Arc::clone(k)))
            .collect();
        let (interval, topic) = (config.keys.check_interval, config.kafka.keks_topic.clone());
        tokio::spawn(async move {
            loop {
                crate::lifecycle::monitor::check_all(&tenants, &views, &producer, &topic).await;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = views.wake.notified() => {}
                }
            }
        })
    };
    let mut stats = RunStats::default();
    tracing::info!(group = %config.kafka.group_id, topics = ?topics, tenants = tenants.len(), delivery = ?config.kafka.delivery, seal_threads = config.batch.seal_threads.get(), "worker started");

    // Batches produced and not yet acknowledged, oldest first; their offsets are committed in
    // this order once acknowledged. Exactly-once runs one batch (one transaction) at a time.
    let max_in_flight = if transactional {
        1
    } else {
        config.batch.in_flight.get()
    };
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut seq = 0u64;
    let settle = |f: InFlight,
                  produced: Result<Result<(), WorkerError>, tokio::task::JoinError>,
                  stopping: bool,
                  stats: &mut RunStats|
     -> Result<(), WorkerError> {
        produced.map_err(|e| WorkerError::Produce {
            topic: "(producer task)".into(),
            reason: e.to_string(),
        })??;
        if let Ok(mut pending) = consumer.context().pending.lock() {
            pending.retain(|b| b.seq != f.seq);
        }
        // only partitions still assigned: a revoked one was committed by the rebalance, and a
        // late commit here could move its new owner's offset back
        let assigned = consumer.assignment().unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        let mut kept = Vec::new();
        for ((t, p), o) in f.next {
            if assigned
                .elements()
                .iter()
                .any(|e| e.topic() == t && e.partition() == p)
            {
                let _ = tpl.add_partition_offset(&t, p, Offset::Offset(o));
                kept.push(((t, p), o));
            }
        }
        if let Ok(mut acked) = consumer.context().acked.lock() {
            acked.extend(kept);
        }
        let mode = if stopping {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if tpl.count() == 0 {
            account(stats, &health, f.records, f.started);
            return Ok(());
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Not fatal: the records are archived; another member may own the partition.
            tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (same byok.src)");
        }
        account(stats, &health, f.records, f.started);
        Ok(())
    };

    let mut paused = Paused::default();
    let mut drains = AutoDrain::default();
    loop {
        paused.resume_ready(&consumer, &views);
        if config.keys.drain_on_restore {
            drains.look(&config, &consumer, &topics, &views, &mut stats);
        }
        // commit what the broker acknowledged, oldest batch first
        while in_flight.front().is_some_and(|f| f.done.is_finished()) {
            if let Some(mut f) = in_flight.pop_front() {
                let r = (&mut f.done).await;
                settle(f, r, false, &mut stats)?;
            }
        }
        if *shutdown.borrow() {
            break;
        }
        if in_flight.len() >= max_in_flight {
            if let Some(mut f) = in_flight.pop_front() {
                let r = tokio::select! {
                    r = &mut f.done => r,
                    _ = shutdown.changed() => { in_flight.push_front(f); continue; }
                };
                settle(f, r, false, &mut stats)?;
            }
            continue;
        }
        // wait for a first record, a stop, or the oldest batch's acknowledgement
        let mut oldest = in_flight.pop_front();
        let first = tokio::select! {
            biased;
            _ = shutdown.changed() => None,
            r = async {
                match oldest.as_mut() {
                    Some(f) => (&mut f.done).await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(f) = oldest.take() {
                    settle(f, r, false, &mut stats)?;
                }
                None
            }
            m = consumer.recv() => Some(m),
            // paused partitions and keys that came back are looked at every second, traffic or not
            _ = tokio::time::sleep(Duration::from_secs(1)), if !paused.is_empty() || config.keys.drain_on_restore => None,
        };
        if let Some(f) = oldest {
            in_flight.push_front(f);
        }
        let Some(first) = first else { continue };
        // from here the batch is collected to its end (never cancelled: its records are
        // consumed)
        let mut batch = Arc::new(collect(first, &consumer, &config).await);
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        let (mut next, mut tpl) = commit_points(&batch);
        // Retry the batch while a key provider is unavailable or a transaction aborted: Kafka
        // keeps the data, nothing was committed.
        let mut backoff = Duration::from_millis(200);
        loop {
            if transactional {
                producer
                    .begin_transaction()
                    .map_err(client("producer (begin transaction)"))?;
                deks.begin_transaction();
            }
            let sealed = match stage {
                Stage::Seal => {
                    seal_batch(
                        &batch,
                        &config,
                        &tenants,
                        &quarantine,
                        &mut deks,
                        &producer,
                        &pool,
                        &mut stats,
                        &views,
                        &mut seen,
                    )
                    .await
                }
                Stage::PassThrough => Ok(pass_through(&batch, &config, &mut seen.shared)),
            };
            let outs = match sealed {
                Ok(outs) => outs,
                Err(DekError::Waiting { tenants, detail }) => {
                    if transactional {
                        abort(&producer, &mut deks);
                    }
                    let kept = paused.hold_back(
                        &consumer,
                        &batch,
                        &config,
                        &seen.revoked,
                        &tenants,
                        &detail,
                    );
                    batch = Arc::new(kept);
                    (next, tpl) = commit_points(&batch);
                    if batch.is_empty() {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    if transactional {
                        abort(&producer, &mut deks);
                    }
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not sealed; retrying (nothing is committed)");
                    if *shutdown.borrow() && started.elapsed() > config.worker.drain_deadline {
                        return Err(WorkerError::Produce {
                            topic: "(sealing)".into(),
                            reason: e.to_string(),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            if !transactional {
                let p = producer.clone();
                let status = Arc::new(AtomicU8::new(0));
                seq += 1;
                if let Ok(mut pending) = consumer.context().pending.lock() {
                    pending.push_back(Pending {
                        seq,
                        next: next.clone(),
                        status: Arc::clone(&status),
                    });
                }
                in_flight.push_back(InFlight {
                    done: tokio::spawn(async move {
                        let r = produce_all(&p, &outs).await;
                        status.store(if r.is_ok() { 1 } else { 2 }, Ordering::Release);
                        r
                    }),
                    seq,
                    next,
                    records: batch.len(),
                    started,
                });
                break;
            }
            // After a stop request the batch gets worker.drain_deadline to be acknowledged;
            // past it the worker exits without committing (the records are redelivered).
            let produced = tokio::select! {
                r = produce_all(&producer, &outs) => r,
                _ = drain_deadline(shutdown.clone(), config.worker.drain_deadline) => Err(drain_passed()),
            };
            let committed = produced.and_then(|()| {
                let meta = consumer
                    .group_metadata()
                    .ok_or_else(|| WorkerError::Produce {
                        topic: "(transaction)".into(),
                        reason: "no consumer group metadata".into(),
                    })?;
                let t = Timeout::After(Duration::from_secs(60));
                producer
                    .send_offsets_to_transaction(&tpl, &meta, t)
                    .and_then(|()| producer.commit_transaction(t))
                    .map_err(|e| WorkerError::Produce {
                        topic: "(transaction)".into(),
                        reason: e.to_string(),
                    })
            });
            match committed {
                Ok(()) => {
                    account(&mut stats, &health, batch.len(), started);
                    break;
                }
                Err(e) => {
                    abort(&producer, &mut deks);
                    tracing::warn!(error = %e, "transaction aborted; the batch is sealed again under new nonces");
                    metrics::counter!("byok_transactions_aborted_total").increment(1);
                    if *shutdown.borrow() && started.elapsed() > config.worker.drain_deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        stats.deks_created = deks.created();
        if let Some(age) = deks.oldest_age() {
            metrics::gauge!("byok_dek_oldest_age_seconds").set(age.as_secs_f64());
        }
    }
    // Drain: every batch in flight gets worker.drain_deadline to be acknowledged; past it the
    // worker exits without committing it (its records are redelivered, nothing is lost).
    health.set_stopping();
    let deadline = tokio::time::sleep(config.worker.drain_deadline);
    tokio::pin!(deadline);
    while let Some(mut f) = in_flight.pop_front() {
        let r = tokio::select! {
            r = &mut f.done => r,
            _ = &mut deadline => {
                tracing::warn!(batches = in_flight.len() + 1, "drain deadline passed with records unacknowledged; exiting without committing them");
                return Err(drain_passed());
            }
        };
        settle(f, r, true, &mut stats)?;
    }
    monitor.abort();
    drains.stop(config.worker.drain_deadline, &mut stats).await;
    let _ = producer.flush(Timeout::After(config.worker.drain_deadline));
    tracing::info!(?stats, "worker stopped");
    Ok(stats)
}

/// Drains the quarantine when a tenant's key comes back, in one member of the group: the one
/// assigned partition 0 of the first input topic (it also drains once on becoming that member,
/// for keys that came back while it was not). A drain runs in the background, one at a time;
/// it is idempotent (records already archived are not written again), so a leadership change
/// mid-drain loses nothing.
#[derive(Default)]
struct AutoDrain {
    task: Option<
        tokio::task::JoinHandle<
            Result<crate::lifecycle::drain::DrainStats, crate::archive::ReadError>,
        >,
    >,
    again: bool,
    leader: bool,
    looked: Option<Instant>,
}

impl AutoDrain {
    fn look<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        config: &Config,
        consumer: &StreamConsumer<C>,
        topics: &[&str],
        views: &KeyViews,
        stats: &mut RunStats,
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
            self.collect(stats);
        }
        if self.again && self.task.is_none() {
            self.again = false;
            let config = config.clone();
            self.task = Some(tokio::spawn(async move {
                crate::lifecycle::drain::drain_quarantine(
                    &config,
                    &crate::lifecycle::drain::DrainOptions::default(),
                    |_, _| {},
                )
                .await
            }));
        }
    }

    fn collect(&mut self, stats: &mut RunStats) {
        let Some(task) = self.task.take() else { return };
        match futures::FutureExt::now_or_never(task) {
            Some(Ok(Ok(d))) => {
                let n = d.moved + d.resealed;
                stats.drained += n;
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
    async fn stop(&mut self, deadline: Duration, stats: &mut RunStats) {
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
        self.collect(stats);
    }
}

/// The next offset to commit per partition for a batch, as a map and as a list.
fn commit_points(batch: &[OwnedMessage]) -> (BTreeMap<(String, i32), i64>, TopicPartitionList) {
    let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next
            .entry((m.topic().to_owned(), m.partition()))
            .or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, p), o) in &next {
        let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
    }
    (next, tpl)
}

/// Partitions paused because a tenant in them has a vault that does not answer and no public key
/// known to wrap a DEK locally. Only those partitions wait (from that tenant's first record on,
/// other tenants' records after it included, as offsets are committed in order); every other
/// partition keeps flowing. Kafka keeps the data; nothing is committed past the held record.
#[derive(Debug, Default)]
struct Paused {
    /// (topic, partition) -> the tenants it waits for, and since when.
    parts: BTreeMap<(String, i32), (BTreeSet<String>, Instant)>,
}

/// A paused partition is tried again after this long even without news from the monitor (the
/// attempt pauses it again if the vault still does not answer).
const PAUSED_RETRY: Duration = Duration::from_secs(60);

impl Paused {
    fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Takes out of `batch` each partition's records from its first record owned by one of
    /// `waiting` on, seeks those partitions back to that record and pauses them; returns the
    /// records kept.
    fn hold_back<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        consumer: &StreamConsumer<C>,
        batch: &[OwnedMessage],
        config: &Config,
        revoked: &Revoked,
        waiting: &[String],
        detail: &str,
    ) -> Vec<OwnedMessage> {
        let mut first: BTreeMap<(String, i32), (i64, String)> = BTreeMap::new();
        for m in batch {
            let route = route(m, config, revoked);
            if waiting.iter().any(|t| t == route.owner()) {
                let e = first
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_insert((m.offset(), route.owner().to_owned()));
                if m.offset() < e.0 {
                    *e = (m.offset(), route.owner().to_owned());
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for ((t, p), (offset, tenant)) in &first {
            let _ = tpl.add_partition(t, *p);
            let e = self
                .parts
                .entry((t.clone(), *p))
                .or_insert_with(|| (BTreeSet::new(), Instant::now()));
            e.0.insert(tenant.clone());
            e.1 = Instant::now();
            if let Err(e) = consumer.seek(t, *p, Offset::Offset(*offset), Duration::from_secs(5)) {
                tracing::warn!(topic = %t, partition = p, offset, error = %e, "cannot seek back a paused partition; its records come again after a rebalance");
            }
            tracing::warn!(tenant = %tenant, topic = %t, partition = p, offset, detail, "vault unavailable and no public key of the tenant known: partition paused from this record (Kafka keeps the data) until the vault answers");
        }
        if let Err(e) = consumer.pause(&tpl) {
            tracing::warn!(error = %e, "cannot pause partitions");
        }
        metrics::gauge!("byok_partitions_paused").set(self.parts.len() as f64);
        batch
            .iter()
            .filter(|m| {
                first
                    .get(&(m.topic().to_owned(), m.partition()))
                    .is_none_or(|(o, _)| m.offset() < *o)
            })
            .cloned()
            .collect()
    }

    /// Resumes the partitions whose tenants now have a public key (the monitor reached their
    /// vault), or that waited [`PAUSED_RETRY`].
    fn resume_ready<C: rdkafka::consumer::ConsumerContext>(
        &mut self,
        consumer: &StreamConsumer<C>,
        views: &KeyViews,
    ) {
        if self.parts.is_empty() {
            return;
        }
        let ready: Vec<(String, i32)> = self
            .parts
            .iter()
            .filter(|(_, (tenants, since))| {
                since.elapsed() >= PAUSED_RETRY
                    || tenants.iter().all(|t| views.public_key(t).is_some())
            })
            .map(|(k, _)| k.clone())
            .collect();
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
        metrics::gauge!("byok_partitions_paused").set(self.parts.len() as f64);
    }
}

/// What the batch loop last read of the key views.
#[derive(Default)]
struct Seen {
    generation: Option<u64>,
    views: HashMap<String, KeyView>,
    revoked: Revoked,
    shared: Shared,
}

/// A batch produced and not yet acknowledged.
struct InFlight {
    done: tokio::task::JoinHandle<Result<(), WorkerError>>,
    seq: u64,
    next: BTreeMap<(String, i32), i64>,
    records: usize,
    started: Instant,
}

fn drain_passed() -> WorkerError {
    WorkerError::Produce {
        topic: "(drain)".into(),
        reason: "drain deadline passed before the broker acknowledged the batch".into(),
    }
}

/// Counts a batch that was produced, acknowledged and committed.
fn account(stats: &mut RunStats, health: &Health, records: usize, started: Instant) {
    stats.records_in += records as u64;
    stats.batches += 1;
    health.batch_done(records as u64);
    metrics::counter!("byok_records_in_total").increment(records as u64);
    metrics::histogram!("byok_batch_records").record(records as f64);
    metrics::histogram!("byok_batch_seconds").record(started.elapsed().as_secs_f64());
}

/// Describes the worker's metrics and makes every counter visible from the start (at 0), so
/// dashboards and alerts see a series before the first event.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "byok_records_in_total",
        Unit::Count,
        "captured records consumed, produced and committed"
    );
    describe_counter!(
        "byok_records_sealed_total",
        Unit::Count,
        "records sealed (archive and quarantine)"
    );
    describe_counter!(
        "byok_records_quarantined_total",
        Unit::Count,
        "records sealed into the quarantine, by reason"
    );
    describe_counter!(
        "byok_deks_created_total",
        Unit::Count,
        "DEKs made, by tenant"
    );
    describe_counter!(
        "byok_rebalances_total",
        Unit::Count,
        "consumer-group rebalances, by kind"
    );
    describe_counter!(
        "byok_commit_failures_total",
        Unit::Count,
        "offset commits that failed (records may be redelivered)"
    );
    describe_counter!(
        "byok_quarantine_drained_total",
        Unit::Count,
        "quarantine records moved or re-sealed into the archive by the worker's drains"
    );
    describe_counter!(
        "byok_transactions_aborted_total",
        Unit::Count,
        "exactly-once transactions aborted and retried"
    );
    describe_counter!(
        "byok_vault_calls_total",
        Unit::Count,
        "Key Vault and Entra ID calls, by tenant, operation and outcome"
    );
    describe_histogram!(
        "byok_vault_call_seconds",
        Unit::Seconds,
        "Key Vault call latency"
    );
    describe_histogram!("byok_batch_records", Unit::Count, "records per batch");
    describe_histogram!(
        "byok_batch_seconds",
        Unit::Seconds,
        "batch latency from collected to acknowledged"
    );
    describe_gauge!(
        "byok_dek_oldest_age_seconds",
        Unit::Seconds,
        "age of the oldest DEK still sealing"
    );
    describe_gauge!(
        "byok_consumer_lag_records",
        Unit::Count,
        "records behind the end of each input partition"
    );
    describe_gauge!(
        "byok_consumer_lag_records_total",
        Unit::Count,
        "records behind, all assigned partitions"
    );
    describe_gauge!(
        "byok_partitions_paused",
        Unit::Count,
        "input partitions paused: a tenant in them has no answering vault and no known public key"
    );
    metrics::gauge!("byok_partitions_paused").set(0.0);
    for c in [
        "byok_records_in_total",
        "byok_records_sealed_total",
        "byok_commit_failures_total",
        "byok_transactions_aborted_total",
        "byok_quarantine_drained_total",
    ] {
        metrics::counter!(c).increment(0);
    }
    for kind in ["assign", "revoke"] {
        metrics::counter!("byok_rebalances_total", "kind" => kind).increment(0);
    }
    for r in QuarantineReason::ALL {
        metrics::counter!("byok_records_quarantined_total", "reason" => r.as_str()).increment(0);
    }
}

/// Aborts the open transaction; the DEKs made in it lose their registry records, so they are
/// dropped.
fn abort(producer: &FutureProducer, deks: &mut DekSet) {
    if let Err(e) = producer.abort_transaction(Timeout::After(Duration::from_secs(60))) {
        tracing::warn!(error = %e, "aborting the transaction failed");
    }
    deks.abort_transaction();
}

/// Asks each distinct vault for its key's state once; marks the worker's vaults checked when all
/// answered (any answer, a revoked key included: the vault is reachable). Retries the ones that
/// did not.
async fn check_vaults(tenants: Vec<Arc<TenantKms>>, health: Arc<Health>) {
    use crate::kms::{KeyProvider, KeyState};
    let mut pending = tenants;
    let mut wait = Duration::from_secs(1);
    loop {
        let states = futures::future::join_all(pending.iter().map(|t| t.key_state())).await;
        pending = pending
            .into_iter()
            .zip(states)
            .filter_map(|(t, s)| match s {
                KeyState::Unavailable { why, detail, .. } => {
                    tracing::warn!(tenant = t.tenant(), outage = ?why, detail, "key vault not reachable yet");
                    Some(t)
                }
                _ => None,
            })
            .collect();
        if pending.is_empty() {
            health.set_vaults_checked();
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

/// Resolves `deadline` after a stop is requested (never if none is).
async fn drain_deadline(mut shutdown: watch::Receiver<bool>, deadline: Duration) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tokio::time::sleep(deadline).await;
}

/// Collects one batch from its first record: takes more until the count, byte or time limit.
async fn collect(
    first: rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>,
    consumer: &StreamConsumer<Ctx>,
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

fn route(m: &OwnedMessage, config: &Config, revoked: &Revoked) -> Route {
    let headers: Vec<(&str, Option<&[u8]>)> = m
        .headers()
        .map(|h| h.iter().map(|h| (h.key, h.value)).collect())
        .unwrap_or_default();
    match tenant_of(headers, m.payload()) {
        TenantOf::Missing(why) => Route::Quarantine {
            reason: QuarantineReason::Malformed,
            tenant: None,
            detail: why.to_owned(),
        },
        TenantOf::Found(t) => match TenantId::parse(&t)
            .ok()
            .and_then(|id| config.tenants.get(&id))
        {
            None => Route::Quarantine {
                reason: QuarantineReason::UnknownTenant,
                detail: "tenant is not configured".to_owned(),
                tenant: Some(t),
            },
            Some(tenant) if !tenant.byok_enabled => Route::Quarantine {
                reason: QuarantineReason::ByokDisabled,
                detail: "BYOK is not enabled for this tenant".to_owned(),
                tenant: Some(t),
            },
            Some(tenant) => match revoked.get(tenant.id.as_str()) {
                None => Route::Archive(tenant.id.clone()),
                Some((reason, detail, Some(_))) => Route::Revoked {
                    tenant: tenant.id.clone(),
                    reason: *reason,
                    detail: detail.clone(),
                },
                // no public key ever seen for it: only the operator's key can take it
                Some((reason, detail, None)) => Route::Quarantine {
                    reason: *reason,
                    detail: format!(
                        "{detail}; no public key of the tenant known, sealed under the operator's quarantine key"
                    ),
                    tenant: Some(t),
                },
            },
        },
    }
}

/// Records sealed per pool task: big enough to amortise the hand-over, small enough to spread a
/// batch over the pool's threads.
const CHUNK_BYTES: u64 = 256 << 10;
/// New DEKs made concurrently (vault round trips and registry acknowledgements overlap).
const NEW_DEKS_AT_ONCE: usize = 32;

/// Records of one owner to seal under one DEK.
struct Job {
    owner: String,
    dek: Arc<ActiveDek>,
    idx: Vec<usize>,
}

/// What sealing a job gave: sealed values by record index, and the records left unsealed
/// because the DEK reached a limit.
struct Done {
    owner: String,
    dek: Arc<ActiveDek>,
    sealed: Vec<(usize, Vec<u8>)>,
    left: Vec<usize>,
}

fn seal_job(job: Job, batch: &[OwnedMessage], compression: crate::envelope::Compression) -> Done {
    let bytes: u64 = job
        .idx
        .iter()
        .map(|&i| batch[i].payload().map_or(0, <[u8]>::len) as u64)
        .sum();
    let mut sealed = Vec::with_capacity(job.idx.len());
    let mut left = Vec::new();
    match job.dek.reserve(job.idx.len() as u64, bytes) {
        Err(_) => left = job.idx,
        Ok(mut block) => {
            let take = (block.remaining() as usize).min(job.idx.len());
            for &i in &job.idx[..take] {
                let m = &batch[i];
                let plain = m.payload().unwrap_or_default();
                let mut value = Vec::with_capacity(plain.len() + envelope::OVERHEAD);
                match envelope::seal_next(
                    &mut block,
                    &job.owner,
                    m.key(),
                    plain,
                    compression,
                    &mut value,
                ) {
                    Ok(_) => sealed.push((i, value)),
                    Err(SealError::BlockUsedUp) => left.push(i),
                    Err(e) => {
                        // A tenant id or key too long for the AAD: reported, and the batch is
                        // not committed past it (see seal_batch).
                        tracing::error!(error = %e, src = %SourceRef::new(m.topic(), m.partition(), m.offset()), "record cannot be sealed");
                    }
                }
            }
            left.extend_from_slice(&job.idx[take..]);
        }
    }
    Done {
        owner: job.owner,
        dek: job.dek,
        sealed,
        left,
    }
}

/// Splits an owner's records into jobs of about [`CHUNK_BYTES`].
fn jobs_for(
    owner: &str,
    dek: &Arc<ActiveDek>,
    idx: &[usize],
    batch: &[OwnedMessage],
    out: &mut Vec<Job>,
) {
    let mut start = 0;
    let mut bytes = 0u64;
    for (n, &i) in idx.iter().enumerate() {
        bytes += batch[i].payload().map_or(0, <[u8]>::len) as u64 + 64;
        if bytes >= CHUNK_BYTES || n + 1 == idx.len() {
            out.push(Job {
                owner: owner.to_owned(),
                dek: Arc::clone(dek),
                idx: idx[start..=n].to_vec(),
            });
            start = n + 1;
            bytes = 0;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn seal_batch(
    batch: &Arc<Vec<OwnedMessage>>,
    config: &Config,
    tenants: &BTreeMap<TenantId, Arc<TenantKms>>,
    quarantine: &TenantKms,
    deks: &mut DekSet,
    producer: &FutureProducer,
    pool: &rayon::ThreadPool,
    stats: &mut RunStats,
    views: &KeyViews,
    seen: &mut Seen,
) -> Result<Vec<Out>, DekError> {
    // The key views for this batch: a tenant whose key changed (rotated, revoked, restored)
    // gets a new DEK; a revoked tenant's DEKs leave memory. Read again only when they moved.
    if seen.generation != Some(views.generation()) {
        seen.generation = Some(views.generation());
        let snapshot = views.snapshot();
        for (tenant, view) in &snapshot {
            let changed = match (seen.views.get(tenant), view) {
                // an outage changes nothing; the first view of a usable key neither (its DEK
                // was wrapped under the version the provider found usable)
                (_, KeyView::Unavailable)
                | (Some(KeyView::Unavailable) | None, KeyView::Usable(_)) => false,
                (old, new) => old != Some(new),
            };
            seen.views.insert(tenant.clone(), view.clone());
            if changed {
                // the version in use changed while the key stays usable: move the DEK in
                // memory onto the new version first (the old one may no longer decrypt)
                if matches!(view, KeyView::Usable(_))
                    && let Some(kms) = TenantId::parse(tenant).ok().and_then(|id| tenants.get(&id))
                    && let Err(e) = deks.rewrap_active(tenant, kms.as_ref(), producer).await
                {
                    tracing::warn!(tenant, error = %e, "the DEK in use could not be rewrapped onto the new version");
                }
                deks.forget(tenant);
            }
        }
        seen.revoked = views.revoked(&snapshot);
    }
    let revoked = &seen.revoked;
    let (routes, mut todo) = route_all(batch, config, revoked);
    let batch_bytes: u64 = batch
        .iter()
        .map(|m| m.payload().map_or(0, <[u8]>::len) as u64)
        .sum();
    let mut values: Vec<Option<(Vec<u8>, DekId)>> = (0..batch.len()).map(|_| None).collect();
    while !todo.is_empty() {
        // new DEKs for the owners without one, many at a time (a cold start with many tenants
        // would otherwise wait for one vault round trip and one registry ack per tenant)
        let missing: Vec<String> = todo
            .keys()
            .filter(|o| deks.current(o).is_none())
            .cloned()
            .collect();
        if !missing.is_empty() {
            let set = &*deks;
            let made: Vec<(String, Result<ActiveDek, DekError>)> =
                futures::stream::iter(missing.into_iter().map(|owner| async move {
                    let r =
                        new_dek(&owner, revoked, tenants, quarantine, set, producer, views).await;
                    (owner, r)
                }))
                .buffer_unordered(NEW_DEKS_AT_ONCE)
                .collect()
                .await;
            let mut failed = None;
            let mut waiting: Option<(Vec<String>, String)> = None;
            for (owner, r) in made {
                match r {
                    Ok(dek) => {
                        deks.install(&owner, dek);
                    }
                    Err(DekError::Waiting { tenants, detail }) => {
                        waiting
                            .get_or_insert_with(|| (Vec::new(), detail))
                            .0
                            .extend(tenants);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some((tenants, detail)) = waiting {
                return Err(DekError::Waiting { tenants, detail });
            }
        }
        let mut jobs = Vec::new();
        for (owner, idx) in &todo {
            let dek = deks
                .current(owner)
                .ok_or_else(|| DekError::Sealing(format!("the new DEK of {owner} cannot seal")))?;
            jobs_for(owner, &dek, idx, batch, &mut jobs);
        }
        let compression = config.dek.compression;
        // small batches are sealed on the worker's task (a thread hop would cost more)
        let done: Vec<Done> = if batch_bytes >= config.batch.parallel_min_bytes && jobs.len() > 1 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let batch = Arc::clone(batch);
            pool.spawn(move || {
                use rayon::prelude::*;
                let done = jobs
                    .into_par_iter()
                    .map(|j| seal_job(j, &batch, compression))
                    .collect();
                let _ = tx.send(done);
            });
            rx.await
                .map_err(|_| DekError::Sealing("the sealing pool stopped".into()))?
        } else {
            jobs.into_iter()
                .map(|j| seal_job(j, batch, compression))
                .collect()
        };
        todo.clear();
        for d in done {
            let id = d.dek.id();
            for (i, v) in d.sealed {
                values[i] = Some((v, id));
            }
            if !d.left.is_empty() {
                // the DEK reached a limit: the rest goes under a new one
                if deks
                    .current(&d.owner)
                    .is_some_and(|c| Arc::ptr_eq(&c, &d.dek))
                {
                    deks.forget(&d.owner);
                }
                todo.entry(d.owner).or_default().extend(d.left);
            }
        }
        for idx in todo.values_mut() {
            idx.sort_unstable();
        }
    }
    let outs = build_outs(batch, &routes, values, config, stats, &mut seen.shared)?;
    metrics::counter!("byok_records_sealed_total").increment(outs.len() as u64);
    Ok(outs)
}

/// A new DEK for `owner`: wrapped by its key in Key Vault; wrapped locally with its last known
/// public key when its key is revoked (the records go to the quarantine) or its vault does not
/// answer (the DEK is proven through Key Vault later); wrapped by the operator's key for the
/// quarantine. A revocation found here is marked for the next attempt of the batch.
async fn new_dek(
    owner: &str,
    revoked: &Revoked,
    tenants: &BTreeMap<TenantId, Arc<TenantKms>>,
    quarantine: &TenantKms,
    set: &DekSet,
    producer: &FutureProducer,
    views: &KeyViews,
) -> Result<ActiveDek, DekError> {
    if owner == QUARANTINE_TENANT {
        return set.make(owner, quarantine, producer).await;
    }
    if let Some((_, _, Some(public))) = revoked.get(owner) {
        metrics::counter!("byok_local_wraps_total", "why" => "key-revoked").increment(1);
        return Ok(set.make_local(owner, public, producer).await?.0);
    }
    let kms = TenantId::parse(owner)
        .ok()
        .and_then(|id| tenants.get(&id))
        .ok_or_else(|| {
            DekError::Kms(KmsError::Setup {
                tenant: owner.to_owned(),
                detail: "no key provider".into(),
            })
        })?;
    // With a public key to fall back on, one attempt that never waits (a throttled or
    // unreachable vault must not hold up the batch's other tenants); without, the retries.
    let made = if views.public_key(owner).is_some() {
        set.make(owner, &crate::kms::WrapOnce(kms.as_ref()), producer)
            .await
    } else {
        set.make(owner, kms.as_ref(), producer).await
    };
    match made {
        Err(DekError::Kms(KmsError::Unavailable { why, detail, .. })) => {
            let Some(public) = views.public_key(owner) else {
                // nothing to wrap with: the tenant's records wait for the vault (their
                // partitions are paused; Kafka keeps the data)
                views.wake.notify_one();
                return Err(DekError::Waiting {
                    tenants: vec![owner.to_owned()],
                    detail: format!("{why}: {detail}"),
                });
            };
            tracing::warn!(tenant = owner, outage = %why, kek = %public.kid, "vault unavailable: new DEK wrapped locally, to be proven through Key Vault");
            let (dek, record) = set.make_local(owner, &public, producer).await?;
            views.to_verify(record);
            Ok(dek)
        }
        Err(DekError::Kms(KmsError::Revoked { why, detail, .. })) => {
            views.mark_revoked(owner, why, detail.clone());
            Err(DekError::Kms(KmsError::Revoked {
                tenant: owner.to_owned(),
                key: String::new(),
                why,
                detail,
            }))
        }
        other => other,
    }
}

/// Routes every record and groups the record indices by DEK owner (tenant or quarantine).
fn route_all(
    batch: &[OwnedMessage],
    config: &Config,
    revoked: &Revoked,
) -> (Vec<Route>, BTreeMap<String, Vec<usize>>) {
    let routes: Vec<Route> = batch.iter().map(|m| route(m, config, revoked)).collect();
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in routes.iter().enumerate() {
        groups.entry(r.owner().to_owned()).or_default().push(i);
    }
    (routes, groups)
}

/// The output records of a sealed batch, with their v1 headers.
fn build_outs(
    batch: &[OwnedMessage],
    routes: &[Route],
    values: Vec<Option<(Vec<u8>, DekId)>>,
    config: &Config,
    stats: &mut RunStats,
    shared: &mut Shared,
) -> Result<Vec<Out>, DekError> {
    let mut outs = Vec::with_capacity(batch.len());
    let mut quarantined: BTreeMap<&'static str, u64> = BTreeMap::new();
    for ((m, route), value) in batch.iter().zip(routes).zip(values) {
        let Some((value, dek)) = value else {
            return Err(DekError::Sealing(format!(
                "record {} cannot be sealed (see the log); the batch is not committed",
                SourceRef::format(m.topic(), m.partition(), m.offset())
            )));
        };
        let (topic, tenant) = shared.owner(route, config);
        let headers = match route {
            Route::Archive(_) => {
                stats.archived += 1;
                let src = SourceRef::format(m.topic(), m.partition(), m.offset());
                ArchiveHeaders::shared_pairs(&tenant, &shared.dek(dek), src).to_vec()
            }
            Route::Revoked {
                tenant,
                reason,
                detail,
            } => {
                *quarantined.entry(reason.as_str()).or_default() += 1;
                let src = SourceRef::new(m.topic(), m.partition(), m.offset());
                QuarantineHeaders::new(*reason, Some(tenant.to_string()), src, detail, dek)
                    .to_pairs()
                    .into_iter()
                    .map(|(k, v)| (k, Bytes::from(v)))
                    .collect()
            }
            Route::Quarantine {
                reason,
                tenant,
                detail,
            } => {
                *quarantined.entry(reason.as_str()).or_default() += 1;
                let src = SourceRef::new(m.topic(), m.partition(), m.offset());
                QuarantineHeaders::new(*reason, tenant.clone(), src, detail, dek)
                    .to_pairs()
                    .into_iter()
                    .map(|(k, v)| (k, Bytes::from(v)))
                    .collect()
            }
        };
        outs.push(Out {
            topic,
            key: m.key().map(<[u8]>::to_vec),
            value,
            headers,
        });
    }
    for (r, n) in quarantined {
        *stats.quarantined.entry(r.to_owned()).or_default() += n;
        metrics::counter!("byok_records_quarantined_total", "reason" => r).increment(n);
    }
    Ok(outs)
}

/// One batch through tenant lookup, sealing and record building, with every owner's DEK given:
/// what the worker does to a batch between consuming and producing, for the criterion bench.
/// Returns the output bytes (values and headers). `pool`: seal on it, as large batches are.
#[doc(hidden)]
pub fn bench_batch(
    batch: &[OwnedMessage],
    config: &Config,
    deks: &HashMap<String, Arc<ActiveDek>>,
    pool: Option<&rayon::ThreadPool>,
    pass_through_only: bool,
) -> usize {
    let outs = if pass_through_only {
        pass_through(batch, config, &mut Shared::default())
    } else {
        let (routes, groups) = route_all(batch, config, &Revoked::new());
        let mut jobs = Vec::new();
        for (owner, idx) in &groups {
            if let Some(dek) = deks.get(owner) {
                jobs_for(owner, dek, idx, batch, &mut jobs);
            }
        }
        let seal = |j| seal_job(j, batch, config.dek.compression);
        let done: Vec<Done> = match pool {
            Some(pool) => pool.install(|| {
                use rayon::prelude::*;
                jobs.into_par_iter().map(seal).collect()
            }),
            None => jobs.into_iter().map(seal).collect(),
        };
        let mut values: Vec<Option<(Vec<u8>, DekId)>> = (0..batch.len()).map(|_| None).collect();
        for d in done {
            let id = d.dek.id();
            for (i, v) in d.sealed {
                values[i] = Some((v, id));
            }
        }
        build_outs(
            batch,
            &routes,
            values,
            config,
            &mut RunStats::default(),
            &mut Shared::default(),
        )
        .unwrap_or_default()
    };
    outs.iter()
        .map(|o| {
            o.value.len()
                + o.headers
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
        })
        .sum()
}

/// The load harness's baseline: the same routing, batching and producing, no sealing.
fn pass_through(batch: &[OwnedMessage], config: &Config, shared: &mut Shared) -> Vec<Out> {
    let routes: Vec<Route> = batch
        .iter()
        .map(|m| route(m, config, &Revoked::new()))
        .collect();
    batch
        .iter()
        .zip(&routes)
        .map(|(m, route)| {
            let (topic, tenant) = shared.owner(route, config);
            let src = SourceRef::format(m.topic(), m.partition(), m.offset());
            Out {
                topic,
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: vec![("byok.tenant", tenant), ("byok.src", Bytes::from(src))],
            }
        })
        .collect()
}

async fn produce_all(producer: &FutureProducer, outs: &[Out]) -> Result<(), WorkerError> {
    let sends = outs.iter().map(|o| {
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
        producer.send(rec, Timeout::Never)
    });
    for (r, o) in futures::future::join_all(sends).await.into_iter().zip(outs) {
        if let Err((e, _)) = r {
            return Err(WorkerError::Produce {
                topic: o.topic.to_string(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}
