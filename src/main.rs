//! `byok`: the command line. Parses arguments and calls into the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use byok::config::{Config, Severity};

/// Seals captured chat messages under keys each customer owns in Azure Key Vault (BYOK).
#[derive(Debug, Parser)]
#[command(name = "byok", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with the worker's configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show the header of a sealed value (version, suite, flags, DEK id, nonce, sizes), or why
    /// the bytes are not a v1 sealed value. Needs no key.
    Inspect {
        /// File holding the sealed value; standard input when absent or "-".
        file: Option<PathBuf>,
        /// The input is hex text rather than raw bytes.
        #[arg(long)]
        hex: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Load a configuration and print every problem with its field, the reason and the fix.
    /// Exits 1 when there is an error (warnings alone pass).
    Check {
        /// The configuration file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config_check(&file),
        Command::Inspect { file, hex, json } => inspect(file, hex, json),
    }
}

fn config_check(file: &std::path::Path) -> ExitCode {
    let checked = Config::check(file);
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

fn inspect(file: Option<PathBuf>, hex: bool, json: bool) -> ExitCode {
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
            .and_then(byok::inspect::decode_hex)
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

fn read_stdin() -> (String, Result<Vec<u8>, String>) {
    let mut buf = Vec::new();
    let r = std::io::stdin()
        .read_to_end(&mut buf)
        .map(|_| buf)
        .map_err(|e| format!("cannot read standard input: {e}"));
    ("<stdin>".into(), r)
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("byok: {msg}");
    ExitCode::FAILURE
}
