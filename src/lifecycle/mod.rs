//! The key lifecycle around the pipeline: following each tenant's key (monitor), moving the
//! quarantine back into the archive when a key returns (drain), re-sealing records (replay),
//! moving DEKs to a newer key version (rewrap), and what each key version protects (usage).
//!
//! These run beside the worker or as operator tools; none of them is on the per-record path, and
//! none may write an archive record that is not sealed under its tenant's key.

pub mod autodrain;
pub mod drain;
pub mod monitor;
pub mod replay;
pub mod rewrap;
pub mod usage;
