//! Writing the audit log (docs/audit-v1.md): a writer's Ed25519 session certified by the
//! operator's signing key in Key Vault (`signer`), then a signed `checkpoint` per batch naming its
//! outputs as leaves and chaining each input partition, and `end` on a clean exit.
//!
//! This module must never let a batch's offsets be committed before its checkpoint is
//! acknowledged, and never sign anything with a key that leaves memory.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};
use time::OffsetDateTime;

use crate::audit::codec::{append_signature, b64, format_ms};
pub use crate::audit::leaves::{PendingLeaves, leaf_of};
use crate::audit::merkle::{self, ChainStep, Hash, ZERO};
use crate::audit::records::{
    Checkpoint, Leaf, Range, RecordKind, RecordSigner, Session, SignerStatement, out_runs,
    parse_checkpoint, to_json, verify_session_signed,
};
use crate::config::{AuditConfig, Config};
use crate::lock;

mod statements;

impl AuditorError {
    /// Whether trying again later may succeed (the vault or the broker did not answer).
    pub fn is_transient(&self) -> bool {
        match self {
            AuditorError::Certify(e) => e.is_transient(),
            AuditorError::Produce { .. } | AuditorError::VersionChanged { .. } => true,
            _ => false,
        }
    }
}

/// The audit log could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditorError {
    /// The operator's signing key could not be reached or refused to sign.
    #[error("certifying the session key with the operator's signing key: {0}")]
    Certify(#[from] crate::kms::KmsError),
    /// The signing key's client could not be set up.
    #[error("the operator's signing key: {0}")]
    Setup(String),
    /// Key Vault signed with another key version than the statement names.
    #[error("Key Vault signed with {got}, the statement names {named}; run again")]
    VersionChanged {
        /// The version that signed.
        got: String,
        /// The version named.
        named: String,
    },
    /// An audit record was not acknowledged.
    #[error("produce to the audit topic {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// A Kafka client could not be made.
    #[error("Kafka ({step}): {source}")]
    Kafka {
        /// What was done.
        step: &'static str,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// The session's key could not be made.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

/// A checkpoint handed to the producer ([`Auditor::checkpoint_start`]).
#[allow(missing_debug_implementations)] // the delivery future has no Debug
pub struct PendingCheckpoint<'a> {
    auditor: &'a Auditor,
    delivery: rdkafka::producer::DeliveryFuture,
    heads: Vec<((String, i32), i64, Hash)>,
}

impl PendingCheckpoint<'_> {
    /// Waits for the checkpoint's acknowledgement; returns the commit metadata per input
    /// partition.
    pub async fn written(self) -> Result<BTreeMap<(String, i32), String>, AuditorError> {
        let produce = |source| AuditorError::Produce {
            topic: self.auditor.topic.clone(),
            source,
        };
        let d = match self.delivery.await {
            Ok(Ok(d)) => d,
            Ok(Err((e, _))) => return Err(produce(e)),
            Err(_) => return Err(produce(rdkafka::error::KafkaError::Canceled)),
        };
        let at = (d.partition, d.offset);
        let mut meta = BTreeMap::new();
        let mut h = lock(&self.auditor.heads);
        for (k, to, link) in self.heads {
            meta.insert(k.clone(), metadata(&link, at));
            if let Some(head) = h.get_mut(&k).filter(|x| x.to == to && x.link == link) {
                head.at = Some(at);
            }
        }
        ::metrics::counter!("byok_audit_checkpoints_total").increment(1);
        Ok(meta)
    }
}

/// A writer's role in its signer statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A worker of the consumer group: its checkpoints carry input ranges.
    Worker,
    /// An operator tool (drain, replay, rewrap): checkpoints without ranges.
    Tool,
}

/// One input partition's part of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRange {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// Offset of the batch's first record there.
    pub first: i64,
    /// The offset the batch commits (one past its last record).
    pub to: i64,
    /// Records consumed there.
    pub n: u64,
}

/// A batch's input ranges: per partition, its first offset, its commit point and its records.
pub fn ranges_of(batch: &[rdkafka::message::OwnedMessage]) -> Vec<BatchRange> {
    let mut by: BTreeMap<(&str, i32), BatchRange> = BTreeMap::new();
    for m in batch {
        let r = by
            .entry((m.topic(), m.partition()))
            .or_insert_with(|| BatchRange {
                topic: m.topic().to_owned(),
                partition: m.partition(),
                first: m.offset(),
                to: m.offset() + 1,
                n: 0,
            });
        r.first = r.first.min(m.offset());
        r.to = r.to.max(m.offset() + 1);
        r.n += 1;
    }
    by.into_values().collect()
}

