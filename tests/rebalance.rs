//! A batch that cannot be finished while the group rebalances, on librdkafka's mock cluster: the
//! worker gives it back (its partitions sought back to it) so the rebalance completes, the
//! partitions it lost are sealed once by their new owner, and nothing is archived twice.
//!
//! Measured: the new member gets its first partitions after about two session timeouts (11.5 s
//! with `session.timeout.ms` 6000 here, 89 s with the default 45 000): the stuck member rejoins
//! once its session expired. Without giving the batch back (checked by disabling it) the stuck
//! member keeps its whole batch, its assignment never updated since it never polls, and seals the
//! partitions the new member sealed too: 400 archive records for 200 captured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use byok::pipeline::health::Health;
use byok::pipeline::{Out, RunStats, Stage, StageError, Wiring};
use common::mock::*;
use rdkafka::ClientConfig;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

/// The worker's sealing stage behind a gate: while closed, every batch fails (to be retried).
struct Gate {
    inner: Box<dyn Stage>,
    open: Arc<AtomicBool>,
    refused: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Stage for Gate {
    async fn process(&mut self, batch: &Arc<Vec<OwnedMessage>>) -> Result<Vec<Out>, StageError> {
        if !self.open.load(Ordering::Relaxed) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(StageError::Retry(byok::deks::DekError::Sealing(
                "the test's gate is closed".into(),
            )));
        }
        self.inner.process(batch).await
    }
    fn begin_transaction(&mut self) {
        self.inner.begin_transaction();
    }
    fn abort_transaction(&mut self) {
        self.inner.abort_transaction();
    }
    fn report(&self, stats: &mut RunStats) {
        self.inner.report(stats);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stuck_during_a_rebalance_is_given_back_and_sealed_once() {
    let r = rig("").await;
    let mut config = r.with_before_keys(
        "[kafka.consumer]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 1000",
    );
    // retry budget = a quarter of it: 2.5 s
    config.worker.stall_timeout = Duration::from_secs(10);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &r.bootstrap)
        .create()
        .unwrap();
    let total = 200u64;
    for i in 0..total {
        let body = format!(r#"{{"tenant_id":"acme","n":{i}}}"#);
        producer
            .send(
                FutureRecord::to("capture.messages")
                    .partition((i % 4) as i32)
                    .key(&format!("c-{i}"))
                    .payload(&body),
                Timeout::Never,
            )
            .await
            .unwrap();
    }
    // worker A: its batches fail while the gate is closed
    let (open, refused) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let health_a = Arc::new(Health::default());
    let (stop_a, stopped_a) = tokio::sync::watch::channel(false);
    let gate = {
        let (open, refused) = (Arc::clone(&open), Arc::clone(&refused));
        move |w: &Wiring<'_>| {
            Ok(Box::new(Gate {
                inner: byok::pipeline::seal_stage(w)?,
                open,
                refused,
            }) as Box<dyn Stage>)
        }
    };
    let a = tokio::spawn(byok::pipeline::run_with(
        config.clone(),
        stopped_a,
        Arc::clone(&health_a),
        gate,
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    while refused.load(Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "worker A never tried a batch");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t0 = Instant::now();
    // worker B joins the group while A's batch is stuck; B takes some of A's partitions
    let health_b = Arc::new(Health::default());
    let (stop_b, stopped_b) = tokio::sync::watch::channel(false);
    let b = tokio::spawn(byok::pipeline::run_with(
        config.clone(),
        stopped_b,
        Arc::clone(&health_b),
        byok::pipeline::seal_stage,
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    while health_b.records_done() == 0 {
        assert!(
            Instant::now() < deadline,
            "worker B never got a partition: A's stuck batch held the rebalance"
        );
        assert!(!a.is_finished() && !b.is_finished());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "worker B's first record {:?} after it started",
        t0.elapsed()
    );
    open.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(90);
    while health_a.records_done() + health_b.records_done() < total {
        assert!(
            Instant::now() < deadline,
            "{} + {} of {total} done",
            health_a.records_done(),
            health_b.records_done()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("all records done {:?} after worker B started", t0.elapsed());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_a.send(true).unwrap();
    stop_b.send(true).unwrap();
    let (sa, sb) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert!(sb.archived > 0 && sa.archived > 0, "A {sa:?}, B {sb:?}");
    assert_eq!(
        sa.archived + sb.archived,
        total,
        "each record sealed once: A {sa:?}, B {sb:?}"
    );
    assert_eq!(count(&r.bootstrap, "archive.messages"), total as i64);
    drop(producer);
}
