//! `byok check-key`: the customer's setup guide (seed 000) as a command. For each tenant it walks
//! the guide's checklist against the real vault and prints one line per check, pass, warn or
//! fail, with the fix in the guide's own terms.
//!
//! It must never change the vault (only the round trip's encrypt and decrypt) and never print a
//! secret, a token or the round trip's plaintext.

use std::time::Duration;

use serde::Serialize;

use crate::config::{Credential, KeyVaultKey, KeysConfig};
use crate::kms::azure::AzureKeyProvider;
use crate::kms::{KmsError, Outage, Revocation, VersionInfo};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// As the guide asks.
    Pass,
    /// Works, but not as the guide recommends.
    Warn,
    /// Does not work.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct CheckLine {
    /// Tenant id.
    pub tenant: String,
    /// Which check.
    pub check: &'static str,
    /// Its outcome.
    pub verdict: Verdict,
    /// What was found.
    pub message: String,
    /// What to do, when it is not a pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

struct Report<'a> {
    tenant: &'a str,
    lines: Vec<CheckLine>,
}

impl Report<'_> {
    fn add(
        &mut self,
        check: &'static str,
        verdict: Verdict,
        message: impl Into<String>,
        fix: Option<String>,
    ) {
        self.lines.push(CheckLine {
            tenant: self.tenant.to_owned(),
            check,
            verdict,
            message: message.into(),
            fix,
        });
    }
    fn pass(&mut self, check: &'static str, message: impl Into<String>) {
        self.add(check, Verdict::Pass, message, None);
    }
    fn warn(&mut self, check: &'static str, message: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Verdict::Warn, message, Some(fix.into()));
    }
    fn fail(&mut self, check: &'static str, message: impl Into<String>, fix: impl Into<String>) {
        self.add(check, Verdict::Fail, message, Some(fix.into()));
    }
}

fn vault_name(key: &KeyVaultKey) -> String {
    key.vault_url
        .host_str()
        .and_then(|h| h.split('.').next())
        .unwrap_or_default()
        .to_owned()
}

fn role_fix(key: &KeyVaultKey, action: &str) -> String {
    format!(
        "assign the custom role with Microsoft.KeyVault/vaults/keys/{action} to app {} on vault {} (Key vault > Access control (IAM) > Add role assignment)",
        key.client_id,
        vault_name(key)
    )
}

/// The fix for an Entra ID refusal, by AADSTS code.
fn credential_fix(key: &KeyVaultKey, code: u32) -> String {
    let cred = match &key.credential {
        Credential::Certificate { path, .. } => format!("the certificate {}", path.display()),
        Credential::ClientSecret(_) => "the client secret".to_owned(),
    };
    match code {
        7000215 | 7000222 => format!(
            "{cred} is wrong or expired: in Entra ID > App registrations > {} > Certificates & secrets > Client secrets, add a new client secret and configure its Value (not its ID)",
            key.client_id
        ),
        700027 => format!(
            "upload {cred} to the app: Entra ID > App registrations > {} > Certificates & secrets > Certificates > Upload certificate",
            key.client_id
        ),
        700016 => format!(
            "app {} is not registered in directory {}: copy the Application (client) ID and Directory (tenant) ID from the app registration's overview",
            key.client_id, key.entra_tenant_id
        ),
        90002 => format!(
            "directory {} does not exist: copy the Directory (tenant) ID from the app registration's overview",
            key.entra_tenant_id
        ),
        700024 => {
            "the client assertion is outside its valid time: check this machine's clock".to_owned()
        }
        7000218 => {
            "configure a credential: a certificate (recommended) or a client secret".to_owned()
        }
        _ => format!(
            "Entra ID refused the app's credential (AADSTS{code}); check the app registration {}",
            key.client_id
        ),
    }
}

