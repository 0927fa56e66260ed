//! The emulator's world: Entra ID tenants with app registrations (client secrets, uploaded
//! certificates), and vaults with RSA keys (versions, attributes, soft delete), role assignments
//! and request budgets. Plain data behind one lock; RSA work is done outside the lock on cloned
//! `Arc` keys. Serializable, so a restart with `--state FILE` keeps keys, apps and roles.
//!
//! It must never do RSA work or I/O while holding its lock.

use super::error::EmuError;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha1::Digest;

/// Seconds since the Unix epoch.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A fresh key version id: 32 lowercase hex digits, as Key Vault makes them.
pub fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The whole emulated world.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct World {
    /// Entra ID tenants by id (GUID, lowercase).
    pub tenants: BTreeMap<String, EntraTenant>,
    /// Vaults by name (the first label of `<name>.vault.azure.net`).
    pub vaults: BTreeMap<String, Vault>,
    /// HMAC key of the access tokens this emulator issues (base64).
    pub token_key: String,
}

/// An Entra ID tenant (directory).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EntraTenant {
    /// Display name.
    pub name: String,
    /// App registrations by client id (GUID, lowercase).
    pub apps: BTreeMap<String, App>,
}

/// An app registration with its credentials.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct App {
    /// Display name, e.g. "KeyVaultAccessApp".
    pub name: String,
    /// Client secrets ("Certificates & secrets > Client secrets").
    pub secrets: Vec<String>,
    /// Uploaded certificates ("Certificates & secrets > Certificates").
    pub certificates: Vec<UploadedCert>,
}

/// A certificate uploaded to an app registration: only its public part.
#[derive(Clone, Serialize, Deserialize)]
pub struct UploadedCert {
    /// DER of the X.509 certificate, base64.
    pub der_b64: String,
    /// SHA-1 thumbprint, uppercase hex as the portal shows it.
    pub sha1: String,
    /// SHA-256 thumbprint, uppercase hex.
    pub sha256: String,
    /// Subject, for listings.
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    #[serde(skip)]
    public: Option<Arc<RsaPublicKey>>,
}

impl std::fmt::Debug for UploadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadedCert")
            .field("sha1", &self.sha1)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl UploadedCert {
    /// Reads a certificate (PEM or DER). Only RSA certificates are accepted, as by Entra ID for
    /// client assertions signed RS256/PS256.
    pub fn parse(bytes: &[u8]) -> Result<Self, EmuError> {
        let bad = |m: String| EmuError::Certificate(m);
        use x509_cert::der::{Decode, Encode};
        let der = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            let mut reader = bytes;
            rustls_pemfile::certs(&mut reader)
                .next()
                .ok_or_else(|| bad("the PEM has no CERTIFICATE block".into()))?
                .map_err(|e| bad(format!("certificate PEM cannot be read: {e}")))?
                .to_vec()
        } else {
            bytes.to_vec()
        };
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| bad(e.to_string()))?;
        RsaPublicKey::from_public_key_der(&spki)
            .map_err(|_| bad("the certificate's key is not RSA".into()))?;
        let not_after = cert
            .tbs_certificate
            .validity
            .not_after
            .to_unix_duration()
            .as_secs() as i64;
        let mut c = Self {
            der_b64: STANDARD.encode(&der),
            sha1: hex::encode_upper(sha1::Sha1::digest(&der)),
            sha256: hex::encode_upper(sha2::Sha256::digest(&der)),
            subject: cert.tbs_certificate.subject.to_string(),
            not_after,
            public: None,
        };
        c.public_key()?;
        Ok(c)
    }

    /// The certificate's RSA public key.
    pub fn public_key(&mut self) -> Result<Arc<RsaPublicKey>, EmuError> {
        use x509_cert::der::{Decode, Encode};
        if let Some(k) = &self.public {
            return Ok(Arc::clone(k));
        }
        let m = |e: &dyn std::fmt::Display| EmuError::Material(format!("certificate: {e}"));
        let der = STANDARD.decode(&self.der_b64).map_err(|e| m(&e))?;
        let cert = x509_cert::Certificate::from_der(&der).map_err(|e| m(&e))?;
        let spki = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| m(&e))?;
        let key = Arc::new(RsaPublicKey::from_public_key_der(&spki).map_err(|e| m(&e))?);
        self.public = Some(Arc::clone(&key));
        Ok(key)
    }

    /// SHA-1 thumbprint bytes.
    pub fn sha1_bytes(&self) -> Vec<u8> {
        hex::decode(&self.sha1).unwrap_or_default()
    }
    /// SHA-256 thumbprint bytes.
    pub fn sha256_bytes(&self) -> Vec<u8> {
        hex::decode(&self.sha256).unwrap_or_default()
    }
}

