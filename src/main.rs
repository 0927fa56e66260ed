//! `byok`: the command line. Parses arguments and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
use cli::*;

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
    /// Accept secret files (client secrets, certificates, `{ file = .. }` Kafka settings) that
    /// other users can read, with a warning instead of an error: for throwaway secrets only.
    #[arg(long, global = true)]
    allow_insecure_permissions: bool,
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

/// `byok replay`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    /// The worker configuration.
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Drain the quarantine topic into the archive.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub(crate) quarantine: bool,
    /// Source archive topic.
    #[arg(long, requires = "to")]
    pub(crate) from: Option<String>,
    /// Target topic (must exist); `{tenant}` is replaced by each record's tenant.
    #[arg(long, requires = "from")]
    pub(crate) to: Option<String>,
    /// Only this tenant's records (repeatable with --from/--to).
    #[arg(long = "tenant")]
    pub(crate) tenants: Vec<String>,
    /// Only these source partitions (repeatable).
    #[arg(long = "partition", requires = "from")]
    pub(crate) partitions: Vec<i32>,
    /// First source offset (inclusive) per partition.
    #[arg(long, requires = "from")]
    pub(crate) from_offset: Option<i64>,
    /// Last source offset (exclusive) per partition.
    #[arg(long, requires = "from")]
    pub(crate) to_offset: Option<i64>,
    /// Only records with a timestamp at or after this RFC 3339 time.
    #[arg(long, requires = "from")]
    pub(crate) since: Option<String>,
    /// Only records with a timestamp before this RFC 3339 time.
    #[arg(long, requires = "from")]
    pub(crate) until: Option<String>,
    /// At most this many records a second.
    #[arg(long, requires = "from")]
    pub(crate) rate: Option<f64>,
    /// Open every record and count what would be written; write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
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
    /// Verify the audit log (docs/audit-v1.md): every audit record under a signer certified by a
    /// pinned signing key version (audit.signing_keys), writer chains, per input partition chains
    /// (gaps, rewinds, restarts), and every archive, quarantine, registry and key record a leaf of
    /// exactly one checkpoint (injected, removed, altered). Prints examples and a summary whose
    /// last line is "N passed, M failed"; exit 1 on any finding (and on notices with --strict).
    Verify(VerifyFlags),
    /// The audit log: key-usage receipts (`byok audit kv --tenant ID`).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
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
    Replay(ReplayArgs),
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
        #[arg(long, conflicts_with = "all", required_unless_present_any = ["all", "operator"])]
        tenant: Option<String>,
        /// Check every tenant with BYOK enabled.
        #[arg(long)]
        all: bool,
        /// Check the operator's keys: the quarantine key (round trip) and, with [audit], the
        /// audit signing key (RSA >= 3072, sign permitted, a real PS256 signature).
        #[arg(long)]
        operator: bool,
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
enum AuditCommand {
    /// The key-usage receipts of a tenant: every Key Vault request the workers and tools made to
    /// its key, from the signed `kv` records of the audit log (match them with the vault's logs
    /// by request id).
    Kv {
        /// The worker configuration (its [audit] section, with the pinned signing keys).
        #[arg(long)]
        config: PathBuf,
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// Only requests answered at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
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
        /// Also connect to the Kafka cluster and check the topics the worker reads and writes:
        /// each exists, and the archive and quarantine have cleanup.policy delete, byok.deks and
        /// byok.keks compact.
        #[arg(long)]
        connect: bool,
    },
}

/// Runs a command's future on a new runtime; an error is printed and fails the process.
fn block_on(f: impl std::future::Future<Output = Result<ExitCode, String>>) -> ExitCode {
    runtime()
        .and_then(|rt| rt.block_on(f))
        .unwrap_or_else(|e| fail(&e))
}

fn main() -> ExitCode {
    // `byok ... | head -1`: end quietly when the reader goes away, as Unix tools do, instead of
    // panicking on the closed pipe (Rust ignores SIGPIPE by default).
    // SAFETY: restoring a signal's default disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    cli::set_load_options(byok::config::LoadOptions {
        allow_insecure_permissions: cli.allow_insecure_permissions,
    });
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file, connect },
        } => config_check(&file, connect),
        Command::Inspect { file, hex, json } => inspect(file, hex, json),
        Command::Cert { command } => cert(command).unwrap_or_else(|e| fail(&e)),
        Command::Demo { messages } => runtime()
            .and_then(|rt| rt.block_on(demo(messages)))
            .unwrap_or_else(|e| fail(&e)),
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
        Command::Verify(flags) => block_on(verify(flags)),
        Command::Audit {
            command:
                AuditCommand::Kv {
                    config,
                    tenant,
                    since,
                    json,
                },
        } => block_on(audit_kv(&config, &tenant, since, json)),
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
        Command::Replay(args) => runtime()
            .and_then(|rt| replay_command(&rt, args))
            .unwrap_or_else(|e| fail(&e)),
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
            operator,
            json,
        } => block_on(check_key(&config, tenant.as_deref(), all, operator, json)),
        Command::VaultEmulator(args) => runtime()
            .and_then(|rt| rt.block_on(vault_emulator(*args)))
            .unwrap_or_else(|e| fail(&e)),
    }
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
