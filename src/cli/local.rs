//! `byok vault-emulator`, `byok config check` and `byok inspect`, and the error exit.
//!
//! Binary only: parses, calls one library function, renders its result.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use byok::config::{Config, Severity};

use super::*;
use crate::*;

pub(crate) async fn vault_emulator(args: EmulatorArgs) -> Result<ExitCode, String> {
    if let Some(EmulatorCommand::Admin(a)) = args.command {
        return emulator_admin(a).await;
    }
    init_logs();
    let admin_token = match &args.admin_token_env {
        Some(var) => Some(
            std::env::var(var)
                .map_err(|_| format!("--admin-token-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    let started = std::time::Instant::now();
    let running = byok::emulator::start(byok::emulator::Options {
        listen: args.listen,
        seed: args.seed.clone(),
        state: args.state.clone(),
        ca_out: args.ca_out.clone(),
        token_lifetime: args.token_lifetime,
        admin_token,
        hosts: args.hosts.clone(),
    })
    .await
    .map_err(|e| e.to_string())?;
    println!(
        "vault emulator ready in {} ms on https://{}\n  Entra ID authority host: {}\n  vaults: https://<vault>.vault.azure.net:{} (resolve to 127.0.0.1) or {}/vaults/<vault>\n  CA: {}",
        started.elapsed().as_millis(),
        running.addr,
        running.authority(),
        running.addr.port(),
        running.authority(),
        args.ca_out.as_ref().map_or_else(
            || "not written (pass --ca-out FILE)".to_owned(),
            |p| p.display().to_string()
        ),
    );
    let stop = running.stopper();
    tokio::spawn(async move {
        stop_signal().await;
        let _ = stop.send(true);
    });
    running.wait().await;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn emulator_admin(a: AdminArgs) -> Result<ExitCode, String> {
    use byok::emulator::client::AdminClient;
    use serde_json::json;
    let ca = std::fs::read_to_string(&a.ca).map_err(|e| format!("--ca {}: {e}", a.ca.display()))?;
    let token = match &a.admin_token_env {
        Some(var) => Some(
            std::env::var(var)
                .map_err(|_| format!("--admin-token-env {var}: the variable is not set"))?,
        ),
        None => None,
    };
    let c = AdminClient::new(&a.url, &ca, token).map_err(|e| e.to_string())?;
    let time_arg = |v: Option<String>| -> Result<Option<serde_json::Value>, String> {
        match v.as_deref() {
            None => Ok(None),
            Some("none") => Ok(Some(serde_json::Value::Null)),
            Some(t) => t
                .parse::<i64>()
                .map(|n| Some(json!(n)))
                .map_err(|_| format!("{t:?} is not Unix seconds or \"none\"")),
        }
    };
    let r = match a.action {
        AdminAction::State => c.state().await,
        AdminAction::DisableKey { vault, key, key_version: version } => c.set_key_enabled(&vault, &key, version.as_deref(), false).await,
        AdminAction::EnableKey { vault, key, key_version: version } => c.set_key_enabled(&vault, &key, version.as_deref(), true).await,
        AdminAction::DeleteKey { vault, key } => c.key_action(&vault, &key, "delete", None).await,
        AdminAction::RecoverKey { vault, key } => c.key_action(&vault, &key, "recover", None).await,
        AdminAction::PurgeKey { vault, key, force } => c.key_action(&vault, &key, "purge", Some(json!({"force": force}))).await,
        AdminAction::RotateKey { vault, key } => c.key_action(&vault, &key, "rotate", None).await,
        AdminAction::UpdateKey { vault, key, key_version: version, nbf, exp } => {
            let mut body = serde_json::Map::new();
            if let Some(v) = time_arg(nbf)? {
                body.insert("nbf".into(), v);
            }
            if let Some(v) = time_arg(exp)? {
                body.insert("exp".into(), v);
            }
            let path = match version {
                Some(v) => format!("vaults/{vault}/keys/{key}/update?version={v}"),
                None => format!("vaults/{vault}/keys/{key}/update"),
            };
            c.call(reqwest::Method::POST, &path, Some(body.into())).await
        }
        AdminAction::AddRole { vault, app, role } => c.add_role(&vault, &app, &role).await,
        AdminAction::RemoveRole { vault, app, role } => c.remove_role(&vault, &app, role.as_deref()).await,
        AdminAction::AddSecret { tenant, app, value_env } => {
            let v = std::env::var(&value_env).map_err(|_| format!("--value-env {value_env}: the variable is not set"))?;
            c.add_secret(&tenant, &app, &v).await
        }
        AdminAction::RemoveSecrets { tenant, app } => c.remove_secrets(&tenant, &app, None).await,
        AdminAction::UploadCert { tenant, app, file } => {
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            c.upload_certificate(&tenant, &app, bytes).await
        }
        AdminAction::RemoveCert { tenant, app, thumbprint } => c.remove_certificate(&tenant, &app, &thumbprint).await,
        AdminAction::Fault { target, latency_ms, error_rate, drop_rate, outage_seconds } => {
            c.set_fault(json!({"target": target, "latency_ms": latency_ms, "error_rate": error_rate, "drop_rate": drop_rate, "outage_seconds": outage_seconds})).await
        }
        AdminAction::ClearFaults => c.clear_faults().await,
    };
    let v = r.map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn config_check(file: &std::path::Path, connect: bool) -> ExitCode {
    let checked = Config::check_with(file, super::load_options());
    for p in &checked.problems {
        eprintln!("{p}");
    }
    let errors = checked
        .problems
        .iter()
        .filter(|p| p.severity == Severity::Error)
        .count();
    let warnings = checked.problems.len() - errors;
    match checked.config {
        Some(c) => {
            println!(
                "{}: ok ({} tenant(s), {} with BYOK enabled; input {}; archive {}; {} warning(s))",
                file.display(),
                c.tenants.len(),
                c.tenants.values().filter(|t| t.byok_enabled).count(),
                c.kafka.input_topics.join(","),
                c.kafka.archive_topic.as_str(),
                warnings
            );
            if connect {
                return check_topics(&c);
            }
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "{}: {errors} error(s), {warnings} warning(s); the worker will not start with this configuration",
                file.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// `config check --connect`: one line per topic, exit 1 when one is missing or wrong.
fn check_topics(config: &Config) -> ExitCode {
    let checked = match super::service::runtime() {
        Ok(rt) => rt.block_on(byok::topics::check(config)),
        Err(e) => return fail(&e),
    };
    let topics = match checked {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "error: {e}; check kafka.bootstrap_servers and the security settings in [kafka.consumer]"
            );
            return ExitCode::FAILURE;
        }
    };
    let mut bad = 0;
    for t in &topics {
        let detail = format!(
            "{:?}, {} partition(s), cleanup.policy {}, max.message.bytes {}",
            t.role,
            t.partitions,
            t.cleanup_policy.as_deref().unwrap_or("(not described)"),
            t.max_message_bytes.as_deref().unwrap_or("(not described)"),
        )
        .to_lowercase();
        match &t.problem {
            None => {
                println!("ok    {}: {detail}", t.topic);
                if let Some(w) = &t.warning {
                    println!("warn  {}: {w}", t.topic);
                }
            }
            Some(p) => {
                bad += 1;
                println!("FAIL  {}: {p}", t.topic);
            }
        }
    }
    if bad > 0 {
        eprintln!(
            "{bad} topic(s) missing or misconfigured; the worker would quarantine or wait on them"
        );
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub(crate) fn inspect(file: Option<PathBuf>, hex: bool, json: bool) -> ExitCode {
    let (name, raw) = match file.as_deref() {
        None => read_stdin(),
        Some(p) if p.as_os_str() == "-" => read_stdin(),
        Some(p) => (
            p.display().to_string(),
            std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
        ),
    };
    let bytes = match raw {
        Ok(b) if hex => match std::str::from_utf8(&b)
            .map_err(|_| "the input is not hex text".to_owned())
            .and_then(|t| byok::inspect::decode_hex(t).map_err(|e| e.to_string()))
        {
            Ok(b) => b,
            Err(e) => return fail(&format!("{name}: {e}")),
        },
        Ok(b) => b,
        Err(e) => return fail(&e),
    };
    match byok::inspect::inspect(&bytes) {
        Ok(i) if json => match serde_json::to_string_pretty(&i) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e.to_string()),
        },
        Ok(i) => {
            println!("{i}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "v1": false, "reason": why.to_string(), "len": bytes.len() })
                );
            }
            fail(&format!("{name}: not a v1 sealed value: {why}"))
        }
    }
}

pub(crate) fn read_stdin() -> (String, Result<Vec<u8>, String>) {
    let mut buf = Vec::new();
    let r = std::io::stdin()
        .read_to_end(&mut buf)
        .map(|_| buf)
        .map_err(|e| format!("cannot read standard input: {e}"));
    ("<stdin>".into(), r)
}

pub(crate) fn fail(msg: &str) -> ExitCode {
    eprintln!("byok: {msg}");
    ExitCode::FAILURE
}