/// A Key Vault.
#[derive(Debug, Serialize, Deserialize)]
pub struct Vault {
    /// Entra tenant the vault belongs to (its 401 challenge names it).
    pub tenant: String,
    /// Soft-delete retention in days (7-90).
    pub soft_delete_days: u32,
    /// Purge protection: a deleted key cannot be purged before its retention ends.
    pub purge_protection: bool,
    /// Whether `encrypt` on a disabled key is refused. The real service has been seen to allow
    /// it (encrypt only needs the public key), so the default is to allow.
    pub refuse_encrypt_when_disabled: bool,
    /// Request budget per 10 s, in RSA-2048 operation units (RSA-3072 costs 4, RSA-4096 8).
    pub budget_per_10s: u32,
    /// Keys by name.
    pub keys: BTreeMap<String, Key>,
    /// Soft-deleted keys by name.
    pub deleted: BTreeMap<String, DeletedKey>,
    /// Role assignments.
    pub roles: Vec<RoleAssignment>,
}

/// A key and its versions, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Key {
    /// Versions, oldest first; the last is the current one.
    pub versions: Vec<KeyVersion>,
}

impl Key {
    /// The current (newest) version.
    pub fn current(&self) -> Option<&KeyVersion> {
        self.versions.last()
    }
    /// A version by id, or the current one for `None`/empty.
    pub fn version(&self, v: Option<&str>) -> Option<&KeyVersion> {
        match v {
            None | Some("") => self.current(),
            Some(v) => self
                .versions
                .iter()
                .find(|k| k.version.eq_ignore_ascii_case(v)),
        }
    }
    /// Mutable version by id, or the current one.
    pub fn version_mut(&mut self, v: Option<&str>) -> Option<&mut KeyVersion> {
        match v {
            None | Some("") => self.versions.last_mut(),
            Some(v) => self
                .versions
                .iter_mut()
                .find(|k| k.version.eq_ignore_ascii_case(v)),
        }
    }
}

/// A soft-deleted key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedKey {
    /// The key as it was.
    pub key: Key,
    /// When it was deleted.
    pub deleted: i64,
    /// When it may be (or will be) purged.
    pub scheduled_purge: i64,
}

/// One version of an RSA key.
#[derive(Clone, Serialize, Deserialize)]
pub struct KeyVersion {
    /// 32 hex digits.
    pub version: String,
    /// PKCS#8 DER of the private key, base64.
    pub pkcs8_b64: String,
    /// Modulus size in bits.
    pub bits: usize,
    /// Permitted operations.
    pub key_ops: Vec<String>,
    /// Attributes.
    pub attributes: Attributes,
    /// Tags.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(skip)]
    private: Option<Arc<RsaPrivateKey>>,
}

impl std::fmt::Debug for KeyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVersion")
            .field("version", &self.version)
            .field("bits", &self.bits)
            .field("key_ops", &self.key_ops)
            .field("attributes", &self.attributes)
            .finish_non_exhaustive()
    }
}

/// Key attributes (Unix seconds).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attributes {
    /// Enabled.
    pub enabled: bool,
    /// Not before.
    pub nbf: Option<i64>,
    /// Expires.
    pub exp: Option<i64>,
    /// Created.
    pub created: i64,
    /// Updated.
    pub updated: i64,
}

/// Every operation Key Vault allows in `key_ops` for RSA keys.
pub const ALL_KEY_OPS: [&str; 6] = [
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
];

impl KeyVersion {
    /// A version from a private key.
    pub fn from_private(
        key: RsaPrivateKey,
        key_ops: Vec<String>,
        attributes: Attributes,
    ) -> Result<Self, EmuError> {
        let der = key
            .to_pkcs8_der()
            .map_err(|e| EmuError::Material(format!("private key: {e}")))?;
        Ok(Self {
            version: new_version(),
            pkcs8_b64: STANDARD.encode(der.as_bytes()),
            bits: key.size() * 8,
            key_ops,
            attributes,
            tags: BTreeMap::new(),
            private: Some(Arc::new(key)),
        })
    }

