//! `byok cat`: reads an archive or quarantine topic, opens each record through the DEK registry
//! and the key providers, and yields the plaintext with its provenance. This is how an auditor
//! with decrypt permission reads the archive, and how tests check it. Duplicates (same
//! `byok.src`) are dropped unless asked for. A record that cannot be opened is reported with the
//! reason, never skipped silently.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rdkafka::Message;
use serde::Serialize;

use crate::config::Config;
use crate::dek::DekId;
use crate::envelope::{
    self,
    headers::{ArchiveHeaders, HeaderError, QuarantineHeaders},
};
use crate::kafka::{TopicReader, owned_headers, reader_consumer};
use crate::kms::KeyProvider;
use crate::registry::{DekRecord, QUARANTINE_TENANT};
use crate::tenant::{OperatorClaim, operator_aad};

pub use crate::kafka::ReadOptions;
pub use registry::{load_keks, load_registry};

pub mod registry;

/// One opened record.
#[derive(Debug, Clone, Serialize)]
pub struct Opened {
    /// Topic, partition and offset of the sealed record.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Provenance of the captured record.
    pub src: String,
    /// The tenant the record was sealed for, as its AAD proves (never only a header's word).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A tenant the record names but whose claim is not bound (operator-key records sealed
    /// before 2026-12): shown, never acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unverified_tenant: Option<String>,
    /// Quarantine reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// DEK id.
    pub dek: String,
    /// Record key, base64 (absent when null).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    /// Plaintext, base64.
    pub value_b64: String,
    /// Plaintext as text, when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A record that could not be opened, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Unopened {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Why.
    pub reason: String,
    /// The record is a marker the worker wrote for a record it could not keep (not sealed:
    /// there is nothing to open).
    #[serde(skip)]
    pub marker: bool,
}

/// What reading found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ReadStats {
    /// Records read.
    pub read: u64,
    /// Opened and yielded.
    pub opened: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Could not be opened.
    pub failed: u64,
}

