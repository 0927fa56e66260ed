//! The records of `byok.audit` (docs/audit-v1.md §4-5): checkpoints and signer statements, in
//! the exact member order of the page, and a writer's session: its Ed25519 key and its own chain
//! of records (`seq`, `wprev`).

use std::collections::BTreeMap;
use std::sync::Arc;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::AuditError;
use super::codec::{append_signature, b64, split_signed, unb64_32};
use super::merkle::{Hash, ZERO, hash};

/// One leaf's place: topic, partition, offset, and its hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Leaf {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// `leaf_hash`.
    pub hash: Hash,
}

/// A topic-partition's leaves as `[first offset, count]` runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutRuns {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Ascending runs.
    pub runs: Vec<[i64; 2]>,
}

/// One input partition's range in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Range {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// The committed offset the batch started from.
    pub from: i64,
    /// The offset it commits.
    pub to: i64,
    /// Records consumed.
    pub n: u64,
    /// The previous link (canonical base64url).
    pub prev: String,
    /// This batch's link.
    pub link: String,
    /// Why the chain starts again here (no link carried over).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub restart: Option<String>,
}

/// A checkpoint without its signature (§4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// 1.
    pub v: u32,
    /// `"checkpoint"`.
    pub t: String,
    /// Writer id.
    pub writer: String,
    /// Position in the writer's sequence.
    pub seq: u64,
    /// SHA-256 of the writer's previous record value.
    pub wprev: String,
    /// When written.
    pub created: String,
    /// Consumer group.
    pub group: String,
    /// Merkle root of the leaves.
    pub root: String,
    /// Number of leaves.
    pub leaves: u64,
    /// The leaves per topic-partition.
    pub out: Vec<OutRuns>,
    /// Input ranges (empty for tools).
    pub ranges: Vec<Range>,
}

/// A signer statement without `kv_sig` (§5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerStatement {
    /// 1.
    pub v: u32,
    /// `"signer"`.
    pub t: String,
    /// Writer id.
    pub writer: String,
    /// Position in the writer's sequence.
    pub seq: u64,
    /// SHA-256 of the writer's previous record value.
    pub wprev: String,
    /// The cluster the writer belongs to.
    pub cluster: String,
    /// Consumer group (workers) or the tool's name.
    pub group: String,
    /// `worker` or `tool`.
    pub role: String,
    /// The Ed25519 public key.
    pub session_key: String,
    /// Start of validity.
    pub not_before: String,
    /// End of validity (at most 24 h later).
    pub not_after: String,
    /// The operator's signing key version that signed.
    pub signing_kid: String,
}

/// One Key Vault request in a `kv` record (§6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEntry {
    /// `x-ms-client-request-id`.
    pub req: String,
    /// The key id the request named.
    pub kid: String,
    /// `encrypt`, `decrypt`, `get`, `sign`.
    pub op: String,
    /// Why the request was made.
    pub purpose: String,
    /// DEK ids it concerned.
    pub deks: Vec<String>,
    /// HTTP status (0: no answer).
    pub status: u16,
    /// When it was answered.
    pub at: String,
}

/// A `kv` record without `sig`: key-usage receipts of one tenant (§6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvRecord {
    /// 1.
    pub v: u32,
    /// `"kv"`.
    pub t: String,
    /// Writer id.
    pub writer: String,
    /// Position in the writer's sequence.
    pub seq: u64,
    /// SHA-256 of the writer's previous record value.
    pub wprev: String,
    /// When it was written.
    pub created: String,
    /// The tenant whose key the requests used.
    pub tenant: String,
    /// The requests.
    pub entries: Vec<KvEntry>,
}

/// Where one partition's chain stands, in a `heads` record (§6b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadEntry {
    /// Input topic.
    pub topic: String,
    /// Input partition.
    pub partition: i32,
    /// The offset its chain reached (the last checkpoint's `to`).
    pub to: i64,
    /// That checkpoint's link.
    pub link: String,
}

/// A `heads` record without `sig` (§6b).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadsRecord {
    /// 1.
    pub v: u32,
    /// `"heads"`.
    pub t: String,
    /// Writer id.
    pub writer: String,
    /// Position in the writer's sequence.
    pub seq: u64,
    /// SHA-256 of the writer's previous record value.
    pub wprev: String,
    /// When it was written.
    pub created: String,
    /// The partitions the writer owns.
    pub heads: Vec<HeadEntry>,
}

/// Sorts leaves as §2 orders them and returns them with their `out` runs.
pub fn out_runs(leaves: &mut [Leaf]) -> Vec<OutRuns> {
    leaves.sort();
    let mut by: BTreeMap<(&str, i32), Vec<[i64; 2]>> = BTreeMap::new();
    for l in leaves.iter() {
        let runs = by.entry((l.topic.as_str(), l.partition)).or_default();
        match runs.last_mut() {
            Some([first, count]) if *first + *count == l.offset => *count += 1,
            _ => runs.push([l.offset, 1]),
        }
    }
    by.into_iter()
        .map(|((topic, partition), runs)| OutRuns {
            topic: topic.to_owned(),
            partition,
            runs,
        })
        .collect()
}

