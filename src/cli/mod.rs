//! The commands of the `byok` binary, grouped by what they serve. Each parses its arguments,
//! loads the configuration, calls one library function and renders its result; none holds
//! logic the library or a test would need.

mod keys;
mod local;
mod service;
mod tools;

pub(crate) use keys::*;
pub(crate) use local::*;
pub(crate) use service::*;
pub(crate) use tools::*;
