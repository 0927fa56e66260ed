//! Which registry and key records a reader may use (docs/audit-v1.md §5, §5b): the writers'
//! session keys certified by a pinned signing key version ([`Signers`]), and per DEK or tenant
//! the current value, taken only from records that verify ([`Trusted`]).
//!
//! Wrapping a DEK is a public-key operation: anyone who can write to Kafka can make a DEK and
//! register it. A signed record proves a certified writer made it; its `prev` (the hash of the
//! value it supersedes) makes a replayed older value visible. Forged, unsigned, relabelled,
//! rolled-back and tombstone records are counted and reported, never used.
//!
//! This module is pure: the caller reads the audit topic's signer statements and `dek:`/`kek:`
//! copies first (the append-only history), then the compacted topic, and applies each record in
//! topic order. It must never trust a key a record names.

use std::collections::HashMap;

use ring::signature::{ED25519, UnparsedPublicKey};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::codec::{parse_time, split_signed, unb64_32};
use crate::audit::merkle::{Hash, hash};
use crate::audit::records::{RecordKind, verify_signer};
use crate::dek::DekId;
use crate::kms::local::KekRecord;
use crate::registry::{DekRecord, RegistryEntry};

/// A pinned signing key version's public part: kid -> (n, e).
pub type Pinned = HashMap<String, (Vec<u8>, Vec<u8>)>;

/// One certified session key of a writer.
#[derive(Debug, Clone)]
struct Cert {
    key: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

/// The session keys of the writers of one cluster, each certified by a pinned key version.
#[derive(Debug, Clone, Default)]
pub struct Signers {
    pinned: Pinned,
    cluster: String,
    certs: HashMap<String, Vec<Cert>>,
}

impl Signers {
    /// Trusts statements signed by one of `pinned` for `cluster`.
    pub fn new(pinned: Pinned, cluster: &str) -> Self {
        Self {
            pinned,
            cluster: cluster.to_owned(),
            certs: HashMap::new(),
        }
    }

    /// Reads a signer statement from the audit topic; keeps its session key when it verifies
    /// under a pinned key version and names this cluster. Returns whether it was kept.
    pub fn offer(&mut self, value: &[u8]) -> bool {
        let Some(kid) = serde_json::from_slice::<serde_json::Value>(value)
            .ok()
            .and_then(|j| j["signing_kid"].as_str().map(str::to_owned))
        else {
            return false;
        };
        let Some((n, e)) = self.pinned.get(&kid) else {
            return false;
        };
        let Ok(st) = verify_signer(value, n, e) else {
            return false;
        };
        let (Ok(key), Ok(not_before), Ok(not_after)) = (
            unb64_32(&st.session_key, "session_key"),
            parse_time(&st.not_before, "not_before"),
            parse_time(&st.not_after, "not_after"),
        ) else {
            return false;
        };
        if st.cluster != self.cluster {
            return false;
        }
        self.certs.entry(st.writer).or_default().push(Cert {
            key: key.to_vec(),
            not_before,
            not_after,
        });
        true
    }

    /// Trusts a session key directly (tests that have no operator key).
    #[doc(hidden)]
    pub fn trust_session_for_tests(
        &mut self,
        writer: &str,
        key: &[u8],
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) {
        self.certs.entry(writer.to_owned()).or_default().push(Cert {
            key: key.to_vec(),
            not_before,
            not_after,
        });
    }

    /// The number of certified sessions.
    pub fn len(&self) -> usize {
        self.certs.values().map(Vec::len).sum()
    }

