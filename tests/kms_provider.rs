//! The tenant key provider against the emulator over HTTPS, for both credential types: every
//! key state reached by changing the emulator the way a tenant would, and single-flight unwraps.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use byok::config::Config;
use byok::dek::{ActiveDek, DekLimits};
use byok::kms::azure::AzureKeyProvider;
use byok::kms::{KeyProvider, KeyState, KmsError, Outage, Revocation};
use common::emu::*;
use serde_json::json;

const V1: &str = "78deebed173b48e48f55abf87ed4cf71";

struct Setup {
    emu: Emu,
    config: Config,
}

async fn setup() -> Setup {
    let emu = Emu::start().await;
    let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
    let config = Config::load(&path).unwrap();
    Setup { emu, config }
}

impl Setup {
    /// The bare Azure provider of a tenant (no cache, no retries), with the key pinned or not.
    fn azure(&self, tenant: &str, pinned: bool) -> AzureKeyProvider {
        let t = self
            .config
            .tenants
            .values()
            .find(|t| t.id.as_str() == tenant)
            .unwrap();
        let mut key = t.key.clone().unwrap();
        if !pinned {
            key.key_version = None;
        }
        let http = byok::kms::azure::http_client(&self.config.keys, None).unwrap();
        AzureKeyProvider::new(tenant, &key, http, Duration::ZERO).unwrap()
    }
}

fn version_of(state: &KeyState) -> String {
    match state {
        KeyState::Usable(v) => v.kid.version().to_owned(),
        other => panic!("expected Usable, got {other:?}"),
    }
}

#[tokio::test]
async fn usable_key_wraps_and_unwraps_with_both_credentials() {
    let s = setup().await;
    for tenant in ["acme", "globex"] {
        // acme authenticates with its certificate, globex with a client secret (Private Link host)
        let p = s.azure(tenant, true);
        let state = p.key_state().await;
        let KeyState::Usable(v) = &state else {
            panic!("{tenant}: {state:?}")
        };
        assert_eq!(v.bits(), 4096);
        let dek = ActiveDek::generate(DekLimits::default()).unwrap();
        let w = p.wrap(dek.key()).await.unwrap();
        assert_eq!(w.wrapped.len(), 512);
        assert_eq!(
            w.kek, v.kid,
            "{tenant}: wrapped under the version GET key reported"
        );
        let back = p.unwrap(&w.kek, dek.id(), &w.wrapped).await.unwrap();
        assert_eq!(back.secret_bytes(), dek.key().secret_bytes());
        assert_eq!(back.id(), dek.id());
    }
}

#[tokio::test]
async fn disabled_key_is_revoked_even_though_the_vault_still_encrypts() {
    let s = setup().await;
    let p = s.azure("acme", true);
    s.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", None, false)
        .await
        .unwrap();
    let state = p.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::KeyDisabled,
                last_seen: Some(_),
                ..
            }
        ),
        "{state:?}"
    );
    let dek = ActiveDek::generate(DekLimits::default()).unwrap();
    // the emulator (like the real service) would accept encrypt on the disabled key: wrap must not
    let e = p.wrap(dek.key()).await.unwrap_err();
    assert!(
        matches!(
            e,
            KmsError::Revoked {
                why: Revocation::KeyDisabled,
                ..
            }
        ),
        "{e}"
    );
    s.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", None, true)
        .await
        .unwrap();
    assert_eq!(version_of(&p.key_state().await), V1);
}

