//! The Key Vault RSA crypto operations (`encrypt`, `decrypt`, `wrapkey`, `unwrapkey`, `sign`,
//! `verify`) on a key version, with the real service's checks: RBAC data action, `key_ops`, state and expiry, then
//! the algorithm's input limits.
//!
//! It must never answer an operation the real service would refuse.

use super::error::EmuError;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hyper::StatusCode;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, Pkcs1v15Encrypt, RsaPrivateKey};
use serde_json::{Value, json};

use super::model::now_secs;
use super::vault::{bad, kv_error, not_found};
use super::{Reply, Shared};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum CryptoOp {
    Encrypt,
    Decrypt,
    Wrap,
    Unwrap,
    Sign,
    Verify,
}

impl CryptoOp {
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "encrypt" => Some(Self::Encrypt),
            "decrypt" => Some(Self::Decrypt),
            "wrapkey" => Some(Self::Wrap),
            "unwrapkey" => Some(Self::Unwrap),
            "sign" => Some(Self::Sign),
            "verify" => Some(Self::Verify),
            _ => None,
        }
    }
    pub(super) fn key_op(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Wrap => "wrapKey",
            Self::Unwrap => "unwrapKey",
            Self::Sign => "sign",
            Self::Verify => "verify",
        }
    }
    pub(super) fn private(self) -> bool {
        matches!(self, Self::Decrypt | Self::Unwrap | Self::Sign)
    }
    /// The name in request counters and the RBAC data action.
    pub(super) fn counter_and_action(self) -> (&'static str, &'static str) {
        use super::model::actions;
        match self {
            Self::Encrypt => ("encrypt", actions::ENCRYPT),
            Self::Decrypt => ("decrypt", actions::DECRYPT),
            Self::Wrap => ("wrapkey", actions::WRAP),
            Self::Unwrap => ("unwrapkey", actions::UNWRAP),
            Self::Sign => ("sign", actions::SIGN),
            Self::Verify => ("verify", actions::VERIFY),
        }
    }
}

pub(super) async fn crypto(
    shared: &Shared,
    vault: &str,
    base: &str,
    name: &str,
    version: &str,
    kind: CryptoOp,
    body: &Value,
) -> Reply {
    let (key, kid): (Arc<RsaPrivateKey>, String) = {
        let mut world = shared.world();
        let v = match world.vaults.get_mut(vault) {
            Some(v) => v,
            None => return not_found(name, None),
        };
        let refuse_disabled_encrypt = v.refuse_encrypt_when_disabled;
        let Some(kv) = v
            .keys
            .get_mut(name)
            .and_then(|k| k.version_mut(Some(version)))
        else {
            return not_found(name, Some(version));
        };
        if let Err(refused) = allowed(kv, kind, refuse_disabled_encrypt) {
            return refused;
        }
        let key = match kv.private() {
            Ok(k) => k,
            Err(e) => {
                return kv_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalError",
                    None,
                    &e.to_string(),
                );
            }
        };
        (key, format!("{base}/keys/{name}/{}", kv.version))
    };
    if matches!(kind, CryptoOp::Sign | CryptoOp::Verify) {
        return signature(key, kid, kind, body.clone()).await;
    }
    let alg = body["alg"].as_str().unwrap_or_default().to_owned();
    if !matches!(alg.as_str(), "RSA-OAEP-256" | "RSA-OAEP" | "RSA1_5") {
        return bad(&format!(
            "The algorithm {alg:?} is not supported for RSA keys; use RSA-OAEP-256, RSA-OAEP or RSA1_5."
        ));
    }
    let Some(value) = body["value"].as_str() else {
        return bad("The request has no 'value'.");
    };
    let Ok(input) = URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(value))
    else {
        return bad("'value' is not base64url.");
    };
    let private_op = kind.private();
    let result = tokio::task::spawn_blocking(move || rsa_op(&key, &alg, private_op, &input)).await;
    match result {
        Ok(Ok(out)) => Reply::json(
            StatusCode::OK,
            json!({"kid": kid, "value": URL_SAFE_NO_PAD.encode(out)}),
        ),
        Ok(Err(e)) => bad(&e.to_string()),
        Err(_) => kv_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            None,
            "the crypto operation failed",
        ),
    }
}