    /// The private key (decoded once, then shared).
    pub fn private(&mut self) -> Result<Arc<RsaPrivateKey>, EmuError> {
        if let Some(k) = &self.private {
            return Ok(Arc::clone(k));
        }
        let m = |e: &dyn std::fmt::Display| EmuError::Material(format!("private key: {e}"));
        let der = STANDARD.decode(&self.pkcs8_b64).map_err(|e| m(&e))?;
        let key = Arc::new(RsaPrivateKey::from_pkcs8_der(&der).map_err(|e| m(&e))?);
        self.private = Some(Arc::clone(&key));
        Ok(key)
    }

    /// The private key if already decoded (always, after [`World::warm`]).
    pub fn private_cached(&self) -> Option<Arc<RsaPrivateKey>> {
        self.private.clone()
    }

    /// The JWK of the public key, as Key Vault returns it.
    pub fn jwk(&self, kid: &str) -> serde_json::Value {
        let (n, e) = match &self.private {
            Some(k) => (k.n().to_bytes_be(), k.e().to_bytes_be()),
            None => (Vec::new(), Vec::new()),
        };
        serde_json::json!({
            "kid": kid,
            "kty": "RSA",
            "key_ops": self.key_ops,
            "n": URL_SAFE_NO_PAD.encode(n),
            "e": URL_SAFE_NO_PAD.encode(e),
        })
    }

    /// Whether `now` is inside nbf/exp.
    pub fn in_date(&self, now: i64) -> Result<(), &'static str> {
        if self.attributes.nbf.is_some_and(|nbf| now < nbf) {
            return Err("KeyNotYetValid");
        }
        if self.attributes.exp.is_some_and(|exp| now >= exp) {
            return Err("KeyExpired");
        }
        Ok(())
    }

    /// Budget units one crypto operation with this key costs.
    pub fn cost(&self) -> u32 {
        match self.bits {
            0..=2048 => 1,
            2049..=3072 => 4,
            _ => 8,
        }
    }
}

/// Builds a private key from a JWK with private parts (Key Vault import).
pub fn private_from_jwk(jwk: &serde_json::Value) -> Result<RsaPrivateKey, EmuError> {
    let field = |name: &str| -> Result<BigUint, EmuError> {
        let s = jwk
            .get(name)
            .and_then(|v| v.as_str())
            .ok_or_else(|| EmuError::Jwk(format!("the JWK has no '{name}'")))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(s))
            .map_err(|_| EmuError::Jwk(format!("JWK '{name}' is not base64url")))?;
        Ok(BigUint::from_bytes_be(&bytes))
    };
    let kty = jwk.get("kty").and_then(|v| v.as_str()).unwrap_or_default();
    if !matches!(kty, "RSA" | "RSA-HSM") {
        return Err(EmuError::Jwk(format!(
            "kty {kty:?} is not supported by this emulator (RSA only)"
        )));
    }
    let key = RsaPrivateKey::from_components(
        field("n")?,
        field("e")?,
        field("d")?,
        vec![field("p")?, field("q")?],
    )
    .map_err(|e| EmuError::Jwk(format!("the RSA key is not valid: {e}")))?;
    key.validate()
        .map_err(|e| EmuError::Jwk(format!("the RSA key is not valid: {e}")))?;
    Ok(key)
}

/// Data actions of Key Vault's RBAC for keys.
pub mod actions {
    /// Read key metadata and public part; list.
    pub const READ: &str = "Microsoft.KeyVault/vaults/keys/read";
    /// Create a key.
    pub const CREATE: &str = "Microsoft.KeyVault/vaults/keys/create/action";
    /// Import a key.
    pub const IMPORT: &str = "Microsoft.KeyVault/vaults/keys/import/action";
    /// Update attributes.
    pub const UPDATE: &str = "Microsoft.KeyVault/vaults/keys/update/action";
    /// Delete a key.
    pub const DELETE: &str = "Microsoft.KeyVault/vaults/keys/delete";
    /// Rotate a key.
    pub const ROTATE: &str = "Microsoft.KeyVault/vaults/keys/rotate/action";
    /// Encrypt.
    pub const ENCRYPT: &str = "Microsoft.KeyVault/vaults/keys/encrypt/action";
    /// Decrypt.
    pub const DECRYPT: &str = "Microsoft.KeyVault/vaults/keys/decrypt/action";
    /// Sign a digest.
    pub const SIGN: &str = "Microsoft.KeyVault/vaults/keys/sign/action";
    /// Verify a signature.
    pub const VERIFY: &str = "Microsoft.KeyVault/vaults/keys/verify/action";
    /// Wrap a key.
    pub const WRAP: &str = "Microsoft.KeyVault/vaults/keys/wrap/action";
    /// Unwrap a key.
    pub const UNWRAP: &str = "Microsoft.KeyVault/vaults/keys/unwrap/action";
    /// Read deleted keys.
    pub const DELETED_READ: &str = "Microsoft.KeyVault/vaults/deletedKeys/read";
    /// Recover a deleted key.
    pub const RECOVER: &str = "Microsoft.KeyVault/vaults/deletedKeys/recover/action";
    /// Purge a deleted key.
    pub const PURGE: &str = "Microsoft.KeyVault/vaults/deletedKeys/delete";
}

