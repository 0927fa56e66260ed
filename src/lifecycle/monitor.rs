//! The worker's view of each tenant's key, kept by a monitor task: `GET key` per tenant every
//! `keys.check_interval` and right after a vault error (docs/pipeline.md "Key states").
//!
//! - usable: seal under the version in use; a new version (rotation) makes new DEKs under it.
//! - revoked (disabled, expired, deleted, not found, access denied): the tenant's DEKs are
//!   dropped; its records go to the quarantine sealed under DEKs wrapped locally with its last
//!   known public key (kept in `byok.keks`), so only its key can open them.
//! - unavailable: keep sealing; a new DEK is wrapped locally and proven through Key Vault
//!   `decrypt` once the vault answers.
//!
//! It must never call the vault per record: it checks each key on a schedule and after errors.

use crate::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::producer::FutureProducer;
use tokio::sync::Notify;

use crate::envelope::headers::QuarantineReason;
use crate::kms::local::KekRecord;
use crate::kms::{KekId, KeyProvider, KeyState, Revocation, TenantKms, VersionInfo};
use crate::registry::DekRecord;

/// What the worker does with a tenant's records now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyView {
    /// Seal into the archive; new DEKs under this version.
    Usable(KekId),
    /// The tenant said no: quarantine.
    Revoked {
        /// How.
        why: Revocation,
        /// Key Vault's or Entra's words.
        detail: String,
    },
    /// The vault did not answer: keep sealing with what is known.
    Unavailable,
}

/// Shared between the monitor task and the batch loop.
#[derive(Debug, Default)]
pub struct KeyViews {
    views: Mutex<HashMap<String, KeyView>>,
    /// Bumped on every change of a view: a batch re-reads the views only when it moved.
    generation: AtomicU64,
    public: Mutex<HashMap<String, VersionInfo>>,
    unverified: Mutex<Vec<DekRecord>>,
    /// Tenants whose key came back (revoked, then usable) since the last look.
    restored: Mutex<Vec<String>>,
    /// Tenants whose latest public key is not yet acknowledged in `byok.keks` (tried again at
    /// every check until it is).
    unpublished: Mutex<std::collections::HashSet<String>>,
    /// Wakes the monitor early (after a vault error).
    pub wake: Notify,
    /// Tenants whose records wait with no DEK possible and no public key known.
    pub holds: super::hold::Holds,
    /// Signs `byok.keks` records, copies them to the audit topic and names them in the next
    /// checkpoint, when the audit log is written.
    pub audit: std::sync::OnceLock<crate::auditor::RecordAudit>,
    /// Tenants whose locally wrapped DEK did not open through Key Vault: no more local wraps.
    local_wrap_stopped: Mutex<std::collections::HashSet<String>>,
    /// DEKs whose local wrap did not open: they stop sealing at once.
    unproven: Mutex<Vec<crate::dek::DekId>>,
    /// Per tenant, the hash of the current `byok.keks` value (the `prev` of the next).
    keks_prev: Mutex<HashMap<String, crate::audit::merkle::Hash>>,
}

/// What [`KeyViews::apply`] changed.
#[derive(Debug)]
pub struct Applied {
    /// The tenant's view now.
    pub view: KeyView,
    /// Its view before.
    pub previous: Option<KeyView>,
    /// A public key to publish to `byok.keks`.
    pub publish: Option<VersionInfo>,
}

/// A batch's snapshot of the revoked tenants: reason, detail, and the public key to wrap with.
pub type Revoked = HashMap<String, (QuarantineReason, String, Option<VersionInfo>)>;

impl KeyViews {
    /// Changes so far (compare to skip re-reading unchanged views).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Every tenant's view now.
    pub fn snapshot(&self) -> HashMap<String, KeyView> {
        lock(&self.views).clone()
    }

