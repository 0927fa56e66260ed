//! `byok check-key` against the emulator over HTTPS: a passing tenant, and each broken set-up a
//! tenant can produce, with the fix in the guide's terms.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::emu::*;

async fn check(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut all: Vec<std::ffi::OsString> =
        vec!["check-key".into(), "--config".into(), config.into()];
    all.extend(args.iter().map(|a| (*a).into()));
    common::run_byok(all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_tenants_pass_then_a_disabled_key_fails_with_its_fix() {
    let emu = Emu::start_with(|o| o.listen = "127.0.0.1:0".parse().unwrap()).await;
    let config = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
    let (ok, out) = check(&config, &["--all"]).await;
    assert!(ok, "{out}");
    for line in [
        "acme         PASS  token",
        "acme         PASS  key",
        "acme         PASS  size         RSA-4096",
        "acme         PASS  round-trip",
        "acme         PASS  recovery",
        "globex       PASS  private-link",
        "globex       PASS  round-trip",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(
        out.contains("with the certificate") && out.contains("with the client secret"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");

    // disable the key the way an operator would, through the admin CLI
    let ca = emu.dir.path().join("emulator-ca.pem");
    let url = emu.running.authority();
    let admin = tokio::task::spawn_blocking(move || {
        common::byok()
            .args(["vault-emulator", "admin", "--url", &url, "--ca"])
            .arg(&ca)
            .args(["disable-key", "acme-vault", "byok-key"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        admin.status.success(),
        "{}",
        String::from_utf8_lossy(&admin.stderr)
    );
    assert!(String::from_utf8_lossy(&admin.stdout).contains("\"enabled\": false"));
    let (ok, out) = check(&config, &["--all"]).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "acme         FAIL  enabled      version 78deebed173b48e48f55abf87ed4cf71 is disabled"
        ),
        "{out}"
    );
    assert!(
        out.contains("fix: enable it: Key vaults > acme-vault > Objects > Keys > byok-key"),
        "{out}"
    );
    assert!(
        out.contains("globex       PASS  round-trip"),
        "other tenants unaffected:\n{out}"
    );

    // JSON lines
    let (_, out) = check(&config, &["--tenant", "acme", "--json"]).await;
    let lines: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["check"] == "enabled" && l["verdict"] == "fail" && l["fix"].is_string())
    );
    assert!(lines.iter().all(|l| l["tenant"] == "acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_setup_names_its_fix() {
    let emu = Emu::start().await;
    let config = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");

    // the role lost decrypt: the round trip fails with the guide's custom-role fix
    emu.admin
        .remove_role("acme-vault", ACME_APP, None)
        .await
        .unwrap();
    emu.admin
        .call(reqwest::Method::POST, "vaults/acme-vault/roles", Some(serde_json::json!({"principal": ACME_APP, "role": "no-decrypt", "data_actions": ["Microsoft.KeyVault/vaults/keys/read", "Microsoft.KeyVault/vaults/keys/encrypt/action"]})))
        .await
        .unwrap();
    let (ok, out) = check(&config, &["--tenant", "acme"]).await;
    assert!(!ok);
    assert!(out.contains("FAIL  round-trip"), "{out}");
    assert!(out.contains(&format!("fix: assign the custom role with Microsoft.KeyVault/vaults/keys/decrypt/action to app {ACME_APP} on vault acme-vault")), "{out}");

    // no role at all: the key cannot even be read
    emu.admin
        .remove_role("acme-vault", ACME_APP, None)
        .await
        .unwrap();
    let (_, out) = check(&config, &["--tenant", "acme"]).await;
    assert!(
        out.contains("FAIL  key") && out.contains("keys/read"),
        "{out}"
    );
    emu.admin
        .add_role("acme-vault", ACME_APP, "byok")
        .await
        .unwrap();

    // the certificate is no longer on the app
    let state = emu.admin.state().await.unwrap();
    let thumb = state["tenants"][ACME_TENANT]["apps"][ACME_APP]["certificates"][0]["sha1"]
        .as_str()
        .unwrap()
        .to_owned();
    emu.admin
        .remove_certificate(ACME_TENANT, ACME_APP, &thumb)
        .await
        .unwrap();
    let (_, out) = check(&config, &["--tenant", "acme"]).await;
    assert!(
        out.contains("FAIL  token")
            && out.contains("AADSTS700027")
            && out.contains("Upload certificate"),
        "{out}"
    );

    // a wrong client secret
    emu.admin
        .remove_secrets(GLOBEX_TENANT, GLOBEX_APP, None)
        .await
        .unwrap();
    let (_, out) = check(&config, &["--tenant", "globex"]).await;
    assert!(
        out.contains("FAIL  token")
            && out.contains("AADSTS7000215")
            && out.contains("Client secrets"),
        "{out}"
    );
    emu.admin
        .add_secret(GLOBEX_TENANT, GLOBEX_APP, GLOBEX_SECRET)
        .await
        .unwrap();

    // purge protection off: a warning, not a failure
    emu.admin
        .vault_settings("globex-kv", serde_json::json!({"purge_protection": false}))
        .await
        .unwrap();
    let (ok, out) = check(&config, &["--tenant", "globex"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("WARN  recovery") && out.contains("enable purge protection"),
        "{out}"
    );

    // a deleted key
    emu.admin
        .key_action("globex-kv", "archive-kek", "delete", None)
        .await
        .unwrap();
    let (_, out) = check(&config, &["--tenant", "globex"]).await;
    assert!(
        out.contains("FAIL  key") && out.contains("create the key archive-kek"),
        "{out}"
    );

    // a vault that does not answer (Private Link not approved)
    emu.admin
        .set_fault(serde_json::json!({"target": "globex-kv", "outage_seconds": 120}))
        .await
        .unwrap();
    let (_, out) = check(&config, &["--tenant", "globex"]).await;
    assert!(
        out.contains("FAIL  private-link")
            && out.contains("approve the private endpoint connection"),
        "{out}"
    );
}

/// `--operator`: the quarantine key's round trip and the audit signing key (RSA >= 3072, sign
/// permitted, a real PS256 signature verified under its public key); without the sign action
/// the signing check fails with the role to assign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_keys_pass_then_a_signing_key_without_the_sign_role_fails_with_its_fix() {
    let emu = Emu::start().await;
    let port = emu.port();
    let operator = emu.dir.path().join("operator.secret");
    let audit = common::emu_config::audit_toml(port, &operator);
    let config = common::emu_config::write(emu.dir.path(), port, &emu.running.ca_pem, &audit);
    let (ok, out) = check(&config, &["--operator"]).await;
    assert!(ok, "{out}");
    for line in [
        "_quarantine  PASS  round-trip",
        "audit-signing PASS  size         RSA-3072",
        "audit-signing PASS  sign",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(
        !out.contains("acme"),
        "--operator alone checks no tenant: {out}"
    );
    emu.admin
        .remove_role(
            "byok-operator",
            "0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10",
            Some("audit signer"),
        )
        .await
        .unwrap();
    let (ok, out) = check(&config, &["--operator"]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("audit-signing FAIL  sign"), "{out}");
    assert!(
        out.contains("keys/sign/action"),
        "the fix names the action: {out}"
    );
}
