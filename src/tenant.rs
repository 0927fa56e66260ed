//! Who a record belongs to: a tenant id (checked: safe in topic names and headers) or the
//! operator, whose quarantine key seals what has no usable tenant key.
//!
//! This module must never accept a tenant string without [`TenantId::parse`]: every id that
//! reaches a topic name, a header, a metric label or an AAD went through it.

use std::fmt;

/// The tenant of DEKs wrapped by the operator's quarantine key (docs/envelope-v1.md §3).
pub const QUARANTINE_TENANT: &str = "_quarantine";

/// A tenant id: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `_` (reserved for
/// `_quarantine`). Safe in topic names and headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Checks and wraps a tenant id.
    pub fn parse(s: &str) -> Result<Self, TenantIdError> {
        if s.is_empty() || s.len() > 64 {
            return Err(TenantIdError::Length { id: s.to_owned() });
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(TenantIdError::Character {
                id: s.to_owned(),
                found: c,
            });
        }
        if s.starts_with('_') {
            return Err(TenantIdError::Reserved { id: s.to_owned() });
        }
        Ok(Self(s.to_owned()))
    }
    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a string is not a tenant id; each message says the rule to follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TenantIdError {
    /// Empty or longer than 64 bytes.
    #[error("tenant id {id:?} must be 1 to 64 characters")]
    Length {
        /// The id as given.
        id: String,
    },
    /// A character outside the id alphabet.
    #[error("tenant id {id:?} has {found:?}; only letters, digits, '.', '_' and '-' are allowed")]
    Character {
        /// The id as given.
        id: String,
        /// The first character not allowed.
        found: char,
    },
    /// Starts with `_`, reserved for the operator.
    #[error(
        "tenant id {id:?} starts with '_', which is reserved (the operator's quarantine uses {QUARANTINE_TENANT:?})"
    )]
    Reserved {
        /// The id as given.
        id: String,
    },
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The AAD tenant of a record sealed under an operator DEK: `_quarantine.<tenant>` when the
/// record names a tenant (its `byok.tenant` header), so the claim is bound to the ciphertext and
/// a relabelled header makes the record fail to open; `_quarantine` when it names none. Records
/// written before 2026-12 used `_quarantine` whatever they claimed (see [`OperatorClaim`]).
pub fn operator_aad(claimed: Option<&str>) -> String {
    match claimed {
        Some(t) => format!("{QUARANTINE_TENANT}.{t}"),
        None => QUARANTINE_TENANT.to_owned(),
    }
}

/// What opening an operator-key record proved about the tenant it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OperatorClaim {
    /// The claim is bound in the AAD: the record was captured for this tenant.
    Bound(String),
    /// The record names no tenant.
    None,
    /// The record names a tenant, but was sealed before claims were bound (AAD `_quarantine`):
    /// the claim is unverified and must not be acted on.
    Unbound(String),
}

/// Whose DEK seals a record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A tenant with BYOK: its own key.
    Tenant(TenantId),
    /// The operator's quarantine key.
    Operator,
}

impl Owner {
    /// The owner of a registry record's `tenant` field.
    pub fn of(tenant: &str) -> Option<Self> {
        if tenant == QUARANTINE_TENANT {
            Some(Owner::Operator)
        } else {
            TenantId::parse(tenant).ok().map(Owner::Tenant)
        }
    }

    /// The registry's name of the owner.
    pub fn as_str(&self) -> &str {
        match self {
            Owner::Tenant(t) => t.as_str(),
            Owner::Operator => QUARANTINE_TENANT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_checked_and_the_operator_is_reserved() {
        assert!(TenantId::parse("acme-01.eu_west").is_ok());
        for bad in ["", "a b", "_quarantine", "x/y", "é", &"a".repeat(65)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Owner::of(QUARANTINE_TENANT), Some(Owner::Operator));
        assert_eq!(
            Owner::of("acme").map(|o| o.as_str().to_owned()),
            Some("acme".to_owned())
        );
        assert_eq!(Owner::of("../etc"), None);
    }
}
