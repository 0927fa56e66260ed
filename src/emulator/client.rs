//! A client of the emulator's admin API, for `byok vault-emulator admin`, the demo and tests.
//!
//! It must never be used by the worker: the emulator is a development and test tool.

use reqwest::Method;
use serde_json::{Value, json};

/// Talks to a running emulator's `/_admin` API over HTTPS, trusting its CA.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

/// An admin request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The CA PEM is not usable.
    #[error("the emulator CA certificate is not usable: {0}")]
    Ca(String),
    /// The request did not reach the emulator.
    #[error("cannot reach the emulator at {url}: {source}")]
    Request {
        /// URL.
        url: String,
        /// Cause.
        source: reqwest::Error,
    },
    /// The emulator refused it.
    #[error("the emulator answered {status}: {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its message.
        body: String,
    },
}

impl AdminClient {
    /// A client for the emulator at `base` (`https://127.0.0.1:8443`) trusting `ca_pem`.
    pub fn new(base: &str, ca_pem: &str, token: Option<String>) -> Result<Self, AdminError> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes())
            .map_err(|e| AdminError::Ca(e.to_string()))?;
        let http = reqwest::Client::builder()
            .add_root_certificate(ca)
            .build()
            .map_err(|e| AdminError::Ca(e.to_string()))?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token,
        })
    }

    /// Sends `method path` with an optional JSON body (or raw PEM for certificates).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        let url = format!("{}/_admin/{}", self.base, path.trim_start_matches('/'));
        let mut req = self.http.request(method, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.finish(&url, req).await
    }

    async fn finish(&self, url: &str, req: reqwest::RequestBuilder) -> Result<Value, AdminError> {
        let resp = req.send().await.map_err(|source| AdminError::Request {
            url: url.to_owned(),
            source,
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(AdminError::Refused {
                status: status.as_u16(),
                body: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Disables (`enabled = false`) or enables a key, or one version of it.
    pub async fn set_key_enabled(
        &self,
        vault: &str,
        key: &str,
        version: Option<&str>,
        enabled: bool,
    ) -> Result<Value, AdminError> {
        let action = if enabled { "enable" } else { "disable" };
        let q = version.map(|v| format!("?version={v}")).unwrap_or_default();
        self.call(
            Method::POST,
            &format!("vaults/{vault}/keys/{key}/{action}{q}"),
            None,
        )
        .await
    }

    /// Runs a key action: delete, recover, purge, rotate, update.
    pub async fn key_action(
        &self,
        vault: &str,
        key: &str,
        action: &str,
        body: Option<Value>,
    ) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            &format!("vaults/{vault}/keys/{key}/{action}"),
            body,
        )
        .await
    }

    /// Assigns a role (preset name) to an app on a vault.
    pub async fn add_role(
        &self,
        vault: &str,
        principal: &str,
        role: &str,
    ) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            &format!("vaults/{vault}/roles"),
            Some(json!({"principal": principal, "role": role})),
        )
        .await
    }

    /// Removes an app's role assignments on a vault (all, or the named role).
    pub async fn remove_role(
        &self,
        vault: &str,
        principal: &str,
        role: Option<&str>,
    ) -> Result<Value, AdminError> {
        let q = role
            .map(|r| {
                format!(
                    "&role={}",
                    url::form_urlencoded::byte_serialize(r.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default();
        self.call(
            Method::DELETE,
            &format!("vaults/{vault}/roles?principal={principal}{q}"),
            None,
        )
        .await
    }

    /// Adds a client secret to an app.
    pub async fn add_secret(
        &self,
        tenant: &str,
        app: &str,
        value: &str,
    ) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            &format!("tenants/{tenant}/apps/{app}/secrets"),
            Some(json!({"value": value})),
        )
        .await
    }

    /// Removes one client secret (or all) from an app.
    pub async fn remove_secrets(
        &self,
        tenant: &str,
        app: &str,
        value: Option<&str>,
    ) -> Result<Value, AdminError> {
        let q = value
            .map(|v| {
                format!(
                    "?value={}",
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            })
            .unwrap_or_default();
        self.call(
            Method::DELETE,
            &format!("tenants/{tenant}/apps/{app}/secrets{q}"),
            None,
        )
        .await
    }

    /// Uploads a certificate (PEM or DER) to an app registration.
    pub async fn upload_certificate(
        &self,
        tenant: &str,
        app: &str,
        cert: Vec<u8>,
    ) -> Result<Value, AdminError> {
        let url = format!(
            "{}/_admin/tenants/{tenant}/apps/{app}/certificates",
            self.base
        );
        let mut req = self.http.post(&url).body(cert);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        self.finish(&url, req).await
    }

    /// Removes a certificate by SHA-1 or SHA-256 thumbprint (hex).
    pub async fn remove_certificate(
        &self,
        tenant: &str,
        app: &str,
        thumbprint: &str,
    ) -> Result<Value, AdminError> {
        self.call(
            Method::DELETE,
            &format!("tenants/{tenant}/apps/{app}/certificates/{thumbprint}"),
            None,
        )
        .await
    }

    /// Sets faults for a target (a vault name, `*` for all vaults, or `entra`).
    pub async fn set_fault(&self, fault: Value) -> Result<Value, AdminError> {
        self.call(Method::POST, "faults", Some(fault)).await
    }

    /// Clears every fault.
    pub async fn clear_faults(&self) -> Result<Value, AdminError> {
        self.call(Method::DELETE, "faults", None).await
    }

    /// Changes vault settings (refuse_encrypt_when_disabled, budget_per_10s, purge_protection).
    pub async fn vault_settings(&self, vault: &str, settings: Value) -> Result<Value, AdminError> {
        self.call(
            Method::POST,
            &format!("vaults/{vault}/settings"),
            Some(settings),
        )
        .await
    }

    /// Authenticated requests per vault and operation since start.
    pub async fn stats(&self) -> Result<Value, AdminError> {
        self.call(Method::GET, "stats", None).await
    }

    /// The Key Vault requests of `vault` the emulator answered, in order, each with the client's
    /// `x-ms-client-request-id` (as Key Vault's own logs keep it).
    pub async fn requests(&self, vault: &str) -> Result<Value, AdminError> {
        self.call(Method::GET, &format!("requests?vault={vault}"), None)
            .await
    }

    /// The whole state, without secrets or private keys.
    pub async fn state(&self) -> Result<Value, AdminError> {
        self.call(Method::GET, "state", None).await
    }
}