/// A role: a named preset or a custom list of data actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Role {
    /// A preset by name (see [`Role::data_actions`]).
    Preset(String),
    /// A custom role's data actions.
    Custom {
        /// Its name.
        name: String,
        /// Its data actions.
        data_actions: Vec<String>,
    },
}

/// Preset role names.
pub const PRESETS: [&str; 5] = [
    "byok",
    "Key Vault Crypto User",
    "Key Vault Crypto Officer",
    "Key Vault Administrator",
    "Key Vault Reader",
];

impl Role {
    /// The data actions the role grants, or an error naming the presets.
    pub fn data_actions(&self) -> Result<Vec<&str>, EmuError> {
        use actions::*;
        Ok(match self {
            Role::Custom { data_actions, .. } => data_actions.iter().map(String::as_str).collect(),
            Role::Preset(name) => match name.as_str() {
                // The setup guide's custom role.
                "byok" => vec![READ, ENCRYPT, DECRYPT],
                "Key Vault Crypto User" => {
                    vec![READ, UPDATE, ENCRYPT, DECRYPT, SIGN, VERIFY, WRAP, UNWRAP]
                }
                "Key Vault Crypto Officer" | "Key Vault Administrator" => vec![
                    READ,
                    CREATE,
                    IMPORT,
                    UPDATE,
                    DELETE,
                    ROTATE,
                    ENCRYPT,
                    DECRYPT,
                    SIGN,
                    VERIFY,
                    WRAP,
                    UNWRAP,
                    DELETED_READ,
                    RECOVER,
                    PURGE,
                ],
                "Key Vault Reader" => vec![READ, DELETED_READ],
                other => {
                    return Err(EmuError::UnknownRole {
                        name: other.to_owned(),
                        presets: PRESETS.join(", "),
                    });
                }
            },
        })
    }
    /// The role's name.
    pub fn name(&self) -> &str {
        match self {
            Role::Preset(n) => n,
            Role::Custom { name, .. } => name,
        }
    }
}

/// A role assignment on a vault (or one key of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    /// Client id of the app (service principal).
    pub principal: String,
    /// The role.
    pub role: Role,
    /// Only this key, when set.
    #[serde(default)]
    pub key: Option<String>,
}

impl Vault {
    /// Whether `principal` may perform `action` on `key`.
    pub fn allows(&self, principal: &str, action: &str, key: Option<&str>) -> bool {
        self.roles.iter().any(|a| {
            a.principal.eq_ignore_ascii_case(principal)
                && a.key.as_deref().is_none_or(|k| Some(k) == key)
                && a.role
                    .data_actions()
                    .map(|acts| acts.iter().any(|d| d.eq_ignore_ascii_case(action)))
                    .unwrap_or(false)
        })
    }

    /// `recoveryLevel` as Key Vault reports it.
    pub fn recovery_level(&self) -> &'static str {
        if self.purge_protection {
            "Recoverable"
        } else {
            "Recoverable+Purgeable"
        }
    }
}

impl World {
    /// Decodes every private key and certificate once, so requests never parse DER.
    pub fn warm(&mut self) -> Result<(), EmuError> {
        for vault in self.vaults.values_mut() {
            for key in vault
                .keys
                .values_mut()
                .chain(vault.deleted.values_mut().map(|d| &mut d.key))
            {
                for v in &mut key.versions {
                    v.private()?;
                }
            }
        }
        for t in self.tenants.values_mut() {
            for app in t.apps.values_mut() {
                for c in &mut app.certificates {
                    c.public_key()?;
                }
            }
        }
        Ok(())
    }

    /// Removes soft-deleted keys whose retention ended.
    pub fn purge_expired(&mut self, now: i64) {
        for vault in self.vaults.values_mut() {
            vault.deleted.retain(|_, d| d.scheduled_purge > now);
        }
    }
}
