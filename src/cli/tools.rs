//! The operator's tools over the archive and the registry: `keys usage`, `rewrap`, `replay`,
//! the quarantine drain and `cat`, with their progress bars and JSON summaries.
//!
//! Binary only: parses, calls one library function, renders its result.

use std::process::ExitCode;

use byok::config::Config;

use super::*;

/// A progress bar on stderr with `template` (indicatif syntax).
pub(crate) fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

pub(crate) async fn keys_usage(
    path: &std::path::Path,
    tenant: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let config = super::load_config(path)?;
    let usage = byok::lifecycle::usage::usage(&config, tenant.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    if json {
        print_json(&usage)?;
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", byok::lifecycle::usage::render_text(&usage));
    Ok(ExitCode::SUCCESS)
}

/// Runs an operator tool over the configuration at `path`: logs on, a progress bar the tool
/// feeds (`what` names its unit), the records or DEKs it could not handle on stderr, its JSON
/// summary on stdout; exit 1 when anything could not be handled.
pub(crate) async fn tool<S: serde::Serialize, E: std::fmt::Display>(
    path: &std::path::Path,
    what: &str,
    run: impl AsyncFnOnce(&Config, &mut dyn FnMut(u64, u64)) -> Result<S, E>,
    failures: impl Fn(&S) -> Vec<String>,
) -> Result<ExitCode, String> {
    let config = super::load_config(path)?;
    init_logs();
    let bar = progress_bar(
        0,
        &format!(
            "{{spinner}} {{elapsed_precise}} [{{wide_bar}}] {{pos}}/{{len}} {what}, {{per_sec}}, ETA {{eta}}"
        ),
    );
    let stats = run(&config, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    let failed = failures(&stats);
    for f in &failed {
        eprintln!("{f}");
    }
    print_json(&stats)?;
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) async fn rewrap(
    path: &std::path::Path,
    opts: byok::lifecycle::rewrap::RewrapOptions,
) -> Result<ExitCode, String> {
    tool(
        path,
        "DEKs",
        async |config, progress| byok::lifecycle::rewrap::rewrap(config, &opts, progress).await,
        |stats| {
            stats
                .iter()
                .flat_map(|(t, s)| s.failed.iter().map(move |f| format!("{t}: {f}")))
                .collect()
        },
    )
    .await
}

pub(crate) async fn replay(
    path: &std::path::Path,
    opts: byok::lifecycle::replay::ReplayOptions,
) -> Result<ExitCode, String> {
    tool(
        path,
        "records",
        async |config, progress| byok::lifecycle::replay::replay(config, &opts, progress).await,
        |stats| {
            stats
                .failed
                .iter()
                .map(|f| {
                    format!(
                        "could not replay {}/{}/{}: {}",
                        f.topic, f.partition, f.offset, f.reason
                    )
                })
                .collect()
        },
    )
    .await
}

pub(crate) async fn drain(
    path: &std::path::Path,
    tenant: Option<String>,
    dry_run: bool,
) -> Result<ExitCode, String> {
    let opts = byok::lifecycle::drain::DrainOptions { tenant, dry_run };
    tool(
        path,
        "quarantine records",
        async |config, progress| {
            byok::lifecycle::drain::drain_quarantine(config, &opts, progress).await
        },
        |stats| {
            stats
                .failed
                .iter()
                .map(|f| format!("could not drain: {f}"))
                .collect()
        },
    )
    .await
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn cat(
    path: &std::path::Path,
    topic: Option<String>,
    partitions: Vec<i32>,
    from_offset: Option<i64>,
    to_offset: Option<i64>,
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
    duplicates: bool,
) -> Result<ExitCode, String> {
    let config = super::load_config(path)?;
    let opts = byok::archive::ReadOptions {
        topic: topic.unwrap_or_else(|| config.kafka.archive_topic.as_str().to_owned()),
        partitions,
        from_offset,
        start_offsets: Default::default(),
        to_offset,
        from_time_ms: rfc3339_ms(since, "since")?,
        to_time_ms: rfc3339_ms(until, "until")?,
        tenant,
        duplicates,
    };
    let stats = byok::archive::read(
        &config,
        &opts,
        |o| println!("{}", serde_json::to_string(&o).unwrap_or_default()),
        |f| {
            eprintln!(
                "cannot open {}/{}/{}: {}",
                f.topic, f.partition, f.offset, f.reason
            )
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    eprintln!(
        "{}: {} read, {} opened, {} duplicates dropped, {} could not be opened",
        opts.topic, stats.read, stats.opened, stats.duplicates, stats.failed
    );
    Ok(if stats.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// An RFC 3339 time given as `--flag`, in ms since the epoch.
pub(crate) fn rfc3339_ms(v: Option<String>, flag: &str) -> Result<Option<i64>, String> {
    Ok(rfc3339(v, flag)?.map(|d| (d.unix_timestamp_nanos() / 1_000_000) as i64))
}

/// `byok replay`: `--from`/`--to` re-seals into another topic, `--quarantine` drains.
pub(crate) fn replay_command(
    rt: &tokio::runtime::Runtime,
    a: crate::ReplayArgs,
) -> Result<ExitCode, String> {
    match (a.from, a.to) {
        (Some(from), Some(to)) => {
            let opts = byok::lifecycle::replay::ReplayOptions {
                from,
                to,
                tenants: a.tenants,
                partitions: a.partitions,
                from_offset: a.from_offset,
                to_offset: a.to_offset,
                from_time_ms: crate::rfc3339_ms(a.since, "since")?,
                to_time_ms: crate::rfc3339_ms(a.until, "until")?,
                dry_run: a.dry_run,
                rate: a.rate,
            };
            rt.block_on(replay(&a.config, opts))
        }
        _ if a.quarantine => {
            if a.tenants.len() > 1 {
                return Err("--quarantine takes one --tenant (or none for all)".into());
            }
            rt.block_on(drain(&a.config, a.tenants.into_iter().next(), a.dry_run))
        }
        _ => Err("say what to replay: --from TOPIC --to TOPIC (re-seal into another topic) or --quarantine (drain the quarantine into the archive)".into()),
    }
}

/// `byok demo`: exit 1 when any message did not come back as captured.
pub(crate) async fn demo(messages: usize) -> Result<ExitCode, String> {
    let s = byok::demo::run(byok::demo::DemoOptions {
        messages,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(if s.mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The flags of `byok verify`.
#[derive(Debug, clap::Args)]
pub(crate) struct VerifyFlags {
    /// The worker configuration (its [audit] section).
    #[arg(long)]
    config: std::path::PathBuf,
    /// JSON summary instead of text.
    #[arg(long)]
    json: bool,
    /// Notices (restarts, forks, orphans) fail too.
    #[arg(long)]
    strict: bool,
    /// First put back registry and key records the compacted topics lost (a tombstone, a
    /// compaction, a refused record after them) from their copies in the audit topic.
    #[arg(long)]
    restore_registry: bool,
    /// Also print the newest signed heads (a JSON array): copied out of Kafka (a WORM store,
    /// the tenant, an auditor), they are the witness a later verify checks.
    #[arg(long)]
    heads: bool,
    /// A witness saved earlier with --heads: each partition's chain must still hold it.
    #[arg(long)]
    witness: Option<std::path::PathBuf>,
    /// Check only checkpoints written at or after this RFC 3339 time (signatures and chains are
    /// still followed from the start of the audit log).
    #[arg(long)]
    since: Option<String>,
    /// Check only checkpoints written before this RFC 3339 time.
    #[arg(long)]
    until: Option<String>,
    /// Check only checkpoints whose input ranges or leaves touch these offsets:
    /// TOPIC:PARTITION:FROM-TO or TOPIC:FROM-TO (repeatable), e.g. capture.messages:3:1200-1700.
    #[arg(long, value_name = "RANGE")]
    offsets: Vec<String>,
    /// Leaves read and checked together; a record no checkpoint named within this many records
    /// of its partition is classified then. Memory is about 100 bytes per leaf of the window.
    #[arg(long, default_value_t = byok::verify::DEFAULT_WINDOW)]
    window: usize,
    /// Also open every archive and quarantine record (needs decrypt permission on every
    /// tenant's key and the operator's): one that does not open is a finding.
    #[arg(long)]
    readability: bool,
}

/// An RFC 3339 time flag.
fn rfc3339(v: Option<String>, flag: &str) -> Result<Option<time::OffsetDateTime>, String> {
    v.map(|t| {
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339).map_err(
            |_| format!("--{flag} {t:?} is not an RFC 3339 time such as 2026-11-29T17:00:00Z"),
        )
    })
    .transpose()
}

/// `byok verify`: a spinner while the topics are read, the examples of each finding, the
/// summary (text or JSON), last the verdict line.
pub(crate) async fn verify(flags: VerifyFlags) -> Result<ExitCode, String> {
    let VerifyFlags {
        config: path,
        json,
        strict,
        restore_registry: restore,
        heads,
        witness,
        since,
        until,
        offsets,
        window,
        readability,
    } = flags;
    let range = byok::verify::VerifyRange {
        since: rfc3339(since, "since")?,
        until: rfc3339(until, "until")?,
        offsets: offsets
            .iter()
            .map(|o| o.parse())
            .collect::<Result<_, String>>()?,
    };
    let config = super::load_config(&path)?;
    init_logs();
    let witness = witness
        .map(|w| {
            let text = std::fs::read_to_string(&w)
                .map_err(|e| format!("--witness {}: {e}", w.display()))?;
            serde_json::from_str::<Vec<String>>(&text).map_err(|e| {
                format!(
                    "--witness {}: not a JSON array of signed heads values (as --heads prints): {e}",
                    w.display()
                )
            })
        })
        .transpose()?;
    if restore {
        let r = byok::lifecycle::restore::restore_registry(&config)
            .await
            .map_err(|e| format!("restoring the registry: {e}"))?;
        for id in &r.deks {
            eprintln!("restored: registry record {id} (from its copy in the audit topic)");
        }
        for id in &r.keks {
            eprintln!("restored: key record {id} (from its copy in the audit topic)");
        }
        eprintln!(
            "restored {} registry and {} key record(s)",
            r.deks.len(),
            r.keks.len()
        );
    }
    let bar = progress_bar(
        0,
        "{spinner} {elapsed_precise} {pos} records read, {per_sec}",
    );
    let opts = byok::verify::VerifyOptions {
        witness,
        range,
        window,
        readability,
    };
    let report = byok::verify::verify(&config, &opts, &mut |done, _| bar.set_position(done))
        .await
        .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    for e in &report.examples {
        eprintln!("{e}");
    }
    if json {
        print_json(&report)?;
    } else {
        println!(
            "range {}: {} writer(s), {} checkpoint(s), {} in range; findings {:?}; notices {:?}",
            report.range,
            report.writers,
            report.checkpoints,
            report.checkpoints_in_range,
            report.findings,
            report.notices
        );
        if let Some(n) = report.readable {
            println!("readability: {n} archive and quarantine record(s) opened");
        }
        println!("note: {}", report.caveat);
    }
    if heads {
        println!(
            "{}",
            serde_json::to_string(&report.heads).map_err(|e| e.to_string())?
        );
    }
    println!("{}", report.verdict());
    let notices: u64 = report.notices.values().sum();
    Ok(if report.failed() > 0 || (strict && notices > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `byok audit kv`: a tenant's key-usage receipts, as a table or JSON.
pub(crate) async fn audit_kv(
    path: &std::path::Path,
    tenant: &str,
    since: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let since = rfc3339_ms(since, "since")?;
    let config = super::load_config(path)?;
    init_logs();
    let report = byok::verify::receipts::kv_receipts(&config, tenant, since)
        .await
        .map_err(|e| e.to_string())?;
    if json {
        print_json(&report)?;
    } else {
        println!(
            "{:<24} {:<36} {:<8} {:<8} {:>6} {:<40} key",
            "at", "request id", "op", "purpose", "status", "DEKs"
        );
        for r in &report.receipts {
            let e = &r.entry;
            println!(
                "{:<24} {:<36} {:<8} {:<8} {:>6} {:<40} {}",
                e.at,
                e.req,
                e.op,
                e.purpose,
                e.status,
                e.deks.join(","),
                e.kid
            );
        }
        println!("{} request(s) of {tenant}", report.receipts.len());
    }
    if report.unverified > 0 {
        eprintln!(
            "{} kv record(s) did not verify under a certified session and are not listed: run byok verify",
            report.unverified
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(value).map_err(|e| e.to_string())?
    );
    Ok(())
}
