//! The worker's metrics: described once with their units, every counter visible from the start
//! (at 0) so that dashboards and alerts see a series before the first event, and the per-batch
//! accounting. This module must never label a metric with anything a producer chose (a tenant
//! string is only a label once it is a configured tenant).

use std::time::Instant;

use super::health::Health;
use crate::envelope::headers::QuarantineReason;

/// A batch of `records` was produced, acknowledged and committed.
pub fn batch_done(health: &Health, records: usize, started: Instant) {
    health.batch_done(records as u64);
    metrics::counter!("byok_records_in_total").increment(records as u64);
    metrics::histogram!("byok_batch_records").record(records as f64);
    metrics::histogram!("byok_batch_seconds").record(started.elapsed().as_secs_f64());
}

/// Counters: name and help. Every one is visible from the start (at 0).
const COUNTERS: [(&str, &str); 15] = [
    (
        "byok_audit_checkpoints_total",
        "audit checkpoints written (flat while records flow: the audit log is not written)",
    ),
    (
        "byok_local_wraps_failed_total",
        "locally wrapped DEKs that did not open through Key Vault (alert)",
    ),
    (
        "byok_registry_rejected_total",
        "registry and key records not used (forged, unsigned, relabelled, rolled back, tombstoned, wrong key)",
    ),
    (
        "byok_records_in_total",
        "captured records consumed, produced and committed",
    ),
    (
        "byok_records_sealed_total",
        "records sealed (archive and quarantine)",
    ),
    (
        "byok_records_quarantined_total",
        "records sealed into the quarantine, by reason",
    ),
    ("byok_deks_created_total", "DEKs made, by tenant"),
    (
        "byok_rebalances_total",
        "consumer-group rebalances, by kind",
    ),
    (
        "byok_commit_failures_total",
        "offset commits that failed (records may be redelivered)",
    ),
    (
        "byok_quarantine_drained_total",
        "quarantine records moved or re-sealed into the archive by the worker's drains",
    ),
    (
        "byok_transactions_aborted_total",
        "exactly-once transactions aborted and retried",
    ),
    (
        "byok_vault_calls_total",
        "Key Vault and Entra ID calls, by tenant, operation and outcome",
    ),
    (
        "byok_stalls_total",
        "times the worker made no progress for worker.stall_timeout with records waiting (/live turned 503)",
    ),
    (
        "byok_batches_given_back_total",
        "batches retried for a quarter of worker.stall_timeout, then given back to be read again",
    ),
    (
        "byok_produce_retries_total",
        "records the broker refused for now, sent again after a backoff",
    ),
];

/// Gauges: name and help.
const GAUGES: [(&str, &str); 6] = [
    (
        "byok_dek_oldest_age_seconds",
        "age of the oldest DEK still sealing",
    ),
    (
        "byok_consumer_lag_records",
        "records behind the end of each input partition",
    ),
    (
        "byok_consumer_lag_records_total",
        "records behind, all assigned partitions",
    ),
    (
        "byok_partitions_paused",
        "input partitions paused: a tenant in them has no answering vault and no known public key",
    ),
    (
        "byok_produce_backing_off",
        "produce tasks retrying records the broker refused for now (/health is 503 meanwhile)",
    ),
    (
        "byok_tenants_held",
        "BYOK tenants whose records wait with no DEK possible and no public key known (keys.unknown_key_hold)",
    ),
];

/// Describes the worker's metrics and makes every counter visible from the start (at 0), so
/// dashboards and alerts see a series before the first event.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for (name, help) in COUNTERS {
        describe_counter!(name, Unit::Count, help);
    }
    for (name, help) in GAUGES {
        let unit = if name.ends_with("_seconds") {
            Unit::Seconds
        } else {
            Unit::Count
        };
        describe_gauge!(name, unit, help);
    }
    describe_histogram!(
        "byok_vault_call_seconds",
        Unit::Seconds,
        "Key Vault call latency"
    );
    describe_histogram!("byok_batch_records", Unit::Count, "records per batch");
    describe_histogram!(
        "byok_batch_seconds",
        Unit::Seconds,
        "batch latency from collected to acknowledged"
    );
    metrics::gauge!("byok_partitions_paused").set(0.0);
    metrics::gauge!("byok_produce_backing_off").set(0.0);
    metrics::gauge!("byok_tenants_held").set(0.0);
    metrics::gauge!("byok_local_wrap_stopped").set(0.0);
    for (c, _) in COUNTERS {
        if !matches!(
            c,
            "byok_rebalances_total"
                | "byok_records_quarantined_total"
                | "byok_deks_created_total"
                | "byok_vault_calls_total"
        ) {
            metrics::counter!(c).increment(0);
        }
    }
    for kind in ["assign", "revoke"] {
        metrics::counter!("byok_rebalances_total", "kind" => kind).increment(0);
    }
    for r in QuarantineReason::ALL {
        metrics::counter!("byok_records_quarantined_total", "reason" => r.as_str()).increment(0);
    }
}
