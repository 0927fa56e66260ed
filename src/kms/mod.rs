//! The KEK side: the tenant's RSA key in Azure Key Vault that wraps DEKs.
//!
//! [`KeyProvider`] is the small trait the worker uses: wrap a DEK (Key Vault `encrypt`,
//! RSA-OAEP-256, on a pinned key version), unwrap one given the `kek` the registry recorded
//! (`decrypt` on that version), and read the key's state. Never wrapKey/unwrapKey: the customer's
//! role does not allow them. [`azure`] implements it over Microsoft's SDK; [`cache`],
//! [`resilience`] and [`metered`] wrap any provider with the same trait (a DEK cache with
//! single-flight, a per-vault rate limit and retries, metrics).
//!
//! Key state is classified by Key Vault's `innererror.code` and Entra's AADSTS codes, never by
//! the coarse `Forbidden`: see [`classify`].
//!
//! It must never treat an outage as a revocation, or a revocation as an outage.

pub mod azure;
pub mod cache;
mod classify;
pub mod local;
pub mod metered;
pub mod receipts;
pub mod resilience;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use crate::dek::{DataKey, DekId};
use crate::envelope::headers::QuarantineReason;

pub use classify::classify;

/// A DEK wrapped under a KEK version.
#[derive(Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// The key version that wrapped it, as Key Vault returned it.
    pub kek: KekId,
    /// The RSA-OAEP-256 ciphertext.
    pub wrapped: Vec<u8>,
}

impl fmt::Debug for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wrapped")
            .field("kek", &self.kek)
            .field("wrapped_len", &self.wrapped.len())
            .finish()
    }
}

/// What `GET key` said about one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The version's `kid`.
    pub kid: KekId,
    /// Key type (`RSA`, `RSA-HSM`).
    pub kty: String,
    /// Modulus (big-endian), for local wrapping while the vault is away.
    pub n: Vec<u8>,
    /// Public exponent.
    pub e: Vec<u8>,
    /// Permitted operations.
    pub key_ops: Vec<String>,
    /// Enabled.
    pub enabled: bool,
    /// Not before (Unix seconds).
    pub nbf: Option<i64>,
    /// Expires (Unix seconds).
    pub exp: Option<i64>,
    /// `recoveryLevel`.
    pub recovery_level: Option<String>,
    /// `recoverableDays`.
    pub recoverable_days: Option<i32>,
}

impl VersionInfo {
    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        let lead = self.n.iter().take_while(|b| **b == 0).count();
        (self.n.len() - lead) * 8
    }
    /// Why the version cannot wrap and unwrap DEKs now, if it cannot.
    pub fn problem(&self, now: i64) -> Option<Revocation> {
        if !self.enabled {
            return Some(Revocation::KeyDisabled);
        }
        if self.nbf.is_some_and(|n| now < n) || self.exp.is_some_and(|e| now >= e) {
            return Some(Revocation::KeyExpired);
        }
        let has = |op: &str| self.key_ops.iter().any(|o| o.eq_ignore_ascii_case(op));
        if !self.kty.starts_with("RSA") || !has("encrypt") || !has("decrypt") {
            return Some(Revocation::AccessDenied);
        }
        None
    }
}

/// Why a key cannot be used: the tenant said no (docs/pipeline.md "Key states").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Revocation {
    /// Every usable version is disabled.
    KeyDisabled,
    /// Expired or not yet valid.
    KeyExpired,
    /// The key does not exist.
    KeyNotFound,
    /// The key is soft-deleted.
    KeyDeleted,
    /// The app may not use the key (role removed, key_ops, wrong tenant).
    AccessDenied,
    /// Entra ID refused the app's credential (AADSTS code).
    CredentialRejected(u32),
}

impl Revocation {
    /// The quarantine reason for records of a tenant whose key is revoked this way.
    pub fn quarantine_reason(self) -> QuarantineReason {
        match self {
            Revocation::KeyDisabled => QuarantineReason::KeyDisabled,
            Revocation::KeyExpired => QuarantineReason::KeyExpired,
            Revocation::KeyNotFound => QuarantineReason::KeyNotFound,
            Revocation::KeyDeleted => QuarantineReason::KeyDeleted,
            Revocation::AccessDenied | Revocation::CredentialRejected(_) => {
                QuarantineReason::AccessDenied
            }
        }
    }
}

