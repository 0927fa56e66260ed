//! `byok vault-emulator`: a local Azure Key Vault (keys API) and Entra ID (client-credentials
//! token endpoint) over HTTPS that Microsoft's own SDKs use unchanged, with real RSA keys. It is
//! how tests, the demo and a laptop run the real Key Vault code path without Azure.
//!
//! Unlike other emulators it enforces what production enforces: RBAC data actions per app, key
//! states (disabled, expired, not yet valid, deleted), `key_ops`, token expiry and tenant,
//! soft delete with purge protection, and a per-vault request budget answered with 429 and
//! `Retry-After`. Faults (latency, 5xx, dropped connections, outages) and tenant-side changes
//! (disable a key, remove a role, rotate a secret) are set at run time through the admin API
//! (`/_admin`, see `docs/vault-emulator.md`).
//!
//! # Layout
//! - [`model`]: the world (tenants, apps, vaults, keys, roles), serializable.
//! - [`seed`]: the seed file.
//! - [`tls`]: CA and server certificate.
//! - `entra`, `vault`, `admin`: the three HTTP surfaces.
//!
//! It must never listen beyond loopback unless told to, and never serve plain HTTP (the SDKs refuse
//! bearer tokens over it).

mod admin;
pub mod client;
mod entra;
pub mod error;
mod keyops;
pub mod model;
pub mod seed;
mod signing;
pub mod tls;
mod vault;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use model::World;
use tls::CaMaterial;

/// How the emulator runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Seed file for a fresh world.
    pub seed: Option<PathBuf>,
    /// State file: loaded if it exists (instead of the seed), written after every change.
    pub state: Option<PathBuf>,
    /// Where to write the CA certificate (PEM).
    pub ca_out: Option<PathBuf>,
    /// Lifetime of issued access tokens.
    pub token_lifetime: Duration,
    /// Token required on admin requests (`Authorization: Bearer …`), when set.
    pub admin_token: Option<String>,
    /// Extra host names for the server certificate.
    pub hosts: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed: None,
            state: None,
            ca_out: None,
            token_lifetime: Duration::from_secs(3600),
            admin_token: None,
            hosts: Vec::new(),
        }
    }
}