/// Why one record cannot be opened or re-sealed (cat, drain, replay): named for the check that
/// failed, with what the record and the registry say. Never carries key material or plaintext.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The headers are not those of an archive or quarantine record.
    #[error("not a byok record: {0}")]
    NotByok(HeaderError),
    /// The record is a marker the worker wrote for a record it could not keep (too large, ...).
    #[error("{0}")]
    Marker(HeaderError),
    /// The DEK named by the record is not in the registry topic.
    #[error("DEK {dek} is not in the registry topic {registry_topic}")]
    DekUnknown {
        /// The DEK.
        dek: DekId,
        /// Where it was looked for.
        registry_topic: String,
    },
    /// The DEK's owner has no key provider here (no tenant with BYOK enabled).
    #[error("DEK {dek} belongs to tenant {tenant}, which has no BYOK key in the configuration")]
    NoProvider {
        /// The DEK.
        dek: DekId,
        /// Its owner in the registry.
        tenant: String,
    },
    /// The tenant to re-seal for has no key provider here.
    #[error("tenant {tenant} has no BYOK key in the configuration (BYOK enabled) to re-seal under")]
    TenantHasNoKey {
        /// The tenant.
        tenant: String,
    },
    /// Key Vault did not unwrap the DEK.
    #[error("DEK {dek} cannot be unwrapped: {source}")]
    Unwrap {
        /// The DEK.
        dek: DekId,
        /// Key Vault's answer.
        source: Arc<crate::kms::KmsError>,
    },
    /// The record has no value.
    #[error("null value")]
    NullValue,
    /// The value does not open under the DEK with its owner as the AAD tenant.
    #[error("the value does not open with DEK {dek} of {owner} (tampered or corrupt)")]
    DoesNotOpen {
        /// The DEK.
        dek: DekId,
        /// Its owner in the registry (the AAD tenant tried).
        owner: String,
    },
    /// The header names a tenant other than the one the record is sealed for.
    #[error(
        "relabelled: header byok.tenant names {claimed:?} but the record is sealed for {sealed_for}"
    )]
    Relabelled {
        /// What the header says.
        claimed: String,
        /// What the AAD proves.
        sealed_for: String,
    },
    /// An archive record under an operator DEK: archive records are sealed under tenant keys only.
    #[error(
        "an archive record under the operator's DEK {dek}: archive records are sealed under their tenant's key only (planted?)"
    )]
    OperatorDekInArchive {
        /// The DEK.
        dek: DekId,
    },
    /// Quarantined before tenant claims were bound: the tenant is only the header's claim.
    #[error(
        "quarantined before tenant claims were bound: {tenant} is only the header's claim, not re-sealed for it"
    )]
    UnboundClaim {
        /// The claimed tenant.
        tenant: String,
    },
    /// A quarantine record whose tenant has no key to re-seal under.
    #[error(
        "quarantined as {reason} with no tenant key to re-seal under (a tenant with BYOK enabled)"
    )]
    NoTenantKey {
        /// The quarantine reason.
        reason: &'static str,
    },
    /// The tenant id in the record is not a valid id.
    #[error("{0}")]
    TenantId(#[from] crate::tenant::TenantIdError),
    /// No DEK could be made for re-sealing.
    #[error("no DEK for re-sealing under {tenant}'s key: {source}")]
    NoDek {
        /// The tenant.
        tenant: String,
        /// Why.
        source: Arc<crate::deks::DekError>,
    },
    /// Sealing failed.
    #[error("re-sealing failed: {0}")]
    Seal(#[from] envelope::SealError),
}

/// Reading failed as a whole.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The topic could not be read.
    #[error(transparent)]
    Topic(#[from] crate::kafka::TopicError),
    /// The key providers could not be set up (a credential file missing, a bad CA).
    #[error("key providers: {0}")]
    Keys(#[from] crate::kms::KmsError),
    /// Signed records need the audit log's configuration.
    #[error(
        "the configuration has no [audit] section: there are no signers to check records against"
    )]
    NoAudit,
    /// No pinned signing key version.
    #[error("audit.signing_keys is empty: pin the signing key versions to trust (full key ids)")]
    NothingPinned,
    /// A pinned signing key version could not be read from Key Vault.
    #[error("pinned signing key {kid}: {detail}")]
    Pinned {
        /// The version.
        kid: String,
        /// What failed.
        detail: String,
    },
}

/// Opens a record sealed under an operator DEK, proving the tenant it names: first with the
/// claim bound in the AAD (`_quarantine.<tenant>`), then, for records sealed before claims were
/// bound, with `_quarantine` (the claim is then [`OperatorClaim::Unbound`]). A relabelled or
/// removed `byok.tenant` header makes a bound record fail to open.
pub fn open_operator(
    key: &crate::dek::DataKey,
    claimed: Option<&str>,
    record_key: Option<&[u8]>,
    value: &[u8],
    max_plain: usize,
) -> Result<(Vec<u8>, OperatorClaim), envelope::OpenError> {
    if let Some(t) = claimed
        && let Ok(p) =
            envelope::open_bounded(key, &operator_aad(Some(t)), record_key, value, max_plain)
    {
        return Ok((p, OperatorClaim::Bound(t.to_owned())));
    }
    let p = envelope::open_bounded(key, QUARANTINE_TENANT, record_key, value, max_plain)?;
    Ok((
        p,
        claimed.map_or(OperatorClaim::None, |t| {
            OperatorClaim::Unbound(t.to_owned())
        }),
    ))
}