/// What a writer of registry and key records needs from the audit log (§5b): their signer,
/// where their copies go, and the leaves waiting for the next checkpoint.
#[derive(Debug, Clone)]
pub struct RecordAudit {
    /// Signs the records with the session's key.
    pub signer: RecordSigner,
    /// The audit topic (the copies, keyed `dek:<id>` / `kek:<tenant>`).
    pub topic: String,
    /// Leaves named by the next checkpoint.
    pub pending: Arc<PendingLeaves>,
}

/// Produces a registry or key record: signed, with its copy in the audit topic, and its leaf
/// pending, when `audit` is given; as `unsigned` alone otherwise. Returns the value produced once
/// the broker acknowledged both.
pub async fn publish_record(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    kind: RecordKind,
    unsigned: Vec<u8>,
    prev: &Hash,
    audit: Option<&RecordAudit>,
) -> Result<Vec<u8>, rdkafka::error::KafkaError> {
    let timeout = Timeout::After(Duration::from_secs(60));
    let Some(a) = audit else {
        let record = FutureRecord::to(topic).key(key).payload(&unsigned);
        producer.send(record, timeout).await.map_err(|(e, _)| e)?;
        return Ok(unsigned);
    };
    let value = a.signer.sign(&unsigned, kind, prev);
    let copy_key = kind.copy_key(key);
    let (copy, sent) = futures::join!(
        producer.send(
            FutureRecord::to(&a.topic).key(&copy_key).payload(&value),
            timeout
        ),
        producer.send(FutureRecord::to(topic).key(key).payload(&value), timeout),
    );
    copy.map_err(|(e, _)| e)?;
    let d = sent.map_err(|(e, _)| e)?;
    a.pending.push(leaf_of(
        topic,
        d.partition,
        d.offset,
        Some(key.as_bytes()),
        Some(&value),
        &[],
    ));
    Ok(value)
}

/// Where the chains stood ([`Auditor::snapshot`]), held while a transaction is open.
#[derive(Debug)]
pub struct Snapshot {
    session: (u64, Hash),
    heads: BTreeMap<(String, i32), Head>,
    _txn: tokio::sync::OwnedMutexGuard<()>,
}

/// Where a partition's chain stands.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    to: i64,
    link: Hash,
    /// Where its checkpoint is in the audit topic (unknown until acknowledged).
    at: Option<(i32, i64)>,
}

/// The process's audit writer.
#[allow(missing_debug_implementations)] // the producer and consumer have no Debug
pub struct Auditor {
    session: tokio::sync::Mutex<Session>,
    /// Checkpoints (the worker's producer: in its transaction under exactly-once).
    producer: FutureProducer,
    /// Signer and end records (never transactional).
    statements: FutureProducer,
    topic: String,
    group: String,
    role: Role,
    /// Records produced outside batches, named by the next checkpoint.
    pub pending: Arc<PendingLeaves>,
    heads: Mutex<BTreeMap<(String, i32), Head>>,
    /// Reads committed offsets (with their metadata) and the checkpoints they name.
    lookup: Mutex<BaseConsumer>,
    /// Stops the receipts task.
    receipts_stop: tokio::sync::Notify,
    /// Held while a transaction holding a checkpoint is open (exactly-once).
    txn: Arc<tokio::sync::Mutex<()>>,
    /// A `heads` record is due (the assignment changed).
    heads_due: std::sync::atomic::AtomicBool,
    /// Heads of partitions revoked since the last `heads` record: where their chains stood when
    /// they were handed over.
    handed_over: Mutex<BTreeMap<(String, i32), Head>>,
    /// What certifies a new session key (re-certification at half-life).
    certifier: (Config, AuditConfig),
    /// When the current session key was certified.
    certified: Mutex<std::time::Instant>,
}

