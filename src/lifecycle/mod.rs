//! The key lifecycle around the pipeline: following each tenant's key (monitor), moving the
//! quarantine back into the archive when a key returns (drain), re-sealing records (replay),
//! moving DEKs to a newer key version (rewrap), putting back registry records the compacted
//! topics lost (restore), and what each key version protects (usage).
//!
//! These run beside the worker or as operator tools; none of them is on the per-record path, and
//! none may write an archive record that is not sealed under its tenant's key.

pub mod autodrain;
pub mod drain;
pub mod hold;
pub mod monitor;
pub mod replay;
pub mod restore;
pub mod rewrap;
pub mod usage;

/// The idempotent producer of the operator's tools (no transactional id: their writes are
/// de-duplicated by `byok.src`).
pub(crate) fn tool_producer(
    config: &crate::config::Config,
) -> Result<rdkafka::producer::FutureProducer, LifecycleError> {
    crate::kafka::tool_producer_config(config)
        .create()
        .map_err(|source| LifecycleError::Producer {
            step: "create",
            source,
        })
}

/// A tool's audit writer (role `tool`, docs/audit-v1.md §4-5), when the audit log is configured:
/// its session certified by the operator's signing key before it writes anything; its registry
/// records signed and copied; a checkpoint (no input ranges) naming what it wrote.
#[allow(missing_debug_implementations)] // the auditor's clients have no Debug
pub(crate) struct ToolAudit {
    auditor: crate::auditor::Auditor,
    /// The signer and copy topic of its registry records.
    pub(crate) records: crate::auditor::RecordAudit,
}

/// Starts the tool `name`'s audit writer; `None` without `[audit]`.
pub(crate) async fn tool_audit(
    config: &crate::config::Config,
    name: &str,
    producer: &rdkafka::producer::FutureProducer,
) -> Result<Option<ToolAudit>, LifecycleError> {
    let Some(audit) = &config.audit else {
        return Ok(None);
    };
    crate::kms::receipts::set_default_purpose(match name {
        "byok-rewrap" => "rewrap",
        "byok-replay" => "replay",
        "byok-drain" => "drain",
        _ => "restore",
    });
    let auditor = crate::auditor::Auditor::start(
        config,
        audit,
        crate::auditor::Role::Tool,
        name,
        producer.clone(),
        producer.clone(),
    )
    .await?;
    let records = auditor.record_audit().await;
    Ok(Some(ToolAudit { auditor, records }))
}

impl ToolAudit {
    /// The receipts of its Key Vault requests, and a checkpoint naming everything written since
    /// the last one.
    pub(crate) async fn checkpoint(&self) -> Result<(), LifecycleError> {
        self.auditor.write_receipts().await?;
        self.auditor.checkpoint(Vec::new(), &[]).await?;
        Ok(())
    }

    /// The last checkpoint and `end`.
    pub(crate) async fn finish(self) -> Result<(), LifecycleError> {
        self.checkpoint().await?;
        self.auditor.end().await?;
        Ok(())
    }
}

/// An operator tool (drain, replay, rewrap) could not run or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LifecycleError {
    /// Reading a topic or the registry failed.
    #[error(transparent)]
    Read(#[from] crate::archive::ReadError),
    /// Reading a topic failed.
    #[error(transparent)]
    Topic(#[from] crate::kafka::TopicError),
    /// The key providers could not be set up.
    #[error("key providers: {0}")]
    Keys(#[from] crate::kms::KmsError),
    /// The tool's audit session could not be certified or its checkpoint written.
    #[error("audit log: {0}")]
    Audit(#[from] crate::auditor::AuditorError),
    /// The producer could not be made or a transaction step failed.
    #[error("Kafka producer ({step}): {source}")]
    Producer {
        /// What was done.
        step: &'static str,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// A record was not acknowledged by the target.
    #[error("produce to {topic}: {source}")]
    Produce {
        /// Topic.
        topic: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// An option cannot be used as given.
    #[error("{option} {value}: {fix}")]
    Option {
        /// The option.
        option: &'static str,
        /// Its value.
        value: String,
        /// What is wrong and what to do.
        fix: String,
    },
    /// The target topic cannot be read.
    #[error("target {0}; create it first (same partitions and retention as the archive)")]
    Target(#[source] crate::kafka::TopicError),
    /// A run stopped midway; what was acknowledged stays written.
    #[error(
        "{0}; records acknowledged so far are in the target: run the same command again to resume"
    )]
    Interrupted(#[source] Box<LifecycleError>),
}