/// `sign` or `verify`, off the request threads.
async fn signature(key: Arc<RsaPrivateKey>, kid: String, kind: CryptoOp, body: Value) -> Reply {
    let result = tokio::task::spawn_blocking(move || match kind {
        CryptoOp::Sign => super::signing::sign(&key, &body),
        _ => super::signing::verify(&key, &body),
    })
    .await;
    match result {
        Ok(Ok(value)) if kind == CryptoOp::Sign => {
            Reply::json(StatusCode::OK, json!({"kid": kid, "value": value}))
        }
        Ok(Ok(value)) => Reply::json(StatusCode::OK, json!({"value": value})),
        Ok(Err(e)) => bad(&e.to_string()),
        Err(_) => kv_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            None,
            "the signing operation failed",
        ),
    }
}

/// Whether the key version permits `kind` now, in the real service's order: `key_ops`, then
/// enabled (encrypt on a disabled key only where the vault refuses it), then the dates (an
/// expired key still decrypts).
fn allowed(
    kv: &super::model::KeyVersion,
    kind: CryptoOp,
    refuse_disabled_encrypt: bool,
) -> Result<(), Reply> {
    let op = kind.key_op();
    if !kv.key_ops.iter().any(|o| o.eq_ignore_ascii_case(op)) {
        return Err(kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("KeyOperationForbidden"),
            &format!(
                "Operation {op} is not allowed on the key. The key's key_ops are {:?}.",
                kv.key_ops
            ),
        ));
    }
    if !kv.attributes.enabled
        && (kind.private() || kind == CryptoOp::Verify || refuse_disabled_encrypt)
    {
        return Err(kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("KeyDisabled"),
            &format!("Operation {op} is not allowed on a disabled key."),
        ));
    }
    match kv.in_date(now_secs()) {
        Err("KeyNotYetValid") => {
            return Err(kv_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                Some("KeyNotYetValid"),
                &format!("Operation {op} is not allowed on a key that is not yet valid (nbf)."),
            ));
        }
        // after `exp` only decrypt, unwrap and verify still work
        Err(code) if matches!(kind, CryptoOp::Encrypt | CryptoOp::Wrap | CryptoOp::Sign) => {
            return Err(kv_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                Some(code),
                &format!("Operation {op} is not allowed on an expired key."),
            ));
        }
        _ => {}
    }
    Ok(())
}

fn rsa_op(
    key: &RsaPrivateKey,
    alg: &str,
    private: bool,
    input: &[u8],
) -> Result<Vec<u8>, EmuError> {
    let mut rng = rand::rngs::OsRng;
    let k = key.size();
    if private {
        if input.len() != k {
            return Err(EmuError::CiphertextLength {
                got: input.len(),
                need: k,
                bits: k * 8,
            });
        }
        let r = match alg {
            "RSA-OAEP-256" => key.decrypt_blinded(&mut rng, Oaep::new::<sha2::Sha256>(), input),
            "RSA-OAEP" => key.decrypt_blinded(&mut rng, Oaep::new::<sha1::Sha1>(), input),
            _ => key.decrypt_blinded(&mut rng, Pkcs1v15Encrypt, input),
        };
        r.map_err(|_| EmuError::DoesNotDecrypt)
    } else {
        let public = key.to_public_key();
        let max = match alg {
            "RSA-OAEP-256" => k.saturating_sub(66),
            "RSA-OAEP" => k.saturating_sub(42),
            _ => k.saturating_sub(11),
        };
        if input.len() > max {
            return Err(EmuError::PlaintextLength {
                got: input.len(),
                alg: alg.to_owned(),
                max,
            });
        }
        let r = match alg {
            "RSA-OAEP-256" => public.encrypt(&mut rng, Oaep::new::<sha2::Sha256>(), input),
            "RSA-OAEP" => public.encrypt(&mut rng, Oaep::new::<sha1::Sha1>(), input),
            _ => public.encrypt(&mut rng, Pkcs1v15Encrypt, input),
        };
        r.map_err(|e| EmuError::Rsa(e.to_string()))
    }
}
