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

/// Describes the worker's metrics and makes every counter visible from the start (at 0), so
/// dashboards and alerts see a series before the first event.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "byok_records_in_total",
        Unit::Count,
        "captured records consumed, produced and committed"
    );
    describe_counter!(
        "byok_records_sealed_total",
        Unit::Count,
        "records sealed (archive and quarantine)"
    );
    describe_counter!(
        "byok_records_quarantined_total",
        Unit::Count,
        "records sealed into the quarantine, by reason"
    );
    describe_counter!(
        "byok_deks_created_total",
        Unit::Count,
        "DEKs made, by tenant"
    );
    describe_counter!(
        "byok_rebalances_total",
        Unit::Count,
        "consumer-group rebalances, by kind"
    );
    describe_counter!(
        "byok_commit_failures_total",
        Unit::Count,
        "offset commits that failed (records may be redelivered)"
    );
    describe_counter!(
        "byok_quarantine_drained_total",
        Unit::Count,
        "quarantine records moved or re-sealed into the archive by the worker's drains"
    );
    describe_counter!(
        "byok_transactions_aborted_total",
        Unit::Count,
        "exactly-once transactions aborted and retried"
    );
    describe_counter!(
        "byok_vault_calls_total",
        Unit::Count,
        "Key Vault and Entra ID calls, by tenant, operation and outcome"
    );
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
    describe_gauge!(
        "byok_dek_oldest_age_seconds",
        Unit::Seconds,
        "age of the oldest DEK still sealing"
    );
    describe_gauge!(
        "byok_consumer_lag_records",
        Unit::Count,
        "records behind the end of each input partition"
    );
    describe_gauge!(
        "byok_consumer_lag_records_total",
        Unit::Count,
        "records behind, all assigned partitions"
    );
    describe_counter!(
        "byok_stalls_total",
        Unit::Count,
        "times the worker made no progress for worker.stall_timeout with records waiting (/live turned 503)"
    );
    describe_gauge!(
        "byok_partitions_paused",
        Unit::Count,
        "input partitions paused: a tenant in them has no answering vault and no known public key"
    );
    metrics::gauge!("byok_partitions_paused").set(0.0);
    for c in [
        "byok_records_in_total",
        "byok_records_sealed_total",
        "byok_commit_failures_total",
        "byok_transactions_aborted_total",
        "byok_quarantine_drained_total",
        "byok_stalls_total",
    ] {
        metrics::counter!(c).increment(0);
    }
    for kind in ["assign", "revoke"] {
        metrics::counter!("byok_rebalances_total", "kind" => kind).increment(0);
    }
    for r in QuarantineReason::ALL {
        metrics::counter!("byok_records_quarantined_total", "reason" => r.as_str()).increment(0);
    }
}