    /// Whether no session is certified.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The signed text `S` of `value` when its `sig` verifies under a session key of `writer`
    /// whose validity covers the time `at_of(S)` reads from it.
    pub fn verify(
        &self,
        writer: &str,
        value: &[u8],
        at_of: impl Fn(&str) -> Option<OffsetDateTime>,
    ) -> Result<String, Rejection> {
        let (signed, sig) = split_signed(value, "sig").map_err(|_| Rejection::Unsigned)?;
        let certs = self.certs.get(writer).ok_or(Rejection::Forged(
            "no certified session of the writer it names",
        ))?;
        let at = at_of(&signed).ok_or(Rejection::Unreadable(
            "its time is not an RFC 3339 time".into(),
        ))?;
        let mut verified = false;
        for c in certs {
            if UnparsedPublicKey::new(&ED25519, &c.key)
                .verify(signed.as_bytes(), &sig)
                .is_ok()
            {
                verified = true;
                if at >= c.not_before && at <= c.not_after {
                    return Ok(signed);
                }
            }
        }
        Err(Rejection::Forged(if verified {
            "signed outside its session's validity"
        } else {
            "the signature does not verify under the writer's session keys"
        }))
    }
}

/// Why a registry or key record is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a record of the format.
    #[error("unreadable: {0}")]
    Unreadable(String),
    /// No signature (records older than signing need `audit.trust_unsigned_below`).
    #[error(
        "unsigned (a record written before signing is trusted only below audit.trust_unsigned_below)"
    )]
    Unsigned,
    /// The signature does not verify under a trusted session of the writer it names.
    #[error("forged: {0}")]
    Forged(&'static str),
    /// The record names another DEK or tenant than its Kafka key.
    #[error("relabelled: it names {named:?} under the key {key:?}")]
    Relabelled {
        /// The id in the record.
        named: String,
        /// The Kafka key.
        key: String,
    },
    /// Its `prev` is not the hash of the current value: an older value replayed.
    #[error("rolled back: its prev is not the hash of the current value")]
    RolledBack,
    /// A null value: registry records are never destroyed under the audit log.
    #[error("tombstone: a null value would destroy the only wrapped copy")]
    Tombstone,
    /// A key record not for the tenant's configured key.
    #[error("wrong key: {0}")]
    WrongKey(String),
}

impl Rejection {
    /// The metric label and report kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Rejection::Unreadable(_) => "unreadable",
            Rejection::Unsigned => "unsigned",
            Rejection::Forged(_) => "forged",
            Rejection::Relabelled { .. } => "relabelled",
            Rejection::RolledBack => "rolled-back",
            Rejection::Tombstone => "tombstoned",
            Rejection::WrongKey(_) => "wrong-key",
        }
    }
}

/// A record of `byok.deks` or `byok.keks` that a signed value can carry.
pub trait SignedRecord: Sized + Clone {
    /// Which topic.
    const KIND: RecordKind;
    /// Reads the record from its (signed) text; `key` is its id from the Kafka key.
    fn parse(key: &str, text: &[u8]) -> Result<Self, String>;
    /// The DEK id or tenant the record names.
    fn id(&self) -> String;
    /// The time its signer's validity must cover.
    fn at(&self) -> Option<OffsetDateTime>;
    /// Whether two values state the same thing (a second writer's copy of a key record).
    fn same(&self, other: &Self) -> bool;
    /// The id the record's own text names (`dek`, or `tenant`), to tell a relabelled record.
    fn named(text: &[u8]) -> String {
        let j: serde_json::Value = serde_json::from_slice(text).unwrap_or_default();
        let member = match Self::KIND {
            RecordKind::Dek => "dek",
            RecordKind::Kek => "tenant",
        };
        j[member].as_str().unwrap_or_default().to_owned()
    }
}

impl SignedRecord for DekRecord {
    const KIND: RecordKind = RecordKind::Dek;
    fn parse(key: &str, text: &[u8]) -> Result<Self, String> {
        match RegistryEntry::decode(Some(key.as_bytes()), Some(text)) {
            Ok(RegistryEntry::Live(r)) => Ok(r),
            Ok(RegistryEntry::Destroyed(_)) => Err("a tombstone".into()),
            Err(e) => Err(e.to_string()),
        }
    }
    fn id(&self) -> String {
        self.dek.to_string()
    }
    fn at(&self) -> Option<OffsetDateTime> {
        Some(self.rewrapped.unwrap_or(self.created))
    }
    fn same(&self, other: &Self) -> bool {
        self.tenant == other.tenant && self.kek == other.kek && self.wrapped == other.wrapped
    }
}

impl SignedRecord for KekRecord {
    const KIND: RecordKind = RecordKind::Kek;
    fn parse(_key: &str, text: &[u8]) -> Result<Self, String> {
        KekRecord::from_json(text).map_err(|e| e.to_string())
    }
    fn id(&self) -> String {
        self.tenant.clone()
    }
    fn at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.seen, &Rfc3339).ok()
    }
    fn same(&self, other: &Self) -> bool {
        self.tenant == other.tenant && self.version.kid == other.version.kid
    }
}

