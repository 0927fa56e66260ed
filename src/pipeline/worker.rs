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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio::sync::watch;

use super::keys::{DekError, DekSet};
use super::tenant::{TenantOf, tenant_of};
use crate::config::{Config, TenantId};
use crate::envelope::headers::{ArchiveHeaders, QuarantineHeaders, QuarantineReason, SourceRef};
use crate::envelope::{self, SealError};
use crate::kms::{KmsError, TenantKms};
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
}

/// Logs assignments and revocations (cooperative-sticky rebalances move only what must move).
struct Ctx;

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
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = r {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked (their batches were committed before polling)"
            );
        }
    }
    fn post_rebalance(&self, _c: &rdkafka::consumer::BaseConsumer<Self>, r: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = r {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

/// One output record.
struct Out {
    topic: String,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(&'static str, Vec<u8>)>,
}

/// Where a record goes.
enum Route {
    Archive(TenantId),
    Quarantine {
        reason: QuarantineReason,
        tenant: Option<String>,
        detail: String,
    },
}

/// The worker's id for registry records: configured, else `<hostname>-<pid>`.
pub fn worker_id(config: &Config) -> String {
    config.worker.id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "byok".to_owned());
        format!("{host}-{}", std::process::id())
    })
}

/// Settings the worker owns for its consumer.
pub fn consumer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka.consumer {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("group.id", &config.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.partition.eof", "false");
    if !config.kafka.consumer.contains_key("auto.offset.reset") {
        c.set("auto.offset.reset", "earliest");
    }
    c
}

/// Settings the worker owns for its producer.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &config.kafka.producer {
        c.set(k, v);
    }
    c.set("bootstrap.servers", &config.kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("max.in.flight.requests.per.connection", "5");
    c
}

