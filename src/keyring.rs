//! The keys a process works with: one key provider per tenant with BYOK enabled and the
//! operator's quarantine key, built once per process with one rate limiter per vault host, and
//! shared by the worker and every tool it runs (drain, replay, rewrap, `byok cat`).
//!
//! This module must never make a provider outside [`Keyring::new`] (a second stack would have
//! its own limiters, and the per-vault request budget would no longer hold).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::config::{Config, TenantId};
use crate::kms::{KmsError, TenantKms};
use crate::registry::QUARANTINE_TENANT;

/// The tenants' key providers and the operator's.
#[derive(Debug)]
pub struct Keyring {
    tenants: BTreeMap<TenantId, Arc<TenantKms>>,
    operator: Arc<TenantKms>,
}

impl Keyring {
    /// Builds every tenant's provider stack and the operator's, sharing one HTTP client per
    /// CA and one rate limiter per vault host.
    pub fn new(config: &Config) -> Result<Self, KmsError> {
        let mut limiters = HashMap::new();
        let mut tenants = BTreeMap::new();
        for (id, tenant) in &config.tenants {
            let Some(key) = tenant.key.as_ref().filter(|_| tenant.byok_enabled) else {
                continue;
            };
            let kms = crate::kms::tenant_kms(id.as_str(), key, &config.keys, &mut limiters)?;
            tenants.insert(id.clone(), Arc::new(kms));
        }
        let operator = crate::kms::tenant_kms(
            QUARANTINE_TENANT,
            &config.quarantine,
            &config.keys,
            &mut limiters,
        )?;
        Ok(Self {
            tenants,
            operator: Arc::new(operator),
        })
    }

    /// Every tenant with BYOK enabled.
    pub fn tenants(&self) -> &BTreeMap<TenantId, Arc<TenantKms>> {
        &self.tenants
    }

    /// The provider of a tenant with BYOK enabled.
    pub fn tenant(&self, id: &str) -> Option<&Arc<TenantKms>> {
        TenantId::parse(id)
            .ok()
            .and_then(|id| self.tenants.get(&id))
    }

    /// The operator's quarantine key.
    pub fn operator(&self) -> &Arc<TenantKms> {
        &self.operator
    }

    /// The provider of a DEK owner: a tenant, or the operator for [`QUARANTINE_TENANT`].
    pub fn owner(&self, owner: &str) -> Option<&Arc<TenantKms>> {
        if owner == QUARANTINE_TENANT {
            Some(&self.operator)
        } else {
            self.tenant(owner)
        }
    }
}
