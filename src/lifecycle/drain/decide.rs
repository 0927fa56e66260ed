//! What the drain does with one quarantine record: move it unchanged, re-seal its plaintext under
//! its tenant's key, leave it for a later drain, or pass over it for good. Every record that
//! would reach the archive is opened first (its DEK through Key Vault, its value with the AAD of
//! the tenant it is for), so a junk record never moves and its plaintext digest is known for
//! de-duplication.
//!
//! It must never decide from a header what only the AAD and the registry prove.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{DrainOptions, Quarantined};
use crate::config::{Config, TenantId};
use crate::dek::DekId;
use crate::envelope::{
    self,
    headers::{HeaderError, QuarantineHeaders},
};
use crate::kms::{KeyProvider, TenantKms};
use crate::registry::{DekRecord, QUARANTINE_TENANT};
use crate::seen::digest;
use crate::tenant::OperatorClaim;

/// What happens to a record.
pub(super) enum Decision {
    /// Into the archive of `tenant`: unchanged (`plain` is `None`, the value is the tenant's own
    /// sealed record) or re-sealed from `plain`.
    Archive {
        tenant: TenantId,
        src: String,
        /// SHA-256 of the plaintext (what a copy already in the archive must match).
        digest: [u8; 32],
        /// The plaintext to re-seal, for a record under the operator's key.
        plain: Option<Zeroizing<Vec<u8>>>,
    },
    /// Not now (the tenant's key is still revoked, its DEK not proven, ...): a later drain
    /// looks again, and the saved position stays at it.
    Stay(String),
    /// Never: nothing any drain can do (no tenant, a marker, a claim not bound, a record that is
    /// not what it says). The position moves past it; counted as parked, and reported.
    Park {
        reason: String,
        report: Option<String>,
    },
    /// Cannot be handled now, reported (a DEK not in the registry yet): the position stays.
    Fail(String),
}

/// What deciding needs: the configuration, the registry, the keys.
pub(super) struct Cx<'a> {
    pub(super) config: &'a Config,
    pub(super) registry: &'a HashMap<DekId, DekRecord>,
    pub(super) tenants: &'a BTreeMap<TenantId, Arc<TenantKms>>,
    pub(super) operator: &'a Arc<TenantKms>,
    pub(super) opts: &'a DrainOptions,
}

impl Cx<'_> {
    /// The record's fate. `proven` remembers which tenant DEKs opened through Key Vault.
    pub(super) async fn decide(
        &self,
        r: &Quarantined,
        at: &str,
        proven: &mut HashMap<DekId, bool>,
    ) -> Option<Decision> {
        let pairs = r.headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
        let q = match QuarantineHeaders::from_pairs(pairs) {
            Ok(q) => q,
            Err(HeaderError::Marker { reason }) => {
                return Some(Decision::Park {
                    reason: reason.as_str().to_owned(),
                    report: None,
                });
            }
            Err(e) => {
                return Some(Decision::Park {
                    reason: "not-a-quarantine-record".into(),
                    report: Some(format!("{at}: not a quarantine record: {e}")),
                });
            }
        };
        if self.opts.tenant.is_some() && self.opts.tenant != q.tenant {
            return None;
        }
        let Some((tenant, kms)) = q
            .tenant
            .as_deref()
            .and_then(|t| TenantId::parse(t).ok())
            .and_then(|t| self.tenants.get(&t).map(|k| (t, Arc::clone(k))))
        else {
            // no tenant: never; a tenant not (or no longer) BYOK: it may be configured later
            return Some(match q.tenant {
                None => Decision::Park {
                    reason: q.reason.as_str().to_owned(),
                    report: None,
                },
                Some(_) => Decision::Stay(q.reason.as_str().to_owned()),
            });
        };
        let Some(record) = self.registry.get(&q.dek) else {
            return Some(Decision::Fail(format!(
                "{at}: DEK {} is not in the registry topic {}",
                q.dek, self.config.kafka.registry_topic
            )));
        };
        let src = q.src.to_string();
        let reason = q.reason.as_str();
        let decision = if record.tenant == tenant.as_str() {
            self.own(r, at, record, tenant, &kms, reason, proven).await
        } else if record.tenant == QUARANTINE_TENANT {
            self.operators(r, at, record, tenant).await
        } else {
            Err(Decision::Park {
                reason: "dek-of-another-tenant".into(),
                report: Some(format!(
                    "{at}: DEK {} belongs to {}, not to the record's tenant {tenant}",
                    q.dek, record.tenant
                )),
            })
        };
        Some(match decision {
            Ok((tenant, digest, plain)) => Decision::Archive {
                tenant,
                src,
                digest,
                plain,
            },
            Err(d) => d,
        })
    }

    /// A record under its tenant's own DEK: the DEK proven through Key Vault, the value opened.
    #[allow(clippy::too_many_arguments)]
    async fn own(
        &self,
        r: &Quarantined,
        at: &str,
        record: &DekRecord,
        tenant: TenantId,
        kms: &TenantKms,
        reason: &str,
        proven: &mut HashMap<DekId, bool>,
    ) -> Result<(TenantId, [u8; 32], Option<Zeroizing<Vec<u8>>>), Decision> {
        if proven.get(&record.dek) == Some(&false) {
            return Err(Decision::Stay(reason.to_owned()));
        }
        let key = match kms.unwrap(&record.kek, record.dek, &record.wrapped).await {
            Ok(k) => {
                proven.insert(record.dek, true);
                k
            }
            Err(_) => {
                proven.insert(record.dek, false);
                return Err(Decision::Stay(reason.to_owned()));
            }
        };
        let max = self.config.max_record_bytes();
        match envelope::open_bounded(&key, tenant.as_str(), r.key.as_deref(), &r.value, max) {
            Ok(plain) => Ok((tenant, digest(&plain), None)),
            Err(e) => Err(Decision::Park {
                reason: "does-not-open".into(),
                report: Some(format!(
                    "{at}: does not open under {tenant}'s DEK {} (corrupt or planted): {e}",
                    record.dek
                )),
            }),
        }
    }

    /// A record under the operator's DEK: opened only if its tenant claim is bound.
    async fn operators(
        &self,
        r: &Quarantined,
        at: &str,
        record: &DekRecord,
        tenant: TenantId,
    ) -> Result<(TenantId, [u8; 32], Option<Zeroizing<Vec<u8>>>), Decision> {
        let opened = self
            .operator
            .unwrap(&record.kek, record.dek, &record.wrapped)
            .await
            .map_err(|e| e.to_string())
            .and_then(|k| {
                let max = self.config.max_record_bytes();
                crate::archive::open_operator(
                    &k,
                    Some(tenant.as_str()),
                    r.key.as_deref(),
                    &r.value,
                    max,
                )
                .map_err(|e| e.to_string())
            });
        match opened {
            Ok((p, OperatorClaim::Bound(_))) => {
                let d = digest(&p);
                Ok((tenant, d, Some(Zeroizing::new(p))))
            }
            // sealed before claims were bound: the header's tenant is only a claim, and
            // re-sealing on it would hand the plaintext to whoever wrote it
            Ok(_) => Err(Decision::Park {
                reason: "claim-not-bound".into(),
                report: None,
            }),
            Err(e) => Err(Decision::Park {
                reason: "does-not-open".into(),
                report: Some(format!(
                    "{at}: does not open with the operator's key as captured for {tenant} (relabelled or corrupt): {e}"
                )),
            }),
        }
    }
}