    /// The revoked tenants of a snapshot, with their last known public keys.
    pub fn revoked(&self, snapshot: &HashMap<String, KeyView>) -> Revoked {
        let public = lock(&self.public);
        snapshot
            .iter()
            .filter_map(|(t, v)| match v {
                KeyView::Revoked { why, detail } => Some((
                    t.clone(),
                    (
                        why.quarantine_reason(),
                        detail.clone(),
                        public
                            .get(t)
                            .filter(|_| !lock(&self.local_wrap_stopped).contains(t))
                            .cloned(),
                    ),
                )),
                _ => None,
            })
            .collect()
    }

    /// The tenant's last known public key, for local wraps; none once a local wrap of the
    /// tenant failed its proof.
    pub fn public_key(&self, tenant: &str) -> Option<VersionInfo> {
        if lock(&self.local_wrap_stopped).contains(tenant) {
            return None;
        }
        lock(&self.public).get(tenant).cloned()
    }

    /// A locally wrapped DEK of `tenant` did not open through Key Vault: the public key it was
    /// wrapped with is not the tenant's. The DEK stops sealing at once and the tenant gets no
    /// more local wraps (its records wait for the vault instead); an alert metric is set.
    pub fn proof_failed(&self, tenant: &str, dek: crate::dek::DekId) {
        lock(&self.local_wrap_stopped).insert(tenant.to_owned());
        lock(&self.unproven).push(dek);
        metrics::gauge!("byok_local_wrap_stopped", "tenant" => tenant.to_owned()).set(1.0);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// DEKs whose proof failed since the last call.
    pub fn take_unproven(&self) -> Vec<crate::dek::DekId> {
        std::mem::take(&mut *lock(&self.unproven))
    }

    /// Seeds last known public keys (from `byok.keks` at start-up).
    pub fn seed_public(&self, keys: HashMap<String, (VersionInfo, crate::audit::merkle::Hash)>) {
        let mut p = lock(&self.public);
        let mut prev = lock(&self.keks_prev);
        for (t, (v, h)) in keys {
            prev.entry(t.clone()).or_insert(h);
            p.entry(t).or_insert(v);
        }
    }

    /// A vault error said the tenant's key is revoked: quarantine from the next batch on.
    pub fn mark_revoked(&self, tenant: &str, why: Revocation, detail: String) {
        self.set(tenant, KeyView::Revoked { why, detail });
        self.wake.notify_one();
    }

    /// A DEK wrapped locally while the vault was unavailable, to prove through Key Vault.
    pub fn to_verify(&self, record: DekRecord) {
        self.requeue(record);
        metrics::counter!("byok_local_wraps_total", "why" => "vault-unavailable").increment(1);
    }

    fn requeue(&self, record: DekRecord) {
        lock(&self.unverified).push(record);
    }

    /// Tenants whose key came back since the last call (their quarantine can be drained).
    pub fn take_restored(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.restored))
    }

    /// Locally wrapped DEKs not yet proven.
    pub fn unverified(&self) -> usize {
        lock(&self.unverified).len()
    }

    fn set(&self, tenant: &str, view: KeyView) -> Option<KeyView> {
        let old = lock(&self.views).insert(tenant.to_owned(), view.clone());
        if old.as_ref() != Some(&view) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        old
    }

    /// Reconciles one tenant's view with the key state the vault gave: the view to use from the
    /// next batch on, the public key to publish (new, or not yet acknowledged), and, when a
    /// revoked key is usable again, the tenant queued for draining ([`KeyViews::take_restored`]).
    pub fn apply(&self, tenant: &str, state: KeyState) -> Applied {
        let (view, public) = match state {
            KeyState::Usable(v) => (KeyView::Usable(v.kid.clone()), Some(v)),
            KeyState::VersionUnusable {
                usable,
                why,
                unusable,
            } => {
                tracing::warn!(tenant, %unusable, %why, now = %usable.kid, "the key version in use cannot be used; new DEKs under the newest usable version");
                (KeyView::Usable(usable.kid.clone()), Some(usable))
            }
            KeyState::Revoked {
                why,
                detail,
                last_seen,
            } => (KeyView::Revoked { why, detail }, last_seen),
            KeyState::Unavailable { .. } => (KeyView::Unavailable, None),
        };
        let retry = lock(&self.unpublished).contains(tenant);
        let publish = public.filter(|v| self.remember(tenant, v) || retry);
        let previous = self.set(tenant, view.clone());
        if matches!(view, KeyView::Usable(_)) && matches!(previous, Some(KeyView::Revoked { .. })) {
            lock(&self.restored).push(tenant.to_owned());
        }
        Applied {
            view,
            previous,
            publish,
        }
    }

    /// Remembers `v` as the tenant's public key; true when it is new.
    fn remember(&self, tenant: &str, v: &VersionInfo) -> bool {
        let mut p = lock(&self.public);
        if p.get(tenant)
            .is_some_and(|old| old.kid == v.kid && old.n == v.n)
        {
            return false;
        }
        p.insert(tenant.to_owned(), v.clone());
        true
    }
}

