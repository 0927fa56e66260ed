//! The emulator's seed file (`config/emulator.example.toml`): Entra tenants, app registrations
//! with client secrets and uploaded certificates, vaults, keys and role assignments. Loading it
//! builds a fresh [`World`]; keys given as PEM files are imported (so start-up is fast), others
//! are generated.
//!
//! It must never accept a seed silently: an unknown field or a bad key file is an error naming it.

use super::error::EmuError;
use std::path::{Path, PathBuf};

use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use serde::Deserialize;

use super::model::{
    ALL_KEY_OPS, App, Attributes, EntraTenant, Key, KeyVersion, Role, RoleAssignment, UploadedCert,
    Vault, World, now_secs,
};

/// A seed file that cannot be loaded.
#[derive(Debug, thiserror::Error)]
#[error("seed {file}: {what}")]
pub struct SeedError {
    file: String,
    what: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    #[serde(default)]
    tenants: Vec<TenantSeed>,
    #[serde(default)]
    vaults: Vec<VaultSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantSeed {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    apps: Vec<AppSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppSeed {
    client_id: String,
    #[serde(default)]
    name: String,
    /// Client secrets, in clear: this is a local emulator's seed.
    #[serde(default)]
    secrets: Vec<String>,
    /// Certificate files (PEM or DER) uploaded to the app; a PEM may also hold the private key,
    /// which is ignored.
    #[serde(default)]
    certificates: Vec<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VaultSeed {
    name: String,
    tenant: String,
    #[serde(default = "default_soft_delete_days")]
    soft_delete_days: u32,
    #[serde(default = "default_true")]
    purge_protection: bool,
    #[serde(default)]
    refuse_encrypt_when_disabled: bool,
    #[serde(default = "default_budget")]
    budget_per_10s: u32,
    #[serde(default)]
    keys: Vec<KeySeed>,
    #[serde(default)]
    roles: Vec<RoleSeed>,
}

const fn default_soft_delete_days() -> u32 {
    90
}
const fn default_true() -> bool {
    true
}
const fn default_budget() -> u32 {
    4000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySeed {
    name: String,
    #[serde(default = "default_size")]
    size: usize,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    /// A PKCS#8 or PKCS#1 PEM private key to import instead of generating one.
    #[serde(default)]
    pem: Option<PathBuf>,
    /// A fixed version id (32 hex digits), so configs can pin it.
    #[serde(default)]
    version: Option<String>,
    #[serde(default = "default_true")]
    enabled: bool,
}

const fn default_size() -> usize {
    4096
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleSeed {
    app: String,
    /// A custom role's name (with data_actions).
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    data_actions: Option<Vec<String>>,
    #[serde(default)]
    key: Option<String>,
}

/// Loads a seed file into a new world.
pub fn load(path: &Path) -> Result<World, SeedError> {
    let fail = |what: String| SeedError {
        file: path.display().to_string(),
        what,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let seed: SeedFile = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut world = World::default();
    for t in seed.tenants {
        let id = t.id.to_ascii_lowercase();
        let mut tenant = EntraTenant {
            name: t.name,
            ..EntraTenant::default()
        };
        for a in t.apps {
            let mut app = App {
                name: a.name,
                secrets: a.secrets,
                certificates: Vec::new(),
            };
            for c in a.certificates {
                let p = base.join(&c);
                let bytes = std::fs::read(&p)
                    .map_err(|e| fail(format!("certificate {}: {e}", p.display())))?;
                app.certificates.push(
                    UploadedCert::parse(&bytes)
                        .map_err(|e| fail(format!("certificate {}: {e}", p.display())))?,
                );
            }
            tenant.apps.insert(a.client_id.to_ascii_lowercase(), app);
        }
        world.tenants.insert(id, tenant);
    }
    for v in seed.vaults {
        let tenant = v.tenant.to_ascii_lowercase();
        if !world.tenants.contains_key(&tenant) {
            return Err(fail(format!(
                "vault {} names tenant {tenant}, which the seed does not declare",
                v.name
            )));
        }
        if !(7..=90).contains(&v.soft_delete_days) {
            return Err(fail(format!(
                "vault {}: soft_delete_days must be 7 to 90",
                v.name
            )));
        }
        let mut vault = Vault {
            tenant,
            soft_delete_days: v.soft_delete_days,
            purge_protection: v.purge_protection,
            refuse_encrypt_when_disabled: v.refuse_encrypt_when_disabled,
            budget_per_10s: v.budget_per_10s,
            keys: Default::default(),
            deleted: Default::default(),
            roles: Vec::new(),
        };
        for k in v.keys {
            let (name, key) = seed_key(base, k).map_err(|e| fail(e.to_string()))?;
            vault.keys.insert(name, key);
        }
        for r in v.roles {
            vault
                .roles
                .push(seed_role(&v.name, r).map_err(|e| fail(e.to_string()))?);
        }
        world.vaults.insert(v.name.to_ascii_lowercase(), vault);
    }
    Ok(world)
}

/// One seeded key: its private key (from a PEM file, or generated), operations and version.
fn seed_key(base: &Path, k: KeySeed) -> Result<(String, Key), EmuError> {
    let private = match &k.pem {
        Some(p) => {
            let p = base.join(p);
            let pem = std::fs::read_to_string(&p).map_err(|e| EmuError::KeyFile {
                path: p.clone(),
                detail: e.to_string(),
            })?;
            RsaPrivateKey::from_pkcs8_pem(&pem)
                .or_else(|_| RsaPrivateKey::from_pkcs1_pem(&pem))
                .map_err(|e| EmuError::KeyFile {
                    path: p.clone(),
                    detail: format!("not an RSA private key PEM: {e}"),
                })?
        }
        None => generate(k.size)?,
    };
    let ops = k
        .key_ops
        .unwrap_or_else(|| ALL_KEY_OPS.iter().map(|s| (*s).to_owned()).collect());
    let now = now_secs();
    let mut version = KeyVersion::from_private(
        private,
        ops,
        Attributes {
            enabled: k.enabled,
            nbf: None,
            exp: None,
            created: now,
            updated: now,
        },
    )?;
    if let Some(fixed) = k.version {
        if fixed.len() != 32 || !fixed.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(EmuError::KeyVersion { key: k.name });
        }
        version.version = fixed.to_ascii_lowercase();
    }
    Ok((
        k.name,
        Key {
            versions: vec![version],
        },
    ))
}

/// One seeded role assignment of vault `vault`.
fn seed_role(vault: &str, r: RoleSeed) -> Result<RoleAssignment, EmuError> {
    let role = match (r.role, r.data_actions) {
        (Some(name), None) => Role::Preset(name),
        (role, Some(data_actions)) => Role::Custom {
            name: r.name.or(role).unwrap_or_else(|| "custom".into()),
            data_actions,
        },
        (None, None) => {
            return Err(EmuError::RoleWithoutActions {
                vault: vault.to_owned(),
            });
        }
    };
    role.data_actions()?;
    Ok(RoleAssignment {
        principal: r.app.to_ascii_lowercase(),
        role,
        key: r.key,
    })
}

/// Generates an RSA key of `bits` (2048, 3072 or 4096).
pub fn generate(bits: usize) -> Result<RsaPrivateKey, EmuError> {
    if !matches!(bits, 2048 | 3072 | 4096) {
        return Err(EmuError::KeySize { bits });
    }
    RsaPrivateKey::new(&mut rand::rngs::OsRng, bits).map_err(|e| EmuError::Generate(e.to_string()))
}
