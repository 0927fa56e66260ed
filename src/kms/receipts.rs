//! Key-usage receipts (docs/audit-v1.md §6). Every Key Vault request carries its own
//! `x-ms-client-request-id` (the SDK's request-id policy makes a fresh UUID per logical call, and
//! its retries and 401 challenge reuse it). When the audit log is written ([`enable`]), a policy
//! in each Key Vault client keeps a receipt of every request: the request id, the key, the
//! operation, why it was made, the DEKs it concerned, the status; the auditor writes them as
//! signed `kv` records, so a tenant can match them one for one with its Key Vault's own logs.
//!
//! Receipts are kept per process (a process has one audit writer: a worker, or a tool; the
//! worker's automatic drain is a second writer in the worker's process, and either may write a
//! receipt). Receipts carry no key material: ids, names and statuses only.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use azure_core::http::policies::{Policy, PolicyResult};
use azure_core::http::{Context, Request};

/// One Key Vault request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The tenant (or `_quarantine`, `_audit` for the operator's keys).
    pub tenant: String,
    /// `x-ms-client-request-id`.
    pub req: String,
    /// The key id the request named (with its version when the request named one).
    pub kid: String,
    /// `encrypt`, `decrypt`, `get`, `sign`, or the method and path's last segment.
    pub op: String,
    /// Why: `new-dek`, `read`, `rewrap`, `drain`, `replay`, `check`, `monitor`, `certify`.
    pub purpose: &'static str,
    /// DEK ids the request concerned.
    pub deks: Vec<String>,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// When it was answered (UTC, milliseconds).
    pub at: time::OffsetDateTime,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static PENDING: Mutex<Vec<Receipt>> = Mutex::new(Vec::new());
static DEFAULT_PURPOSE: Mutex<Option<&'static str>> = Mutex::new(None);

tokio::task_local! {
    static PURPOSE: &'static str;
}

/// Keeps receipts from now on (the audit log is written).
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// The purpose of this process's requests (a tool: `rewrap`, `drain`, `replay`, `check`).
pub fn set_default_purpose(purpose: &'static str) {
    *crate::lock(&DEFAULT_PURPOSE) = Some(purpose);
}

/// Runs `fut` with its requests made for `purpose` (the worker's automatic drain).
pub async fn with_purpose<F: std::future::Future>(purpose: &'static str, fut: F) -> F::Output {
    PURPOSE.scope(purpose, fut).await
}

/// The receipts kept since the last call.
pub fn take() -> Vec<Receipt> {
    std::mem::take(&mut *crate::lock(&PENDING))
}

/// Puts receipts back (their `kv` record was not written), ahead of newer ones.
pub fn put_back(mut receipts: Vec<Receipt>) {
    let mut pending = crate::lock(&PENDING);
    receipts.append(&mut pending);
    *pending = receipts;
}

/// Why a request with operation `op` is made here.
fn purpose(op: &str) -> &'static str {
    if let Ok(p) = PURPOSE.try_with(|p| *p) {
        return p;
    }
    if let Some(p) = *crate::lock(&DEFAULT_PURPOSE) {
        return p;
    }
    match op {
        "encrypt" => "new-dek",
        "sign" => "certify",
        // a worker decrypts only to prove its local wraps, and reads keys to follow them
        _ => "monitor",
    }
}

/// The DEK ids a request concerns, put in its context by the caller.
#[derive(Debug, Clone)]
pub struct Deks(pub Vec<String>);

/// The key id and operation of a Key Vault request from its path:
/// `/keys/{name}[/{version}][/{operation}]`.
fn kid_and_op(request: &Request) -> (String, String) {
    let url = request.url();
    let segs: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    let host = url.host_str().unwrap_or_default();
    let base = match url.port() {
        Some(p) => format!("https://{host}:{p}"),
        None => format!("https://{host}"),
    };
    let at = segs.iter().position(|s| *s == "keys");
    let Some(k) = at else {
        return (base, segs.last().copied().unwrap_or("").to_owned());
    };
    let rest = &segs[k + 1..];
    const OPS: [&str; 6] = [
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "wrapkey",
        "unwrapkey",
    ];
    let (key, op) = match rest {
        [name] => (vec![*name], "get".to_owned()),
        [name, op] if OPS.contains(op) => (vec![*name], (*op).to_owned()),
        [name, version] => (vec![*name, *version], "get".to_owned()),
        [name, version, op] => (vec![*name, *version], (*op).to_owned()),
        _ => (rest.to_vec(), request.method().as_str().to_lowercase()),
    };
    let prefix = &segs[..k];
    let mut kid = base;
    for s in prefix
        .iter()
        .chain(std::iter::once(&"keys"))
        .chain(key.iter())
    {
        kid.push('/');
        kid.push_str(s);
    }
    (kid, op)
}

/// A receipt kept when dropped: after the answer, or when the call is cancelled mid-request.
struct Pending(Option<Receipt>);

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            crate::lock(&PENDING).push(r);
        }
    }
}

/// The Key Vault client policy that keeps a receipt of each request (after the SDK's
/// request-id policy: the header is set).
#[derive(Debug)]
pub struct ReceiptPolicy {
    tenant: String,
}

impl ReceiptPolicy {
    /// The policy of `tenant`'s client.
    pub fn new(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
        }
    }
}

#[allow(elided_lifetimes_in_paths)] // the trait's own signature
#[async_trait::async_trait]
impl Policy for ReceiptPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[std::sync::Arc<dyn Policy>],
    ) -> PolicyResult {
        if !ENABLED.load(Ordering::Acquire) {
            return next[0].send(ctx, request, &next[1..]).await;
        }
        let req = request
            .headers()
            .get_optional_str(&azure_core::http::headers::CLIENT_REQUEST_ID)
            .unwrap_or_default()
            .to_owned();
        let (kid, op) = kid_and_op(request);
        let deks = ctx.value::<Deks>().map(|d| d.0.clone()).unwrap_or_default();
        // kept even when the call is dropped mid-request (status 0): the vault may have seen it
        let mut guard = Pending(Some(Receipt {
            tenant: self.tenant.clone(),
            req,
            purpose: purpose(&op),
            kid,
            op,
            deks,
            status: 0,
            at: time::OffsetDateTime::now_utc(),
        }));
        let result = next[0].send(ctx, request, &next[1..]).await;
        if let Some(r) = guard.0.as_mut() {
            r.status = match &result {
                Ok(r) => u16::from(r.status()),
                Err(e) => e.http_status().map_or(0, u16::from),
            };
            r.at = time::OffsetDateTime::now_utc();
        }
        drop(guard);
        result
    }
}