fn outage_fix(key: &KeyVaultKey, why: Outage) -> String {
    match why {
        Outage::TokenEndpoint => format!(
            "cannot reach Entra ID at {}: check network access and authority_host",
            key.authority_host
        ),
        Outage::Throttled => "the vault is throttling requests: retry later".to_owned(),
        Outage::ClockSkew => "this machine's clock is off by more than 5 minutes (AADSTS700024): fix its time sync (NTP) and run the check again".to_owned(),
        Outage::Unauthorized => "the vault refused the access token (401): check the app's tenant ID and the vault's tenant, then run the check again".to_owned(),
        Outage::Unclassified => "an answer this version does not recognise: see the detail, and run the check again".to_owned(),
        _ if key.is_private_link() => format!(
            "cannot reach {}: approve the private endpoint connection (Key vault > Networking > Private endpoint connections) and check that the Private Link host resolves from here",
            key.vault_url
        ),
        _ => format!(
            "cannot reach {}: check the Key Vault URI and network access",
            key.vault_url
        ),
    }
}

/// Runs the checklist for one tenant.
pub async fn check_tenant(tenant: &str, key: &KeyVaultKey, keys: &KeysConfig) -> Vec<CheckLine> {
    let mut r = Report {
        tenant,
        lines: Vec::new(),
    };
    let http = match crate::kms::azure::http_client(keys, key.ca_file.as_deref()) {
        Ok(h) => h,
        Err(e) => {
            r.fail("credential", e.to_string(), "fix keys.ca_file / ca_file");
            return r.lines;
        }
    };
    let provider = match AzureKeyProvider::new(tenant, key, http, Duration::ZERO) {
        Ok(p) => p,
        Err(e) => {
            r.fail(
                "credential",
                e.to_string(),
                "fix the tenant's credential settings (byok config check shows the field)",
            );
            return r.lines;
        }
    };
    if !certificates(&mut r, key) {
        return r.lines;
    }
    let how = match &key.credential {
        Credential::Certificate { .. } => "the certificate",
        Credential::ClientSecret(_) => "the client secret",
    };

    // 1. Token.
    if !token_check(&mut r, &provider, key, how).await {
        return r.lines;
    }
    // 2. Key found (and, under Private Link, the host answers).
    let Some(version) = key_check(&mut r, &provider, key).await else {
        return r.lines;
    };
    // 3, 4, 6. Type and size, enabled, permitted operations.
    key_properties(&mut r, &version, key);
    // 5. Activation and expiration dates.
    validity(&mut r, &version, key);
    // 7. A real round trip.
    round_trip(&mut r, &provider, &version, key).await;
    // 8. Soft delete and purge protection.
    recovery(&mut r, &version, key);
    r.lines
}

/// The operator's audit signing key (docs/audit-v1.md §5): token, key found, RSA of 3072 bits or
/// more, enabled, `sign` permitted, and a real PS256 signature that verifies under the key's
/// public part.
pub async fn check_signing_key(key: &KeyVaultKey, keys: &KeysConfig) -> Vec<CheckLine> {
    let mut r = Report {
        tenant: "audit-signing",
        lines: Vec::new(),
    };
    let provider = match crate::kms::azure::http_client(keys, key.ca_file.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|http| {
            AzureKeyProvider::new("_audit", key, http, Duration::ZERO).map_err(|e| e.to_string())
        }) {
        Ok(p) => p,
        Err(e) => {
            r.fail(
                "credential",
                e,
                "fix [audit.signing_key] (byok config check shows the field)",
            );
            return r.lines;
        }
    };
    if !certificates(&mut r, key) || !token_check(&mut r, &provider, key, "its credential").await {
        return r.lines;
    }
    let Some(version) = key_check(&mut r, &provider, key).await else {
        return r.lines;
    };
    if version.bits() < 3072 || !version.kty.starts_with("RSA") {
        r.fail(
            "size",
            format!(
                "{} of {} bits; audit signing needs RSA of 3072 bits or more",
                version.kty,
                version.bits()
            ),
            "create an RSA key of 3072 or 4096 bits for signing and configure it",
        );
    } else {
        r.pass("size", format!("RSA-{}", version.bits()));
    }
    if !version.enabled {
        r.fail(
            "enabled",
            format!("version {} is disabled", version.kid.version()),
            "enable the signing key's version",
        );
    }
    if !version
        .key_ops
        .iter()
        .any(|o| o.eq_ignore_ascii_case("sign"))
    {
        r.fail(
            "key-ops",
            format!(
                "permitted operations {:?} do not include sign",
                version.key_ops
            ),
            "allow the Sign operation on the key (Permitted operations: Sign, Verify)",
        );
    }
    let digest = crate::audit::merkle::hash(b"byok check-key: audit signing");
    match provider.sign_ps256(&digest).await {
        Ok((kid, sig)) => {
            let ok = ring::signature::RsaPublicKeyComponents {
                n: &version.n,
                e: &version.e,
            }
            .verify(&ring::signature::RSA_PSS_2048_8192_SHA256, b"byok check-key: audit signing", &sig)
            .is_ok();
            if ok {
                r.pass("sign", format!("PS256 signature by {kid} verifies under its public key"));
            } else {
                r.fail("sign", "the signature does not verify under the key's public part", "check that key_name names the signing key");
            }
        }
        Err(e) => r.fail(
            "sign",
            e.to_string(),
            format!(
                "assign app {} a role with Microsoft.KeyVault/vaults/keys/sign/action (and keys/read) on key {} in vault {}",
                key.client_id,
                key.key_name,
                vault_name(key)
            ),
        ),
    }
    r.lines
}

