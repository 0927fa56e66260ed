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

use std::path::Path;
use std::sync::OnceLock;

use byok::config::{Config, LoadOptions};

static LOAD_OPTIONS: OnceLock<LoadOptions> = OnceLock::new();

/// The global flags that change how a configuration loads; set once by `main`.
pub(crate) fn set_load_options(options: LoadOptions) {
    let _ = LOAD_OPTIONS.set(options);
}

pub(crate) fn load_options() -> LoadOptions {
    LOAD_OPTIONS.get().copied().unwrap_or_default()
}

/// Loads the configuration as every command does, with the global flags.
pub(crate) fn load_config(path: &Path) -> Result<Config, String> {
    Config::load_with(path, load_options()).map_err(|e| e.to_string())
}