impl fmt::Display for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Revocation::CredentialRejected(code) => write!(f, "credential rejected (AADSTS{code})"),
            other => f.write_str(other.quarantine_reason().as_str()),
        }
    }
}

/// Why the vault could not answer: an outage, not a decision (keep archiving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outage {
    /// 429 from the vault.
    Throttled,
    /// 5xx from the vault.
    ServerError,
    /// No connection, TLS failure, timeout.
    Network,
    /// Entra ID's token endpoint failed (5xx or unreachable).
    TokenEndpoint,
    /// Entra ID refused the certificate assertion's time window (AADSTS700024): this machine's
    /// clock is off by more than five minutes. Our fault, never the tenant's decision.
    ClockSkew,
    /// The vault refused the token (401): the token is renewed and the call retried.
    Unauthorized,
    /// An answer this version does not know how to read: treated as an outage, never as the
    /// tenant's decision.
    Unclassified,
}

impl fmt::Display for Outage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outage::Throttled => "throttled",
            Outage::ServerError => "vault server error",
            Outage::Network => "network",
            Outage::TokenEndpoint => "token endpoint unavailable",
            Outage::ClockSkew => "this machine's clock is off (AADSTS700024)",
            Outage::Unauthorized => "the vault refused the token (401)",
            Outage::Unclassified => "an answer not classified",
        })
    }
}

/// The state of a tenant's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// Wrap new DEKs under this version.
    Usable(VersionInfo),
    /// The version in use (pinned or newest) cannot be used, but another can: switch to it and
    /// rewrap.
    VersionUnusable {
        /// The version that can no longer be used.
        unusable: KekId,
        /// Why.
        why: Revocation,
        /// The version to use instead.
        usable: VersionInfo,
    },
    /// No usable version: the tenant revoked the key (or never gave access).
    Revoked {
        /// How.
        why: Revocation,
        /// What Key Vault or Entra said, for the operator.
        detail: String,
        /// The newest version seen, with its public key, if `GET key` still answers.
        last_seen: Option<VersionInfo>,
    },
    /// The vault or Entra could not be reached: keep archiving.
    Unavailable {
        /// What failed.
        why: Outage,
        /// Details for the operator.
        detail: String,
        /// When to ask again, if the service said.
        retry_after: Option<Duration>,
    },
}

/// A KEK operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KmsError {
    /// The tenant's key cannot be used: quarantine, do not retry.
    #[error("tenant {tenant}: key {key} cannot be used ({why}): {detail}")]
    Revoked {
        /// Tenant id.
        tenant: String,
        /// Vault key URL or kid.
        key: String,
        /// How it is revoked.
        why: Revocation,
        /// Key Vault's or Entra's words.
        detail: String,
    },
    /// The vault or Entra is unavailable: retry later, keep archiving.
    #[error("tenant {tenant}: key vault unavailable ({why}): {detail}")]
    Unavailable {
        /// Tenant id.
        tenant: String,
        /// What failed.
        why: Outage,
        /// Details.
        detail: String,
        /// When to try again, if the service said.
        retry_after: Option<Duration>,
    },
    /// Key Vault refused the input (for example a wrapped DEK that does not decrypt).
    #[error("tenant {tenant}: Key Vault rejected the request: {detail}")]
    Rejected {
        /// Tenant id.
        tenant: String,
        /// Details.
        detail: String,
    },
    /// The provider could not be set up (credential file, CA, URL).
    #[error("tenant {tenant}: {detail}")]
    Setup {
        /// Tenant id.
        tenant: String,
        /// What is wrong and how to fix it.
        detail: String,
    },
}

impl KmsError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, KmsError::Unavailable { .. })
    }
}

/// The KEK operations the worker needs, for one tenant's key.
pub trait KeyProvider: Send + Sync {
    /// The tenant this provider serves.
    fn tenant(&self) -> &str;

