//! Helpers shared by the black-box tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

pub(crate) mod audit_run;
pub(crate) mod mock;

use std::path::PathBuf;

use byok::dek::{DataKey, DekId};

/// A path under tests/fixtures.
pub(crate) fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// Parses a JSON fixture.
pub(crate) fn json(rel: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

/// Hex field of a JSON case (null = None).
pub(crate) fn hex_field(case: &serde_json::Value, name: &str) -> Option<Vec<u8>> {
    case[name].as_str().map(|s| hex::decode(s).unwrap())
}

/// A DataKey from a case's `dek_hex` and `dek_id`.
pub(crate) fn case_key(case: &serde_json::Value) -> DataKey {
    let bytes: [u8; 32] = hex_field(case, "dek_hex").unwrap().try_into().unwrap();
    let id = DekId::parse(case["dek_id"].as_str().unwrap()).unwrap();
    DataKey::from_bytes_for_vectors(id, bytes)
}

/// The `byok` binary.
pub(crate) fn byok() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_byok"))
}

/// Runs the `byok` binary with `args` off the async runtime: (success, stderr then stdout, so
/// that a summary's last line comes last).
pub(crate) async fn run_byok(args: Vec<std::ffi::OsString>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let out = byok().args(&args).output().unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ),
        )
    })
    .await
    .unwrap()
}

pub mod tansu;

/// A Key Vault emulator started in-process from the example seed, and Azure SDK clients for it.
pub(crate) mod emu {
    use std::sync::Arc;

    use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
    use azure_core::credentials::{Secret, TokenCredential};
    use azure_core::http::{ClientOptions, Transport};
    use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
    use azure_security_keyvault_keys::{KeyClient, KeyClientOptions};
    use byok::emulator::{self, client::AdminClient};

    pub(crate) const ACME_TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    pub(crate) const ACME_APP: &str = "4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33";
    pub(crate) const ACME_SECRET: &str = "acme-example-secret-not-real";
    pub(crate) const ACME_ADMIN_APP: &str = "a0a0a0a0-1111-4222-8333-444455556666";
    pub(crate) const ACME_ADMIN_SECRET: &str = "acme-admin-secret-not-real";
    pub(crate) const GLOBEX_TENANT: &str = "c3f1a2b4-7d6e-4f5a-9b8c-1d2e3f4a5b6c";
    pub(crate) const GLOBEX_APP: &str = "d4e5f6a7-b8c9-4d0e-8f1a-2b3c4d5e6f70";
    pub(crate) const GLOBEX_SECRET: &str = "example-client-secret-not-real";

    pub(crate) struct Emu {
        pub running: emulator::Running,
        pub admin: AdminClient,
        pub http: reqwest::Client,
        pub dir: tempfile::TempDir,
    }

    impl Emu {
        /// Starts the emulator on a free port from config/emulator.example.toml.
        pub(crate) async fn start() -> Emu {
            Self::start_with(|_| {}).await
        }

        pub(crate) async fn start_with(tweak: impl FnOnce(&mut emulator::Options)) -> Emu {
            let dir = tempfile::tempdir().unwrap();
            let mut opts = emulator::Options {
                seed: Some(
                    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("config/emulator.example.toml"),
                ),
                ..emulator::Options::default()
            };
            tweak(&mut opts);
            let running = emulator::start(opts).await.unwrap();
            let admin = AdminClient::new(&running.authority(), &running.ca_pem, None).unwrap();
            let http = http_client(&running);
            Emu {
                running,
                admin,
                http,
                dir,
            }
        }

        pub(crate) fn port(&self) -> u16 {
            self.running.addr.port()
        }

        pub(crate) fn client_options(&self) -> ClientOptions {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = self.running.authority();
            ClientOptions {
                transport: Some(Transport::new(Arc::new(self.http.clone()))),
                cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
                ..ClientOptions::default()
            }
        }

        pub(crate) fn secret_credential(
            &self,
            tenant: &str,
            app: &str,
            secret: &str,
        ) -> Arc<ClientSecretCredential> {
            ClientSecretCredential::new(
                tenant,
                app.to_owned(),
                Secret::new(secret.to_owned()),
                Some(ClientSecretCredentialOptions {
                    client_options: self.client_options(),
                }),
            )
            .unwrap()
        }

        pub(crate) fn key_client(
            &self,
            vault: &str,
            credential: Arc<dyn TokenCredential>,
        ) -> KeyClient {
            KeyClient::new(
                &self.running.vault_url(vault),
                credential,
                Some(KeyClientOptions {
                    client_options: self.client_options(),
                    ..KeyClientOptions::default()
                }),
            )
            .unwrap()
        }

        /// The seed's acme app with its secret, on acme-vault.
        pub(crate) fn acme(&self) -> KeyClient {
            self.key_client(
                "acme-vault",
                self.secret_credential(ACME_TENANT, ACME_APP, ACME_SECRET),
            )
        }

        /// Acme's administrator app on acme-vault.
        pub(crate) fn acme_admin(&self) -> KeyClient {
            self.key_client(
                "acme-vault",
                self.secret_credential(ACME_TENANT, ACME_ADMIN_APP, ACME_ADMIN_SECRET),
            )
        }
    }