/// Where a record was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// A record not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where it is.
    pub place: Place,
    /// The id its Kafka key names.
    pub key: String,
    /// Why.
    pub why: Rejection,
}

/// The current value of one id.
#[derive(Debug, Clone)]
pub struct Current<T> {
    /// The record.
    pub record: T,
    /// The exact value (restored byte for byte by `byok verify --restore-registry`).
    pub value: Vec<u8>,
    /// The hashes of the values that state it (a successor's `prev` names one of them).
    hashes: Vec<Hash>,
    /// The hashes of values it superseded (met again in the compacted topic, they are history
    /// unless one is the topic's last word on the id).
    older: Vec<Hash>,
}

/// The records of one compacted topic that verify: per id, the current value.
#[derive(Debug, Clone)]
pub struct Trusted<T> {
    current: HashMap<String, Current<T>>,
    /// Ids whose last record in the compacted topic so far is a superseded value.
    stale_tail: HashMap<String, Place>,
    /// The hash of each id's last record in the compacted topic (`None`: a tombstone).
    last_in_topic: HashMap<String, Option<Hash>>,
    /// Records not used.
    pub rejected: Vec<Rejected>,
    /// Unsigned records accepted below `audit.trust_unsigned_below`.
    pub trusted_unsigned: u64,
}

impl<T> Default for Trusted<T> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            stale_tail: HashMap::new(),
            last_in_topic: HashMap::new(),
            rejected: Vec::new(),
            trusted_unsigned: 0,
        }
    }
}

/// What a reader checks a record against.
#[allow(missing_debug_implementations)] // closures
pub struct Rules<'a, T> {
    /// Trusted session keys.
    pub signers: &'a Signers,
    /// Whether an unsigned record at this place predates signing (`audit.trust_unsigned_below`).
    pub unsigned_ok: &'a dyn Fn(&Place) -> bool,
    /// A check of the record itself (a key record's vault, key name and size).
    pub check: &'a dyn Fn(&T) -> Result<(), String>,
}

impl<T: SignedRecord> Trusted<T> {
    /// The current record of `id`.
    pub fn get(&self, id: &str) -> Option<&Current<T>> {
        self.current.get(id)
    }

    /// The ids whose compacted topic does not end on their current value (it is missing,
    /// tombstoned, or followed by a record readers refuse): what `--restore-registry` puts back.
    pub fn to_restore(&self) -> Vec<(&String, &Current<T>)> {
        let mut out: Vec<(&String, &Current<T>)> = self
            .current
            .iter()
            .filter(|(id, c)| {
                !matches!(self.last_in_topic.get(*id), Some(Some(h)) if c.hashes.contains(h))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(b.0));
        out
    }

    /// Every id and its current value.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Current<T>)> {
        self.current.iter()
    }

    /// The current records by id.
    pub fn into_records(self) -> HashMap<String, T> {
        self.current
            .into_iter()
            .map(|(k, c)| (k, c.record))
            .collect()
    }

    /// Applies one record read at `place` (a compacted topic's, or a copy in the audit topic
    /// keyed `dek:<id>` / `kek:<tenant>`, `copy` true). Returns why it is not used, if it is not
    /// (also kept in [`Trusted::rejected`]).
    pub fn apply(
        &mut self,
        rules: &Rules<'_, T>,
        place: Place,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        copy: bool,
    ) -> Option<Rejection> {
        let key_text = key.map(String::from_utf8_lossy).unwrap_or_default();
        let id = if copy {
            let prefix = T::KIND.copy_key("");
            key_text.strip_prefix(prefix.as_str()).unwrap_or("")
        } else {
            key_text.as_ref()
        }
        .to_owned();
        if !copy {
            self.last_in_topic.insert(id.clone(), value.map(hash));
        }
        let why = match self.accept(rules, &place, &id, value) {
            Ok(Accepted::Current) => {
                if !copy {
                    self.stale_tail.remove(&id);
                }
                return None;
            }
            Ok(Accepted::Superseded) => {
                if !copy {
                    self.stale_tail.insert(id, place);
                }
                return None;
            }
            Err(why) => why,
        };
        self.reject(place, id, why.clone());
        Some(why)
    }