/// Step 1: a Key Vault token with the configured credential; false when there is none.
async fn token_check(
    r: &mut Report<'_>,
    provider: &AzureKeyProvider,
    key: &KeyVaultKey,
    how: &str,
) -> bool {
    match provider.token().await {
        Ok(()) => r.pass(
            "token",
            format!(
                "obtained a Key Vault token for app {} in directory {} with {how}",
                key.client_id, key.entra_tenant_id
            ),
        ),
        Err(KmsError::Revoked {
            why: Revocation::CredentialRejected(code),
            detail,
            ..
        }) => {
            r.fail(
                "token",
                format!("Entra ID refused {how}: {detail}"),
                credential_fix(key, code),
            );
            return false;
        }
        Err(KmsError::Unavailable { why, detail, .. }) => {
            r.fail("token", format!("no token: {detail}"), outage_fix(key, why));
            return false;
        }
        Err(e) => {
            r.fail(
                "token",
                e.to_string(),
                "check entra_tenant_id, client_id and the credential",
            );
            return false;
        }
    }
    true
}

/// Step 2: the key is found (and, under Private Link, the host answers).
async fn key_check(
    r: &mut Report<'_>,
    provider: &AzureKeyProvider,
    key: &KeyVaultKey,
) -> Option<VersionInfo> {
    match provider.get_version(key.key_version.as_deref()).await {
        Ok(v) => {
            if key.is_private_link() {
                r.pass("private-link", format!("{} answers", key.vault_url));
            }
            r.pass("key", format!("found {}", v.kid));
            Some(v)
        }
        Err(KmsError::Revoked { why, detail, .. }) => {
            let fix = match why {
                Revocation::KeyNotFound => format!(
                    "create the key {} in vault {} (Key vaults > {} > Objects > Keys > + Generate/Import), or fix key_name{}",
                    key.key_name,
                    vault_name(key),
                    vault_name(key),
                    if key.key_version.is_some() {
                        " and key_version"
                    } else {
                        ""
                    }
                ),
                Revocation::KeyDisabled => format!(
                    "enable the key {} (Objects > Keys > {})",
                    key.key_name, key.key_name
                ),
                _ => role_fix(key, "read"),
            };
            r.fail("key", format!("GET key {}: {detail}", key.key_name), fix);
            None
        }
        Err(KmsError::Unavailable { why, detail, .. }) => {
            let check = if key.is_private_link() {
                "private-link"
            } else {
                "key"
            };
            r.fail(
                check,
                format!("GET key {}: {detail}", key.key_name),
                outage_fix(key, why),
            );
            None
        }
        Err(e) => {
            r.fail("key", e.to_string(), "check vault_url and key_name");
            None
        }
    }
}