/// Reads every tenant's key state once: updates the views, publishes new public keys to
/// `keks_topic`, and proves locally wrapped DEKs of tenants whose vault answers again.
pub async fn check_all(
    tenants: &[(String, Arc<TenantKms>)],
    views: &KeyViews,
    producer: &FutureProducer,
    keks_topic: &str,
) {
    let states = futures::future::join_all(tenants.iter().map(|(_, k)| k.key_state())).await;
    for ((tenant, kms), state) in tenants.iter().zip(states) {
        let applied = views.apply(tenant, state);
        if let Some(v) = &applied.publish {
            publish_public(tenant, v, views, producer, keks_topic).await;
        }
        let view = applied.view;
        if applied.previous.as_ref() != Some(&view) {
            match &view {
                KeyView::Revoked { why, detail } => {
                    // nothing of the tenant's plaintext keys stays in memory
                    kms.clear();
                    tracing::warn!(tenant, %why, detail, "tenant key revoked: its records go to the quarantine, sealed for its key only");
                }
                KeyView::Usable(kid) => {
                    tracing::info!(tenant, kek = %kid, previous = ?applied.previous, "tenant key usable");
                }
                KeyView::Unavailable => {
                    tracing::warn!(tenant, "tenant key vault unavailable: sealing continues")
                }
            }
            let state = match &view {
                KeyView::Usable(_) => 0.0,
                KeyView::Unavailable => 1.0,
                KeyView::Revoked { .. } => 2.0,
            };
            metrics::gauge!("byok_tenant_key_state", "tenant" => tenant.clone()).set(state);
        }
        if matches!(view, KeyView::Usable(_)) {
            verify(tenant, kms, views).await;
        }
    }
}

/// Publishes the tenant's public key to `keks_topic`; marks it to be tried again at the next
/// check when the broker does not acknowledge it.
async fn publish_public(
    tenant: &str,
    v: &VersionInfo,
    views: &KeyViews,
    producer: &FutureProducer,
    keks_topic: &str,
) {
    let record = KekRecord {
        tenant: tenant.to_owned(),
        version: v.clone(),
        seen: crate::registry::format_time(time::OffsetDateTime::now_utc()),
    };
    let prev = lock(&views.keks_prev)
        .get(tenant)
        .copied()
        .unwrap_or(crate::audit::merkle::ZERO);
    let sent = crate::auditor::publish_record(
        producer,
        keks_topic,
        tenant,
        crate::audit::records::RecordKind::Kek,
        record.to_json(),
        &prev,
        views.audit.get(),
    )
    .await;
    match sent {
        Ok(value) => {
            lock(&views.unpublished).remove(tenant);
            lock(&views.keks_prev).insert(tenant.to_owned(), crate::audit::merkle::hash(&value));
        }
        Err(e) => {
            tracing::warn!(tenant, error = %e, topic = keks_topic, "could not publish the tenant's public key; tried again at the next check");
            lock(&views.unpublished).insert(tenant.to_owned());
        }
    }
}