    /// Ends the reading: an id whose compacted topic ends on a superseded value (an older
    /// value written again after its successor) is rolled back.
    pub fn finish(&mut self) {
        let mut stale: Vec<(String, Place)> = self.stale_tail.drain().collect();
        stale.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, place) in stale {
            self.reject(place, id, Rejection::RolledBack);
        }
    }

    fn reject(&mut self, place: Place, id: String, why: Rejection) {
        ::metrics::counter!("byok_registry_rejected_total", "kind" => T::KIND.t(), "reason" => why.kind())
            .increment(1);
        tracing::warn!(at = %place, key = %id, reason = %why, "registry or key record not used");
        self.rejected.push(Rejected {
            place,
            key: id,
            why,
        });
    }

    fn accept(
        &mut self,
        rules: &Rules<'_, T>,
        place: &Place,
        id: &str,
        value: Option<&[u8]>,
    ) -> Result<Accepted, Rejection> {
        let value = value.ok_or(Rejection::Tombstone)?;
        let h = hash(value);
        if let Some(c) = self.current.get(id) {
            if c.hashes.contains(&h) {
                return Ok(Accepted::Current); // the same value again (copy and compacted record)
            }
            if c.older.contains(&h) {
                return Ok(Accepted::Superseded);
            }
        }
        let parse = |text: &[u8]| T::parse(&T::named(text), text).map_err(Rejection::Unreadable);
        let (record, prev) = match split_signed(value, "sig") {
            Err(_) if (rules.unsigned_ok)(place) => {
                let r = parse(value)?;
                self.trusted_unsigned += 1;
                (r, None)
            }
            Err(_) => return Err(Rejection::Unsigned),
            Ok((text, _)) => {
                let j: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Rejection::Unreadable(e.to_string()))?;
                if j["t"].as_str() != Some(T::KIND.t()) {
                    return Err(Rejection::Unreadable(format!(
                        "its \"t\" is not {:?}",
                        T::KIND.t()
                    )));
                }
                let writer = j["writer"].as_str().unwrap_or_default();
                let prev = unb64_32(j["prev"].as_str().unwrap_or_default(), "prev")
                    .map_err(|e| Rejection::Unreadable(e.to_string()))?;
                let text = rules
                    .signers
                    .verify(writer, value, |s| parse(s.as_bytes()).ok()?.at())?;
                (parse(text.as_bytes())?, Some(prev))
            }
        };
        if record.id() != id {
            return Err(Rejection::Relabelled {
                named: record.id(),
                key: id.to_owned(),
            });
        }
        (rules.check)(&record).map_err(Rejection::WrongKey)?;
        match (self.current.get_mut(id), prev) {
            // another writer stating the same (two workers saw the same rotation)
            (Some(c), Some(_)) if c.record.same(&record) => {
                c.hashes.push(h);
                Ok(Accepted::Current)
            }
            (Some(c), Some(prev)) if !c.hashes.contains(&prev) => Err(Rejection::RolledBack),
            // a signed record superseding a value this reader never saw (compacted away before
            // copies were kept) is from a certified writer: nothing known is rolled back
            (old, _) => {
                let mut older = old.map(|c| c.older.clone()).unwrap_or_default();
                if let Some(c) = self.current.get(id) {
                    older.extend(&c.hashes);
                }
                self.current.insert(
                    id.to_owned(),
                    Current {
                        record,
                        value: value.to_vec(),
                        hashes: vec![h],
                        older,
                    },
                );
                Ok(Accepted::Current)
            }
        }
    }
}

/// How a record that is not rejected was taken.
enum Accepted {
    /// It is (or states) the current value.
    Current,
    /// A value its successor superseded, met again.
    Superseded,
}

/// The DEK registry as trusted: records by DEK id.
pub fn dek_records(t: Trusted<DekRecord>) -> HashMap<DekId, DekRecord> {
    t.into_records().into_values().map(|r| (r.dek, r)).collect()
}

#[cfg(test)]
mod tests;