impl Auditor {
    /// Starts a writer: a new session key certified by the operator's signing key, and its
    /// `signer` record acknowledged. A worker that cannot do this must not join the group.
    pub async fn start(
        config: &Config,
        audit: &AuditConfig,
        role: Role,
        group: &str,
        producer: FutureProducer,
        statements: FutureProducer,
    ) -> Result<Self, AuditorError> {
        // one writer per session: a restarted container keeps its host name and pid
        let writer = format!(
            "{}-{}",
            crate::kafka::worker_id(config),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let mut session = Session::generate(&writer)?;
        // every Key Vault request from now on leaves a receipt (the certification's too)
        crate::kms::receipts::enable();
        let value = certify(config, audit, role, group, &mut session).await?;
        let lookup: BaseConsumer = crate::kafka::consumer_config(config)
            .set("group.id", group)
            .create()
            .map_err(|source| AuditorError::Kafka {
                step: "create the audit lookup consumer",
                source,
            })?;
        let a = Self {
            session: tokio::sync::Mutex::new(session),
            producer,
            statements,
            topic: audit.topic.clone(),
            group: group.to_owned(),
            role,
            pending: Arc::new(PendingLeaves::default()),
            heads: Mutex::new(BTreeMap::new()),
            lookup: Mutex::new(lookup),
            receipts_stop: tokio::sync::Notify::new(),
            txn: Arc::new(tokio::sync::Mutex::new(())),
            heads_due: std::sync::atomic::AtomicBool::new(false),
            handed_over: Mutex::new(BTreeMap::new()),
            certifier: (config.clone(), audit.clone()),
            certified: Mutex::new(std::time::Instant::now()),
        };
        let kid = serde_json::from_slice::<serde_json::Value>(&value)
            .ok()
            .and_then(|j| j["signing_kid"].as_str().map(str::to_owned))
            .unwrap_or_default();
        a.produce(&a.statements, &writer, value).await?;
        tracing::info!(writer, topic = %a.topic, signing_kid = %kid, "audit session certified by the operator's signing key");
        if !audit.trusted.contains(&kid) {
            tracing::warn!(signing_kid = %kid, "this signing key version is not in audit.signing_keys: readers (byok cat, drain, replay, verify, the workers) will not trust this session's records until it is pinned there");
        }
        Ok(a)
    }

    /// The signer, copy topic and pending leaves of this session's registry and key records.
    pub async fn record_audit(&self) -> RecordAudit {
        RecordAudit {
            signer: self.session.lock().await.record_signer(),
            topic: self.topic.clone(),
            pending: Arc::clone(&self.pending),
        }
    }

    async fn produce(
        &self,
        producer: &FutureProducer,
        writer: &str,
        value: Vec<u8>,
    ) -> Result<(i32, i64), AuditorError> {
        producer
            .send(
                FutureRecord::to(&self.topic).key(writer).payload(&value),
                Timeout::After(Duration::from_secs(60)),
            )
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(source, _)| AuditorError::Produce {
                topic: self.topic.clone(),
                source,
            })
    }

    /// Writes the checkpoint of a batch (or of a tool's writes, `ranges` empty): its leaves and
    /// those pending, the root, and per input partition the chain link. Returns the commit
    /// metadata per input partition, once the checkpoint is acknowledged.
    pub async fn checkpoint(
        &self,
        leaves: Vec<Leaf>,
        ranges: &[BatchRange],
    ) -> Result<BTreeMap<(String, i32), String>, AuditorError> {
        self.checkpoint_start(leaves, ranges).await?.written().await
    }

