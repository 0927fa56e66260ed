//! `byok verify`: reads the audit topic, the archive, the quarantine, the registry and the key
//! topic, and reports what docs/audit-v1.md §7 asks: signatures (every record under a signer
//! certified by a pinned signing key version, writer chains unbroken, nothing after `end`),
//! chains (per input partition contiguous and linked, restarts reported), and coverage (every
//! output record a leaf of exactly one checkpoint: injected, removed and altered records found).
//!
//! This module must never trust a key a record names: only the versions pinned in
//! `audit.signing_keys`.

use std::collections::{BTreeMap, HashMap, HashSet};

use rdkafka::Message;
use serde::Serialize;

use crate::audit::codec::{parse_time, unb64_32};
use crate::audit::merkle::{self, Hash};
use crate::audit::records::{
    Checkpoint, HeadsRecord, parse_checkpoint, verify_session_signed, verify_signer,
};
use crate::config::{AuditConfig, Config};
use crate::kafka::TopicReader;
use crate::kafka::reader_consumer;

mod chains;
mod coverage;
mod intervals;
mod range;
mod readability;
pub mod receipts;

pub use range::{OffsetRange, VerifyRange};

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
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Signed `heads` values copied out of Kafka earlier (`--witness`).
    pub witness: Option<Vec<String>>,
    /// Which checkpoints to check (all when empty).
    pub range: VerifyRange,
    /// How many leaves are read and checked together; records no checkpoint named within this
    /// many records of their partition are classified then (memory is about 100 bytes each).
    pub window: usize,
    /// Also open every archive and quarantine record (needs decrypt permission).
    pub readability: bool,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            witness: None,
            range: VerifyRange::default(),
            window: DEFAULT_WINDOW,
            readability: false,
        }
    }
}

/// The default `--window`.
pub const DEFAULT_WINDOW: usize = 500_000;

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
    /// The range checked (`all` without one).
    pub range: String,
    /// Checkpoints in the range (their leaves were read and checked).
    pub checkpoints_in_range: u64,
    /// With `--readability`: archive and quarantine records that opened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readable: Option<u64>,
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
    /// when its newest record was written
    last: time::OffsetDateTime,
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
        range: opts.range.to_string(),
        ..VerifyReport::default()
    };
    let rejected = registry_findings(config, &mut report).await?;
    let mut chains = chains::Chains::watching(witness_claims(opts.witness.as_deref()));
    let audit_consumer = reader_consumer(config)?;
    let out_consumer = reader_consumer(config)?;
    let mut cov = coverage::Coverage::new(
        config,
        &out_consumer,
        &rejected,
        opts.window,
        opts.range.is_whole(),
    );
    let mut writers: HashMap<String, WriterState> = HashMap::new();
    let mut ended: HashSet<String> = HashSet::new();
    let mut heads = Heads::default();
    let mut reader = TopicReader::open(&audit_consumer, &audit.topic, None).await?;
    let mut read = 0u64;
    let mut index = 0usize;
    loop {
        let (writer, value, at) = {
            let Some(m) = reader.next().await? else {
                break;
            };
            let writer = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap_or_default();
            let at = format!("{}/{}/{}", audit.topic, m.partition(), m.offset());
            (writer, m.payload().unwrap_or_default().to_vec(), at)
        };
        read += 1;
        if read.is_multiple_of(1000) {
            progress(read + cov.read, 0);
        }
        if writer.starts_with("dek:") || writer.starts_with("kek:") {
            continue;
        }
        match audit_record(&pinned, audit, &mut writers, &writer, &value) {
            Ok(Kept::Checkpoint(c)) => {
                report.checkpoints += 1;
                let abandoned = chains.step(index, &c, &ended, &mut report);
                cov.abandon(&abandoned, &mut report);
                let in_range = opts.range.contains(&c);
                report.checkpoints_in_range += u64::from(in_range);
                let full = cov.add(index, &c, in_range, &mut report);
                index += 1;
                if full {
                    cov.flush(&chains.forks, &ended, &mut report, &mut |n, t| {
                        progress(read + n, t)
                    })
                    .await?;
                }
            }
            Ok(Kept::Heads(h)) => heads.add(h, &value),
            Ok(Kept::End) => {
                ended.insert(writer);
            }
            Ok(Kept::Nothing) => {}
            Err(kind) => report.finding(kind, at),
        }
    }
    // a writer that has not ended and wrote lately may still name its newest outputs
    let settle = time::OffsetDateTime::now_utc() - coverage::SETTLE;
    let live = writers.values().any(|w| !w.ended && w.last >= settle);
    cov.finish(&chains.forks, &ended, live, &mut report, &mut |n, t| {
        progress(read + n, t)
    })
    .await?;
    report.writers = writers.len() as u64;
    if let Some(w) = &opts.witness {
        check_witness(w, &writers, &chains, &mut report);
    }
    report.heads = heads.newest();
    if opts.readability {
        readability::check(config, &opts.range, &mut report).await?;
    }
    Ok(report)
}

