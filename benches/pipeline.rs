//! Load harness: the worker on librdkafka's mock cluster (in-process) with the Key Vault emulator
//! (in-process, HTTPS), sealing, next to a plaintext pass-through through the same consume,
//! batch and produce code (`Arm::PassThrough`, not reachable from `byok run`), in the same
//! process, alternating, for each message size and tenant count. Prints records/s, MB/s and
//! CPU seconds per GB for both, and the cost of sealing as a share of pass-through throughput.
//!
//! `scripts/bench-pipeline` runs it (`cargo bench --bench pipeline -- [--rounds N] [--quick]`).
//! Under `cargo test --benches` it runs one small cell as a smoke test.
//!
//! Method, per cell: a fresh mock cluster (64 partitions, so the backlog stays below its 5 MiB
//! per partition retention), one unmeasured warm-up run per size, the backlog produced first by `byok loadgen`'s generator (not
//! measured), then the worker started; the window measured runs from 50% of the backlog
//! processed (tenant DEKs made, group joined) to the last record acknowledged and committed.
//! CPU time is the whole process's (worker, broker threads, librdkafka), from /proc/self/stat.
//! Compression is off (it is a storage-for-CPU choice; `cargo bench --bench batch` shows its
//! cost). 1000 tenants share one emulated vault here, so its request budget and the worker's
//! per-vault limiter are raised; real tenants each have their own vault.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use byok::config::Config;
use byok::loadgen::{LoadOptions, Size, TenantIn};
use byok::pipeline::health::Health;
use byok::pipeline::route::HeaderCache;
use byok::pipeline::{Stage, Wiring, WorkerError, run_with, seal_stage};
use rdkafka::mocking::MockCluster;

mod common;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PARTITIONS: i32 = 64;

/// Process CPU time (user + system), from /proc/self/stat (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the command name (which is in parentheses and may contain spaces)
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the file: 12 and 13 after the command
    (ticks(11) + ticks(12)) / 100.0
}

struct Measured {
    records: u64,
    bytes: u64,
    seconds: f64,
    cpu: f64,
}

impl Measured {
    fn rps(&self) -> f64 {
        self.records as f64 / self.seconds
    }
    fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds
    }
    fn cpu_per_gb(&self) -> f64 {
        self.cpu / (self.bytes as f64 / 1e9)
    }
}

/// Writes a file readable by its owner only, as the worker requires of secrets.
fn private_file(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn config_text(dir: &Path, port: u16, bootstrap: &str, tenants: usize, audit: bool) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = dir.display();
    // secret files must be private (the checkout's copy has whatever mode the clone gave it)
    let acme = dir.join("acme.pem");
    private_file(
        &acme,
        &std::fs::read(root.join("config/example/acme.pem")).unwrap(),
    );
    // BYOK_BENCH_BATCH: extra [batch] settings, e.g. "parallel_min_bytes = 0"
    let batch = std::env::var("BYOK_BENCH_BATCH").unwrap_or_default();
    let mut t = format!(
        r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "byok-bench"

[dek]
compress = false

[batch]
{batch}

[keys]
ca_file = "{d}/emulator-ca.pem"
vault_requests_per_10s = 1000000

[keys.resolve]
"acme-vault.vault.azure.net" = "127.0.0.1"
"byok-operator.vault.azure.net" = "127.0.0.1"

[metrics]
listen = "127.0.0.1:0"

[quarantine]
vault_url = "https://byok-operator.vault.azure.net:{port}"
key_name = "quarantine-kek"
entra_tenant_id = "9b2d3c1a-55e0-4c69-a1f7-3f1e0c2b8d40"
client_id = "0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10"
credential = {{ type = "client-secret", file = "{d}/operator.secret" }}
authority_host = "https://127.0.0.1:{port}"
"#
    );
    for i in 0..tenants {
        t.push_str(&format!(
            r#"
[[tenants]]
id = "tenant-{i:04}"
vault_url = "https://acme-vault.vault.azure.net:{port}"
key_name = "byok-key"
entra_tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "4a1e6a3e-9d2f-4f7c-8a55-0c6e2d1b9f33"
credential = {{ type = "certificate", path = "{acme}" }}
authority_host = "https://127.0.0.1:{port}"
"#,
            acme = acme.display()
        ));
    }
    if audit {
        // the operator's signing key of the example seed certifies the session
        t.push_str(&format!(
            r#"
[audit]
cluster = "bench"

[audit.signing_key]
vault_url = "https://byok-operator.vault.azure.net:{port}"
key_name = "audit-signing"
entra_tenant_id = "9b2d3c1a-55e0-4c69-a1f7-3f1e0c2b8d40"
client_id = "0f6f0b6e-2f0a-4d8e-9b8e-6a3c5d7e9f10"
credential = {{ type = "client-secret", file = "{d}/operator.secret" }}
authority_host = "https://127.0.0.1:{port}"
"#
        ));
    }
    t
}

