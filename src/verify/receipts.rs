//! `byok audit kv`: the key-usage receipts of one tenant (docs/audit-v1.md §6), read from the
//! audit topic's signed `kv` records, each under a session certified by a pinned signing key
//! version. What a tenant matches, request id by request id, with its own Key Vault logs.

use rdkafka::Message;
use serde::Serialize;

use super::VerifyError;
use crate::audit::codec::parse_time;
use crate::audit::records::{KvEntry, KvRecord};
use crate::config::Config;
use crate::kafka::{read_all, reader_consumer};
use crate::trust::Signers;

/// One receipt, with the writer whose signed record lists it.
#[derive(Debug, Clone, Serialize)]
pub struct KvReceipt {
    /// The writer (a worker's or a tool's session).
    pub writer: String,
    /// The request.
    #[serde(flatten)]
    pub entry: KvEntry,
}

/// The receipts of `tenant` (answered at or after `since_ms`), and how many `kv` records did not
/// verify (never listed).
#[derive(Debug, Clone, Default, Serialize)]
pub struct KvReport {
    /// Receipts in audit order.
    pub receipts: Vec<KvReceipt>,
    /// `kv` records that do not verify under a certified session.
    pub unverified: u64,
}

/// Reads the signed receipts of `tenant`.
pub async fn kv_receipts(
    config: &Config,
    tenant: &str,
    since_ms: Option<i64>,
) -> Result<KvReport, VerifyError> {
    let audit = config.audit.as_ref().ok_or(VerifyError::NotConfigured)?;
    let pinned = crate::archive::registry::pinned_keys(config, audit).await?;
    let mut signers = Signers::new(pinned, &audit.cluster);
    let mut report = KvReport::default();
    let consumer = reader_consumer(config)?;
    read_all(&consumer, &audit.topic, None, |m| {
        let value = m.payload().unwrap_or_default();
        if value.starts_with(br#"{"v":1,"t":"signer","#) {
            signers.offer(value);
            return;
        }
        if !value.starts_with(br#"{"v":1,"t":"kv","#) {
            return;
        }
        let writer = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
        let created = |s: &str| {
            let j: serde_json::Value = serde_json::from_str(s).ok()?;
            parse_time(j["created"].as_str()?, "created").ok()
        };
        let record = signers
            .verify(&writer, value, created)
            .ok()
            .and_then(|text| serde_json::from_str::<KvRecord>(&text).ok())
            .filter(|r| r.writer == writer);
        let Some(record) = record else {
            report.unverified += 1;
            return;
        };
        if record.tenant != tenant {
            return;
        }
        for entry in record.entries {
            let at = parse_time(&entry.at, "at")
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
                .unwrap_or(i64::MAX);
            if since_ms.is_none_or(|s| at >= s) {
                report.receipts.push(KvReceipt {
                    writer: writer.clone(),
                    entry,
                });
            }
        }
    })
    .await?;
    Ok(report)
}
