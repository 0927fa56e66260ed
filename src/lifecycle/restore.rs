//! `byok verify --restore-registry`: puts back registry and key records that the compacted topics
//! lost (a tombstone, a compaction, a record readers refuse written after them) from their
//! byte-for-byte copies in the audit topic (docs/audit-v1.md §5b). Each value put back is the
//! current one as readers trust it, unchanged (its signature, writer and `prev` are its
//! original writer's); the tool names them in its own checkpoint.
//!
//! It must never write a value that does not verify: it writes only what [`Trusted`] holds.

use std::sync::Arc;

use rdkafka::producer::FutureProducer;
use serde::Serialize;

use crate::archive::registry::{KeyChecked, load_trusted_both};
use crate::config::Config;
use crate::trust::{SignedRecord, Trusted};

/// What was put back.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Restored {
    /// `byok.deks` records put back, by DEK id.
    pub deks: Vec<String>,
    /// `byok.keks` records put back, by tenant.
    pub keks: Vec<String>,
}

/// Puts back every registry and key record whose compacted topic does not end on its current
/// value. Needs `[audit]`.
pub async fn restore_registry(config: &Config) -> Result<Restored, super::LifecycleError> {
    let (deks, keks) = load_trusted_both(config).await?;
    let mut out = Restored::default();
    if deks.to_restore().is_empty() && keks.to_restore().is_empty() {
        return Ok(out);
    }
    let producer = super::tool_producer(config)?;
    let audit = super::tool_audit(config, "byok-restore-registry", &producer)
        .await?
        .ok_or(crate::archive::ReadError::NoAudit)?;
    let pending = Arc::clone(&audit.records.pending);
    out.deks = put_back(&producer, &config.kafka.registry_topic, &deks, &pending).await?;
    out.keks = put_back(&producer, &config.kafka.keks_topic, &keks, &pending).await?;
    audit.finish().await?;
    Ok(out)
}

/// Produces each value to restore, exactly as it is, and names it for the checkpoint.
async fn put_back<T: SignedRecord + KeyChecked>(
    producer: &FutureProducer,
    topic: &str,
    trusted: &Trusted<T>,
    pending: &crate::audit::leaves::PendingLeaves,
) -> Result<Vec<String>, super::LifecycleError> {
    let mut done = Vec::new();
    for (id, current) in trusted.to_restore() {
        crate::kafka::send_record(
            producer,
            topic,
            Some(id.as_bytes()),
            &current.value,
            rdkafka::message::OwnedHeaders::new(),
            Some(pending),
        )
        .await
        .map_err(|source| super::LifecycleError::Produce {
            topic: topic.to_owned(),
            source,
        })?;
        tracing::info!(topic, id = %id, "record put back from its copy in the audit topic");
        done.push(id.clone());
    }
    Ok(done)
}
