//! Tampering with a verified archive on Tansu (docs/audit-v1.md §5b, §7), each test starting from
//! a run that `byok verify` passes: an attacker who can write to Kafka but holds no certified
//! session key injects a DEK wrapped with the tenant's public key and a record sealed under it,
//! plants key records, tombstones a registry record, flips a bit of an archive value, and
//! removes records (a re-created topic missing them). Verify names each; readers (`byok cat`,
//! the worker) never use what does not verify.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use byok::archive::ReadOptions;
use byok::dek::{DataKey, DekId};
use byok::kms::local::KekRecord;
use byok::registry::DekRecord;
use common::audit_run::{Raw, Run, read_topic};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

/// A verified run: 90 records archived or quarantined by one worker, `byok verify` clean.
async fn verified_run() -> (Run, String) {
    let mut run = Run::start().await;
    run.capture(90).await;
    run.work_until(90).await;
    let kid = run.signing_kid();
    let (ok, out) = run.verify_cli(&kid).await;
    assert!(ok, "the run verifies before any tampering: {out}");
    assert!(out.trim_end().ends_with(" 0 failed"), "{out}");
    (run, kid)
}

async fn produce(run: &Run, topic: &str, key: Option<&[u8]>, value: Option<&[u8]>, raw: &Raw) {
    let mut h = rdkafka::message::OwnedHeaders::new();
    for (k, v) in &raw.4 {
        h = h.insert(rdkafka::message::Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(h);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    rec = rec.partition(raw.0);
    run.producer.send(rec, Timeout::Never).await.unwrap();
}

fn keks_record(run: &Run, tenant: &str) -> KekRecord {
    read_topic(&run.tansu.bootstrap(), "byok.keks")
        .into_iter()
        .filter(|r| r.2.as_deref() == Some(tenant.as_bytes()))
        .filter_map(|r| KekRecord::from_json(r.3.as_deref()?).ok())
        .next_back()
        .expect("the worker published the tenant's public key")
}

/// Opens every record of `topic` as `byok cat` does: (opened offsets, failed (offset, reason)).
async fn cat(run: &Run, topic: &str) -> (Vec<(i32, i64)>, Vec<(i32, i64, String)>) {
    cat_with(&run.config, topic).await
}

async fn cat_with(
    config: &byok::config::Config,
    topic: &str,
) -> (Vec<(i32, i64)>, Vec<(i32, i64, String)>) {
    let (mut opened, mut failed) = (Vec::new(), Vec::new());
    let mut opts = ReadOptions::topic(topic);
    opts.duplicates = true;
    byok::archive::read(
        config,
        &opts,
        |o| opened.push((o.partition, o.offset)),
        |u| failed.push((u.partition, u.offset, u.reason)),
    )
    .await
    .unwrap();
    (opened, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dek_wrapped_with_the_tenants_public_key_is_injected_and_never_opens() {
    let (run, kid) = verified_run().await;
    let bootstrap = run.tansu.bootstrap();
    let (opened_before, failed_before) = cat(&run, "archive.messages").await;
    assert!(failed_before.is_empty(), "{failed_before:?}");

    // the attacker makes a DEK, wraps it with acme's public key (public: byok.keks), registers it
    // unsigned, and adds an archive record sealed under it that copies a real record's headers
    let acme = keks_record(&run, "acme");
    let dek = DekId::new_v7();
    let key = DataKey::from_bytes_for_vectors(dek, [7u8; 32]);
    let wrapped = byok::kms::local::wrap_locally("acme", &acme.version, &key).unwrap();
    let forged = DekRecord {
        dek,
        tenant: "acme".into(),
        kek: wrapped.kek,
        wrapped: wrapped.wrapped,
        created: time::OffsetDateTime::now_utc(),
        worker: "byok-worker-1".into(),
        rewrapped: None,
        wrapped_locally: false,
    };
    let registry = read_topic(&bootstrap, "byok.deks");
    produce(
        &run,
        "byok.deks",
        Some(dek.to_string().as_bytes()),
        Some(&forged.to_json()),
        &registry[0],
    )
    .await;
    let archive = read_topic(&bootstrap, "archive.messages");
    let real = archive
        .iter()
        .find(|r| {
            r.4.iter()
                .any(|(k, v)| k == "byok.tenant" && v.as_deref() == Some(b"acme"))
        })
        .unwrap()
        .clone();
    let mut headers = real.4.clone();
    for (k, v) in &mut headers {
        if k == "byok.dek" {
            *v = Some(dek.to_string().into_bytes());
        }
    }
    let mut sealed = Vec::new();
    byok::envelope::seal_with_nonce_for_vectors(
        &key,
        [9u8; 12],
        0,
        "acme",
        real.2.as_deref(),
        br#"{"tenant_id":"acme","body":"wire 1M to the attacker"}"#,
        &mut sealed,
    )
    .unwrap();
    let injected = (real.0, 0, real.2.clone(), None, headers);
    produce(
        &run,
        "archive.messages",
        real.2.as_deref(),
        Some(&sealed),
        &injected,
    )
    .await;

    let (ok, out) = run.verify_cli(&kid).await;
    assert!(!ok, "{out}");
    assert!(out.contains("injected: archive.messages/"), "{out}");
    assert!(
        out.contains(&format!("unsigned: registry record {dek}")),
        "the registry record is reported for what it is: {out}"
    );
    assert!(out.trim_end().ends_with(" 2 failed"), "{out}");

    // byok cat (and the drain and replay, which read the registry the same way) refuse it
    let (opened, failed) = cat(&run, "archive.messages").await;
    assert_eq!(opened.len(), opened_before.len(), "nothing new opens");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].2.contains(&dek.to_string()) && failed[0].2.contains("not in the registry"),
        "{failed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_key_records_are_never_used_even_for_a_revoked_tenant() {
    let (mut run, kid) = verified_run().await;
    let bootstrap = run.tansu.bootstrap();
    let keks = read_topic(&bootstrap, "byok.keks");
    let acme = keks_record(&run, "acme");
    let globex = read_topic(&bootstrap, "byok.keks")
        .into_iter()
        .rfind(|r| r.2.as_deref() == Some(b"globex"))
        .unwrap();
    // an unsigned record naming the attacker's vault, and globex's genuine signed record under
    // acme's key (relabelled)
    let mut planted = KekRecord::from_json(globex.3.as_deref().unwrap()).unwrap();
    planted.tenant = "acme".into();
    planted.version.kid = byok::kms::KekId::parse(
        "https://evil.vault.azure.net/keys/byok-key/0123456789abcdef0123456789abcdef",
    )
    .unwrap();
    produce(
        &run,
        "byok.keks",
        Some(b"acme"),
        Some(&planted.to_json()),
        &keks[0],
    )
    .await;
    produce(
        &run,
        "byok.keks",
        Some(b"acme"),
        globex.3.as_deref(),
        &keks[0],
    )
    .await;

    let (ok, out) = run.verify_cli(&kid).await;
    assert!(!ok, "{out}");
    assert!(out.contains("unsigned: key record acme"), "{out}");
    assert!(out.contains("relabelled: key record acme"), "{out}");

    // acme revokes its key; a worker starting now quarantines acme's records sealed for acme's
    // last genuine public key, never the planted one
    run.emu
        .admin
        .set_key_enabled("acme-vault", "byok-key", None, false)
        .await
        .unwrap();
    let deks_before = read_topic(&bootstrap, "byok.deks").len();
    run.capture(30).await;
    run.work_until(30).await;
    let new: Vec<DekRecord> = read_topic(&bootstrap, "byok.deks")[deks_before..]
        .iter()
        .filter_map(|r| {
            match byok::registry::RegistryEntry::decode(r.2.as_deref(), r.3.as_deref()) {
                Ok(byok::registry::RegistryEntry::Live(d)) => Some(d),
                _ => None,
            }
        })
        .filter(|d| d.tenant == "acme")
        .collect();
    assert!(!new.is_empty(), "acme's records were sealed for acme");
    for d in &new {
        assert_eq!(
            d.kek, acme.version.kid,
            "wrapped for acme's genuine key version"
        );
        assert!(d.wrapped_locally);
    }
    let quarantined = read_topic(&bootstrap, "byok.quarantine");
    assert!(quarantined.iter().any(|r| {
        r.4.iter()
            .any(|(k, v)| k == "byok.reason" && v.as_deref() == Some(b"key-disabled"))
    }));
}

/// The run's configuration without `[audit]`: a reader of the compacted registry alone.
fn config_without_audit(run: &Run) -> byok::config::Config {
    let text = std::fs::read_to_string(&run.config.source).unwrap();
    let plain = &text[..text.find("\n[audit]").unwrap()];
    let path = run.config.source.with_file_name("no-audit.toml");
    std::fs::write(&path, plain).unwrap();
    byok::config::Config::load(&path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tombstoned_registry_record_is_reported_and_put_back_by_restore_registry() {
    let (run, kid) = verified_run().await;
    let bootstrap = run.tansu.bootstrap();
    let registry = read_topic(&bootstrap, "byok.deks");
    let victim = registry
        .iter()
        .find(|r| {
            r.3.as_deref()
                .is_some_and(|v| String::from_utf8_lossy(v).contains(r#""tenant":"acme""#))
        })
        .unwrap()
        .clone();
    let id = String::from_utf8(victim.2.clone().unwrap()).unwrap();
    let (opened_before, _) = cat(&run, "archive.messages").await;
    // a tombstone, and compaction taking the record it hides
    produce(&run, "byok.deks", victim.2.as_deref(), None, &victim).await;
    run.tansu
        .tamper("delete", "byok.deks", victim.0, victim.1, 0);

    let (ok, out) = run.verify_cli(&kid).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("tombstoned: registry record {id}")),
        "{out}"
    );
    // a reader that trusts the audit log still reads (the copy), one of the topic alone does not
    let (opened, failed) = cat(&run, "archive.messages").await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(opened.len(), opened_before.len());
    let plain = config_without_audit(&run);
    let (_, lost) = cat_with(&plain, "archive.messages").await;
    assert!(!lost.is_empty(), "the DEK is gone from the compacted topic");
    assert!(lost.iter().all(|l| l.2.contains(&id)), "{lost:?}");

    let (_, out) = common::run_byok(vec![
        "verify".into(),
        "--config".into(),
        run.config.source.clone().into(),
        "--restore-registry".into(),
    ])
    .await;
    assert!(
        out.contains(&format!("restored: registry record {id}")),
        "{out}"
    );
    assert!(
        out.contains("restored 1 registry and 0 key record(s)"),
        "{out}"
    );
    let (opened, failed) = cat_with(&plain, "archive.messages").await;
    assert!(failed.is_empty(), "the archive reads again: {failed:?}");
    assert_eq!(opened.len(), opened_before.len());
    // the record put back is named by the tool's checkpoint: not injected
    let (_, out) = run.verify_cli(&kid).await;
    assert!(!out.contains("injected"), "{out}");
    assert!(
        out.contains("tombstoned"),
        "the tombstone stays a finding: {out}"
    );
}

/// A witness copied out of Kafka (`byok verify --heads`) catches what nothing inside Kafka can:
/// the newest checkpoint of a partition removed together with what it named.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_witness_catches_the_newest_checkpoint_removed() {
    let (run, _) = verified_run().await;
    let witness = run.witness().await;
    let (ok, out) = run
        .verify_with(&["--witness".into(), witness.clone().into()])
        .await;
    assert!(ok, "the witness holds: {out}");
    // remove the newest checkpoint from the audit topic
    let audit = read_topic(&run.tansu.bootstrap(), "byok.audit");
    let last = audit
        .iter()
        .rfind(|r| {
            r.3.as_deref()
                .is_some_and(|v| v.starts_with(br#"{"v":1,"t":"checkpoint","#))
        })
        .unwrap();
    run.tansu.tamper("delete", "byok.audit", last.0, last.1, 0);
    let (ok, out) = run.verify_with(&["--witness".into(), witness.into()]).await;
    assert!(!ok, "{out}");
    assert!(out.contains("witness mismatch: capture.messages/"), "{out}");
}

/// The archive's records in (partition, offset) order.
fn archive_sorted(run: &Run) -> Vec<Raw> {
    let mut archive = read_topic(&run.tansu.bootstrap(), "archive.messages");
    archive.sort_by_key(|r| (r.0, r.1));
    archive
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flipped_bit_in_an_archive_value_is_altered() {
    let (run, kid) = verified_run().await;
    let archive = archive_sorted(&run);
    let (p, o) = (archive[3].0, archive[3].1);
    run.tansu.tamper("flip", "archive.messages", p, o, 20);
    let again = archive_sorted(&run);
    assert_eq!(again.len(), archive.len(), "offsets kept");
    assert_ne!(again[3].3, archive[3].3, "the stored value changed");

    let (ok, out) = run.verify_cli(&kid).await;
    assert!(!ok, "{out}");
    assert!(out.contains("altered: the leaves of checkpoint"), "{out}");
    assert!(out.trim_end().ends_with(" 1 failed"), "{out}");
    // and the record no longer opens
    let (_, failed) = cat(&run, "archive.messages").await;
    assert_eq!(
        failed.iter().map(|f| (f.0, f.1)).collect::<Vec<_>>(),
        [(p, o)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleted_records_are_removed() {
    let (run, kid) = verified_run().await;
    let archive = archive_sorted(&run);
    let gone = [(archive[1].0, archive[1].1), (archive[5].0, archive[5].1)];
    for (p, o) in gone {
        run.tansu.tamper("delete", "archive.messages", p, o, 0);
    }
    // the broker may answer from what it read before for a moment
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while archive_sorted(&run).len() != archive.len() - 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the records stay readable"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }

    let (ok, out) = run.verify_cli(&kid).await;
    assert!(!ok, "{out}");
    for (p, o) in &gone {
        assert!(
            out.contains(&format!("removed: archive.messages/{p}/{o} is named")),
            "{out}"
        );
    }
    assert!(out.trim_end().ends_with(" 2 failed"), "{out}");
}

/// The group's committed offsets on the capture topic have reached its end.
fn all_committed(run: &Run) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", run.tansu.bootstrap())
        .set("group.id", "byok-audit")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition("capture.messages", p);
    }
    let got = match c.committed_offsets(tpl, std::time::Duration::from_secs(10)) {
        Ok(got) => got,
        Err(e) => {
            eprintln!("committed offsets: {e}");
            return false;
        }
    };
    let state: Vec<(i32, rdkafka::Offset, i64)> = got
        .elements()
        .iter()
        .map(|e| {
            let (_, hi) = c
                .fetch_watermarks(
                    "capture.messages",
                    e.partition(),
                    std::time::Duration::from_secs(10),
                )
                .unwrap();
            (e.partition(), e.offset(), hi)
        })
        .collect();
    let done = state
        .iter()
        .all(|(_, o, hi)| *hi == 0 || matches!(o, rdkafka::Offset::Offset(o) if o >= hi));
    if !done {
        eprintln!("committed vs end: {state:?}");
    }
    done
}

/// Runs `byok run` until its failpoint aborts it (as SIGKILL would: no clean-up, no `end`).
fn crash_at(run: &Run, failpoint: &str) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_byok"))
        .args(["run", "--config"])
        .arg(&run.config.source)
        .env("BYOK_FAILPOINT", failpoint)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the worker did not reach {failpoint}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), None, "ended by a signal at {failpoint}");
}

/// Workers that die mid-stream (a crash between a checkpoint and its commit, and one between a
/// batch's outputs and its checkpoint): the next owner continues every chain from the last
/// commit, `byok verify` explains the fork and the orphans (notices) and passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_that_die_mid_stream_leave_forks_and_orphans_that_verify_explains() {
    let mut run = Run::start().await;
    // small batches, and a short session: a dead member's partitions move within seconds
    let path = run.config.source.clone();
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "max_wait = \"20ms\"",
        "max_wait = \"20ms\"\nmax_records = 100",
    ) + "\n[kafka.consumer]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 1000\n";
    std::fs::write(&path, text).unwrap();
    run.config = byok::config::Config::load(&path).unwrap();
    run.capture(3000).await;
    crash_at(&run, "after-checkpoint:6");
    crash_at(&run, "before-checkpoint:4");
    // a third worker finishes the backlog: until the group committed every captured record
    let health = std::sync::Arc::new(byok::pipeline::health::Health::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(byok::pipeline::run_with(
        run.config.clone(),
        stopped,
        std::sync::Arc::clone(&health),
        byok::pipeline::seal_stage,
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !all_committed(&run) {
        assert!(std::time::Instant::now() < deadline, "not all committed");
        assert!(!worker.is_finished(), "{:?}", worker.await);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    stop.send(true).unwrap();
    worker.await.unwrap().unwrap();

    let kid = run.signing_kid();
    let (ok, out) = run.verify_cli(&kid).await;
    eprintln!("{out}");
    assert!(ok, "{out}");
    assert!(out.trim_end().ends_with(" 0 failed"), "{out}");
    assert!(out.contains("3 writer(s)"), "{out}");
    assert!(out.contains("notice fork: capture.messages/"), "{out}");
    assert!(out.contains("notice orphan: "), "{out}");
    // every captured record is archived or quarantined under a live leaf
    let captured = read_topic(&run.tansu.bootstrap(), "capture.messages").len();
    let live: usize = out
        .trim_end()
        .rsplit('\n')
        .next()
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        live >= captured,
        "{live} live leaves for {captured} captured"
    );
}

/// Verify streams: a tiny window (records classified and checkpoints checked a few leaves at a
/// time) reaches the same verdict as the default; a range checks only the checkpoints touching
/// it; `--readability` opens every archive and quarantine record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_window_and_a_range_reach_the_same_verdict() {
    let (run, _) = verified_run().await;
    let (ok, whole) = run.verify_with(&[]).await;
    assert!(ok, "{whole}");
    let verdict = whole.trim_end().lines().last().unwrap().to_owned();
    let passed: u64 = verdict.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 90, "{whole}");
    let (ok, out) = run.verify_with(&["--window".into(), "3".into()]).await;
    assert!(ok, "{out}");
    assert!(
        out.trim_end().ends_with(&verdict),
        "window 3: {out}\nwhole: {whole}"
    );
    // every offset of the input topic: every checkpoint, the same verdict
    let (ok, out) = run
        .verify_with(&["--offsets".into(), "capture.messages:0-".into()])
        .await;
    assert!(ok && out.trim_end().ends_with(&verdict), "{out}");
    assert!(!out.contains(" 0 in range"), "{out}");
    // a time range after the run: nothing in range, nothing checked
    let (ok, out) = run
        .verify_with(&["--since".into(), "2099-01-01T00:00:00Z".into()])
        .await;
    assert!(ok && out.contains(" 0 in range"), "{out}");
    assert!(out.trim_end().ends_with("0 passed, 0 failed"), "{out}");
    let (ok, out) = run.verify_with(&["--readability".into()]).await;
    assert!(ok, "{out}");
    assert!(out.contains("readability: "), "{out}");
    let (ok, out) = run
        .verify_with(&["--offsets".into(), "capture.messages:x-1".into()])
        .await;
    assert!(!ok && out.contains("TOPIC:PARTITION:FROM-TO"), "{out}");
}
