//! Reading `byok.deks` and `byok.keks` as a reader may use them. With an audit log configured,
//! only records that verify (docs/audit-v1.md §5b): signed by a writer whose session a pinned
//! signing key version certified, not relabelled, not rolled back, never a tombstone; the
//! audit topic's `dek:`/`kek:` copies are read first, as the append-only history. Without one,
//! the latest record per id (records are not signed then).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use rdkafka::Message;

use super::ReadError;
use crate::audit::merkle::{Hash, hash};
use crate::audit::records::RecordKind;
use crate::config::{AuditConfig, Config, UnsignedMark};
use crate::dek::DekId;
use crate::kafka::{read_all, reader_consumer};
use crate::kms::VersionInfo;
use crate::kms::local::KekRecord;
use crate::registry::{DekRecord, RegistryEntry};
use crate::trust::{Pinned, Place, Rules, SignedRecord, Signers, Trusted};

/// Loads the DEK registry: per DEK, the record a reader may use.
pub async fn load_registry(config: &Config) -> Result<HashMap<DekId, DekRecord>, ReadError> {
    if config.audit.is_none() {
        return Ok(load_unsigned_registry(config)
            .await?
            .into_iter()
            .map(|(id, (r, _))| (id, r))
            .collect());
    }
    Ok(crate::trust::dek_records(
        load_trusted::<DekRecord>(config).await?,
    ))
}

/// The DEK registry with the hash of each current record's value (the `prev` of a rewrap).
pub async fn load_registry_current(
    config: &Config,
) -> Result<HashMap<DekId, (DekRecord, Hash)>, ReadError> {
    if config.audit.is_none() {
        return load_unsigned_registry(config).await;
    }
    Ok(load_trusted::<DekRecord>(config)
        .await?
        .iter()
        .map(|(_, c)| (c.record.dek, (c.record.clone(), hash(&c.value))))
        .collect())
}

/// Loads each tenant's last known public key from `byok.keks`.
pub async fn load_keks(config: &Config) -> Result<HashMap<String, VersionInfo>, ReadError> {
    Ok(load_keks_current(config)
        .await?
        .into_iter()
        .map(|(t, (v, _))| (t, v))
        .collect())
}

/// Each tenant's last known public key with the hash of its record's value (the `prev` of the
/// next record a writer publishes).
pub async fn load_keks_current(
    config: &Config,
) -> Result<HashMap<String, (VersionInfo, Hash)>, ReadError> {
    if config.audit.is_none() {
        return load_unsigned_keks(config).await;
    }
    Ok(load_trusted::<KekRecord>(config)
        .await?
        .iter()
        .map(|(t, c)| (t.clone(), (c.record.version.clone(), hash(&c.value))))
        .collect())
}

/// The records of `T`'s topic that verify, with those rejected. Needs `[audit]`.
pub async fn load_trusted<T: SignedRecord + KeyChecked>(
    config: &Config,
) -> Result<Trusted<T>, ReadError> {
    let audit = config.audit.as_ref().ok_or(ReadError::NoAudit)?;
    let history = read_history(config, audit, &[T::KIND]).await?;
    trusted_with(config, &history).await
}

/// The registry and the key records that verify, from one reading of the audit topic.
pub async fn load_trusted_both(
    config: &Config,
) -> Result<(Trusted<DekRecord>, Trusted<KekRecord>), ReadError> {
    let audit = config.audit.as_ref().ok_or(ReadError::NoAudit)?;
    let history = read_history(config, audit, &[RecordKind::Dek, RecordKind::Kek]).await?;
    Ok((
        trusted_with(config, &history).await?,
        trusted_with(config, &history).await?,
    ))
}

