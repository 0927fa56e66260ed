//! The Key Vault emulator through Microsoft's Rust SDK (azure_identity +
//! azure_security_keyvault_keys), over HTTPS, unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use azure_security_keyvault_keys::models::{EncryptionAlgorithm, KeyOperationParameters};
use common::emu::*;

fn oaep256(value: Vec<u8>) -> KeyOperationParameters {
    KeyOperationParameters {
        algorithm: Some(EncryptionAlgorithm::RsaOaep256),
        value: Some(value),
        ..Default::default()
    }
}

#[tokio::test]
async fn secret_credential_gets_the_seed_key_and_round_trips_rsa_oaep_256() {
    let emu = Emu::start().await;
    let client = emu.acme();
    let key = client.get_key("byok-key", None).await.unwrap().into_model().unwrap();
    let jwk = key.key.unwrap();
    let kid = jwk.kid.clone().unwrap();
    assert_eq!(kid, format!("{}/keys/byok-key/78deebed173b48e48f55abf87ed4cf71", emu.running.vault_url("acme-vault")));
    assert_eq!(jwk.n.unwrap().len(), 512, "RSA-4096 modulus");
    let attrs = key.attributes.unwrap();
    assert_eq!(attrs.enabled, Some(true));
    assert_eq!(attrs.recoverable_days, Some(90));

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
        .decrypt("byok-key", "78deebed173b48e48f55abf87ed4cf71", oaep256(ct).try_into().unwrap(), None)
        .await
        .unwrap()
        .into_model()
        .unwrap();
    assert_eq!(plain.result.unwrap(), dek);
    emu.running.stop().await;
}
