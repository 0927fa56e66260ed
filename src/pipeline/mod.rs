//! `byok run`: a consumer-group member that reads captured messages in batches, seals each under
//! its tenant's DEK, produces the sealed records, and commits the source offsets only after every
//! record produced from them was acknowledged (at-least-once; duplicates after a crash carry the
//! same `byok.src`, which readers drop), or in one transaction per batch (exactly-once).
//!
//! ```text
//!  input topics ──► source ──► route ──► seal ───────────► sink ──► archive / quarantine
//!                   collect    tenant    DEK per owner      produce, in flight,
//!                   pause      scan      (deks, keyring)    commit points
//!                   offsets                 │
//!                      ▲                    └──► registry (byok.deks) first
//!                      └──────── commit once acknowledged ◄──┘
//!  beside it: lifecycle::monitor (key states, byok.keks), lifecycle::autodrain, watchdog (/live)
//! ```
//!
//! - [`source`]: the consumer's context, batch collection, offset tracker; [`pause`]: partitions
//!   paused while a tenant's key cannot be had, resumed when it can.
//! - [`scan`] and [`route`]: which tenant a record belongs to, and where it goes.
//! - [`stage`]: the [`Stage`] the loop drives; [`seal`]: the sealing stage ([`Sealer`](seal::Sealer)).
//! - [`sink`]: producing, the batches in flight, commits and transactions.
//! - [`refusal`]: records the broker refuses (too large, topic missing, not authorized).
//! - [`health`], [`http`], [`metrics`]: `/health`, `/live`, `/metrics`.
//!
//! This module is the loop only: it must never seal, route or parse a record itself. A record
//! that waits (its tenant's vault is unreachable and no public key is known) pauses its
//! partition; a batch that cannot be sealed now is retried, never dropped and never committed.

pub mod failpoint;
pub mod health;
pub mod http;
pub mod metrics;
pub mod pause;
pub mod refusal;
pub mod route;
pub mod scan;
pub mod seal;
pub mod sink;
pub mod source;
pub mod stage;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use tokio::sync::watch;

pub use seal::Sealer;
pub use stage::{Out, RunStats, Stage, StageError};

use self::health::Health;
use self::pause::Paused;
use self::sink::{Sink, SinkError};
use self::source::{OffsetTracker, Offsets, SourceContext, TrackerPoisoned, holds};
use crate::config::{Config, Delivery};
use crate::kafka::{consumer_config, producer_config};
use crate::keyring::Keyring;
use crate::kms::{KmsError, TenantKms};
use crate::lifecycle::autodrain::AutoDrain;
use crate::lifecycle::monitor::KeyViews;

