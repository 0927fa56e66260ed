//! `byok run`, `byok healthcheck` and `byok loadgen`, and what every async command shares
//! (the runtime, logs, the stop signal).
//!
//! Binary only: parses, calls one library function, renders its result.

use std::process::ExitCode;

use crate::*;

pub(crate) async fn run_worker(path: &std::path::Path) -> Result<ExitCode, String> {
    let config = super::load_config(path)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.worker.log_format {
        byok::config::LogFormat::Json => builder.json().try_init(),
        byok::config::LogFormat::Text => builder.try_init(),
    };
    let health = std::sync::Arc::new(byok::pipeline::health::Health::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopping = std::sync::Arc::clone(&health);
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stop requested: draining the batch in flight");
        stopping.set_stopping();
        let _ = stop.send(true);
    });
    let stats = byok::pipeline::serve(config, stopped, health)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("{stats:?}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn healthcheck(url: &str) -> Result<ExitCode, String> {
    let (status, text) = byok::pipeline::http::healthcheck(url).map_err(|e| e.to_string())?;
    println!("{status} {text}");
    Ok(if status == "200" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `byok loadgen`'s tenants (`--tenants N`, `--tenant NAME`, or the configuration's BYOK
/// tenants) and message size (`chat` or a byte size).
fn loadgen_tenants_and_size(
    a: &LoadgenArgs,
    config: Option<&byok::config::Config>,
) -> Result<(Vec<String>, byok::loadgen::Size), String> {
    use byok::loadgen::Size;
    let tenants: Vec<String> = if let Some(n) = a.tenants {
        (0..n).map(|i| format!("tenant-{i:04}")).collect()
    } else if !a.tenant.is_empty() {
        a.tenant.clone()
    } else if let Some(c) = config {
        c.tenants
            .values()
            .filter(|t| t.byok_enabled)
            .map(|t| t.id.to_string())
            .collect()
    } else {
        return Err("name the tenants: --tenants N, --tenant NAME, or --config FILE".into());
    };
    let size = if a.size == "chat" {
        Size::Chat
    } else {
        let n: bytesize::ByteSize = a.size.parse().map_err(|e| {
            format!(
                "--size {:?}: {e}; use \"chat\" or a size such as 1KiB",
                a.size
            )
        })?;
        Size::Fixed(n.as_u64() as usize)
    };
    Ok((tenants, size))
}

pub(crate) async fn loadgen(a: LoadgenArgs) -> Result<ExitCode, String> {
    use byok::loadgen::{LoadOptions, TenantIn};
    let config = a
        .config
        .as_ref()
        .map(|p| super::load_config(p))
        .transpose()?;
    let (tenants, size) = loadgen_tenants_and_size(&a, config.as_ref())?;
    let bootstrap = a
        .bootstrap
        .or_else(|| config.as_ref().map(|c| c.kafka.bootstrap_servers.clone()))
        .ok_or("give --bootstrap HOST:PORT or --config FILE")?;
    let topic = a
        .topic
        .or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.kafka.input_topics.first().cloned())
        })
        .unwrap_or_else(|| "capture.messages".to_owned());
    let opts = LoadOptions {
        bootstrap,
        topic: topic.clone(),
        messages: a.messages,
        rate: a.rate,
        tenants,
        size,
        tenant_in: if a.tenant_header {
            TenantIn::Header
        } else {
            TenantIn::Json
        },
        follow: a.follow_group.map(|g| (g, a.max_lag)),
        producer: Vec::new(),
        start: a.start,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let bar = match a.messages {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} messages, {per_sec}, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    eprintln!(
        "loadgen: {} tenants to {topic}, size {}, {}",
        opts.tenants.len(),
        a.size,
        opts.rate
            .map_or("as fast as possible".to_owned(), |r| format!("{r} msg/s"))
    );
    let stats = byok::loadgen::run(&opts, stopped, |s| {
        bar.set_position(s.sent);
        bar.set_message(format!(
            "{:.1} MB/s",
            s.bytes as f64 / 1e6 / s.elapsed.as_secs_f64().max(1e-9)
        ));
    })
    .await
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    eprintln!(
        "loadgen: {} messages, {:.1} MB in {:.1} s ({:.0} msg/s, {:.1} MB/s){}",
        stats.sent,
        stats.bytes as f64 / 1e6,
        stats.elapsed.as_secs_f64(),
        stats.sent as f64 / stats.elapsed.as_secs_f64().max(1e-9),
        stats.bytes as f64 / 1e6 / stats.elapsed.as_secs_f64().max(1e-9),
        if stats.waited.is_zero() {
            String::new()
        } else {
            format!(
                ", {:.1} s waiting for the group",
                stats.waited.as_secs_f64()
            )
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM or Ctrl-C (never, if the SIGTERM handler cannot be installed and Ctrl-C
/// never comes).
pub(crate) async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

pub(crate) fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
