//! Sealing a batch: each record under its owner's current DEK (one nonce block per job), on the
//! worker's task for small batches and on a bounded pool for large ones, then the output records
//! with their v1 headers. [`Sealer`] is the worker's stage; [`seal_with`] is the same path with
//! every DEK given, for the criterion bench.
//!
//! This module must never produce an output record of a record it did not seal, and never seal
//! a record under a DEK whose registry record was not acknowledged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::FutureProducer;

use super::route::{HeaderCache, Route, group, route_all, settle_holds};
use super::stage::{Out, RunStats, Stage, StageError};
use crate::config::Config;
use crate::dek::{ActiveDek, DekId};
use crate::deks::{DekError, DekSet};
use crate::envelope::headers::{ArchiveHeaders, QuarantineHeaders, SourceRef};
use crate::envelope::{self, Compression, SealError};
use crate::keyring::Keyring;
use crate::kms::KmsError;
use crate::lifecycle::monitor::{KeyView, KeyViews, Revoked};
use crate::registry::QUARANTINE_TENANT;

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
    /// Per record (as `idx`), the AAD tenant when it is not `owner`: operator DEKs bind the
    /// tenant each record names.
    aad: Option<Vec<String>>,
}

/// What sealing a job gave: sealed values by record index, and the records left unsealed
/// because the DEK reached a limit.
struct Done {
    owner: String,
    dek: Arc<ActiveDek>,
    sealed: Vec<(usize, Vec<u8>)>,
    left: Vec<usize>,
}

