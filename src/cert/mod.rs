//! Certificate credentials (the setup guide's "Option 1: Authenticate App using Certificates"):
//! the platform generates a key pair and a self-signed certificate, the customer uploads the
//! public certificate to their app registration, and the worker keeps the private key.
//!
//! - [`generate`] makes an RSA key (3072 bits or more) and a certificate fit for an Entra ID app
//!   registration; [`write_files`] writes the `.cer`/`.pem` to upload and the private credential
//!   file (PEM or PKCS#12, mode 0600).
//! - [`read_credential`] and [`info`] read a configured credential back (`byok cert show`).
//! - [`RotatingCertificateCredential`] holds the current and the next certificate and uses the
//!   newest one Entra ID accepts, falling back to the other on AADSTS700027 (not uploaded yet),
//!   so a rotation never fails a token request.

pub mod guide;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509NameBuilder};
use serde::Serialize;

/// A certificate operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Key or certificate generation failed.
    #[error("cannot generate the certificate: {0}")]
    Generate(String),
    /// A file cannot be written (or exists).
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A credential file cannot be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
}

fn gen_err(e: impl std::fmt::Display) -> CertError {
    CertError::Generate(e.to_string())
}

/// A generated credential: the certificate and its private key.
pub struct Generated {
    /// The certificate.
    pub cert: X509,
    /// The private key.
    pub key: PKey<Private>,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("subject", &subject(&self.cert))
            .finish_non_exhaustive()
    }
}

fn subject(cert: &X509) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|e| {
            let k = e.object().nid().short_name().ok()?;
            let v = e.data().to_string().ok()?;
            Some(format!("{k}={v}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A new RSA key of `bits` (3072 or more) and a self-signed certificate valid `days` from now,
/// naming the tenant and its purpose.
pub fn generate(tenant: &str, bits: u32, days: u32) -> Result<Generated, CertError> {
    if bits < 3072 {
        return Err(CertError::Usage(format!(
            "{bits}-bit keys are too small: use 3072 or more (4096 recommended)"
        )));
    }
    if days == 0 || days > 3650 {
        return Err(CertError::Usage("validity must be 1 to 3650 days".into()));
    }
    let key = PKey::from_rsa(Rsa::generate(bits).map_err(gen_err)?).map_err(gen_err)?;
    let mut name = X509NameBuilder::new().map_err(gen_err)?;
    name.append_entry_by_text("CN", &format!("byok-pipeline Key Vault access ({tenant})"))
        .map_err(gen_err)?;
    name.append_entry_by_text("O", "byok-pipeline")
        .map_err(gen_err)?;
    name.append_entry_by_text(
        "OU",
        "BYOK certificate credential for Entra ID app registration",
    )
    .map_err(gen_err)?;
    let name = name.build();
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| gen_err("no randomness"))?;
    serial[0] &= 0x7f;
    let serial: Asn1Integer = BigNum::from_slice(&serial)
        .and_then(|b| b.to_asn1_integer())
        .map_err(gen_err)?;
    let mut b = X509::builder().map_err(gen_err)?;
    b.set_version(2).map_err(gen_err)?;
    b.set_serial_number(&serial).map_err(gen_err)?;
    b.set_subject_name(&name).map_err(gen_err)?;
    b.set_issuer_name(&name).map_err(gen_err)?;
    b.set_pubkey(&key).map_err(gen_err)?;
    let not_before = Asn1Time::days_from_now(0).map_err(gen_err)?;
    let not_after = Asn1Time::days_from_now(days).map_err(gen_err)?;
    b.set_not_before(&not_before).map_err(gen_err)?;
    b.set_not_after(&not_after).map_err(gen_err)?;
    b.append_extension(
        BasicConstraints::new()
            .critical()
            .build()
            .map_err(gen_err)?,
    )
    .map_err(gen_err)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .build()
            .map_err(gen_err)?,
    )
    .map_err(gen_err)?;
    b.append_extension(
        ExtendedKeyUsage::new()
            .client_auth()
            .build()
            .map_err(gen_err)?,
    )
    .map_err(gen_err)?;
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(None, None))
        .map_err(gen_err)?;
    b.append_extension(ski).map_err(gen_err)?;
    b.sign(&key, MessageDigest::sha256()).map_err(gen_err)?;
    Ok(Generated {
        cert: b.build(),
        key,
    })
}

