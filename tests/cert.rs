//! `byok cert`: a generated certificate is refused by the emulator's Entra endpoint until
//! uploaded, then accepted through azure_identity's certificate credential; check-key passes
//! with it; rotation with both certificates, then only the new one, never fails a token request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use byok::config::Config;
use byok::kms::azure::AzureKeyProvider;
use common::emu::*;

fn generate(dir: &Path, tenant: &str, extra: &[&str]) -> (PathBuf, PathBuf, String) {
    let out = common::byok()
        .args(["cert", "generate", "--tenant", tenant, "--out-dir"])
        .arg(dir)
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha1 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("thumbprint   SHA-1   "))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let ext = if extra.contains(&"--pfx") {
        "pfx"
    } else {
        "pem"
    };
    (
        dir.join(format!("{tenant}.cer")),
        dir.join(format!("{tenant}-credential.{ext}")),
        sha1,
    )
}

/// A worker config whose acme tenant uses `credential` (a TOML inline table).
fn config_with(emu: &Emu, credential: &str) -> Config {
    let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let acme_pem = common::emu_config::acme_pem(emu.dir.path());
    let text = text.replace(
        &format!(
            "credential = {{ type = \"certificate\", path = \"{}\" }}",
            acme_pem.display()
        ),
        credential,
    );
    assert!(text.contains(credential));
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

fn acme_provider(config: &Config) -> AzureKeyProvider {
    let t = config
        .tenants
        .values()
        .find(|t| t.id.as_str() == "acme")
        .unwrap();
    let http = byok::kms::azure::http_client(&config.keys, None).unwrap();
    AzureKeyProvider::new("acme", t.key.as_ref().unwrap(), http, Duration::ZERO).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_certificate_is_refused_until_uploaded_then_check_key_passes() {
    let emu = Emu::start().await;
    let dir = emu.dir.path().join("certs");
    let (cer, credential, sha1) = generate(&dir, "acme", &[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // the files: a DER certificate to upload and a PEM credential holding an RSA-3072 key
    let der = std::fs::read(&cer).unwrap();
    let cert = openssl::x509::X509::from_der(&der).unwrap();
    assert_eq!(cert.public_key().unwrap().bits(), 3072);
    assert_eq!(
        hex::encode_upper(&*cert.digest(openssl::hash::MessageDigest::sha1()).unwrap()),
        sha1
    );

    let config = config_with(
        &emu,
        &format!(
            "credential = {{ type = \"certificate\", path = \"{}\" }}",
            credential.display()
        ),
    );
    let e = acme_provider(&config).token().await.unwrap_err();
    assert!(e.to_string().contains("AADSTS700027"), "{e}");
    let up = emu
        .admin
        .upload_certificate(ACME_TENANT, ACME_APP, der)
        .await
        .unwrap();
    assert_eq!(up["sha1"], sha1);
    acme_provider(&config).token().await.unwrap();

    let cfg_path = emu.dir.path().join("byok.toml");
    let out = tokio::task::spawn_blocking(move || {
        common::byok()
            .args(["check-key", "--tenant", "acme", "--config"])
            .arg(&cfg_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("PASS  certificate")
            && text.contains(&sha1)
            && text.contains("PASS  round-trip"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_never_fails_a_token_request() {
    let emu = Emu::start().await;
    let dir = emu.dir.path().join("certs");
    let (old_cer, old_cred, old_sha1) = generate(&dir.join("old"), "acme", &[]);
    emu.admin
        .upload_certificate(ACME_TENANT, ACME_APP, std::fs::read(&old_cer).unwrap())
        .await
        .unwrap();
    // the next certificate is a second later, so it is the newer one
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (new_cer, new_cred, _new_sha1) = generate(&dir.join("new"), "acme", &[]);
    let both = format!(
        "credential = {{ type = \"certificate\", path = \"{}\", next_path = \"{}\" }}",
        old_cred.display(),
        new_cred.display()
    );
    let config = config_with(&emu, &both);
    // 1. only the old one is on the app: the credential falls back to it
    acme_provider(&config).token().await.unwrap();
    // 2. the customer uploads the new one: both work, the newest is used
    emu.admin
        .upload_certificate(ACME_TENANT, ACME_APP, std::fs::read(&new_cer).unwrap())
        .await
        .unwrap();
    acme_provider(&config).token().await.unwrap();
    // 3. the old one is removed from the app: still no failure
    emu.admin
        .remove_certificate(ACME_TENANT, ACME_APP, &old_sha1)
        .await
        .unwrap();
    let p = acme_provider(&config);
    p.token().await.unwrap();
    assert!(matches!(
        byok::kms::KeyProvider::key_state(&p).await,
        byok::kms::KeyState::Usable(_)
    ));
    // and with only the new certificate configured
    let only_new = config_with(
        &emu,
        &format!(
            "credential = {{ type = \"certificate\", path = \"{}\" }}",
            new_cred.display()
        ),
    );
    acme_provider(&only_new).token().await.unwrap();
    // while the old one alone is refused now
    let only_old = config_with(
        &emu,
        &format!(
            "credential = {{ type = \"certificate\", path = \"{}\" }}",
            old_cred.display()
        ),
    );
    assert!(
        acme_provider(&only_old)
            .token()
            .await
            .unwrap_err()
            .to_string()
            .contains("AADSTS700027")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pfx_with_a_passphrase_works() {
    let emu = Emu::start().await;
    let dir = emu.dir.path().join("pfx");
    // SAFETY of the test: the variable is set before any thread reads the environment for it
    unsafe { std::env::set_var("BYOK_TEST_PFX_PASSPHRASE", "correct horse battery staple") };
    let (cer, cred, _) = generate(
        &dir,
        "acme",
        &[
            "--pfx",
            "--passphrase-env",
            "BYOK_TEST_PFX_PASSPHRASE",
            "--bits",
            "4096",
        ],
    );
    emu.admin
        .upload_certificate(ACME_TENANT, ACME_APP, std::fs::read(&cer).unwrap())
        .await
        .unwrap();
    let config = config_with(
        &emu,
        &format!(
            "credential = {{ type = \"certificate\", path = \"{}\", password_env = \"BYOK_TEST_PFX_PASSPHRASE\" }}",
            cred.display()
        ),
    );
    acme_provider(&config).token().await.unwrap();
}

#[test]
fn check_key_warns_before_expiry_and_fails_after_and_cert_show_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_, soon, _) = generate(dir.path(), "soon", &["--days", "10"]);
    // an expired certificate, made by hand (byok cert generate never makes one)
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(3072).unwrap()).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "expired").unwrap();
    let name = name.build();
    let mut b = openssl::x509::X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    b.set_not_before(&openssl::asn1::Asn1Time::from_unix(now - 86_400 * 400).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::from_unix(now - 86_400).unwrap())
        .unwrap();
    b.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    let expired = dir.path().join("expired-credential.pem");
    common::emu_config::private_file(
        &expired,
        &[
            b.build().to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        ]
        .concat(),
    );

    let config = |p: &Path| {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n[quarantine]\nvault_url = \"https://op.vault.azure.net\"\nkey_name = \"q\"\nentra_tenant_id = \"9b2d3c1a-55e0-4c69-a1f7-3f1e0c2b8d40\"\nclient_id = \"0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10\"\ncredential = {{ type = \"certificate\", path = \"{p}\" }}\n[[tenants]]\nid = \"acme\"\nvault_url = \"https://acme-vault.vault.azure.net:1\"\nkey_name = \"k\"\nentra_tenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33\"\ncredential = {{ type = \"certificate\", path = \"{p}\" }}\nauthority_host = \"https://127.0.0.1:1\"\n[keys.resolve]\n\"acme-vault.vault.azure.net\" = \"127.0.0.1\"\n",
            p = p.display()
        );
        let path = dir
            .path()
            .join(format!("{}.toml", p.file_stem().unwrap().to_string_lossy()));
        std::fs::write(&path, text).unwrap();
        path
    };
    let out = common::byok()
        .args(["check-key", "--tenant", "acme", "--config"])
        .arg(config(&soon))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("WARN  certificate")
            && (text.contains("(in 9 days)") || text.contains("(in 10 days)")),
        "{text}"
    );
    assert!(text.contains("byok cert generate --tenant acme"), "{text}");
    let out = common::byok()
        .args(["check-key", "--tenant", "acme", "--config"])
        .arg(config(&expired))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("FAIL  certificate") && text.contains("expired at"),
        "{text}"
    );

    let out = common::byok()
        .args(["cert", "show", "--config"])
        .arg(config(&soon))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("acme (current certificate)")
            && text.contains("key matches  yes")
            && text.contains("days left"),
        "{text}"
    );
}