/// A session's current Ed25519 key, shared with its [`RecordSigner`]s (a re-certification
/// replaces it for all of them).
type SharedKey = Arc<std::sync::RwLock<Arc<Ed25519KeyPair>>>;

fn current(key: &SharedKey) -> Arc<Ed25519KeyPair> {
    Arc::clone(
        &key.read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// A key a re-certification replaced (opaque: never leaves memory).
pub struct RetiredKey(Arc<Ed25519KeyPair>);

impl std::fmt::Debug for RetiredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetiredKey")
    }
}

/// A writer's session: its Ed25519 key (never leaves memory) and its chain of records.
pub struct Session {
    writer: String,
    key: SharedKey,
    next_seq: u64,
    wprev: Hash,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("writer", &self.writer)
            .field("public", &b64(&self.public_key()))
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session with a fresh key.
    pub fn generate(writer: &str) -> Result<Self, AuditError> {
        let rng = ring::rand::SystemRandom::new();
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut seed).map_err(|_| AuditError::Random)?;
        let s = Self::from_seed(writer, &seed);
        seed.fill(0);
        s
    }

    /// A session from a known seed (conformance vectors).
    pub fn from_seed(writer: &str, seed: &[u8; 32]) -> Result<Self, AuditError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| AuditError::Random)?;
        Ok(Self {
            writer: writer.to_owned(),
            key: Arc::new(std::sync::RwLock::new(Arc::new(key))),
            next_seq: 0,
            wprev: ZERO,
        })
    }

    /// Continues a chain at `seq` after the record whose value hashed to `wprev`.
    pub fn resume_at(&mut self, seq: u64, wprev: Hash) {
        self.next_seq = seq;
        self.wprev = wprev;
    }

    /// The next `seq` and the hash of the last record.
    pub fn position(&self) -> (u64, Hash) {
        (self.next_seq, self.wprev)
    }

    /// Goes back to a [`Session::position`].
    pub fn resume_position(&mut self, position: (u64, Hash)) {
        (self.next_seq, self.wprev) = position;
    }

    /// The writer id.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The session's public key.
    pub fn public_key(&self) -> Vec<u8> {
        current(&self.key).public_key().as_ref().to_vec()
    }

    /// A fresh key for the same writer and chain (re-certification at half-life, §5): from now
    /// on this session and its record signers sign with it. Returns the key it replaced (put it
    /// back with [`Session::restore_key`] if the new one is not certified).
    pub fn rekey(&mut self) -> Result<RetiredKey, AuditError> {
        let rng = ring::rand::SystemRandom::new();
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&rng, &mut seed).map_err(|_| AuditError::Random)?;
        let key = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| AuditError::Random);
        seed.fill(0);
        let mut k = self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(RetiredKey(std::mem::replace(&mut *k, Arc::new(key?))))
    }

    /// Puts back the key [`Session::rekey`] replaced.
    pub fn restore_key(&mut self, old: RetiredKey) {
        *self
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = old.0;
    }

    /// The session's signer of registry and key records (§5b), which are not part of its chain.
    pub fn record_signer(&self) -> RecordSigner {
        RecordSigner {
            writer: self.writer.clone(),
            key: Arc::clone(&self.key),
        }
    }

    /// The `seq` and `wprev` the next record carries.
    pub fn next(&self) -> (u64, String) {
        (self.next_seq, b64(&self.wprev))
    }

    /// Signs `unsigned` (whose `seq`/`wprev` are [`Session::next`]) with the session key and
    /// moves the chain past it; returns the value to produce.
    pub fn sign(&mut self, unsigned: &str) -> Vec<u8> {
        let sig = current(&self.key).sign(unsigned.as_bytes());
        self.record(append_signature(unsigned, "sig", sig.as_ref()).into_bytes())
    }

    /// Moves the chain past a record written whole by the caller (a signer statement signed by
    /// the operator's key); returns it.
    pub fn record(&mut self, value: Vec<u8>) -> Vec<u8> {
        self.wprev = hash(&value);
        self.next_seq += 1;
        value
    }
}

/// Which compacted topic a signed record belongs to (§5b): its `t`, and its copy's key prefix in
/// the audit topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A `byok.deks` record (`"t":"dek"`, copies keyed `dek:<id>`).
    Dek,
    /// A `byok.keks` record (`"t":"kek"`, copies keyed `kek:<tenant>`).
    Kek,
}

impl RecordKind {
    /// The `t` member.
    pub fn t(self) -> &'static str {
        match self {
            RecordKind::Dek => "dek",
            RecordKind::Kek => "kek",
        }
    }

    /// The key of the record's copy in the audit topic.
    pub fn copy_key(self, id: &str) -> String {
        format!("{}:{id}", self.t())
    }
}

/// Signs registry and key records with a session's key (§5b).
#[derive(Clone)]
pub struct RecordSigner {
    writer: String,
    key: SharedKey,
}

