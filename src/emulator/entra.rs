//! Entra ID: the client-credentials token endpoint (`POST /{tenant}/oauth2/v2.0/token`) with a
//! client secret or a client assertion signed by a certificate uploaded to the app, the OpenID
//! configuration document MSAL reads, and the access tokens the vaults check.
//!
//! Errors carry Entra's real AADSTS codes and JSON shape, so SDKs surface the same messages as
//! against Azure.
//!
//! It must never issue a token for a credential it did not verify (secret, or an assertion signed
//! by an uploaded certificate).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use hyper::{Method, StatusCode};
use rsa::{Pkcs1v15Sign, Pss};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::model::now_secs;
use super::{Reply, Req, Shared};

/// The resource a vault token is for.
pub(super) const VAULT_RESOURCE: &str = "https://vault.azure.net";

/// The resource the vaults' 401 challenge names. On a port other than 443 it carries the port,
/// so that SDKs comparing the challenge resource with the vault's host and port (Python's does)
/// accept `https://<vault>.vault.azure.net:<port>`; on 443 it is Key Vault's own.
pub(super) fn vault_resource(port: u16) -> String {
    if port == 443 {
        VAULT_RESOURCE.to_owned()
    } else {
        format!("{VAULT_RESOURCE}:{port}")
    }
}
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew tolerated on assertions, seconds.
const SKEW: i64 = 300;

pub(super) fn handle(shared: &Shared, req: &Req) -> Reply {
    let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
    match (&req.method, segs.as_slice()) {
        (&Method::POST, [tenant, "oauth2", "v2.0", "token"]) => token(shared, req, tenant),
        (&Method::POST, [tenant, "oauth2", "token"]) => token(shared, req, tenant),
        (&Method::GET, [tenant, "v2.0", ".well-known", "openid-configuration"]) => {
            openid_configuration(shared, req, tenant)
        }
        (&Method::GET, ["common", "discovery", "instance"]) => instance_discovery(req),
        _ => Reply::json(
            StatusCode::NOT_FOUND,
            json!({"error": "not_found", "error_description": format!("the emulator serves no {} {}", req.method, req.path)}),
        ),
    }
}

fn base(shared: &Shared, req: &Req) -> String {
    let host = if req.host.is_empty() {
        format!("127.0.0.1:{}", shared.port)
    } else {
        req.host.clone()
    };
    format!("https://{host}")
}

fn openid_configuration(shared: &Shared, req: &Req, tenant: &str) -> Reply {
    let tenant = tenant.to_ascii_lowercase();
    if !shared.world().tenants.contains_key(&tenant) {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    }
    let b = base(shared, req);
    Reply::json(
        StatusCode::OK,
        json!({
            "token_endpoint": format!("{b}/{tenant}/oauth2/v2.0/token"),
            "authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/authorize"),
            "device_authorization_endpoint": format!("{b}/{tenant}/oauth2/v2.0/devicecode"),
            "issuer": format!("{b}/{tenant}/v2.0"),
            "jwks_uri": format!("{b}/{tenant}/discovery/v2.0/keys"),
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
        }),
    )
}

fn instance_discovery(req: &Req) -> Reply {
    let host = req.host.clone();
    Reply::json(
        StatusCode::OK,
        json!({
            "tenant_discovery_endpoint": format!("https://{host}/common/v2.0/.well-known/openid-configuration"),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }),
    )
}

