//! The admin API (`/_admin/...`): changes the world the way a tenant would in the Azure portal
//! (disable a key, delete and recover it, rotate it, remove a role, rotate a client secret,
//! upload a certificate) and injects faults. JSON in and out; documented in
//! `docs/vault-emulator.md`; `byok vault-emulator admin` wraps it.
//!
//! It must never be reachable without its token when one is configured, and never hand out a
//! private key.

use super::error::EmuError;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::model::{Key, Role, RoleAssignment, UploadedCert, now_secs};
use super::{Fault, Reply, Req, Shared};

fn error(status: StatusCode, message: impl std::fmt::Display) -> Reply {
    Reply::json(status, json!({"error": message.to_string()}))
}

pub(super) async fn handle(shared: &Shared, req: &Req) -> Reply {
    if let Some(expected) = &shared.admin_token {
        let given = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !super::constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return error(
                StatusCode::UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <admin token>",
            );
        }
    }
    let body: Value = if req.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) if req.path.ends_with("/certificates") => Value::Null,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("body is not JSON: {e}")),
        }
    };
    let segs: Vec<&str> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .skip(1)
        .collect();
    let reply = route(shared, req, &segs, &body).await;
    if req.method != Method::GET && reply.status.is_success() {
        shared.persist();
    }
    reply
}