/// What `byok cert` says about a certificate.
#[derive(Debug, Clone, Serialize)]
pub struct CertInfo {
    /// Where it came from.
    pub path: String,
    /// Subject.
    pub subject: String,
    /// SHA-1 thumbprint, uppercase hex (the portal's "Thumbprint").
    pub sha1: String,
    /// SHA-256 thumbprint, uppercase hex.
    pub sha256: String,
    /// notBefore, RFC 3339.
    pub not_before: String,
    /// notAfter, RFC 3339.
    pub not_after: String,
    /// notBefore, Unix seconds.
    pub not_before_unix: i64,
    /// notAfter, Unix seconds.
    pub not_after_unix: i64,
    /// Whole days until notAfter (negative once expired).
    pub days_left: i64,
    /// Whether the private key in the file belongs to the certificate.
    pub key_matches: Option<bool>,
}

fn asn1_unix(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    Asn1Time::from_unix(0)
        .ok()
        .and_then(|epoch| epoch.diff(t).ok())
        .map_or(0, |d| i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// A Unix time as RFC 3339 (the number itself if it is out of range).
pub(crate) fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Describes a certificate (and whether `key` belongs to it).
pub fn info(path: &str, cert: &X509, key: Option<&PKey<Private>>) -> CertInfo {
    let hex = |d: MessageDigest| {
        cert.digest(d)
            .map(|b| hex::encode_upper(&*b))
            .unwrap_or_default()
    };
    let nb = asn1_unix(cert.not_before());
    let na = asn1_unix(cert.not_after());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    CertInfo {
        path: path.to_owned(),
        subject: subject(cert),
        sha1: hex(MessageDigest::sha1()),
        sha256: hex(MessageDigest::sha256()),
        not_before: rfc3339(nb),
        not_after: rfc3339(na),
        not_before_unix: nb,
        not_after_unix: na,
        days_left: (na - now).div_euclid(86_400),
        key_matches: key.map(|k| cert.public_key().map(|p| p.public_eq(k)).unwrap_or(false)),
    }
}

/// Reads a credential file (PEM with certificate and key, or PKCS#12).
pub fn read_credential(
    path: &Path,
    pfx: bool,
    password: Option<&str>,
) -> Result<(X509, Option<PKey<Private>>), CertError> {
    let read = |reason: String| CertError::Read {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| read(e.to_string()))?;
    if pfx {
        let p12 = openssl::pkcs12::Pkcs12::from_der(&bytes)
            .map_err(|_| read("not a PKCS#12 file".into()))?;
        let parsed = p12
            .parse2(password.unwrap_or(""))
            .map_err(|_| read("cannot open the PKCS#12 (wrong password?)".into()))?;
        let cert = parsed
            .cert
            .ok_or_else(|| read("the PKCS#12 has no certificate".into()))?;
        Ok((cert, parsed.pkey))
    } else {
        let cert = X509::from_pem(&bytes).map_err(|_| read("no PEM certificate".into()))?;
        let key = match password {
            Some(p) => PKey::private_key_from_pem_passphrase(&bytes, p.as_bytes()).ok(),
            None => PKey::private_key_from_pem(&bytes).ok(),
        };
        Ok((cert, key))
    }
}

/// The files [`write_files`] wrote.
#[derive(Debug, Clone)]
pub struct Written {
    /// The certificate to upload, DER.
    pub cer: PathBuf,
    /// The certificate to upload, PEM.
    pub pem: PathBuf,
    /// The private credential the worker reads (mode 0600).
    pub credential: PathBuf,
}

fn write_new(path: &Path, bytes: &[u8], private: bool, force: bool) -> Result<(), CertError> {
    use std::io::Write;
    let fail = |reason: String| CertError::Write {
        path: path.to_owned(),
        reason,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, if private { 0o600 } else { 0o644 });
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            fail("exists; pass --force to replace it, or choose another --out-dir".into())
        } else {
            fail(e.to_string())
        }
    })?;
    f.write_all(bytes).map_err(|e| fail(e.to_string()))?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Writes `<tenant>.cer` and `<tenant>.pem` (public, to upload) and the private credential
