//! Turns an Azure SDK error into what it means for the pipeline: the tenant revoked the key
//! (quarantine), the service is unavailable (keep archiving, retry), or the request itself was
//! wrong. Reads Key Vault's `error.innererror.code` from the raw body and Entra's AADSTS codes,
//! never the coarse `Forbidden`, and never azure_core's own `error_code` (which falls back to the
//! status number when the message holds a JSON escape, as Key Vault's RBAC message does).

use std::time::Duration;

use azure_core::error::ErrorKind;

use super::{Outage, Revocation};

/// Entra ID codes that are the customer's decision (or setup) about the app's credential:
/// invalid or expired client secret, certificate not registered or signature invalid, app not
/// found or disabled, directory not found.
const REJECTIONS: [u32; 7] = [7000215, 7000222, 700027, 700016, 90002, 7000112, 700023];

/// What an SDK error means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// The tenant's key cannot be used.
    Revoked(Revocation, String),
    /// The service could not answer.
    Unavailable(Outage, String, Option<Duration>),
    /// The request was refused as invalid (e.g. a ciphertext that does not decrypt).
    Rejected(String),
}

/// Classifies an SDK error.
pub fn classify(err: &azure_core::Error) -> Classified {
    let text = format!("{err:?}");
    tracing::debug!(kind = ?err.kind(), "classifying a Key Vault SDK error");
    if let Some(code) = aadsts(&text) {
        return match code {
            // Entra itself failing is an outage, not a decision.
            50058 | 90033 | 500011 | 50001 | 90015 => {
                Classified::Unavailable(Outage::TokenEndpoint, format!("AADSTS{code}"), None)
            }
            // our clock, not the tenant's choice: keep archiving, and say so loudly
            700024 => {
                tracing::error!(
                    "Entra ID refused the certificate assertion's time window (AADSTS700024): this machine's clock is off by more than 5 minutes; fix NTP (records keep being archived with locally wrapped DEKs meanwhile)"
                );
                Classified::Unavailable(Outage::ClockSkew, first_line(&text, code), None)
            }
            // the customer's side said no: wrong or expired secret, certificate not registered,
            // app or directory gone or disabled
            c if REJECTIONS.contains(&c) => Classified::Revoked(
                Revocation::CredentialRejected(code),
                first_line(&text, code),
            ),
            // anything else is not known to be a decision: an outage until it is
            _ => Classified::Unavailable(Outage::Unclassified, first_line(&text, code), None),
        };
    }
    match err.kind() {
        ErrorKind::HttpResponse {
            status,
            raw_response,
            ..
        } => http_response(u16::from(*status), raw_response.as_deref()),
        ErrorKind::Io | ErrorKind::Connection => {
            // The failed request's URL tells a token request from a vault request.
            let url = text
                .split_once("url: \"")
                .and_then(|(_, rest)| rest.split('"').next())
                .unwrap_or_default();
            let outage = if url.contains("/oauth2/") {
                Outage::TokenEndpoint
            } else {
                Outage::Network
            };
            let detail = if url.is_empty() {
                short(&err.to_string())
            } else {
                format!(
                    "{} ({})",
                    short(&err.to_string()),
                    url.split('?').next().unwrap_or(url)
                )
            };
            Classified::Unavailable(outage, detail, None)
        }
        ErrorKind::Credential => {
            // A credential error without an AADSTS code: the token endpoint did not answer.
            Classified::Unavailable(Outage::TokenEndpoint, short(&err.to_string()), None)
        }
        _ => {
            if text.contains("error sending request") || text.contains("connect") {
                Classified::Unavailable(Outage::Network, short(&err.to_string()), None)
            } else {
                Classified::Rejected(short(&err.to_string()))
            }
        }
    }
}

/// A Key Vault HTTP error answer: 429 and 5xx are outages, 401 a token to renew, 403 and 404
/// the customer's decisions, anything else a rejected request.
fn http_response(status: u16, raw_response: Option<&azure_core::http::RawResponse>) -> Classified {
    let body: serde_json::Value = raw_response
        .and_then(|r| serde_json::from_slice(r.body()).ok())
        .unwrap_or_default();
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let inner = body["error"]["innererror"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let detail = format!(
        "{status} {code}{}{}: {message}",
        if inner.is_empty() { "" } else { "/" },
        inner
    );
    match status {
        429 => {
            let retry_after = raw_response.and_then(|r| {
                r.headers()
                    .get_optional_str(&azure_core::http::headers::RETRY_AFTER)
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs)
            });
            Classified::Unavailable(Outage::Throttled, detail, retry_after)
        }
        500..=599 => Classified::Unavailable(Outage::ServerError, detail, None),
        // a token the vault did not take: renewed and retried, never a revocation
        401 => Classified::Unavailable(Outage::Unauthorized, detail, None),
        403 => {
            let why = match inner.as_str() {
                "KeyDisabled" => Revocation::KeyDisabled,
                "KeyExpired" | "KeyNotYetValid" => Revocation::KeyExpired,
                _ => Revocation::AccessDenied,
            };
            Classified::Revoked(why, detail)
        }
        404 => Classified::Revoked(Revocation::KeyNotFound, detail),
        _ => Classified::Rejected(detail),
    }
}

fn short(s: &str) -> String {
    s.chars().take(300).collect()
}

fn first_line(text: &str, code: u32) -> String {
    let needle = format!("AADSTS{code}");
    let start = text.find(&needle).unwrap_or(0);
    text[start..]
        .split(['.', '\\', '"'])
        .next()
        .unwrap_or(&needle)
        .chars()
        .take(200)
        .collect()
}

/// The first AADSTS code in a text.
fn aadsts(text: &str) -> Option<u32> {
    let i = text.find("AADSTS")?;
    let digits: String = text[i + 6..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_customers_decisions_are_revocations() {
        let entra = |code: u32| {
            azure_core::Error::with_message(
                ErrorKind::Credential,
                format!("Authentication failed: AADSTS{code}: words"),
            )
        };
        assert!(matches!(
            classify(&entra(7000215)),
            Classified::Revoked(Revocation::CredentialRejected(7000215), _)
        ));
        assert!(matches!(
            classify(&entra(700024)),
            Classified::Unavailable(Outage::ClockSkew, _, None)
        ));
        assert!(matches!(
            classify(&entra(123456)),
            Classified::Unavailable(Outage::Unclassified, _, None)
        ));
        assert!(matches!(
            classify(&entra(50058)),
            Classified::Unavailable(Outage::TokenEndpoint, _, None)
        ));
    }

    #[test]
    fn aadsts_codes_are_found() {
        assert_eq!(
            aadsts("Authentication failed: AADSTS7000215: Invalid client secret"),
            Some(7000215)
        );
        assert_eq!(aadsts("no code"), None);
    }
}
