//! `byok replay --from TOPIC --to TOPIC`: opens each archive record and re-seals it under a fresh
//! DEK of its tenant's current key, into another topic (re-encryption after a suspected DEK
//! exposure, or a move to a new archive).
//!
//! - The record key, `byok.src` and any non-`byok.` headers are kept; `byok.dek` names the new DEK.
//! - A `byok.src` already in the target is not written again, nor a second copy of one in the
//!   source (at-least-once delivery leaves such copies): running it twice, or again after a crash,
//!   adds nothing twice. Progress is the target itself, so a crash loses nothing: records whose
//!   write was not acknowledged are simply done again by the next run.
//! - The source may be the quarantine: a record of a tenant with BYOK is opened (under the
//!   tenant's DEK, once its key is usable again, or the operator's) and re-sealed under the
//!   tenant's key like an archive record; one without a tenant key is reported.
//! - A record that cannot be opened (DEK missing from the registry, key revoked, tampered value,
//!   no tenant key) is reported with the reason and never written or skipped silently.
//! - The source is read in chunks (bounded memory); DEKs are unwrapped once each through the
//!   tenant's provider stack (rate-limited toward each vault); `rate` caps records per second.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

use crate::archive::{ReadOptions, RecordError, Unopened, load_registry};
use crate::config::{Config, Delivery, TenantId, TopicTemplate};
use crate::dek::{DataKey, DekId};
use crate::deks::DekSet;
use crate::envelope::{
    self,
    headers::{ArchiveHeaders, QuarantineHeaders},
};
use crate::kafka::{TopicReader, reader_consumer};
use crate::kms::{KeyProvider, TenantKms};
use crate::registry::QUARANTINE_TENANT;
use crate::seen::Seen;

/// What to replay.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    /// Source topic (an archive topic).
    pub from: String,
    /// Target topic; `{tenant}` is replaced by the record's tenant.
    pub to: String,
    /// Only these tenants (all when empty).
    pub tenants: Vec<String>,
    /// Only these source partitions (all when empty).
    pub partitions: Vec<i32>,
    /// First source offset per partition (inclusive).
    pub from_offset: Option<i64>,
    /// Last source offset per partition (exclusive).
    pub to_offset: Option<i64>,
    /// Only records with a timestamp at or after this (ms since the epoch).
    pub from_time_ms: Option<i64>,
    /// Only records with a timestamp before this (ms since the epoch).
    pub to_time_ms: Option<i64>,
    /// Open every record and count what would be written; write nothing, make no DEK.
    pub dry_run: bool,
    /// At most this many records a second.
    pub rate: Option<f64>,
}

impl ReplayOptions {
    /// Every record of `from` into `to`: all tenants, partitions, offsets and times, no rate
    /// limit, for real.
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            tenants: Vec::new(),
            partitions: Vec::new(),
            from_offset: None,
            to_offset: None,
            from_time_ms: None,
            to_time_ms: None,
            dry_run: false,
            rate: None,
        }
    }
}

/// What replaying did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplayStats {
    /// Source records read (in the offset range).
    pub read: u64,
    /// Opened and re-sealed into the target (with `dry_run`: that would be).
    pub resealed: u64,
    /// Their `byok.src` was already in the target: not written again.
    pub already_in_target: u64,
    /// A second copy of a `byok.src` in the source: not written again.
    pub duplicates: u64,
    /// Left out by the tenant filter or the time range.
    pub filtered: u64,
    /// New DEKs made (one registry record each).
    pub deks_made: u64,
    /// Re-sealed records per tenant.
    pub by_tenant: BTreeMap<String, u64>,
    /// Records that could not be opened or re-sealed, with the reason (never written, never
    /// skipped silently).
    pub failed: Vec<Unopened>,
}

/// Replaying failed as a whole (nothing half-done is lost: run it again to resume).
pub use super::LifecycleError as ReplayError;

/// Records read before they are opened, re-sealed and written together.
const CHUNK: usize = 500;

