//! Kafka record headers of archive and quarantine records (docs/envelope-v1.md §1 and §3).
//!
//! Headers are routing and audit metadata; they are not authenticated (the AAD binds the tenant
//! and the record key, not the headers). Types here encode to `(name, bytes)` pairs and decode
//! from them, so the Kafka client stays out of this module. Decoding is strict: a missing,
//! repeated or malformed `byok.*` header is an error naming the header.
//!
//! It must never be trusted for what the AAD covers: headers are claims, checked against the AAD
//! and the registry by readers.

use std::fmt;
use std::str::FromStr;

use crate::dek::DekId;

/// Header names.
pub mod names {
    /// Format version, `1`.
    pub const VERSION: &str = "byok.v";
    /// Tenant id, UTF-8.
    pub const TENANT: &str = "byok.tenant";
    /// DEK id, lowercase hyphenated UUID.
    pub const DEK: &str = "byok.dek";
    /// Provenance `<topic>/<partition>/<offset>`.
    pub const SRC: &str = "byok.src";
    /// Quarantine reason.
    pub const REASON: &str = "byok.reason";
    /// Quarantine detail for the operator.
    pub const DETAIL: &str = "byok.detail";
}

/// The value of `byok.v` for v1.
pub const VERSION_VALUE: &[u8] = b"1";
/// Longest `byok.detail` written, in bytes; longer text is cut at a character boundary.
pub const MAX_DETAIL_LEN: usize = 256;

/// Headers that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// A required header is absent.
    #[error("header {name} is missing")]
    Missing {
        /// Header name.
        name: &'static str,
    },
    /// A header appears more than once.
    #[error("header {name} appears more than once")]
    Repeated {
        /// Header name.
        name: &'static str,
    },
    /// A quarantine marker: nothing was sealed (the record was too large to store).
    #[error(
        "a {reason} marker: nothing was sealed (the original stays at its byok.src in the input topic until its retention)"
    )]
    Marker {
        /// Why.
        reason: QuarantineReason,
    },
    /// A header's value is not what it must be.
    #[error("header {name} is invalid: {reason}")]
    Invalid {
        /// Header name.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a captured record came from: `<source topic>/<partition>/<offset>`. Its identity for
/// de-duplication.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRef {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
}

impl SourceRef {
    /// A provenance.
    pub fn new(topic: impl Into<String>, partition: i32, offset: i64) -> Self {
        Self {
            topic: topic.into(),
            partition,
            offset,
        }
    }
}

impl SourceRef {
    /// The `byok.src` value for a record, without building a `SourceRef`.
    pub fn format(topic: &str, partition: i32, offset: i64) -> String {
        use fmt::Write;
        let mut s = String::with_capacity(topic.len() + 24);
        let _ = write!(s, "{topic}/{partition}/{offset}");
        s
    }
}

