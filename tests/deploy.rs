//! The deployment files agree with the worker: the Grafana dashboard only queries metrics a
//! running worker really exports (scraped from its /metrics), /health turns ready and /live
//! answers, the worker configurations of docker/ and deploy/k8s/ check clean, and the grace
//! periods outlast the drain deadline. (hadolint, docker-compose config and kubernetes-validate
//! run in scripts/validate-deploy.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use byok::config::Config;
use byok::pipeline::health::Health;
use common::emu::*;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Metric names in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docker/grafana/dashboards/byok.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("byok_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_only_queries_metrics_a_running_worker_exports() {
    let wanted = dashboard_metrics();
    assert!(
        wanted.len() >= 10,
        "the dashboard queries the worker: {wanted:?}"
    );

    let emu = Emu::start().await;
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for (t, p) in [
        ("capture.messages", 2),
        ("archive.messages", 2),
        ("byok.deks", 1),
        ("byok.keks", 1),
        ("byok.quarantine", 1),
    ] {
        cluster.create_topic(t, p, 1).unwrap();
    }
    let path = common::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        &format!("bootstrap_servers = \"{bootstrap}\""),
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();

    let health = Arc::new(Health::default());
    let addr = byok::pipeline::http::serve("127.0.0.1:0".parse().unwrap(), Arc::clone(&health))
        .await
        .unwrap();
    let (status, body) = get(&format!("http://{addr}/health")).await;
    assert_eq!(status, 503, "not ready before joining: {body}");
    assert_eq!(get(&format!("http://{addr}/live")).await.0, 200);

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let mut n = 0;
    for i in 0..60 {
        let t = ["acme", "globex", "nobody"][i % 3];
        let v = format!(r#"{{"tenant_id":"{t}","body":"metrics {i}"}}"#);
        producer
            .send(
                FutureRecord::<(), _>::to("capture.messages").payload(&v),
                Timeout::Never,
            )
            .await
            .unwrap();
        n += 1;
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run_with(
        config,
        stopped,
        Arc::clone(&health),
        byok::pipeline::seal_stage,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while health.records_done() < n || health.ready().is_err() {
        assert!(
            Instant::now() < deadline,
            "{} of {n} done, ready: {:?}",
            health.records_done(),
            health.ready()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&format!("http://{addr}/health")).await,
        (200, "ready\n".to_owned())
    );
    // consumer lag comes with librdkafka's statistics, every 5 s
    let mut exported = BTreeSet::new();
    while Instant::now() < deadline {
        let (status, body) = get(&format!("http://{addr}/metrics")).await;
        assert_eq!(status, 200);
        exported = body
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_owned)
            .collect();
        if wanted.is_subset(&exported) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let missing: Vec<_> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the worker does not export: {missing:?}\nexported: {exported:?}"
    );
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();
    drop(producer);
    drop(cluster);
}

/// The worker configuration in the ConfigMap.
fn configmap_toml() -> String {
    let yaml = std::fs::read_to_string(root().join("deploy/k8s/configmap.yaml")).unwrap();
    let mut lines = yaml.lines().skip_while(|l| l.trim() != "byok.toml: |");
    lines.next();
    lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Points the mounted secret paths at the example files, then checks the configuration.
fn check_with_example_secrets(text: &str, secrets_dir: &str) {
    let dir = tempfile::tempdir().unwrap();
    let example = root().join("config/example");
    let ca = dir.path().join("ca.pem");
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let mut text = text.replace("/shared/emulator-ca.pem", &ca.display().to_string());
    for (secret, file) in [
        ("acme_certificate", "acme.pem"),
        ("globex_secret", "globex.secret"),
        ("initech_secret", "initech.secret"),
        ("operator_secret", "operator.secret"),
    ] {
        // mounted secrets are private (compose: --allow-insecure-permissions is for the
        // checkout's throwaway files; k8s: defaultMode 0400)
        let copy = dir.path().join(file);
        std::fs::copy(example.join(file), &copy).unwrap();
        std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        text = text.replace(
            &format!("{secrets_dir}/{secret}"),
            &copy.display().to_string(),
        );
    }
    let path = dir.path().join("byok.toml");
    std::fs::write(&path, &text).unwrap();
    let config = Config::load(&path);
    assert!(
        config.is_ok(),
        "{}:\n{}",
        path.display(),
        config.err().map(|e| e.to_string()).unwrap_or_default()
    );
}

#[test]
fn the_deployment_configurations_check_clean() {
    let docker = std::fs::read_to_string(root().join("docker/byok.toml")).unwrap();
    check_with_example_secrets(&docker, "/run/secrets");
    let k8s = configmap_toml();
    assert!(k8s.contains("[kafka]"), "{k8s}");
    check_with_example_secrets(&k8s, "/run/secrets/byok");
}

#[test]
fn grace_periods_outlast_the_drain_deadline() {
    let secs = |text: &str, key: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap_or_else(|| panic!("{key} not found"));
        line.split([':', '=', '"'])
            .map(str::trim)
            .filter_map(|v| v.trim_end_matches('s').parse().ok())
            .next()
            .unwrap_or_else(|| panic!("no seconds in {line:?}"))
    };
    let k8s = configmap_toml();
    let drain = secs(&k8s, "drain_deadline");
    let deployment = std::fs::read_to_string(root().join("deploy/k8s/deployment.yaml")).unwrap();
    let grace = secs(&deployment, "terminationGracePeriodSeconds");
    assert!(
        grace >= drain + 10,
        "k8s grace {grace} s vs drain {drain} s"
    );
    let docker = std::fs::read_to_string(root().join("docker/byok.toml")).unwrap();
    let compose = std::fs::read_to_string(root().join("docker/compose.yaml")).unwrap();
    let (drain, grace) = (
        secs(&docker, "drain_deadline"),
        secs(&compose, "stop_grace_period"),
    );
    assert!(
        grace >= drain + 10,
        "compose grace {grace} s vs drain {drain} s"
    );
}
