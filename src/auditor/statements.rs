//! The writer's statements outside checkpoints (docs/audit-v1.md §6, §6b): key-usage receipts
//! (`kv`), chain heads (`heads`) and `end`. Each is signed in the writer's chain and produced on
//! the non-transactional producer; none while a transaction holding a checkpoint is open.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;

use super::{Auditor, AuditorError, Role};
use crate::audit::codec::{b64, format_ms};
use crate::audit::records::{HeadEntry, HeadsRecord, KvEntry, KvRecord, to_json};
use crate::lock;

/// How often a worker writes `heads` (§6b).
const HEADS_EVERY: Duration = Duration::from_secs(60);

/// A receipt as a `kv` entry.
fn kv_entry(r: &crate::kms::receipts::Receipt) -> KvEntry {
    KvEntry {
        req: r.req.clone(),
        kid: r.kid.clone(),
        op: r.op.clone(),
        purpose: r.purpose.to_owned(),
        deks: r.deks.clone(),
        status: r.status,
        at: format_ms(r.at),
    }
}

impl Auditor {
    /// Writes the key-usage receipts kept since the last call (§6): one signed `kv` record per
    /// tenant. A record the broker refuses puts the writer's chain and its receipts back.
    pub async fn write_receipts(&self) -> Result<(), AuditorError> {
        let _txn = self.txn.lock().await;
        let receipts = crate::kms::receipts::take();
        let mut by_tenant: BTreeMap<String, Vec<crate::kms::receipts::Receipt>> = BTreeMap::new();
        for r in receipts {
            by_tenant.entry(r.tenant.clone()).or_default().push(r);
        }
        let mut tenants = by_tenant.into_iter();
        while let Some((tenant, list)) = tenants.next() {
            let mut session = self.session.lock().await;
            let position = session.position();
            let (seq, wprev) = session.next();
            let record = KvRecord {
                v: 1,
                t: "kv".into(),
                writer: session.writer().to_owned(),
                seq,
                wprev,
                created: format_ms(OffsetDateTime::now_utc()),
                tenant,
                entries: list.iter().map(kv_entry).collect(),
            };
            let value = session.sign(&to_json(&record));
            let writer = session.writer().to_owned();
            // the session stays locked: nothing else is signed before this record is written
            if let Err(e) = self.produce(&self.statements, &writer, value).await {
                session.resume_position(position);
                crate::kms::receipts::put_back(
                    list.into_iter()
                        .chain(tenants.flat_map(|(_, l)| l))
                        .collect(),
                );
                return Err(e);
            }
        }
        Ok(())
    }

    /// Writes the receipts every second, and `heads` every 60 s and after an assignment
    /// change, until [`Auditor::stop_receipts`] (a record being written is finished: the task
    /// is never cut between signing and producing).
    pub fn spawn_receipts(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut heads_written = std::time::Instant::now();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = me.receipts_stop.notified() => return,
                }
                if me.recertification_due()
                    && let Err(e) = me.recertify().await
                {
                    tracing::warn!(error = %e, "the session key could not be certified again yet; the current one stays valid until its not_after");
                }
                if let Err(e) = me.write_receipts().await {
                    tracing::warn!(error = %e, "key-usage receipts not written yet; tried again in 1 s");
                }
                let due = me
                    .heads_due
                    .swap(false, std::sync::atomic::Ordering::AcqRel);
                if (due || heads_written.elapsed() >= HEADS_EVERY) && me.role == Role::Worker {
                    match me.write_heads().await {
                        Ok(()) => heads_written = std::time::Instant::now(),
                        Err(e) => {
                            me.heads_due
                                .store(true, std::sync::atomic::Ordering::Release);
                            tracing::warn!(error = %e, "heads not written yet; tried again in 1 s");
                        }
                    }
                }
            }
        })
    }

    /// Writes a signed `heads` record (§6b): where the chain of each partition this writer owns
    /// stands. Copied out of Kafka, such records are the witness `byok verify --witness` checks.
    pub async fn write_heads(&self) -> Result<(), AuditorError> {
        let _txn = self.txn.lock().await;
        let mut all = std::mem::take(&mut *lock(&self.handed_over));
        all.extend(
            lock(&self.heads)
                .iter()
                .map(|(k, h)| (k.clone(), h.clone())),
        );
        let heads: Vec<HeadEntry> = all
            .iter()
            .map(|((topic, partition), h)| HeadEntry {
                topic: topic.clone(),
                partition: *partition,
                to: h.to,
                link: b64(&h.link),
            })
            .collect();
        let mut session = self.session.lock().await;
        let position = session.position();
        let (seq, wprev) = session.next();
        let record = HeadsRecord {
            v: 1,
            t: "heads".into(),
            writer: session.writer().to_owned(),
            seq,
            wprev,
            created: format_ms(OffsetDateTime::now_utc()),
            heads,
        };
        let value = session.sign(&to_json(&record));
        let writer = session.writer().to_owned();
        if let Err(e) = self.produce(&self.statements, &writer, value).await {
            session.resume_position(position);
            return Err(e);
        }
        Ok(())
    }

    /// Stops the task of [`Auditor::spawn_receipts`] (the last receipts go with `end`).
    pub fn stop_receipts(&self) {
        self.receipts_stop.notify_one();
    }

    /// Writes `end` (the writer's last `seq`) on a clean exit, after the last receipts and
    /// (a worker) the last heads.
    pub async fn end(&self) -> Result<(), AuditorError> {
        self.write_receipts().await?;
        if self.role == Role::Worker {
            self.write_heads().await?;
        }
        let mut session = self.session.lock().await;
        let (seq, wprev) = session.next();
        let unsigned = format!(
            "{{\"v\":1,\"t\":\"end\",\"writer\":{},\"seq\":{seq},\"wprev\":\"{wprev}\",\"created\":\"{}\"}}",
            serde_json::Value::from(session.writer()),
            format_ms(OffsetDateTime::now_utc())
        );
        let value = session.sign(&unsigned);
        let writer = session.writer().to_owned();
        drop(session);
        self.produce(&self.statements, &writer, value)
            .await
            .map(|_| ())
    }
}

impl Auditor {
    /// Whether the session key reached half its validity (§5: a writer running longer certifies
    /// a new one).
    pub fn recertification_due(&self) -> bool {
        lock(&self.certified).elapsed() >= SESSION_VALIDITY / 2
    }

    /// Certifies a new session key (§5): a new `signer` statement whose `seq` continues the
    /// writer's chain; records signed from now on (registry and key records too) use the new
    /// key. A statement the vault or the broker refuses leaves the old key in use.
    pub async fn recertify(&self) -> Result<(), AuditorError> {
        let _txn = self.txn.lock().await;
        let mut session = self.session.lock().await;
        let position = session.position();
        let (config, audit) = &self.certifier;
        let old = session.rekey()?;
        let value = match super::certify(config, audit, self.role, &self.group, &mut session).await
        {
            Ok(v) => v,
            Err(e) => {
                session.resume_position(position);
                session.restore_key(old);
                return Err(e);
            }
        };
        let writer = session.writer().to_owned();
        if let Err(e) = self.produce(&self.statements, &writer, value).await {
            session.resume_position(position);
            session.restore_key(old);
            return Err(e);
        }
        *lock(&self.certified) = std::time::Instant::now();
        tracing::info!(writer, "audit session key certified again (half-life)");
        Ok(())
    }
}

/// How long a session key is valid (`not_after` - `not_before`, at most 24 h).
pub(super) const SESSION_VALIDITY: Duration = Duration::from_secs(24 * 3600);
