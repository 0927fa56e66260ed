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
                                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
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