/// Proves the tenant's locally wrapped DEKs through Key Vault `decrypt`.
async fn verify(tenant: &str, kms: &TenantKms, views: &KeyViews) {
    let mine: Vec<DekRecord> = {
        let mut u = lock(&views.unverified);
        let (mine, rest) = u.drain(..).partition(|r| r.tenant == tenant);
        *u = rest;
        mine
    };
    for r in mine {
        match kms.unwrap(&r.kek, r.dek, &r.wrapped).await {
            Ok(_) => {
                metrics::counter!("byok_local_wraps_verified_total").increment(1);
                tracing::info!(tenant, dek = %r.dek, kek = %r.kek, "locally wrapped DEK opened by Key Vault");
            }
            Err(e) if e.is_transient() => views.requeue(r),
            Err(e) => {
                metrics::counter!("byok_local_wraps_failed_total").increment(1);
                views.proof_failed(tenant, r.dek);
                tracing::error!(tenant, dek = %r.dek, kek = %r.kek, error = %e, "ALERT: a locally wrapped DEK does not open through Key Vault: the DEK stops sealing now and the tenant gets no more local wraps (its records wait for its vault); check the byok.keks records (byok verify)");
            }
        }
    }
}

/// Runs [`check_all`] every `interval`, or at once when woken (a vault error, a DEK to verify).
/// `producer` must not be transactional: `byok.keks` records are published on their own,
/// outside any batch's transaction (an aborted batch must not take a public key with it).
pub fn spawn(
    keyring: &crate::keyring::Keyring,
    views: Arc<KeyViews>,
    producer: FutureProducer,
    interval: Duration,
    keks_topic: String,
) -> tokio::task::JoinHandle<()> {
    let tenants: Vec<(String, Arc<TenantKms>)> = keyring
        .tenants()
        .iter()
        .map(|(id, k)| (id.to_string(), Arc::clone(k)))
        .collect();
    tokio::spawn(async move {
        loop {
            check_all(&tenants, &views, &producer, &keks_topic).await;
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = views.wake.notified() => {}
            }
        }
    })
}

