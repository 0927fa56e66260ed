//! The pipeline: captured messages in, sealed archive records out.
//!
//! - [`tenant`]: which tenant a message belongs to.
//! - [`keys`]: the worker's DEKs and their registry records.
//! - [`worker`]: `byok run`, the consumer-group member.
//! - [`reader`]: `byok cat`, opening archive and quarantine records.

pub mod drain;
pub mod health;
pub mod http;
pub mod keys;
pub mod monitor;
pub mod reader;
pub mod replay;
pub mod rewrap;
pub mod tenant;
pub mod usage;
pub mod worker;
