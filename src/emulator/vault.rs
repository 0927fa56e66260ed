//! The Key Vault keys REST API (api-versions 7.4 to 2025-07-01): keys, versions, soft delete,
//! and the RSA crypto operations, with the checks the real service makes in its order: token
//! (401 with challenge), request budget (429), RBAC data action (403 ForbiddenByRbac), key
//! existence (404), `key_ops` (403 KeyOperationForbidden), state (403 KeyDisabled, expiry).
//!
//! It must never answer an operation the real service would refuse, in a different order of
//! checks than the real service.

use std::collections::BTreeMap;

use hyper::{Method, StatusCode};
use rsa::RsaPrivateKey;
use serde_json::{Value, json};

use super::keyops::{CryptoOp, crypto};
use super::model::{
    ALL_KEY_OPS, Attributes, DeletedKey, Key, KeyVersion, Vault, actions, now_secs,
    private_from_jwk,
};
use super::{Reply, Req, Shared, entra, seed};

/// Host suffixes under which `<vault>.<suffix>` names a vault.
const VAULT_SUFFIXES: [&str; 5] = [
    ".vault.azure.net",
    ".privatelink.vaultcore.azure.net",
    ".vault.azure.cn",
    ".vault.usgovcloudapi.net",
    ".localhost",
];

/// Which vault a request is for: by Host (`<vault>.vault.azure.net[:port]`), or by a
/// `/vaults/<vault>/` path prefix. `None` for Entra requests.
pub(super) fn vault_of(_shared: &Shared, req: &Req) -> Option<String> {
    if let Some(rest) = req.path.strip_prefix("/vaults/") {
        return rest.split('/').next().map(str::to_ascii_lowercase);
    }
    let host = req
        .host
        .rsplit_once(':')
        .map_or(req.host.as_str(), |(h, p)| {
            if p.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                req.host.as_str()
            }
        });
    VAULT_SUFFIXES.iter().find_map(|s| {
        host.strip_suffix(s)
            .filter(|name| !name.is_empty() && !name.contains('.'))
            .map(str::to_owned)
    })
}

pub(super) fn kv_error(
    status: StatusCode,
    code: &str,
    inner: Option<&str>,
    message: &str,
) -> Reply {
    let mut err = json!({"code": code, "message": message});
    if let Some(i) = inner {
        err["innererror"] = json!({"code": i});
    }
    Reply::json(status, json!({"error": err}))
}

pub(super) fn bad(message: &str) -> Reply {
    kv_error(StatusCode::BAD_REQUEST, "BadParameter", None, message)
}

pub(super) fn not_found(name: &str, version: Option<&str>) -> Reply {
    let id = match version {
        Some(v) if !v.is_empty() => format!("{name}/{v}"),
        _ => name.to_owned(),
    };
    kv_error(
        StatusCode::NOT_FOUND,
        "KeyNotFound",
        None,
        &format!(
            "A key with (name/id) {id} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
        ),
    )
}

fn api_version_ok(v: &str) -> bool {
    let v = v.split("-preview").next().unwrap_or(v);
    matches!(v, "7.4" | "7.5" | "7.6")
        || (v.starts_with("2025-") && v.len() == 10 && v.get(5..7).is_some_and(|m| m <= "07"))
}