impl fmt::Display for SourceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Why a `byok.src` value is not `<topic>/<partition>/<offset>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadSourceRef {
    /// Fewer than three `/`-separated fields.
    #[error("expected <topic>/<partition>/<offset>, got {0:?}")]
    Shape(String),
    /// The topic is empty.
    #[error("empty topic in {0:?}")]
    EmptyTopic(String),
    /// The partition is not a non-negative integer.
    #[error("partition {0:?} is not a non-negative integer")]
    Partition(String),
    /// The offset is not a non-negative integer.
    #[error("offset {0:?} is not a non-negative integer")]
    Offset(String),
}

impl FromStr for SourceRef {
    type Err = BadSourceRef;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Kafka topic names cannot contain '/', so the last two fields are split from the right.
        let mut parts = s.rsplitn(3, '/');
        let (Some(offset), Some(partition), Some(topic)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(BadSourceRef::Shape(s.to_owned()));
        };
        if topic.is_empty() {
            return Err(BadSourceRef::EmptyTopic(s.to_owned()));
        }
        let partition: i32 = partition
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| BadSourceRef::Partition(partition.to_owned()))?;
        let offset: i64 = offset
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| BadSourceRef::Offset(offset.to_owned()))?;
        Ok(Self::new(topic, partition, offset))
    }
}

/// Headers of an archive record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveHeaders {
    /// Tenant id.
    pub tenant: String,
    /// DEK that sealed the value.
    pub dek: DekId,
    /// Provenance.
    pub src: SourceRef,
}

impl ArchiveHeaders {
    /// The headers as `(name, value)` pairs, in the order of docs/envelope-v1.md.
    pub fn to_pairs(&self) -> [(&'static str, Vec<u8>); 4] {
        [
            (names::VERSION, VERSION_VALUE.to_vec()),
            (names::TENANT, self.tenant.as_bytes().to_vec()),
            (names::DEK, self.dek.to_string().into_bytes()),
            (names::SRC, self.src.to_string().into_bytes()),
        ]
    }

    /// The same pairs as [`ArchiveHeaders::to_pairs`] from the parts a batch shares: the
    /// tenant and the DEK id (`DekId::to_string`) as bytes reused for every record under them,
    /// and the record's `byok.src` (`SourceRef::format`).
    pub fn shared_pairs(
        tenant: &bytes::Bytes,
        dek: &bytes::Bytes,
        src: String,
    ) -> [(&'static str, bytes::Bytes); 4] {
        [
            (names::VERSION, bytes::Bytes::from_static(VERSION_VALUE)),
            (names::TENANT, tenant.clone()),
            (names::DEK, dek.clone()),
            (names::SRC, bytes::Bytes::from(src)),
        ]
    }

    /// Decodes from a record's headers (other headers are ignored).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, HeaderError> {
        let h = Collected::from(pairs)?;
        h.check_version()?;
        Ok(Self {
            tenant: h.required_str(names::TENANT, h.tenant)?.to_owned(),
            dek: h.dek()?,
            src: h.src()?,
        })
    }
}

/// Why a record is in the quarantine (`byok.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum QuarantineReason {
    /// The tenant's key (or every version of it) is disabled.
    KeyDisabled,
    /// The tenant's key is past its expiry (or not yet active).
    KeyExpired,
    /// The key does not exist in the vault.
    KeyNotFound,
    /// The key was deleted (soft delete; it may be recovered).
    KeyDeleted,
    /// The app is not allowed to use the key (role removed, credential rejected).
    AccessDenied,
    /// The vault could not be reached and no public key was ever seen for the tenant.
    VaultUnavailable,
    /// The tenant id is not configured.
    UnknownTenant,
    /// The tenant is configured with BYOK off.
    ByokDisabled,
    /// No tenant could be read from the record.
    Malformed,
    /// The broker refused the sealed record as too large: the quarantine record is a marker
    /// with no value and no DEK (the original stays in the input topic until its retention).
    TooLarge,
    /// The archive topic does not exist (the record under its tenant's DEK, as it would have
    /// been archived).
    TopicMissing,
    /// The worker may not write the archive topic (the record under its tenant's DEK).
    NotAuthorized,
    /// The tenant's key is revoked and no worker ever saw its public key: after waiting
    /// `keys.unknown_key_hold`, sealed under the operator's key as a last resort.
    KeyUnknown,
}

impl QuarantineReason {
    /// Every reason, in the order of docs/envelope-v1.md.
    pub const ALL: [QuarantineReason; 13] = [
        Self::KeyDisabled,
        Self::KeyExpired,
        Self::KeyNotFound,
        Self::KeyDeleted,
        Self::AccessDenied,
        Self::VaultUnavailable,
        Self::UnknownTenant,
        Self::ByokDisabled,
        Self::Malformed,
        Self::TooLarge,
        Self::TopicMissing,
        Self::NotAuthorized,
        Self::KeyUnknown,
    ];

    /// The header text.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::KeyDisabled => "key-disabled",
            Self::KeyExpired => "key-expired",
            Self::KeyNotFound => "key-not-found",
            Self::KeyDeleted => "key-deleted",
            Self::AccessDenied => "access-denied",
            Self::VaultUnavailable => "vault-unavailable",
            Self::UnknownTenant => "unknown-tenant",
            Self::ByokDisabled => "byok-disabled",
            Self::Malformed => "malformed",
            Self::TooLarge => "too-large",
            Self::TopicMissing => "topic-missing",
            Self::NotAuthorized => "not-authorized",
            Self::KeyUnknown => "key-unknown",
        }
    }

    /// Whether the record is sealed under the tenant's own key (wrapped locally with its public
    /// key, or through Key Vault for a record the archive topic refused) rather than the
    /// operator's quarantine key (docs/envelope-v1.md §3).
    pub const fn sealed_for_tenant(self) -> bool {
        matches!(
            self,
            Self::KeyDisabled
                | Self::KeyExpired
                | Self::KeyNotFound
                | Self::KeyDeleted
                | Self::AccessDenied
                | Self::TopicMissing
                | Self::NotAuthorized
        )
    }

    /// Whether the record is a marker with nothing sealed in it (`too-large`).
    pub const fn is_marker(self) -> bool {
        matches!(self, Self::TooLarge)
    }
}

impl fmt::Display for QuarantineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A quarantine reason this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reason {found:?}; expected one of {expected}")]
pub struct UnknownReason {
    /// The value found.
    pub found: String,
    /// The reasons known.
    pub expected: String,
}

impl FromStr for QuarantineReason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason {
                found: s.to_owned(),
                expected: Self::ALL.map(|r| r.as_str()).join(", "),
            })
    }
}