/// Steps 3, 4 and 6: RSA of at least 3072 bits, the version enabled, encrypt and decrypt
/// permitted.
fn key_properties(r: &mut Report<'_>, version: &VersionInfo, key: &KeyVaultKey) {
    // 3. Type and size.
    let bits = version.bits();
    if !version.kty.starts_with("RSA") {
        r.fail(
            "size",
            format!("key type is {}, not RSA", version.kty),
            "create an RSA key (Key type: RSA, Key size: 4096)",
        );
    } else if bits < 3072 {
        r.fail(
            "size",
            format!("RSA-{bits} is below the 3072 bits required"),
            "create a new RSA key with Key size 4096 (recommended) and configure it",
        );
    } else if bits < 4096 {
        r.warn(
            "size",
            format!("RSA-{bits}"),
            "4096 bits is the guide's recommendation for new keys",
        );
    } else {
        r.pass("size", format!("RSA-{bits}"));
    }

    // 4. Enabled.
    if version.enabled {
        r.pass(
            "enabled",
            format!("version {} is enabled", version.kid.version()),
        );
    } else {
        r.fail(
            "enabled",
            format!("version {} is disabled", version.kid.version()),
            format!(
                "enable it: Key vaults > {} > Objects > Keys > {} > {} > Enabled = Yes",
                vault_name(key),
                key.key_name,
                version.kid.version()
            ),
        );
    }

    // permitted operations
    let has = |op: &str| version.key_ops.iter().any(|o| o.eq_ignore_ascii_case(op));
    if has("encrypt") && has("decrypt") {
        r.pass(
            "key-ops",
            format!(
                "permitted operations include encrypt and decrypt ({})",
                version.key_ops.join(", ")
            ),
        );
    } else {
        r.fail(
            "key-ops",
            format!("permitted operations are {:?}", version.key_ops),
            format!("allow Encrypt and Decrypt in the key's Permitted operations (Objects > Keys > {} > {})", key.key_name, version.kid.version()),
        );
    }
}

/// Step 8: soft delete and purge protection.
fn recovery(r: &mut Report<'_>, version: &VersionInfo, key: &KeyVaultKey) {
    match (version.recovery_level.as_deref(), version.recoverable_days) {
        (Some("Recoverable"), Some(days)) if days >= 90 => {
            r.pass("recovery", format!("soft delete on ({days} days) and purge protection on"))
        }
        (Some("Recoverable"), days) => r.warn(
            "recovery",
            format!("purge protection on, but soft delete keeps keys {} days", days.unwrap_or(0)),
            "set the soft-delete retention period to 90 days",
        ),
        (level, days) => r.warn(
            "recovery",
            format!("recoveryLevel {:?}, {} days: a deleted key could be purged", level.unwrap_or("unknown"), days.unwrap_or(0)),
            format!("enable purge protection on vault {} (Key vault > Properties > Purge protection) and keep soft delete at 90 days", vault_name(key)),
        ),
    }
}

/// Checks certificate files: expiry (warn 30 days ahead, fail once expired) and key match.
/// Returns false when no configured certificate can be used at all.
fn certificates(r: &mut Report<'_>, key: &KeyVaultKey) -> bool {
    let Credential::Certificate {
        path,
        next,
        format,
        password,
    } = &key.credential
    else {
        return true;
    };
    let pass = password
        .as_ref()
        .and_then(|p| p.load().ok())
        .map(|p| secrecy::ExposeSecret::expose_secret(&p).to_owned());
    let mut usable = false;
    for p in std::iter::once(path).chain(next.iter()) {
        let fix_new = format!(
            "generate a new certificate (byok cert generate --tenant {}), upload its .cer to app {} (Certificates & secrets > Certificates > Upload certificate) and set it as next_path",
            r.tenant, key.client_id
        );
        match crate::cert::read_credential(
            p,
            *format == crate::config::CertFormat::Pfx,
            pass.as_deref(),
        ) {
            Err(e) => r.fail(
                "certificate",
                e.to_string(),
                "point the credential at the .pem/.pfx written by byok cert generate",
            ),
            Ok((cert, pkey)) => {
                let i = crate::cert::info(&p.display().to_string(), &cert, pkey.as_ref());
                if i.key_matches != Some(true) {
                    r.fail(
                        "certificate",
                        format!(
                            "{}: the private key is missing or is not this certificate's",
                            i.path
                        ),
                        "use the credential file written with the certificate",
                    );
                } else if i.days_left < 0
                    || time::OffsetDateTime::now_utc().unix_timestamp() >= i.not_after_unix
                {
                    r.fail(
                        "certificate",
                        format!("{} (SHA-1 {}) expired at {}", i.path, i.sha1, i.not_after),
                        fix_new,
                    );
                } else if i.days_left <= 30 {
                    usable = true;
                    r.warn(
                        "certificate",
                        format!(
                            "{} (SHA-1 {}) expires at {} (in {} days)",
                            i.path, i.sha1, i.not_after, i.days_left
                        ),
                        fix_new,
                    );
                } else {
                    usable = true;
                    r.pass(
                        "certificate",
                        format!(
                            "{} (SHA-1 {}) valid until {} ({} days)",
                            i.path, i.sha1, i.not_after, i.days_left
                        ),
                    );
                }
            }
        }
    }
    usable
}

