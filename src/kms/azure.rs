//! The tenant key provider over Microsoft's SDK: `azure_identity` (certificate or client-secret
//! credential, optional authority host) and `azure_security_keyvault_keys` (one `KeyClient` per
//! tenant vault, reused). Wrap = `encrypt` RSA-OAEP-256 on a pinned version; unwrap = `decrypt`
//! on the version the registry names; state = `GET key`.
//!
//! The SDK's own retries are turned off: [`super::resilience`] retries, honouring
//! `Retry-After`, in one place. Private Link hosts turn the SDK's challenge-resource check off
//! (their host is not under `vault.azure.net`, so the check would always fail).
//!
//! It must never log a token, a secret, a wrapped or unwrapped DEK.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, SecretBytes, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ClientCertificateCredential, ClientCertificateCredentialOptions, ClientSecretCredential,
    ClientSecretCredentialOptions,
};
use azure_security_keyvault_keys::models::{EncryptionAlgorithm, Key, KeyOperationParameters};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
use futures::TryStreamExt;
use tokio::sync::Mutex;

use super::classify::{Classified, classify};
use super::{KekId, KeyProvider, KeyState, KmsError, Revocation, VersionInfo, Wrapped};
use crate::config::{CertFormat, Credential, KeyVaultKey, KeysConfig, SecretSource};
use crate::dek::{DataKey, DekId};

/// The OAuth scope of Key Vault.
pub const VAULT_SCOPE: &str = "https://vault.azure.net/.default";

/// The HTTP client every SDK client of this process shares: trusts the configured extra CA and
/// applies the `resolve` overrides.
pub fn http_client(
    keys: &KeysConfig,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, SetupError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(60));
    if let Some(ca) = ca_file.or(keys.ca_file.as_deref()) {
        let pem = std::fs::read(ca).map_err(|e| SetupError::CaFile {
            path: ca.to_owned(),
            detail: e.to_string(),
        })?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| SetupError::CaFile {
            path: ca.to_owned(),
            detail: format!("not a PEM certificate: {e}"),
        })?;
        b = b.add_root_certificate(cert);
    }
    for (host, ip) in &keys.resolve {
        b = b.resolve(host, std::net::SocketAddr::new(*ip, 0));
    }
    b.build().map_err(|e| SetupError::HttpClient(e.to_string()))
}

/// A key provider's client or credential could not be made from the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The extra CA file cannot be read or is not PEM.
    #[error("CA file {}: {detail}", path.display())]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    HttpClient(String),
    /// The PEM credential has no certificate.
    #[error("no certificate in the PEM")]
    NoCertificate,
    /// The PEM credential's private key cannot be read.
    #[error("no readable private key in the PEM (encrypted? set password_env)")]
    NoPrivateKey,
    /// The PKCS#12 the SDK takes could not be built.
    #[error("cannot build PKCS#12: {0}")]
    Pkcs12(String),
}

/// One tenant's key in Azure Key Vault.
pub struct AzureKeyProvider {
    tenant: String,
    key_name: String,
    pinned: Option<String>,
    vault_url: String,
    client: KeyClient,
    credential: Arc<dyn TokenCredential>,
    state: Mutex<Option<(Instant, KeyState)>>,
    state_ttl: Duration,
}

impl std::fmt::Debug for AzureKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKeyProvider")
            .field("tenant", &self.tenant)
            .field("vault_url", &self.vault_url)
            .field("key_name", &self.key_name)
            .field("pinned", &self.pinned)
            .finish_non_exhaustive()
    }
}

fn setup(tenant: &str, detail: impl Into<String>) -> KmsError {
    KmsError::Setup {
        tenant: tenant.to_owned(),
        detail: detail.into(),
    }
}