/// The newest signed `heads` value stating each partition (the witness to copy out).
#[derive(Debug, Default)]
struct Heads {
    values: BTreeMap<usize, String>,
    newest: BTreeMap<(String, i32), usize>,
    next: usize,
}

impl Heads {
    fn add(&mut self, h: HeadsRecord, value: &[u8]) {
        let at = self.next;
        self.next += 1;
        self.values
            .insert(at, String::from_utf8_lossy(value).into_owned());
        for e in h.heads {
            self.newest.insert((e.topic, e.partition), at);
        }
        let used: HashSet<usize> = self.newest.values().copied().collect();
        self.values.retain(|k, _| used.contains(k));
    }
    fn newest(self) -> Vec<String> {
        self.values.into_values().collect()
    }
}

/// The (partition, `to`, `link`) each witness value states (its signature is checked at the
/// end, once the sessions are known).
fn witness_claims(witness: Option<&[String]>) -> HashMap<((String, i32), i64), Hash> {
    let mut wanted = HashMap::new();
    for value in witness.unwrap_or_default() {
        let Ok((text, _)) = crate::audit::codec::split_signed(value.as_bytes(), "sig") else {
            continue;
        };
        let Ok(h) = serde_json::from_str::<HeadsRecord>(&text) else {
            continue;
        };
        for e in h.heads {
            if let Ok(link) = unb64_32(&e.link, "link") {
                wanted.insert(((e.topic, e.partition), e.to), link);
            }
        }
    }
    wanted
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
                w.last = w.not_before;
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
                        last: time(&st.not_before)?,
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
    w.last = created;
    match j["t"].as_str() {
        Some("checkpoint") => parse_checkpoint(&signed)
            .map(Kept::Checkpoint)
            .map_err(|_| "bad signature"),
        Some("heads") => serde_json::from_str::<HeadsRecord>(&signed)
            .map(Kept::Heads)
            .map_err(|_| "bad signature"),
        Some("end") => {
            w.ended = true;
            Ok(Kept::End)
        }
        _ => Ok(Kept::Nothing),
    }
}

/// What a verified audit record leaves for the later checks.
enum Kept {
    Nothing,
    End,
    Checkpoint(Checkpoint),
    Heads(HeadsRecord),
}

/// Checks a witness (§6b): each signed `heads` value must verify under its writer's session, and
/// each (`to`, `link`) it states must still be on its partition's live chain.
fn check_witness(
    witness: &[String],
    writers: &HashMap<String, WriterState>,
    chains: &chains::Chains,
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
            if !chains.witnessed_live(&key, h.to) {
                report.finding(
                    "witness mismatch",
                    format!(
                        "{}/{} was witnessed at {} (writer {}); the chain now ends at {:?} without it",
                        h.topic,
                        h.partition,
                        h.to,
                        heads.writer,
                        chains.end(&key)
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
) -> Result<HashSet<(String, i32, i64)>, VerifyError> {
    let (deks, keks) = crate::archive::registry::load_trusted_both(config).await?;
    let mut places = HashSet::new();
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
