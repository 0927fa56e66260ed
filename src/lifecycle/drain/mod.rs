//! `byok replay --quarantine` and the worker's automatic drain: the quarantine into the archive
//! for tenants whose keys are usable again (docs/envelope-v1.md §3).
//!
//! - A record sealed under a DEK of its tenant (wrapped locally while the key was revoked, or by
//!   Key Vault): the DEK is first opened through Key Vault `decrypt` (proof the record can be
//!   read) and the record opened with it; then it moves to the archive unchanged (same value,
//!   key and `byok.src`).
//! - A record under the operator's quarantine key whose tenant claim is bound (§3a) and whose
//!   tenant is now configured with BYOK: opened with the operator's key and re-sealed under a new
//!   DEK of the tenant.
//! - Records that may move later (tenant still revoked, or not BYOK now) stay; records that never
//!   will (no tenant, a `too-large` marker, a claim not bound, a record that does not open) are
//!   **parked**: counted and reported, and the saved position moves past them.
//!
//! The quarantine is read in chunks of at most [`CHUNK_RECORDS`] records or [`CHUNK_BYTES`]
//! bytes, so memory stays bounded whatever its size. For each chunk the archive is searched
//! (from an hour before the chunk's oldest record) for copies: same `byok.src` **and** the same
//! plaintext once opened (`copies.rs`), so a junk record carrying a copied `byok.src` hides
//! nothing; copies are not written again. Progress is kept as offsets of the consumer group
//! `<group_id>.drain` on the quarantine topic, saved after every chunk: each partition's first
//! record that stays, so a later drain starts there.
//!
//! It must never move a record into the archive without first opening it (its DEK through Key
//! Vault), and never write one twice.

mod copies;
mod decide;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

use self::copies::Wanted;
use self::decide::{Cx, Decision};
use crate::archive::RecordError;
use crate::archive::{ReadOptions, load_registry};
use crate::config::{Config, TenantId};
use crate::dek::DekId;
use crate::deks::DekSet;
use crate::envelope::{self, headers::ArchiveHeaders};
use crate::kafka::{TopicReader, reader_consumer};
use crate::keyring::Keyring;
use crate::seen::Seen;

/// Most records of the quarantine handled at once.
pub const CHUNK_RECORDS: usize = 5_000;
/// Most bytes of quarantine values handled at once.
pub const CHUNK_BYTES: usize = 32 << 20;
/// How many (provenance, plaintext) pairs written by this drain are remembered, so that two
/// copies of one record in the quarantine (a batch quarantined twice) are written once.
pub const WRITTEN_WINDOW: usize = 200_000;

/// The consumer group whose offsets on the quarantine topic keep the drain's progress.
pub fn drain_group(config: &Config) -> String {
    format!("{}.drain", config.kafka.group_id)
}

/// What to drain.
#[derive(Debug, Clone, Default)]
pub struct DrainOptions {
    /// Only this tenant's records.
    pub tenant: Option<String>,
    /// Count what would move, write nothing.
    pub dry_run: bool,
}

/// What draining did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DrainStats {
    /// Quarantine records read.
    pub read: u64,
    /// Moved to the archive unchanged (tenant DEK proven through Key Vault).
    pub moved: u64,
    /// Opened with the operator's key and re-sealed under the tenant's key.
    pub resealed: u64,
    /// Already in the archive (same byok.src and plaintext): not written again.
    pub already_archived: u64,
    /// Left in the quarantine for a later drain, by reason.
    pub stayed: BTreeMap<String, u64>,
    /// Left in the quarantine for good (nothing any drain can do), by reason; the saved
    /// position moves past them.
    pub parked: BTreeMap<String, u64>,
    /// Records that could not be handled, with the reason (never skipped silently).
    pub failed: Vec<String>,
    /// Chunks handled.
    pub chunks: u64,
}

