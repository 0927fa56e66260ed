//! The tenants' and the quarantine key's checks: vault URLs, ids, credentials and their files,
//! the tenants directory, and the checks across sections. It must never read a secret's value.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use url::Url;

use super::load::*;
use super::raw::*;
use super::*;

impl Loader {
    /// Checks the Key Vault fields of a tenant or of the quarantine key.
    pub(super) fn key(&mut self, at: &str, raw: KeyRaw) -> Option<KeyVaultKey> {
        let before = self.problems.len();
        let required = |l: &mut Self, name: &str, v: Option<String>, fix: &str| {
            if v.as_deref().is_none_or(|s| s.trim().is_empty()) {
                l.error(format!("{at}.{name}"), "is missing", fix);
            }
            v
        };
        let vault_url = required(
            self,
            "vault_url",
            raw.vault_url,
            "copy the Key Vault URI: https://<key-vault-name>.vault.azure.net (or the Private Link URL https://<key-vault-name>.privatelink.vaultcore.azure.net)",
        );
        let key_name = required(
            self,
            "key_name",
            raw.key_name,
            "copy the key's name from Key vaults > <vault> > Objects > Keys",
        );
        let entra_tenant_id = required(
            self,
            "entra_tenant_id",
            raw.entra_tenant_id,
            "copy the Directory (tenant) ID from the app registration's overview in Entra ID",
        );
        let client_id = required(
            self,
            "client_id",
            raw.client_id,
            "copy the Application (client) ID from the app registration's overview in Entra ID",
        );
        if raw.credential.is_none() {
            self.error(
                format!("{at}.credential"),
                "is missing",
                "add credential = { type = \"certificate\", path = \"...\" } (recommended) or { type = \"client-secret\", env = \"VAR\" }",
            );
        }

        let vault_url = vault_url.and_then(|u| self.vault_url(at, &u));
        self.identifiers(
            at,
            key_name.as_deref(),
            raw.key_version.as_deref(),
            entra_tenant_id.as_deref(),
            client_id.as_deref(),
        );
        let authority_host = match raw.authority_host {
            None => Url::parse(DEFAULT_AUTHORITY_HOST).ok(),
            Some(a) => match Url::parse(&a) {
                Ok(u) if u.scheme() == "https" => Some(u),
                _ => {
                    self.error(
                        format!("{at}.authority_host"),
                        format!("{a:?} is not an https URL"),
                        format!("leave it out for {DEFAULT_AUTHORITY_HOST}, or give the https authority of your cloud"),
                    );
                    None
                }
            },
        };
        let ca_file = raw.ca_file.map(|p| self.resolve(&p));
        if let Some(p) = &ca_file {
            self.readable_pem(&format!("{at}.ca_file"), p, "CERTIFICATE");
        }
        let credential = raw.credential.and_then(|c| self.credential(at, c));
        if self.has_errors_since(before) {
            return None;
        }
        Some(KeyVaultKey {
            vault_url: vault_url?,
            key_name: key_name?,
            key_version: raw.key_version.map(|v| v.to_ascii_lowercase()),
            entra_tenant_id: entra_tenant_id?,
            client_id: client_id?,
            credential: credential?,
            authority_host: authority_host?,
            ca_file,
        })
    }

    /// The key name, version, directory and application ids look like what the portal shows.
    fn identifiers(
        &mut self,
        at: &str,
        key_name: Option<&str>,
        key_version: Option<&str>,
        entra_tenant_id: Option<&str>,
        client_id: Option<&str>,
    ) {
        if let Some(name) = key_name {
            let ok = (1..=127).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                self.error(
                    format!("{at}.key_name"),
                    format!("{name:?} is not a Key Vault key name"),
                    "key names are 1 to 127 letters, digits and dashes; copy it from the portal",
                );
            }
        }
        if let Some(v) = key_version
            && (v.len() != 32 || !v.chars().all(|c| c.is_ascii_hexdigit()))
        {
            self.error(
                    format!("{at}.key_version"),
                    format!("{v:?} is not a key version (32 hex digits)"),
                    "copy the last part of the Key Identifier https://<vault>.vault.azure.net/keys/<name>/<version>, or leave it out to use the newest enabled version",
                );
        }
        if let Some(t) = entra_tenant_id
            && !is_guid(t)
            && !(t.contains('.')
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-')))
        {
            self.error(
                    format!("{at}.entra_tenant_id"),
                    format!("{t:?} is neither a GUID nor a domain"),
                    "copy the Directory (tenant) ID, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47",
                );
        }
        if let Some(c) = client_id
            && !is_guid(c)
        {
            self.error(
                format!("{at}.client_id"),
                format!("{c:?} is not a GUID"),
                "copy the Application (client) ID, a GUID, from the app registration",
            );
        }
    }

