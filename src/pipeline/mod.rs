//! The pipeline: captured messages in, sealed archive records out.
//!
//! - [`scan`]: which tenant a message belongs to (header, or the JSON `tenant_id`).
//! - [`worker`]: `byok run`, the consumer-group member.
//! - [`health`] and [`http`]: `/health`, `/live` and `/metrics`.

pub mod health;
pub mod http;
pub mod scan;
pub mod worker;