    /// Wraps a DEK under the key version to use now (Key Vault `encrypt`, RSA-OAEP-256).
    fn wrap(&self, dek: &DataKey) -> impl Future<Output = Result<Wrapped, KmsError>> + Send;

    /// Unwraps a DEK with the version the registry recorded (Key Vault `decrypt`).
    fn unwrap(
        &self,
        kek: &KekId,
        dek: DekId,
        wrapped: &[u8],
    ) -> impl Future<Output = Result<Arc<DataKey>, KmsError>> + Send;

    /// Reads the key's state (`GET key`).
    fn key_state(&self) -> impl Future<Output = KeyState> + Send;
}

/// The provider stack the worker uses for one tenant: a DEK cache over retries and a per-vault
/// rate limit over metrics over the Azure SDK.
pub type TenantKms =
    cache::CachingProvider<resilience::Resilient<metered::Metered<azure::AzureKeyProvider>>>;

/// A tenant's provider stack whose wraps are one attempt that never waits
/// ([`resilience::Resilient::wrap_once`]): for a caller that can wrap locally instead, so a
/// throttled or unreachable vault does not hold up its other work.
#[derive(Debug)]
pub struct WrapOnce<'a>(pub &'a TenantKms);

impl KeyProvider for WrapOnce<'_> {
    fn tenant(&self) -> &str {
        self.0.tenant()
    }

    async fn wrap(&self, dek: &DataKey) -> Result<Wrapped, KmsError> {
        self.0.inner().wrap_once(dek).await
    }

    async fn unwrap(
        &self,
        kek: &KekId,
        dek: DekId,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, KmsError> {
        self.0.unwrap(kek, dek, wrapped).await
    }

    async fn key_state(&self) -> KeyState {
        self.0.key_state().await
    }
}

/// Builds one provider stack (through [`crate::keyring::Keyring::new`], which shares the
/// limiters per vault host).
pub fn tenant_kms(
    tenant: &str,
    key: &crate::config::KeyVaultKey,
    keys: &crate::config::KeysConfig,
    limiters: &mut std::collections::HashMap<String, Arc<resilience::RateLimiter>>,
) -> Result<TenantKms, KmsError> {
    let http = azure::http_client(keys, key.ca_file.as_deref()).map_err(|e| KmsError::Setup {
        tenant: tenant.to_owned(),
        detail: e.to_string(),
    })?;
    let azure = azure::AzureKeyProvider::new(tenant, key, http, keys.check_interval)?;
    let host = key.vault_url.host_str().unwrap_or_default().to_owned();
    let limiter =
        Arc::clone(limiters.entry(host).or_insert_with(|| {
            Arc::new(resilience::RateLimiter::new(keys.vault_requests_per_10s))
        }));
    Ok(cache::CachingProvider::new(
        resilience::Resilient::new(
            metered::Metered::new(azure),
            limiter,
            resilience::RetryPolicy::default(),
        ),
        keys.unwrapped_cache_entries,
        keys.unwrapped_cache_ttl,
    ))
}

/// A Key Vault key identifier including its version, exactly as Key Vault returns it in `kid`:
/// `https://<vault>.vault.azure.net/keys/<name>/<version>`. The text is kept byte for byte (it is
/// an identity in the registry); the parts are read from it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId {
    text: String,
    /// Byte ranges of name and version inside `text`.
    name: (usize, usize),
    version: (usize, usize),
}

/// A `kek` that is not a versioned Key Vault key identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{text:?} is not a versioned Key Vault key id ({reason}); expected https://<vault>.vault.azure.net/keys/<name>/<version>"
)]
pub struct InvalidKekId {
    text: String,
    reason: &'static str,
}