    pub(super) fn vault_url(&mut self, at: &str, text: &str) -> Option<Url> {
        let field = format!("{at}.vault_url");
        let url = match Url::parse(text) {
            Ok(u) => u,
            Err(e) => {
                self.error(
                    &field,
                    format!("{text:?} is not a URL ({e})"),
                    "write it as https://<key-vault-name>.vault.azure.net",
                );
                return None;
            }
        };
        if url.scheme() != "https" {
            self.error(
                &field,
                format!("{text:?} is not https"),
                "Key Vault is only reachable over https: https://<key-vault-name>.vault.azure.net",
            );
            return None;
        }
        if url.query().is_some() || url.fragment().is_some() {
            self.error(
                &field,
                "has a query or fragment",
                "use only the vault's base URL",
            );
            return None;
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        if url.path().contains("/keys") {
            self.error(
                &field,
                "contains a key path; vault_url is only the vault's base URL",
                "use https://<key-vault-name>.vault.azure.net and put the key in key_name (and key_version)",
            );
            return None;
        }
        if !KEY_VAULT_SUFFIXES.iter().any(|s| host.ends_with(s)) {
            self.warn(
                &field,
                format!(
                    "{host:?} is not an Azure Key Vault host ({})",
                    KEY_VAULT_SUFFIXES.join(", ")
                ),
                "fine for the local emulator; in production copy the Key Vault URI from the portal",
            );
        }
        Some(url)
    }

    pub(super) fn credential(&mut self, at: &str, raw: CredentialRaw) -> Option<Credential> {
        let field = format!("{at}.credential");
        match raw {
            CredentialRaw::Certificate {
                path,
                next_path,
                format,
                password_env,
            } => {
                let path = self.resolve(&path);
                let next = next_path.map(|p| self.resolve(&p));
                let format = format.or_else(|| {
                    match path
                        .extension()
                        .and_then(|e| e.to_str())
                        .map(str::to_ascii_lowercase)
                        .as_deref()
                    {
                        Some("pem" | "crt" | "key") => Some(CertFormat::Pem),
                        Some("pfx" | "p12") => Some(CertFormat::Pfx),
                        _ => None,
                    }
                });
                let Some(format) = format else {
                    self.error(
                        format!("{field}.format"),
                        format!(
                            "cannot tell the format of {} from its extension",
                            path.display()
                        ),
                        "add format = \"pem\" or format = \"pfx\"",
                    );
                    return None;
                };
                for (name, p) in
                    std::iter::once(("path", &path)).chain(next.iter().map(|n| ("next_path", n)))
                {
                    let at = format!("{field}.{name}");
                    match format {
                        CertFormat::Pem => {
                            if self.readable_pem(&at, p, "CERTIFICATE") {
                                self.readable_pem(&at, p, "PRIVATE KEY");
                            }
                        }
                        CertFormat::Pfx => {
                            self.readable(&at, p);
                        }
                    }
                    self.private_file(&at, p);
                }
                let password = password_env.map(|name| {
                    self.env_present(&format!("{field}.password_env"), &name);
                    SecretSource::Env(name)
                });
                Some(Credential::Certificate {
                    path,
                    next,
                    format,
                    password,
                })
            }
            CredentialRaw::ClientSecret { env, file } => match (env, file) {
                (Some(name), None) => {
                    self.env_present(&format!("{field}.env"), &name);
                    Some(Credential::ClientSecret(SecretSource::Env(name)))
                }
                (None, Some(path)) => {
                    let path = self.resolve(&path);
                    let source = SecretSource::File(path.clone());
                    if let Err(e) = source.load() {
                        self.error(format!("{field}.file"), e.to_string(), "write the client secret's Value (not its ID) into that file, readable by the worker only");
                    }
                    self.private_file(&format!("{field}.file"), &path);
                    Some(Credential::ClientSecret(source))
                }
                (Some(_), Some(_)) => {
                    self.error(
                        &field,
                        "has both env and file",
                        "keep one: env = \"VAR\" or file = \"/run/secrets/...\"",
                    );
                    None
                }
                (None, None) => {
                    self.error(
                        &field,
                        "a client secret needs env or file",
                        "add env = \"VAR\" (the variable holding the secret's Value) or file = \"/run/secrets/...\"; never the secret itself",
                    );
                    None
                }
            },
        }
    }

    pub(super) fn env_present(&mut self, field: &str, name: &str) {
        if std::env::var_os(name).is_none_or(|v| v.is_empty()) {
            self.error(
                field,
                format!("environment variable {name} is not set (or empty) in this environment"),
                format!("export {name} in the worker's environment (a Kubernetes secret, a systemd credential); run this check where the worker runs"),
            );
        }
    }

    pub(super) fn readable(&mut self, field: &str, path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => true,
            Ok(_) => {
                self.error(
                    field,
                    format!("{} is not a file", path.display()),
                    "point it at the file itself",
                );
                false
            }
            Err(e) => {
                self.error(
                    field,
                    format!("{} cannot be read: {}", path.display(), e.kind()),
                    "check the path (relative paths are resolved from the config file's folder)",
                );
                false
            }
        }
    }

