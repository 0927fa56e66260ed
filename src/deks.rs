//! The worker's DEKs: one active DEK per tenant (and one for the operator's quarantine), made
//! in this process, wrapped by the tenant's key provider, and published to the registry topic.
//! A DEK is used only after the broker acknowledged its registry record, so a reader never meets
//! a record whose DEK is missing (docs/envelope-v1.md §2).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use time::OffsetDateTime;

use crate::dek::{ActiveDek, DekLimits};
use crate::kms::{KeyProvider, KmsError, VersionInfo};
use crate::registry::DekRecord;

/// Making a DEK failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DekError {
    /// The key provider refused or could not be reached.
    #[error(transparent)]
    Kms(#[from] KmsError),
    /// The registry record was not acknowledged.
    #[error(
        "registry record of DEK {dek} for tenant {tenant} not acknowledged by topic {topic}: {reason}"
    )]
    Registry {
        /// Tenant.
        tenant: String,
        /// DEK id.
        dek: String,
        /// Registry topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// The system CSPRNG failed.
    #[error("cannot make a DEK: {0}")]
    Random(#[from] crate::dek::RandomFailed),
    /// Sealing could not finish.
    #[error("sealing failed: {0}")]
    Sealing(String),
    /// These tenants' vaults do not answer and no public key of theirs is known to wrap a DEK
    /// locally: their records wait (their partitions are paused; Kafka keeps the data).
    #[error("vault unavailable and no public key known for {tenants:?}: {detail}")]
    Waiting {
        /// The tenants.
        tenants: Vec<String>,
        /// The first vault error.
        detail: String,
    },
}

/// A registry record as published, with the hash of its value (the `prev` of the next).
type Published = (DekRecord, crate::audit::merkle::Hash);

/// The active DEK of each tenant.
#[derive(Debug)]
pub struct DekSet {
    limits: DekLimits,
    worker: String,
    registry_topic: String,
    active: HashMap<String, Arc<ActiveDek>>,
    created: u64,
    /// DEKs whose registry records are in the open transaction (exactly-once).
    in_transaction: Vec<(String, crate::dek::DekId)>,
    /// A transaction is open (only with exactly-once delivery).
    transaction_open: bool,
    /// The registry records this process published, for its DEKs still in memory.
    /// With each, the hash of its value as published (the `prev` of the next).
    records: std::sync::Mutex<HashMap<crate::dek::DekId, Published>>,
    /// DEKs retired from sealing whose rewrap onto the usable version failed: kept in memory
    /// (the old version may no longer decrypt their registry copy) and tried again.
    pending_rewraps: Vec<(String, Arc<ActiveDek>)>,
    /// Signs registry records, copies them to the audit topic and names them in the next
    /// checkpoint, when the audit log is written.
    audit: Option<crate::auditor::RecordAudit>,
}

impl DekSet {
    /// Signs each registry record this set publishes, copies it to the audit topic and names it
    /// in the next audit checkpoint.
    pub fn set_audit(&mut self, audit: Option<crate::auditor::RecordAudit>) {
        self.audit = audit;
    }

    /// An empty set.
    pub fn new(limits: DekLimits, worker: String, registry_topic: String) -> Self {
        Self {
            limits,
            worker,
            registry_topic,
            active: HashMap::new(),
            created: 0,
            in_transaction: Vec::new(),
            transaction_open: false,
            records: std::sync::Mutex::new(HashMap::new()),
            pending_rewraps: Vec::new(),
            audit: None,
        }
    }

    /// Rewraps the tenant's DEK in memory under the version `kms` wraps with now, when its
    /// registry record names another version (the version in use was disabled while another is
    /// usable: the old one can no longer decrypt, so this copy in memory is the only way to move
    /// the DEK). Publishes the updated registry record. Returns it, if a DEK was moved.
    pub async fn rewrap_active<P: KeyProvider>(
        &self,
        tenant: &str,
        kms: &P,
        producer: &FutureProducer,
    ) -> Result<Option<DekRecord>, DekError> {
        let Some(dek) = self.active.get(tenant) else {
            return Ok(None);
        };
        self.rewrap(tenant, dek, kms, producer).await
    }

    /// Rewraps `dek` (in memory) under the version `kms` wraps with now, if its registry record
    /// names another; publishes the new record.
    async fn rewrap<P: KeyProvider>(
        &self,
        tenant: &str,
        dek: &ActiveDek,
        kms: &P,
        producer: &FutureProducer,
    ) -> Result<Option<DekRecord>, DekError> {
        let Some((old, prev)) = self.records().get(&dek.id()).cloned() else {
            return Ok(None);
        };
        let wrapped = kms.wrap(dek.key()).await?;
        if wrapped.kek == old.kek {
            return Ok(None);
        }
        let record = DekRecord {
            kek: wrapped.kek,
            wrapped: wrapped.wrapped,
            rewrapped: Some(OffsetDateTime::now_utc()),
            wrapped_locally: false,
            ..old.clone()
        };
        let value = self.send_with(tenant, &record, &prev, producer).await?;
        self.records().insert(
            record.dek,
            (record.clone(), crate::audit::merkle::hash(&value)),
        );
        metrics::counter!("byok_deks_rewrapped_total", "tenant" => tenant.to_owned()).increment(1);
        tracing::info!(tenant, dek = %record.dek, from = %old.kek, to = %record.kek, "DEK rewrapped from memory onto the usable version");
        Ok(Some(record))
    }

    /// The tenant's active DEK stops sealing, but stays in memory to be rewrapped later
    /// ([`DekSet::retry_rewraps`]): its rewrap failed, and its registry copy may be under a
    /// version that no longer decrypts.
    pub fn retire_for_rewrap(&mut self, tenant: &str) {
        if let Some(d) = self.active.remove(tenant) {
            metrics::gauge!("byok_deks_rewrap_pending").increment(1.0);
            self.pending_rewraps.push((tenant.to_owned(), d));
        }
    }

    /// DEKs waiting for a rewrap.
    pub fn rewraps_pending(&self) -> usize {
        self.pending_rewraps.len()
    }

    /// Tries the pending rewraps again with each tenant's provider (`kms_of`); keeps those that
    /// fail. Returns how many succeeded.
    pub async fn retry_rewraps<P: KeyProvider>(
        &mut self,
        kms_of: impl Fn(&str) -> Option<Arc<P>>,
        producer: &FutureProducer,
    ) -> usize {
        let mut done = 0;
        let pending = std::mem::take(&mut self.pending_rewraps);
        for (tenant, dek) in pending {
            let ok = match kms_of(&tenant) {
                Some(kms) => match self.rewrap(&tenant, &dek, kms.as_ref(), producer).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(tenant, dek = %dek.id(), error = %e, "rewrap still failing; tried again later (the DEK stays in memory)");
                        false
                    }
                },
                None => true,
            };
            if ok {
                done += 1;
                metrics::gauge!("byok_deks_rewrap_pending").decrement(1.0);
                self.records().remove(&dek.id());
            } else {
                self.pending_rewraps.push((tenant, dek));
            }
        }
        done
    }

    /// The registry records of this process's DEKs. A panic elsewhere while the lock was held
    /// cannot leave the map half-changed (each use is one insert, remove or get), so a poisoned
    /// lock is taken over rather than skipped: no record is ever silently not kept.
    fn records(&self) -> std::sync::MutexGuard<'_, HashMap<crate::dek::DekId, Published>> {
        crate::lock(&self.records)
    }

    /// A transaction begins: DEKs made from now on have their registry records in it.
    pub fn begin_transaction(&mut self) {
        self.in_transaction.clear();
        self.transaction_open = true;
    }

    /// The transaction was aborted: the DEKs made in it have no registry record, so they must
    /// never seal (a record under them could not be opened).
    pub fn abort_transaction(&mut self) {
        for (tenant, id) in self.in_transaction.drain(..) {
            if self.active.get(&tenant).is_some_and(|d| d.id() == id) {
                self.active.remove(&tenant);
            }
        }
    }

    /// Age of the oldest DEK still sealing.
    pub fn oldest_age(&self) -> Option<Duration> {
        self.active
            .values()
            .filter(|d| d.retired().is_none())
            .map(|d| d.created().elapsed().unwrap_or_default())
            .max()
    }

    /// DEKs made by this process so far.
    pub fn created(&self) -> u64 {
        self.created
    }

    /// The tenant's active DEK, if it can still seal.
    pub fn current(&self, tenant: &str) -> Option<Arc<ActiveDek>> {
        self.active
            .get(tenant)
            .filter(|d| d.retired().is_none())
            .cloned()
    }

    /// Drops a tenant's DEK from memory (revocation).
    pub fn forget(&mut self, tenant: &str) {
        if let Some(d) = self.active.remove(tenant) {
            self.records().remove(&d.id());
        }
    }

    /// Makes a new DEK for `tenant`: generated here, wrapped by `kms`, its registry record
    /// acknowledged by the broker, then made the tenant's active DEK.
    pub async fn rotate<P: KeyProvider>(
        &mut self,
        tenant: &str,
        kms: &P,
        producer: &FutureProducer,
    ) -> Result<Arc<ActiveDek>, DekError> {
        let dek = self.make(tenant, kms, producer).await?;
        Ok(self.install(tenant, dek))
    }

    /// A new DEK for `tenant`, wrapped by `kms`, its registry record acknowledged; not yet in
    /// use ([`DekSet::install`]). Takes `&self` so that many tenants' DEKs can be made at once.
    pub async fn make<P: KeyProvider>(
        &self,
        tenant: &str,
        kms: &P,
        producer: &FutureProducer,
    ) -> Result<ActiveDek, DekError> {
        let dek = ActiveDek::generate(self.limits)?;
        let wrapped = kms.wrap(dek.key()).await?;
        self.publish(tenant, &dek, wrapped, false, producer).await?;
        Ok(dek)
    }

    /// A new DEK for `tenant` wrapped locally with `version`'s public key (the key is revoked,
    /// or the vault unavailable): its registry record says `"wrapped_locally": true`, and only
    /// Key Vault `decrypt` on that version can open it (docs/envelope-v1.md §3).
    pub async fn make_local(
        &self,
        tenant: &str,
        version: &VersionInfo,
        producer: &FutureProducer,
    ) -> Result<(ActiveDek, DekRecord), DekError> {
        let dek = ActiveDek::generate(self.limits)?;
        let wrapped = crate::kms::local::wrap_locally(tenant, version, dek.key())?;
        let record = self.publish(tenant, &dek, wrapped, true, producer).await?;
        Ok((dek, record))
    }

    async fn publish(
        &self,
        tenant: &str,
        dek: &ActiveDek,
        wrapped: crate::kms::Wrapped,
        wrapped_locally: bool,
        producer: &FutureProducer,
    ) -> Result<DekRecord, DekError> {
        let record = DekRecord {
            dek: dek.id(),
            tenant: tenant.to_owned(),
            kek: wrapped.kek,
            wrapped: wrapped.wrapped,
            created: OffsetDateTime::from(dek.created()),
            worker: self.worker.clone(),
            rewrapped: None,
            wrapped_locally,
        };
        let value = self
            .send_with(tenant, &record, &crate::audit::merkle::ZERO, producer)
            .await?;
        self.records().insert(
            record.dek,
            (record.clone(), crate::audit::merkle::hash(&value)),
        );
        tracing::info!(tenant, dek = %dek.id(), kek = %record.kek, wrapped_locally, "new DEK wrapped and registered");
        Ok(record)
    }

    /// Publishes `record` (signed and copied when the audit log is written; `prev` is the hash
    /// of the value it supersedes) and returns the value once acknowledged.
    async fn send_with(
        &self,
        tenant: &str,
        record: &DekRecord,
        prev: &crate::audit::merkle::Hash,
        producer: &FutureProducer,
    ) -> Result<Vec<u8>, DekError> {
        crate::auditor::publish_record(
            producer,
            &self.registry_topic,
            &record.dek.to_string(),
            crate::audit::records::RecordKind::Dek,
            record.to_json(),
            prev,
            self.audit.as_ref(),
        )
        .await
        .map_err(|e| DekError::Registry {
            tenant: tenant.to_owned(),
            dek: record.dek.to_string(),
            topic: self.registry_topic.clone(),
            reason: e.to_string(),
        })
    }

    /// The DEK `id`, if it is a tenant's active one, stops sealing now (its local wrap failed its
    /// proof); the tenant's next record gets a new DEK.
    pub fn retire_id(&mut self, id: crate::dek::DekId) {
        let tenant = self
            .active
            .iter()
            .find(|(_, d)| d.id() == id)
            .map(|(t, _)| t.clone());
        if let Some(t) = tenant
            && let Some(d) = self.active.remove(&t)
        {
            d.retire(crate::dek::Retired::Manual);
            self.records().remove(&id);
            tracing::warn!(tenant = %t, dek = %id, "DEK retired: its local wrap did not open through Key Vault");
        }
    }

    /// Makes `dek` (from [`DekSet::make`]) the tenant's active DEK; the previous one retires.
    pub fn install(&mut self, tenant: &str, dek: ActiveDek) -> Arc<ActiveDek> {
        self.created += 1;
        metrics::counter!("byok_deks_created_total", "tenant" => tenant.to_owned()).increment(1);
        if self.transaction_open {
            self.in_transaction.push((tenant.to_owned(), dek.id()));
        }
        let dek = Arc::new(dek);
        if let Some(old) = self.active.insert(tenant.to_owned(), Arc::clone(&dek)) {
            old.retire(crate::dek::Retired::Manual);
            self.records().remove(&old.id());
        }
        dek
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use rdkafka::ClientConfig;
    use rdkafka::mocking::MockCluster;

    use super::*;
    use crate::kms::{KekId, KeyState, KmsError, Outage, Wrapped};

    /// A provider whose wrap fails while `failing`, under version `version`.
    struct Flaky {
        failing: AtomicBool,
        version: Mutex<&'static str>,
    }

    impl KeyProvider for Flaky {
        fn tenant(&self) -> &str {
            "acme"
        }
        async fn wrap(&self, _dek: &crate::dek::DataKey) -> Result<Wrapped, KmsError> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(KmsError::Unavailable {
                    tenant: "acme".into(),
                    why: Outage::ServerError,
                    detail: "503".into(),
                    retry_after: None,
                });
            }
            let v = *self.version.lock().unwrap();
            Ok(Wrapped {
                kek: KekId::parse(&format!("https://acme-vault.vault.azure.net/keys/k/{v}"))
                    .unwrap(),
                wrapped: vec![1, 2, 3],
            })
        }
        async fn unwrap(
            &self,
            _kek: &KekId,
            _dek: crate::dek::DekId,
            _wrapped: &[u8],
        ) -> Result<Arc<crate::dek::DataKey>, KmsError> {
            Err(KmsError::Rejected {
                tenant: "acme".into(),
                detail: "not in this test".into(),
            })
        }
        async fn key_state(&self) -> KeyState {
            unreachable!("not in this test")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_rewrap_is_retried_until_the_dek_is_under_the_usable_version() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("byok.deks", 1, 1).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        let kms = Arc::new(Flaky {
            failing: AtomicBool::new(false),
            version: Mutex::new("v1"),
        });
        let mut deks = DekSet::new(DekLimits::default(), "w".into(), "byok.deks".into());
        let dek = deks.rotate("acme", kms.as_ref(), &producer).await.unwrap();
        // the version in use changes while the vault fails
        *kms.version.lock().unwrap() = "v2";
        kms.failing.store(true, Ordering::Relaxed);
        assert!(
            deks.rewrap_active("acme", kms.as_ref(), &producer)
                .await
                .is_err()
        );
        deks.retire_for_rewrap("acme");
        assert!(deks.current("acme").is_none(), "it no longer seals");
        assert_eq!(deks.rewraps_pending(), 1);
        let kms_of = |_: &str| Some(Arc::clone(&kms));
        assert_eq!(deks.retry_rewraps(kms_of, &producer).await, 0);
        assert_eq!(deks.rewraps_pending(), 1, "kept while the vault fails");
        kms.failing.store(false, Ordering::Relaxed);
        assert_eq!(deks.retry_rewraps(kms_of, &producer).await, 1);
        assert_eq!(deks.rewraps_pending(), 0);
        // the registry got the DEK's record under v2
        let (_, hi) = rdkafka::producer::Producer::client(&producer)
            .fetch_watermarks("byok.deks", 0, std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(hi, 2, "the first record and the rewrapped one");
        drop(dek);
        drop(producer);
    }
}
