//! byok-pipeline: seals captured chat messages under per-tenant data keys (DEKs) whose wrapping
//! keys (KEKs) each customer owns in their own Azure Key Vault, on their way into a Kafka
//! compliance archive.
//!
//! # Layout
//!
//! Every module, in flow order: a module uses only modules above it (no import circle).
//!
//! - [`tenant`]: tenant ids and the owner of a record (a tenant, or the operator).
//! - [`dek`]: one data key, its nonce sequence and retirement limits. No I/O.
//! - [`envelope`]: the v1 wire format (sealed value, AAD, record headers). Pure, no I/O.
//! - [`audit`]: audit log v1: leaves, Merkle roots, chains, signed records. Pure, no I/O.
//! - [`config`]: the worker's configuration, loaded into typed values and checked as a whole.
//! - [`cert`]: certificate credentials for the customers' app registrations.
//! - [`kms`]: the KEK side: Key Vault key ids, the key provider trait, Azure, caching, retries,
//!   rate limits, metrics, local wraps.
//! - [`registry`]: the `byok.deks` record that holds each DEK wrapped by its owner's KEK.
//! - [`trust`]: which registry and key records a reader may use: signed by a certified writer.
//! - [`keyring`]: the process's key providers (tenants and operator), one limiter per vault.
//! - [`deks`]: the DEKs a process makes, published to the registry before use.
//! - [`kafka`]: every Kafka client configuration, and reading a topic's partitions.
//! - [`auditor`]: writing the audit log: a certified session, checkpoints, chain heads.
//! - [`seen`]: records already written, keyed by provenance and plaintext (never by a header alone).
//! - [`topics`]: the topics a configuration names, as the cluster has them (`config check --connect`).
//! - [`archive`]: opening archive and quarantine records (`byok cat`), the registry, `byok.keks`.
//! - [`verify`]: `byok verify`, the audit log checked against the topics it covers.
//! - [`lifecycle`]: following keys (monitor), draining the quarantine, replay, rewrap, usage.
//! - [`pipeline`]: `byok run`: source, route, seal, sink, health.
//! - [`check`]: `byok check-key`, the customer's setup guide as a command.
//! - [`inspect`]: what `byok inspect` says about a sealed value.
//! - [`emulator`]: the local Key Vault + Entra ID emulator (independent of everything above).
//! - [`loadgen`]: synthetic capture traffic (independent of everything above).
//! - [`demo`]: `byok demo`, the whole pipeline in one process.
//!
//! `src/main.rs` is the `byok` command line; it only parses arguments and calls in here. The
//! wire format is documented in `docs/envelope-v1.md`, the pipeline in `docs/pipeline.md`.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

/// Takes a lock, taking over a poisoned one: for the process's shared maps, sets and queues,
/// whose every change is one insert, remove or swap, so a panic elsewhere cannot leave them
/// half-changed. The work the caller came to do is done, never silently skipped. (State whose
/// changes span several steps, as the offset tracker's, reports poisoning as an error instead.)
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub mod tenant;

pub mod dek;
pub mod envelope;

pub mod audit;

pub mod config;

pub mod cert;
pub mod kms;

pub mod registry;
pub mod trust;

pub mod keyring;

pub mod deks;

pub mod kafka;

pub mod auditor;
pub mod seen;
pub mod topics;

pub mod archive;

pub mod verify;

pub mod lifecycle;

pub mod pipeline;

pub mod check;
pub mod inspect;

pub mod emulator;
pub mod loadgen;

pub mod demo;