/// Runs the worker until `shutdown` turns true, then drains: the batch in flight is produced
/// and committed, the producer flushed, within the configured drain deadline.
pub async fn run(
    config: Config,
    mut shutdown: watch::Receiver<bool>,
) -> Result<RunStats, WorkerError> {
    let tenants = crate::kms::providers(&config)?;
    let mut limiters = HashMap::new();
    let quarantine = crate::kms::tenant_kms(
        QUARANTINE_TENANT,
        &config.quarantine,
        &config.keys,
        &mut limiters,
    )?;
    let producer: FutureProducer =
        producer_config(&config)
            .create()
            .map_err(|source| WorkerError::Client {
                client: "producer",
                source,
            })?;
    let consumer: StreamConsumer<Ctx> =
        consumer_config(&config)
            .create_with_context(Ctx)
            .map_err(|source| WorkerError::Client {
                client: "consumer",
                source,
            })?;
    let topics: Vec<&str> = config
        .kafka
        .input_topics
        .iter()
        .map(String::as_str)
        .collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| WorkerError::Client {
            client: "consumer",
            source,
        })?;
    let mut deks = DekSet::new(
        config.dek.limits,
        worker_id(&config),
        config.kafka.registry_topic.clone(),
    );
    let mut stats = RunStats::default();
    tracing::info!(group = %config.kafka.group_id, topics = ?topics, tenants = tenants.len(), "worker started");

    loop {
        if *shutdown.borrow() {
            break;
        }
        let batch = collect(&consumer, &config, &mut shutdown).await;
        if batch.is_empty() {
            continue;
        }
        let started = Instant::now();
        // Retry the batch while a key provider is unavailable: Kafka keeps the data.
        let mut backoff = Duration::from_millis(200);
        let outs = loop {
            match seal_batch(
                &batch,
                &config,
                &tenants,
                &quarantine,
                &mut deks,
                &producer,
                &mut stats,
            )
            .await
            {
                Ok(outs) => break outs,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "batch not sealed; retrying (nothing is committed)");
                    if *shutdown.borrow() && started.elapsed() > config.worker.drain_deadline {
                        return Err(WorkerError::Produce {
                            topic: "(sealing)".into(),
                            reason: e.to_string(),
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        // After a stop request the batch gets worker.drain_deadline to be acknowledged; past it
        // the worker exits without committing (the records are redelivered, nothing is lost).
        let produced = tokio::select! {
            r = produce_all(&producer, &outs) => r,
            _ = drain_deadline(shutdown.clone(), config.worker.drain_deadline) => {
                tracing::warn!("drain deadline passed with records unacknowledged; exiting without committing them");
                return Err(WorkerError::Produce { topic: "(drain)".into(), reason: "drain deadline passed before the broker acknowledged the batch".into() });
            }
        };
        produced?;
        let mut tpl = TopicPartitionList::new();
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            let e = next
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        for ((t, p), o) in &next {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        let mode = if *shutdown.borrow() {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = consumer.commit(&tpl, mode) {
            // Not fatal: the records are archived; another member may own the partition now.
            tracing::warn!(error = %e, "offset commit failed; the batch may be redelivered (same byok.src)");
        }
        stats.records_in += batch.len() as u64;
        stats.batches += 1;
        stats.deks_created = deks.created();
        metrics::counter!("byok_records_in_total").increment(batch.len() as u64);
        metrics::histogram!("byok_batch_records").record(batch.len() as f64);
        metrics::histogram!("byok_batch_seconds").record(started.elapsed().as_secs_f64());
    }
    let _ = producer.flush(Timeout::After(config.worker.drain_deadline));
    tracing::info!(?stats, "worker stopped");
    Ok(stats)
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

/// Collects one batch: waits for a first record (or shutdown), then takes more until the count,
/// byte or time limit.
async fn collect(
    consumer: &StreamConsumer<Ctx>,
    config: &Config,
    shutdown: &mut watch::Receiver<bool>,
) -> Vec<OwnedMessage> {
    let mut batch = Vec::new();
    let first = tokio::select! {
        biased;
        _ = shutdown.changed() => return batch,
        m = consumer.recv() => m,
    };
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

fn route(m: &OwnedMessage, config: &Config) -> Route {
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
            Some(tenant) => Route::Archive(tenant.id.clone()),
        },
    }
}

async fn seal_batch(
    batch: &[OwnedMessage],
    config: &Config,
    tenants: &BTreeMap<TenantId, Arc<TenantKms>>,
    quarantine: &TenantKms,
    deks: &mut DekSet,
    producer: &FutureProducer,
    stats: &mut RunStats,
) -> Result<Vec<Out>, DekError> {
    let routes: Vec<Route> = batch.iter().map(|m| route(m, config)).collect();
    // Group record indices by the DEK owner: the tenant, or the operator's quarantine.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in routes.iter().enumerate() {
        let owner = match r {
            Route::Archive(t) => t.as_str().to_owned(),
            Route::Quarantine { .. } => QUARANTINE_TENANT.to_owned(),
        };
        groups.entry(owner).or_default().push(i);
    }
    let mut outs: Vec<Option<Out>> = (0..batch.len()).map(|_| None).collect();
    let mut quarantined: Vec<QuarantineReason> = Vec::new();
    for (owner, idx) in groups {
        let mut pending: &[usize] = &idx;
        while !pending.is_empty() {
            let dek = match deks.current(&owner) {
                Some(d) => d,
                None if owner == QUARANTINE_TENANT => {
                    deks.rotate(&owner, quarantine, producer).await?
                }
                None => {
                    let id = TenantId::parse(&owner).map_err(|detail| {
                        DekError::Kms(KmsError::Setup {
                            tenant: owner.clone(),
                            detail,
                        })
                    })?;
                    let kms = tenants.get(&id).ok_or_else(|| {
                        DekError::Kms(KmsError::Setup {
                            tenant: owner.clone(),
                            detail: "no key provider".into(),
                        })
                    })?;
                    deks.rotate(&owner, kms.as_ref(), producer).await?
                }
            };
            let bytes: u64 = pending
                .iter()
                .map(|&i| batch[i].payload().map_or(0, <[u8]>::len) as u64)
                .sum();
            let mut block = match dek.reserve(pending.len() as u64, bytes) {
                Ok(b) => b,
                Err(_) => {
                    deks.forget(&owner);
                    continue;
                }
            };
            let take = (block.remaining() as usize).min(pending.len());
            for &i in &pending[..take] {
                let m = &batch[i];
                let src = SourceRef::new(m.topic(), m.partition(), m.offset());
                let mut value =
                    Vec::with_capacity(m.payload().map_or(0, <[u8]>::len) + envelope::OVERHEAD);
                let r = envelope::seal_next(
                    &mut block,
                    &owner,
                    m.key(),
                    m.payload().unwrap_or_default(),
                    config.dek.compression,
                    &mut value,
                );
                match r {
                    Ok(_) => {}
                    Err(SealError::BlockUsedUp) => {
                        unreachable!("the block was reserved for these records")
                    }
                    Err(e) => {
                        // Only a tenant id or key too long for the AAD: nothing to do but report.
                        tracing::error!(error = %e, src = %src, "record cannot be sealed");
                        continue;
                    }
                }
                let (topic, headers) = match &routes[i] {
                    Route::Archive(t) => {
                        stats.archived += 1;
                        (
                            config.kafka.archive_topic.topic_for(t),
                            ArchiveHeaders {
                                tenant: t.as_str().to_owned(),
                                dek: dek.id(),
                                src,
                            }
                            .to_pairs()
                            .to_vec(),
                        )
                    }
                    Route::Quarantine {
                        reason,
                        tenant,
                        detail,
                    } => {
                        quarantined.push(*reason);
                        (
                            config.kafka.quarantine_topic.clone(),
                            QuarantineHeaders::new(*reason, tenant.clone(), src, detail, dek.id())
                                .to_pairs(),
                        )
                    }
                };
                outs[i] = Some(Out {
                    topic,
                    key: m.key().map(<[u8]>::to_vec),
                    value,
                    headers,
                });
            }
            pending = &pending[take..];
            if !pending.is_empty() {
                deks.forget(&owner);
            }
        }
    }
    for r in quarantined {
        *stats.quarantined.entry(r.as_str().to_owned()).or_default() += 1;
        metrics::counter!("byok_records_quarantined_total", "reason" => r.as_str()).increment(1);
    }
    let outs: Vec<Out> = outs.into_iter().flatten().collect();
    metrics::counter!("byok_records_sealed_total").increment(outs.len() as u64);
    Ok(outs)
}

async fn produce_all(producer: &FutureProducer, outs: &[Out]) -> Result<(), WorkerError> {
    let sends = outs.iter().map(|o| {
        let mut headers = OwnedHeaders::new_with_capacity(o.headers.len());
        for (k, v) in &o.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
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
                topic: o.topic.clone(),
                reason: e.to_string(),
            });
        }
    }
    Ok(())
}