/// Builds the app's credential from the configuration.
pub fn credential(
    tenant: &str,
    key: &KeyVaultKey,
    options: ClientOptions,
) -> Result<Arc<dyn TokenCredential>, KmsError> {
    match &key.credential {
        Credential::ClientSecret(source) => {
            let secret = source
                .load()
                .map_err(|e| setup(tenant, format!("client secret: {e}")))?;
            let cred = secret_credential(key, &secret, options.clone())
                .map_err(|e| setup(tenant, format!("client secret credential: {e}")))?;
            match source {
                SecretSource::File(_) => Ok(Arc::new(SecretFileCredential {
                    tenant: tenant.to_owned(),
                    key: key.clone(),
                    options,
                    source: source.clone(),
                    current: std::sync::Mutex::new((digest(&secret), cred)),
                })),
                SecretSource::Env(_) => Ok(cred),
            }
        }
        Credential::Certificate {
            path,
            next,
            format,
            password,
        } => {
            let password = password
                .as_ref()
                .map(|p| p.load())
                .transpose()
                .map_err(|e| setup(tenant, format!("certificate password: {e}")))?;
            let pass = password
                .as_ref()
                .map(|p| secrecy::ExposeSecret::expose_secret(p).to_owned());
            let mut creds = Vec::new();
            for p in std::iter::once(path).chain(next.iter()) {
                let bytes = std::fs::read(p)
                    .map_err(|e| setup(tenant, format!("certificate {}: {e}", p.display())))?;
                let (cert, _) =
                    crate::cert::read_credential(p, *format == CertFormat::Pfx, pass.as_deref())
                        .map_err(|e| setup(tenant, e.to_string()))?;
                let info = crate::cert::info(&p.display().to_string(), &cert, None);
                let pkcs12 = match format {
                    CertFormat::Pfx => bytes,
                    CertFormat::Pem => pem_to_pkcs12(&bytes, pass.as_deref())
                        .map_err(|e| setup(tenant, format!("certificate {}: {e}", p.display())))?,
                };
                let cred: Arc<dyn TokenCredential> = ClientCertificateCredential::new(
                    key.entra_tenant_id.clone(),
                    key.client_id.clone(),
                    SecretBytes::new(pkcs12),
                    Some(ClientCertificateCredentialOptions {
                        client_options: options.clone(),
                        password: match format {
                            CertFormat::Pfx => pass.clone().map(Secret::new),
                            CertFormat::Pem => None,
                        },
                    }),
                )
                .map_err(|e| setup(tenant, format!("certificate credential: {e}")))?;
                creds.push((info.not_before_unix, info.sha1, cred));
            }
            if creds.len() == 1 {
                return Ok(creds.remove(0).2);
            }
            // Newest first: the credential moves to the next certificate as soon as Entra
            // accepts it.
            creds.sort_by_key(|(nb, _, _)| std::cmp::Reverse(*nb));
            Ok(Arc::new(crate::cert::RotatingCertificateCredential::new(
                creds.into_iter().map(|(_, label, c)| (label, c)).collect(),
            )))
        }
    }
}

fn secret_credential(
    key: &KeyVaultKey,
    secret: &secrecy::SecretString,
    options: ClientOptions,
) -> azure_core::Result<Arc<ClientSecretCredential>> {
    ClientSecretCredential::new(
        &key.entra_tenant_id,
        key.client_id.clone(),
        Secret::new(secrecy::ExposeSecret::expose_secret(secret).to_owned()),
        Some(ClientSecretCredentialOptions {
            client_options: options,
        }),
    )
}

