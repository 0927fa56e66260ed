//! Crash points for the crash tests: `BYOK_FAILPOINT=<name>:<n>` makes the process abort (as a
//! SIGKILL would end it: no clean-up, no `end` record) the n-th time it reaches the point
//! `name`. Unset, a point costs one relaxed atomic load. Points: `before-checkpoint` (a batch's
//! outputs acknowledged, its checkpoint not written) and `after-checkpoint` (its checkpoint
//! acknowledged, its offsets not committed).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var("BYOK_FAILPOINT").ok()?;
            let (name, at) = v.rsplit_once(':')?;
            Some(Armed {
                name: name.to_owned(),
                at: at.parse().ok()?,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Aborts the process when `name` is the armed point and this is its n-th hit.
pub fn hit(name: &str) {
    if let Some(a) = armed()
        && a.name == name
        && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.at
    {
        eprintln!("BYOK_FAILPOINT {name}: aborting");
        std::process::abort();
    }
}
