//! The worker's `/metrics` (Prometheus text), `/health` (ready: joined its consumer group, its
//! vaults answered, not stopping; 503 with the reason otherwise) and `/live` (the process
//! serves) endpoints.

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
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
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
                                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                                    Err(why) => (
                                        StatusCode::SERVICE_UNAVAILABLE,
                                        format!("not ready: {why}\n"),
                                    ),
                                },
                                "/live" => (StatusCode::OK, "live\n".to_owned()),
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
