//! The Key Vault emulator through Microsoft's Rust SDK (azure_identity +
//! azure_security_keyvault_keys), over HTTPS, unchanged; raw HTTPS only where a shape is tested
//! that the SDK does not produce.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// The SDK models are #[non_exhaustive]: fields can only be set after Default::default().
#![allow(clippy::field_reassign_with_default)]

mod common;

use std::sync::Arc;

use azure_core::credentials::{SecretBytes, TokenCredential};
use azure_identity::{ClientCertificateCredential, ClientCertificateCredentialOptions};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, EncryptionAlgorithm, ImportKeyParameters, JsonWebKey, KeyAttributes,
    KeyOperationParameters, KeyType, UpdateKeyPropertiesParameters,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::emu::*;
use futures::TryStreamExt;
use serde_json::json;

const BYOK_VERSION: &str = "78deebed173b48e48f55abf87ed4cf71";

fn params(alg: EncryptionAlgorithm, value: Vec<u8>) -> KeyOperationParameters {
    KeyOperationParameters {
        algorithm: Some(alg),
        value: Some(value),
        ..Default::default()
    }
}

fn oaep256(value: Vec<u8>) -> KeyOperationParameters {
    params(EncryptionAlgorithm::RsaOaep256, value)
}

fn scope(emu: &Emu) -> String {
    format!("https://vault.azure.net:{}/.default", emu.port())
}

/// A PKCS#12 (DER) of a PEM holding a certificate and its key.
fn pkcs12_of_pem(pem: &[u8]) -> Vec<u8> {
    let cert = openssl::x509::X509::from_pem(pem).unwrap();
    let key = openssl::pkey::PKey::private_key_from_pem(pem).unwrap();
    openssl::pkcs12::Pkcs12::builder()
        .name("byok")
        .pkey(&key)
        .cert(&cert)
        .build2("")
        .unwrap()
        .to_der()
        .unwrap()
}

/// A new RSA key and self-signed certificate (PEM: cert then key).
fn new_cert_pem(cn: &str) -> Vec<u8> {
    use openssl::{
        asn1::Asn1Time,
        bn::BigNum,
        hash::MessageDigest,
        pkey::PKey,
        rsa::Rsa,
        x509::{X509, X509NameBuilder},
    };
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(7).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    [
        cert.to_pem().unwrap(),
        key.private_key_to_pem_pkcs8().unwrap(),
    ]
    .concat()
}

fn cert_credential(
    emu: &Emu,
    tenant: &str,
    app: &str,
    pem: &[u8],
) -> Arc<ClientCertificateCredential> {
    ClientCertificateCredential::new(
        tenant.to_owned(),
        app.to_owned(),
        SecretBytes::new(pkcs12_of_pem(pem)),
        Some(ClientCertificateCredentialOptions {
            client_options: emu.client_options(),
            ..Default::default()
        }),
    )
    .unwrap()
}