    /// Signs a batch's checkpoint and hands it to the producer; the next batch's checkpoint may
    /// follow at once (one producer, one partition: the log keeps the order they were handed
    /// over, so checkpoints do not wait for each other's acknowledgement).
    /// [`PendingCheckpoint::written`] waits for this one's.
    pub async fn checkpoint_start(
        &self,
        mut leaves: Vec<Leaf>,
        ranges: &[BatchRange],
    ) -> Result<PendingCheckpoint<'_>, AuditorError> {
        leaves.extend(self.pending.take());
        let out = out_runs(&mut leaves);
        let hashes: Vec<Hash> = leaves.iter().map(|l| l.hash).collect();
        let root = merkle::root(&hashes);
        let mut session = self.session.lock().await;
        let (seq, wprev) = session.next();
        let mut heads = Vec::new();
        let mut out_ranges = Vec::new();
        for r in ranges {
            let (prev, from, restart) = self.prev_of(r);
            let link = merkle::link(&ChainStep {
                prev: &prev,
                topic: &r.topic,
                partition: r.partition,
                from,
                to: r.to,
                n: r.n,
                root: &root,
            });
            out_ranges.push(Range {
                topic: r.topic.clone(),
                partition: r.partition,
                from,
                to: r.to,
                n: r.n,
                prev: b64(&prev),
                link: b64(&link),
                restart,
            });
            heads.push(((r.topic.clone(), r.partition), r.to, link));
        }
        let c = Checkpoint {
            v: 1,
            t: "checkpoint".into(),
            writer: session.writer().to_owned(),
            seq,
            wprev,
            created: format_ms(OffsetDateTime::now_utc()),
            group: self.group.clone(),
            root: b64(&root),
            leaves: leaves.len() as u64,
            out,
            ranges: out_ranges,
        };
        let value = session.sign(&to_json(&c));
        let writer = session.writer().to_owned();
        let delivery = self.enqueue(&writer, &value).await?;
        // the next batch's ranges continue from these links
        let mut h = lock(&self.heads);
        for (k, to, link) in &heads {
            h.insert(
                k.clone(),
                Head {
                    to: *to,
                    link: *link,
                    at: None,
                },
            );
        }
        drop(h);
        drop(session);
        Ok(PendingCheckpoint {
            auditor: self,
            delivery,
            heads,
        })
    }

    /// Hands a record to the checkpoints' producer (waiting while its queue is full).
    async fn enqueue(
        &self,
        writer: &str,
        value: &[u8],
    ) -> Result<rdkafka::producer::DeliveryFuture, AuditorError> {
        loop {
            let record = FutureRecord::to(&self.topic).key(writer).payload(value);
            match self.producer.send_result(record) {
                Ok(d) => return Ok(d),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => tokio::time::sleep(Duration::from_millis(5)).await,
                Err((source, _)) => {
                    return Err(AuditorError::Produce {
                        topic: self.topic.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// The previous link of a batch's range, its `from`, and why the chain restarts if it does.
    fn prev_of(&self, r: &BatchRange) -> (Hash, i64, Option<String>) {
        let key = (r.topic.clone(), r.partition);
        if let Some(h) = lock(&self.heads).get(&key).cloned() {
            return (h.link, h.to, None);
        }
        match self.adopt(&r.topic, r.partition) {
            Ok(Some(h)) => (h.link, h.to, None),
            // the partition's first batch ever: its chain starts here
            Ok(None) => (ZERO, r.first, None),
            Err(reason) => (ZERO, r.first, Some(reason)),
        }
    }

    /// The chain head a previous owner left in the committed offset's metadata, if the
    /// checkpoint it names verifies and its range for the partition ends at the committed
    /// offset; `None` when nothing was ever committed (the chain starts); else why not.
    fn adopt(&self, topic: &str, partition: i32) -> Result<Option<Head>, String> {
        let consumer = lock(&self.lookup);
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(|e| format!("committed offset not readable: {e}"))?;
        let e = committed
            .elements()
            .into_iter()
            .next()
            .ok_or("no committed offset")?;
        let Offset::Offset(to) = e.offset() else {
            return Ok(None);
        };
        let meta = e.metadata().to_owned();
        if meta.is_empty() {
            // brokers that drop commit metadata (Tansu 0.6.0): the link is in the partition's
            // last checkpoint
            return last_checkpoint(&consumer, &self.topic, topic, partition, to).map(Some);
        }
        let (link, at) =
            parse_metadata(&meta).ok_or("commit metadata not byok-chain-v1".to_owned())?;
        let value = read_at(&consumer, &self.topic, at)?;
        drop(consumer);
        let ends_there = range_ending(&value, topic, partition, to).is_some_and(|l| l == link);
        if !ends_there {
            return Err("the checkpoint named by the commit metadata does not end there".into());
        }
        Ok(Some(Head {
            to,
            link,
            at: Some(at),
        }))
    }

    /// The commit metadata of partitions whose chain head ends at the offset to commit.
    pub fn metadata_for(
        &self,
        commit: &BTreeMap<(String, i32), i64>,
    ) -> BTreeMap<(String, i32), String> {
        let heads = lock(&self.heads);
        commit
            .iter()
            .filter_map(|(k, to)| {
                let h = heads.get(k).filter(|h| h.to == *to)?;
                Some((k.clone(), metadata(&h.link, h.at?)))
            })
            .collect()
    }

    /// Forgets the chain heads of revoked partitions (their next owner continues the chains; if
    /// they come back, the committed metadata says where they stand).
    pub fn forget(&self, revoked: &TopicPartitionList) {
        let mut heads = lock(&self.heads);
        let mut handed = lock(&self.handed_over);
        for e in revoked.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let Some(h) = heads.remove(&key) {
                handed.insert(key, h);
            }
        }
        // the assignment changed: where the chains stood goes out with the next heads
        self.heads_due
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Where the writer's chain and the partitions' chains stand (before a transaction).
    pub async fn snapshot(&self) -> Snapshot {
        // no kv record is written while the transaction is open: it would follow a checkpoint
        // an abort may take back
        let txn = Arc::clone(&self.txn).lock_owned().await;
        let s = self.session.lock().await;
        Snapshot {
            session: s.position(),
            heads: lock(&self.heads).clone(),
            _txn: txn,
        }
    }

    /// Puts the chains back where a snapshot saw them (the transaction holding a checkpoint was
    /// aborted: that checkpoint never becomes visible, so nothing may follow it).
    pub async fn restore(&self, snapshot: Snapshot) {
        self.session.lock().await.resume_position(snapshot.session);
        *lock(&self.heads) = snapshot.heads;
    }

    /// This writer's role.
    pub fn role(&self) -> Role {
        self.role
    }
}

/// The link of the range of `topic`/`partition` ending at `to` in a checkpoint value, if it has
/// one.
fn range_ending(value: &[u8], topic: &str, partition: i32, to: i64) -> Option<Hash> {
    let c = parse_checkpoint(&signed_text(value).ok()?).ok()?;
    let r = c
        .ranges
        .iter()
        .find(|r| r.topic == topic && r.partition == partition && r.to == to)?;
    crate::audit::codec::unb64_32(&r.link, "link").ok()
}

/// How far back the audit topic is searched for a partition's last checkpoint.
const LAST_CHECKPOINT_SEARCH: i64 = 50_000;

/// The newest checkpoint of the audit topic whose range for `topic`/`partition` ends at `to`,
/// searched backwards in windows over the last [`LAST_CHECKPOINT_SEARCH`] records of each
/// audit partition.
fn last_checkpoint(
    consumer: &BaseConsumer,
    audit_topic: &str,
    topic: &str,
    partition: i32,
    to: i64,
) -> Result<Head, String> {
    let md = consumer
        .fetch_metadata(Some(audit_topic), Duration::from_secs(10))
        .map_err(|e| format!("audit topic not readable: {e}"))?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    for ap in parts {
        let (lo, hi) = consumer
            .fetch_watermarks(audit_topic, ap, Duration::from_secs(10))
            .map_err(|e| format!("audit topic not readable: {e}"))?;
        let floor = lo.max(hi - LAST_CHECKPOINT_SEARCH);
        let mut end = hi;
        while end > floor {
            let start = floor.max(end - 1000);
            let window = read_range(consumer, audit_topic, ap, start, end)?;
            for (offset, value) in window.iter().rev() {
                if let Some(link) = range_ending(value, topic, partition, to) {
                    return Ok(Head {
                        to,
                        link,
                        at: Some((ap, *offset)),
                    });
                }
            }
            end = start;
        }
    }
    Err("commit metadata missing and no checkpoint ends at the committed offset".into())
}

/// The records of an audit partition in `[start, end)`.
fn read_range(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    start: i64,
    end: i64,
) -> Result<Vec<(i64, Vec<u8>)>, String> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(start))
        .map_err(|e| e.to_string())?;
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut next = start;
    while next < end && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                if m.offset() < end {
                    out.push((m.offset(), m.payload().unwrap_or_default().to_vec()));
                }
            }
            Some(Err(e)) => return Err(e.to_string()),
            // past transaction markers the position moves without a message
            None => {
                if let Ok(pos) = consumer.position()
                    && let Some(Offset::Offset(o)) =
                        pos.find_partition(topic, partition).map(|e| e.offset())
                {
                    next = next.max(o);
                }
            }
        }
    }
    let _ = consumer.unassign();
    Ok(out)
}