    pub(super) fn readable_pem(&mut self, field: &str, path: &Path, block: &str) -> bool {
        if !self.readable(field, path) {
            return false;
        }
        let has = std::fs::read_to_string(path)
            .map(|t| {
                t.lines()
                    .any(|l| l.starts_with("-----BEGIN ") && l.contains(block))
            })
            .unwrap_or(false);
        if !has {
            self.error(
                field,
                format!("{} has no PEM {block} block", path.display()),
                if block == "PRIVATE KEY" {
                    "a PEM credential holds the certificate and its private key; append the key, or use the .pfx with format = \"pfx\""
                } else {
                    "give a PEM file with -----BEGIN CERTIFICATE-----"
                },
            );
            return false;
        }
        true
    }

    pub(super) fn private_file(&mut self, field: &str, path: &Path) {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = std::fs::metadata(path) {
                let mode = m.permissions().mode();
                if mode & 0o077 != 0 {
                    let what = format!(
                        "{} holds a secret and other users can read it (mode {:o})",
                        path.display(),
                        mode & 0o777
                    );
                    if self.options.allow_insecure_permissions {
                        self.warn(field, what, format!("chmod 600 {}", path.display()));
                    } else {
                        self.error(
                            field,
                            what,
                            format!(
                                "chmod 600 {} (or start with --allow-insecure-permissions for throwaway secrets)",
                                path.display()
                            ),
                        );
                    }
                }
            }
        }
    }

    pub(super) fn tenants(
        &mut self,
        inline: Option<toml::Value>,
        dir: Option<toml::Value>,
    ) -> Option<BTreeMap<TenantId, Tenant>> {
        let before = self.problems.len();
        let mut found: Vec<(String, PathBuf, toml::Table)> = Vec::new();
        self.inline_tenants(inline, &mut found);
        self.tenants_dir(dir, &mut found);
        if found.is_empty() {
            self.warn("tenants", "no tenant is configured: every message will go to the quarantine as unknown-tenant", "add [[tenants]] tables or tenants_dir");
        }
        let mut tenants: BTreeMap<TenantId, Tenant> = BTreeMap::new();
        let mut seen: HashMap<String, String> = HashMap::new();
        for (label, file, table) in found {
            if let Some(t) = self.tenant(&label, file, table, &mut seen) {
                tenants.insert(t.id.clone(), t);
            }
        }
        (!self.has_errors_since(before)).then_some(tenants)
    }

    /// The `[[tenants]]` tables of the configuration file.
    fn inline_tenants(
        &mut self,
        inline: Option<toml::Value>,
        found: &mut Vec<(String, PathBuf, toml::Table)>,
    ) {
        let config_file = PathBuf::from(&self.file);
        match inline {
            None => {}
            Some(toml::Value::Array(items)) => {
                for (i, item) in items.into_iter().enumerate() {
                    match item {
                        toml::Value::Table(t) => {
                            found.push((format!("tenants[{i}]"), config_file.clone(), t))
                        }
                        _ => self.error(
                            format!("tenants[{i}]"),
                            "is not a table",
                            "write each tenant as a [[tenants]] table",
                        ),
                    }
                }
            }
            Some(_) => self.error(
                "tenants",
                "is not an array of tables",
                "write each tenant as a [[tenants]] table",
            ),
        }
    }

    /// The `<tenant>.toml` files of `tenants_dir` (the file name is the id unless it sets one).
    fn tenants_dir(
        &mut self,
        dir: Option<toml::Value>,
        found: &mut Vec<(String, PathBuf, toml::Table)>,
    ) {
        match dir {
            None => {}
            Some(toml::Value::String(d)) => {
                let dir = self.resolve(Path::new(&d));
                match std::fs::read_dir(&dir) {
                    Err(e) => self.error(
                        "tenants_dir",
                        format!("{} cannot be read: {}", dir.display(), e.kind()),
                        "point it at a folder of one <tenant>.toml file per tenant",
                    ),
                    Ok(entries) => {
                        let mut files: Vec<PathBuf> = entries
                            .filter_map(Result::ok)
                            .map(|e| e.path())
                            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                            .collect();
                        files.sort();
                        for f in files {
                            let label = f.display().to_string();
                            let parsed = std::fs::read_to_string(&f)
                                .map_err(|e| e.to_string())
                                .and_then(|t| {
                                    toml::from_str::<toml::Table>(&t)
                                        .map_err(|e| e.message().to_owned())
                                });
                            match parsed {
                                Ok(mut t) => {
                                    if !t.contains_key("id")
                                        && let Some(stem) = f.file_stem().and_then(|s| s.to_str())
                                    {
                                        t.insert("id".into(), toml::Value::String(stem.into()));
                                    }
                                    found.push((label, f, t));
                                }
                                Err(e) => self.error(
                                    label,
                                    format!("cannot be read as TOML: {e}"),
                                    "fix the file, or remove it from the tenants folder",
                                ),
                            }
                        }
                    }
                }
            }
            Some(_) => self.error(
                "tenants_dir",
                "is not a path",
                "write tenants_dir = \"tenants.d\"",
            ),
        }
    }

    /// One tenant's table, or `None` with its problems recorded (or when its id is invalid).
    fn tenant(
        &mut self,
        label: &str,
        file: PathBuf,
        mut table: toml::Table,
        seen: &mut HashMap<String, String>,
    ) -> Option<Tenant> {
        let id = match table.remove("id") {
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                self.error(
                    format!("{label}.id"),
                    "is not a string",
                    "write id = \"acme\"",
                );
                return None;
            }
            None => {
                self.error(
                    format!("{label}.id"),
                    "is missing",
                    "give each tenant an id, e.g. id = \"acme\"",
                );
                return None;
            }
        };
        let at = format!("{label} (tenant {id:?})");
        let byok_enabled = match table.remove("byok_enabled") {
            None => true,
            Some(toml::Value::Boolean(b)) => b,
            Some(_) => {
                self.error(
                    format!("{at}.byok_enabled"),
                    "is not true or false",
                    "write byok_enabled = true",
                );
                true
            }
        };
        let tid = match TenantId::parse(&id) {
            Ok(t) => Some(t),
            Err(e) => {
                self.error(
                    format!("{at}.id"),
                    e.to_string(),
                    "use letters, digits, '.', '_' and '-', not starting with '_'",
                );
                None
            }
        };
        if let Some(prev) = seen.insert(id.clone(), label.to_owned()) {
            self.error(
                format!("{at}.id"),
                format!("tenant {id:?} is also defined at {prev}"),
                "keep one definition per tenant id",
            );
        }
        let key = if !byok_enabled && table.is_empty() {
            None
        } else {
            match KeyRaw::deserialize(toml::Value::Table(table)) {
                Ok(raw) => self.key(&at, raw),
                Err(e) => {
                    let msg = e.message().trim().to_owned();
                    let fix = serde_fix(&msg, "tenants");
                    self.error(&at, msg, fix);
                    None
                }
            }
        };
        let tid = tid?;
        if byok_enabled && key.is_none() {
            return None; // its problems are recorded
        }
        Some(Tenant {
            id: tid,
            byok_enabled,
            key,
            defined_in: file,
        })
    }

    pub(super) fn cross_checks(
        &mut self,
        kafka: &KafkaConfig,
        tenants: &BTreeMap<TenantId, Tenant>,
    ) {
        if kafka.archive_topic.is_per_tenant() {
            for id in tenants.keys() {
                let topic = kafka.archive_topic.topic_for(id);
                if topic.len() > 249 {
                    self.error(
                        "kafka.archive_topic",
                        format!("the topic for tenant {id} would be longer than 249 characters"),
                        "use a shorter template",
                    );
                }
            }
        }
    }
}
