//! `byok verify`: reads the audit topic, the archive, the quarantine, the registry and the key
//! topic, and reports what docs/audit-v1.md §7 asks: signatures (every record under a signer
//! certified by a pinned signing key version, writer chains unbroken, nothing after `end`),
//! chains (per input partition contiguous and linked, restarts reported), and coverage (every
//! output record a leaf of exactly one checkpoint: injected, removed and altered records found).
//!
//! This module must never trust a key a record names: only the versions pinned in
//! `audit.signing_keys`.

use std::collections::{BTreeMap, HashMap};

use rdkafka::Message;
use serde::Serialize;

use crate::audit::codec::{parse_time, unb64_32};
use crate::audit::merkle::{self, Hash};
use crate::audit::records::{
    Checkpoint, HeadsRecord, parse_checkpoint, verify_session_signed, verify_signer,
};
use crate::config::{AuditConfig, Config};
use crate::kafka::{read_all, reader_consumer};

mod chains;
mod coverage;
pub mod receipts;

/// Verification could not run (a finding is not an error: it is in the report).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `[audit]` section.
    #[error("the configuration has no [audit] section: there is no audit log to verify")]
    NotConfigured,
    /// The pinned signing keys or the registry could not be read.
    #[error(transparent)]
    Read(#[from] crate::archive::ReadError),
    /// A topic could not be read.
    #[error(transparent)]
    Topic(#[from] crate::kafka::TopicError),
}

/// How many examples of each finding are kept.
const EXAMPLES: usize = 5;

/// How `byok verify` runs.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Signed `heads` values copied out of Kafka earlier (`--witness`).
    pub witness: Option<Vec<String>>,
}

/// What `byok verify` found.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Writers (sessions) seen.
    pub writers: u64,
    /// Checkpoints verified.
    pub checkpoints: u64,
    /// Output records verified as leaves.
    pub passed: u64,
    /// Findings by kind (exit 1).
    pub findings: BTreeMap<&'static str, u64>,
    /// Notices by kind (exit 0 unless strict).
    pub notices: BTreeMap<&'static str, u64>,
    /// The first examples of each finding and notice.
    pub examples: Vec<String>,
    /// Unsigned registry and key records trusted below `audit.trust_unsigned_below`.
    pub unsigned_trusted: u64,
    /// The newest signed `heads` values covering every partition (`--heads`: the witness to
    /// copy out of Kafka).
    #[serde(skip)]
    pub heads: Vec<String>,
    /// Without a witness, removing the newest records with their checkpoints is not detectable.
    pub caveat: &'static str,
}

impl VerifyReport {
    pub(crate) fn finding(&mut self, kind: &'static str, example: String) {
        let n = self.findings.entry(kind).or_default();
        *n += 1;
        if *n as usize <= EXAMPLES {
            self.examples.push(format!("{kind}: {example}"));
        }
    }
    pub(crate) fn notice(&mut self, kind: &'static str, example: String) {
        let n = self.notices.entry(kind).or_default();
        *n += 1;
        if *n as usize <= EXAMPLES {
            self.examples.push(format!("notice {kind}: {example}"));
        }
    }
    /// The number of findings.
    pub fn failed(&self) -> u64 {
        self.findings.values().sum()
    }
    /// The summary's last line: `N passed, M failed`.
    pub fn verdict(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed())
    }
}

/// A writer's state while its records are read.
struct WriterState {
    session_key: Vec<u8>,
    next_seq: u64,
    wprev: Hash,
    not_before: time::OffsetDateTime,
    not_after: time::OffsetDateTime,
    ended: bool,
}