/// Reads and opens `opts.topic`, calling `out` for each opened record and `failed` for each
/// record that could not be opened.
pub async fn read(
    config: &Config,
    opts: &ReadOptions,
    mut out: impl FnMut(Opened),
    mut failed: impl FnMut(Unopened),
) -> Result<ReadStats, ReadError> {
    let mut registry = load_registry(config).await?;
    let mut reloaded = std::time::Instant::now();
    let keyring = crate::keyring::Keyring::new(config)?;
    let consumer = reader_consumer(config)?;
    let mut reader = TopicReader::open(&consumer, &opts.topic, Some(opts)).await?;
    let mut stats = ReadStats::default();
    // duplicates (a batch sealed again after a crash) are near each other: a window is enough
    let mut seen = crate::seen::Seen::window(DEDUP_WINDOW);
    while let Some(m) = reader.next().await? {
        let ts = m.timestamp().to_millis();
        if opts.from_time_ms.is_some_and(|f| ts.is_some_and(|t| t < f))
            || opts.to_time_ms.is_some_and(|e| ts.is_some_and(|t| t >= e))
        {
            continue;
        }
        let sealed: Sealed = (
            m.partition(),
            m.offset(),
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            owned_headers(&m),
        );
        drop(m);
        // a DEK made after the registry was read: read it again (at most every 10 s)
        if let Some(dek) = sealed.3.as_deref().and_then(|v| envelope::dek_id(v).ok())
            && !registry.contains_key(&dek)
            && reloaded.elapsed() >= REGISTRY_RELOAD_EVERY
        {
            registry = load_registry(config).await?;
            reloaded = std::time::Instant::now();
        }
        let cx = OpenCx {
            config,
            registry: &registry,
            keyring: &keyring,
            opts,
        };
        stats.read += 1;
        let (partition, offset) = (sealed.0, sealed.1);
        match open_one(&cx, sealed).await {
            Err(reason) => {
                stats.failed += 1;
                failed(Unopened {
                    topic: opts.topic.clone(),
                    partition,
                    offset,
                    marker: matches!(reason, RecordError::Marker(_)),
                    reason: reason.to_string(),
                });
            }
            Ok(None) => {}
            // duplicates carry the same byok.src and the same plaintext; a record that merely
            // copies a byok.src is not one of them
            Ok(Some((digest, o))) => {
                let key = crate::seen::key(&o.src, &digest);
                if !opts.duplicates && !seen.insert(key) {
                    stats.duplicates += 1;
                    continue;
                }
                stats.opened += 1;
                out(o);
            }
        }
    }
    Ok(stats)
}

/// How many records back `byok cat` looks for a duplicate (16 bytes each).
pub const DEDUP_WINDOW: usize = 500_000;
/// Least time between two reads of the registry when a record names a DEK not in it.
pub const REGISTRY_RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// What opening a record needs.
struct OpenCx<'a> {
    config: &'a Config,
    registry: &'a HashMap<DekId, DekRecord>,
    keyring: &'a crate::keyring::Keyring,
    opts: &'a ReadOptions,
}