struct Raw {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Replays `opts.from` into `opts.to`; `progress(done, total)` after each chunk.
pub async fn replay(
    config: &Config,
    opts: &ReplayOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayStats, ReplayError> {
    let target = check_options(config, opts)?;
    let keyring = crate::keyring::Keyring::new(config)?;
    let providers: BTreeMap<String, Arc<TenantKms>> = keyring
        .tenants()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), Arc::clone(v)))
        .collect();
    // the operator's key opens quarantine records sealed under it (never seals here)
    let operator = Arc::clone(keyring.operator());
    if let Some(t) = opts.tenants.iter().find(|t| !providers.contains_key(*t)) {
        return Err(ReplayError::Option {
            option: "--tenant",
            value: t.clone(),
            fix: "not a tenant with BYOK enabled in the configuration".into(),
        });
    }
    let registry = load_registry(config).await?;

    // With exactly-once delivery each chunk is one transaction under a transactional id of the
    // target: starting fences a run that crashed (its open transaction is aborted, a write of it
    // still in flight is refused) before the target is read, so a resumed run writes nothing
    // twice. Otherwise writes are idempotent, and a write cut off by a crash that lands after the
    // next run read the target is a duplicate (same byok.src), which readers drop.
    let transactional = config.kafka.delivery == Delivery::ExactlyOnce && !opts.dry_run;
    let producer = replay_producer(config, opts, transactional)?;

    // What the target already holds: the progress of an earlier run, as (provenance,
    // plaintext) of the records that open (a planted record with a copied byok.src is no copy)
    let target_topics = target_topics(&target, opts, &providers);
    let done = in_target(config, &keyring, &registry, &target_topics).await?;
    tracing::info!(
        records = done.len(),
        "already in the target; not written again"
    );

    // the tool's audit writer has its own producer: its checkpoint follows each chunk's commit
    let audit = if opts.dry_run {
        None
    } else {
        let p = super::tool_producer(config)?;
        super::tool_audit(config, "byok-replay", &p).await?
    };
    let mut deks = DekSet::new(
        config.dek.limits,
        format!("replay-{}", crate::kafka::worker_id(config)),
        config.kafka.registry_topic.clone(),
    );
    deks.set_audit(audit.as_ref().map(|a| a.records.clone()));
    let mut run = Run {
        config,
        opts,
        target,
        registry,
        providers,
        operator,
        done,
        written: Seen::window(WRITTEN_WINDOW),
        keys: HashMap::new(),
        deks,
        pending: audit
            .as_ref()
            .map(|a| std::sync::Arc::clone(&a.records.pending)),
        producer,
        transactional,
        stats: ReplayStats::default(),
    };

    let read_opts = ReadOptions {
        partitions: opts.partitions.clone(),
        from_offset: opts.from_offset,
        to_offset: opts.to_offset,
        from_time_ms: opts.from_time_ms,
        to_time_ms: opts.to_time_ms,
        ..ReadOptions::topic(opts.from.clone())
    };
    let consumer = reader_consumer(config)?;
    let mut reader = TopicReader::open(&consumer, &opts.from, Some(&read_opts)).await?;
    let total = reader.total;
    let chunk = opts
        .rate
        .map_or(CHUNK, |r| ((r / 10.0).ceil() as usize).clamp(1, CHUNK));
    let started = Instant::now();
    progress(0, total);
    let mut position = 0u64;
    loop {
        let raws = read_chunk(&mut reader, opts, chunk, &mut run.stats, &mut position).await?;
        if raws.is_empty() {
            break;
        }
        let n = raws.len();
        run.chunk(raws).await?;
        if let Some(a) = &audit {
            a.checkpoint().await?;
        }
        progress(position.min(total), total);
        run.pace(started).await;
        if n < chunk {
            break;
        }
    }
    let _ = run.producer.flush(Timeout::After(Duration::from_secs(30)));
    if let Some(a) = audit {
        a.finish().await?;
    }
    run.stats.deks_made = run.deks.created();
    Ok(run.stats)
}