/// The emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The seed file is wrong.
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    /// The state file cannot be read.
    #[error("state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// TLS set-up failed.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The listener cannot bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The admin API would be open to anyone who can reach the emulator.
    #[error(
        "the admin API (keys disabled, roles removed, faults injected) would be open on {addr}: {why}; give a non-empty token with --admin-token-env, or listen on 127.0.0.1"
    )]
    AdminOpen {
        /// Address.
        addr: SocketAddr,
        /// What is wrong.
        why: &'static str,
    },
    /// The CA file cannot be written.
    #[error("cannot write the CA certificate to {path}: {source}")]
    CaOut {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Faults injected into one target (a vault, `*` for all vaults, or `entra`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    /// Added latency per request, ms.
    #[serde(default)]
    pub latency_ms: u64,
    /// Share of requests answered 503 (0..1).
    #[serde(default)]
    pub error_rate: f64,
    /// Share of connections dropped without an answer (0..1).
    #[serde(default)]
    pub drop_rate: f64,
    /// Full outage (every connection dropped) for this many seconds from now.
    #[serde(default)]
    pub outage_seconds: u64,
    #[serde(skip)]
    outage_until: Option<Instant>,
}

/// How many Key Vault requests the emulator's request log keeps.
const REQUEST_LOG: usize = 200_000;

/// State shared by every connection.
pub(crate) struct Shared {
    world: Mutex<World>,
    faults: Mutex<HashMap<String, Fault>>,
    budgets: Mutex<HashMap<String, VecDeque<(Instant, u32)>>>,
    /// Authenticated requests per vault and operation, for tests and the demo.
    calls: Mutex<std::collections::BTreeMap<String, std::collections::BTreeMap<&'static str, u64>>>,
    /// Every Key Vault request answered, with the client's `x-ms-client-request-id`, as Key
    /// Vault's own logs keep it (the last [`REQUEST_LOG`]); `/_admin/requests` lists them.
    requests: Mutex<VecDeque<serde_json::Value>>,
    token_key: Vec<u8>,
    token_lifetime: Duration,
    admin_token: Option<String>,
    state_path: Option<PathBuf>,
    ca: CaMaterial,
    port: u16,
}

impl Shared {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the state file (after a change), atomically, mode 0600: it holds private keys.
    fn persist(&self) {
        let Some(path) = &self.state_path else { return };
        let json = {
            let world = self.world();
            let mut v = match serde_json::to_value(&*world) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialize emulator state");
                    return;
                }
            };
            v["ca"] = serde_json::to_value(&self.ca).unwrap_or_default();
            v.to_string()
        };
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            f.write_all(json.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::error!(path = %path.display(), error = %e, "cannot write emulator state");
        }
    }

    /// Charges `cost` units to a vault's 10 s budget; `Err(retry_after_secs)` when spent.
    fn charge(&self, vault: &str, budget: u32, cost: u32) -> Result<(), u64> {
        let mut budgets = self.budgets.lock().unwrap_or_else(|p| p.into_inner());
        let window = budgets.entry(vault.to_owned()).or_default();
        let now = Instant::now();
        let span = Duration::from_secs(10);
        while window
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= span)
        {
            window.pop_front();
        }
        let used: u32 = window.iter().map(|(_, c)| c).sum();
        if used + cost > budget {
            // Wait until enough of the window has expired to fit this request.
            let mut freed = 0;
            let mut wait = span;
            for (t, c) in window.iter() {
                freed += c;
                if used - freed + cost <= budget {
                    wait = span.saturating_sub(now.duration_since(*t));
                    break;
                }
            }
            return Err(wait.as_secs().max(1));
        }
        window.push_back((now, cost));
        Ok(())
    }

    /// Logs a Key Vault request as Key Vault's AuditEvent log would: vault, method, path, the
    /// client's request id, the status, the time.
    fn log_request(&self, vault: &str, req: &Req, status: StatusCode) {
        let entry = serde_json::json!({
            "vault": vault,
            "method": req.method.as_str(),
            "path": req.path,
            "client_request_id": req.header("x-ms-client-request-id"),
            "status": status.as_u16(),
            "at": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
        let mut log = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if log.len() == REQUEST_LOG {
            log.pop_front();
        }
        log.push_back(entry);
    }

    fn count_call(&self, vault: &str, op: &'static str) {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        *calls
            .entry(vault.to_owned())
            .or_default()
            .entry(op)
            .or_default() += 1;
    }

    /// The fault settings for a target: the vault's own, else `*` (vaults only).
    fn fault(&self, target: &str) -> Option<Fault> {
        let faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        faults
            .get(target)
            .or_else(|| (target != "entra").then(|| faults.get("*")).flatten())
            .cloned()
    }
}

/// Compares secrets without an early exit on the first differing byte.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A running emulator.
#[derive(Debug)]
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its CA certificate (PEM): trust it to talk to the emulator.
    pub ca_pem: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `https://127.0.0.1:<port>`: the authority host for Entra ID requests.
    pub fn authority(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
    /// `https://<vault>.vault.azure.net:<port>`: a vault's URL (resolve the host to 127.0.0.1).
    pub fn vault_url(&self, vault: &str) -> String {
        format!("https://{vault}.vault.azure.net:{}", self.addr.port())
    }
    /// Stops accepting and waits for the accept loop to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
    /// Waits until the emulator stops (never, unless stopped).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
    /// A stop handle for signal handlers.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Starts the emulator: loads the state file (if it exists) or the seed, binds, and serves in
/// the background. Returns once it accepts connections.
pub async fn start(opts: Options) -> Result<Running, StartError> {
    match opts.admin_token.as_deref() {
        Some(t) if t.trim().is_empty() => {
            return Err(StartError::AdminOpen {
                addr: opts.listen,
                why: "the admin token is empty",
            });
        }
        None if !opts.listen.ip().is_loopback() => {
            return Err(StartError::AdminOpen {
                addr: opts.listen,
                why: "no admin token and a non-loopback address",
            });
        }
        _ => {}
    }
    let (mut world, ca) = match &opts.state {
        Some(p) if p.exists() => load_state(p)?,
        _ => {
            let world = match &opts.seed {
                Some(s) => seed::load(s)?,
                None => World::default(),
            };
            (world, CaMaterial::generate()?)
        }
    };
    world.warm().map_err(|e| StartError::State {
        path: opts.state.clone().unwrap_or_default(),
        reason: e.to_string(),
    })?;
    if world.token_key.is_empty() {
        let mut k = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
            .map_err(|_| tls::TlsError::from_msg("no randomness"))?;
        world.token_key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k);
    }
    let token_key =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &world.token_key)
            .unwrap_or_default();
    let mut hosts = opts.hosts.clone();
    for name in world.vaults.keys() {
        hosts.push(format!("{name}.vault.azure.net"));
    }
    let tls_config = ca.server_config(&hosts)?;
    if let Some(path) = &opts.ca_out {
        std::fs::write(path, &ca.cert_pem).map_err(|source| StartError::CaOut {
            path: path.clone(),
            source,
        })?;
    }
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: opts.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: opts.listen,
        source,
    })?;
    let shared = Arc::new(Shared {
        world: Mutex::new(world),
        faults: Mutex::new(HashMap::new()),
        budgets: Mutex::new(HashMap::new()),
        calls: Mutex::new(Default::default()),
        requests: Mutex::new(VecDeque::new()),
        token_key,
        token_lifetime: opts.token_lifetime,
        admin_token: opts.admin_token.clone(),
        state_path: opts.state.clone(),
        ca: ca.clone(),
        port: addr.port(),
    });
    shared.persist();
    let (stop, mut stopped) = watch::channel(false);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => {
                    let Ok((stream, _peer)) = accepted else { continue };
                    let acceptor = acceptor.clone();
                    let shared = Arc::clone(&shared);
                    conns.spawn(serve_connection(stream, acceptor, shared));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        conns.abort_all();
    });
    tracing::info!(%addr, "vault emulator listening");
    Ok(Running {
        addr,
        ca_pem: ca.cert_pem,
        stop,
        task,
    })
}