/// `<tenant>-credential.pem` (certificate + PKCS#8 key) or `<tenant>-credential.pfx` (PKCS#12,
/// with `passphrase` when given), mode 0600.
pub fn write_files(
    g: &Generated,
    tenant: &str,
    dir: &Path,
    pfx: bool,
    passphrase: Option<&str>,
    force: bool,
) -> Result<Written, CertError> {
    std::fs::create_dir_all(dir).map_err(|e| CertError::Write {
        path: dir.to_owned(),
        reason: e.to_string(),
    })?;
    let cer = dir.join(format!("{tenant}.cer"));
    let pem = dir.join(format!("{tenant}.pem"));
    let credential = dir.join(format!(
        "{tenant}-credential.{}",
        if pfx { "pfx" } else { "pem" }
    ));
    let cert_pem = g.cert.to_pem().map_err(gen_err)?;
    let private = if pfx {
        openssl::pkcs12::Pkcs12::builder()
            .name(&format!("byok {tenant}"))
            .pkey(&g.key)
            .cert(&g.cert)
            .build2(passphrase.unwrap_or(""))
            .and_then(|p| p.to_der())
            .map_err(gen_err)?
    } else {
        let key = match passphrase {
            Some(p) => g.key.private_key_to_pem_pkcs8_passphrase(
                openssl::symm::Cipher::aes_256_cbc(),
                p.as_bytes(),
            ),
            None => g.key.private_key_to_pem_pkcs8(),
        }
        .map_err(gen_err)?;
        [cert_pem.clone(), key].concat()
    };
    write_new(&credential, &private, true, force)?;
    write_new(&cer, &g.cert.to_der().map_err(gen_err)?, false, force)?;
    write_new(&pem, &cert_pem, false, force)?;
    Ok(Written {
        cer,
        pem,
        credential,
    })
}

/// A certificate credential that holds the current and the next certificate: each token request
/// tries the newest first and falls back to the other when Entra ID answers AADSTS700027
/// (certificate not uploaded yet, or already removed).
#[derive(Debug)]
pub struct RotatingCertificateCredential {
    /// Newest first.
    creds: Vec<(String, Arc<dyn TokenCredential>)>,
}

impl RotatingCertificateCredential {
    /// Credentials with a label (the thumbprint), newest first.
    pub fn new(creds: Vec<(String, Arc<dyn TokenCredential>)>) -> Self {
        Self { creds }
    }
}

#[async_trait::async_trait]
impl TokenCredential for RotatingCertificateCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        let mut last = None;
        for (i, (label, cred)) in self.creds.iter().enumerate() {
            match cred.get_token(scopes, options.clone()).await {
                Ok(t) => {
                    if i > 0 {
                        tracing::info!(certificate = %label, "the newer certificate is not on the app registration yet; used the previous one");
                    }
                    return Ok(t);
                }
                Err(e) if format!("{e:?}").contains("AADSTS700027") => {
                    tracing::debug!(certificate = %label, "Entra ID does not know this certificate (AADSTS700027)");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            azure_core::Error::with_message(
                azure_core::error::ErrorKind::Credential,
                "no certificate configured",
            )
        }))
    }
}