/// Handles a request to vault `name`.
pub(super) async fn handle(shared: &Shared, name: &str, req: &Req) -> Reply {
    // Path relative to the vault, keeping empty segments: `keys/k//encrypt` names no version.
    let rel = match req.path.strip_prefix("/vaults/") {
        Some(rest) => rest.split_once('/').map_or("", |(_, r)| r),
        None => req.path.trim_start_matches('/'),
    };
    let mut segs: Vec<&str> = rel.split('/').collect();
    while segs.len() > 1 && segs.last() == Some(&"") {
        segs.pop();
    }
    let base = match req.path.strip_prefix("/vaults/") {
        Some(_) => format!("https://{}/vaults/{name}", req.host),
        None => format!("https://{}", req.host),
    };

    let Some(tenant) = shared.world().vaults.get(name).map(|v| v.tenant.clone()) else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "VaultNotFound",
            None,
            &format!("The vault {name} does not exist in this emulator; declare it in the seed."),
        );
    };
    let claims = match authorize(shared, req, &tenant) {
        Ok(c) => c,
        Err(reply) => return reply,
    };
    match req.query.get("api-version") {
        None => return bad("The api-version query parameter is missing."),
        Some(v) if !api_version_ok(v) => {
            return bad(&format!(
                "The specified version ({v}) is not recognized. Consider using the latest supported version (2025-07-01)."
            ));
        }
        Some(_) => {}
    }

    let op = Op::parse(&req.method, &segs);
    let Some(op) = op else {
        return bad(&format!(
            "{} /{rel} is not an operation of the Key Vault keys API in this emulator.",
            req.method
        ));
    };

    shared.count_call(name, op.name());

    if let Err(reply) = charge(shared, name, &op) {
        return reply;
    }

    let (action, key_name) = op.action();
    {
        let world = shared.world();
        if !world.vaults[name].allows(&claims.app, action, key_name) {
            let resource = match key_name {
                Some(k) => format!("/vaults/{name}/keys/{k}"),
                None => format!("/vaults/{name}"),
            };
            return kv_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                Some("ForbiddenByRbac"),
                &format!(
                    "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={};oid={}\r\nAction: '{action}'\r\nResource: '{resource}'\r\nAssignment: (not found)\r\nVault: {name}\r\n",
                    claims.app, claims.app
                ),
            );
        }
    }

    let reply = op.run(shared, name, &base, req).await;
    if op.mutates() && reply.status.is_success() {
        shared.persist();
    }
    reply
}

/// The request's bearer token: issued by the emulator's Entra ID for the vault's directory, or a
/// 401 with the challenge the real service sends.
fn authorize(shared: &Shared, req: &Req, tenant: &str) -> Result<entra::TokenClaims, Reply> {
    let challenge = format!(
        "Bearer authorization=\"https://127.0.0.1:{}/{tenant}\", resource=\"{}\"",
        shared.port,
        entra::vault_resource(shared.port)
    );
    let unauthorized = |msg: &str| {
        kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", None, msg)
            .with_header("www-authenticate", challenge.clone())
    };
    let token = req.header("authorization").and_then(|h| {
        h.strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
    });
    let Some(token) = token else {
        return Err(unauthorized(
            "AKV10000: Request is missing a Bearer or PoP token.",
        ));
    };
    let claims = match entra::verify(&shared.token_key, shared.port, token) {
        Ok(c) => c,
        Err(msg) => return Err(unauthorized(msg)),
    };
    if claims.tenant != tenant {
        return Err(unauthorized(&format!(
            "AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{tenant}/, found https://sts.windows.net/{}/.",
            claims.tenant
        )));
    }
    Ok(claims)
}

/// The vault's request budget: a crypto operation costs by key size, anything else 1; a 429
/// with Retry-After when it is spent.
fn charge(shared: &Shared, name: &str, op: &Op<'_>) -> Result<(), Reply> {
    let (budget, cost) = {
        let world = shared.world();
        let vault = &world.vaults[name];
        let cost = match op {
            Op::Crypto { key, version, .. } => vault
                .keys
                .get(*key)
                .and_then(|k| k.version(Some(version)))
                .map_or(1, KeyVersion::cost),
            _ => 1,
        };
        (vault.budget_per_10s, cost)
    };
    if let Err(retry_after) = shared.charge(name, budget, cost) {
        return Err(kv_error(StatusCode::TOO_MANY_REQUESTS, "Throttled", None, "Request was not allowed because of throttling. Please retry after the time in the Retry-After header.")
            .with_header("retry-after", retry_after.to_string()));
    }
    Ok(())
}