fn validity(r: &mut Report<'_>, v: &VersionInfo, key: &KeyVaultKey) {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let date = crate::cert::rfc3339;
    let fix = format!(
        "change the Activation/Expiration dates of key {} (Objects > Keys > {} > {}), or rotate to a new version",
        key.key_name,
        key.key_name,
        v.kid.version()
    );
    match (v.nbf, v.exp) {
        (Some(nbf), _) if now < nbf => {
            r.fail("validity", format!("not active before {}", date(nbf)), fix)
        }
        (_, Some(exp)) if now >= exp => {
            r.fail("validity", format!("expired at {}", date(exp)), fix)
        }
        (_, Some(exp)) if exp - now < 30 * 86_400 => r.warn(
            "validity",
            format!(
                "expires at {} (in {} days)",
                date(exp),
                (exp - now) / 86_400
            ),
            fix,
        ),
        (_, Some(exp)) => r.pass("validity", format!("active, expires at {}", date(exp))),
        _ => r.pass("validity", "active, no expiration date"),
    }
}

async fn round_trip(
    r: &mut Report<'_>,
    provider: &AzureKeyProvider,
    v: &VersionInfo,
    key: &KeyVaultKey,
) {
    let mut probe = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut probe).is_err() {
        r.fail(
            "round-trip",
            "no randomness for the probe",
            "check the system's random source",
        );
        return;
    }
    let fail_fix = |e: &KmsError, action: &str| match e {
        KmsError::Revoked {
            why: Revocation::AccessDenied,
            ..
        } => role_fix(key, action),
        KmsError::Revoked {
            why: Revocation::KeyDisabled,
            ..
        } => format!("enable key {}", key.key_name),
        KmsError::Unavailable { why, .. } => outage_fix(key, *why),
        _ => "see the message".to_owned(),
    };
    let wrapped = match provider.encrypt(&v.kid, &probe, &[]).await {
        Ok(w) => w,
        Err(e) => {
            let fix = fail_fix(&e, "encrypt/action");
            r.fail("round-trip", format!("encrypt failed: {e}"), fix);
            return;
        }
    };
    match provider.decrypt(&wrapped.kek, &wrapped.wrapped, &[]).await {
        Ok(back) if back == probe => r.pass(
            "round-trip",
            format!(
                "encrypt and decrypt of a random 32-byte probe with RSA-OAEP-256 on version {}",
                v.kid.version()
            ),
        ),
        Ok(_) => r.fail(
            "round-trip",
            "decrypt returned other bytes than were encrypted",
            "report this: the vault is not behaving as Key Vault",
        ),
        Err(e) => {
            let fix = fail_fix(&e, "decrypt/action");
            r.fail(
                "round-trip",
                format!("encrypt worked, decrypt failed: {e}"),
                fix,
            );
        }
    }
}

/// Prints lines as text.
pub fn render_text(lines: &[CheckLine]) -> String {
    let mut out = String::new();
    for l in lines {
        let tag = match l.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!(
            "{:<12} {tag}  {:<12} {}\n",
            l.tenant, l.check, l.message
        ));
        if let Some(fix) = &l.fix {
            out.push_str(&format!("{:<12}       {:<12} fix: {fix}\n", "", ""));
        }
    }
    out
}