/// One quarantine record as read.
pub(super) struct Quarantined {
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Drains the quarantine; `progress(done, total)` after each record.
pub async fn drain_quarantine(
    config: &Config,
    opts: &DrainOptions,
    progress: impl FnMut(u64, u64),
) -> Result<DrainStats, super::LifecycleError> {
    let keyring = Keyring::new(config)?;
    drain_quarantine_with(config, &keyring, opts, progress).await
}

/// [`drain_quarantine`] with the process's keyring (the worker's automatic drain shares its
/// rate limiters).
pub async fn drain_quarantine_with(
    config: &Config,
    keyring: &Keyring,
    opts: &DrainOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<DrainStats, super::LifecycleError> {
    let registry = load_registry(config).await?;
    let group = crate::kafka::group_consumer(config, &drain_group(config))?;
    let q_topic = config.kafka.quarantine_topic.clone();
    let starts = crate::kafka::committed(&group, &q_topic)?;
    let consumer = reader_consumer(config)?;
    let read_opts = ReadOptions {
        start_offsets: starts,
        ..ReadOptions::topic(q_topic.clone())
    };
    let mut reader = TopicReader::open(&consumer, &q_topic, Some(&read_opts)).await?;
    let total = reader.total;
    let mut run = Run {
        config,
        keyring,
        cx: Cx {
            config,
            registry: &registry,
            tenants: keyring.tenants(),
            operator: keyring.operator(),
            opts,
        },
        producer: super::tool_producer(config)?,
        deks: DekSet::new(
            config.dek.limits,
            format!("drain-{}", crate::kafka::worker_id(config)),
            config.kafka.registry_topic.clone(),
        ),
        audit: None,
        pending: None,
        proven: HashMap::new(),
        written: Seen::window(WRITTEN_WINDOW),
        stats: DrainStats::default(),
        position: Position::default(),
        index: None,
    };
    loop {
        let chunk = read_chunk(&mut reader).await?;
        if chunk.is_empty() {
            break;
        }
        run.chunk(chunk, &mut |n| progress(n, total)).await?;
        // the chunk's records named before the next drain starts after them
        if let Some(a) = &run.audit {
            a.checkpoint().await?;
        }
        if !opts.dry_run && opts.tenant.is_none() {
            run.position.save(&group, &q_topic, config);
        }
    }
    for (reason, n) in &run.stats.parked {
        metrics::counter!("byok_drain_parked_total", "reason" => reason.clone()).increment(*n);
    }
    if let Some(a) = run.audit.take() {
        a.finish().await?;
    }
    Ok(run.stats)
}

/// The next chunk of the quarantine (empty at its end).
async fn read_chunk(
    reader: &mut TopicReader<'_>,
) -> Result<Vec<Quarantined>, super::LifecycleError> {
    let mut chunk = Vec::new();
    let mut bytes = 0;
    while chunk.len() < CHUNK_RECORDS && bytes < CHUNK_BYTES {
        let Some(m) = reader.next().await? else { break };
        let value = m.payload().unwrap_or_default().to_vec();
        bytes += value.len();
        chunk.push(Quarantined {
            partition: m.partition(),
            offset: m.offset(),
            timestamp: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            value,
            headers: crate::kafka::owned_headers(&m),
        });
    }
    Ok(chunk)
}

/// One drain's state across chunks.
struct Run<'a> {
    config: &'a Config,
    keyring: &'a Keyring,
    cx: Cx<'a>,
    producer: FutureProducer,
    deks: DekSet,
    /// The drain's audit writer, started before its first write (with `[audit]`): a drain that
    /// moves nothing, as the worker's at each start, writes no log and asks Key Vault nothing.
    audit: Option<super::ToolAudit>,
    /// The tool's leaves waiting for its next checkpoint.
    pending: Option<std::sync::Arc<crate::audit::leaves::PendingLeaves>>,
    proven: HashMap<DekId, bool>,
    written: Seen,
    stats: DrainStats,
    position: Position,
    /// The archive's `byok.src` index, once read.
    index: Option<copies::Index>,
}

impl Run<'_> {
    /// Decides, de-duplicates and writes one chunk, then records where the next drain starts.
    async fn chunk(
        &mut self,
        chunk: Vec<Quarantined>,
        progress: &mut impl FnMut(u64),
    ) -> Result<(), super::LifecycleError> {
        self.stats.chunks += 1;
        let q_topic = self.config.kafka.quarantine_topic.clone();
        let mut bound = Vec::new();
        for r in chunk {
            self.stats.read += 1;
            progress(self.stats.read);
            self.position.seen(r.partition, r.offset);
            let at = format!("{q_topic}/{}/{}", r.partition, r.offset);
            match self.cx.decide(&r, &at, &mut self.proven).await {
                None => self.position.stays(r.partition, r.offset),
                Some(Decision::Archive {
                    tenant,
                    src,
                    digest,
                    plain,
                }) => bound.push((r, tenant, src, digest, plain)),
                Some(Decision::Stay(why)) => {
                    *self.stats.stayed.entry(why).or_default() += 1;
                    self.position.stays(r.partition, r.offset);
                }
                Some(Decision::Park { reason, report }) => {
                    *self.stats.parked.entry(reason).or_default() += 1;
                    self.stats.failed.extend(report);
                }
                Some(Decision::Fail(why)) => {
                    self.stats.failed.push(why);
                    self.position.stays(r.partition, r.offset);
                }
            }
        }
        let wanted: Vec<Wanted> = bound
            .iter()
            .map(|(_, t, src, digest, _)| Wanted {
                src: src.clone(),
                tenant: t.to_string(),
                digest: *digest,
            })
            .collect();
        let oldest = bound.iter().filter_map(|b| b.0.timestamp).min();
        let copies = if wanted.is_empty() {
            std::collections::HashSet::new()
        } else {
            let (config, keyring, registry) = (self.config, self.keyring, self.cx.registry);
            let index = self.index(oldest).await?;
            copies::find(config, keyring, registry, &wanted, (index, oldest)).await?
        };
        if !self.cx.opts.dry_run && bound.len() > copies.len() {
            self.start_audit().await?;
        }
        let mut sends = Vec::new();
        for (i, (r, tenant, src, digest, plain)) in bound.into_iter().enumerate() {
            if copies.contains(&i) || !self.written.insert(crate::seen::key(&src, &digest)) {
                self.stats.already_archived += 1;
                continue;
            }
            let value = match plain {
                None => {
                    self.stats.moved += 1;
                    r.value.clone()
                }
                Some(p) if self.cx.opts.dry_run => {
                    drop(p);
                    self.stats.resealed += 1;
                    continue;
                }
                Some(p) => match self.reseal(&tenant, &r, &p).await {
                    Ok(v) => {
                        self.stats.resealed += 1;
                        v
                    }
                    Err(why) => {
                        self.stats
                            .failed
                            .push(format!("{q_topic}/{}/{}: {why}", r.partition, r.offset));
                        self.position.stays(r.partition, r.offset);
                        continue;
                    }
                },
            };
            if self.cx.opts.dry_run {
                continue;
            }
            sends.push(self.send(&tenant, &r, src, value));
        }
        for r in futures::future::join_all(sends).await {
            if let Err((p, o, why)) = r {
                self.stats.failed.push(why);
                self.position.stays(p, o);
            }
        }
        let _ = self.producer.flush(Timeout::After(Duration::from_secs(30)));
        Ok(())
    }

