//! `byok cert` and `byok check-key`: certificate credentials and the customer's key checks.
//!
//! Binary only: parses, calls one library function, renders its result.

use std::process::ExitCode;

use crate::*;

pub(crate) fn cert(command: CertCommand) -> Result<ExitCode, String> {
    match command {
        CertCommand::Generate {
            tenant,
            out_dir,
            days,
            bits,
            pfx,
            passphrase_env,
            force,
        } => {
            byok::config::TenantId::parse(&tenant).map_err(|e| e.to_string())?;
            let passphrase = match &passphrase_env {
                Some(var) => Some(
                    std::env::var(var)
                        .map_err(|_| format!("--passphrase-env {var}: the variable is not set"))?,
                ),
                None => None,
            };
            let g = byok::cert::generate(&tenant, bits, days).map_err(|e| e.to_string())?;
            let w =
                byok::cert::write_files(&g, &tenant, &out_dir, pfx, passphrase.as_deref(), force)
                    .map_err(|e| e.to_string())?;
            let i = byok::cert::info(&w.credential.display().to_string(), &g.cert, Some(&g.key));
            print!(
                "{}",
                byok::cert::guide::generated(
                    &tenant,
                    bits,
                    days,
                    &w,
                    &i,
                    passphrase_env.as_deref()
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        CertCommand::Show {
            config,
            tenant,
            json,
        } => {
            let config = super::load_config(&config)?;
            let mut any = false;
            for t in config
                .tenants
                .values()
                .filter(|t| tenant.as_deref().is_none_or(|id| id == t.id.as_str()))
            {
                let Some(byok::config::Credential::Certificate {
                    path,
                    next,
                    format,
                    password,
                }) = t.key.as_ref().map(|k| &k.credential)
                else {
                    continue;
                };
                let pass = match password.as_ref().map(|p| p.load()).transpose() {
                    Ok(p) => p.map(|p| secrecy::ExposeSecret::expose_secret(&p).to_owned()),
                    Err(e) => return Err(format!("tenant {}: certificate password: {e}", t.id)),
                };
                for (role, p) in
                    std::iter::once(("current", path)).chain(next.iter().map(|n| ("next", n)))
                {
                    any = true;
                    let (cert, key) = byok::cert::read_credential(
                        p,
                        *format == byok::config::CertFormat::Pfx,
                        pass.as_deref(),
                    )
                    .map_err(|e| e.to_string())?;
                    let i = byok::cert::info(&p.display().to_string(), &cert, key.as_ref());
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"tenant": t.id.as_str(), "role": role, "certificate": i})
                        );
                    } else {
                        print!("{}", byok::cert::guide::shown(t.id.as_str(), role, &i));
                    }
                }
            }
            if !any {
                return Err("no tenant in the configuration uses a certificate credential".into());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) async fn check_key(
    config: &std::path::Path,
    tenant: Option<&str>,
    all: bool,
    operator: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let config = super::load_config(config)?;
    let selected: Vec<_> = config
        .tenants
        .values()
        .filter(|t| all || Some(t.id.as_str()) == tenant)
        .collect();
    if selected.is_empty() && !operator {
        return Err(match tenant {
            Some(t) => format!(
                "tenant {t:?} is not in the configuration; configured: {}",
                config
                    .tenants
                    .keys()
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "the configuration has no tenant".to_owned(),
        });
    }
    let mut reports = Vec::new();
    if operator {
        reports
            .push(byok::check::check_tenant("_quarantine", &config.quarantine, &config.keys).await);
        match &config.audit {
            Some(a) => {
                reports.push(byok::check::check_signing_key(&a.signing_key, &config.keys).await)
            }
            None => reports.push(vec![byok::check::CheckLine {
                tenant: "audit-signing".into(),
                check: "audit",
                verdict: byok::check::Verdict::Warn,
                message: "no [audit] section: no audit log is written, the archive is not provable"
                    .into(),
                fix: Some(
                    "add [audit] with cluster and [audit.signing_key] (docs/audit-v1.md)".into(),
                ),
            }]),
        }
    }
    for t in selected {
        reports.push(match (&t.key, t.byok_enabled) {
            (Some(key), true) => byok::check::check_tenant(t.id.as_str(), key, &config.keys).await,
            _ => vec![byok::check::CheckLine {
                tenant: t.id.to_string(),
                check: "byok",
                verdict: byok::check::Verdict::Warn,
                message: "BYOK is not enabled for this tenant: its messages go to the quarantine"
                    .into(),
                fix: Some(
                    "configure its key and set byok_enabled = true (the guide's \"Enable BYOK\")"
                        .into(),
                ),
            }],
        });
    }
    let mut failed = false;
    for lines in reports {
        failed |= lines
            .iter()
            .any(|l| l.verdict == byok::check::Verdict::Fail);
        if json {
            for l in &lines {
                println!("{}", serde_json::to_string(l).unwrap_or_default());
            }
        } else {
            print!("{}", byok::check::render_text(&lines));
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