/// Headers of a quarantine record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineHeaders {
    /// Why it is here.
    pub reason: QuarantineReason,
    /// The tenant, when one could be read.
    pub tenant: Option<String>,
    /// Provenance.
    pub src: SourceRef,
    /// Short text for the operator; see [`QuarantineHeaders::new`].
    pub detail: String,
    /// DEK that sealed the value.
    pub dek: DekId,
}

impl QuarantineHeaders {
    /// Quarantine headers. `detail` is for the operator and must never hold plaintext, key
    /// material or secrets; control characters are replaced and it is cut to
    /// [`MAX_DETAIL_LEN`] bytes.
    pub fn new(
        reason: QuarantineReason,
        tenant: Option<String>,
        src: SourceRef,
        detail: &str,
        dek: DekId,
    ) -> Self {
        Self {
            reason,
            tenant,
            src,
            detail: clean_detail(detail),
            dek,
        }
    }

    /// The headers as `(name, value)` pairs.
    pub fn to_pairs(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut v = Vec::with_capacity(6);
        v.push((names::VERSION, VERSION_VALUE.to_vec()));
        v.push((names::REASON, self.reason.as_str().as_bytes().to_vec()));
        if let Some(t) = &self.tenant {
            v.push((names::TENANT, t.as_bytes().to_vec()));
        }
        v.push((names::SRC, self.src.to_string().into_bytes()));
        v.push((names::DETAIL, self.detail.as_bytes().to_vec()));
        v.push((names::DEK, self.dek.to_string().into_bytes()));
        v
    }

    /// Decodes from a record's headers (other headers are ignored).
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, HeaderError> {
        let h = Collected::from(pairs)?;
        h.check_version()?;
        let reason =
            h.required_str(names::REASON, h.reason)?
                .parse()
                .map_err(|e: UnknownReason| HeaderError::Invalid {
                    name: names::REASON,
                    reason: e.to_string(),
                })?;
        let reason: QuarantineReason = reason;
        if reason.is_marker() {
            return Err(HeaderError::Marker { reason });
        }
        let tenant = match h.tenant {
            Some(_) => Some(h.required_str(names::TENANT, h.tenant)?.to_owned()),
            None => None,
        };
        let detail = match h.detail {
            Some(_) => h.required_str(names::DETAIL, h.detail)?.to_owned(),
            None => String::new(),
        };
        Ok(Self {
            reason,
            tenant,
            src: h.src()?,
            detail,
            dek: h.dek()?,
        })
    }
}

fn clean_detail(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len().min(MAX_DETAIL_LEN));
    for c in detail.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if out.len() + c.len_utf8() > MAX_DETAIL_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// The `byok.*` headers of one record, each seen at most once.
#[derive(Default)]
struct Collected<'a> {
    version: Option<&'a [u8]>,
    tenant: Option<&'a [u8]>,
    dek: Option<&'a [u8]>,
    src: Option<&'a [u8]>,
    reason: Option<&'a [u8]>,
    detail: Option<&'a [u8]>,
}

impl<'a> Collected<'a> {
    fn from(
        pairs: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Result<Self, HeaderError> {
        let mut c = Collected::default();
        for (name, value) in pairs {
            let (slot, name) = match name {
                names::VERSION => (&mut c.version, names::VERSION),
                names::TENANT => (&mut c.tenant, names::TENANT),
                names::DEK => (&mut c.dek, names::DEK),
                names::SRC => (&mut c.src, names::SRC),
                names::REASON => (&mut c.reason, names::REASON),
                names::DETAIL => (&mut c.detail, names::DETAIL),
                _ => continue,
            };
            if slot.is_some() {
                return Err(HeaderError::Repeated { name });
            }
            *slot = Some(value.unwrap_or_default());
        }
        Ok(c)
    }

    fn check_version(&self) -> Result<(), HeaderError> {
        match self.version {
            None => Err(HeaderError::Missing {
                name: names::VERSION,
            }),
            Some(VERSION_VALUE) => Ok(()),
            Some(other) => Err(HeaderError::Invalid {
                name: names::VERSION,
                reason: format!(
                    "{:?} is not a version this reader knows (1)",
                    String::from_utf8_lossy(other)
                ),
            }),
        }
    }

    fn required_str(
        &self,
        name: &'static str,
        value: Option<&'a [u8]>,
    ) -> Result<&'a str, HeaderError> {
        let v = value.ok_or(HeaderError::Missing { name })?;
        std::str::from_utf8(v).map_err(|_| HeaderError::Invalid {
            name,
            reason: "not UTF-8".into(),
        })
    }

    fn dek(&self) -> Result<DekId, HeaderError> {
        self.required_str(names::DEK, self.dek)?
            .parse()
            .map_err(|e: crate::dek::InvalidDekId| HeaderError::Invalid {
                name: names::DEK,
                reason: e.to_string(),
            })
    }