    /// The archive's index of `byok.src` values, read once (again only when a chunk holds a
    /// record older than it covers).
    async fn index(
        &mut self,
        oldest: Option<i64>,
    ) -> Result<&copies::Index, super::LifecycleError> {
        let since = copies::since(oldest);
        let index = match self.index.take() {
            Some(i) if i.covers(since) => i,
            _ => {
                let topics = self
                    .keyring
                    .tenants()
                    .keys()
                    .map(|t| self.config.kafka.archive_topic.topic_for(t))
                    .collect();
                copies::Index::build(self.config, &topics, since).await?
            }
        };
        Ok(self.index.insert(index))
    }

    /// Starts the drain's audit writer, once, when the audit log is configured.
    async fn start_audit(&mut self) -> Result<(), super::LifecycleError> {
        if self.audit.is_some() {
            return Ok(());
        }
        if let Some(a) = super::tool_audit(self.config, "byok-drain", &self.producer).await? {
            self.deks.set_audit(Some(a.records.clone()));
            self.pending = Some(std::sync::Arc::clone(&a.records.pending));
            self.audit = Some(a);
        }
        Ok(())
    }

    /// A plaintext re-sealed under the tenant's current DEK (made through Key Vault if needed).
    async fn reseal(
        &mut self,
        tenant: &TenantId,
        r: &Quarantined,
        plain: &[u8],
    ) -> Result<Vec<u8>, RecordError> {
        let kms =
            self.keyring
                .tenant(tenant.as_str())
                .ok_or_else(|| RecordError::TenantHasNoKey {
                    tenant: tenant.to_string(),
                })?;
        let dek = match self.deks.current(tenant.as_str()) {
            Some(d) => d,
            None => self
                .deks
                .rotate(tenant.as_str(), kms.as_ref(), &self.producer)
                .await
                .map_err(|e| RecordError::NoDek {
                    tenant: tenant.to_string(),
                    source: std::sync::Arc::new(e),
                })?,
        };
        let mut out = Vec::with_capacity(plain.len() + envelope::OVERHEAD);
        envelope::seal_into(
            &dek,
            tenant.as_str(),
            r.key.as_deref(),
            plain,
            self.config.dek.compression,
            &mut out,
        )?;
        Ok(out)
    }