#[tokio::test]
async fn secret_credential_gets_the_seed_key_and_round_trips_rsa_oaep_256() {
    let emu = Emu::start().await;
    let client = emu.acme();
    let key = client
        .get_key("byok-key", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let jwk = key.key.unwrap();
    let kid = jwk.kid.clone().unwrap();
    assert_eq!(
        kid,
        format!(
            "{}/keys/byok-key/{BYOK_VERSION}",
            emu.running.vault_url("acme-vault")
        )
    );
    assert_eq!(jwk.n.unwrap().len(), 512, "RSA-4096 modulus");
    assert_eq!(jwk.e.unwrap(), vec![1, 0, 1]);
    let attrs = key.attributes.unwrap();
    assert_eq!(attrs.enabled, Some(true));
    assert_eq!(attrs.recoverable_days, Some(90));
    assert!(attrs.created.is_some());

    let dek = vec![7u8; 32];
    let wrapped = client
        .encrypt("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let ct = wrapped.result.clone().unwrap();
    assert_eq!(ct.len(), 512);
    assert_eq!(wrapped.kid.as_deref(), Some(kid.as_str()));
    let plain = client
        .decrypt(
            "byok-key",
            BYOK_VERSION,
            oaep256(ct).try_into().unwrap(),
            None,
        )
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(plain.result.unwrap(), dek);
}

#[tokio::test]
async fn certificate_credential_works_only_while_the_certificate_is_uploaded() {
    let emu = Emu::start().await;
    // the seed's uploaded certificate
    let seeded = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/example/acme.pem"
    ))
    .unwrap();
    let client = emu.key_client(
        "acme-vault",
        cert_credential(&emu, ACME_TENANT, ACME_APP, &seeded),
    );
    let key = client
        .get_key("byok-key", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert!(key.key.unwrap().kid.unwrap().ends_with(BYOK_VERSION));

    // a new certificate is refused until uploaded (AADSTS700027), then accepted, then refused again
    let fresh = new_cert_pem("byok test rotation");
    let cred = cert_credential(&emu, ACME_TENANT, ACME_APP, &fresh);
    let err = cred.get_token(&[&scope(&emu)], None).await.unwrap_err();
    assert!(err.to_string().contains("AADSTS700027"), "{err}");
    let up = emu
        .admin
        .upload_certificate(ACME_TENANT, ACME_APP, fresh.clone())
        .await
        .unwrap();
    let thumb = up["sha1"].as_str().unwrap().to_owned();
    let cred = cert_credential(&emu, ACME_TENANT, ACME_APP, &fresh);
    cred.get_token(&[&scope(&emu)], None).await.unwrap();
    emu.admin
        .remove_certificate(ACME_TENANT, ACME_APP, &thumb)
        .await
        .unwrap();
    let cred = cert_credential(&emu, ACME_TENANT, ACME_APP, &fresh);
    let err = cred.get_token(&[&scope(&emu)], None).await.unwrap_err();
    assert!(err.to_string().contains("AADSTS700027"), "{err}");
}

#[tokio::test]
async fn entra_errors_carry_real_aadsts_codes() {
    let emu = Emu::start().await;
    let s = scope(&emu);
    let bad_secret = emu.secret_credential(ACME_TENANT, ACME_APP, "wrong");
    let e = bad_secret
        .get_token(&[&s], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AADSTS7000215"), "{e}");
    let unknown_app =
        emu.secret_credential(ACME_TENANT, "00000000-0000-4000-8000-000000000000", "x");
    let e = unknown_app
        .get_token(&[&s], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AADSTS700016"), "{e}");
    let unknown_tenant = emu.secret_credential(
        "11111111-2222-4333-8444-555555555555",
        ACME_APP,
        ACME_SECRET,
    );
    let e = unknown_tenant
        .get_token(&[&s], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AADSTS90002"), "{e}");
    // a rotated secret: the old one stops working once removed
    emu.admin
        .add_secret(ACME_TENANT, ACME_APP, "rotated-secret")
        .await
        .unwrap();
    emu.secret_credential(ACME_TENANT, ACME_APP, "rotated-secret")
        .get_token(&[&s], None)
        .await
        .unwrap();
    emu.admin
        .remove_secrets(ACME_TENANT, ACME_APP, Some(ACME_SECRET))
        .await
        .unwrap();
    let e = emu
        .secret_credential(ACME_TENANT, ACME_APP, ACME_SECRET)
        .get_token(&[&s], None)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("AADSTS7000215"), "{e}");
    // no credential at all
    let r = emu
        .http
        .post(format!(
            "{}/{ACME_TENANT}/oauth2/v2.0/token",
            emu.running.authority()
        ))
        .form(&[
            ("client_id", ACME_APP),
            ("grant_type", "client_credentials"),
            ("scope", s.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error_codes"][0], 7000218);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .starts_with("AADSTS7000218:")
    );
}

/// Builds a client assertion by hand, to test what the SDK never sends.
fn assertion(
    pem: &[u8],
    header: serde_json::Value,
    claims: serde_json::Value,
    pss: bool,
) -> String {
    use openssl::{hash::MessageDigest, pkey::PKey, rsa::Padding, sign::Signer};
    let key = PKey::private_key_from_pem(pem).unwrap();
    let signing = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &key).unwrap();
    if pss {
        signer.set_rsa_padding(Padding::PKCS1_PSS).unwrap();
        signer
            .set_rsa_pss_saltlen(openssl::sign::RsaPssSaltlen::DIGEST_LENGTH)
            .unwrap();
    }
    signer.update(signing.as_bytes()).unwrap();
    format!(
        "{signing}.{}",
        URL_SAFE_NO_PAD.encode(signer.sign_to_vec().unwrap())
    )
}

#[tokio::test]
async fn client_assertions_are_checked_like_entra_does() {
    let emu = Emu::start().await;
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/example/acme.pem"
    ))
    .unwrap();
    let cert = openssl::x509::X509::from_pem(&pem).unwrap();
    let sha1 = cert
        .digest(openssl::hash::MessageDigest::sha1())
        .unwrap()
        .to_vec();
    let sha256 = cert
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap()
        .to_vec();
    let aud = format!(
        "{}/{ACME_TENANT}/oauth2/v2.0/token",
        emu.running.authority()
    );
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let claims = |aud: &str, nbf: i64, exp: i64, iss: &str| json!({"aud": aud, "iss": iss, "sub": iss, "jti": uuid::Uuid::new_v4().to_string(), "nbf": nbf, "exp": exp});
    let post = |jwt: String| {
        let s = scope(&emu);
        let url = aud.clone();
        let http = emu.http.clone();
        async move {
            let r = http
                .post(url)
                .form(&[
                    ("client_id", ACME_APP),
                    ("grant_type", "client_credentials"),
                    ("scope", s.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", jwt.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap();
            (status, body["error_codes"][0].as_u64().unwrap_or(0), body)
        }
    };
    let std_b64 = base64::engine::general_purpose::STANDARD.encode(&sha1);
    let url_b64 = URL_SAFE_NO_PAD.encode(&sha1);
    // RS256 with x5t in standard base64 (what azure_identity sends) and in base64url
    for x5t in [&std_b64, &url_b64] {
        let (st, _, body) = post(assertion(
            &pem,
            json!({"alg": "RS256", "typ": "JWT", "x5t": x5t}),
            claims(&aud, now, now + 600, ACME_APP),
            false,
        ))
        .await;
        assert_eq!(st, 200, "{body}");
        assert!(body["access_token"].is_string());
    }
    // PS256 with x5t#S256
    let (st, _, body) = post(assertion(
        &pem,
        json!({"alg": "PS256", "typ": "JWT", "x5t#S256": URL_SAFE_NO_PAD.encode(&sha256)}),
        claims(&aud, now, now + 600, ACME_APP),
        true,
    ))
    .await;
    assert_eq!(st, 200, "{body}");
    // expired, wrong audience, wrong issuer, bad signature
    let (st, code, _) = post(assertion(
        &pem,
        json!({"alg": "RS256", "x5t": std_b64}),
        claims(&aud, now - 7200, now - 3600, ACME_APP),
        false,
    ))
    .await;
    assert_eq!((st, code), (401, 700024));
    let (st, code, _) = post(assertion(
        &pem,
        json!({"alg": "RS256", "x5t": std_b64}),
        claims("https://elsewhere/token", now, now + 600, ACME_APP),
        false,
    ))
    .await;
    assert_eq!(st, 401);
    assert_ne!(code, 0);
    let (st, code, _) = post(assertion(
        &pem,
        json!({"alg": "RS256", "x5t": std_b64}),
        claims(&aud, now, now + 600, GLOBEX_APP),
        false,
    ))
    .await;
    assert_eq!(st, 401);
    assert_ne!(code, 0);
    let other = new_cert_pem("not the registered key");
    let (st, code, _) = post(assertion(
        &other,
        json!({"alg": "RS256", "x5t": std_b64}),
        claims(&aud, now, now + 600, ACME_APP),
        false,
    ))
    .await;
    assert_eq!(
        (st, code),
        (401, 700027),
        "signature by another key with the registered thumbprint"
    );
}

#[tokio::test]
async fn vault_answers_401_with_the_challenge_and_checks_tokens() {
    let emu = Emu::start_with(|o| o.token_lifetime = std::time::Duration::from_secs(2)).await;
    let url = format!(
        "{}/keys/byok-key?api-version=2025-07-01",
        emu.running.vault_url("acme-vault")
    );
    let r = emu.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer authorization=\""),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!("/{ACME_TENANT}\"")),
        "{challenge}"
    );
    assert!(
        challenge.contains(&format!(
            "resource=\"https://vault.azure.net:{}\"",
            emu.port()
        )),
        "{challenge}"
    );

    let token = emu
        .secret_credential(ACME_TENANT, ACME_APP, ACME_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
    let bearer = token.token.secret().to_owned();
    let r = emu
        .http
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // a token of another tenant is refused by this vault
    let globex = emu
        .secret_credential(GLOBEX_TENANT, GLOBEX_APP, GLOBEX_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
    let r = emu
        .http
        .get(&url)
        .bearer_auth(globex.token.secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // a tampered token is refused
    let r = emu
        .http
        .get(&url)
        .bearer_auth(format!("{bearer}x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // tokens expire
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let r = emu
        .http
        .get(&url)
        .bearer_auth(&bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("expired"));
    // unsupported api-version
    let fresh = emu
        .secret_credential(ACME_TENANT, ACME_APP, ACME_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
    let r = emu
        .http
        .get(url.replace("2025-07-01", "2016-10-01"))
        .bearer_auth(fresh.token.secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // 7.4 through 2025-07-01, `//` and a trailing slash are all accepted
    for path in [
        "keys/byok-key?api-version=7.4",
        "keys/byok-key/?api-version=7.5",
        &format!("keys/byok-key/{BYOK_VERSION}/?api-version=7.6"),
    ] {
        let r = emu
            .http
            .get(format!("{}/{path}", emu.running.vault_url("acme-vault")))
            .bearer_auth(fresh.token.secret())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    // path-prefix addressing reaches the same vault
    let r = emu
        .http
        .get(format!(
            "{}/vaults/acme-vault/keys/byok-key?api-version=7.4",
            emu.running.authority()
        ))
        .bearer_auth(fresh.token.secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn key_lifecycle_create_list_update_rotate_delete_recover_purge() {
    let emu = Emu::start().await;
    let admin = emu.acme_admin();
    let body = CreateKeyParameters {
        kty: Some(KeyType::Rsa),
        key_size: Some(2048),
        ..Default::default()
    };
    let created = admin
        .create_key("lifecycle", body.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let v1 = created.key.unwrap().kid.unwrap();
    let names: Vec<String> = admin
        .list_key_properties(None)
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.kid.unwrap())
        .collect();
    assert!(
        names.iter().any(|k| k.ends_with("/keys/lifecycle")),
        "{names:?}"
    );
    assert!(
        names.iter().any(|k| k.ends_with("/keys/byok-key")),
        "{names:?}"
    );

    let rotated = admin
        .rotate_key("lifecycle", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    let v2 = rotated.key.unwrap().kid.unwrap();
    assert_ne!(v1, v2);
    let versions = admin
        .list_key_properties_versions("lifecycle", None)
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(versions.len(), 2);

    let mut attrs = KeyAttributes::default();
    attrs.enabled = Some(false);
    let upd = UpdateKeyPropertiesParameters {
        key_attributes: Some(attrs),
        ..Default::default()
    };
    let updated = admin
        .update_key_properties("lifecycle", upd.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(updated.attributes.unwrap().enabled, Some(false));

    let deleted = admin
        .delete_key("lifecycle", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert!(
        deleted
            .recovery_id
            .unwrap()
            .ends_with("/deletedkeys/lifecycle")
    );
    assert!(deleted.scheduled_purge_date.unwrap() > deleted.deleted_date.unwrap());
    let e = admin.get_key("lifecycle", None).await.unwrap_err();
    assert_eq!(error_codes(&e).0, 404);
    admin.get_deleted_key("lifecycle", None).await.unwrap();
    let listed = admin
        .list_deleted_key_properties(None)
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    // the name cannot be reused while the key is recoverable
    let body = CreateKeyParameters {
        kty: Some(KeyType::Rsa),
        key_size: Some(2048),
        ..Default::default()
    };
    let e = admin
        .create_key("lifecycle", body.try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(
        error_codes(&e),
        (
            409,
            "Conflict".into(),
            "ObjectIsDeletedButRecoverable".into()
        )
    );
    admin.recover_deleted_key("lifecycle", None).await.unwrap();
    admin.get_key("lifecycle", None).await.unwrap();
    // purge protection refuses a purge
    admin.delete_key("lifecycle", None).await.unwrap();
    let e = admin
        .purge_deleted_key("lifecycle", None)
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).0, 403);
    emu.admin
        .vault_settings("acme-vault", json!({"purge_protection": false}))
        .await
        .unwrap();
    admin.purge_deleted_key("lifecycle", None).await.unwrap();
    assert_eq!(
        error_codes(&admin.get_deleted_key("lifecycle", None).await.unwrap_err()).0,
        404
    );
    let key = admin
        .get_key("byok-key", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(
        key.attributes
            .unwrap()
            .recovery_level
            .map(|r| r.to_string()),
        Some("Recoverable+Purgeable".into())
    );
}

#[tokio::test]
async fn every_rsa_algorithm_and_wrap_unwrap() {
    let emu = Emu::start().await;
    let admin = emu.acme_admin(); // Key Vault Administrator: may wrap and unwrap
    let dek = b"0123456789abcdef0123456789abcdef".to_vec();
    for alg in [
        EncryptionAlgorithm::RsaOaep256,
        EncryptionAlgorithm::RsaOaep,
        EncryptionAlgorithm::Rsa1_5,
    ] {
        let ct = admin
            .encrypt(
                "byok-key",
                params(alg.clone(), dek.clone()).try_into().unwrap(),
                None,
            )
            .await
            .unwrap()
            .into_model()
            .unwrap()
            .result
            .unwrap();
        let pt = admin
            .decrypt(
                "byok-key",
                BYOK_VERSION,
                params(alg.clone(), ct).try_into().unwrap(),
                None,
            )
            .await
            .unwrap()
            .into_model()
            .unwrap()
            .result
            .unwrap();
        assert_eq!(pt, dek, "{alg:?}");
    }
    let wrapped = admin
        .wrap_key("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .result
        .unwrap();
    let unwrapped = admin
        .unwrap_key(
            "byok-key",
            "",
            oaep256(wrapped.clone()).try_into().unwrap(),
            None,
        )
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .result
        .unwrap();
    assert_eq!(unwrapped, dek);
    // lower-case operation names in the path are accepted too
    let token = emu
        .secret_credential(ACME_TENANT, ACME_ADMIN_APP, ACME_ADMIN_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
    let r = emu
        .http
        .post(format!(
            "{}/keys/byok-key/{BYOK_VERSION}/unwrapkey?api-version=7.4",
            emu.running.vault_url("acme-vault")
        ))
        .bearer_auth(token.token.secret())
        .json(&json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode(&wrapped)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // an unknown algorithm is a bad parameter, a wrong-size ciphertext too
    let e = admin
        .decrypt(
            "byok-key",
            BYOK_VERSION,
            params(EncryptionAlgorithm::A256Gcm, vec![0; 512])
                .try_into()
                .unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).1, "BadParameter");
    let e = admin
        .decrypt(
            "byok-key",
            BYOK_VERSION,
            oaep256(vec![0; 100]).try_into().unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).0, 400);
}

#[tokio::test]
async fn rbac_key_ops_and_key_states_are_enforced() {
    let emu = Emu::start().await;
    let acme = emu.acme(); // the guide's custom role: read, encrypt, decrypt
    let dek = vec![1u8; 32];
    // wrapKey is not in the custom role
    let e = acme
        .wrap_key("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(
        error_codes(&e),
        (403, "Forbidden".into(), "ForbiddenByRbac".into())
    );
    // nor is create
    let body = CreateKeyParameters {
        kty: Some(KeyType::Rsa),
        key_size: Some(2048),
        ..Default::default()
    };
    let e = acme
        .create_key("nope", body.try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).2, "ForbiddenByRbac");
    // unknown key
    let e = acme.get_key("missing", None).await.unwrap_err();
    assert_eq!(error_codes(&e), (404, "KeyNotFound".into(), String::new()));

    let ct = acme
        .encrypt("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .result
        .unwrap();
    // disabled: decrypt refused with KeyDisabled, encrypt still accepted (as the real service was seen to do)
    emu.admin
        .set_key_enabled("acme-vault", "byok-key", None, false)
        .await
        .unwrap();
    let e = acme
        .decrypt(
            "byok-key",
            BYOK_VERSION,
            oaep256(ct.clone()).try_into().unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(
        error_codes(&e),
        (403, "Forbidden".into(), "KeyDisabled".into())
    );
    acme.encrypt("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap();
    emu.admin
        .vault_settings("acme-vault", json!({"refuse_encrypt_when_disabled": true}))
        .await
        .unwrap();
    let e = acme
        .encrypt("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).2, "KeyDisabled");
    let key = acme
        .get_key("byok-key", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(
        key.attributes.unwrap().enabled,
        Some(false),
        "GET key shows the state"
    );
    emu.admin
        .set_key_enabled("acme-vault", "byok-key", None, true)
        .await
        .unwrap();
    acme.decrypt(
        "byok-key",
        BYOK_VERSION,
        oaep256(ct.clone()).try_into().unwrap(),
        None,
    )
    .await
    .unwrap();

    // expired: encrypt refused, decrypt of old data still allowed
    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 60;
    emu.admin
        .key_action(
            "acme-vault",
            "byok-key",
            "update",
            Some(json!({"exp": past})),
        )
        .await
        .unwrap();
    let e = acme
        .encrypt("byok-key", oaep256(dek.clone()).try_into().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).2, "KeyExpired");
    acme.decrypt(
        "byok-key",
        BYOK_VERSION,
        oaep256(ct.clone()).try_into().unwrap(),
        None,
    )
    .await
    .unwrap();
    emu.admin
        .key_action(
            "acme-vault",
            "byok-key",
            "update",
            Some(json!({"exp": null})),
        )
        .await
        .unwrap();

    // key_ops without decrypt
    emu.admin
        .key_action(
            "acme-vault",
            "byok-key",
            "update",
            Some(json!({"key_ops": ["encrypt"]})),
        )
        .await
        .unwrap();
    let e = acme
        .decrypt(
            "byok-key",
            BYOK_VERSION,
            oaep256(ct.clone()).try_into().unwrap(),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(error_codes(&e).2, "KeyOperationForbidden");
    emu.admin
        .key_action(
            "acme-vault",
            "byok-key",
            "update",
            Some(json!({"key_ops": ["encrypt", "decrypt"]})),
        )
        .await
        .unwrap();

    // removing the role assignment denies everything; re-adding restores it
    emu.admin
        .remove_role("acme-vault", ACME_APP, None)
        .await
        .unwrap();
    let e = acme.get_key("byok-key", None).await.unwrap_err();
    assert_eq!(error_codes(&e).2, "ForbiddenByRbac");
    emu.admin
        .add_role("acme-vault", ACME_APP, "byok")
        .await
        .unwrap();
    acme.decrypt(
        "byok-key",
        BYOK_VERSION,
        oaep256(ct).try_into().unwrap(),
        None,
    )
    .await
    .unwrap();

    // a deleted key is not found, and comes back when recovered
    emu.admin
        .key_action("acme-vault", "byok-key", "delete", None)
        .await
        .unwrap();
    assert_eq!(
        error_codes(&acme.get_key("byok-key", None).await.unwrap_err()).1,
        "KeyNotFound"
    );
    emu.admin
        .key_action("acme-vault", "byok-key", "recover", None)
        .await
        .unwrap();
    acme.get_key("byok-key", None).await.unwrap();
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_and_the_sdk_retries() {
    let emu = Emu::start().await;
    // 24 units per 10 s: three RSA-4096 operations (8 units each)
    emu.admin
        .vault_settings("acme-vault", json!({"budget_per_10s": 24}))
        .await
        .unwrap();
    let token = emu
        .secret_credential(ACME_TENANT, ACME_APP, ACME_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
    let url = format!(
        "{}/keys/byok-key/{BYOK_VERSION}/encrypt?api-version=2025-07-01",
        emu.running.vault_url("acme-vault")
    );
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..4 {
        let r = emu
            .http
            .post(&url)
            .bearer_auth(token.token.secret())
            .json(&json!({"alg": "RSA-OAEP-256", "value": URL_SAFE_NO_PAD.encode([0u8; 32])}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "Throttled");
        }
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    let wait = retry_after.expect("Retry-After");
    assert!((1..=10).contains(&wait), "{wait}");
    // the SDK honours Retry-After and gets through once the window frees up
    let started = std::time::Instant::now();
    emu.acme()
        .encrypt("byok-key", oaep256(vec![0; 32]).try_into().unwrap(), None)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(500),
        "the SDK waited"
    );
}

#[tokio::test]
async fn faults_5xx_outage_and_latency() {
    let emu = Emu::start().await;
    let client = emu.acme();
    client.get_key("byok-key", None).await.unwrap(); // token cached
    let token = emu
        .secret_credential(ACME_TENANT, ACME_APP, ACME_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
    let url = format!(
        "{}/keys/byok-key?api-version=7.4",
        emu.running.vault_url("acme-vault")
    );
    emu.admin
        .set_fault(json!({"target": "acme-vault", "error_rate": 1.0}))
        .await
        .unwrap();
    let r = emu
        .http
        .get(&url)
        .bearer_auth(token.token.secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // other vaults are unaffected
    let globex = emu.key_client(
        "globex-kv",
        emu.secret_credential(GLOBEX_TENANT, GLOBEX_APP, GLOBEX_SECRET),
    );
    globex.get_key("archive-kek", None).await.unwrap();
    emu.admin
        .set_fault(json!({"target": "acme-vault", "outage_seconds": 60}))
        .await
        .unwrap();
    let e = emu
        .http
        .get(&url)
        .bearer_auth(token.token.secret())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.is_request() || e.is_connect() || e.to_string().contains("connection"),
        "{e}"
    );
    emu.admin
        .set_fault(json!({"target": "acme-vault", "latency_ms": 300}))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let r = emu
        .http
        .get(&url)
        .bearer_auth(token.token.secret())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() >= std::time::Duration::from_millis(300));
    // dropped connections
    emu.admin
        .set_fault(json!({"target": "acme-vault", "drop_rate": 1.0}))
        .await
        .unwrap();
    assert!(
        emu.http
            .get(&url)
            .bearer_auth(token.token.secret())
            .send()
            .await
            .is_err()
    );
    // the token endpoint can go down too
    emu.admin
        .set_fault(json!({"target": "entra", "outage_seconds": 60}))
        .await
        .unwrap();
    let token_url = format!(
        "{}/{GLOBEX_TENANT}/oauth2/v2.0/token",
        emu.running.authority()
    );
    let form = [
        ("client_id", GLOBEX_APP),
        ("client_secret", GLOBEX_SECRET),
        ("grant_type", "client_credentials"),
        ("scope", "https://vault.azure.net/.default"),
    ];
    assert!(
        emu.http.post(&token_url).form(&form).send().await.is_err(),
        "the token endpoint is down"
    );
    emu.admin.clear_faults().await.unwrap();
    emu.secret_credential(GLOBEX_TENANT, GLOBEX_APP, GLOBEX_SECRET)
        .get_token(&[&scope(&emu)], None)
        .await
        .unwrap();
}

#[tokio::test]
async fn state_file_keeps_keys_roles_and_the_ca_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let s = state.clone();
    let emu = Emu::start_with(move |o| o.state = Some(s)).await;
    let admin = emu.acme_admin();
    let body = CreateKeyParameters {
        kty: Some(KeyType::Rsa),
        key_size: Some(2048),
        ..Default::default()
    };
    let kid = admin
        .create_key("persisted", body.try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .key
        .unwrap()
        .kid
        .unwrap();
    let ct = admin
        .encrypt("persisted", oaep256(vec![9; 16]).try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .result
        .unwrap();
    emu.admin
        .remove_role("acme-vault", ACME_APP, None)
        .await
        .unwrap();
    let ca = emu.running.ca_pem.clone();
    emu.running.stop().await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let s = state.clone();
    let emu = Emu::start_with(move |o| {
        o.state = Some(s);
        o.seed = None;
    })
    .await;
    assert_eq!(emu.running.ca_pem, ca, "the CA survives the restart");
    let admin = emu.acme_admin();
    let version = kid.rsplit('/').next().unwrap();
    let pt = admin
        .decrypt("persisted", version, oaep256(ct).try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap()
        .result
        .unwrap();
    assert_eq!(pt, vec![9; 16]);
    assert_eq!(
        error_codes(&emu.acme().get_key("byok-key", None).await.unwrap_err()).2,
        "ForbiddenByRbac",
        "the removed role stays removed"
    );
}

#[tokio::test]
async fn wycheproof_rsa_oaep_256_through_the_decrypt_path() {
    let emu = Emu::start().await;
    let admin = emu.acme_admin();
    let mut total = (0, 0, 0);
    for (file, name) in [
        ("rsa_oaep_2048_sha256_mgf1sha256_test.json", "wp-2048"),
        ("rsa_oaep_4096_sha256_mgf1sha256_test.json", "wp-4096"),
    ] {
        let v = common::json(&format!("vectors/wycheproof/{file}"));
        for (g, group) in v["testGroups"].as_array().unwrap().iter().enumerate() {
            let jwk = &group["privateKeyJwk"];
            let b = |f: &str| URL_SAFE_NO_PAD.decode(jwk[f].as_str().unwrap()).unwrap();
            let mut key = JsonWebKey::default();
            key.kty = Some(KeyType::Rsa);
            key.n = Some(b("n"));
            key.e = Some(b("e"));
            key.d = Some(b("d"));
            key.p = Some(b("p"));
            key.q = Some(b("q"));
            key.dp = Some(b("dp"));
            key.dq = Some(b("dq"));
            key.qi = Some(b("qi"));
            key.key_ops = Some(vec!["encrypt".into(), "decrypt".into()]);
            let key_name = format!("{name}-{g}");
            let imported = admin
                .import_key(
                    &key_name,
                    ImportKeyParameters {
                        key: Some(key),
                        ..Default::default()
                    }
                    .try_into()
                    .unwrap(),
                    None,
                )
                .await
                .unwrap()
                .into_model()
                .unwrap();
            let version = imported
                .key
                .unwrap()
                .kid
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned();
            for t in group["tests"].as_array().unwrap() {
                if !t["label"].as_str().unwrap_or_default().is_empty() {
                    total.2 += 1; // Key Vault has no OAEP label parameter
                    continue;
                }
                let ct = hex::decode(t["ct"].as_str().unwrap()).unwrap();
                let msg = hex::decode(t["msg"].as_str().unwrap()).unwrap();
                let r = admin
                    .decrypt(&key_name, &version, oaep256(ct).try_into().unwrap(), None)
                    .await;
                match t["result"].as_str().unwrap() {
                    "valid" => {
                        assert_eq!(
                            r.unwrap().into_model().unwrap().result.unwrap(),
                            msg,
                            "{file} tcId {}",
                            t["tcId"]
                        );
                        total.0 += 1;
                    }
                    _ => {
                        let e = r
                            .err()
                            .unwrap_or_else(|| panic!("{file} tcId {} accepted", t["tcId"]));
                        assert_eq!(error_codes(&e).0, 400, "{file} tcId {}", t["tcId"]);
                        total.1 += 1;
                    }
                }
            }
        }
    }
    eprintln!(
        "wycheproof RSA-OAEP-256: {} valid decrypted, {} invalid rejected, {} with labels skipped",
        total.0, total.1, total.2
    );
    assert!(total.0 >= 20 && total.1 >= 20, "{total:?}");
}

#[tokio::test]
async fn private_link_hosts_fail_the_sdk_challenge_check_unless_it_is_turned_off() {
    use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
    let emu = Emu::start().await;
    let url = format!(
        "https://globex-kv.privatelink.vaultcore.azure.net:{}",
        emu.port()
    );
    let cred = emu.secret_credential(GLOBEX_TENANT, GLOBEX_APP, GLOBEX_SECRET);
    let strict = KeyClient::new(
        &url,
        cred.clone(),
        Some(KeyClientOptions {
            client_options: emu.client_options(),
            ..KeyClientOptions::default()
        }),
    )
    .unwrap();
    let e = strict.get_key("archive-kek", None).await.unwrap_err();
    assert!(format!("{e:?}").contains("challenge resource"), "{e:?}");
    let relaxed = KeyClient::new(
        &url,
        cred,
        Some(KeyClientOptions {
            client_options: emu.client_options(),
            verify_challenge_resource: Some(false),
            ..KeyClientOptions::default()
        }),
    )
    .unwrap();
    let key = relaxed
        .get_key("archive-kek", None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert!(key.key.unwrap().kid.unwrap().starts_with(&url));
}

/// A client that opens a connection and never speaks is dropped after the handshake timeout,
/// instead of holding a task and a socket for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    use tokio::io::AsyncReadExt;
    let emu = Emu::start().await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", emu.port()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let limit = byok::emulator::HANDSHAKE_TIMEOUT + std::time::Duration::from_secs(5);
    let n = tokio::time::timeout(limit, s.read(&mut buf))
        .await
        .expect("the emulator kept a silent connection open")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert!(
        started.elapsed() >= byok::emulator::HANDSHAKE_TIMEOUT - std::time::Duration::from_secs(1)
    );
}