/// Entra's error JSON.
fn aad_error(status: StatusCode, error: &str, code: u32, text: &str) -> Reply {
    let trace = uuid::Uuid::new_v4();
    let corr = uuid::Uuid::new_v4();
    let ts = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    Reply::json(
        status,
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: {text} Trace ID: {trace} Correlation ID: {corr} Timestamp: {ts}"),
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace.to_string(),
            "correlation_id": corr.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

fn token(shared: &Shared, req: &Req, tenant: &str) -> Reply {
    let tenant = tenant.to_ascii_lowercase();
    let form: std::collections::HashMap<String, String> = url::form_urlencoded::parse(&req.body)
        .into_owned()
        .collect();
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let client_id = get("client_id").to_ascii_lowercase();

    let mut world = shared.world();
    let Some(t) = world.tenants.get_mut(&tenant) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        );
    };
    if get("grant_type") != "client_credentials" {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type. This emulator supports client_credentials.",
        );
    }
    let Some(app) = t.apps.get_mut(&client_id) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700016,
            &format!(
                "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."
            ),
        );
    };
    let scope = get("scope");
    let resource = scope
        .split(' ')
        .find_map(|s| s.strip_suffix("/.default"))
        .map(|r| r.trim_end_matches('/').to_owned());
    let own = vault_resource(shared.port);
    let Some(resource) = resource.filter(|r| r == VAULT_RESOURCE || *r == own) else {
        return aad_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1002012,
            &format!(
                "The provided value for scope {scope} is not valid. This emulator issues tokens for {own}/.default."
            ),
        );
    };

    if let Err(reply) = authenticate(shared, req, &tenant, &client_id, app, &form) {
        return reply;
    }

    let lifetime = shared.token_lifetime.as_secs() as i64;
    let now = now_secs();
    let claims = json!({
        "aud": resource,
        "iss": format!("https://sts.windows.net/{tenant}/"),
        "iat": now, "nbf": now, "exp": now + lifetime,
        "appid": client_id, "oid": client_id, "sub": client_id, "tid": tenant,
        "ver": "1.0",
    });
    let token = issue(&shared.token_key, &claims);
    Reply::json(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}),
    )
}

/// The client's credential: a secret of the app, or an assertion signed by one of its
/// registered certificates.
fn authenticate(
    shared: &Shared,
    req: &Req,
    tenant: &str,
    client_id: &str,
    app: &mut super::model::App,
    form: &std::collections::HashMap<String, String>,
) -> Result<(), Reply> {
    let get = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if !get("client_secret").is_empty() {
        let given = get("client_secret").as_bytes();
        let ok = app
            .secrets
            .iter()
            .any(|s| super::constant_time_eq(s.as_bytes(), given));
        if !ok {
            return Err(aad_error(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                &format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            ));
        }
    } else if !get("client_assertion").is_empty() {
        if get("client_assertion_type") != ASSERTION_TYPE {
            return Err(aad_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                "client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            ));
        }
        let audiences = [
            format!("{}/{tenant}/oauth2/v2.0/token", base(shared, req)),
            format!("{}/{tenant}/oauth2/token", base(shared, req)),
            format!("https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"),
            format!("https://login.microsoftonline.com/{tenant}/v2.0"),
        ];
        check_assertion(get("client_assertion"), client_id, &audiences, app)?;
    } else {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        ));
    }
    Ok(())
}

fn b64url_json(part: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Validates a certificate-signed client assertion: thumbprint registered, signature, `aud`,
/// `iss` = `sub` = client id, `nbf`/`exp`.
fn check_assertion(
    jwt: &str,
    client_id: &str,
    audiences: &[String],
    app: &mut super::model::App,
) -> Result<(), Reply> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(malformed("not three dot-separated parts"));
    };
    let header = b64url_json(h).ok_or_else(|| malformed("header is not base64url JSON"))?;
    let claims = b64url_json(p).ok_or_else(|| malformed("payload is not base64url JSON"))?;
    let sig = URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| malformed("signature is not base64url"))?;
    let alg = header["alg"].as_str().unwrap_or_default();
    // x5t (SHA-1) in standard or URL-safe base64; x5t#S256 (SHA-256).
    let decode_any = |v: &str| {
        URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .or_else(|_| STANDARD.decode(v))
            .ok()
    };
    let sha1 = header["x5t"].as_str().and_then(decode_any);
    let sha256 = header["x5t#S256"].as_str().and_then(decode_any);
    if sha1.is_none() && sha256.is_none() {
        return Err(malformed("the header has neither x5t nor x5t#S256"));
    }
    let shown = header["x5t"]
        .as_str()
        .or(header["x5t#S256"].as_str())
        .unwrap_or_default()
        .to_owned();
    let cert = app.certificates.iter_mut().find(|c| {
        sha1.as_deref()
            .is_some_and(|t| t == c.sha1_bytes().as_slice())
            || sha256
                .as_deref()
                .is_some_and(|t| t == c.sha256_bytes().as_slice())
    });
    let Some(cert) = cert else {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            &format!(
                "The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{shown}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
            ),
        ));
    };
    let key = cert
        .public_key()
        .map_err(|_| malformed("the registered certificate cannot be read"))?;
    let digest = Sha256::digest(format!("{h}.{p}").as_bytes());
    let verified = match alg {
        "RS256" => key
            .verify(Pkcs1v15Sign::new::<Sha256>(), &digest, &sig)
            .is_ok(),
        "PS256" => key.verify(Pss::new::<Sha256>(), &digest, &sig).is_ok(),
        other => return Err(malformed(&format!("alg {other:?} is not RS256 or PS256"))),
    };
    if !verified {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700027,
            &format!(
                "Client assertion failed signature validation. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{shown}']"
            ),
        ));
    }
    check_claims(&claims, client_id, audiences)
}

