//! One batch through the worker's path between consuming and producing: tenant lookup (header or
//! JSON scan), grouping, sealing under each tenant's DEK, and building the output records with
//! their v1 headers. `cargo bench --bench batch`.
//!
//! Ids, for 500-record batches (the default `batch.max_records`) of 256 B, 1 KiB and 16 KiB
//! messages spread over the example configuration's two BYOK tenants:
//! - `batch/pass-through/<size>`: the baseline, the same routing and record building with the
//!   value copied instead of sealed (what the load harness's pass-through does);
//! - `batch/seal/<size>`: sealing on the worker's task;
//! - `batch/seal-pool/<size>`: sealing on the bounded pool (`batch.seal_threads` threads), as
//!   batches of at least `batch.parallel_min_bytes` are;
//! - `batch/seal-zstd/<size>`: sealing on the worker's task with the example configuration's
//!   compression (zstd from 2 KiB): what compression adds, a storage-for-CPU choice.
//!
//! All but `seal-zstd` run with compression off, so they compare sealing with copying.
//!
//! Compare ratios within one run, never absolute figures across runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use byok::config::Config;
use byok::dek::{ActiveDek, DekLimits, MAX_MESSAGES_CEILING};
use byok::loadgen::{Size, message};
use byok::pipeline::route::HeaderCache;
use byok::pipeline::seal::seal_with;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rdkafka::Timestamp;
use rdkafka::message::OwnedMessage;

mod common;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 500;

fn batch(size: usize, tenants: &[String]) -> Vec<OwnedMessage> {
    (0..RECORDS)
        .map(|i| {
            let (key, value) = message(i as u64, &tenants[i % tenants.len()], Size::Fixed(size));
            OwnedMessage::new(
                Some(value.into_bytes()),
                Some(key.into_bytes()),
                "capture.messages".into(),
                Timestamp::NotAvailable,
                (i % 6) as i32,
                i as i64,
                None,
            )
        })
        .collect()
}

/// Output bytes (values and headers) of a batch sealed by the worker's sealer.
fn seal(
    b: &Arc<Vec<OwnedMessage>>,
    config: &Config,
    deks: &HashMap<String, Arc<ActiveDek>>,
    pool: Option<&rayon::ThreadPool>,
) -> usize {
    let outs = futures::executor::block_on(seal_with(b, config, deks, pool)).unwrap();
    outs.iter().map(|o| o.len()).sum()
}

fn bench(c: &mut Criterion) {
    let with_zstd = Config::load_with(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/byok.example.toml"
        )),
        // the checkout's example secrets have whatever mode the clone gave them
        byok::config::LoadOptions {
            allow_insecure_permissions: true,
        },
    )
    .unwrap();
    let mut config = with_zstd.clone();
    config.dek.compression = byok::envelope::Compression::off();
    let tenants: Vec<String> = config
        .tenants
        .values()
        .filter(|t| t.byok_enabled)
        .map(|t| t.id.to_string())
        .collect();
    // DEK limits far beyond a bench run, so no DEK retires mid-measurement
    let limits =
        DekLimits::new(MAX_MESSAGES_CEILING, u64::MAX, Duration::from_secs(1 << 30)).unwrap();
    let deks: HashMap<String, Arc<ActiveDek>> = tenants
        .iter()
        .map(|t| (t.clone(), Arc::new(ActiveDek::generate(limits).unwrap())))
        .collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.batch.seal_threads.get())
        .build()
        .unwrap();
    let mut g = c.benchmark_group("batch");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for size in [256usize, 1024, 16 * 1024] {
        let b = Arc::new(batch(size, &tenants));
        g.throughput(Throughput::Bytes((size * RECORDS) as u64));
        g.bench_with_input(BenchmarkId::new("pass-through", size), &b, |bn, b| {
            bn.iter(|| {
                let outs = common::pass_through(b, &config, &mut HeaderCache::default());
                outs.iter().map(|o| o.len()).sum::<usize>()
            })
        });
        g.bench_with_input(BenchmarkId::new("seal", size), &b, |bn, b| {
            bn.iter(|| seal(b, &config, &deks, None))
        });
        g.bench_with_input(BenchmarkId::new("seal-pool", size), &b, |bn, b| {
            bn.iter(|| seal(b, &config, &deks, Some(&pool)))
        });
        g.bench_with_input(BenchmarkId::new("seal-zstd", size), &b, |bn, b| {
            bn.iter(|| seal(b, &with_zstd, &deks, None))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
