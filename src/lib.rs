//! byok-pipeline: seals captured chat messages under per-tenant data keys (DEKs) whose wrapping
//! keys (KEKs) each customer owns in their own Azure Key Vault, on their way into a Kafka
//! compliance archive.
//!
//! # Layout
//!
//! - [`envelope`]: the v1 wire format (sealed value, AAD, record headers). Pure, no I/O.
//! - [`dek`]: data keys, their nonce sequence and retirement limits.
//! - [`registry`]: the `byok.deks` record that holds each DEK wrapped by its tenant's KEK.
//! - [`kms`]: the KEK side (Key Vault key identifiers, and the tenant key provider).
//! - [`config`]: the worker's configuration, loaded into typed values and checked as a whole.
//! - [`inspect`]: what `byok inspect` says about a sealed value.
//!
//! `src/main.rs` is the `byok` command line; it only parses arguments and calls in here.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod archive;
pub mod cert;
pub mod check;
pub mod config;
pub mod dek;
pub mod deks;
pub mod demo;
pub mod emulator;
pub mod envelope;
pub mod inspect;
pub mod kafka;
pub mod keyring;
pub mod kms;
pub mod lifecycle;
pub mod loadgen;
pub mod pipeline;
pub mod registry;
