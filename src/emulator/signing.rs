//! Key Vault `sign` and `verify` with RSA keys (PS256/384/512, RS256/384/512): the request
//! carries the digest, as the real service's; its length must match the algorithm's hash.
//!
//! It must never sign a digest of the wrong length or with an algorithm Key Vault does not offer.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::{Pkcs1v15Sign, RsaPrivateKey, pss::Pss};
use serde_json::{Value, json};

use super::error::EmuError;

/// The algorithms and their digest lengths.
fn digest_len(alg: &str) -> Option<usize> {
    match alg {
        "PS256" | "RS256" => Some(32),
        "PS384" | "RS384" => Some(48),
        "PS512" | "RS512" => Some(64),
        _ => None,
    }
}

fn b64_field(body: &Value, name: &'static str) -> Result<Vec<u8>, EmuError> {
    let text = body[name]
        .as_str()
        .ok_or(EmuError::Signing(format!("The request has no '{name}'.")))?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .or_else(|_| STANDARD.decode(text))
        .map_err(|_| EmuError::Signing(format!("'{name}' is not base64url.")))
}

/// The algorithm and digest of a request, checked.
fn alg_and_digest(body: &Value, field: &'static str) -> Result<(String, Vec<u8>), EmuError> {
    let alg = body["alg"].as_str().unwrap_or_default().to_owned();
    let Some(len) = digest_len(&alg) else {
        return Err(EmuError::Signing(format!(
            "The algorithm {alg:?} is not supported for signing with RSA keys; use PS256, PS384, PS512, RS256, RS384 or RS512."
        )));
    };
    let digest = b64_field(body, field)?;
    if digest.len() != len {
        return Err(EmuError::Signing(format!(
            "The digest is {} bytes; {alg} takes a digest of {len} bytes.",
            digest.len()
        )));
    }
    Ok((alg, digest))
}

/// `sign`: the response body's `value`.
pub(super) fn sign(key: &RsaPrivateKey, body: &Value) -> Result<Value, EmuError> {
    let (alg, digest) = alg_and_digest(body, "value")?;
    let mut rng = rand::rngs::OsRng;
    let sig = match alg.as_str() {
        "PS256" => key.sign_with_rng(&mut rng, Pss::new::<sha2::Sha256>(), &digest),
        "PS384" => key.sign_with_rng(&mut rng, Pss::new::<sha2::Sha384>(), &digest),
        "PS512" => key.sign_with_rng(&mut rng, Pss::new::<sha2::Sha512>(), &digest),
        "RS256" => key.sign(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest),
        "RS384" => key.sign(Pkcs1v15Sign::new::<sha2::Sha384>(), &digest),
        _ => key.sign(Pkcs1v15Sign::new::<sha2::Sha512>(), &digest),
    }
    .map_err(|e| EmuError::Rsa(e.to_string()))?;
    Ok(json!(URL_SAFE_NO_PAD.encode(sig)))
}

/// `verify`: the response body's `value` (whether the signature verifies).
pub(super) fn verify(key: &RsaPrivateKey, body: &Value) -> Result<Value, EmuError> {
    let (alg, digest) = alg_and_digest(body, "digest")?;
    let sig = b64_field(body, "value")?;
    let public = key.to_public_key();
    let ok = match alg.as_str() {
        "PS256" => public.verify(Pss::new::<sha2::Sha256>(), &digest, &sig),
        "PS384" => public.verify(Pss::new::<sha2::Sha384>(), &digest, &sig),
        "PS512" => public.verify(Pss::new::<sha2::Sha512>(), &digest, &sig),
        "RS256" => public.verify(Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &sig),
        "RS384" => public.verify(Pkcs1v15Sign::new::<sha2::Sha384>(), &digest, &sig),
        _ => public.verify(Pkcs1v15Sign::new::<sha2::Sha512>(), &digest, &sig),
    }
    .is_ok();
    Ok(json!(ok))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    #[test]
    fn signs_and_verifies_each_algorithm_and_refuses_wrong_digests() {
        let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
        for (alg, digest) in [
            ("PS256", sha2::Sha256::digest(b"statement").to_vec()),
            ("RS256", sha2::Sha256::digest(b"statement").to_vec()),
            ("PS512", sha2::Sha512::digest(b"statement").to_vec()),
        ] {
            let d = URL_SAFE_NO_PAD.encode(&digest);
            let sig = sign(&key, &json!({"alg": alg, "value": d})).unwrap();
            let ok = verify(&key, &json!({"alg": alg, "digest": d, "value": sig})).unwrap();
            assert_eq!(ok, json!(true), "{alg}");
            let other = URL_SAFE_NO_PAD.encode(vec![7u8; digest.len()]);
            let ok = verify(&key, &json!({"alg": alg, "digest": other, "value": sig})).unwrap();
            assert_eq!(ok, json!(false), "{alg}");
        }
        let short = URL_SAFE_NO_PAD.encode([1u8; 20]);
        assert!(sign(&key, &json!({"alg": "PS256", "value": short})).is_err());
        assert!(sign(&key, &json!({"alg": "ES256", "value": short})).is_err());
    }
}