/// One Key Vault operation, parsed from method and path.
enum Op<'a> {
    List,
    ListDeleted,
    Create(&'a str),
    Import(&'a str),
    Get(&'a str, &'a str),
    Versions(&'a str),
    Update(&'a str, &'a str),
    Rotate(&'a str),
    Delete(&'a str),
    GetDeleted(&'a str),
    Recover(&'a str),
    Purge(&'a str),
    Crypto {
        key: &'a str,
        version: &'a str,
        kind: CryptoOp,
    },
}

impl<'a> Op<'a> {
    fn parse(method: &Method, segs: &[&'a str]) -> Option<Self> {
        let m = method.clone();
        Some(match (m, segs) {
            (Method::GET, ["keys"]) => Op::List,
            (Method::GET, ["deletedkeys"]) => Op::ListDeleted,
            (Method::POST, ["keys", k, "create"]) => Op::Create(k),
            (Method::PUT, ["keys", k]) => Op::Import(k),
            (Method::GET, ["keys", k]) => Op::Get(k, ""),
            (Method::GET, ["keys", k, "versions"]) => Op::Versions(k),
            (Method::GET, ["keys", k, v]) => Op::Get(k, v),
            (Method::PATCH, ["keys", k]) => Op::Update(k, ""),
            (Method::PATCH, ["keys", k, v]) => Op::Update(k, v),
            (Method::POST, ["keys", k, "rotate"]) => Op::Rotate(k),
            (Method::DELETE, ["keys", k]) => Op::Delete(k),
            (Method::GET, ["deletedkeys", k]) => Op::GetDeleted(k),
            (Method::POST, ["deletedkeys", k, "recover"]) => Op::Recover(k),
            (Method::DELETE, ["deletedkeys", k]) => Op::Purge(k),
            (Method::POST, ["keys", k, op]) => Op::Crypto {
                key: k,
                version: "",
                kind: CryptoOp::parse(op)?,
            },
            (Method::POST, ["keys", k, v, op]) => Op::Crypto {
                key: k,
                version: v,
                kind: CryptoOp::parse(op)?,
            },
            _ => return None,
        })
    }

    /// A short name for request counters.
    fn name(&self) -> &'static str {
        match self {
            Op::List => "list",
            Op::ListDeleted => "list-deleted",
            Op::Create(_) => "create",
            Op::Import(_) => "import",
            Op::Get(..) => "get",
            Op::Versions(_) => "versions",
            Op::Update(..) => "update",
            Op::Rotate(_) => "rotate",
            Op::Delete(_) => "delete",
            Op::GetDeleted(_) => "get-deleted",
            Op::Recover(_) => "recover",
            Op::Purge(_) => "purge",
            Op::Crypto { kind, .. } => kind.counter_and_action().0,
        }
    }

    /// The RBAC data action and the key it applies to.
    fn action(&self) -> (&'static str, Option<&'a str>) {
        match self {
            Op::List => (actions::READ, None),
            Op::ListDeleted => (actions::DELETED_READ, None),
            Op::Create(k) => (actions::CREATE, Some(k)),
            Op::Import(k) => (actions::IMPORT, Some(k)),
            Op::Get(k, _) | Op::Versions(k) => (actions::READ, Some(k)),
            Op::Update(k, _) => (actions::UPDATE, Some(k)),
            Op::Rotate(k) => (actions::ROTATE, Some(k)),
            Op::Delete(k) => (actions::DELETE, Some(k)),
            Op::GetDeleted(k) => (actions::DELETED_READ, Some(k)),
            Op::Recover(k) => (actions::RECOVER, Some(k)),
            Op::Purge(k) => (actions::PURGE, Some(k)),
            Op::Crypto { key, kind, .. } => (kind.counter_and_action().1, Some(key)),
        }
    }

    fn mutates(&self) -> bool {
        !matches!(
            self,
            Op::List
                | Op::ListDeleted
                | Op::Get(..)
                | Op::Versions(_)
                | Op::GetDeleted(_)
                | Op::Crypto { .. }
        )
    }

    async fn run(&self, shared: &Shared, vault: &str, base: &str, req: &Req) -> Reply {
        let body: Value = if req.body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => return bad(&format!("The request body is not JSON: {e}")),
            }
        };
        match *self {
            Op::Crypto { key, version, kind } => {
                crypto(shared, vault, base, key, version, kind, &body).await
            }
            Op::Create(k) => create(shared, vault, base, k, &body).await,
            Op::Import(k) => {
                let private = match private_from_jwk(&body["key"]) {
                    Ok(p) => p,
                    Err(e) => return bad(&e.to_string()),
                };
                let ops = key_ops_of(&body["key"]["key_ops"]).unwrap_or_else(all_ops);
                add_version(shared, vault, base, k, private, ops, &body)
            }
            Op::Rotate(k) => {
                let (bits, ops) = {
                    let world = shared.world();
                    match world.vaults[vault].keys.get(k).and_then(Key::current) {
                        Some(v) => (v.bits, v.key_ops.clone()),
                        None => return not_found(k, None),
                    }
                };
                let private = match generate(bits).await {
                    Ok(p) => p,
                    Err(r) => return r,
                };
                add_version(shared, vault, base, k, private, ops, &Value::Null)
            }
            _ => {
                let mut world = shared.world();
                match world.vaults.get_mut(vault) {
                    Some(v) => sync_op(self, v, base, &body),
                    None => not_found("", None),
                }
            }
        }
    }
}

fn all_ops() -> Vec<String> {
    ALL_KEY_OPS.iter().map(|s| (*s).to_owned()).collect()
}

fn key_ops_of(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|o| o.as_str())
            .map(|s| {
                ALL_KEY_OPS
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(s))
                    .map_or_else(|| s.to_owned(), |k| (*k).to_owned())
            })
            .collect()
    })
}

fn attributes_json(vault: &Vault, a: &Attributes) -> Value {
    let mut j = json!({
        "enabled": a.enabled,
        "created": a.created,
        "updated": a.updated,
        "recoveryLevel": vault.recovery_level(),
        "recoverableDays": vault.soft_delete_days,
        "exportable": false,
    });
    if let Some(nbf) = a.nbf {
        j["nbf"] = json!(nbf);
    }
    if let Some(exp) = a.exp {
        j["exp"] = json!(exp);
    }
    j
}

fn bundle(vault: &Vault, base: &str, name: &str, v: &KeyVersion) -> Value {
    let kid = format!("{base}/keys/{name}/{}", v.version);
    json!({
        "key": v.jwk(&kid),
        "attributes": attributes_json(vault, &v.attributes),
        "tags": v.tags,
    })
}

fn deleted_bundle(vault: &Vault, base: &str, name: &str, d: &DeletedKey) -> Value {
    let mut b = d
        .key
        .current()
        .map_or(Value::Null, |v| bundle(vault, base, name, v));
    b["recoveryId"] = json!(format!("{base}/deletedkeys/{name}"));
    b["deletedDate"] = json!(d.deleted);
    b["scheduledPurgeDate"] = json!(d.scheduled_purge);
    b
}

fn apply_attributes(a: &mut Attributes, v: &Value) -> Result<(), Reply> {
    if v.is_null() {
        return Ok(());
    }
    if let Some(e) = v.get("enabled") {
        a.enabled = e
            .as_bool()
            .ok_or_else(|| bad("attributes.enabled must be true or false"))?;
    }
    for (field, slot) in [("nbf", &mut a.nbf), ("exp", &mut a.exp)] {
        match v.get(field) {
            None => {}
            Some(Value::Null) => *slot = None,
            Some(n) => {
                *slot = Some(
                    n.as_i64()
                        .ok_or_else(|| bad(&format!("attributes.{field} must be Unix seconds")))?,
                )
            }
        }
    }
    a.updated = now_secs();
    Ok(())
}

fn conflict_if_deleted(vault: &Vault, name: &str) -> Result<(), Reply> {
    if vault.deleted.contains_key(name) {
        return Err(kv_error(
            StatusCode::CONFLICT,
            "Conflict",
            Some("ObjectIsDeletedButRecoverable"),
            &format!(
                "Key {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged."
            ),
        ));
    }
    Ok(())
}

async fn create(shared: &Shared, vault: &str, base: &str, name: &str, body: &Value) -> Reply {
    if name.is_empty()
        || name.len() > 127
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return bad("Key names are 1 to 127 letters, digits and dashes.");
    }
    {
        let world = shared.world();
        if let Err(r) = conflict_if_deleted(&world.vaults[vault], name) {
            return r;
        }
    }
    let kty = body["kty"].as_str().unwrap_or_default();
    if !matches!(kty, "RSA" | "RSA-HSM") {
        return bad(&format!(
            "The value of kty ({kty}) is not supported by this emulator; use RSA."
        ));
    }
    let bits = body["key_size"].as_u64().unwrap_or(2048) as usize;
    if !matches!(bits, 2048 | 3072 | 4096) {
        return bad(&format!(
            "key_size {bits} is not supported; use 2048, 3072 or 4096."
        ));
    }
    if body["public_exponent"].as_u64().is_some_and(|e| e != 65537) {
        return bad("Only public_exponent 65537 is supported.");
    }
    let ops = key_ops_of(&body["key_ops"]).unwrap_or_else(all_ops);
    let private = match generate(bits).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    add_version(shared, vault, base, name, private, ops, body)
}

