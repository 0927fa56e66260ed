//! TLS for the emulator: a CA (generated once, or kept in the state file so clients' CA files
//! stay valid across restarts) and a server certificate it signs at each start, with SANs for
//! 127.0.0.1, ::1, localhost, every Key Vault host suffix (wildcards) and any extra host names.
//!
//! It must never write the CA's private key anywhere but the state file the operator chose.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};

/// The emulator's CA, as PEM.
#[derive(Clone, Serialize, Deserialize)]
pub struct CaMaterial {
    /// CA certificate.
    pub cert_pem: String,
    /// CA private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaMaterial(..)")
    }
}

/// Host names every server certificate covers.
pub const DEFAULT_HOSTS: [&str; 6] = [
    "localhost",
    "*.localhost",
    "*.vault.azure.net",
    "*.privatelink.vaultcore.azure.net",
    "*.vault.usgovcloudapi.net",
    "*.vault.azure.cn",
];

/// A TLS set-up failure.
#[derive(Debug, thiserror::Error)]
#[error("TLS set-up failed: {0}")]
pub struct TlsError(String);

impl TlsError {
    pub(crate) fn from_msg(msg: &str) -> Self {
        Self(msg.to_owned())
    }
}

fn err(e: impl std::fmt::Display) -> TlsError {
    TlsError(e.to_string())
}

impl CaMaterial {
    /// A new CA (ECDSA P-256), valid ten years.
    pub fn generate() -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "byok vault-emulator local CA");
        params.distinguished_name.push(
            DnType::OrganizationName,
            "byok-pipeline (local emulator, not for production)",
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A rustls server config with a fresh server certificate for `hosts` (plus the defaults).
    pub fn server_config(&self, hosts: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(err)?;
        // rcgen needs the issuer as a `Certificate`: rebuild it from the CA's own parameters and
        // key (same subject, same key identifier; its new signature is never used).
        let issuer = CertificateParams::from_ca_cert_pem(&self.cert_pem)
            .map_err(err)?
            .self_signed(&ca_key)
            .map_err(err)?;
        let key = KeyPair::generate().map_err(err)?;
        let mut names: Vec<String> = DEFAULT_HOSTS.iter().map(|s| (*s).to_owned()).collect();
        for h in hosts {
            if !names.contains(h) {
                names.push(h.clone());
            }
        }
        let mut params = CertificateParams::new(names).map_err(err)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "byok vault-emulator");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(365);
        let cert = params.signed_by(&key, &issuer, &ca_key).map_err(err)?;

        let chain = vec![rustls::pki_types::CertificateDer::from(cert.der().to_vec())];
        let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(err)?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(err)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}