/// Which arm of the harness runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Arm {
    /// The worker's sealer.
    Seal,
    /// The worker's sealer with the audit log written (`--audit`).
    SealAudit,
    /// The plaintext pass-through baseline (benches/common).
    PassThrough,
}

fn pass_through_stage(w: &Wiring<'_>) -> Result<Box<dyn Stage>, WorkerError> {
    Ok(Box::new(common::PassThrough {
        config: w.config.clone(),
        cache: HeaderCache::default(),
    }))
}

/// One run of the worker in `stage` over a fresh backlog of `records` messages of `size` bytes.
async fn run_cell(
    dir: &Path,
    port: u16,
    stage: Arm,
    size: usize,
    tenants: usize,
    records: u64,
) -> Measured {
    let cluster = MockCluster::new(1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    for (t, p) in [
        ("capture.messages", PARTITIONS),
        ("archive.messages", PARTITIONS),
        ("byok.deks", 1),
        ("byok.keks", 1),
        ("byok.quarantine", 1),
        ("byok.audit", 1),
    ] {
        cluster.create_topic(t, p, 1).unwrap();
    }
    let path = dir.join(format!("bench-{tenants}.toml"));
    let audit = stage == Arm::SealAudit;
    std::fs::write(&path, config_text(dir, port, &bootstrap, tenants, audit)).unwrap();
    let config = Config::load(&path).unwrap();
    let names: Vec<String> = config.tenants.keys().map(|t| t.to_string()).collect();
    let (_stop_gen, gen_stop) = tokio::sync::watch::channel(false);
    let load = LoadOptions {
        bootstrap: bootstrap.clone(),
        topic: "capture.messages".into(),
        messages: Some(records),
        rate: None,
        tenants: names,
        size: Size::Fixed(size),
        tenant_in: TenantIn::Json,
        follow: None,
        producer: vec![("batch.size".into(), "1000000".into())],
        start: 0,
    };
    let produced = byok::loadgen::run(&load, gen_stop, |_| {}).await.unwrap();
    assert_eq!(produced.sent, records);
    assert_nothing_pruned(&bootstrap, "capture.messages");

    let health = Arc::new(Health::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = match stage {
        Arm::Seal | Arm::SealAudit => {
            tokio::spawn(run_with(config, stopped, Arc::clone(&health), seal_stage))
        }
        Arm::PassThrough => tokio::spawn(run_with(
            config,
            stopped,
            Arc::clone(&health),
            pass_through_stage,
        )),
    };
    // BYOK_BENCH_WARM: percent of the backlog processed before the measured window (default 50:
    // with 1000 tenants the cold start, 1000 DEKs wrapped through the in-process emulator, each a
    // token, a TLS handshake and an RSA operation, lasts past 10%)
    let warm_pct: u64 = std::env::var("BYOK_BENCH_WARM")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let warm = records * warm_pct / 100;
    let mut start: Option<(Instant, f64, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = health.records_done();
        if start.is_none() && done >= warm {
            start = Some((Instant::now(), cpu_seconds(), done));
        }
        if done >= records {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of {records} after 600 s");
        assert!(!worker.is_finished(), "the worker stopped");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (t0, cpu0, done0) = start.unwrap();
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    stop.send(true).unwrap();
    let stats = worker.await.unwrap().unwrap();
    if std::env::var("BYOK_BENCH_VERBOSE").is_ok() {
        eprintln!("{stage:?} {size} B x {tenants} tenants: {stats:?}");
    }
    drop(cluster);
    let n = records - done0;
    Measured {
        records: n,
        bytes: n * size as u64,
        seconds,
        cpu,
    }
}

/// Fails when the mock cluster pruned records of `topic` before anyone read them: it keeps only
/// 5 MiB per partition, and a worker can never finish a backlog that lost records (this is why
/// runs of 98 304 records of 1 KiB and 400 000 of 256 B with one tenant never finished: its 40
/// conversation keys fill 36 of 64 partitions, the fullest past 5 MiB).
fn assert_nothing_pruned(bootstrap: &str, topic: &str) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let (mut pruned, mut partitions) = (0i64, 0);
    for p in 0..PARTITIONS {
        let (low, _) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap();
        if low > 0 {
            pruned += low;
            partitions += 1;
        }
    }
    assert_eq!(
        pruned, 0,
        "the backlog outgrew the mock cluster's 5 MiB per partition: {pruned} records of {topic} \
         pruned in {partitions} partitions before the worker read them; use fewer records or more \
         tenants (keys) per cell"
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let bench = args.iter().any(|a| a == "--bench");
    // --audit: a third arm, sealing with the audit log written (its cost against sealing alone)
    let with_audit = args.iter().any(|a| a == "--audit");
    let quick = args.iter().any(|a| a == "--quick") || !bench;
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if bench { 3 } else { 1 });
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    // --size N and --tenants N pick one cell
    let sizes: Vec<usize> = match arg("--size") {
        Some(n) => vec![n],
        None if bench => vec![256, 1024, 16 * 1024],
        None => vec![1024],
    };
    let tenant_counts: Vec<usize> = match arg("--tenants") {
        Some(n) => vec![n],
        None if bench => vec![1, 20, 1000],
        None => vec![20],
    };

    let dir = tempfile::tempdir().unwrap();
    let seed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/emulator.example.toml"
    ))
    .unwrap()
    .replace("budget_per_10s = 4000", "budget_per_10s = 100000000")
    .replace(
        "\"emulator-keys/",
        &format!("\"{}/config/emulator-keys/", env!("CARGO_MANIFEST_DIR")),
    )
    .replace(
        "\"example/",
        &format!("\"{}/config/example/", env!("CARGO_MANIFEST_DIR")),
    );
    std::fs::write(dir.path().join("emulator.toml"), seed).unwrap();
    private_file(
        &dir.path().join("operator.secret"),
        b"example-operator-secret-not-real",
    );
    let emu = byok::emulator::start(byok::emulator::Options {
        seed: Some(dir.path().join("emulator.toml")),
        ca_out: Some(dir.path().join("emulator-ca.pem")),
        ..Default::default()
    })
    .await
    .unwrap();
    let port = emu.addr.port();

    println!(
        "pipeline load harness: mock cluster ({PARTITIONS} partitions), emulator over HTTPS, {rounds} round(s) per cell, medians; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:>6} {:>7} | {:>11} {:>9} {:>9} | {:>11} {:>9} {:>9} | {:>12}",
        "size",
        "tenants",
        "pass rec/s",
        "MB/s",
        "CPU s/GB",
        "seal rec/s",
        "MB/s",
        "CPU s/GB",
        "sealing cost"
    );
    let mut worst: f64 = 0.0;
    for &size in &sizes {
        // about 96 MiB of backlog per run (1.5 MiB per partition on average, under the mock
        // cluster's 5), at most 200k records. With one tenant (40 keys, 36 partitions) the
        // fullest partition can pass 5 MiB: assert_nothing_pruned stops such a run at once
        let records: u64 = ((96u64 << 20) / size as u64).min(match (bench, quick) {
            (false, _) => 20_000, // cargo test: a smoke run
            (true, true) => 50_000,
            (true, false) => 200_000,
        });
        // one unmeasured run first: the process's allocator and the broker's memory warm up
        let _ = run_cell(dir.path(), port, Arm::PassThrough, size, 1, records / 4).await;
        for &tenants in &tenant_counts {
            let (mut pass, mut seal, mut audit) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..rounds {
                pass.push(
                    run_cell(dir.path(), port, Arm::PassThrough, size, tenants, records).await,
                );
                seal.push(run_cell(dir.path(), port, Arm::Seal, size, tenants, records).await);
                if with_audit {
                    audit.push(
                        run_cell(dir.path(), port, Arm::SealAudit, size, tenants, records).await,
                    );
                }
            }
            let m = |v: &[Measured], f: fn(&Measured) -> f64| median(v.iter().map(f).collect());
            let (p_rps, s_rps) = (m(&pass, Measured::rps), m(&seal, Measured::rps));
            let cost = 1.0 - s_rps / p_rps;
            worst = worst.max(cost);
            println!(
                "{:>6} {:>7} | {:>11.0} {:>9.1} {:>9.2} | {:>11.0} {:>9.1} {:>9.2} | {:>11.1}%",
                size,
                tenants,
                p_rps,
                m(&pass, Measured::mbps),
                m(&pass, Measured::cpu_per_gb),
                s_rps,
                m(&seal, Measured::mbps),
                m(&seal, Measured::cpu_per_gb),
                cost * 100.0
            );
            if with_audit {
                let a_rps = m(&audit, Measured::rps);
                let spread = |v: &[Measured]| {
                    let r: Vec<f64> = v.iter().map(Measured::rps).collect();
                    let (lo, hi) = r
                        .iter()
                        .fold((f64::MAX, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
                    (hi - lo) / a_rps.max(1.0) * 100.0
                };
                println!(
                    "{:>6} {:>7} | audit {:>11.0} rec/s {:>9.1} MB/s {:>9.2} CPU s/GB | audit cost vs sealing {:>5.1}% (audit rounds spread {:.1}%)",
                    size,
                    tenants,
                    a_rps,
                    m(&audit, Measured::mbps),
                    m(&audit, Measured::cpu_per_gb),
                    (1.0 - a_rps / s_rps) * 100.0,
                    spread(&audit)
                );
            }
        }
    }
    println!(
        "largest sealing cost: {:.1}% of pass-through throughput (target: at most 5%)",
        worst * 100.0
    );
    emu.stop().await;
}