/// A new RSA key of `bits`, generated off the request threads; a 500 when that fails.
async fn generate(bits: usize) -> Result<RsaPrivateKey, Reply> {
    match tokio::task::spawn_blocking(move || seed::generate(bits)).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(kv_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            None,
            "key generation failed",
        )),
    }
}

fn add_version(
    shared: &Shared,
    vault: &str,
    base: &str,
    name: &str,
    private: RsaPrivateKey,
    ops: Vec<String>,
    body: &Value,
) -> Reply {
    let now = now_secs();
    let mut attributes = Attributes {
        enabled: true,
        nbf: None,
        exp: None,
        created: now,
        updated: now,
    };
    if let Err(r) = apply_attributes(&mut attributes, &body["attributes"]) {
        return r;
    }
    attributes.updated = now;
    let mut version = match KeyVersion::from_private(private, ops, attributes) {
        Ok(v) => v,
        Err(e) => return bad(&e.to_string()),
    };
    if let Some(tags) = body["tags"].as_object() {
        version.tags = tags
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect::<BTreeMap<_, _>>();
    }
    let mut world = shared.world();
    let v = match world.vaults.get_mut(vault) {
        Some(v) => v,
        None => return not_found(name, None),
    };
    if let Err(r) = conflict_if_deleted(v, name) {
        return r;
    }
    v.keys
        .entry(name.to_owned())
        .or_insert(Key {
            versions: Vec::new(),
        })
        .versions
        .push(version);
    let current = v
        .keys
        .get(name)
        .and_then(Key::current)
        .map(|kv| bundle(v, base, name, kv))
        .unwrap_or_default();
    Reply::json(StatusCode::OK, current)
}