impl std::fmt::Debug for RecordSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSigner")
            .field("writer", &self.writer)
            .finish_non_exhaustive()
    }
}

impl RecordSigner {
    /// The writer id the records name.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    /// The signed value of a record whose unsigned JSON (ending in `}`) is `unsigned`: its members,
    /// then `t`, `writer`, `prev` (the hash of the value it supersedes, or zeros), then `sig`.
    pub fn sign(&self, unsigned: &[u8], kind: RecordKind, prev: &Hash) -> Vec<u8> {
        let body = String::from_utf8_lossy(unsigned);
        let body = body.strip_suffix('}').unwrap_or(&body);
        let writer = serde_json::to_string(&self.writer).unwrap_or_default();
        let signed = format!(
            "{body},\"t\":\"{}\",\"writer\":{writer},\"prev\":\"{}\"}}",
            kind.t(),
            b64(prev)
        );
        let sig = current(&self.key).sign(signed.as_bytes());
        append_signature(&signed, "sig", sig.as_ref()).into_bytes()
    }
}

/// Verifies a value signed by an Ed25519 session key (§0) and returns its signed text `S`.
pub fn verify_session_signed(value: &[u8], public: &[u8]) -> Result<String, AuditError> {
    let (signed, sig) = split_signed(value, "sig")?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| AuditError::BadSignature)?;
    Ok(signed)
}

/// Verifies a signer statement's `kv_sig` (PS256, salt 32, over SHA-256 of `S`) under the
/// operator's RSA public key (`n`, `e` big-endian); returns the statement.
pub fn verify_signer(value: &[u8], n: &[u8], e: &[u8]) -> Result<SignerStatement, AuditError> {
    let (signed, sig) = split_signed(value, "kv_sig")?;
    ring::signature::RsaPublicKeyComponents { n, e }
        .verify(
            &ring::signature::RSA_PSS_2048_8192_SHA256,
            signed.as_bytes(),
            &sig,
        )
        .map_err(|_| AuditError::BadSignature)?;
    let st: SignerStatement = serde_json::from_str(&signed).map_err(|e| AuditError::Json {
        reason: e.to_string(),
    })?;
    if st.v != 1 || st.t != "signer" {
        return Err(AuditError::Kind { expected: "signer" });
    }
    unb64_32(&st.session_key, "session_key")?;
    unb64_32(&st.wprev, "wprev")?;
    Ok(st)
}

/// Reads a verified checkpoint's text.
pub fn parse_checkpoint(signed: &str) -> Result<Checkpoint, AuditError> {
    let c: Checkpoint = serde_json::from_str(signed).map_err(|e| AuditError::Json {
        reason: e.to_string(),
    })?;
    if c.v != 1 || c.t != "checkpoint" {
        return Err(AuditError::Kind {
            expected: "checkpoint",
        });
    }
    Ok(c)
}

/// The compact JSON of a record (members in declaration order).
pub fn to_json<T: Serialize>(r: &T) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rekeyed_session_and_its_record_signers_sign_with_the_new_key() {
        let mut s = Session::from_seed("w", &[3; 32]).unwrap();
        let signer = s.record_signer();
        let before = s.public_key();
        let old = s.rekey().unwrap();
        let after = s.public_key();
        assert_ne!(before, after);
        let v = signer.sign(br#"{"v":1}"#, RecordKind::Dek, &ZERO);
        assert!(verify_session_signed(&v, &after).is_ok());
        assert!(verify_session_signed(&v, &before).is_err());
        s.restore_key(old);
        assert_eq!(s.public_key(), before);
        let v = signer.sign(br#"{"v":1}"#, RecordKind::Dek, &ZERO);
        assert!(verify_session_signed(&v, &before).is_ok());
    }

    #[test]
    fn out_runs_are_sorted_and_merged() {
        let leaf = |t: &str, p: i32, o: i64| Leaf {
            topic: t.into(),
            partition: p,
            offset: o,
            hash: ZERO,
        };
        let mut leaves = vec![
            leaf("b", 0, 5),
            leaf("a", 2, 17),
            leaf("a", 0, 1),
            leaf("a", 0, 0),
            leaf("a", 0, 3),
        ];
        let out = out_runs(&mut leaves);
        assert_eq!(leaves[0].offset, 0);
        assert_eq!(
            to_json(&out),
            r#"[{"topic":"a","partition":0,"runs":[[0,2],[3,1]]},{"topic":"a","partition":2,"runs":[[17,1]]},{"topic":"b","partition":0,"runs":[[5,1]]}]"#
        );
    }

    #[test]
    fn a_session_chains_its_records() {
        let mut s = Session::from_seed("w", &[7; 32]).unwrap();
        assert_eq!(s.next(), (0, b64(&ZERO)));
        let v = s.sign(r#"{"a":1}"#);
        assert_eq!(s.next(), (1, b64(&hash(&v))));
        assert!(verify_session_signed(&v, &s.public_key()).is_ok());
        let other = Session::from_seed("w", &[8; 32]).unwrap();
        assert!(verify_session_signed(&v, &other.public_key()).is_err());
    }
}