    fn src(&self) -> Result<SourceRef, HeaderError> {
        self.required_str(names::SRC, self.src)?
            .parse()
            .map_err(|e: BadSourceRef| HeaderError::Invalid {
                name: names::SRC,
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod shared_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn shared_pairs_equal_to_pairs() {
        let h = ArchiveHeaders {
            tenant: "acme".into(),
            dek: crate::dek::DekId::new_v7(),
            src: SourceRef::new("capture.messages", 3, 1234),
        };
        let shared = ArchiveHeaders::shared_pairs(
            &bytes::Bytes::from("acme"),
            &bytes::Bytes::from(h.dek.to_string()),
            SourceRef::format("capture.messages", 3, 1234),
        );
        let a: Vec<(&str, Vec<u8>)> = h.to_pairs().to_vec();
        let b: Vec<(&str, Vec<u8>)> = shared.iter().map(|(k, v)| (*k, v.to_vec())).collect();
        assert_eq!(a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn borrowed<'a>(pairs: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, Option<&'a [u8]>)> {
        pairs
            .iter()
            .map(|(n, v)| (*n, Some(v.as_slice())))
            .collect()
    }

    #[test]
    fn archive_headers_round_trip() {
        let h = ArchiveHeaders {
            tenant: "tenant-é".into(),
            dek: DekId::new_v7(),
            src: SourceRef::new("capture.messages", 3, 1234),
        };
        let pairs = h.to_pairs();
        assert_eq!(pairs[0], ("byok.v", b"1".to_vec()));
        assert_eq!(pairs[3].1, b"capture.messages/3/1234");
        let mut with_foreign = borrowed(&pairs);
        with_foreign.push(("tenant-id", Some(b"x")));
        assert_eq!(ArchiveHeaders::from_pairs(with_foreign).unwrap(), h);
    }

    #[test]
    fn archive_headers_errors_name_the_header() {
        let h = ArchiveHeaders {
            tenant: "acme".into(),
            dek: DekId::new_v7(),
            src: SourceRef::new("t", 0, 0),
        };
        let pairs = h.to_pairs();
        let missing: Vec<_> = borrowed(&pairs)
            .into_iter()
            .filter(|(n, _)| *n != names::DEK)
            .collect();
        assert_eq!(
            ArchiveHeaders::from_pairs(missing),
            Err(HeaderError::Missing { name: names::DEK })
        );
        let mut twice = borrowed(&pairs);
        twice.push((names::SRC, Some(b"t/0/1")));
        assert_eq!(
            ArchiveHeaders::from_pairs(twice),
            Err(HeaderError::Repeated { name: names::SRC })
        );
        let mut v2 = borrowed(&pairs);
        v2[0].1 = Some(b"2");
        assert!(matches!(
            ArchiveHeaders::from_pairs(v2),
            Err(HeaderError::Invalid {
                name: names::VERSION,
                ..
            })
        ));
    }

    #[test]
    fn source_ref_parses_strictly() {
        let s: SourceRef = "capture.messages/5/99".parse().unwrap();
        assert_eq!(s, SourceRef::new("capture.messages", 5, 99));
        for bad in ["", "a/b", "/1/2", "t/-1/2", "t/1/x", "t/1/-5", "t//2"] {
            assert!(bad.parse::<SourceRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn quarantine_headers_round_trip_with_and_without_tenant() {
        for tenant in [Some("acme".to_owned()), None] {
            let q = QuarantineHeaders::new(
                QuarantineReason::UnknownTenant,
                tenant,
                SourceRef::new("capture", 0, 7),
                "tenant \"zzz\" is not configured",
                DekId::new_v7(),
            );
            let pairs = q.to_pairs();
            assert_eq!(QuarantineHeaders::from_pairs(borrowed(&pairs)).unwrap(), q);
        }
    }

    #[test]
    fn every_reason_round_trips_and_unknown_is_refused() {
        for r in QuarantineReason::ALL {
            assert_eq!(r.as_str().parse::<QuarantineReason>().unwrap(), r);
        }
        assert!("key-gone".parse::<QuarantineReason>().is_err());
        assert!(QuarantineReason::KeyDeleted.sealed_for_tenant());
        assert!(!QuarantineReason::UnknownTenant.sealed_for_tenant());
        assert!(!QuarantineReason::VaultUnavailable.sealed_for_tenant());
    }

    #[test]
    fn detail_is_cleaned_and_bounded() {
        let q = QuarantineHeaders::new(
            QuarantineReason::Malformed,
            None,
            SourceRef::new("t", 0, 0),
            &format!("line1\nline2\u{0}{}", "é".repeat(300)),
            DekId::new_v7(),
        );
        assert!(q.detail.starts_with("line1 line2 "));
        assert!(q.detail.len() <= MAX_DETAIL_LEN);
        assert!(!q.detail.chars().any(char::is_control));
    }
}