/// The records of `T`'s topic that verify under `history`'s signers, its copies read first.
async fn trusted_with<T: SignedRecord + KeyChecked>(
    config: &Config,
    history: &History,
) -> Result<Trusted<T>, ReadError> {
    let audit = config.audit.as_ref().ok_or(ReadError::NoAudit)?;
    let topic = match T::KIND {
        RecordKind::Dek => &config.kafka.registry_topic,
        RecordKind::Kek => &config.kafka.keks_topic,
    };
    let mut trusted = Trusted::default();
    let mut records: Vec<(Place, String, Option<Vec<u8>>)> = history
        .copies
        .iter()
        .filter(|(kind, ..)| *kind == T::KIND)
        .map(|(_, place, key, value)| (place.clone(), key.clone(), value.clone()))
        .collect();
    let consumer = reader_consumer(config)?;
    let copies = records.len();
    read_all(&consumer, topic, None, |m| {
        let place = Place {
            topic: topic.clone(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        records.push((place, key, m.payload().map(<[u8]>::to_vec)));
    })
    .await?;
    let marks = &audit.unsigned_below;
    let unsigned_ok = |p: &Place| UnsignedMark::covers(marks, &p.topic, p.partition, p.offset);
    let check = |r: &T| r.check(config);
    let rules = Rules {
        signers: &history.signers,
        unsigned_ok: &unsigned_ok,
        check: &check,
    };
    for (i, (place, key, value)) in records.into_iter().enumerate() {
        trusted.apply(
            &rules,
            place,
            Some(key.as_bytes()),
            value.as_deref(),
            i < copies,
        );
    }
    Ok(trusted)
}

/// What a reader checks in a record beyond its signature.
pub trait KeyChecked {
    /// Whether the record fits the configuration.
    fn check(&self, config: &Config) -> Result<(), String>;
}

impl KeyChecked for DekRecord {
    fn check(&self, _: &Config) -> Result<(), String> {
        Ok(())
    }
}

impl KeyChecked for KekRecord {
    /// The tenant's configured vault host and key name, RSA of at least 3072 bits.
    fn check(&self, config: &Config) -> Result<(), String> {
        let Some(key) = config
            .tenants
            .values()
            .find(|t| t.id.as_str() == self.tenant)
            .and_then(|t| t.key.as_ref())
        else {
            return Err(format!("no key is configured for tenant {:?}", self.tenant));
        };
        if !self
            .version
            .kid
            .is_key(key.vault_url.as_str(), &key.key_name)
        {
            return Err(format!(
                "{} is not the configured key {} in {}",
                self.version.kid, key.key_name, key.vault_url
            ));
        }
        if self.version.bits() < 3072 {
            return Err(format!(
                "{} has {} bits; at least 3072 are required",
                self.version.kid,
                self.version.bits()
            ));
        }
        Ok(())
    }
}

/// The audit topic's certified signers and the copies of one kind, in topic order.
pub struct History {
    /// Session keys certified by a pinned version.
    pub signers: Signers,
    /// `(kind, place, key, value)` of each copy.
    pub copies: Vec<(RecordKind, Place, String, Option<Vec<u8>>)>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History")
            .field("signers", &self.signers.len())
            .field("copies", &self.copies.len())
            .finish()
    }
}

/// Reads the audit topic: signer statements (kept when a pinned version certifies them) and the
/// copies of `kinds` (keyed `<kind>:`).
pub async fn read_history(
    config: &Config,
    audit: &AuditConfig,
    kinds: &[RecordKind],
) -> Result<History, ReadError> {
    let mut signers = Signers::new(pinned_keys(config, audit).await?, &audit.cluster);
    let prefixes: Vec<(RecordKind, String)> = kinds.iter().map(|k| (*k, k.copy_key(""))).collect();
    let mut copies = Vec::new();
    let consumer = reader_consumer(config)?;
    read_all(&consumer, &audit.topic, None, |m| {
        let key = m.key().unwrap_or_default();
        let value = m.payload().unwrap_or_default();
        if let Some((kind, _)) = prefixes.iter().find(|(_, p)| key.starts_with(p.as_bytes())) {
            let place = Place {
                topic: audit.topic.clone(),
                partition: m.partition(),
                offset: m.offset(),
            };
            copies.push((
                *kind,
                place,
                String::from_utf8_lossy(key).into_owned(),
                m.payload().map(<[u8]>::to_vec),
            ));
        } else if value.starts_with(br#"{"v":1,"t":"signer","#) {
            signers.offer(value);
        }
    })
    .await?;
    Ok(History { signers, copies })
}

/// The pinned signing key versions' public parts (read once per process from Key Vault).
pub async fn pinned_keys(config: &Config, audit: &AuditConfig) -> Result<Pinned, ReadError> {
    static CACHE: OnceLock<Mutex<Pinned>> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if audit.trusted.is_empty() {
        return Err(ReadError::NothingPinned);
    }
    let mut out = Pinned::new();
    for text in &audit.trusted {
        if let Some(k) = crate::lock(cache).get(text) {
            out.insert(text.clone(), k.clone());
            continue;
        }
        let pinned = |detail: String| ReadError::Pinned {
            kid: text.clone(),
            detail,
        };
        let kid = crate::kms::KekId::parse(text).map_err(|e| pinned(e.to_string()))?;
        let http =
            crate::kms::azure::http_client(&config.keys, audit.signing_key.ca_file.as_deref())
                .map_err(|e| pinned(e.to_string()))?;
        let p = crate::kms::azure::AzureKeyProvider::new(
            "_audit",
            &audit.signing_key,
            http,
            std::time::Duration::ZERO,
        )
        .map_err(|e| pinned(e.to_string()))?;
        let v = p
            .get_version(Some(kid.version()))
            .await
            .map_err(|e| pinned(e.to_string()))?;
        crate::lock(cache).insert(text.clone(), (v.n.clone(), v.e.clone()));
        out.insert(text.clone(), (v.n, v.e));
    }
    Ok(out)
}

/// Without an audit log: the latest record per DEK (with its value's hash); tombstones remove.
async fn load_unsigned_registry(
    config: &Config,
) -> Result<HashMap<DekId, (DekRecord, Hash)>, ReadError> {
    let consumer = reader_consumer(config)?;
    let mut map = HashMap::new();
    read_all(
        &consumer,
        &config.kafka.registry_topic,
        None,
        |m| match RegistryEntry::decode(m.key(), m.payload()) {
            Ok(RegistryEntry::Live(r)) => {
                map.insert(r.dek, (r, hash(m.payload().unwrap_or_default())));
            }
            Ok(RegistryEntry::Destroyed(id)) => {
                map.remove(&id);
            }
            Err(e) => tracing::warn!(error = %e, "unreadable registry record"),
        },
    )
    .await?;
    Ok(map)
}

/// Without an audit log: the latest key record per tenant.
async fn load_unsigned_keks(
    config: &Config,
) -> Result<HashMap<String, (VersionInfo, Hash)>, ReadError> {
    let consumer = reader_consumer(config)?;
    let mut map = HashMap::new();
    read_all(&consumer, &config.kafka.keks_topic, None, |m| {
        match m.payload().map(KekRecord::from_json) {
            Some(Ok(r)) => {
                let h = hash(m.payload().unwrap_or_default());
                map.insert(r.tenant, (r.version, h));
            }
            Some(Err(e)) => tracing::warn!(error = %e, "unreadable byok.keks record"),
            None => {}
        }
    })
    .await?;
    Ok(map)
}