#[tokio::test]
async fn rotation_and_a_disabled_pinned_version() {
    let s = setup().await;
    let pinned = s.azure("acme", true);
    let floating = s.azure("acme", false);
    let rotated = s
        .emu
        .admin
        .key_action("acme-vault", "byok-key", "rotate", None)
        .await
        .unwrap();
    let v2 = rotated["version"].as_str().unwrap().to_owned();
    // unpinned: new DEKs under the new version; pinned: still the pinned one
    assert_eq!(version_of(&floating.key_state().await), v2);
    assert_eq!(version_of(&pinned.key_state().await), V1);
    // the pinned version disabled while the new one is usable: switch
    s.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", Some(V1), false)
        .await
        .unwrap();
    match pinned.key_state().await {
        KeyState::VersionUnusable {
            unusable,
            why,
            usable,
        } => {
            assert_eq!(unusable.version(), V1);
            assert_eq!(why, Revocation::KeyDisabled);
            assert_eq!(usable.kid.version(), v2);
        }
        other => panic!("{other:?}"),
    }
    // and wrap goes to the usable version
    let dek = ActiveDek::generate(DekLimits::default()).unwrap();
    assert_eq!(pinned.wrap(dek.key()).await.unwrap().kek.version(), v2);
    // newest version disabled, the old one enabled again: the unpinned provider falls back
    s.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", Some(V1), true)
        .await
        .unwrap();
    s.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", Some(&v2), false)
        .await
        .unwrap();
    match floating.key_state().await {
        KeyState::VersionUnusable {
            unusable, usable, ..
        } => {
            assert_eq!(unusable.version(), v2);
            assert_eq!(usable.kid.version(), V1);
        }
        other => panic!("{other:?}"),
    }
    // an expired version counts as unusable too
    let past = time::OffsetDateTime::now_utc().unix_timestamp() - 10;
    s.emu
        .admin
        .call(
            reqwest::Method::POST,
            &format!("vaults/acme-vault/keys/byok-key/update?version={V1}"),
            Some(json!({"exp": past})),
        )
        .await
        .unwrap();
    let state = pinned.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::KeyExpired,
                ..
            } | KeyState::VersionUnusable {
                why: Revocation::KeyExpired,
                ..
            }
        ),
        "{state:?}"
    );
}

#[tokio::test]
async fn deleted_not_found_and_recovered() {
    let s = setup().await;
    let p = s.azure("acme", true);
    s.emu
        .admin
        .key_action("acme-vault", "byok-key", "delete", None)
        .await
        .unwrap();
    // the guide's role cannot read deleted keys: the key is simply not found
    let state = p.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::KeyNotFound,
                ..
            }
        ),
        "{state:?}"
    );
    // with deletedKeys/read (Key Vault Reader) it is known to be soft-deleted
    s.emu
        .admin
        .add_role("acme-vault", ACME_APP, "Key Vault Reader")
        .await
        .unwrap();
    let state = p.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::KeyDeleted,
                ..
            }
        ),
        "{state:?}"
    );
    s.emu
        .admin
        .key_action("acme-vault", "byok-key", "recover", None)
        .await
        .unwrap();
    assert_eq!(version_of(&p.key_state().await), V1);
}

#[tokio::test]
async fn role_removed_and_re_added() {
    let s = setup().await;
    let p = s.azure("globex", false);
    s.emu
        .admin
        .remove_role("globex-kv", GLOBEX_APP, None)
        .await
        .unwrap();
    let state = p.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::AccessDenied,
                ..
            }
        ),
        "{state:?}"
    );
    if let KeyState::Revoked { detail, .. } = &state {
        assert!(detail.contains("ForbiddenByRbac"), "{detail}");
    }
    s.emu
        .admin
        .add_role("globex-kv", GLOBEX_APP, "byok")
        .await
        .unwrap();
    assert!(matches!(p.key_state().await, KeyState::Usable(_)));
}

#[tokio::test]
async fn bad_secret_and_unregistered_certificate_are_credential_rejections() {
    let s = setup().await;
    s.emu
        .admin
        .remove_secrets(GLOBEX_TENANT, GLOBEX_APP, None)
        .await
        .unwrap();
    let state = s.azure("globex", false).key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::CredentialRejected(7000215),
                ..
            }
        ),
        "{state:?}"
    );
    let st = s.emu.admin.state().await.unwrap();
    let thumb = st["tenants"][ACME_TENANT]["apps"][ACME_APP]["certificates"][0]["sha1"]
        .as_str()
        .unwrap()
        .to_owned();
    s.emu
        .admin
        .remove_certificate(ACME_TENANT, ACME_APP, &thumb)
        .await
        .unwrap();
    let state = s.azure("acme", true).key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Revoked {
                why: Revocation::CredentialRejected(700027),
                ..
            }
        ),
        "{state:?}"
    );
    assert_eq!(
        Revocation::CredentialRejected(700027)
            .quarantine_reason()
            .as_str(),
        "access-denied"
    );
}