fn sync_op(op: &Op<'_>, vault: &mut Vault, base: &str, body: &Value) -> Reply {
    let now = now_secs();
    match *op {
        Op::List => list(vault, base),
        Op::ListDeleted => list_deleted(vault, base),
        Op::Get(name, version) => match vault.keys.get(name).and_then(|k| k.version(Some(version)))
        {
            Some(v) => Reply::json(StatusCode::OK, bundle(vault, base, name, v)),
            None => not_found(name, Some(version)),
        },
        Op::Versions(name) => match vault.keys.get(name) {
            Some(k) => {
                let value: Vec<Value> = k
                    .versions
                    .iter()
                    .map(|v| json!({"kid": format!("{base}/keys/{name}/{}", v.version), "attributes": attributes_json(vault, &v.attributes), "tags": v.tags}))
                    .collect();
                Reply::json(StatusCode::OK, json!({"value": value, "nextLink": null}))
            }
            None => not_found(name, None),
        },
        Op::Update(name, version) => update(vault, base, name, version, body),
        Op::Delete(name) | Op::GetDeleted(name) | Op::Recover(name) | Op::Purge(name) => {
            soft_delete(op, vault, base, name, now)
        }
        _ => bad("unsupported operation"),
    }
}

/// `GET keys`: the current version of every key.
fn list(vault: &Vault, base: &str) -> Reply {
    let value: Vec<Value> = vault
        .keys
        .iter()
        .filter_map(|(name, k)| {
            k.current().map(|v| {
                json!({"kid": format!("{base}/keys/{name}"), "attributes": attributes_json(vault, &v.attributes), "tags": v.tags})
            })
        })
        .collect();
    Reply::json(StatusCode::OK, json!({"value": value, "nextLink": null}))
}