/// The worker stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A Kafka client could not be made or set up.
    #[error("Kafka {client}: {source}")]
    Client {
        /// Which client.
        client: &'static str,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// A key provider could not be set up.
    #[error(transparent)]
    Keys(#[from] KmsError),
    /// The sealing thread pool could not start.
    #[error("the sealing pool could not start: {0}")]
    SealingPool(#[from] rayon::ThreadPoolBuildError),
    /// Producing or committing failed for good.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// A batch could still not be sealed when the stop's drain deadline passed.
    #[error("a batch could not be sealed before the drain deadline: {0}")]
    Stage(#[source] StageError),
    /// The offset bookkeeping cannot be trusted.
    #[error(transparent)]
    Tracker(#[from] TrackerPoisoned),
    /// The audit log could not be started (the worker does not join the group without it).
    #[error(transparent)]
    Audit(#[from] crate::auditor::AuditorError),
    /// The metrics and health endpoint could not listen.
    #[error("metrics endpoint {addr}: {source}; set metrics.listen to a free address")]
    Endpoint {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// What a stage is made from: the worker's configuration, keys, producer and key views.
#[allow(missing_debug_implementations)]
pub struct Wiring<'a> {
    /// Configuration.
    pub config: &'a Config,
    /// Key providers.
    pub keyring: &'a Arc<Keyring>,
    /// The worker's producer (registry records go through it, in its transactions).
    pub producer: &'a FutureProducer,
    /// The tenants' key states.
    pub views: &'a Arc<KeyViews>,
    /// Leaves of records produced outside batches (registry records), for the next checkpoint.
    pub audit: Option<crate::auditor::RecordAudit>,
}

/// The sealing stage of `byok run`.
pub fn seal_stage(w: &Wiring<'_>) -> Result<Box<dyn Stage>, WorkerError> {
    Ok(Box::new(
        Sealer::new(
            w.config,
            Arc::clone(w.keyring),
            w.producer.clone(),
            Arc::clone(w.views),
        )?
        .with_audit(w.audit.clone()),
    ))
}

/// Runs the worker until `shutdown` turns true, then drains: the batches in flight are produced
/// and committed, the producer flushed, within the configured drain deadline.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<RunStats, WorkerError> {
    run_with(config, shutdown, Arc::new(Health::default()), seal_stage).await
}

/// `byok run` as a service (the command and the demo): `/metrics`, `/health` and `/live` on
/// `metrics.listen`, then the worker with the sealing stage until `shutdown`.
pub async fn serve(
    config: Config,
    shutdown: watch::Receiver<bool>,
    health: Arc<Health>,
) -> Result<RunStats, WorkerError> {
    let addr = config.metrics.listen;
    let bound = http::serve(addr, Arc::clone(&health))
        .await
        .map_err(|source| WorkerError::Endpoint { addr, source })?;
    tracing::info!(addr = %bound, "metrics and health on /metrics, /health (ready) and /live");
    run_with(config, shutdown, health, seal_stage).await
}

/// [`run`] with the health state shared with `/health` and `/live`, and the stage made by
/// `make_stage`.
pub async fn run_with<F>(
    config: Config,
    shutdown: watch::Receiver<bool>,
    health: Arc<Health>,
    make_stage: F,
) -> Result<RunStats, WorkerError>
where
    F: FnOnce(&Wiring<'_>) -> Result<Box<dyn Stage>, WorkerError>,
{
    metrics::describe();
    health.set_stall_timeout(config.worker.stall_timeout);
    let (done0, batches0) = (health.records_done(), health.batches_done());
    let keyring = Arc::new(Keyring::new(&config)?);
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
    let keks_producer = keks_producer(&config, &producer, transactional)?;
    let auditor = start_auditor(&config, &producer, &keks_producer).await?;
    let tracker = Arc::new(OffsetTracker::default());
    let paused = Paused::default();
    let ctx = SourceContext {
        health: Arc::clone(&health),
        tracker: Arc::clone(&tracker),
        producer: producer.clone(),
        drain_deadline: config.worker.drain_deadline,
        transactional,
        paused: paused.shared(),
        auditor: auditor.clone(),
    };
    let consumer = subscribe(&config, ctx)?;
    let views = key_views(&config).await;
    let record_audit = match &auditor {
        Some(a) => Some(a.record_audit().await),
        None => None,
    };
    if let Some(a) = &record_audit {
        let _ = views.audit.set(a.clone());
    }
    let receipts = auditor.as_ref().map(|a| a.spawn_receipts());
    let auditor_handle = auditor.clone();
    let background = [
        spawn_vault_check(&config, &keyring, &health),
        crate::lifecycle::monitor::spawn(
            &keyring,
            Arc::clone(&views),
            keks_producer,
            config.keys.check_interval,
            config.kafka.keks_topic.clone(),
        ),
        spawn_watchdog(Arc::clone(&health)),
    ];
    let stage = make_stage(&Wiring {
        config: &config,
        keyring: &keyring,
        producer: &producer,
        views: &views,
        audit: record_audit,
    })?;
    tracing::info!(group = %config.kafka.group_id, topics = ?config.kafka.input_topics, tenants = keyring.tenants().len(), delivery = ?config.kafka.delivery, seal_threads = config.batch.seal_threads.get(), "worker started");
    let mut worker = Worker {
        sink: sink(&config, producer, tracker, &health, auditor),
        config: &config,
        consumer,
        stage,
        paused,
        drains: AutoDrain::default(),
        drained: 0,
        keyring: Arc::clone(&keyring),
        views,
        health: Arc::clone(&health),
        shutdown,
        transactional,
    };
    let ended = worker.run_loop().await;
    // no Key Vault request after the last receipts are written with `end`
    for task in background {
        task.abort();
    }
    if let (Some(a), Some(task)) = (&auditor_handle, receipts) {
        a.stop_receipts();
        let _ = task.await;
    }
    let stopped = worker.stop().await;
    ended?;
    stopped?;
    let stats = worker.stats(
        health.records_done() - done0,
        health.batches_done() - batches0,
    );
    tracing::info!(?stats, "worker stopped");
    Ok(stats)
}

/// The tenants' key views, seeded with the last known public keys from `byok.keks`.
async fn key_views(config: &Config) -> Arc<KeyViews> {
    let views = Arc::new(KeyViews::default());
    views.holds.set_limit(config.keys.unknown_key_hold);
    match crate::archive::registry::load_keks_current(config).await {
        Ok(keys) => views.seed_public(keys),
        Err(e) => {
            tracing::warn!(error = %e, topic = %config.kafka.keks_topic, "last known public keys not loaded (they are read again from Key Vault)")
        }
    }
    views
}

/// The producer of `byok.keks` records: their own idempotent one under exactly-once (a
/// transactional producer refuses sends between transactions, and an aborted batch would take
/// them with it), else the worker's.
fn keks_producer(
    config: &Config,
    producer: &FutureProducer,
    transactional: bool,
) -> Result<FutureProducer, WorkerError> {
    if !transactional {
        return Ok(producer.clone());
    }
    crate::kafka::tool_producer_config(config)
        .create()
        .map_err(|source| WorkerError::Client {
            client: "producer (byok.keks)",
            source,
        })
}

/// The audit writer when `[audit]` is configured: its session certified before the worker joins
/// the group (retried while the signing key's vault does not answer; a refusal stops the worker).
/// Checkpoints go through the worker's producer (in its transactions under exactly-once), the
/// signer and end records through `statements` (never transactional).
async fn start_auditor(
    config: &Config,
    producer: &FutureProducer,
    statements: &FutureProducer,
) -> Result<Option<Arc<crate::auditor::Auditor>>, WorkerError> {
    let Some(audit) = &config.audit else {
        return Ok(None);
    };
    let mut wait = Duration::from_secs(1);
    loop {
        match crate::auditor::Auditor::start(
            config,
            audit,
            crate::auditor::Role::Worker,
            &config.kafka.group_id,
            producer.clone(),
            statements.clone(),
        )
        .await
        {
            Ok(a) => return Ok(Some(Arc::new(a))),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in_s = wait.as_secs(), "the audit session cannot be certified yet; not joining the group until it is");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The sink of the worker's batches: at most `batch.in_flight` in flight (one under
/// exactly-once), refused records to the quarantine, checkpoints when the audit log is written.
fn sink(
    config: &Config,
    producer: FutureProducer,
    tracker: Arc<OffsetTracker>,
    health: &Arc<Health>,
    auditor: Option<Arc<crate::auditor::Auditor>>,
) -> Sink {
    let max_in_flight = if config.kafka.delivery == Delivery::ExactlyOnce {
        1
    } else {
        config.batch.in_flight.get()
    };
    let refusals = Arc::new(refusal::Refusals::new(
        &config.kafka.quarantine_topic,
        vec![
            config.kafka.registry_topic.clone(),
            config.kafka.keks_topic.clone(),
        ],
    ));
    Sink::new(
        producer,
        tracker,
        Arc::clone(health),
        max_in_flight,
        refusals,
    )
    .with_auditor(auditor)
}

/// The worker's consumer, subscribed to the input topics.
fn subscribe(
    config: &Config,
    ctx: SourceContext,
) -> Result<StreamConsumer<SourceContext>, WorkerError> {
    let client = |source| WorkerError::Client {
        client: "consumer",
        source,
    };
    let consumer: StreamConsumer<SourceContext> = consumer_config(config)
        .create_with_context(ctx)
        .map_err(client)?;
    let topics: Vec<&str> = config
        .kafka
        .input_topics
        .iter()
        .map(String::as_str)
        .collect();
    consumer.subscribe(&topics).map_err(client)?;
    Ok(consumer)
}

/// Asks each distinct vault for its key's state once (one tenant per vault and key is enough),
/// marking the worker's vaults checked for `/health` when all answered.
fn spawn_vault_check(
    config: &Config,
    keyring: &Keyring,
    health: &Arc<Health>,
) -> tokio::task::JoinHandle<()> {
    let mut per_vault: BTreeMap<(String, String), Arc<TenantKms>> = BTreeMap::new();
    for (id, kms) in keyring.tenants() {
        if let Some(k) = config.tenants.get(id).and_then(|t| t.key.as_ref()) {
            per_vault
                .entry((k.vault_url.to_string(), k.key_name.clone()))
                .or_insert_with(|| Arc::clone(kms));
        }
    }
    let health = Arc::clone(health);
    tokio::spawn(crate::lifecycle::monitor::check_vaults(
        per_vault.into_values().collect(),
        move || health.set_vaults_checked(),
    ))
}

/// How long a batch is retried before its records are given back to be read again: a quarter of
/// `worker.stall_timeout` (at least 2 s), well within the consumer's poll interval.
fn retry_budget(config: &Config) -> Duration {
    (config.worker.stall_timeout / 4).max(Duration::from_secs(2))
}

/// Looks for a stall once a second: counts it and logs it when it begins (`/live` reports it).
fn spawn_watchdog(health: Arc<Health>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if health.watch() {
                ::metrics::counter!("byok_stalls_total").increment(1);
                tracing::error!(
                    reason = health
                        .live()
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                    "worker stalled: /live turns 503"
                );
            }
        }
    })
}

/// The batch loop's state.
struct Worker<'c> {
    config: &'c Config,
    consumer: StreamConsumer<SourceContext>,
    sink: Sink,
    stage: Box<dyn Stage>,
    paused: Paused,
    drains: AutoDrain,
    drained: u64,
    keyring: Arc<Keyring>,
    views: Arc<KeyViews>,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
    transactional: bool,
}

impl Worker<'_> {
    /// The run's counts: `records_in` and `batches` from the health state, the rest from the
    /// stage and the sink.
    fn stats(&self, records_in: u64, batches: u64) -> RunStats {
        let mut stats = RunStats {
            records_in,
            batches,
            drained: self.drained,
            ..RunStats::default()
        };
        self.stage.report(&mut stats);
        for (reason, n) in self.sink.refusals().counts() {
            *stats
                .quarantined
                .entry(reason.as_str().to_owned())
                .or_default() += n;
        }
        stats
    }

    /// Collects and processes batches until a stop is requested.
    async fn run_loop(&mut self) -> Result<(), WorkerError> {
        let topics: Vec<&str> = self
            .config
            .kafka
            .input_topics
            .iter()
            .map(String::as_str)
            .collect();
        loop {
            self.paused.resume_ready(&self.consumer, &self.views);
            if self.config.keys.drain_on_restore {
                self.drains.look(
                    self.config,
                    &self.keyring,
                    &self.consumer,
                    &topics,
                    &self.views,
                    &mut self.drained,
                );
            }
            // commit what the broker acknowledged, oldest batch first
            self.sink.settle_ready(&self.consumer, false).await?;
            self.health.set_held(self.views.holds.count() as u64);
            self.health
                .set_in_hand(self.sink.records_in_flight() as u64);
            if *self.shutdown.borrow() {
                return Ok(());
            }
            if self.sink.full() {
                tokio::select! {
                    _ = self.sink.wait_oldest() => {}
                    _ = self.shutdown.changed() => {}
                }
                continue;
            }
            // paused partitions and keys that came back are looked at every second, traffic
            // or not
            let tick = !self.paused.is_empty() || self.config.keys.drain_on_restore;
            // wait for a first record, a stop, or the oldest batch's acknowledgement
            let first = tokio::select! {
                biased;
                _ = self.shutdown.changed() => None,
                _ = self.sink.wait_oldest() => None,
                m = self.consumer.recv() => Some(m),
                _ = tokio::time::sleep(Duration::from_secs(1)), if tick => None,
            };
            let Some(first) = first else { continue };
            // from here the batch is collected to its end (never cancelled: its records are
            // consumed)
            let batch = source::collect(first, &self.consumer, self.config).await;
            self.health
                .set_in_hand((self.sink.records_in_flight() + batch.len()) as u64);
            if !batch.is_empty() {
                self.process(batch).await?;
            }
        }
    }

    /// Seals and produces one batch, retrying while it cannot be sealed or its transaction
    /// aborts (Kafka keeps the data; nothing is committed meanwhile).
    async fn process(&mut self, batch: Vec<OwnedMessage>) -> Result<(), WorkerError> {
        let started = Instant::now();
        let mut batch = Arc::new(batch);
        let mut backoff = Duration::from_millis(200);
        let mut retried = false;
        loop {
            if retried {
                // partitions revoked meanwhile belong to their new owner now
                batch = self.keep_assigned(batch);
                if batch.is_empty() {
                    return Ok(());
                }
            }
            retried = true;
            if self.transactional {
                self.sink.begin_transaction()?;
                self.stage.begin_transaction();
            }
            let failed = match self.stage.process(&batch).await {
                Ok(outs) => match self.produce(outs, &batch, started).await {
                    Ok(()) => return Ok(()),
                    Err(e) if !self.transactional || matches!(e, SinkError::Tracker(_)) => {
                        return Err(e.into());
                    }
                    Err(e) => {
                        ::metrics::counter!("byok_transactions_aborted_total").increment(1);
                        tracing::warn!(error = %e, "transaction aborted; the batch is sealed again under new nonces");
                        WorkerError::Sink(e)
                    }
                },
                Err(StageError::Waiting {
                    tenants,
                    detail,
                    held,
                }) => {
                    self.abort();
                    let before = batch.len();
                    let kept = self
                        .paused
                        .hold_back(&self.consumer, &batch, &held, &detail);
                    tracing::debug!(?tenants, kept = kept.len(), "records held back");
                    if kept.is_empty() {
                        return Ok(());
                    }
                    let stuck = kept.len() == before;
                    batch = Arc::new(kept);
                    if !stuck {
                        continue;
                    }
                    WorkerError::Stage(StageError::Waiting {
                        tenants,
                        detail,
                        held: Vec::new(),
                    })
                }
                Err(e) => {
                    self.abort();
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not sealed; retrying (nothing is committed)");
                    WorkerError::Stage(e)
                }
            };
            if *self.shutdown.borrow() && started.elapsed() > self.config.worker.drain_deadline {
                return Err(failed);
            }
            // a batch that cannot be finished for long gives its records back (its partitions
            // sought back to them) so that the loop polls the consumer again: a rebalance can
            // complete, the member stays in its group, and partitions it lost meanwhile go to
            // their new owner; nothing is committed and nothing skipped
            if !*self.shutdown.borrow()
                && started.elapsed() >= retry_budget(self.config)
                && source::rewind(&self.consumer, &batch)
            {
                ::metrics::counter!("byok_batches_given_back_total").increment(1);
                tracing::warn!(records = batch.len(), error = %failed, "batch given back after retrying for {:?}; its records are read again", retry_budget(self.config));
                return Ok(());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Hands the outputs to the sink: in flight (at-least-once), or produced and committed in
    /// the open transaction (exactly-once; aborted on failure).
    async fn produce(
        &mut self,
        outs: Vec<Out>,
        batch: &[OwnedMessage],
        started: Instant,
    ) -> Result<(), SinkError> {
        let next = Offsets::of_batch(batch);
        let ranges = crate::auditor::ranges_of(batch);
        if !self.transactional {
            return self.sink.send(outs, next, ranges, started);
        }
        let deadline = self.config.worker.drain_deadline;
        let r = self
            .sink
            .commit_transaction(
                outs,
                &next,
                &ranges,
                &self.consumer,
                self.shutdown.clone(),
                deadline,
            )
            .await;
        match r {
            Ok(()) => {
                metrics::batch_done(&self.health, batch.len(), started);
                Ok(())
            }
            Err(e) => {
                self.abort();
                Err(e)
            }
        }
    }

    /// Aborts the open transaction, if any, and what the stage made in it.
    fn abort(&mut self) {
        if self.transactional {
            self.sink.abort_transaction();
            self.stage.abort_transaction();
        }
    }

    /// The records of `batch` whose partitions are still assigned to this member.
    fn keep_assigned(&self, batch: Arc<Vec<OwnedMessage>>) -> Arc<Vec<OwnedMessage>> {
        let assigned = self.consumer.assignment().unwrap_or_default();
        if batch
            .iter()
            .all(|m| holds(&assigned, m.topic(), m.partition()))
        {
            return batch;
        }
        let kept: Vec<OwnedMessage> = batch
            .iter()
            .filter(|m| holds(&assigned, m.topic(), m.partition()))
            .cloned()
            .collect();
        let mut gone: HashMap<(String, i32), usize> = HashMap::new();
        for m in batch.iter() {
            if !holds(&assigned, m.topic(), m.partition()) {
                *gone
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_default() += 1;
            }
        }
        tracing::info!(
            ?gone,
            "records of partitions revoked during the retry left to their new owner"
        );
        Arc::new(kept)
    }

    /// Drains: every batch in flight gets `worker.drain_deadline` to be acknowledged (past it
    /// the worker exits without committing it: its records are redelivered, nothing is lost);
    /// a drain of the quarantine still running gets as long; the producer is flushed.
    async fn stop(&mut self) -> Result<(), WorkerError> {
        self.health.set_stopping();
        let deadline = self.config.worker.drain_deadline;
        let drained = self.sink.drain(&self.consumer, deadline).await;
        if let Err(e) = &drained {
            tracing::warn!(error = %e, "stopping with records unacknowledged");
        }
        self.drains.stop(deadline, &mut self.drained).await;
        if drained.is_ok() {
            self.sink.end_audit().await;
        }
        self.sink.flush(deadline);
        Ok(drained?)
    }
}