#[tokio::test]
async fn throttling_outages_and_entra_down_are_unavailable_not_revoked() {
    let s = setup().await;
    let p = s.azure("acme", true);
    assert!(matches!(p.key_state().await, KeyState::Usable(_)));
    s.emu
        .admin
        .vault_settings("acme-vault", json!({"budget_per_10s": 1}))
        .await
        .unwrap();
    p.key_state().await; // spends the budget
    match p.key_state().await {
        KeyState::Unavailable {
            why: Outage::Throttled,
            retry_after: Some(ra),
            ..
        } => assert!(ra >= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
    s.emu
        .admin
        .vault_settings("acme-vault", json!({"budget_per_10s": 4000}))
        .await
        .unwrap();
    s.emu
        .admin
        .set_fault(json!({"target": "acme-vault", "outage_seconds": 60}))
        .await
        .unwrap();
    let state = p.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Unavailable {
                why: Outage::Network,
                ..
            }
        ),
        "{state:?}"
    );
    s.emu
        .admin
        .set_fault(json!({"target": "acme-vault", "error_rate": 1.0}))
        .await
        .unwrap();
    let state = p.key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Unavailable {
                why: Outage::ServerError,
                ..
            }
        ),
        "{state:?}"
    );
    s.emu.admin.clear_faults().await.unwrap();
    // Entra down: a provider with no cached token cannot authenticate, and says so as an outage
    s.emu
        .admin
        .set_fault(json!({"target": "entra", "outage_seconds": 60}))
        .await
        .unwrap();
    let state = s.azure("globex", false).key_state().await;
    assert!(
        matches!(
            state,
            KeyState::Unavailable {
                why: Outage::TokenEndpoint,
                ..
            }
        ),
        "{state:?}"
    );
}

#[tokio::test]
async fn the_resilient_stack_waits_out_a_429_storm() {
    let s = setup().await;
    let keyring = byok::keyring::Keyring::new(&s.config).unwrap();
    let acme = keyring.tenant("acme").unwrap();
    let dek = ActiveDek::generate(DekLimits::default()).unwrap();
    acme.wrap(dek.key()).await.unwrap();
    s.emu
        .admin
        .vault_settings("acme-vault", json!({"budget_per_10s": 9}))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    for _ in 0..3 {
        let d = ActiveDek::generate(DekLimits::default()).unwrap();
        acme.wrap(d.key()).await.unwrap();
    }
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "the retries honoured Retry-After"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_unwraps_of_one_dek_make_one_vault_call() {
    let s = setup().await;
    let keyring = byok::keyring::Keyring::new(&s.config).unwrap();
    let acme = Arc::clone(keyring.tenant("acme").unwrap());
    let dek = ActiveDek::generate(DekLimits::default()).unwrap();
    let w = acme.wrap(dek.key()).await.unwrap();
    let before = s.emu.admin.stats().await.unwrap()["calls"]["acme-vault"]["decrypt"]
        .as_u64()
        .unwrap_or(0);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let acme = Arc::clone(&acme);
        let w = w.clone();
        let id = dek.id();
        tasks.spawn(async move {
            acme.unwrap(&w.kek, id, &w.wrapped)
                .await
                .map(|k| *k.secret_bytes())
        });
    }
    let mut n = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(&r.unwrap().unwrap(), dek.key().secret_bytes());
        n += 1;
    }
    assert_eq!(n, 1000);
    let after = s.emu.admin.stats().await.unwrap()["calls"]["acme-vault"]["decrypt"]
        .as_u64()
        .unwrap();
    assert_eq!(
        after - before,
        1,
        "exactly one Key Vault decrypt for 1000 unwraps"
    );
    assert_eq!(acme.len(), 1);
    acme.clear();
    assert!(acme.is_empty());
}