/// The assertion's audience, issuer and subject, and its time window (with Entra's skew).
fn check_claims(claims: &Value, client_id: &str, audiences: &[String]) -> Result<(), Reply> {
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !audiences.iter().any(|a| a == aud) {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700212,
            &format!(
                "The audience claim {aud:?} of the client assertion is not the token endpoint {:?}.",
                audiences[0]
            ),
        ));
    }
    let iss = claims["iss"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let sub = claims["sub"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if iss != client_id || sub != client_id {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700021,
            &format!(
                "Client assertion application identifier doesn't match 'client_id' parameter: iss {iss:?}, sub {sub:?}, client_id {client_id:?}."
            ),
        ));
    }
    let now = now_secs();
    // exp is required; nbf is optional (MSAL Python sends iat instead).
    // NumericDate may carry a fraction (MSAL Python sends floats).
    let secs = |v: &Value| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64));
    let Some(exp) = secs(&claims["exp"]) else {
        return Err(malformed("exp is required"));
    };
    let nbf = secs(&claims["nbf"])
        .or(secs(&claims["iat"]))
        .unwrap_or(i64::MIN);
    if now + SKEW < nbf || now - SKEW >= exp {
        return Err(aad_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            700024,
            &format!(
                "Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."
            ),
        ));
    }
    Ok(())
}

/// Entra's answer to an assertion it cannot read (AADSTS50027).
fn malformed(why: &str) -> Reply {
    aad_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        50027,
        &format!("JWT token is invalid or malformed: {why}."),
    )
}

type HmacSha256 = Hmac<Sha256>;

fn issue(key: &[u8], claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"HS256","kid":"byok-emulator"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing = format!("{header}.{payload}");
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(signing.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing}.{sig}")
}

/// Claims of a valid access token presented to a vault.
pub(super) struct TokenClaims {
    pub tenant: String,
    pub app: String,
}

/// Why a token was refused (the vault answers 401 with its challenge).
pub(super) fn verify(key: &[u8], port: u16, token: &str) -> Result<TokenClaims, &'static str> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err("AKV10000: Request is missing a Bearer or PoP token.");
    };
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| "AKV10022: Invalid audience.")?;
    mac.update(format!("{h}.{p}").as_bytes());
    let sig = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| "AKV10016: Bearer token signature is not valid.")?;
    mac.verify_slice(&sig)
        .map_err(|_| "AKV10016: Bearer token signature is not valid.")?;
    let claims = b64url_json(p).ok_or("AKV10000: Request is missing a Bearer or PoP token.")?;
    let aud = claims["aud"].as_str().unwrap_or_default();
    if aud != VAULT_RESOURCE && aud != vault_resource(port) {
        return Err("AKV10022: Invalid audience.");
    }
    if claims["exp"].as_i64().unwrap_or(0) <= now_secs() {
        return Err("AKV10032: Token expired.");
    }
    Ok(TokenClaims {
        tenant: claims["tid"].as_str().unwrap_or_default().to_owned(),
        app: claims["appid"].as_str().unwrap_or_default().to_owned(),
    })
}