fn seal_job(job: Job, batch: &[OwnedMessage], compression: Compression) -> Done {
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
            for (n, &i) in job.idx[..take].iter().enumerate() {
                let m = &batch[i];
                let plain = m.payload().unwrap_or_default();
                let mut value = Vec::with_capacity(plain.len() + envelope::OVERHEAD);
                let aad_tenant = job.aad.as_ref().map_or(job.owner.as_str(), |a| &a[n]);
                match envelope::seal_next(
                    &mut block,
                    aad_tenant,
                    m.key(),
                    plain,
                    compression,
                    &mut value,
                ) {
                    Ok(_) => sealed.push((i, value)),
                    Err(SealError::BlockUsedUp) => left.push(i),
                    Err(e) => {
                        // A tenant id or key too long for the AAD: reported, and the batch is
                        // not committed past it (see build_outs).
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
    (batch, routes): (&[OwnedMessage], &[Route]),
    out: &mut Vec<Job>,
) {
    let mut start = 0;
    let mut bytes = 0u64;
    for (n, &i) in idx.iter().enumerate() {
        bytes += batch[i].payload().map_or(0, <[u8]>::len) as u64 + 64;
        if bytes >= CHUNK_BYTES || n + 1 == idx.len() {
            let idx = idx[start..=n].to_vec();
            let aad = (owner == QUARANTINE_TENANT)
                .then(|| idx.iter().map(|&i| routes[i].aad_tenant()).collect());
            out.push(Job {
                owner: owner.to_owned(),
                dek: Arc::clone(dek),
                idx,
                aad,
            });
            start = n + 1;
            bytes = 0;
        }
    }
}

/// Seals `jobs`: on `pool` (handed over, awaited without blocking the task) or on the caller.
async fn run_jobs(
    jobs: Vec<Job>,
    batch: &Arc<Vec<OwnedMessage>>,
    compression: Compression,
    pool: Option<&rayon::ThreadPool>,
) -> Result<Vec<Done>, DekError> {
    let Some(pool) = pool else {
        return Ok(jobs
            .into_iter()
            .map(|j| seal_job(j, batch, compression))
            .collect());
    };
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
        .map_err(|_| DekError::Sealing("the sealing pool stopped".into()))
}

/// Counts of what the sealer produced.
#[derive(Debug, Default)]
struct Counts {
    archived: u64,
    quarantined: BTreeMap<String, u64>,
}

/// The output records of a sealed batch, with their v1 headers.
fn build_outs(
    batch: &[OwnedMessage],
    routes: &[Route],
    values: Vec<Option<(Vec<u8>, DekId)>>,
    config: &Config,
    counts: &mut Counts,
    cache: &mut HeaderCache,
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
        let (topic, tenant) = cache.owner(route, config);
        let src = || SourceRef::new(m.topic(), m.partition(), m.offset());
        let headers = match route {
            Route::Archive(_) => {
                counts.archived += 1;
                let src = SourceRef::format(m.topic(), m.partition(), m.offset());
                ArchiveHeaders::shared_pairs(&tenant, &cache.dek(dek), src).to_vec()
            }
            Route::Revoked {
                tenant,
                reason,
                detail,
            } => {
                *quarantined.entry(reason.as_str()).or_default() += 1;
                quarantine_pairs(QuarantineHeaders::new(
                    *reason,
                    Some(tenant.to_string()),
                    src(),
                    detail,
                    dek,
                ))
            }
            Route::Hold { .. } => {
                return Err(DekError::Sealing(format!(
                    "record {} is held and cannot be sealed now; the batch is not committed",
                    SourceRef::format(m.topic(), m.partition(), m.offset())
                )));
            }
            Route::Quarantine {
                reason,
                tenant,
                detail,
            } => {
                *quarantined.entry(reason.as_str()).or_default() += 1;
                quarantine_pairs(QuarantineHeaders::new(
                    *reason,
                    tenant.clone(),
                    src(),
                    detail,
                    dek,
                ))
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
        *counts.quarantined.entry(r.to_owned()).or_default() += n;
        metrics::counter!("byok_records_quarantined_total", "reason" => r).increment(n);
    }
    Ok(outs)
}

fn quarantine_pairs(h: QuarantineHeaders) -> Vec<(&'static str, Bytes)> {
    h.to_pairs()
        .into_iter()
        .map(|(k, v)| (k, Bytes::from(v)))
        .collect()
}

/// One batch through routing, sealing and record building with every owner's DEK given: the
/// worker's path between consuming and producing, for the criterion bench. Records whose owner
/// has no DEK in `deks` fail the batch, as in the worker.
pub async fn seal_with(
    batch: &Arc<Vec<OwnedMessage>>,
    config: &Config,
    deks: &HashMap<String, Arc<ActiveDek>>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<Vec<Out>, DekError> {
    let (routes, groups) = route_all(batch, config, &Revoked::new());
    let mut jobs = Vec::new();
    for (owner, idx) in &groups {
        if let Some(dek) = deks.get(owner) {
            jobs_for(owner, dek, idx, (batch, &routes), &mut jobs);
        }
    }
    let done = run_jobs(jobs, batch, config.dek.compression, pool).await?;
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
        &mut Counts::default(),
        &mut HeaderCache::default(),
    )
}

/// The worker's stage: seals every record under its owner's DEK, making DEKs as needed and
/// following the key views the monitor keeps.
pub struct Sealer {
    config: Config,
    keyring: Arc<Keyring>,
    deks: DekSet,
    producer: FutureProducer,
    pool: rayon::ThreadPool,
    views: Arc<KeyViews>,
    /// The generation of the key views last read, their values and the revoked tenants.
    generation: Option<u64>,
    seen: HashMap<String, KeyView>,
    revoked: Revoked,
    cache: HeaderCache,
    counts: Counts,
    /// When pending rewraps were last tried.
    rewraps_tried: std::time::Instant,
}

/// How often a DEK whose rewrap failed is tried again.
const REWRAP_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("deks_created", &self.deks.created())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer for the worker's configuration, keys and producer.
    /// Names the registry records of its DEKs in the audit log's next checkpoint.
    pub fn with_audit(mut self, audit: Option<crate::auditor::RecordAudit>) -> Self {
        self.deks.set_audit(audit);
        self
    }

    pub fn new(
        config: &Config,
        keyring: Arc<Keyring>,
        producer: FutureProducer,
        views: Arc<KeyViews>,
    ) -> Result<Self, rayon::ThreadPoolBuildError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.batch.seal_threads.get())
            .thread_name(|i| format!("byok-seal-{i}"))
            .build()?;
        Ok(Self {
            deks: DekSet::new(
                config.dek.limits,
                crate::kafka::worker_id(config),
                config.kafka.registry_topic.clone(),
            ),
            config: config.clone(),
            keyring,
            producer,
            pool,
            views,
            generation: None,
            seen: HashMap::new(),
            revoked: Revoked::new(),
            cache: HeaderCache::default(),
            counts: Counts::default(),
            rewraps_tried: std::time::Instant::now(),
        })
    }

    /// Reads the key views again when they moved: a tenant whose key changed (rotated, revoked,
    /// restored) gets a new DEK; a revoked tenant's DEKs leave memory.
    async fn follow_key_views(&mut self) {
        if self.deks.rewraps_pending() > 0 && self.rewraps_tried.elapsed() >= REWRAP_RETRY {
            self.rewraps_tried = std::time::Instant::now();
            let keyring = Arc::clone(&self.keyring);
            self.deks
                .retry_rewraps(|t| keyring.tenant(t).cloned(), &self.producer)
                .await;
        }
        if self.generation == Some(self.views.generation()) {
            return;
        }
        self.generation = Some(self.views.generation());
        for dek in self.views.take_unproven() {
            self.deks.retire_id(dek);
        }
        let snapshot = self.views.snapshot();
        for (tenant, view) in &snapshot {
            let changed = key_changed(self.seen.get(tenant), view);
            self.seen.insert(tenant.clone(), view.clone());
            if !changed {
                continue;
            }
            // the version in use changed while the key stays usable: move the DEK in memory
            // onto the new version first (the old one may no longer decrypt); if that fails it
            // stops sealing but stays in memory, tried again until it succeeds
            if matches!(view, KeyView::Usable(_))
                && let Some(kms) = self.keyring.tenant(tenant)
                && let Err(e) = self
                    .deks
                    .rewrap_active(tenant, kms.as_ref(), &self.producer)
                    .await
            {
                tracing::warn!(tenant, error = %e, "the DEK in use could not be rewrapped onto the new version; retried");
                self.deks.retire_for_rewrap(tenant);
            }
            self.deks.forget(tenant);
        }
        self.revoked = self.views.revoked(&snapshot);
    }

    /// New DEKs for the owners in `todo` without one, many at a time (a cold start with many
    /// tenants would otherwise wait for one vault round trip and one registry ack per tenant).
    async fn make_missing(
        &mut self,
        todo: &BTreeMap<String, Vec<usize>>,
    ) -> Result<(), StageError> {
        let missing: Vec<String> = todo
            .keys()
            .filter(|o| self.deks.current(o).is_none())
            .cloned()
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let made: Vec<(String, Result<ActiveDek, DekError>)> = {
            let ctx = NewDek {
                revoked: &self.revoked,
                keyring: &self.keyring,
                set: &self.deks,
                producer: &self.producer,
                views: &self.views,
            };
            let ctx = &ctx;
            futures::stream::iter(missing.into_iter().map(|owner| async move {
                let r = ctx.make(&owner).await;
                (owner, r)
            }))
            .buffer_unordered(NEW_DEKS_AT_ONCE)
            .collect()
            .await
        };
        let mut failed = None;
        let mut waiting: Option<(Vec<String>, String)> = None;
        for (owner, r) in made {
            match r {
                Ok(dek) => {
                    self.views.holds.release(&owner);
                    self.deks.install(&owner, dek);
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
            return Err(StageError::Retry(e));
        }
        if let Some((tenants, detail)) = waiting {
            let held = tenants
                .iter()
                .flat_map(|t| {
                    todo.get(t)
                        .into_iter()
                        .flatten()
                        .map(move |i| (*i, t.clone()))
                })
                .collect();
            return Err(StageError::Waiting {
                tenants,
                detail,
                held,
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Stage for Sealer {
    async fn process(&mut self, batch: &Arc<Vec<OwnedMessage>>) -> Result<Vec<Out>, StageError> {
        self.follow_key_views().await;
        let (mut routes, mut todo) = route_all(batch, &self.config, &self.revoked);
        if settle_holds(&mut routes, &self.views, self.config.keys.unknown_key_hold)? {
            todo = group(&routes);
        }
        let batch_bytes: u64 = batch
            .iter()
            .map(|m| m.payload().map_or(0, <[u8]>::len) as u64)
            .sum();
        let mut values: Vec<Option<(Vec<u8>, DekId)>> = (0..batch.len()).map(|_| None).collect();
        while !todo.is_empty() {
            self.make_missing(&todo).await?;
            let mut jobs = Vec::new();
            for (owner, idx) in &todo {
                let dek = self.deks.current(owner).ok_or_else(|| {
                    StageError::Retry(DekError::Sealing(format!(
                        "the new DEK of {owner} cannot seal"
                    )))
                })?;
                jobs_for(owner, &dek, idx, (batch, &routes), &mut jobs);
            }
            // small batches are sealed on the worker's task (a thread hop would cost more)
            let parallel = batch_bytes >= self.config.batch.parallel_min_bytes && jobs.len() > 1;
            let pool = parallel.then_some(&self.pool);
            let done = run_jobs(jobs, batch, self.config.dek.compression, pool)
                .await
                .map_err(StageError::Retry)?;
            todo.clear();
            for d in done {
                let id = d.dek.id();
                for (i, v) in d.sealed {
                    values[i] = Some((v, id));
                }
                if d.left.is_empty() {
                    continue;
                }
                // the DEK reached a limit: the rest goes under a new one
                if self
                    .deks
                    .current(&d.owner)
                    .is_some_and(|c| Arc::ptr_eq(&c, &d.dek))
                {
                    self.deks.forget(&d.owner);
                }
                todo.entry(d.owner).or_default().extend(d.left);
            }
            for idx in todo.values_mut() {
                idx.sort_unstable();
            }
        }
        let outs = build_outs(
            batch,
            &routes,
            values,
            &self.config,
            &mut self.counts,
            &mut self.cache,
        )
        .map_err(StageError::Retry)?;
        metrics::counter!("byok_records_sealed_total").increment(outs.len() as u64);
        if let Some(age) = self.deks.oldest_age() {
            metrics::gauge!("byok_dek_oldest_age_seconds").set(age.as_secs_f64());
        }
        Ok(outs)
    }

    fn begin_transaction(&mut self) {
        self.deks.begin_transaction();
    }

    fn abort_transaction(&mut self) {
        self.deks.abort_transaction();
    }

    fn report(&self, stats: &mut RunStats) {
        stats.archived = self.counts.archived;
        stats.quarantined = self.counts.quarantined.clone();
        stats.deks_created = self.deks.created();
    }
}

/// Whether a tenant's DEK must be replaced when its key view moves from `old` to `new`: an
/// outage changes nothing, nor does the first view of a usable key (the DEK was wrapped under
/// the version the provider found usable); a rotation, a revocation or a restoration does.
fn key_changed(old: Option<&KeyView>, new: &KeyView) -> bool {
    match (old, new) {
        (_, KeyView::Unavailable) | (Some(KeyView::Unavailable) | None, KeyView::Usable(_)) => {
            false
        }
        (old, new) => old != Some(new),
    }
}

/// What making a DEK needs, borrowed from the sealer.
struct NewDek<'a> {
    revoked: &'a Revoked,
    keyring: &'a Keyring,
    set: &'a DekSet,
    producer: &'a FutureProducer,
    views: &'a KeyViews,
}

impl NewDek<'_> {
    /// A new DEK for `owner`: wrapped by its key in Key Vault; wrapped locally with its last
    /// known public key when its key is revoked (the records go to the quarantine) or its vault
    /// does not answer (the DEK is proven through Key Vault later); wrapped by the operator's key
    /// for the quarantine. A revocation found here is marked for the next attempt of the batch.
    async fn make(&self, owner: &str) -> Result<ActiveDek, DekError> {
        let (set, producer, views) = (self.set, self.producer, self.views);
        if owner == QUARANTINE_TENANT {
            return set
                .make(owner, self.keyring.operator().as_ref(), producer)
                .await;
        }
        if let Some((_, _, Some(public))) = self.revoked.get(owner) {
            metrics::counter!("byok_local_wraps_total", "why" => "key-revoked").increment(1);
            return Ok(set.make_local(owner, public, producer).await?.0);
        }
        let kms = self.keyring.tenant(owner).ok_or_else(|| {
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
                    // partitions are paused; Kafka keeps the data), for keys.unknown_key_hold
                    views.holds.hold(owner);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kms::{KekId, Revocation};

    fn usable(version: &str) -> KeyView {
        KeyView::Usable(
            KekId::parse(&format!(
                "https://acme-vault.vault.azure.net/keys/byok-key/{version}"
            ))
            .unwrap(),
        )
    }

    #[test]
    fn key_view_reconciliation_replaces_the_dek_only_when_the_key_moved() {
        let revoked = KeyView::Revoked {
            why: Revocation::KeyDisabled,
            detail: "disabled".into(),
        };
        let (v1, v2) = (usable("1111"), usable("2222"));
        // outages and first sightings keep the DEK
        assert!(!key_changed(None, &v1));
        assert!(!key_changed(Some(&v1), &KeyView::Unavailable));
        assert!(!key_changed(Some(&KeyView::Unavailable), &v1));
        assert!(!key_changed(Some(&v1), &v1));
        // rotation, revocation and restoration replace it
        assert!(key_changed(Some(&v1), &v2));
        assert!(key_changed(Some(&v1), &revoked));
        assert!(key_changed(None, &revoked));
        assert!(key_changed(Some(&revoked), &v1));
    }
}