/// The signed text of a checkpoint named by commit metadata. Its shape is checked here, not its
/// signature (that needs its writer's signer record, which `byok verify` reads): a forged
/// checkpoint can only make the next link start from a wrong `prev`, which verify reports as a
/// chain break.
fn signed_text(value: &[u8]) -> Result<String, String> {
    crate::audit::codec::split_signed(value, "sig")
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

/// The commit metadata of a chain link: `byok-chain-v1:<hex link>:<audit partition>:<audit
/// offset of the checkpoint>`.
fn metadata(link: &Hash, at: (i32, i64)) -> String {
    format!("byok-chain-v1:{}:{}:{}", hex::encode(link), at.0, at.1)
}

/// Reads [`metadata`] back.
fn parse_metadata(meta: &str) -> Option<(Hash, (i32, i64))> {
    let mut it = meta.strip_prefix("byok-chain-v1:")?.split(':');
    let link: Hash = hex::decode(it.next()?).ok()?.try_into().ok()?;
    let p = it.next()?.parse().ok()?;
    let o = it.next()?.parse().ok()?;
    it.next().is_none().then_some((link, (p, o)))
}

/// One record of the audit topic.
fn read_at(consumer: &BaseConsumer, topic: &str, at: (i32, i64)) -> Result<Vec<u8>, String> {
    read_range(consumer, topic, at.0, at.1, at.1 + 1)?
        .into_iter()
        .next()
        .map(|(_, v)| v)
        .ok_or_else(|| "the checkpoint named by the commit metadata was not found".to_owned())
}

/// The signer statement of `session`, signed by the operator's key in Key Vault (PS256 over its
/// SHA-256), and the session moved past it.
pub(super) async fn certify(
    config: &Config,
    audit: &AuditConfig,
    role: Role,
    group: &str,
    session: &mut Session,
) -> Result<Vec<u8>, AuditorError> {
    let http = crate::kms::azure::http_client(&config.keys, audit.signing_key.ca_file.as_deref())
        .map_err(|e| AuditorError::Setup(e.to_string()))?;
    let provider = crate::kms::azure::AzureKeyProvider::new(
        "_audit",
        &audit.signing_key,
        http,
        Duration::ZERO,
    )?;
    let version = provider
        .get_version(audit.signing_key.key_version.as_deref())
        .await?;
    let now = OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let (seq, wprev) = session.next();
    let st = SignerStatement {
        v: 1,
        t: "signer".into(),
        writer: session.writer().to_owned(),
        seq,
        wprev,
        cluster: audit.cluster.clone(),
        group: group.to_owned(),
        role: match role {
            Role::Worker => "worker".into(),
            Role::Tool => "tool".into(),
        },
        session_key: b64(&session.public_key()),
        not_before: format_ms(now),
        not_after: format_ms(now + statements::SESSION_VALIDITY),
        signing_kid: version.kid.to_string(),
    };
    let unsigned = to_json(&st);
    let (kid, sig) = provider
        .sign_ps256(&merkle::hash(unsigned.as_bytes()))
        .await?;
    if kid != version.kid {
        return Err(AuditorError::VersionChanged {
            got: kid.to_string(),
            named: version.kid.to_string(),
        });
    }
    let value = append_signature(&unsigned, "kv_sig", &sig).into_bytes();
    Ok(session.record(value))
}

/// Verifies a checkpoint under a session key (for readers holding the signer).
pub fn verify_checkpoint(value: &[u8], session_key: &[u8]) -> Result<Checkpoint, String> {
    let signed = verify_session_signed(value, session_key).map_err(|e| e.to_string())?;
    parse_checkpoint(&signed).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_metadata_round_trips_and_refuses_other_shapes() {
        let link = [0xab; 32];
        let m = format!("byok-chain-v1:{}:3:1234", hex::encode(link));
        assert_eq!(parse_metadata(&m), Some((link, (3, 1234))));
        for bad in [
            "",
            "byok-chain-v1:zz:3:1",
            &format!("byok-chain-v2:{}:3:1", hex::encode(link)),
            &format!("byok-chain-v1:{}:3", hex::encode(link)),
            &format!("byok-chain-v1:{}:3:1:9", hex::encode(link)),
        ] {
            assert_eq!(parse_metadata(bad), None, "{bad}");
        }
    }
}
