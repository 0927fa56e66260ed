//! Audit log v1 (docs/audit-v1.md): what makes the archive provable. Every batch's outputs are
//! leaves of a signed checkpoint in `byok.audit`; per input partition the checkpoints form a
//! hash chain; each writer signs with an Ed25519 session key certified by the operator's signing
//! key in Key Vault.
//!
//! - [`codec`]: canonical base64url, times, signed values, no repeated members.
//! - [`merkle`]: leaf data and hashes, RFC 6962 roots, chain links.
//! - [`leaves`]: the leaf of a produced record, and leaves waiting for a checkpoint.
//! - [`records`]: checkpoints, signer statements, a writer's session and chain.
//!
//! This module is pure: it must never do I/O. The bytes it hashes and signs are the page's,
//! exactly; a change of any byte is a new version.

pub mod codec;
pub mod leaves;
pub mod merkle;
pub mod records;

/// An audit record or value is not what audit log v1 allows. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A field's encoding is not the canonical one.
    #[error("{field}: {reason}")]
    Encoding {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// The signed value's shape is not §0's.
    #[error("not a signed value of audit log v1: {reason}")]
    Signed {
        /// What is wrong.
        reason: &'static str,
    },
    /// Not JSON, a member repeated, or a field missing or unknown.
    #[error("JSON: {reason}")]
    Json {
        /// The parser's words.
        reason: String,
    },
    /// The signature does not verify under the key.
    #[error("the signature does not verify")]
    BadSignature,
    /// Another kind of record than the one expected.
    #[error("not a {expected} record of version 1")]
    Kind {
        /// The kind expected.
        expected: &'static str,
    },
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
}
