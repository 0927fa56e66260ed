//! The leaves of records produced (docs/audit-v1.md §2), from their delivery reports, and the
//! leaves waiting for the next checkpoint. Pure: no I/O.

use std::sync::Mutex;

use super::merkle::{LeafRecord, leaf_hash};
use super::records::Leaf;

/// The leaf of a record produced, from its delivery report.
pub fn leaf_of(
    topic: &str,
    partition: i32,
    offset: i64,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, Option<&[u8]>)],
) -> Leaf {
    let src = headers
        .iter()
        .find(|(n, _)| *n == crate::envelope::headers::names::SRC)
        .and_then(|(_, v)| *v)
        .unwrap_or_default();
    let hash = leaf_hash(&LeafRecord {
        topic,
        partition,
        offset,
        src,
        key,
        value,
        headers,
    });
    Leaf {
        topic: topic.to_owned(),
        partition,
        offset,
        hash,
    }
}

/// Leaves of records produced outside a batch (registry and key records), for the next
/// checkpoint.
#[derive(Debug, Default)]
pub struct PendingLeaves(Mutex<Vec<Leaf>>);

impl PendingLeaves {
    /// Adds one.
    pub fn push(&self, leaf: Leaf) {
        crate::lock(&self.0).push(leaf);
    }
    /// Takes them all (for a checkpoint).
    pub fn take(&self) -> Vec<Leaf> {
        std::mem::take(&mut *crate::lock(&self.0))
    }
}