fn load_state(path: &PathBuf) -> Result<(World, CaMaterial), StartError> {
    let fail = |reason: String| StartError::State {
        path: path.clone(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let ca: CaMaterial = serde_json::from_value(value["ca"].take())
        .map_err(|e| fail(format!("no CA in the state: {e}")))?;
    let world: World = serde_json::from_value(value).map_err(|e| fail(e.to_string()))?;
    Ok((world, ca))
}

/// A connection to be dropped without an answer (fault injection).
#[derive(Debug)]
struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}
impl std::error::Error for DropConnection {}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    // a client that opens a connection and says nothing holds nothing for long
    let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await else {
        return;
    };
    let svc = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { route(shared, req).await }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(tls), svc)
        .await;
}

/// Longest TLS handshake the emulator waits for.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Longest time to receive a request's headers, also the longest a kept-alive connection waits
/// for its next request: over twice a worker's default `keys.check_interval` (60 s), so a
/// worker's pooled connection is reused rather than raced against its closing.
pub const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(150);

/// The parts of a request the handlers need, with the body read.
pub(crate) struct Req {
    pub method: hyper::Method,
    pub host: String,
    pub path: String,
    pub query: HashMap<String, String>,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Req {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response under construction.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type", "application/json; charset=utf-8".into())],
            body: value.to_string().into_bytes(),
        }
    }
    pub(crate) fn empty(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub(crate) fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

const MAX_BODY: usize = 4 << 20;

async fn route(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(to_response(Reply::json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": {"code": "BadParameter", "message": "request body too large"}}),
            )));
        }
    };
    let host = parts
        .headers
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let req = Req {
        method: parts.method,
        host,
        path: parts.uri.path().to_owned(),
        query,
        headers: parts.headers,
        body,
    };

    let target = if req.path.starts_with("/_admin") {
        None
    } else {
        Some(vault::vault_of(&shared, &req).unwrap_or_else(|| "entra".to_owned()))
    };
    if let Some(target) = &target
        && let Some(f) = shared.fault(target)
    {
        // requests the fault refuses count too (op "dropped"): a client's calls during an
        // outage are what its request budget is about
        if f.outage_until.is_some_and(|t| Instant::now() < t) {
            shared.count_call(target, "dropped");
            return Err(DropConnection);
        }
        if f.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(f.latency_ms)).await;
        }
        if f.drop_rate > 0.0 && rand::random::<f64>() < f.drop_rate {
            shared.count_call(target, "dropped");
            return Err(DropConnection);
        }
        if f.error_rate > 0.0 && rand::random::<f64>() < f.error_rate {
            return Ok(to_response(Reply::json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": {"code": "ServiceUnavailable", "message": "The service is temporarily unavailable (injected fault)."}}),
            )));
        }
    }
    let reply = match target.as_deref() {
        None => admin::handle(&shared, &req).await,
        Some("entra") => entra::handle(&shared, &req),
        Some(v) => {
            let reply = vault::handle(&shared, v, &req).await;
            shared.log_request(v, &req, reply.status);
            reply
        }
    };
    Ok(to_response(reply))
}

fn to_response(reply: Reply) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = reply.status;
    for (name, value) in reply.headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
            resp.headers_mut().append(name, v);
        }
    }
    resp
}

#[cfg(test)]
mod admin_exposure_tests {
    use super::*;

    #[tokio::test]
    async fn the_admin_api_is_never_open_to_the_network() {
        let open = |listen: SocketAddr, admin_token: Option<&str>| Options {
            listen,
            admin_token: admin_token.map(str::to_owned),
            ..Options::default()
        };
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        for (opts, what) in [
            (open(any, None), "no admin token and a non-loopback address"),
            (open(local, Some("")), "the admin token is empty"),
            (open(any, Some("  ")), "the admin token is empty"),
        ] {
            match start(opts).await {
                Err(StartError::AdminOpen { why, .. }) => assert_eq!(why, what),
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("started with the admin API open: {what}"),
            }
        }
        // loopback without a token (a developer's laptop), and any address with a token
        start(open(local, None)).await.unwrap().stop().await;
        start(open(any, Some("t0ken"))).await.unwrap().stop().await;
    }
}