fn digest(secret: &secrecy::SecretString) -> [u8; 32] {
    let d = ring::digest::digest(
        &ring::digest::SHA256,
        secrecy::ExposeSecret::expose_secret(secret).as_bytes(),
    );
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A client-secret credential that follows its secret file: when the file holds another secret
/// (the customer added a new one, the operator replaced the mounted file, as a Kubernetes secret
/// volume does), the next token request uses it, without a restart, before the customer removes
/// the old one. The file is read at each token request (the SDK asks only when its token nears
/// expiry); an unreadable file keeps the secret read before. A secret in an environment variable
/// cannot change under a running process.
struct SecretFileCredential {
    tenant: String,
    key: KeyVaultKey,
    options: ClientOptions,
    source: crate::config::SecretSource,
    /// SHA-256 of the secret in use, and the SDK credential made with it.
    current: std::sync::Mutex<([u8; 32], Arc<ClientSecretCredential>)>,
}

impl std::fmt::Debug for SecretFileCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretFileCredential")
            .field("tenant", &self.tenant)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl SecretFileCredential {
    fn credential(&self) -> Arc<ClientSecretCredential> {
        let loaded = self.source.load();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match loaded {
            Ok(secret) => {
                let d = digest(&secret);
                if d != current.0 {
                    match secret_credential(&self.key, &secret, self.options.clone()) {
                        Ok(c) => {
                            *current = (d, c);
                            tracing::info!(tenant = %self.tenant, "the client secret file holds a new secret; token requests use it");
                        }
                        Err(e) => {
                            tracing::warn!(tenant = %self.tenant, error = %e, "the new client secret cannot be used; keeping the previous one");
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(tenant = %self.tenant, error = %e, "client secret file unreadable; keeping the secret read before");
            }
        }
        Arc::clone(&current.1)
    }
}

#[async_trait::async_trait]
impl TokenCredential for SecretFileCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let cred = self.credential();
        cred.get_token(scopes, options).await
    }
}

/// A PKCS#12 (no password) of a PEM holding a certificate and its private key, as the SDK's
/// certificate credential takes only PKCS#12.
pub fn pem_to_pkcs12(pem: &[u8], password: Option<&str>) -> Result<Vec<u8>, SetupError> {
    let cert = openssl::x509::X509::from_pem(pem).map_err(|_| SetupError::NoCertificate)?;
    let key = match password {
        Some(p) => openssl::pkey::PKey::private_key_from_pem_passphrase(pem, p.as_bytes()),
        None => openssl::pkey::PKey::private_key_from_pem(pem),
    }
    .map_err(|_| SetupError::NoPrivateKey)?;
    openssl::pkcs12::Pkcs12::builder()
        .name("byok")
        .pkey(&key)
        .cert(&cert)
        .build2("")
        .and_then(|p| p.to_der())
        .map_err(|e| SetupError::Pkcs12(e.to_string()))
}

impl AzureKeyProvider {
    /// A provider for one tenant's key, sharing `http` with the process's other providers.
    pub fn new(
        tenant: &str,
        key: &KeyVaultKey,
        http: reqwest::Client,
        state_ttl: Duration,
    ) -> Result<Self, KmsError> {
        let mut cloud = CustomConfiguration::default();
        cloud.authority_host = key.authority_host.as_str().trim_end_matches('/').to_owned();
        let options = ClientOptions {
            transport: Some(Transport::new(Arc::new(http))),
            cloud: Some(Arc::new(CloudConfiguration::Custom(cloud))),
            retry: RetryOptions::none(),
            ..ClientOptions::default()
        };
        let credential = credential(tenant, key, options.clone())?;
        let vault_url = key.vault_url.as_str().trim_end_matches('/').to_owned();
        // every Key Vault request leaves a receipt (the credential's token requests do not)
        let mut kv_options = options;
        kv_options
            .per_call_policies
            .push(Arc::new(super::receipts::ReceiptPolicy::new(tenant)));
        let client = KeyClient::new(
            &vault_url,
            Arc::clone(&credential),
            Some(KeyClientOptions {
                client_options: kv_options,
                verify_challenge_resource: Some(!key.is_private_link()),
                ..KeyClientOptions::default()
            }),
        )
        .map_err(|e| setup(tenant, format!("Key Vault client for {vault_url}: {e}")))?;
        Ok(Self {
            tenant: tenant.to_owned(),
            key_name: key.key_name.clone(),
            pinned: key.key_version.clone(),
            vault_url,
            client,
            credential,
            state: Mutex::new(None),
            state_ttl,
        })
    }

    /// The vault URL.
    pub fn vault_url(&self) -> &str {
        &self.vault_url
    }

    /// The key name.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The pinned version, if any.
    pub fn pinned(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    fn error(&self, err: &azure_core::Error) -> KmsError {
        match classify(err) {
            Classified::Revoked(why, detail) => KmsError::Revoked {
                tenant: self.tenant.clone(),
                key: format!("{}/keys/{}", self.vault_url, self.key_name),
                why,
                detail,
            },
            Classified::Unavailable(why, detail, retry_after) => KmsError::Unavailable {
                tenant: self.tenant.clone(),
                why,
                detail,
                retry_after,
            },
            Classified::Rejected(detail) => KmsError::Rejected {
                tenant: self.tenant.clone(),
                detail,
            },
        }
    }

    /// Gets a token for Key Vault with the configured credential (the first check of
    /// `byok check-key`).
    pub async fn token(&self) -> Result<(), KmsError> {
        self.credential
            .get_token(&[VAULT_SCOPE], None)
            .await
            .map(|_| ())
            .map_err(|e| self.error(&e))
    }

    /// `GET key` for a version (latest when `None`).
    pub async fn get_version(&self, version: Option<&str>) -> Result<VersionInfo, KmsError> {
        let options =
            version.map(
                |v| azure_security_keyvault_keys::models::KeyClientGetKeyOptions {
                    key_version: Some(v.to_owned()),
                    ..Default::default()
                },
            );
        let key = self
            .client
            .get_key(&self.key_name, options)
            .await
            .map_err(|e| self.error(&e))?
            .into_model()
            .map_err(|e| self.error(&e))?;
        self.version_info(key)
    }

    fn version_info(&self, key: Key) -> Result<VersionInfo, KmsError> {
        let bad = |what: &str| KmsError::Rejected {
            tenant: self.tenant.clone(),
            detail: format!("GET key returned no {what}"),
        };
        let jwk = key.key.ok_or_else(|| bad("key"))?;
        let kid = KekId::parse(jwk.kid.as_deref().ok_or_else(|| bad("kid"))?).map_err(|e| {
            KmsError::Rejected {
                tenant: self.tenant.clone(),
                detail: e.to_string(),
            }
        })?;
        let attrs = key.attributes.unwrap_or_default();
        Ok(VersionInfo {
            kid,
            kty: jwk.kty.map(|k| k.to_string()).unwrap_or_default(),
            n: jwk.n.unwrap_or_default(),
            e: jwk.e.unwrap_or_default(),
            key_ops: jwk.key_ops.unwrap_or_default(),
            enabled: attrs.enabled.unwrap_or(false),
            nbf: attrs.not_before.map(|t| t.unix_timestamp()),
            exp: attrs.expires.map(|t| t.unix_timestamp()),
            recovery_level: attrs.recovery_level.map(|r| r.to_string()),
            recoverable_days: attrs.recoverable_days,
        })
    }

    /// Whether the key is soft-deleted (needs deletedKeys/read; `false` when not allowed).
    async fn is_deleted(&self) -> bool {
        self.client
            .get_deleted_key(&self.key_name, None)
            .await
            .is_ok()
    }

    /// Encrypts `plaintext` with RSA-OAEP-256 on a version.
    pub async fn encrypt(
        &self,
        version: &KekId,
        plaintext: &[u8],
        deks: &[String],
    ) -> Result<Wrapped, KmsError> {
        let params = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(plaintext.to_vec()),
            ..Default::default()
        };
        let body = params.try_into().map_err(|e| self.error(&e))?;
        let mut options = azure_security_keyvault_keys::models::KeyClientEncryptOptions {
            key_version: Some(version.version().to_owned()),
            ..Default::default()
        };
        options
            .method_options
            .context
            .insert(super::receipts::Deks(deks.to_vec()));
        let r = self
            .client
            .encrypt(version.name(), body, Some(options))
            .await
            .map_err(|e| self.error(&e))?
            .into_model()
            .map_err(|e| self.error(&e))?;
        let wrapped = r.result.ok_or_else(|| KmsError::Rejected {
            tenant: self.tenant.clone(),
            detail: "encrypt returned no value".into(),
        })?;
        let kid = r
            .kid
            .as_deref()
            .map(KekId::parse)
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_else(|| version.clone());
        Ok(Wrapped { kek: kid, wrapped })
    }

    /// Signs a SHA-256 digest with PS256 (salt 32) on the newest usable version of the key (or
    /// its pinned version): the version that signed, and the signature.
    pub async fn sign_ps256(&self, digest: &[u8; 32]) -> Result<(KekId, Vec<u8>), KmsError> {
        let params = azure_security_keyvault_keys::models::SignParameters {
            algorithm: Some(azure_security_keyvault_keys::models::SignatureAlgorithm::Ps256),
            value: Some(digest.to_vec()),
        };
        let body = params.try_into().map_err(|e| self.error(&e))?;
        let options = azure_security_keyvault_keys::models::KeyClientSignOptions {
            key_version: self.pinned.clone(),
            ..Default::default()
        };
        let r = self
            .client
            .sign(&self.key_name, body, Some(options))
            .await
            .map_err(|e| self.error(&e))?
            .into_model()
            .map_err(|e| self.error(&e))?;
        let rejected = |detail: &str| KmsError::Rejected {
            tenant: self.tenant.clone(),
            detail: detail.to_owned(),
        };
        let sig = r.result.ok_or_else(|| rejected("sign returned no value"))?;
        let kid = r
            .kid
            .as_deref()
            .and_then(|k| KekId::parse(k).ok())
            .ok_or_else(|| rejected("sign returned no versioned key id"))?;
        Ok((kid, sig))
    }

    /// Decrypts with RSA-OAEP-256 on the version `kek` names.
    pub async fn decrypt(
        &self,
        kek: &KekId,
        ciphertext: &[u8],
        deks: &[String],
    ) -> Result<Vec<u8>, KmsError> {
        // a registry record is a claim: the tenant's credential is used on its own key only
        if !kek.is_key(&self.vault_url, &self.key_name) {
            return Err(KmsError::Rejected {
                tenant: self.tenant.clone(),
                detail: format!(
                    "the registry names key {kek}, not the tenant's key {}/keys/{}: not asked (a planted or mislabelled registry record)",
                    self.vault_url, self.key_name
                ),
            });
        }
        let params = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(ciphertext.to_vec()),
            ..Default::default()
        };
        let body = params.try_into().map_err(|e| self.error(&e))?;
        let mut options = azure_security_keyvault_keys::models::KeyClientDecryptOptions::default();
        options
            .method_options
            .context
            .insert(super::receipts::Deks(deks.to_vec()));
        let r = self
            .client
            .decrypt(kek.name(), kek.version(), body, Some(options))
            .await
            .map_err(|e| self.error(&e))?
            .into_model()
            .map_err(|e| self.error(&e))?;
        r.result.ok_or_else(|| KmsError::Rejected {
            tenant: self.tenant.clone(),
            detail: "decrypt returned no value".into(),
        })
    }

    /// Reads the key's state now (no cache).
    pub async fn read_state(&self) -> KeyState {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let latest = match self.get_version(None).await {
            Ok(v) => v,
            Err(e) => return self.state_of_error(e).await,
        };
        let in_use = match &self.pinned {
            Some(p) if !latest.kid.version().eq_ignore_ascii_case(p) => {
                match self.get_version(Some(p)).await {
                    Ok(v) => v,
                    Err(e) => return self.state_of_error(e).await,
                }
            }
            _ => latest.clone(),
        };
        let Some(why) = in_use.problem(now) else {
            return KeyState::Usable(in_use);
        };
        // The version in use cannot be used: is another one usable?
        let usable = if latest.problem(now).is_none() {
            Some(latest.clone())
        } else {
            self.newest_usable(now).await
        };
        match usable {
            Some(usable) => KeyState::VersionUnusable {
                unusable: in_use.kid,
                why,
                usable,
            },
            None => KeyState::Revoked {
                why,
                detail: format!("no usable version of key {} ({why})", self.key_name),
                last_seen: Some(latest),
            },
        }
    }

    async fn newest_usable(&self, now: i64) -> Option<VersionInfo> {
        let pager = self
            .client
            .list_key_properties_versions(&self.key_name, None)
            .ok()?;
        let mut versions: Vec<_> = pager.try_collect().await.ok()?;
        versions.sort_by_key(|p| {
            std::cmp::Reverse(
                p.attributes
                    .as_ref()
                    .and_then(|a| a.created)
                    .map(|t| t.unix_timestamp()),
            )
        });
        for p in versions {
            let a = p.attributes.unwrap_or_default();
            let plausible = a.enabled == Some(true)
                && a.not_before.is_none_or(|t| t.unix_timestamp() <= now)
                && a.expires.is_none_or(|t| t.unix_timestamp() > now);
            if !plausible {
                continue;
            }
            let Some(kid) = p.kid.as_deref().and_then(|k| KekId::parse(k).ok()) else {
                continue;
            };
            if let Ok(v) = self.get_version(Some(kid.version())).await
                && v.problem(now).is_none()
            {
                return Some(v);
            }
        }
        None
    }

    async fn state_of_error(&self, e: KmsError) -> KeyState {
        match e {
            KmsError::Revoked { why, detail, .. } => {
                let why = if why == Revocation::KeyNotFound && self.is_deleted().await {
                    Revocation::KeyDeleted
                } else {
                    why
                };
                KeyState::Revoked {
                    why,
                    detail,
                    last_seen: None,
                }
            }
            KmsError::Unavailable {
                why,
                detail,
                retry_after,
                ..
            } => KeyState::Unavailable {
                why,
                detail,
                retry_after,
            },
            // an answer we cannot read, or a fault of our own set-up, is not the tenant's
            // decision: an outage (keep archiving), never a revocation
            KmsError::Rejected { detail, .. } | KmsError::Setup { detail, .. } => {
                KeyState::Unavailable {
                    why: super::Outage::Unclassified,
                    detail,
                    retry_after: None,
                }
            }
        }
    }

    /// The cached state if fresh, else a new read.
    async fn current_state(&self) -> KeyState {
        let mut guard = self.state.lock().await;
        if let Some((at, state)) = guard.as_ref()
            && at.elapsed() < self.state_ttl
            && !matches!(state, KeyState::Unavailable { .. })
        {
            return state.clone();
        }
        let state = self.read_state().await;
        *guard = Some((Instant::now(), state.clone()));
        state
    }

    /// Forgets the cached state (after a vault error, or when the monitor asks).
    pub async fn invalidate(&self) {
        *self.state.lock().await = None;
    }

    fn revoked(&self, why: Revocation, detail: String) -> KmsError {
        KmsError::Revoked {
            tenant: self.tenant.clone(),
            key: format!("{}/keys/{}", self.vault_url, self.key_name),
            why,
            detail,
        }
    }
}

impl KeyProvider for AzureKeyProvider {
    fn tenant(&self) -> &str {
        &self.tenant
    }

    async fn wrap(&self, dek: &DataKey) -> Result<Wrapped, KmsError> {
        // A successful encrypt proves nothing (a disabled key may still accept it): wrap only
        // under a version GET key says is usable.
        let version = match self.current_state().await {
            KeyState::Usable(v) | KeyState::VersionUnusable { usable: v, .. } => v,
            KeyState::Revoked { why, detail, .. } => return Err(self.revoked(why, detail)),
            KeyState::Unavailable {
                why,
                detail,
                retry_after,
            } => {
                return Err(KmsError::Unavailable {
                    tenant: self.tenant.clone(),
                    why,
                    detail,
                    retry_after,
                });
            }
        };
        let result = self
            .encrypt(&version.kid, dek.secret_bytes(), &[dek.id().to_string()])
            .await;
        if result.is_err() {
            self.invalidate().await;
        }
        result
    }

    async fn unwrap(
        &self,
        kek: &KekId,
        dek: DekId,
        wrapped: &[u8],
    ) -> Result<Arc<DataKey>, KmsError> {
        let mut bytes = match self.decrypt(kek, wrapped, &[dek.to_string()]).await {
            Ok(b) => b,
            Err(e) => {
                self.invalidate().await;
                return Err(e);
            }
        };
        let key = DataKey::from_unwrapped(dek, &mut bytes).map_err(|e| KmsError::Rejected {
            tenant: self.tenant.clone(),
            detail: format!("the unwrapped DEK {dek} is not a DEK: {e}"),
        })?;
        Ok(Arc::new(key))
    }

    async fn key_state(&self) -> KeyState {
        let state = self.read_state().await;
        *self.state.lock().await = Some((Instant::now(), state.clone()));
        state
    }
}