/// A record as read: partition, offset, key, value, headers.
type Sealed = (
    i32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

/// What a record's headers claim: tenant, quarantine reason, provenance, DEK.
#[allow(clippy::type_complexity)]
fn claims(
    headers: &[(String, Option<Vec<u8>>)],
) -> Result<(Option<String>, Option<String>, String, DekId), RecordError> {
    let pairs = headers.iter().map(|(k, v)| (k.as_str(), v.as_deref()));
    match ArchiveHeaders::from_pairs(pairs.clone()) {
        Ok(h) if !headers.iter().any(|(k, _)| k == "byok.reason") => {
            Ok((Some(h.tenant), None, h.src.to_string(), h.dek))
        }
        _ => match QuarantineHeaders::from_pairs(pairs) {
            Ok(q) => Ok((
                q.tenant,
                Some(q.reason.as_str().to_owned()),
                q.src.to_string(),
                q.dek,
            )),
            Err(e @ HeaderError::Marker { .. }) => Err(RecordError::Marker(e)),
            Err(e) => Err(RecordError::NotByok(e)),
        },
    }
}

/// Opens one record: the plaintext's digest and the record, `None` when the tenant filter
/// leaves it out, or why it cannot be opened.
async fn open_one(
    cx: &OpenCx<'_>,
    sealed: Sealed,
) -> Result<Option<([u8; 32], Opened)>, RecordError> {
    let (config, registry, keyring, opts) = (cx.config, cx.registry, cx.keyring, cx.opts);
    let (partition, offset, key, value, headers) = sealed;
    let (tenant, reason, src, dek) = claims(&headers)?;
    let Some(record) = registry.get(&dek) else {
        return Err(RecordError::DekUnknown {
            dek,
            registry_topic: config.kafka.registry_topic.clone(),
        });
    };
    // the owner in the registry is what the AAD proves, never the header
    let operator = record.tenant == QUARANTINE_TENANT;
    if !operator && opts.tenant.as_ref().is_some_and(|t| *t != record.tenant) {
        return Ok(None);
    }
    let Some(provider) = keyring.owner(&record.tenant) else {
        return Err(RecordError::NoProvider {
            dek,
            tenant: record.tenant.clone(),
        });
    };
    let key_obj = match provider.unwrap(&record.kek, dek, &record.wrapped).await {
        Ok(k) => k,
        Err(e) => {
            return Err(RecordError::Unwrap {
                dek,
                source: Arc::new(e),
            });
        }
    };
    let Some(value) = value else {
        return Err(RecordError::NullValue);
    };
    let opened = if operator {
        open_operator(
            &key_obj,
            tenant.as_deref(),
            key.as_deref(),
            &value,
            config.max_record_bytes(),
        )
    } else {
        envelope::open_bounded(
            &key_obj,
            &record.tenant,
            key.as_deref(),
            &value,
            config.max_record_bytes(),
        )
        .map(|p| (p, OperatorClaim::Bound(record.tenant.clone())))
    };
    let (plain, claim) = match opened {
        Ok(o) => o,
        Err(_) => {
            return Err(RecordError::DoesNotOpen {
                dek,
                owner: record.tenant.clone(),
            });
        }
    };
    let (tenant, unverified_tenant) = match claim {
        OperatorClaim::Bound(t) if !operator && tenant.as_deref() != Some(t.as_str()) => {
            return Err(RecordError::Relabelled {
                claimed: tenant.unwrap_or_default(),
                sealed_for: t,
            });
        }
        OperatorClaim::Bound(t) => (Some(t), None),
        OperatorClaim::None => (None, None),
        OperatorClaim::Unbound(t) => (None, Some(t)),
    };
    if opts.tenant.is_some() && opts.tenant != tenant {
        return Ok(None);
    }
    // duplicates (a batch sealed again after a crash) carry the same byok.src and the same
    // plaintext; a record that merely copies a byok.src is not one of them
    let digest = crate::seen::digest(&plain);
    Ok(Some((
        digest,
        Opened {
            topic: opts.topic.clone(),
            partition,
            offset,
            src,
            tenant,
            unverified_tenant,
            reason,
            dek: dek.to_string(),
            key_b64: key.as_ref().map(|k| STANDARD.encode(k)),
            value_b64: STANDARD.encode(&plain),
            value: String::from_utf8(plain).ok(),
        },
    )))
}

/// The plaintext digest of an archive record sealed for `tenant` (under one of its DEKs in
/// `registry`), if it opens.
pub(crate) async fn opens_to(
    keyring: &crate::keyring::Keyring,
    registry: &HashMap<DekId, DekRecord>,
    tenant: &str,
    key: Option<&[u8]>,
    value: &[u8],
    max_plain: usize,
) -> Option<[u8; 32]> {
    let record = registry.get(&envelope::dek_id(value).ok()?)?;
    if record.tenant != tenant {
        return None;
    }
    let kms = keyring.tenant(tenant)?;
    let dek = kms
        .unwrap(&record.kek, record.dek, &record.wrapped)
        .await
        .ok()?;
    let plain =
        zeroize::Zeroizing::new(envelope::open_bounded(&dek, tenant, key, value, max_plain).ok()?);
    Some(crate::seen::digest(&plain))
}
