//! `byok rewrap`: moves registry DEKs from older key versions (and from local wraps) to the
//! tenant's newest usable version: Key Vault `decrypt` with the version that wrapped each DEK,
//! `encrypt` with the new one, and an updated registry record (same DEK id, `rewrapped` set).
//! Archive records never change. Idempotent and resumable: DEKs already on the target version
//! are skipped, so a second run, or a run after a crash, only does what is left. Vault calls go
//! through the tenant's provider stack (per-vault rate limit, retries honouring Retry-After).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use serde::Serialize;

use crate::archive::registry::load_registry_current;
use crate::audit::merkle::Hash;
use crate::config::{Config, TenantId};
use crate::kms::{KeyProvider, KeyState};
use crate::registry::DekRecord;

/// What to rewrap.
#[derive(Debug, Clone, Default)]
pub struct RewrapOptions {
    /// Only this tenant (default: every tenant with BYOK).
    pub tenant: Option<String>,
    /// The version to move to; must be the tenant's newest usable version (the default).
    pub to_version: Option<String>,
    /// Count, write nothing.
    pub dry_run: bool,
}

/// What rewrapping did, per tenant.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RewrapStats {
    /// The version DEKs were moved to.
    pub target: String,
    /// DEKs of the tenant in the registry.
    pub deks: u64,
    /// Already on the target version.
    pub already: u64,
    /// Moved (or, with --dry-run, to move).
    pub rewrapped: u64,
    /// DEKs that could not be moved, with the reason.
    pub failed: Vec<String>,
}

/// Rewraps; `progress(done, total)` after each DEK.
pub async fn rewrap(
    config: &Config,
    opts: &RewrapOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<BTreeMap<String, RewrapStats>, super::LifecycleError> {
    let registry = load_registry_current(config).await?;
    let keyring = crate::keyring::Keyring::new(config)?;
    let tenants = keyring.tenants();
    if let Some(t) = &opts.tenant
        && !TenantId::parse(t).is_ok_and(|id| tenants.contains_key(&id))
    {
        return Err(super::LifecycleError::Option {
            option: "--tenant",
            value: t.clone(),
            fix: "not a tenant configured with BYOK enabled".into(),
        });
    }
    let producer: FutureProducer = super::tool_producer(config)?;
    let audit = if opts.dry_run {
        None
    } else {
        super::tool_audit(config, "byok-rewrap", &producer).await?
    };
    let mut by_tenant: BTreeMap<&str, Vec<&(DekRecord, Hash)>> = BTreeMap::new();
    for r in registry.values() {
        by_tenant.entry(r.0.tenant.as_str()).or_default().push(r);
    }
    let total: u64 = by_tenant
        .iter()
        .filter(|(t, _)| opts.tenant.as_deref().is_none_or(|w| w == **t))
        .map(|(_, v)| v.len() as u64)
        .sum();
    let mut done = 0u64;
    let mut out = BTreeMap::new();
    for (id, kms) in tenants {
        if opts.tenant.as_deref().is_some_and(|t| t != id.as_str()) {
            continue;
        }
        let mut stats = RewrapStats::default();
        let target = match kms.key_state().await {
            KeyState::Usable(v) | KeyState::VersionUnusable { usable: v, .. } => v,
            KeyState::Revoked { why, detail, .. } => {
                stats.failed.push(format!(
                    "the key is revoked ({why}): {detail}; nothing to rewrap onto"
                ));
                out.insert(id.to_string(), stats);
                continue;
            }
            KeyState::Unavailable { why, detail, .. } => {
                stats.failed.push(format!(
                    "the vault is unavailable ({why}): {detail}; run again later"
                ));
                out.insert(id.to_string(), stats);
                continue;
            }
        };
        if let Some(v) = &opts.to_version
            && !v.eq_ignore_ascii_case(target.kid.version())
        {
            return Err(super::LifecycleError::Option {
                option: "--to-version",
                value: v.clone(),
                fix: format!(
                    "not tenant {id}'s newest usable version ({}); rewrap moves DEKs to that version only",
                    target.kid.version()
                ),
            });
        }
        stats.target = target.kid.to_string();
        let mut records = by_tenant.remove(id.as_str()).unwrap_or_default();
        records.sort_by_key(|r| r.0.created);
        for (r, prev) in records {
            stats.deks += 1;
            done += 1;
            progress(done, total);
            if r.kek == target.kid && !r.wrapped_locally {
                stats.already += 1;
                continue;
            }
            if opts.dry_run {
                stats.rewrapped += 1;
                continue;
            }
            let to = Target {
                kid: &target.kid,
                producer: &producer,
                audit: audit.as_ref().map(|a| &a.records),
            };
            match rewrap_one(config, kms.as_ref(), r, prev, &to).await {
                Ok(updated) => {
                    stats.rewrapped += 1;
                    tracing::info!(tenant = %id, dek = %r.dek, from = %r.kek, to = %updated.kek, "DEK rewrapped");
                }
                Err(why) => stats.failed.push(why.to_string()),
            }
        }
        out.insert(id.to_string(), stats);
    }
    if let Some(a) = audit {
        a.finish().await?;
    }
    let _ = producer.flush(Timeout::After(Duration::from_secs(30)));
    Ok(out)
}

/// Where a rewrap goes: the target version, the producer, the tool's audit writer.
struct Target<'a> {
    kid: &'a crate::kms::KekId,
    producer: &'a FutureProducer,
    audit: Option<&'a crate::auditor::RecordAudit>,
}

