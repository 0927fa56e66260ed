//! `byok`: the command line. Parses arguments and calls into the library.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use byok::config::{Config, Severity};

// mimalloc: the worker allocates and frees a batch's worth of records per batch; with glibc's
// malloc that memory goes back to the kernel and is faulted in again every batch (measured with
// `cargo bench --bench batch`: 16 KiB records 3 to 6 times slower).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Seals captured chat messages under keys each customer owns in Azure Key Vault (BYOK).
#[derive(Debug, Parser)]
#[command(name = "byok", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// For each key version of each tenant: the DEKs wrapped under it and the archive and
    /// quarantine partitions and offset ranges sealed with them. A version with no DEK left
    /// can be retired (after `byok rewrap`).
    Usage {
        /// The worker configuration.
        #[arg(long)]
        config: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// Take the bootstrap servers, the first input topic and the BYOK tenants from this worker
    /// configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides the configuration's).
    #[arg(long)]
    bootstrap: Option<String>,
    /// Topic to produce to (default: the configuration's first input topic).
    #[arg(long)]
    topic: Option<String>,
    /// Messages to produce (default: until Ctrl-C).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per second (default: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Synthetic tenants tenant-0000, tenant-0001, … (instead of the configuration's).
    #[arg(long)]
    tenants: Option<usize>,
    /// A tenant id (repeatable; instead of the configuration's).
    #[arg(long = "tenant")]
    tenant: Vec<String>,
    /// Message size: "chat" (realistic: tens of bytes to a few KiB) or a fixed size such as
    /// 256, "1KiB", "16KiB".
    #[arg(long, default_value = "chat")]
    size: String,
    /// Name the tenant in a `tenant-id` header too (default: only the JSON field).
    #[arg(long)]
    tenant_header: bool,
    /// Stay at most --max-lag records ahead of this consumer group's committed offsets.
    #[arg(long)]
    follow_group: Option<String>,
    /// With --follow-group: records the group may lag behind.
    #[arg(long, default_value_t = 100_000)]
    max_lag: u64,
    /// First message number (message ids derive from it).
    #[arg(long, default_value_t = 0)]
    start: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with the worker's configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    VaultEmulator(Box<EmulatorArgs>),
    /// The whole pipeline in one process, no set-up: in-process Kafka (librdkafka mock cluster),
    /// the Key Vault emulator with three tenants' RSA-4096 keys, synthetic chat traffic, the
    /// worker, and a check that every message decrypts back to the original. Exit 1 on any
    /// mismatch.
    Demo {
        /// Messages of synthetic traffic.
        #[arg(long, default_value_t = 6000)]
        messages: usize,
    },
    /// Key versions and what they protect.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Move registry DEKs from older key versions (and local wraps) to each tenant's newest usable
    /// version: Key Vault decrypt with the old version, encrypt with the new, updated registry
    /// records; archive records untouched. Idempotent and resumable (DEKs already moved are
    /// skipped), rate-limited toward each vault. Prints a JSON summary per tenant; exit 1 when a
    /// DEK could not be moved.
    Rewrap {
        /// The worker configuration.
        #[arg(long)]
        config: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// The version to move to (must be the newest usable one; default: that one).
        #[arg(long)]
        to_version: Option<String>,
        /// Count what would move; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-seal archive records into another topic (--from/--to), or drain the quarantine into the
    /// archive (--quarantine).
    ///
    /// --from/--to opens each record and re-seals it under a fresh DEK of its tenant's current
    /// key (re-encryption after a suspected DEK exposure, a move to a new archive). Keeps the key,
    /// byok.src and non-byok headers; a byok.src already in the target, or a second copy in the
    /// source, is not written again, so a run stopped or crashed midway resumes where it was by
    /// running the same command. Records that cannot be opened are listed with the reason (exit
    /// 1), never skipped silently.
    ///
    /// --quarantine: each tenant DEK is first proven through Key Vault decrypt, the records then
    /// move unchanged; records under the operator's key whose tenant now has BYOK are re-sealed
    /// under the tenant's key; records of still-revoked tenants stay. Records whose byok.src is
    /// already archived are not written again.
    ///
    /// Prints a JSON summary.
    Replay {
        /// The worker configuration.
        #[arg(long)]
        config: PathBuf,
        /// Drain the quarantine topic into the archive.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        quarantine: bool,
        /// Source archive topic.
        #[arg(long, requires = "to")]
        from: Option<String>,
        /// Target topic (must exist); `{tenant}` is replaced by each record's tenant.
        #[arg(long, requires = "from")]
        to: Option<String>,
        /// Only this tenant's records (repeatable with --from/--to).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// Only these source partitions (repeatable).
        #[arg(long = "partition", requires = "from")]
        partitions: Vec<i32>,
        /// First source offset (inclusive) per partition.
        #[arg(long, requires = "from")]
        from_offset: Option<i64>,
        /// Last source offset (exclusive) per partition.
        #[arg(long, requires = "from")]
        to_offset: Option<i64>,
        /// Only records with a timestamp at or after this RFC 3339 time.
        #[arg(long, requires = "from")]
        since: Option<String>,
        /// Only records with a timestamp before this RFC 3339 time.
        #[arg(long, requires = "from")]
        until: Option<String>,
        /// At most this many records a second.
        #[arg(long, requires = "from")]
        rate: Option<f64>,
        /// Open every record and count what would be written; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Ask a worker's health endpoint; exit 0 when it answers 200 (for container health checks,
    /// where no curl is installed).
    Healthcheck {
        /// The URL to GET (plain HTTP).
        #[arg(long, default_value = "http://127.0.0.1:9464/health")]
        url: String,
    },
    /// Produce synthetic capture traffic (chat-like JSON) for load tests: at a rate, as fast as
    /// possible, or as fast as a consumer group keeps up (--follow-group). Ctrl-C stops.
    Loadgen(LoadgenArgs),
    /// Run the worker: a consumer-group member that seals captured messages into the archive.
    /// SIGTERM or Ctrl-C drains the batch in flight and flushes within worker.drain_deadline.
    Run {
        /// The worker configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Read an archive or quarantine topic and print each record's plaintext with its
    /// provenance as JSON lines (needs decrypt permission on the tenants' keys). Duplicates
    /// (same byok.src) are dropped unless --duplicates; records that cannot be opened are
    /// reported on stderr with the reason (exit 1).
    Cat {
        /// The worker configuration (Kafka, registry topic, tenants' keys).
        #[arg(long)]
        config: PathBuf,
        /// Topic to read (default: the archive topic).
        #[arg(long)]
        topic: Option<String>,
        /// Only these partitions (repeatable).
        #[arg(long = "partition")]
        partitions: Vec<i32>,
        /// First offset (inclusive) per partition.
        #[arg(long)]
        from_offset: Option<i64>,
        /// Last offset (exclusive) per partition.
        #[arg(long)]
        to_offset: Option<i64>,
        /// Only records at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only records before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Keep duplicates.
        #[arg(long)]
        duplicates: bool,
    },
    /// Certificate credentials for the customer's app registration: generate, show.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Walk the setup guide's checklist against each tenant's real vault: token with the
    /// configured credential, key found, RSA >= 3072 bits, enabled, in date, encrypt and decrypt
    /// permitted, a real round trip, soft delete and purge protection, Private Link reachable.
    /// One line per check with pass, warn or fail and the fix; exit 1 on any failure.
    CheckKey {
        /// The worker configuration.
        #[arg(long)]
        config: PathBuf,
        /// Check this tenant.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        tenant: Option<String>,
        /// Check every tenant with BYOK enabled.
        #[arg(long)]
        all: bool,
        /// Print JSON lines instead of text.
        #[arg(long)]
        json: bool,
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

/// Run a local Azure Key Vault (keys API) + Entra ID token endpoint over HTTPS that Microsoft's
/// SDKs use unchanged, with real RSA keys, RBAC, key states, soft delete and throttling.
///
/// Vaults are reached as https://<vault>.vault.azure.net:<port> (resolve the host to 127.0.0.1),
/// https://<vault>.privatelink.vaultcore.azure.net:<port>, or https://127.0.0.1:<port>/vaults/<vault>;
/// the Entra ID authority host is https://127.0.0.1:<port>. Trust the CA written by --ca-out.
/// The admin API (/_admin, see docs/vault-emulator.md and `byok vault-emulator admin --help`)
/// changes keys, roles and credentials the way a tenant would, and injects faults.
#[derive(Debug, clap::Args)]
struct EmulatorArgs {
    #[command(subcommand)]
    command: Option<EmulatorCommand>,
    /// Seed file declaring tenants, apps, vaults, keys and roles (see config/emulator.example.toml).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: std::net::SocketAddr,
    /// State file: loaded instead of the seed when it exists, rewritten after every change, so
    /// a restart keeps keys, apps, roles and the CA.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Write the CA certificate (PEM) here; clients trust it.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Lifetime of issued access tokens.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    token_lifetime: std::time::Duration,
    /// Environment variable holding a token the admin API then requires (Bearer).
    #[arg(long)]
    admin_token_env: Option<String>,
    /// Extra host name for the server certificate (repeatable).
    #[arg(long = "host")]
    hosts: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum EmulatorCommand {
    /// Change a running emulator the way a tenant would, or inject faults.
    Admin(AdminArgs),
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// The emulator's base URL.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    url: String,
    /// The emulator's CA certificate (PEM), as written by --ca-out.
    #[arg(long)]
    ca: PathBuf,
    /// Environment variable holding the admin token, if the emulator requires one.
    #[arg(long)]
    admin_token_env: Option<String>,
    #[command(subcommand)]
    action: AdminAction,
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Print the state (no secrets, no private keys) as JSON.
    State,
    /// Disable a key (every version) or one version.
    DisableKey {
        vault: String,
        key: String,
        #[arg(long)]
        key_version: Option<String>,
    },
    /// Enable a key (every version) or one version.
    EnableKey {
        vault: String,
        key: String,
        #[arg(long)]
        key_version: Option<String>,
    },
    /// Soft-delete a key.
    DeleteKey { vault: String, key: String },
    /// Recover a soft-deleted key.
    RecoverKey { vault: String, key: String },
    /// Purge a soft-deleted key (refused under purge protection unless --force).
    PurgeKey {
        vault: String,
        key: String,
        #[arg(long)]
        force: bool,
    },
    /// Add a new version to a key.
    RotateKey { vault: String, key: String },
    /// Set nbf/exp (Unix seconds; "none" clears) of a key version (latest by default).
    UpdateKey {
        vault: String,
        key: String,
        #[arg(long)]
        key_version: Option<String>,
        #[arg(long)]
        nbf: Option<String>,
        #[arg(long)]
        exp: Option<String>,
    },
    /// Assign a role (byok, "Key Vault Crypto User", "Key Vault Administrator", ...) to an app.
    AddRole {
        vault: String,
        app: String,
        role: String,
    },
    /// Remove an app's role assignments on a vault (all, or --role).
    RemoveRole {
        vault: String,
        app: String,
        #[arg(long)]
        role: Option<String>,
    },
    /// Add a client secret to an app registration (value from an environment variable).
    AddSecret {
        tenant: String,
        app: String,
        #[arg(long)]
        value_env: String,
    },
    /// Remove every client secret of an app registration.
    RemoveSecrets { tenant: String, app: String },
    /// Upload a certificate (PEM or DER file) to an app registration.
    UploadCert {
        tenant: String,
        app: String,
        file: PathBuf,
    },
    /// Remove a certificate from an app registration by thumbprint (SHA-1 or SHA-256 hex).
    RemoveCert {
        tenant: String,
        app: String,
        thumbprint: String,
    },
    /// Inject faults into a vault (or "*" for all vaults, "entra" for the token endpoint).
    Fault {
        #[arg(long, default_value = "*")]
        target: String,
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value_t = 0.0)]
        drop_rate: f64,
        #[arg(long, default_value_t = 0)]
        outage_seconds: u64,
    },
    /// Clear every fault.
    ClearFaults,
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Generate an RSA key pair and a self-signed certificate for a tenant's app registration:
    /// writes <tenant>.cer and <tenant>.pem to upload, and <tenant>-credential.pem (or .pfx)
    /// for the worker (mode 0600); prints the thumbprints and the next steps.
    Generate {
        /// The tenant the certificate is for.
        #[arg(long)]
        tenant: String,
        /// Folder to write the files to.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// RSA key size (3072 or more).
        #[arg(long, default_value_t = 3072)]
        bits: u32,
        /// Write the private credential as PKCS#12 (.pfx) instead of PEM.
        #[arg(long)]
        pfx: bool,
        /// Environment variable holding a passphrase for the private credential.
        #[arg(long)]
        passphrase_env: Option<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// For each tenant's configured certificate (and next certificate): subject, thumbprints,
    /// validity, days left, and whether the private key matches.
    Show {
        /// The worker configuration.
        #[arg(long)]
        config: PathBuf,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// JSON lines.
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
        Command::Cert { command } => cert(command).unwrap_or_else(|e| fail(&e)),
        Command::Demo { messages } => runtime()
            .and_then(|rt| {
                rt.block_on(async {
                    let s = byok::demo::run(byok::demo::DemoOptions {
                        messages,
                        ..Default::default()
                    })
                    .await?;
                    Ok(if s.mismatches == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    })
                })
            })
            .unwrap_or_else(|e: String| fail(&e)),
        Command::Keys {
            command:
                KeysCommand::Usage {
                    config,
                    tenant,
                    json,
                },
        } => runtime()
            .and_then(|rt| rt.block_on(keys_usage(&config, tenant, json)))
            .unwrap_or_else(|e| fail(&e)),
        Command::Rewrap {
            config,
            tenant,
            to_version,
            dry_run,
        } => runtime()
            .and_then(|rt| {
                rt.block_on(rewrap(
                    &config,
                    byok::lifecycle::rewrap::RewrapOptions {
                        tenant,
                        to_version,
                        dry_run,
                    },
                ))
            })
            .unwrap_or_else(|e| fail(&e)),
        Command::Replay {
            config,
            quarantine,
            from,
            to,
            tenants,
            partitions,
            from_offset,
            to_offset,
            since,
            until,
            rate,
            dry_run,
        } => {
            let run = |rt: tokio::runtime::Runtime| {
                match (from, to) {
                (Some(from), Some(to)) => {
                    let opts = byok::lifecycle::replay::ReplayOptions {
                        from,
                        to,
                        tenants,
                        partitions,
                        from_offset,
                        to_offset,
                        from_time_ms: rfc3339_ms(since, "since")?,
                        to_time_ms: rfc3339_ms(until, "until")?,
                        dry_run,
                        rate,
                    };
                    rt.block_on(replay(&config, opts))
                }
                _ if quarantine => {
                    if tenants.len() > 1 {
                        return Err("--quarantine takes one --tenant (or none for all)".into());
                    }
                    rt.block_on(drain(&config, tenants.into_iter().next(), dry_run))
                }
                _ => Err("say what to replay: --from TOPIC --to TOPIC (re-seal into another topic) or --quarantine (drain the quarantine into the archive)".into()),
            }
            };
            runtime().and_then(run).unwrap_or_else(|e| fail(&e))
        }
        Command::Healthcheck { url } => healthcheck(&url).unwrap_or_else(|e| fail(&e)),
        Command::Loadgen(args) => runtime()
            .and_then(|rt| rt.block_on(loadgen(args)))
            .unwrap_or_else(|e| fail(&e)),
        Command::Run { config } => runtime()
            .and_then(|rt| rt.block_on(run_worker(&config)))
            .unwrap_or_else(|e| fail(&e)),
        Command::Cat {
            config,
            topic,
            partitions,
            from_offset,
            to_offset,
            since,
            until,
            tenant,
            duplicates,
        } => runtime()
            .and_then(|rt| {
                rt.block_on(cat(
                    &config,
                    topic,
                    partitions,
                    from_offset,
                    to_offset,
                    since,
                    until,
                    tenant,
                    duplicates,
                ))
            })
            .unwrap_or_else(|e| fail(&e)),
        Command::CheckKey {
            config,
            tenant,
            all,
            json,
        } => runtime()
            .and_then(|rt| rt.block_on(check_key(&config, tenant.as_deref(), all, json)))
            .unwrap_or_else(|e| fail(&e)),
        Command::VaultEmulator(args) => runtime()
            .and_then(|rt| rt.block_on(vault_emulator(*args)))
            .unwrap_or_else(|e| fail(&e)),
    }
}

fn cert(command: CertCommand) -> Result<ExitCode, String> {
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
            byok::config::TenantId::parse(&tenant)?;
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
            let credential_line = match (pfx, &passphrase_env) {
                (true, Some(v)) => format!(
                    "credential = {{ type = \"certificate\", path = \"{}\", password_env = \"{v}\" }}",
                    w.credential.display()
                ),
                (true, None) => format!(
                    "credential = {{ type = \"certificate\", path = \"{}\" }}",
                    w.credential.display()
                ),
                (false, Some(v)) => format!(
                    "credential = {{ type = \"certificate\", path = \"{}\", password_env = \"{v}\" }}",
                    w.credential.display()
                ),
                (false, None) => format!(
                    "credential = {{ type = \"certificate\", path = \"{}\" }}",
                    w.credential.display()
                ),
            };
            println!("Generated a certificate credential for tenant {tenant}");
            println!("  subject      {}", i.subject);
            println!(
                "  valid        {} to {} ({days} days)",
                i.not_before, i.not_after
            );
            println!("  key          RSA-{bits}");
            println!(
                "  thumbprint   SHA-1   {}  (the Thumbprint the Azure portal shows)",
                i.sha1
            );
            println!("               SHA-256 {}", i.sha256);
            println!("Files");
            println!(
                "  {:<40} upload this to the app registration (public certificate, DER)",
                w.cer.display()
            );
            println!(
                "  {:<40} the same public certificate as PEM",
                w.pem.display()
            );
            println!(
                "  {:<40} private key and certificate for the worker (mode 0600): never send it",
                w.credential.display()
            );
            println!("Next steps (setup guide, Option 1: Authenticate App using Certificates)");
            println!(
                "  1. In the Microsoft Entra admin center, go to App registrations and open the app (e.g. KeyVaultAccessApp)."
            );
            println!(
                "  2. Go to Certificates & secrets. Under Certificates, click Upload certificate (or Update certificate)."
            );
            println!(
                "  3. Click Select file and upload {}. (Optional) Enter a description. Click Add.",
                w.cer
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default()
            );
            println!(
                "  4. Check that the portal lists thumbprint {} for it.",
                i.sha1
            );
            println!(
                "  5. Configure the tenant's credential (rotation: keep the current certificate in path and set next_path to this one until the old one is removed from the app):"
            );
            println!("       {credential_line}");
            println!("  6. Run: byok check-key --config <config> --tenant {tenant}");
            Ok(ExitCode::SUCCESS)
        }
        CertCommand::Show {
            config,
            tenant,
            json,
        } => {
            let config = Config::load(&config).map_err(|e| e.to_string())?;
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
                        println!("{} ({role} certificate) {}", t.id, i.path);
                        println!("  subject      {}", i.subject);
                        println!("  SHA-1        {}", i.sha1);
                        println!("  SHA-256      {}", i.sha256);
                        println!("  not before   {}", i.not_before);
                        println!("  not after    {} ({} days left)", i.not_after, i.days_left);
                        println!(
                            "  key matches  {}",
                            match i.key_matches {
                                Some(true) => "yes",
                                Some(false) => "NO: the private key is not this certificate's",
                                None => "no private key in the file",
                            }
                        );
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

async fn check_key(
    config: &std::path::Path,
    tenant: Option<&str>,
    all: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let config = Config::load(config).map_err(|e| e.to_string())?;
    let selected: Vec<_> = config
        .tenants
        .values()
        .filter(|t| all || Some(t.id.as_str()) == tenant)
        .collect();
    if selected.is_empty() {
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
    let mut failed = false;
    for t in selected {
        let lines = match (&t.key, t.byok_enabled) {
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
        };
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

async fn run_worker(path: &std::path::Path) -> Result<ExitCode, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.worker.log_format {
        byok::config::LogFormat::Json => builder.json().try_init(),
        byok::config::LogFormat::Text => builder.try_init(),
    };
    let health = std::sync::Arc::new(byok::pipeline::health::Health::default());
    let metrics =
        byok::pipeline::http::serve(config.metrics.listen, std::sync::Arc::clone(&health))
            .await
            .map_err(|e| format!("metrics endpoint {}: {e}", config.metrics.listen))?;
    tracing::info!(addr = %metrics, "metrics and health on /metrics, /health (ready) and /live");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopping = std::sync::Arc::clone(&health);
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stop requested: draining the batch in flight");
        stopping.set_stopping();
        let _ = stop.send(true);
    });
    let stats = byok::pipeline::run_with(config, stopped, health, byok::pipeline::seal_stage)
        .await
        .map_err(|e| e.to_string())?;
    eprintln!("{stats:?}");
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr with `template` (indicatif syntax).
fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

async fn keys_usage(
    path: &std::path::Path,
    tenant: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let usage = byok::lifecycle::usage::usage(&config, tenant.as_deref())
        .await
        .map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&usage).map_err(|e| e.to_string())?
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (t, versions) in &usage {
        println!("{t}");
        for v in versions {
            println!(
                "  {}: {} DEK(s), {} record(s)",
                v.kek,
                v.deks.len(),
                v.records
            );
            for d in &v.deks {
                let local = if d.wrapped_locally {
                    " (wrapped locally)"
                } else {
                    ""
                };
                println!("    DEK {} made {}{local}", d.dek, d.created);
                for r in &d.ranges {
                    println!(
                        "      {}/{} offsets {}..={} ({} records)",
                        r.topic, r.partition, r.first, r.last, r.records
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an operator tool over the configuration at `path`: logs on, a progress bar the tool
/// feeds (`what` names its unit), the records or DEKs it could not handle on stderr, its JSON
/// summary on stdout; exit 1 when anything could not be handled.
async fn tool<S: serde::Serialize>(
    path: &std::path::Path,
    what: &str,
    run: impl AsyncFnOnce(&Config, &mut dyn FnMut(u64, u64)) -> Result<S, String>,
    failures: impl Fn(&S) -> Vec<String>,
) -> Result<ExitCode, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
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
    .await?;
    bar.finish_and_clear();
    let failed = failures(&stats);
    for f in &failed {
        eprintln!("{f}");
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&stats).map_err(|e| e.to_string())?
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn rewrap(
    path: &std::path::Path,
    opts: byok::lifecycle::rewrap::RewrapOptions,
) -> Result<ExitCode, String> {
    tool(
        path,
        "DEKs",
        async |config, progress| {
            byok::lifecycle::rewrap::rewrap(config, &opts, progress)
                .await
                .map_err(|e| e.to_string())
        },
        |stats| {
            stats
                .iter()
                .flat_map(|(t, s)| s.failed.iter().map(move |f| format!("{t}: {f}")))
                .collect()
        },
    )
    .await
}

async fn replay(
    path: &std::path::Path,
    opts: byok::lifecycle::replay::ReplayOptions,
) -> Result<ExitCode, String> {
    tool(
        path,
        "records",
        async |config, progress| {
            byok::lifecycle::replay::replay(config, &opts, progress)
                .await
                .map_err(|e| e.to_string())
        },
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

async fn drain(
    path: &std::path::Path,
    tenant: Option<String>,
    dry_run: bool,
) -> Result<ExitCode, String> {
    let opts = byok::lifecycle::drain::DrainOptions { tenant, dry_run };
    tool(
        path,
        "quarantine records",
        async |config, progress| {
            byok::lifecycle::drain::drain_quarantine(config, &opts, progress)
                .await
                .map_err(|e| e.to_string())
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

fn healthcheck(url: &str) -> Result<ExitCode, String> {
    use std::io::Write;
    let u = url::Url::parse(url).map_err(|e| format!("--url {url:?}: {e}"))?;
    if u.scheme() != "http" {
        return Err(format!(
            "--url {url:?}: only plain http (the worker's metrics endpoint)"
        ));
    }
    let host = u.host_str().ok_or("--url has no host")?;
    let port = u.port().unwrap_or(80);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .map_err(|e| format!("{host}:{port}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}:{port}: no address"))?;
    let timeout = std::time::Duration::from_secs(3);
    let mut s =
        std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {} HTTP/1.0\r\nHost: {host}\r\n\r\n", u.path())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = body.split_whitespace().nth(1).unwrap_or("?");
    let text = body.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    println!("{status} {text}");
    Ok(if status == "200" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn loadgen(a: LoadgenArgs) -> Result<ExitCode, String> {
    use byok::loadgen::{LoadOptions, Size, TenantIn};
    let config = a
        .config
        .as_ref()
        .map(|p| Config::load(p).map_err(|e| e.to_string()))
        .transpose()?;
    let bootstrap = a
        .bootstrap
        .or_else(|| config.as_ref().map(|c| c.kafka.bootstrap_servers.clone()))
        .ok_or("give --bootstrap HOST:PORT or --config FILE")?;
    let topic = a
        .topic
        .or_else(|| {
            config
                .as_ref()
                .and_then(|c| c.kafka.input_topics.first().cloned())
        })
        .unwrap_or_else(|| "capture.messages".to_owned());
    let tenants: Vec<String> = if let Some(n) = a.tenants {
        (0..n).map(|i| format!("tenant-{i:04}")).collect()
    } else if !a.tenant.is_empty() {
        a.tenant
    } else if let Some(c) = &config {
        c.tenants
            .values()
            .filter(|t| t.byok_enabled)
            .map(|t| t.id.to_string())
            .collect()
    } else {
        return Err("name the tenants: --tenants N, --tenant NAME, or --config FILE".into());
    };
    let size = if a.size == "chat" {
        Size::Chat
    } else {
        let n: bytesize::ByteSize = a.size.parse().map_err(|e| {
            format!(
                "--size {:?}: {e}; use \"chat\" or a size such as 1KiB",
                a.size
            )
        })?;
        Size::Fixed(n.as_u64() as usize)
    };
    let opts = LoadOptions {
        bootstrap,
        topic: topic.clone(),
        messages: a.messages,
        rate: a.rate,
        tenants,
        size,
        tenant_in: if a.tenant_header {
            TenantIn::Header
        } else {
            TenantIn::Json
        },
        follow: a.follow_group.map(|g| (g, a.max_lag)),
        producer: Vec::new(),
        start: a.start,
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = stop.send(true);
    });
    let bar = match a.messages {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} messages, {per_sec}, ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    eprintln!(
        "loadgen: {} tenants to {topic}, size {}, {}",
        opts.tenants.len(),
        a.size,
        opts.rate
            .map_or("as fast as possible".to_owned(), |r| format!("{r} msg/s"))
    );
    let stats = byok::loadgen::run(&opts, stopped, |s| {
        bar.set_position(s.sent);
        bar.set_message(format!(
            "{:.1} MB/s",
            s.bytes as f64 / 1e6 / s.elapsed.as_secs_f64().max(1e-9)
        ));
    })
    .await?;
    bar.finish_and_clear();
    eprintln!(
        "loadgen: {} messages, {:.1} MB in {:.1} s ({:.0} msg/s, {:.1} MB/s){}",
        stats.sent,
        stats.bytes as f64 / 1e6,
        stats.elapsed.as_secs_f64(),
        stats.sent as f64 / stats.elapsed.as_secs_f64().max(1e-9),
        stats.bytes as f64 / 1e6 / stats.elapsed.as_secs_f64().max(1e-9),
        if stats.waited.is_zero() {
            String::new()
        } else {
            format!(
                ", {:.1} s waiting for the group",
                stats.waited.as_secs_f64()
            )
        }
    );
    Ok(ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
async fn cat(
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
    let config = Config::load(path).map_err(|e| e.to_string())?;
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
fn rfc3339_ms(v: Option<String>, flag: &str) -> Result<Option<i64>, String> {
    v.map(|t| {
        time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
            .map(|d| (d.unix_timestamp_nanos() / 1_000_000) as i64)
            .map_err(|_| {
                format!("--{flag} {t:?} is not an RFC 3339 time such as 2026-11-29T17:00:00Z")
            })
    })
    .transpose()
}

/// Resolves on SIGTERM or Ctrl-C (never, if the SIGTERM handler cannot be installed and Ctrl-C
/// never comes).
async fn stop_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn vault_emulator(args: EmulatorArgs) -> Result<ExitCode, String> {
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

async fn emulator_admin(a: AdminArgs) -> Result<ExitCode, String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