/// The next `chunk` records of the source in the time range (those outside it counted as read
/// and filtered); `position` counts every record read.
async fn read_chunk(
    reader: &mut TopicReader<'_>,
    opts: &ReplayOptions,
    chunk: usize,
    stats: &mut ReplayStats,
    position: &mut u64,
) -> Result<Vec<Raw>, ReplayError> {
    let mut raws = Vec::with_capacity(chunk);
    while raws.len() < chunk {
        let Some(m) = reader.next().await? else { break };
        *position += 1;
        let ts = m.timestamp().to_millis();
        if opts.from_time_ms.is_some_and(|f| ts.is_some_and(|t| t < f))
            || opts.to_time_ms.is_some_and(|e| ts.is_some_and(|t| t >= e))
        {
            stats.read += 1;
            stats.filtered += 1;
            continue;
        }
        raws.push(Raw {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers: crate::kafka::owned_headers(&m),
        });
    }
    Ok(raws)
}

/// The target topics: the one named, or one per tenant replayed for a `{tenant}` template.
fn target_topics(
    target: &TopicTemplate,
    opts: &ReplayOptions,
    providers: &BTreeMap<String, Arc<TenantKms>>,
) -> Vec<String> {
    if !target.is_per_tenant() {
        return vec![opts.to.clone()];
    }
    providers
        .keys()
        .filter(|t| opts.tenants.is_empty() || opts.tenants.contains(t))
        .filter_map(|t| TenantId::parse(t).ok())
        .map(|t| target.topic_for(&t))
        .collect()
}

/// The options' problems, before anything is read: the target parsed.
fn check_options(config: &Config, opts: &ReplayOptions) -> Result<TopicTemplate, ReplayError> {
    if opts.from == opts.to {
        return Err(ReplayError::Option {
            option: "--to",
            value: opts.to.clone(),
            fix: format!(
                "--from and --to are both {}: replay writes to another topic (then point readers at it)",
                opts.from
            ),
        });
    }
    if let Some(r) = opts.rate
        && !(r.is_finite() && r > 0.0)
    {
        return Err(ReplayError::Option {
            option: "--rate",
            value: r.to_string(),
            fix: "give records per second, above 0".into(),
        });
    }
    let target = TopicTemplate::parse(&opts.to).map_err(|fix| ReplayError::Option {
        option: "--to",
        value: opts.to.clone(),
        fix: fix.to_string(),
    })?;
    let k = &config.kafka;
    if [&k.registry_topic, &k.keks_topic, &k.quarantine_topic]
        .into_iter()
        .chain(&k.input_topics)
        .any(|t| *t == opts.to)
    {
        return Err(ReplayError::Option {
            option: "--to",
            value: opts.to.clone(),
            fix:
                "is the registry, keks, quarantine or an input topic: replay into an archive topic"
                    .into(),
        });
    }
    Ok(target)
}

/// The producer that writes the target: transactional (one transaction per chunk, a fenced id
/// per target) with exactly-once delivery.
fn replay_producer(
    config: &Config,
    opts: &ReplayOptions,
    transactional: bool,
) -> Result<FutureProducer, ReplayError> {
    let mut pc = crate::kafka::tool_producer_config(config);
    if transactional {
        pc.set("transactional.id", format!("byok-replay-{}", opts.to));
    }
    let producer: FutureProducer = pc.create().map_err(|source| ReplayError::Producer {
        step: "create",
        source,
    })?;
    if transactional {
        producer
            .init_transactions(Timeout::After(Duration::from_secs(60)))
            .map_err(|source| ReplayError::Producer {
                step: "init transactions",
                source,
            })?;
    }
    Ok(producer)
}

struct Run<'a> {
    config: &'a Config,
    opts: &'a ReplayOptions,
    target: TopicTemplate,
    registry: HashMap<DekId, crate::registry::DekRecord>,
    providers: BTreeMap<String, Arc<TenantKms>>,
    /// The operator's quarantine key, to open records sealed under it.
    operator: Arc<TenantKms>,
    /// Records in the target when the run started (provenance and plaintext).
    done: Seen,
    /// Records written (or, dry, to be written) by this run, the last [`WRITTEN_WINDOW`].
    written: Seen,
    /// Source DEKs opened so far, or why they could not be.
    keys: HashMap<DekId, Result<Arc<DataKey>, RecordError>>,
    deks: DekSet,
    /// The tool's leaves waiting for its next checkpoint (with `[audit]`).
    pending: Option<std::sync::Arc<crate::audit::leaves::PendingLeaves>>,
    producer: FutureProducer,
    /// Each chunk is one transaction.
    transactional: bool,
    stats: ReplayStats,
}

