//! Readability (docs/audit-v1.md §7, optional): every archive and quarantine record opens, with
//! the DEKs of the verified registry unwrapped through Key Vault (needs decrypt permission on
//! every tenant's key and the operator's). Markers (records the worker could not keep) carry
//! nothing to open and are skipped.

use super::{VerifyError, VerifyRange, VerifyReport};
use crate::archive::ReadOptions;
use crate::config::Config;
use crate::topics::{Role, topics_of};

/// Opens every archive and quarantine record (in the time range by record timestamp, when one
/// is given): each one that does not open is an `unreadable` finding.
pub(super) async fn check(
    config: &Config,
    range: &VerifyRange,
    report: &mut VerifyReport,
) -> Result<(), VerifyError> {
    let mut readable = 0u64;
    for (topic, role) in topics_of(config) {
        if !matches!(role, Role::Archive | Role::Quarantine) {
            continue;
        }
        let opts = ReadOptions {
            duplicates: true,
            from_time_ms: range.since.map(ms),
            to_time_ms: range.until.map(ms),
            ..ReadOptions::topic(&topic)
        };
        let stats = crate::archive::read(
            config,
            &opts,
            |_| {},
            |u| {
                if !u.marker {
                    report.finding(
                        "unreadable",
                        format!("{}/{}/{}: {}", u.topic, u.partition, u.offset, u.reason),
                    );
                }
            },
        )
        .await?;
        readable += stats.opened;
    }
    report.readable = Some(readable);
    Ok(())
}

/// Milliseconds since the epoch.
fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}