    /// Produces one archive record; the error names the quarantine record.
    fn send(
        &self,
        tenant: &TenantId,
        r: &Quarantined,
        src: String,
        value: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), (i32, i64, String)>> + use<> {
        let topic = self.config.kafka.archive_topic.topic_for(tenant);
        let dek = envelope::dek_id(&value).ok();
        let (partition, offset, key) = (r.partition, r.offset, r.key.clone());
        let producer = self.producer.clone();
        let pending = self.pending.clone();
        let tenant = tenant.to_string();
        async move {
            let failed = |why: String| (partition, offset, why);
            let dek = dek.ok_or_else(|| failed("the value has no v1 header".into()))?;
            let src = src.parse().map_err(|e| failed(format!("byok.src: {e}")))?;
            let headers = ArchiveHeaders { tenant, dek, src };
            let mut oh = OwnedHeaders::new();
            for (k, v) in headers.to_pairs() {
                oh = oh.insert(Header {
                    key: k,
                    value: Some(&v),
                });
            }
            crate::kafka::send_record(
                &producer,
                &topic,
                key.as_deref(),
                &value,
                oh,
                pending.as_deref(),
            )
            .await
            .map_err(|e| failed(format!("{partition}/{offset}: produce to {topic}: {e}")))
        }
    }
}

/// Where the next drain starts: per partition, the first record that stays (or the end read).
#[derive(Default)]
struct Position {
    read_to: BTreeMap<i32, i64>,
    first_staying: BTreeMap<i32, i64>,
}

impl Position {
    fn seen(&mut self, partition: i32, offset: i64) {
        let e = self.read_to.entry(partition).or_insert(offset + 1);
        *e = (*e).max(offset + 1);
    }

    fn stays(&mut self, partition: i32, offset: i64) {
        let e = self.first_staying.entry(partition).or_insert(offset);
        *e = (*e).min(offset);
    }

    /// Commits the position (a failure only means the next drain reads more again).
    fn save(&self, group: &rdkafka::consumer::StreamConsumer, topic: &str, config: &Config) {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (p, end) in &self.read_to {
            let at = self.first_staying.get(p).copied().unwrap_or(*end);
            let _ = tpl.add_partition_offset(topic, *p, rdkafka::Offset::Offset(at));
        }
        if tpl.count() > 0
            && let Err(e) = group.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        {
            tracing::warn!(error = %e, group = %drain_group(config), "drain progress not saved; the next drain reads these records again (nothing is written twice)");
        }
    }
}