impl KekId {
    /// Parses a versioned key identifier.
    pub fn parse(text: &str) -> Result<Self, InvalidKekId> {
        let bad = |reason| InvalidKekId {
            text: text.to_owned(),
            reason,
        };
        let url = Url::parse(text).map_err(|_| bad("not a URL"))?;
        if url.scheme() != "https" {
            return Err(bad("not https"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("has a query or fragment"));
        }
        // The path is /keys/<name>/<version>; the emulator may serve vaults under a path
        // prefix (/vaults/<vault>/keys/...), so the last three segments are what count.
        let path = url.path();
        let segs: Vec<&str> = path.split('/').collect();
        if segs.len() < 4 || segs[segs.len() - 3] != "keys" {
            return Err(bad("path is not /keys/<name>/<version>"));
        }
        let name = segs[segs.len() - 2];
        let version = segs[segs.len() - 1];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(bad("key name must be 1-127 letters, digits or dashes"));
        }
        if version.is_empty() || !version.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("no key version"));
        }
        let path_start = text
            .find(path)
            .ok_or_else(|| bad("path is not in canonical form"))?;
        let version_end = path_start + path.len();
        let version_start = version_end - version.len();
        let name_end = version_start - 1;
        let name_start = name_end - name.len();
        Ok(Self {
            text: text.to_owned(),
            name: (name_start, name_end),
            version: (version_start, version_end),
        })
    }

    /// The identifier text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
    /// The key name.
    pub fn name(&self) -> &str {
        &self.text[self.name.0..self.name.1]
    }
    /// The key version.
    pub fn version(&self) -> &str {
        &self.text[self.version.0..self.version.1]
    }
    /// The vault's name: the first label of its host (`acme-vault` in
    /// `https://acme-vault.vault.azure.net/keys/..`), the same for its Private Link host.
    pub fn vault_name(&self) -> &str {
        let rest = self.text.strip_prefix("https://").unwrap_or(&self.text);
        rest.split(['.', ':', '/']).next().unwrap_or_default()
    }
    /// Whether this key is the tenant's configured key: the same vault (by name, so that a
    /// Private Link URL matches) and the same key name.
    pub fn is_key(&self, vault_url: &str, key_name: &str) -> bool {
        let host = vault_url.strip_prefix("https://").unwrap_or(vault_url);
        let vault = host.split(['.', ':', '/']).next().unwrap_or_default();
        self.vault_name().eq_ignore_ascii_case(vault) && self.name().eq_ignore_ascii_case(key_name)
    }
}

impl fmt::Display for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for KekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KekId({})", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kek_is_the_tenants_key_only_by_vault_and_key_name() {
        let k =
            KekId::parse("https://globex-kv.vault.azure.net:8443/keys/archive-kek/0a1b").unwrap();
        assert!(k.is_key(
            "https://globex-kv.privatelink.vaultcore.azure.net:8443",
            "archive-kek"
        ));
        assert!(k.is_key("https://GLOBEX-KV.vault.azure.net", "Archive-Kek"));
        assert!(!k.is_key("https://globex-kv.vault.azure.net", "other-key"));
        assert!(!k.is_key("https://attacker.vault.azure.net", "archive-kek"));
        assert!(!k.is_key("https://globex-kv-evil.vault.azure.net", "archive-kek"));
    }

    #[test]
    fn parses_public_private_link_and_prefixed_ids() {
        let k = KekId::parse(
            "https://acme-vault.vault.azure.net/keys/byok-key/78deebed173b48e48f55abf87ed4cf71",
        )
        .unwrap();
        assert_eq!(k.name(), "byok-key");
        assert_eq!(k.version(), "78deebed173b48e48f55abf87ed4cf71");
        let p = KekId::parse("https://v.privatelink.vaultcore.azure.net/keys/k1/abc").unwrap();
        assert_eq!((p.name(), p.version()), ("k1", "abc"));
        let e = KekId::parse("https://127.0.0.1:8443/vaults/acme/keys/k/0011").unwrap();
        assert_eq!((e.name(), e.version()), ("k", "0011"));
    }

    #[test]
    fn refuses_unversioned_and_non_https() {
        for bad in [
            "https://v.vault.azure.net/keys/k",
            "https://v.vault.azure.net/keys/k/",
            "http://v.vault.azure.net/keys/k/1",
            "https://v.vault.azure.net/secrets/k/1",
            "https://v.vault.azure.net/keys/k/1?x=1",
            "not a url",
        ] {
            assert!(KekId::parse(bad).is_err(), "{bad}");
        }
    }
}