/// Asks each distinct vault for its key's state once; marks the worker's vaults checked when all
/// answered (any answer, a revoked key included: the vault is reachable). Retries the ones that
/// did not.
pub async fn check_vaults(tenants: Vec<Arc<TenantKms>>, ready: impl FnOnce()) {
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
            ready();
            return;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(30));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(v: &str, n: u8) -> VersionInfo {
        VersionInfo {
            kid: KekId::parse(&format!(
                "https://acme-vault.vault.azure.net/keys/byok-key/{v}"
            ))
            .unwrap(),
            kty: "RSA".into(),
            n: vec![n; 384],
            e: vec![1, 0, 1],
            key_ops: vec!["encrypt".into(), "decrypt".into()],
            enabled: true,
            nbf: None,
            exp: None,
            recovery_level: None,
            recoverable_days: None,
        }
    }

    fn revoked(last_seen: Option<VersionInfo>) -> KeyState {
        KeyState::Revoked {
            why: Revocation::KeyDisabled,
            detail: "Operation encrypt is not allowed on a disabled key.".into(),
            last_seen,
        }
    }

    fn unavailable() -> KeyState {
        KeyState::Unavailable {
            why: crate::kms::Outage::Network,
            detail: "timed out".into(),
            retry_after: None,
        }
    }

    #[test]
    fn the_same_usable_version_changes_nothing_and_a_rotation_is_published_once() {
        let views = KeyViews::default();
        let first = views.apply("acme", KeyState::Usable(version("v1", 1)));
        assert_eq!(first.previous, None);
        assert!(first.publish.is_some(), "a first public key is published");
        let generation = views.generation();
        let again = views.apply("acme", KeyState::Usable(version("v1", 1)));
        assert_eq!(again.previous, Some(again.view.clone()));
        assert!(again.publish.is_none());
        assert_eq!(views.generation(), generation, "no change, no re-read");
        let rotated = views.apply("acme", KeyState::Usable(version("v2", 2)));
        assert_eq!(rotated.view, KeyView::Usable(version("v2", 2).kid));
        assert_eq!(rotated.publish.map(|v| v.kid), Some(version("v2", 2).kid));
        assert!(views.generation() > generation);
        assert_eq!(
            views.public_key("acme").map(|v| v.kid),
            Some(version("v2", 2).kid)
        );
    }

    #[test]
    fn a_revoked_key_keeps_its_last_public_key_for_quarantine_and_its_return_is_queued_once() {
        let views = KeyViews::default();
        views.apply("acme", KeyState::Usable(version("v1", 1)));
        let r = views.apply("acme", revoked(None));
        assert!(matches!(r.view, KeyView::Revoked { .. }));
        assert!(r.publish.is_none());
        let snapshot = views.snapshot();
        let list = views.revoked(&snapshot);
        let (reason, _, public) = &list["acme"];
        assert_eq!(*reason, QuarantineReason::KeyDisabled);
        // the key last seen usable wraps the quarantine DEKs
        assert_eq!(
            public.as_ref().map(|v| v.kid.clone()),
            Some(version("v1", 1).kid)
        );
        assert!(views.take_restored().is_empty());
        views.apply("acme", KeyState::Usable(version("v1", 1)));
        assert_eq!(views.take_restored(), vec!["acme".to_owned()]);
        assert!(views.take_restored().is_empty(), "taken once");
    }

    #[test]
    fn a_failed_proof_retires_the_dek_and_stops_local_wraps_for_that_tenant_only() {
        let views = KeyViews::default();
        views.apply("acme", KeyState::Usable(version("v1", 1)));
        views.apply("globex", KeyState::Usable(version("v1", 1)));
        views.apply("acme", revoked(None));
        let generation = views.generation();
        let dek = crate::dek::DekId::new_v7();
        views.proof_failed("acme", dek);
        assert!(views.generation() > generation, "the sealer looks again");
        assert_eq!(views.take_unproven(), vec![dek]);
        assert!(views.take_unproven().is_empty(), "taken once");
        assert!(views.public_key("acme").is_none(), "no more local wraps");
        let snapshot = views.snapshot();
        assert!(views.revoked(&snapshot)["acme"].2.is_none());
        assert!(views.public_key("globex").is_some());
    }

    #[test]
    fn an_unavailable_vault_is_not_a_revocation_and_keeps_the_public_key() {
        let views = KeyViews::default();
        views.apply("acme", KeyState::Usable(version("v1", 1)));
        let u = views.apply("acme", unavailable());
        assert_eq!(u.view, KeyView::Unavailable);
        assert!(u.publish.is_none());
        assert!(views.revoked(&views.snapshot()).is_empty());
        assert!(views.public_key("acme").is_some());
        // back from an outage: not a restore (nothing was quarantined for a revocation)
        views.apply("acme", KeyState::Usable(version("v1", 1)));
        assert!(views.take_restored().is_empty());
    }

    #[test]
    fn an_unacknowledged_public_key_is_published_again_at_the_next_check() {
        let views = KeyViews::default();
        views.apply("acme", KeyState::Usable(version("v1", 1)));
        lock(&views.unpublished).insert("acme".into());
        let again = views.apply("acme", KeyState::Usable(version("v1", 1)));
        assert!(again.publish.is_some());
        // a version that became unusable switches to the usable one, published as new
        let switched = views.apply(
            "acme",
            KeyState::VersionUnusable {
                unusable: version("v1", 1).kid,
                why: Revocation::KeyExpired,
                usable: version("v0", 3),
            },
        );
        assert_eq!(switched.view, KeyView::Usable(version("v0", 3).kid));
        assert!(switched.publish.is_some());
    }
}