/// `GET deletedkeys`.
fn list_deleted(vault: &Vault, base: &str) -> Reply {
    let value: Vec<Value> = vault
        .deleted
        .iter()
        .filter_map(|(name, d)| {
            d.key.current().map(|v| {
                json!({
                    "kid": format!("{base}/keys/{name}"),
                    "attributes": attributes_json(vault, &v.attributes),
                    "tags": v.tags,
                    "recoveryId": format!("{base}/deletedkeys/{name}"),
                    "deletedDate": d.deleted,
                    "scheduledPurgeDate": d.scheduled_purge,
                })
            })
        })
        .collect();
    Reply::json(StatusCode::OK, json!({"value": value, "nextLink": null}))
}

/// `PATCH keys/<name>/<version>`: attributes, `key_ops`, tags.
fn update(vault: &mut Vault, base: &str, name: &str, version: &str, body: &Value) -> Reply {
    let Some(v) = vault
        .keys
        .get_mut(name)
        .and_then(|k| k.version_mut(Some(version)))
    else {
        return not_found(name, Some(version));
    };
    let mut attributes = v.attributes.clone();
    if let Err(r) = apply_attributes(&mut attributes, &body["attributes"]) {
        return r;
    }
    v.attributes = attributes;
    if let Some(ops) = key_ops_of(&body["key_ops"]) {
        v.key_ops = ops;
    }
    if let Some(tags) = body["tags"].as_object() {
        v.tags = tags
            .iter()
            .filter_map(|(k, t)| t.as_str().map(|s| (k.clone(), s.to_owned())))
            .collect();
    }
    let v = v.clone();
    Reply::json(StatusCode::OK, bundle(vault, base, name, &v))
}

/// Soft delete: delete, read the deleted key, recover it, purge it (refused under purge
/// protection).
fn soft_delete(op: &Op<'_>, vault: &mut Vault, base: &str, name: &str, now: i64) -> Reply {
    let deleted_not_found = || {
        kv_error(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            None,
            &format!("Deleted Key not found: {name}"),
        )
    };
    match *op {
        Op::Delete(_) => {
            let Some(key) = vault.keys.remove(name) else {
                return not_found(name, None);
            };
            let d = DeletedKey {
                key,
                deleted: now,
                scheduled_purge: now + i64::from(vault.soft_delete_days) * 86_400,
            };
            let reply = Reply::json(StatusCode::OK, deleted_bundle(vault, base, name, &d));
            vault.deleted.insert(name.to_owned(), d);
            reply
        }
        Op::GetDeleted(_) => match vault.deleted.get(name) {
            Some(d) => Reply::json(StatusCode::OK, deleted_bundle(vault, base, name, d)),
            None => deleted_not_found(),
        },
        Op::Recover(_) => {
            let Some(d) = vault.deleted.remove(name) else {
                return deleted_not_found();
            };
            let reply = d
                .key
                .current()
                .map(|v| Reply::json(StatusCode::OK, bundle(vault, base, name, v)))
                .unwrap_or_else(|| not_found(name, None));
            vault.keys.insert(name.to_owned(), d.key);
            reply
        }
        Op::Purge(_) => {
            if !vault.deleted.contains_key(name) {
                return deleted_not_found();
            }
            if vault.purge_protection {
                return kv_error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    Some("PurgeProtectionEnabled"),
                    "Operation \"purge\" is not allowed because purge protection is enabled for this vault. Key Vault service will automatically purge it after the retention period has passed.",
                );
            }
            vault.deleted.remove(name);
            Reply::empty(StatusCode::NO_CONTENT)
        }
        _ => bad("unsupported operation"),
    }
}
