//! The worker's `/metrics` (Prometheus text), `/health` (ready: joined its consumer group, its
//! vaults answered, not stopping; 503 with the reason otherwise) and `/live` (making progress:
//! 503 when stalled, see [`Health::live`]) endpoints.
//!
//! It must never block on the worker: it only reads [`Health`] and the metrics recorder.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusBuilder;
use tokio::net::TcpListener;

use super::health::Health;

/// Installs the Prometheus recorder and serves it and `health` on `addr`; returns the bound
/// address.
pub async fn serve(addr: SocketAddr, health: Arc<Health>) -> std::io::Result<SocketAddr> {
    // Histograms with buckets (not summaries) so that a dashboard can aggregate workers.
    let err = |e: metrics_exporter_prometheus::BuildError| std::io::Error::other(e.to_string());
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .map_err(err)?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("byok_batch_records".into()),
            &[1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0],
        )
        .map_err(err)?
        .install_recorder()
        .map_err(err)?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            let health = Arc::clone(&health);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let handle = handle.clone();
                        let health = Arc::clone(&health);
                        async move {
                            let (status, body) = match req.uri().path() {
                                "/metrics" => (StatusCode::OK, handle.render()),
                                "/health" => match health.ready() {
                                    Ok(()) => match health.notes() {
                                        None => (StatusCode::OK, "ready\n".to_owned()),
                                        Some(n) => (StatusCode::OK, format!("ready\n{n}\n")),
                                    },
                                    Err(why) => (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        format!("not ready: {why}\n"),
                                    ),
                                },
                                "/live" => match health.live() {
                                    Ok(()) => (StatusCode::OK, "live\n".to_owned()),
                                    Err(why) => (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        format!("not live: {why}\n"),
                                    ),
                                },
                                _ => (
                                    StatusCode::NOT_FOUND,
                                    "try /metrics, /health or /live\n".to_owned(),
                                ),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(body)));
                            *r.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(r)
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// `byok healthcheck` could not ask.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthcheckError {
    /// The URL is not a plain-http URL with a host.
    #[error("--url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting, sending or reading failed.
    #[error("{url}: {source}")]
    Io {
        /// The URL.
        url: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// GETs a worker's endpoint (`/health` for the container's health check, which has no curl):
/// returns the HTTP status and the body. Plain HTTP/1.0, 3 s timeouts.
pub fn healthcheck(url: &str) -> Result<(String, String), HealthcheckError> {
    use std::io::{Read, Write};
    let bad = |reason: &str| HealthcheckError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let io = |source| HealthcheckError::Io {
        url: url.to_owned(),
        source,
    };
    let u = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if u.scheme() != "http" {
        return Err(bad("only plain http (the worker's metrics endpoint)"));
    }
    let host = u.host_str().ok_or_else(|| bad("no host"))?;
    let port = u.port().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(io)?
        .next()
        .ok_or_else(|| bad("the host has no address"))?;
    let timeout = std::time::Duration::from_secs(3);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    write!(s, "GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n", u.path()).map_err(io)?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(io)?;
    let status = body.split_whitespace().nth(1).unwrap_or("?").to_owned();
    let text = body
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_owned();
    Ok((status, text))
}