/// Verifies the audit log of `config`'s cluster. `progress` gets (records read, 0).
pub async fn verify(
    config: &Config,
    opts: &VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport, VerifyError> {
    let audit = config.audit.as_ref().ok_or(VerifyError::NotConfigured)?;
    let pinned = crate::archive::registry::pinned_keys(config, audit).await?;
    let mut report = VerifyReport {
        caveat: "without a witness (--witness), removing the newest records together with their checkpoints and commits is not detectable inside Kafka",
        ..VerifyReport::default()
    };
    let consumer = reader_consumer(config)?;
    let mut writers: HashMap<String, WriterState> = HashMap::new();
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    // heads values, and per partition the newest one stating it
    let mut heads_values: Vec<String> = Vec::new();
    let mut newest: BTreeMap<(String, i32), usize> = BTreeMap::new();
    let mut read = 0u64;
    read_all(&consumer, &audit.topic, None, |m| {
        read += 1;
        if read.is_multiple_of(1000) {
            progress(read, 0);
        }
        let writer = m
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        let value = m.payload().unwrap_or_default();
        let at = format!("{}/{}/{}", audit.topic, m.partition(), m.offset());
        if writer.starts_with("dek:") || writer.starts_with("kek:") {
            return;
        }
        match audit_record(&pinned, audit, &mut writers, &writer, value) {
            Ok(Kept::Checkpoint(c)) => checkpoints.push(c),
            Ok(Kept::Heads(h)) => {
                let at = heads_values.len();
                heads_values.push(String::from_utf8_lossy(value).into_owned());
                for e in h.heads {
                    newest.insert((e.topic.clone(), e.partition), at);
                }
            }
            Ok(Kept::Nothing) => {}
            Err(kind) => report.finding(kind, at),
        }
    })
    .await?;
    report.writers = writers.len() as u64;
    report.checkpoints = checkpoints.len() as u64;
    let rejected = registry_findings(config, &mut report).await?;
    let ended: std::collections::HashSet<String> = writers
        .iter()
        .filter(|(_, w)| w.ended)
        .map(|(k, _)| k.clone())
        .collect();
    let forks = chains::chains(&checkpoints, &ended, &mut report);
    if let Some(w) = &opts.witness {
        check_witness(w, &writers, &forks, &mut report);
    }
    let mut wanted: Vec<usize> = newest.into_values().collect();
    wanted.sort_unstable();
    wanted.dedup();
    report.heads = wanted
        .into_iter()
        .map(|i| heads_values[i].clone())
        .collect();
    coverage::coverage(
        config,
        &checkpoints,
        &ended,
        &forks,
        &rejected,
        &mut report,
        progress,
    )
    .await?;
    Ok(report)
}

/// One record of the audit topic: a checkpoint to keep, nothing, or the kind of finding.
fn audit_record(
    pinned: &HashMap<String, (Vec<u8>, Vec<u8>)>,
    audit: &AuditConfig,
    writers: &mut HashMap<String, WriterState>,
    writer: &str,
    value: &[u8],
) -> Result<Kept, &'static str> {
    let j: serde_json::Value = serde_json::from_slice(value).map_err(|_| "bad signature")?;
    if j["writer"].as_str() != Some(writer) {
        return Err("bad signature");
    }
    if j["t"] == "signer" {
        let kid = j["signing_kid"].as_str().unwrap_or_default();
        let (n, e) = pinned.get(kid).ok_or("bad signature")?;
        let st = verify_signer(value, n, e).map_err(|_| "bad signature")?;
        if st.cluster != audit.cluster {
            return Err("bad signature");
        }
        let time = |t: &str| parse_time(t, "time").map_err(|_| "bad signature");
        let key = crate::audit::codec::unb64(&st.session_key, "session_key")
            .map_err(|_| "bad signature")?;
        match writers.get_mut(writer) {
            // a later statement of the same writer (re-certification): its chain continues
            Some(w)
                if st.seq == w.next_seq && unb64_32(&st.wprev, "wprev").ok() == Some(w.wprev) =>
            {
                w.session_key = key;
                w.next_seq += 1;
                w.wprev = merkle::hash(value);
                w.not_before = time(&st.not_before)?;
                w.not_after = time(&st.not_after)?;
            }
            Some(_) => return Err("writer-chain break"),
            None if st.seq == 0 => {
                writers.insert(
                    writer.to_owned(),
                    WriterState {
                        session_key: key,
                        next_seq: 1,
                        wprev: merkle::hash(value),
                        not_before: time(&st.not_before)?,
                        not_after: time(&st.not_after)?,
                        ended: false,
                    },
                );
            }
            None => return Err("writer-chain break"),
        }
        return Ok(Kept::Nothing);
    }
    let w = writers.get_mut(writer).ok_or("bad signature")?;
    if w.ended {
        return Err("record after end");
    }
    let signed = verify_session_signed(value, &w.session_key).map_err(|_| "bad signature")?;
    let j: serde_json::Value = serde_json::from_str(&signed).map_err(|_| "bad signature")?;
    let created = parse_time(j["created"].as_str().unwrap_or_default(), "created")
        .map_err(|_| "bad signature")?;
    if created < w.not_before || created > w.not_after {
        return Err("bad signature");
    }
    let wprev = unb64_32(j["wprev"].as_str().unwrap_or_default(), "wprev").ok();
    if j["seq"].as_u64() != Some(w.next_seq) || wprev != Some(w.wprev) {
        return Err("writer-chain break");
    }
    w.next_seq += 1;
    w.wprev = merkle::hash(value);
    match j["t"].as_str() {
        Some("checkpoint") => parse_checkpoint(&signed)
            .map(Kept::Checkpoint)
            .map_err(|_| "bad signature"),
        Some("heads") => serde_json::from_str::<HeadsRecord>(&signed)
            .map(Kept::Heads)
            .map_err(|_| "bad signature"),
        Some("end") => {
            w.ended = true;
            Ok(Kept::Nothing)
        }
        _ => Ok(Kept::Nothing),
    }
}