    /// A reqwest client that trusts the emulator's CA and resolves the seed's vault hosts (and
    /// any `<name>.vault.azure.net` the tests use) to 127.0.0.1.
    pub(crate) fn http_client(running: &emulator::Running) -> reqwest::Client {
        let addr = running.addr;
        let mut b = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(running.ca_pem.as_bytes()).unwrap(),
            )
            .no_proxy();
        for v in ["acme-vault", "globex-kv", "byok-operator", "nope-vault"] {
            b = b
                .resolve(&format!("{v}.vault.azure.net"), addr)
                .resolve(&format!("{v}.privatelink.vaultcore.azure.net"), addr);
        }
        b.build().unwrap()
    }

    /// The HTTP status, `error.code` and `error.innererror.code` of an SDK error, read from the
    /// raw body: azure_core's own `error_code` falls back to the status number whenever the
    /// message holds a JSON escape (Key Vault's RBAC message holds `\r\n`).
    pub(crate) fn error_codes(err: &azure_core::Error) -> (u16, String, String) {
        match err.kind() {
            azure_core::error::ErrorKind::HttpResponse {
                status,
                raw_response,
                ..
            } => {
                let body = raw_response
                    .as_ref()
                    .and_then(|r| serde_json::from_slice::<serde_json::Value>(r.body()).ok())
                    .unwrap_or_default();
                let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                (
                    u16::from(*status),
                    s(&body["error"]["code"]),
                    s(&body["error"]["innererror"]["code"]),
                )
            }
            other => (0, format!("{other:?}"), String::new()),
        }
    }
}

/// Worker configurations pointing at a running emulator.
pub(crate) mod emu_config {
    use std::path::{Path, PathBuf};

    /// Writes a secret file readable by its owner only, as the worker requires.
    pub(crate) fn private_file(path: &Path, contents: &[u8]) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// The example acme certificate credential, copied into `dir` with mode 0600 (the
    /// checkout's copy has whatever mode the clone gave it); returns its path.
    pub(crate) fn acme_pem(dir: &Path) -> PathBuf {
        let to = dir.join("acme.pem");
        if !to.exists() {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            private_file(
                &to,
                &std::fs::read(root.join("config/example/acme.pem")).unwrap(),
            );
        }
        to
    }

    /// The `[audit]` section for the example seed's operator signing key (cluster
    /// "test-cluster"), its credential the operator's secret file.
    pub(crate) fn audit_toml(port: u16, operator_secret: &Path) -> String {
        format!(
            r#"
[audit]
cluster = "test-cluster"

[audit.signing_key]
vault_url = "https://byok-operator.vault.azure.net:{port}"
key_name = "audit-signing"
entra_tenant_id = "9b2d3c1a-55e0-4c69-a1f7-3f1e0c2b8d40"
client_id = "0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10"
credential = {{ type = "client-secret", file = "{}" }}
authority_host = "https://127.0.0.1:{port}"
"#,
            operator_secret.display()
        )
    }

    /// Writes a worker config for the example seed's tenants at the emulator on `port`, with
    /// its CA in `dir`. `extra` is appended (more tenants, overrides).
    pub(crate) fn write(dir: &Path, port: u16, ca_pem: &str, extra: &str) -> PathBuf {
        let ca = dir.join("emulator-ca.pem");
        std::fs::write(&ca, ca_pem).unwrap();
        let secret = dir.join("globex.secret");
        private_file(&secret, b"example-client-secret-not-real\n");
        let operator = dir.join("operator.secret");
        private_file(&operator, b"example-operator-secret-not-real\n");
        let acme_pem = acme_pem(dir);
        let text = format!(
            r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[keys]
ca_file = "{ca}"
check_interval = "5s"

[keys.resolve]
"acme-vault.vault.azure.net" = "127.0.0.1"
"globex-kv.privatelink.vaultcore.azure.net" = "127.0.0.1"
"byok-operator.vault.azure.net" = "127.0.0.1"

[quarantine]
vault_url = "https://byok-operator.vault.azure.net:{port}"
key_name = "quarantine-kek"
entra_tenant_id = "9b2d3c1a-55e0-4c69-a1f7-3f1e0c2b8d40"
client_id = "0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10"
credential = {{ type = "client-secret", file = "{operator}" }}
authority_host = "https://127.0.0.1:{port}"

[[tenants]]
id = "acme"
vault_url = "https://acme-vault.vault.azure.net:{port}"
key_name = "byok-key"
key_version = "78deebed173b48e48f55abf87ed4cf71"
entra_tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33"
credential = {{ type = "certificate", path = "{acme}" }}
authority_host = "https://127.0.0.1:{port}"

[[tenants]]
id = "globex"
vault_url = "https://globex-kv.privatelink.vaultcore.azure.net:{port}"
key_name = "archive-kek"
entra_tenant_id = "c3f1a2b4-7d6e-4f5a-9b8c-1d2e3f4a5b6c"
client_id = "d4e5f6a7-b8c9-4d0e-8f1a-2b3c4d5e6f70"
credential = {{ type = "client-secret", file = "{secret}" }}
authority_host = "https://127.0.0.1:{port}"
{extra}
"#,
            ca = ca.display(),
            operator = operator.display(),
            acme = acme_pem.display(),
            secret = secret.display(),
        );
        let path = dir.join("byok.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}
