//! Metrics of KEK operations, as a decorator of any [`KeyProvider`]: calls by tenant, operation
//! and outcome (`byok_vault_calls_total`), and their latency (`byok_vault_call_seconds`).
//!
//! It must never label a metric with anything but a configured tenant, an operation and an outcome.

use std::sync::Arc;
use std::time::Instant;

use super::{KekId, KeyProvider, KeyState, KmsError, Wrapped};
use crate::dek::{DataKey, DekId};

/// Records every call of the provider it wraps.
#[derive(Debug)]
pub struct Metered<P> {
    inner: P,
}

impl<P> Metered<P> {
    /// Wraps `inner`.
    pub fn new(inner: P) -> Self {
        Self { inner }
    }
    /// The provider this wraps.
    pub fn inner(&self) -> &P {
        &self.inner
    }
}

fn outcome<T>(r: &Result<T, KmsError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(KmsError::Revoked { .. }) => "revoked",
        Err(KmsError::Unavailable { .. }) => "unavailable",
        Err(KmsError::Rejected { .. }) => "rejected",
        Err(KmsError::Setup { .. }) => "setup",
    }
}

fn record(tenant: &str, op: &'static str, outcome: &'static str, started: Instant) {
    metrics::counter!("byok_vault_calls_total", "tenant" => tenant.to_owned(), "op" => op, "outcome" => outcome).increment(1);
    metrics::histogram!("byok_vault_call_seconds", "tenant" => tenant.to_owned(), "op" => op)
        .record(started.elapsed().as_secs_f64());
}

impl<P: KeyProvider> KeyProvider for Metered<P> {
    fn tenant(&self) -> &str {
        self.inner.tenant()
    }

    async fn wrap(&self, dek: &DataKey) -> Result<Wrapped, KmsError> {
        let t = Instant::now();
        let r = self.inner.wrap(dek).await;
        record(self.tenant(), "wrap", outcome(&r), t);
        r
    }

    async fn unwrap(
        &self,
        kek: &KekId,
        dek: DekId,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, KmsError> {
        let t = Instant::now();
        let r = self.inner.unwrap(kek, dek, wrapped).await;
        record(self.tenant(), "unwrap", outcome(&r), t);
        r
    }

    async fn key_state(&self) -> KeyState {
        let t = Instant::now();
        let s = self.inner.key_state().await;
        let o = match &s {
            KeyState::Usable(_) => "usable",
            KeyState::VersionUnusable { .. } => "version-unusable",
            KeyState::Revoked { .. } => "revoked",
            KeyState::Unavailable { .. } => "unavailable",
        };
        record(self.tenant(), "get_key", o, t);
        s
    }
}