impl Run<'_> {
    /// With `--rate`, waits until the records read so far are due.
    async fn pace(&self, started: Instant) {
        if let Some(rate) = self.opts.rate {
            let due = Duration::from_secs_f64(self.stats.read as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// Opens, re-seals and writes one chunk; returns once every write is acknowledged.
    async fn chunk(&mut self, raws: Vec<Raw>) -> Result<(), ReplayError> {
        // unwrap each source DEK not met before, all at once
        let mut wanted: Vec<DekId> = Vec::new();
        for r in &raws {
            if let Some(dek) = dek_header(&r.headers)
                && !self.keys.contains_key(&dek)
                && !wanted.contains(&dek)
            {
                wanted.push(dek);
            }
        }
        let (registry, providers, operator) = (&self.registry, &self.providers, &self.operator);
        let registry_topic = &self.config.kafka.registry_topic;
        let unwraps = wanted.iter().map(|dek| async move {
            let result = match registry.get(dek) {
                None => Err(RecordError::DekUnknown {
                    dek: *dek,
                    registry_topic: registry_topic.clone(),
                }),
                Some(rec) => match providers
                    .get(&rec.tenant)
                    .or((rec.tenant == QUARANTINE_TENANT).then_some(operator))
                {
                    None => Err(RecordError::NoProvider {
                        dek: *dek,
                        tenant: rec.tenant.clone(),
                    }),
                    Some(p) => p.unwrap(&rec.kek, *dek, &rec.wrapped).await.map_err(|e| {
                        RecordError::Unwrap {
                            dek: *dek,
                            source: Arc::new(e),
                        }
                    }),
                },
            };
            (*dek, result)
        });
        for (dek, result) in futures::future::join_all(unwraps).await {
            self.keys.insert(dek, result);
        }

        if self.transactional {
            self.producer
                .begin_transaction()
                .map_err(|source| ReplayError::Producer {
                    step: "begin transaction",
                    source,
                })?;
            self.deks.begin_transaction();
        }
        let result = self.write(raws).await.and_then(|()| {
            if self.transactional {
                self.producer
                    .commit_transaction(Timeout::After(Duration::from_secs(60)))
                    .map_err(|source| ReplayError::Producer {
                        step: "commit transaction",
                        source,
                    })
            } else {
                Ok(())
            }
        });
        if result.is_err() && self.transactional {
            let _ = self
                .producer
                .abort_transaction(Timeout::After(Duration::from_secs(30)));
            self.deks.abort_transaction();
        }
        result.map_err(|e| ReplayError::Interrupted(Box::new(e)))
    }

    /// Re-seals the records of a chunk and sends them; returns once every write is acknowledged.
    async fn write(&mut self, raws: Vec<Raw>) -> Result<(), ReplayError> {
        let mut sends = Vec::new();
        for r in raws {
            self.stats.read += 1;
            let at = (r.partition, r.offset);
            match self.reseal(r).await {
                Ok(Some((topic, key, value, headers))) => {
                    if self.opts.dry_run {
                        continue;
                    }
                    let producer = self.producer.clone();
                    let pending = self.pending.clone();
                    sends.push(async move {
                        crate::kafka::send_record(
                            &producer,
                            &topic,
                            key.as_deref(),
                            &value,
                            headers,
                            pending.as_deref(),
                        )
                        .await
                        .map_err(|source| ReplayError::Produce {
                            topic: topic.clone(),
                            source,
                        })
                    });
                }
                Ok(None) => {}
                Err(reason) => {
                    tracing::warn!(topic = %self.opts.from, partition = at.0, offset = at.1, %reason, "record not replayed");
                    self.stats.failed.push(Unopened {
                        topic: self.opts.from.clone(),
                        partition: at.0,
                        offset: at.1,
                        marker: matches!(reason, crate::archive::RecordError::Marker(_)),
                        reason: reason.to_string(),
                    });
                }
            }
        }
        for r in futures::future::join_all(sends).await {
            r?;
        }
        Ok(())
    }

    /// The record re-sealed, `None` when it is not to be written (filtered, already in the
    /// target, a duplicate), or why it cannot be.
    #[allow(clippy::type_complexity)]
    async fn reseal(
        &mut self,
        r: Raw,
    ) -> Result<Option<(String, Option<Vec<u8>>, Vec<u8>, OwnedHeaders)>, RecordError> {
        let (h, quarantine) = self.headers_of(&r)?;
        if !self.opts.tenants.is_empty() && !self.opts.tenants.contains(&h.tenant) {
            self.stats.filtered += 1;
            return Ok(None);
        }
        let plain = zeroize::Zeroizing::new(self.open(&h, quarantine, &r)?);
        let tenant = h.tenant.clone();
        // copies are judged once opened: same provenance and same plaintext
        let seen = crate::seen::key(&h.src.to_string(), &crate::seen::digest(&plain));
        if self.done.contains(&seen) {
            self.stats.already_in_target += 1;
            return Ok(None);
        }
        if self.written.contains(&seen) {
            self.stats.duplicates += 1;
            return Ok(None);
        }
        if self.opts.dry_run {
            self.count(&tenant, seen);
            return Ok(None);
        }
        let (out, dek) = self.seal_for(&tenant, r.key.as_deref(), &plain).await?;
        let headers = target_headers(
            ArchiveHeaders {
                tenant: tenant.clone(),
                dek,
                src: h.src.clone(),
            },
            &r.headers,
        );
        let topic = self.target.topic_for(&TenantId::parse(&tenant)?);
        self.count(&tenant, seen);
        Ok(Some((topic, r.key, out, headers)))
    }

    /// The record's headers as an archive record's, and whether it is a quarantine record (then
    /// re-sealed under its tenant's key, when it has one).
    fn headers_of(&self, r: &Raw) -> Result<(ArchiveHeaders, bool), RecordError> {
        let pairs = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        if !r.headers.iter().any(|(k, _)| k == "byok.reason") {
            let h = ArchiveHeaders::from_pairs(pairs).map_err(RecordError::NotByok)?;
            return Ok((h, false));
        }
        let q = QuarantineHeaders::from_pairs(pairs).map_err(RecordError::NotByok)?;
        let tenant = q.tenant.filter(|t| self.providers.contains_key(t)).ok_or(
            RecordError::NoTenantKey {
                reason: q.reason.as_str(),
            },
        )?;
        Ok((
            ArchiveHeaders {
                tenant,
                dek: q.dek,
                src: q.src,
            },
            true,
        ))
    }

    /// The plaintext, opened with the DEK's owner as the AAD tenant: the record's tenant, or
    /// (quarantine records only) the operator's key with the tenant the record names bound.
    fn open(&self, h: &ArchiveHeaders, quarantine: bool, r: &Raw) -> Result<Vec<u8>, RecordError> {
        let key = match self.keys.get(&h.dek) {
            Some(Ok(k)) => Arc::clone(k),
            Some(Err(e)) => return Err(e.clone()),
            None => {
                return Err(RecordError::DekUnknown {
                    dek: h.dek,
                    registry_topic: self.config.kafka.registry_topic.clone(),
                });
            }
        };
        let owner = self
            .registry
            .get(&h.dek)
            .map(|r| r.tenant.clone())
            .unwrap_or_default();
        let value = r.value.as_deref().ok_or(RecordError::NullValue)?;
        let max = self.config.max_record_bytes();
        if owner == QUARANTINE_TENANT {
            if !quarantine {
                return Err(RecordError::OperatorDekInArchive { dek: h.dek });
            }
            return match crate::archive::open_operator(
                &key,
                Some(&h.tenant),
                r.key.as_deref(),
                value,
                max,
            ) {
                Ok((p, crate::tenant::OperatorClaim::Bound(_))) => Ok(p),
                Ok(_) => Err(RecordError::UnboundClaim {
                    tenant: h.tenant.clone(),
                }),
                Err(_) => Err(RecordError::DoesNotOpen {
                    dek: h.dek,
                    owner: crate::tenant::operator_aad(Some(&h.tenant)),
                }),
            };
        }
        if owner != h.tenant {
            return Err(RecordError::Relabelled {
                claimed: h.tenant.clone(),
                sealed_for: owner,
            });
        }
        envelope::open_bounded(&key, &owner, r.key.as_deref(), value, max).map_err(|_| {
            RecordError::DoesNotOpen {
                dek: h.dek,
                owner: owner.clone(),
            }
        })
    }

    /// `plain` sealed under the tenant's current DEK (a new one when it has none or reached a
    /// limit); the value and the DEK's id.
    async fn seal_for(
        &mut self,
        tenant: &str,
        record_key: Option<&[u8]>,
        plain: &[u8],
    ) -> Result<(Vec<u8>, DekId), RecordError> {
        let kms =
            Arc::clone(
                self.providers
                    .get(tenant)
                    .ok_or_else(|| RecordError::TenantHasNoKey {
                        tenant: tenant.to_owned(),
                    })?,
            );
        let mut out = Vec::with_capacity(plain.len() + envelope::OVERHEAD);
        for attempt in 0..2 {
            let dek = match self.deks.current(tenant) {
                Some(d) => d,
                None => self
                    .deks
                    .rotate(tenant, kms.as_ref(), &self.producer)
                    .await
                    .map_err(|e| RecordError::NoDek {
                        tenant: tenant.to_owned(),
                        source: Arc::new(e),
                    })?,
            };
            out.clear();
            match envelope::seal_into(
                &dek,
                tenant,
                record_key,
                plain,
                self.config.dek.compression,
                &mut out,
            ) {
                Ok(_) => return Ok((out, dek.id())),
                // the DEK reached a limit between the check and the seal: take a new one
                Err(_) if attempt == 0 => self.deks.forget(tenant),
                Err(e) => return Err(e.into()),
            }
        }
        Err(envelope::SealError::BlockUsedUp.into())
    }

    fn count(&mut self, tenant: &str, seen: crate::seen::Key) {
        self.stats.resealed += 1;
        *self.stats.by_tenant.entry(tenant.to_owned()).or_default() += 1;
        self.written.insert(seen);
    }
}

/// Most records of this run remembered to drop a second copy of one in the source.
pub const WRITTEN_WINDOW: usize = 200_000;

/// The records of the target topics that open (a planted one does not count), as keys of
/// provenance and plaintext: 16 bytes a record.
async fn in_target(
    config: &Config,
    keyring: &crate::keyring::Keyring,
    registry: &HashMap<DekId, crate::registry::DekRecord>,
    topics: &[String],
) -> Result<Seen, ReplayError> {
    let mut done = Seen::unbounded();
    let max = config.max_record_bytes();
    for topic in topics {
        let consumer = reader_consumer(config)?;
        let mut reader = TopicReader::open(&consumer, topic, None)
            .await
            .map_err(ReplayError::Target)?;
        while let Some(m) = reader.next().await? {
            let headers = crate::kafka::owned_headers(&m);
            let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
            let Ok(h) = ArchiveHeaders::from_pairs(pairs) else {
                continue;
            };
            let value = m.payload().unwrap_or_default();
            if let Some(d) =
                crate::archive::opens_to(keyring, registry, &h.tenant, m.key(), value, max).await
            {
                done.insert(crate::seen::key(&h.src.to_string(), &d));
            }
        }
    }
    Ok(done)
}

/// The target record's headers: the archive headers, then the source's own non-`byok.` ones.
fn target_headers(h: ArchiveHeaders, source: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &h.to_pairs() {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    for (k, v) in source.iter().filter(|(k, _)| !k.starts_with("byok.")) {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    headers
}

fn dek_header(headers: &[(String, Option<Vec<u8>>)]) -> Option<DekId> {
    headers
        .iter()
        .find(|(k, _)| k == "byok.dek")
        .and_then(|(_, v)| v.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.parse().ok())
}