/// What a verified audit record leaves for the later checks.
enum Kept {
    Nothing,
    Checkpoint(Checkpoint),
    Heads(HeadsRecord),
}

/// Checks a witness (§6b): each signed `heads` value must verify under its writer's session, and
/// each (`to`, `link`) it states must still be on its partition's live chain.
fn check_witness(
    witness: &[String],
    writers: &HashMap<String, WriterState>,
    forks: &chains::Forks,
    report: &mut VerifyReport,
) {
    for (i, value) in witness.iter().enumerate() {
        let writer = serde_json::from_str::<serde_json::Value>(value)
            .ok()
            .and_then(|j| j["writer"].as_str().map(str::to_owned))
            .unwrap_or_default();
        let heads = writers
            .get(&writer)
            .and_then(|w| verify_session_signed(value.as_bytes(), &w.session_key).ok())
            .and_then(|text| serde_json::from_str::<HeadsRecord>(&text).ok());
        let Some(heads) = heads else {
            report.finding(
                "witness mismatch",
                format!("witness value {i} does not verify under a session of the log"),
            );
            continue;
        };
        for h in &heads.heads {
            let key = (h.topic.clone(), h.partition);
            let on_chain = unb64_32(&h.link, "link").is_ok_and(|link| {
                forks
                    .live
                    .get(&key)
                    .is_some_and(|v| v.iter().any(|(to, l)| *to == h.to && *l == link))
            });
            if !on_chain {
                let end = forks
                    .live
                    .get(&key)
                    .and_then(|v| v.last().map(|(to, _)| *to));
                report.finding(
                    "witness mismatch",
                    format!(
                        "{}/{} was witnessed at {} (writer {}); the chain now ends at {end:?} without it",
                        h.topic, h.partition, h.to, heads.writer
                    ),
                );
            }
        }
    }
}

/// Registry and key records a reader would not use (§5b), reported by kind: forged, unsigned,
/// relabelled, rolled-back, tombstoned, wrong-key. Returns their places (not also "injected").
async fn registry_findings(
    config: &Config,
    report: &mut VerifyReport,
) -> Result<std::collections::HashSet<(String, i32, i64)>, VerifyError> {
    let (deks, keks) = crate::archive::registry::load_trusted_both(config).await?;
    let mut places = std::collections::HashSet::new();
    for (what, r) in deks
        .rejected
        .iter()
        .map(|r| ("registry record", r))
        .chain(keks.rejected.iter().map(|r| ("key record", r)))
    {
        report.finding(
            r.why.kind(),
            format!("{what} {} at {}: {}", r.key, r.place, r.why),
        );
        places.insert((r.place.topic.clone(), r.place.partition, r.place.offset));
    }
    report.unsigned_trusted = deks.trusted_unsigned + keks.trusted_unsigned;
    Ok(places)
}