async fn route(shared: &Shared, req: &Req, segs: &[&str], body: &Value) -> Reply {
    let q = |k: &str| req.query.get(k).map(String::as_str);
    match (&req.method, segs) {
        (&Method::GET, ["health"]) => Reply::json(StatusCode::OK, json!({"status": "ok"})),
        (&Method::GET, ["state"]) => state(shared),
        (&Method::GET, ["stats"]) => {
            let calls = shared
                .calls
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            Reply::json(StatusCode::OK, json!({"calls": calls}))
        }
        (&Method::GET, ["requests"]) => {
            let log = shared.requests.lock().unwrap_or_else(|p| p.into_inner());
            let list: Vec<&Value> = log
                .iter()
                .filter(|e| q("vault").is_none_or(|v| e["vault"] == v))
                .collect();
            Reply::json(StatusCode::OK, json!({"requests": list}))
        }
        (&Method::GET, ["ca"]) => Reply {
            status: StatusCode::OK,
            headers: vec![("content-type", "application/x-pem-file".into())],
            body: shared.ca.cert_pem.clone().into_bytes(),
        },
        (&Method::POST, ["faults"]) => set_fault(shared, body),
        (&Method::DELETE, ["faults"]) => {
            shared
                .faults
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            Reply::json(StatusCode::OK, json!({"faults": {}}))
        }
        (&Method::POST, ["vaults", vault, "keys", key, action]) => {
            key_action(shared, vault, key, action, q("version"), body)
        }
        (&Method::POST, ["vaults", vault, "roles"]) => add_role(shared, vault, body),
        (&Method::DELETE, ["vaults", vault, "roles"]) => {
            remove_role(shared, vault, q("principal"), q("role"))
        }
        (&Method::POST, ["vaults", vault, "settings"]) => vault_settings(shared, vault, body),
        (&Method::POST, ["tenants", tenant, "apps", app, "secrets"]) => {
            let Some(value) = body["value"].as_str().filter(|s| !s.is_empty()) else {
                return error(StatusCode::BAD_REQUEST, "give {\"value\": \"<secret>\"}");
            };
            with_app(shared, tenant, app, |a| {
                a.secrets.push(value.to_owned());
                Ok(json!({"secrets": a.secrets.len()}))
            })
        }
        (&Method::DELETE, ["tenants", tenant, "apps", app, "secrets"]) => {
            with_app(shared, tenant, app, |a| {
                match q("value") {
                    Some(v) => a.secrets.retain(|s| s != v),
                    None => a.secrets.clear(),
                }
                Ok(json!({"secrets": a.secrets.len()}))
            })
        }
        (&Method::POST, ["tenants", tenant, "apps", app, "certificates"]) => {
            let cert = match UploadedCert::parse(&req.body) {
                Ok(c) => c,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            with_app(shared, tenant, app, |a| {
                let sha1 = cert.sha1.clone();
                if !a.certificates.iter().any(|c| c.sha1 == sha1) {
                    a.certificates.push(cert);
                }
                Ok(json!({"sha1": sha1, "certificates": a.certificates.len()}))
            })
        }
        (&Method::DELETE, ["tenants", tenant, "apps", app, "certificates", thumb]) => {
            with_app(shared, tenant, app, |a| {
                let before = a.certificates.len();
                a.certificates.retain(|c| {
                    !c.sha1.eq_ignore_ascii_case(thumb) && !c.sha256.eq_ignore_ascii_case(thumb)
                });
                if a.certificates.len() == before {
                    return Err(EmuError::NoCertificate {
                        thumbprint: (*thumb).to_owned(),
                    });
                }
                Ok(json!({"certificates": a.certificates.len()}))
            })
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin route {} {}", req.method, req.path),
        ),
    }
}

fn state(shared: &Shared) -> Reply {
    let world = shared.world();
    let tenants: Value = world
        .tenants
        .iter()
        .map(|(id, t)| {
            let apps: Value = t
                .apps
                .iter()
                .map(|(cid, a)| {
                    (cid.clone(), json!({
                        "name": a.name,
                        "secrets": a.secrets.len(),
                        "certificates": a.certificates.iter().map(|c| json!({"sha1": c.sha1, "subject": c.subject, "not_after": c.not_after})).collect::<Vec<_>>(),
                    }))
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
            (id.clone(), json!({"name": t.name, "apps": apps}))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let key_json = |k: &Key| {
        k.versions
            .iter()
            .map(|v| json!({"version": v.version, "bits": v.bits, "key_ops": v.key_ops, "enabled": v.attributes.enabled, "nbf": v.attributes.nbf, "exp": v.attributes.exp}))
            .collect::<Vec<_>>()
    };
    let vaults: Value = world
        .vaults
        .iter()
        .map(|(name, v)| {
            (name.clone(), json!({
                "tenant": v.tenant,
                "soft_delete_days": v.soft_delete_days,
                "purge_protection": v.purge_protection,
                "refuse_encrypt_when_disabled": v.refuse_encrypt_when_disabled,
                "budget_per_10s": v.budget_per_10s,
                "keys": v.keys.iter().map(|(n, k)| (n.clone(), json!(key_json(k)))).collect::<serde_json::Map<_, _>>(),
                "deleted": v.deleted.iter().map(|(n, d)| (n.clone(), json!({"deleted": d.deleted, "scheduled_purge": d.scheduled_purge, "versions": key_json(&d.key)}))).collect::<serde_json::Map<_, _>>(),
                "roles": v.roles,
            }))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let faults = shared
        .faults
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Reply::json(
        StatusCode::OK,
        json!({"tenants": tenants, "vaults": vaults, "faults": faults}),
    )
}

fn set_fault(shared: &Shared, body: &Value) -> Reply {
    let target = body["target"].as_str().unwrap_or("*").to_ascii_lowercase();
    let mut fault: Fault = match serde_json::from_value(body.clone()) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("fault: {e}")),
    };
    if !(0.0..=1.0).contains(&fault.error_rate) || !(0.0..=1.0).contains(&fault.drop_rate) {
        return error(
            StatusCode::BAD_REQUEST,
            "error_rate and drop_rate are shares from 0 to 1",
        );
    }
    if fault.outage_seconds > 0 {
        fault.outage_until =
            Some(std::time::Instant::now() + std::time::Duration::from_secs(fault.outage_seconds));
    }
    let mut faults = shared.faults.lock().unwrap_or_else(|p| p.into_inner());
    faults.insert(target.clone(), fault);
    Reply::json(StatusCode::OK, json!({"target": target, "faults": *faults}))
}

fn key_action(
    shared: &Shared,
    vault: &str,
    key: &str,
    action: &str,
    version: Option<&str>,
    body: &Value,
) -> Reply {
    let now = now_secs();
    if action == "rotate" {
        return rotate_key(shared, vault, key, now);
    }
    let mut world = shared.world();
    let Some(v) = world.vaults.get_mut(vault) else {
        return error(StatusCode::NOT_FOUND, format!("no vault {vault}"));
    };
    let no_key = || EmuError::NoKey {
        key: key.to_owned(),
        version: version.map(str::to_owned),
    };
    let result: Result<Value, EmuError> = match action {
        "disable" | "enable" => v
            .keys
            .get_mut(key)
            .map(|k| {
                let enabled = action == "enable";
                match version {
                    // the whole key: every version, as disabling the key in the portal does
                    None => k.versions.iter_mut().for_each(|kv| {
                        kv.attributes.enabled = enabled;
                        kv.attributes.updated = now;
                    }),
                    Some(ver) => {
                        if let Some(kv) = k.version_mut(Some(ver)) {
                            kv.attributes.enabled = enabled;
                            kv.attributes.updated = now;
                        }
                    }
                }
                json!({"key": key, "enabled": enabled, "version": version})
            })
            .ok_or_else(no_key),
        "update" => v
            .keys
            .get_mut(key)
            .and_then(|k| k.version_mut(version))
            .map(|kv| {
                for (field, slot) in [("nbf", &mut kv.attributes.nbf), ("exp", &mut kv.attributes.exp)] {
                    match body.get(field) {
                        Some(Value::Null) => *slot = None,
                        Some(n) => *slot = n.as_i64(),
                        None => {}
                    }
                }
                if let Some(ops) = body["key_ops"].as_array() {
                    kv.key_ops = ops.iter().filter_map(|o| o.as_str().map(str::to_owned)).collect();
                }
                kv.attributes.updated = now;
                json!({"key": key, "version": kv.version, "nbf": kv.attributes.nbf, "exp": kv.attributes.exp, "key_ops": kv.key_ops})
            })
            .ok_or_else(no_key),
        "delete" => match v.keys.remove(key) {
            Some(k) => {
                let purge = now + i64::from(v.soft_delete_days) * 86_400;
                v.deleted.insert(key.to_owned(), super::model::DeletedKey { key: k, deleted: now, scheduled_purge: purge });
                Ok(json!({"deleted": key, "scheduled_purge": purge}))
            }
            None => Err(no_key()),
        },
        "recover" => match v.deleted.remove(key) {
            Some(d) => {
                v.keys.insert(key.to_owned(), d.key);
                Ok(json!({"recovered": key}))
            }
            None => Err(EmuError::NoDeletedKey { key: key.to_owned() }),
        },
        "purge" => {
            if v.purge_protection && body["force"].as_bool() != Some(true) {
                Err(EmuError::PurgeProtected)
            } else if v.deleted.remove(key).is_some() {
                Ok(json!({"purged": key}))
            } else {
                Err(EmuError::NoDeletedKey { key: key.to_owned() })
            }
        }
        other => Err(EmuError::UnknownAction { action: other.to_owned() }),
    };
    match result {
        Ok(v) => Reply::json(StatusCode::OK, v),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

/// A new version of the key, generated like the current one (its size and operations).
fn rotate_key(shared: &Shared, vault: &str, key: &str, now: i64) -> Reply {
    let world = shared.world();
    let Some(k) = world.vaults.get(vault).and_then(|v| v.keys.get(key)) else {
        return error(StatusCode::NOT_FOUND, format!("no key {key}"));
    };
    let (bits, ops) = match k.current() {
        Some(c) => (c.bits, c.key_ops.clone()),
        None => return error(StatusCode::NOT_FOUND, format!("no key {key}")),
    };
    drop(world);
    let private = match super::seed::generate(bits) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let version = match super::model::KeyVersion::from_private(
        private,
        ops,
        super::model::Attributes {
            enabled: true,
            nbf: None,
            exp: None,
            created: now,
            updated: now,
        },
    ) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let id = version.version.clone();
    let mut world = shared.world();
    match world
        .vaults
        .get_mut(vault)
        .and_then(|v| v.keys.get_mut(key))
    {
        Some(k) => {
            k.versions.push(version);
            Reply::json(StatusCode::OK, json!({"key": key, "version": id}))
        }
        None => error(
            StatusCode::NOT_FOUND,
            format!("key {key} vanished while rotating"),
        ),
    }
}

fn add_role(shared: &Shared, vault: &str, body: &Value) -> Reply {
    let Some(principal) = body["principal"].as_str() else {
        return error(
            StatusCode::BAD_REQUEST,
            "give {\"principal\": \"<client id>\", \"role\": \"byok\"} or data_actions",
        );
    };
    let role = match (body["role"].as_str(), body["data_actions"].as_array()) {
        (name, Some(acts)) => Role::Custom {
            name: name.unwrap_or("custom").to_owned(),
            data_actions: acts
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
        },
        (Some(name), None) => Role::Preset(name.to_owned()),
        (None, None) => return error(StatusCode::BAD_REQUEST, "give role or data_actions"),
    };
    if let Err(e) = role.data_actions() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let mut world = shared.world();
    let Some(v) = world.vaults.get_mut(vault) else {
        return error(StatusCode::NOT_FOUND, format!("no vault {vault}"));
    };
    let assignment = RoleAssignment {
        principal: principal.to_ascii_lowercase(),
        role,
        key: body["key"].as_str().map(str::to_owned),
    };
    if !v.roles.contains(&assignment) {
        v.roles.push(assignment);
    }
    Reply::json(StatusCode::OK, json!({"roles": v.roles}))
}

fn remove_role(shared: &Shared, vault: &str, principal: Option<&str>, role: Option<&str>) -> Reply {
    let Some(principal) = principal else {
        return error(
            StatusCode::BAD_REQUEST,
            "give ?principal=<client id>[&role=<name>]",
        );
    };
    let mut world = shared.world();
    let Some(v) = world.vaults.get_mut(vault) else {
        return error(StatusCode::NOT_FOUND, format!("no vault {vault}"));
    };
    let before = v.roles.len();
    v.roles.retain(|a| {
        !(a.principal.eq_ignore_ascii_case(principal) && role.is_none_or(|r| a.role.name() == r))
    });
    Reply::json(
        StatusCode::OK,
        json!({"removed": before - v.roles.len(), "roles": v.roles}),
    )
}

fn vault_settings(shared: &Shared, vault: &str, body: &Value) -> Reply {
    let mut world = shared.world();
    let Some(v) = world.vaults.get_mut(vault) else {
        return error(StatusCode::NOT_FOUND, format!("no vault {vault}"));
    };
    if let Some(b) = body["refuse_encrypt_when_disabled"].as_bool() {
        v.refuse_encrypt_when_disabled = b;
    }
    if let Some(n) = body["budget_per_10s"].as_u64() {
        v.budget_per_10s = n.min(u64::from(u32::MAX)) as u32;
    }
    if let Some(b) = body["purge_protection"].as_bool() {
        v.purge_protection = b;
    }
    Reply::json(
        StatusCode::OK,
        json!({"refuse_encrypt_when_disabled": v.refuse_encrypt_when_disabled, "budget_per_10s": v.budget_per_10s, "purge_protection": v.purge_protection}),
    )
}

fn with_app(
    shared: &Shared,
    tenant: &str,
    app: &str,
    f: impl FnOnce(&mut super::model::App) -> Result<Value, EmuError>,
) -> Reply {
    let mut world = shared.world();
    let Some(a) = world
        .tenants
        .get_mut(&tenant.to_ascii_lowercase())
        .and_then(|t| t.apps.get_mut(&app.to_ascii_lowercase()))
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no app {app} in tenant {tenant}"),
        );
    };
    match f(a) {
        Ok(v) => Reply::json(StatusCode::OK, v),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}