/// Why one DEK was not rewrapped (it keeps its old registry record).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RewrapError {
    /// The DEK did not unwrap under the version its record names.
    #[error("DEK {dek} (under {kek}): cannot be unwrapped: {source}")]
    Unwrap {
        /// The DEK.
        dek: crate::dek::DekId,
        /// The key version its record names.
        kek: crate::kms::KekId,
        /// Key Vault's answer.
        source: crate::kms::KmsError,
    },
    /// Key Vault wrapped under another version than the target (the key changed during the run).
    #[error(
        "DEK {dek}: Key Vault wrapped it under {got}, not {target}; the key changed during the run, run again"
    )]
    KeyChanged {
        /// The DEK.
        dek: crate::dek::DekId,
        /// The version Key Vault used.
        got: crate::kms::KekId,
        /// The version asked for.
        target: crate::kms::KekId,
    },
    /// Key Vault did not wrap.
    #[error("DEK {dek}: cannot be wrapped under {target}: {source}")]
    Wrap {
        /// The DEK.
        dek: crate::dek::DekId,
        /// The version asked for.
        target: crate::kms::KekId,
        /// Key Vault's answer.
        source: crate::kms::KmsError,
    },
    /// The new wrap did not decrypt, through Key Vault, to the DEK: the old record is kept.
    #[error(
        "DEK {dek}: the new wrap under {target} does not decrypt to the same DEK through Key Vault ({detail}); the old record is kept"
    )]
    Proof {
        /// The DEK.
        dek: crate::dek::DekId,
        /// The version it was wrapped under.
        target: crate::kms::KekId,
        /// Key Vault's answer or the mismatch.
        detail: String,
    },
    /// The new registry record was not acknowledged.
    #[error("DEK {dek}: the registry record was not acknowledged: {source}")]
    Registry {
        /// The DEK.
        dek: crate::dek::DekId,
        /// The producer's error.
        source: rdkafka::error::KafkaError,
    },
}

/// One DEK unwrapped with the version its record names, wrapped under the target, the new wrap
/// decrypted back through Key Vault (never the cache) and compared, and only then its new
/// registry record (signed, superseding `prev`) acknowledged; or why not (the old one stays).
async fn rewrap_one(
    config: &Config,
    kms: &crate::kms::TenantKms,
    r: &DekRecord,
    prev: &Hash,
    to: &Target<'_>,
) -> Result<DekRecord, RewrapError> {
    let target = to.kid;
    let key = kms
        .unwrap(&r.kek, r.dek, &r.wrapped)
        .await
        .map_err(|source| RewrapError::Unwrap {
            dek: r.dek,
            kek: r.kek.clone(),
            source,
        })?;
    let wrapped = match kms.wrap(&key).await {
        Ok(w) if w.kek == *target => w,
        Ok(w) => {
            return Err(RewrapError::KeyChanged {
                dek: r.dek,
                got: w.kek,
                target: target.clone(),
            });
        }
        Err(e) => {
            return Err(RewrapError::Wrap {
                dek: r.dek,
                target: target.clone(),
                source: e,
            });
        }
    };
    let proof = |detail: String| RewrapError::Proof {
        dek: r.dek,
        target: target.clone(),
        detail,
    };
    let back = kms
        .inner()
        .unwrap(target, r.dek, &wrapped.wrapped)
        .await
        .map_err(|e| proof(e.to_string()))?;
    if back.secret_bytes() != key.secret_bytes() {
        return Err(proof("it decrypts to another key".into()));
    }
    let updated = DekRecord {
        kek: wrapped.kek,
        wrapped: wrapped.wrapped,
        rewrapped: Some(time::OffsetDateTime::now_utc()),
        wrapped_locally: false,
        ..r.clone()
    };
    crate::auditor::publish_record(
        to.producer,
        &config.kafka.registry_topic,
        &updated.dek.to_string(),
        crate::audit::records::RecordKind::Dek,
        updated.to_json(),
        prev,
        to.audit,
    )
    .await
    .map_err(|source| RewrapError::Registry { dek: r.dek, source })?;
    Ok(updated)
}
