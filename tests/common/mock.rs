//! The worker's rig on librdkafka's mock cluster: the emulator, the pipeline's topics, a worker
//! configuration, and waiting for counts.

use std::time::Duration;

use byok::config::Config;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;

use super::emu::Emu;

pub(crate) fn count(bootstrap: &str, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "counter")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    md.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (lo, hi) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .unwrap();
            hi - lo
        })
        .sum()
}

/// The emulator, a mock cluster with the pipeline's topics, and a worker config for them.
pub(crate) struct Rig {
    pub(crate) emu: Emu,
    pub(crate) cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub(crate) bootstrap: String,
    pub(crate) config: Config,
    pub(crate) path: std::path::PathBuf,
}

pub(crate) async fn rig(extra: &str) -> Rig {
    rig_topics(
        extra,
        &[
            ("capture.messages", 4),
            ("archive.messages", 4),
            ("byok.deks", 1),
            ("byok.keks", 1),
            ("byok.quarantine", 1),
        ],
    )
    .await
}

/// [`rig`] with these topics and partition counts.
pub(crate) async fn rig_with(topics: &[(&str, i32)]) -> Rig {
    rig_topics("", topics).await
}

async fn rig_topics(extra: &str, topics: &[(&str, i32)]) -> Rig {
    let emu = Emu::start().await;
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for (t, p) in topics {
        cluster.create_topic(t, *p, 1).unwrap();
    }
    let path = super::emu_config::write(emu.dir.path(), emu.port(), &emu.running.ca_pem, extra);
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "bootstrap_servers = \"127.0.0.1:9092\"",
        &format!("bootstrap_servers = \"{bootstrap}\""),
    );
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path).unwrap();
    Rig {
        emu,
        cluster,
        bootstrap,
        config,
        path,
    }
}

impl Rig {
    /// Rewrites the rig's configuration file with `edit` and loads it.
    pub(crate) fn edit_config(&self, edit: impl FnOnce(String) -> String) -> Config {
        let text = std::fs::read_to_string(&self.path).unwrap();
        let edited = edit(text.clone());
        assert_ne!(edited, text, "the edit changed nothing");
        std::fs::write(&self.path, edited).unwrap();
        Config::load(&self.path).unwrap()
    }

    /// Adds TOML before the `[keys]` table (passthrough `[kafka.producer]` or `[kafka.consumer]`
    /// settings) and loads the configuration.
    pub(crate) fn with_before_keys(&self, toml: &str) -> Config {
        self.edit_config(|t| t.replace("[keys]", &format!("{toml}\n[keys]")))
    }
}

/// Stops a worker and returns its counts (within 60 s).
pub(crate) async fn stop_worker(
    stop: tokio::sync::watch::Sender<bool>,
    worker: tokio::task::JoinHandle<Result<byok::pipeline::RunStats, byok::pipeline::WorkerError>>,
) -> byok::pipeline::RunStats {
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker did not stop within 60 s")
        .unwrap()
        .unwrap()
}

/// A sealing worker on `config`, started: its stop switch, its task and its health.
pub(crate) fn start_worker(
    config: &Config,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<byok::pipeline::RunStats, byok::pipeline::WorkerError>>,
    std::sync::Arc<byok::pipeline::health::Health>,
) {
    let health = std::sync::Arc::new(byok::pipeline::health::Health::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run_with(
        config.clone(),
        stopped,
        std::sync::Arc::clone(&health),
        byok::pipeline::seal_stage,
    ));
    (stop, worker, health)
}

/// A sealing worker on `config`, run until it processed `n` records (within `secs`): its stop
/// switch, its task and its health.
pub(crate) async fn worker_until(
    config: &Config,
    n: u64,
    secs: u64,
) -> (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<Result<byok::pipeline::RunStats, byok::pipeline::WorkerError>>,
    std::sync::Arc<byok::pipeline::health::Health>,
) {
    let (stop, worker, health) = start_worker(config);
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while health.records_done() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} done",
            health.records_done()
        );
        assert!(!worker.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (stop, worker, health)
}

/// Waits until archive + quarantine hold at least `n` records.
pub(crate) async fn wait_out(bootstrap: &str, n: i64, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let done = count(bootstrap, "archive.messages") + count(bootstrap, "byok.quarantine");
        if done >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {done} of {n} records out after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every committed record of `topic` from the beginning (read until 3 s pass without one):
/// value and headers (as text).
pub(crate) fn records(
    bootstrap: &str,
    topic: &str,
) -> Vec<(Vec<u8>, std::collections::HashMap<String, String>)> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let c = from_start(bootstrap, topic, "read_committed");
    let mut out = Vec::new();
    let mut idle_since = std::time::Instant::now();
    while idle_since.elapsed() < Duration::from_secs(3) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            idle_since = std::time::Instant::now();
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    out
}

/// A consumer assigned every partition of `topic` from its beginning.
pub(crate) fn from_start(bootstrap: &str, topic: &str, isolation: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "byok-test-reader")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    c
}

/// Every record of a topic (as many as its watermarks say), detached.
pub(crate) fn all(bootstrap: &str, topic: &str) -> Vec<rdkafka::message::OwnedMessage> {
    let c = from_start(bootstrap, topic, "read_uncommitted");
    let total = count(bootstrap, topic);
    let mut out = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < total {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {total}",
            out.len()
        );
        if let Some(Ok(m)) = c.poll(Duration::from_secs(5)) {
            out.push(m.detach());
        }
    }
    out
}
