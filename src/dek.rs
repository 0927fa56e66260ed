//! Data encryption keys (DEKs): the per-tenant AES-256 keys that seal records.
//!
//! Two types, so that the rules of docs/envelope-v1.md §1 hold by construction:
//!
//! - [`DataKey`]: 32 key bytes and the DEK's id. It can *open* records. It is what an unwrapped
//!   registry DEK becomes in a reader, and what [`ActiveDek`] holds. No `Clone`; `Debug` prints
//!   the id only; the key bytes and ring's expanded key schedule are zeroized on drop.
//! - [`ActiveDek`]: a DEK made fresh by this process to *seal*. Only [`ActiveDek::generate`] makes
//!   one, so a DEK unwrapped from the registry can never seal again (its nonce counter would
//!   restart). It owns the nonce sequence (4 random bytes fixed at creation, then a 64-bit
//!   big-endian counter from 0, NIST SP 800-38D §8.2.1) and the retirement limits. It is `Sync`:
//!   threads may seal with one DEK concurrently and never get the same nonce.
//!
//! Nothing here does I/O or logging.
//!
//! It must never let a DEK's bytes reach Debug, Display or a log line.

use std::fmt;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ring::aead::{AES_256_GCM, LessSafeKey, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use uuid::Uuid;
use zeroize::Zeroize;

/// Length of a DEK in bytes (AES-256).
pub const DEK_LEN: usize = 32;
/// Length of a nonce in bytes.
pub const NONCE_LEN: usize = 12;
/// Length of the random nonce prefix fixed at DEK creation.
pub const NONCE_PREFIX_LEN: usize = 4;
/// Hard ceiling on `max_messages` (docs/envelope-v1.md §1): 2^32 - 1.
pub const MAX_MESSAGES_CEILING: u64 = u32::MAX as u64;

/// The id of a DEK: a UUID (v7 for DEKs made here), written as lowercase hyphenated text in
/// headers and registry keys, and as 16 bytes in RFC 9562 order inside the sealed value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DekId(Uuid);

impl DekId {
    /// A new time-ordered id (UUID v7).
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }
    /// The id from its 16 bytes in RFC 9562 order.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(Uuid::from_bytes(bytes))
    }
    /// The 16 bytes in RFC 9562 order, as written in the sealed value.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }
    /// The UUID.
    pub const fn as_uuid(&self) -> Uuid {
        self.0
    }
    /// Parses the lowercase hyphenated text form used in headers and registry keys. Other
    /// spellings (upper case, braces, URN, no hyphens) are refused: the text is an identity that
    /// is compared byte for byte by readers.
    pub fn parse(text: &str) -> Result<Self, InvalidDekId> {
        let uuid = Uuid::try_parse(text).map_err(|_| InvalidDekId)?;
        let canonical = uuid.hyphenated().to_string();
        if canonical != text {
            return Err(InvalidDekId);
        }
        Ok(Self(uuid))
    }
}

impl fmt::Display for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for DekId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DekId({})", self.0.hyphenated())
    }
}

impl std::str::FromStr for DekId {
    type Err = InvalidDekId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A DEK id that is not a lowercase hyphenated UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "not a DEK id: expected a lowercase hyphenated UUID such as 0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21"
)]
pub struct InvalidDekId;

/// Key bytes that are not a 32-byte AES-256 key (for example an unwrapped DEK of the wrong size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a DEK must be {DEK_LEN} bytes, got {got}")]
pub struct InvalidDekLength {
    /// The length that was given.
    pub got: usize,
}

/// The system CSPRNG failed. There is no recovery: the process must not seal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed; refusing to make key material")]
pub struct RandomFailed;

/// The key material, boxed so that moving a [`DataKey`] never copies it, and wiped on drop.
struct KeyMaterial {
    raw: [u8; DEK_LEN],
    // ManuallyDrop: the schedule is dropped and then overwritten in `Drop`, never read again.
    ring: ManuallyDrop<LessSafeKey>,
}

impl Drop for KeyMaterial {
    #[inline(never)]
    fn drop(&mut self) {
        self.raw.zeroize();
        // SAFETY: `ring` is not used after this point. `LessSafeKey` has no drop glue that frees
        // memory (the AES and GHASH key schedules are stored inline; checked in ring 0.17), so
        // dropping it and then overwriting its bytes, viewed as `MaybeUninit`, wipes the expanded
        // key schedule without creating an invalid value that anything reads.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            let slot: *mut LessSafeKey = &mut *self.ring;
            zeroize::zeroize_flat_type(slot.cast::<MaybeUninit<LessSafeKey>>());
        }
    }
}

/// An AES-256-GCM data key and its id. Opens records; see the module docs for sealing.
pub struct DataKey {
    id: DekId,
    material: Box<KeyMaterial>,
}

impl DataKey {
    /// Builds a key from unwrapped bytes (a Key Vault `decrypt` result). The caller's buffer is
    /// wiped whether or not the length is right.
    pub fn from_unwrapped(id: DekId, bytes: &mut [u8]) -> Result<Self, InvalidDekLength> {
        if bytes.len() != DEK_LEN {
            let got = bytes.len();
            bytes.zeroize();
            return Err(InvalidDekLength { got });
        }
        let mut raw = [0u8; DEK_LEN];
        raw.copy_from_slice(bytes);
        bytes.zeroize();
        Ok(Self::from_raw(id, raw))
    }

    /// Builds a key from 32 bytes, wiping the argument.
    fn from_raw(id: DekId, mut raw: [u8; DEK_LEN]) -> Self {
        // `UnboundKey::new` only fails for a wrong key length, which the type rules out.
        let unbound = match UnboundKey::new(&AES_256_GCM, &raw) {
            Ok(k) => k,
            Err(_) => unreachable!("AES-256-GCM accepts every 32-byte key"),
        };
        let material = Box::new(KeyMaterial {
            raw,
            ring: ManuallyDrop::new(LessSafeKey::new(unbound)),
        });
        raw.zeroize();
        Self { id, material }
    }

    /// A fresh key from the system CSPRNG, with a new v7 id.
    fn generate(rng: &SystemRandom) -> Result<Self, RandomFailed> {
        let mut raw = [0u8; DEK_LEN];
        rng.fill(&mut raw).map_err(|_| RandomFailed)?;
        Ok(Self::from_raw(DekId::new_v7(), raw))
    }

    /// The DEK's id.
    pub fn id(&self) -> DekId {
        self.id
    }

    /// The key bytes, for wrapping them under a KEK and for the independent cross-check
    /// implementation. Never log, print or store them in clear.
    pub fn secret_bytes(&self) -> &[u8; DEK_LEN] {
        &self.material.raw
    }

    pub(crate) fn ring_key(&self) -> &LessSafeKey {
        &self.material.ring
    }

    /// Raw AES-256-GCM open of `ciphertext || tag` with any nonce and AAD, through the same ring
    /// key the envelope uses. For AEAD conformance vectors (Wycheproof); records are opened with
    /// the envelope's `open`. `None` when the tag does not verify.
    #[doc(hidden)]
    pub fn aead_open_for_vectors(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Option<Vec<u8>> {
        let mut buf = ciphertext_and_tag.to_vec();
        let len = self
            .ring_key()
            .open_in_place(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::from(aad),
                &mut buf,
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }

    /// Raw AES-256-GCM seal with a caller-chosen nonce, returning `ciphertext || tag`. For AEAD
    /// conformance vectors only: a nonce must never be used twice with one key.
    #[doc(hidden)]
    pub fn aead_seal_for_vectors(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Vec<u8> {
        let mut buf = plaintext.to_vec();
        match self.ring_key().seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(aad),
            &mut buf,
        ) {
            Ok(tag) => buf.extend_from_slice(tag.as_ref()),
            Err(_) => buf.clear(),
        }
        buf
    }

    /// A key from raw bytes for conformance vectors and fixtures (the bytes are copied and the
    /// copy wiped on drop; the caller owns its own buffer).
    #[doc(hidden)]
    pub fn from_bytes_for_vectors(id: DekId, bytes: [u8; DEK_LEN]) -> Self {
        Self::from_raw(id, bytes)
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// When a DEK must stop sealing (docs/envelope-v1.md §1). Whichever limit comes first retires it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DekLimits {
    max_messages: u64,
    max_bytes: u64,
    max_age: Duration,
}

/// A DEK limit that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDekLimits {
    /// `max_messages` is 0 or above 2^32 - 1.
    #[error(
        "max_messages = {0} is outside 1..=4294967295 (2^32 - 1, the ceiling of docs/envelope-v1.md for one DEK); the default is 16777216 (2^24)"
    )]
    MaxMessages(u64),
    /// `max_bytes` is 0.
    #[error("max_bytes must be at least 1 byte; the default is 64 GiB")]
    MaxBytes,
    /// `max_age` is 0.
    #[error("max_age must be longer than 0 s; the default is 1h")]
    MaxAge,
}

impl DekLimits {
    /// Default `max_messages`: 2^24.
    pub const DEFAULT_MAX_MESSAGES: u64 = 1 << 24;
    /// Default `max_bytes`: 64 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 64 << 30;
    /// Default `max_age`: one hour.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

    /// Limits, refusing a `max_messages` above 2^32 - 1 and any zero.
    pub fn new(
        max_messages: u64,
        max_bytes: u64,
        max_age: Duration,
    ) -> Result<Self, InvalidDekLimits> {
        if max_messages == 0 || max_messages > MAX_MESSAGES_CEILING {
            return Err(InvalidDekLimits::MaxMessages(max_messages));
        }
        if max_bytes == 0 {
            return Err(InvalidDekLimits::MaxBytes);
        }
        if max_age.is_zero() {
            return Err(InvalidDekLimits::MaxAge);
        }
        Ok(Self {
            max_messages,
            max_bytes,
            max_age,
        })
    }
    /// Records one DEK may seal.
    pub fn max_messages(&self) -> u64 {
        self.max_messages
    }
    /// Plaintext bytes (after compression) one DEK may seal.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
    /// How long one DEK may seal after it was made.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

impl Default for DekLimits {
    fn default() -> Self {
        Self {
            max_messages: Self::DEFAULT_MAX_MESSAGES,
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_age: Self::DEFAULT_MAX_AGE,
        }
    }
}

/// Why a DEK no longer seals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Retired {
    /// It sealed `max_messages` records.
    #[error("the DEK sealed its max_messages records")]
    Messages,
    /// It sealed `max_bytes` bytes.
    #[error("the DEK sealed its max_bytes bytes")]
    Bytes,
    /// It is older than `max_age`.
    #[error("the DEK is older than max_age")]
    Age,
    /// It was retired by its owner (for example its KEK version is no longer usable).
    #[error("the DEK was retired (its KEK version is no longer usable)")]
    Manual,
}

impl Retired {
    fn code(self) -> u8 {
        match self {
            Retired::Messages => 1,
            Retired::Bytes => 2,
            Retired::Age => 3,
            Retired::Manual => 4,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Retired::Messages),
            2 => Some(Retired::Bytes),
            3 => Some(Retired::Age),
            4 => Some(Retired::Manual),
            _ => None,
        }
    }
}

/// A DEK made by this process for sealing, with its nonce sequence and limits.
pub struct ActiveDek {
    key: DataKey,
    nonce_prefix: [u8; NONCE_PREFIX_LEN],
    next_counter: AtomicU64,
    sealed_bytes: AtomicU64,
    retired: AtomicU8,
    limits: DekLimits,
    created: SystemTime,
    deadline: Instant,
}

impl ActiveDek {
    /// A fresh DEK: 32 bytes and a 4-byte nonce prefix from the system CSPRNG, a v7 id.
    pub fn generate(limits: DekLimits) -> Result<Self, RandomFailed> {
        let rng = SystemRandom::new();
        let key = DataKey::generate(&rng)?;
        let mut nonce_prefix = [0u8; NONCE_PREFIX_LEN];
        rng.fill(&mut nonce_prefix).map_err(|_| RandomFailed)?;
        let now = Instant::now();
        Ok(Self {
            key,
            nonce_prefix,
            next_counter: AtomicU64::new(0),
            sealed_bytes: AtomicU64::new(0),
            retired: AtomicU8::new(0),
            limits,
            created: SystemTime::now(),
            // An age that does not fit an Instant is in effect no age limit.
            deadline: now
                .checked_add(limits.max_age)
                .unwrap_or(now + Duration::from_secs(1 << 40)),
        })
    }

    /// The key, for wrapping it and for opening what it sealed.
    pub fn key(&self) -> &DataKey {
        &self.key
    }

    /// The DEK's id.
    pub fn id(&self) -> DekId {
        self.key.id
    }

    /// Wall-clock time of creation, for the registry record.
    pub fn created(&self) -> SystemTime {
        self.created
    }

    /// The limits it was made with.
    pub fn limits(&self) -> DekLimits {
        self.limits
    }

    /// Records sealed so far (counting reservations refused by a limit, which consumed a nonce).
    pub fn nonces_used(&self) -> u64 {
        self.next_counter
            .load(Ordering::Relaxed)
            .min(self.limits.max_messages)
    }

    /// Plaintext bytes sealed so far.
    pub fn bytes_sealed(&self) -> u64 {
        self.sealed_bytes.load(Ordering::Relaxed)
    }

    /// Why the DEK no longer seals, or `None` while it still may. Checks the age too.
    pub fn retired(&self) -> Option<Retired> {
        if let Some(r) = Retired::from_code(self.retired.load(Ordering::Acquire)) {
            return Some(r);
        }
        if Instant::now() >= self.deadline {
            self.retire(Retired::Age);
            return self.retired();
        }
        None
    }

    /// Stops the DEK from sealing from now on. The first reason recorded is kept.
    pub fn retire(&self, why: Retired) {
        let _ = self
            .retired
            .compare_exchange(0, why.code(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// Reserves nonces for up to `records` records of `bytes` plaintext bytes in all, with one
    /// clock read and two atomic operations whatever the count: the worker reserves once per
    /// tenant group of a batch, so sealing a record costs no shared-memory traffic.
    ///
    /// The block may hold fewer nonces than asked for when the DEK reaches `max_messages`; seal
    /// what it holds and take a new DEK for the rest. `bytes` is charged in full against
    /// `max_bytes` (so a DEK may retire a little early, never late). Nonces of a block that are
    /// not used are never handed out again.
    pub fn reserve(&self, records: u64, bytes: u64) -> Result<NonceBlock<'_>, Retired> {
        if let Some(r) = Retired::from_code(self.retired.load(Ordering::Acquire)) {
            return Err(r);
        }
        if Instant::now() >= self.deadline {
            self.retire(Retired::Age);
            return Err(Retired::Age);
        }
        let records = records.max(1);
        let start = self.next_counter.fetch_add(records, Ordering::Relaxed);
        if start >= self.limits.max_messages {
            self.retire(Retired::Messages);
            return Err(Retired::Messages);
        }
        let end = start.saturating_add(records).min(self.limits.max_messages);
        if end == self.limits.max_messages {
            // This block takes the last nonces: nothing may be reserved after it.
            self.retire(Retired::Messages);
        }
        let before = self.sealed_bytes.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limits.max_bytes {
            self.retire(Retired::Bytes);
            return Err(Retired::Bytes);
        }
        Ok(NonceBlock {
            dek: self,
            next: start,
            end,
            bytes_left: bytes,
        })
    }

    /// Reserves one nonce for `len` plaintext bytes.
    #[cfg(test)]
    fn reserve_nonce(&self, len: usize) -> Result<[u8; NONCE_LEN], Retired> {
        let mut block = self.reserve(1, len as u64)?;
        block.take(len).ok_or(Retired::Messages)
    }

    fn nonce(&self, counter: u64) -> [u8; NONCE_LEN] {
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..NONCE_PREFIX_LEN].copy_from_slice(&self.nonce_prefix);
        nonce[NONCE_PREFIX_LEN..].copy_from_slice(&counter.to_be_bytes());
        nonce
    }
}

/// Nonces reserved from one [`ActiveDek`] by [`ActiveDek::reserve`]: a range of its counter that
/// no other block holds, and the plaintext bytes they may seal.
pub struct NonceBlock<'a> {
    dek: &'a ActiveDek,
    next: u64,
    end: u64,
    bytes_left: u64,
}

impl NonceBlock<'_> {
    /// The DEK the nonces belong to.
    pub fn dek(&self) -> &ActiveDek {
        self.dek
    }

    /// Nonces left.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// Takes the next nonce for a record of `len` plaintext bytes, or `None` when the block has
    /// no nonce or not enough reserved bytes left.
    #[inline]
    pub(crate) fn take(&mut self, len: usize) -> Option<[u8; NONCE_LEN]> {
        let len = len as u64;
        if self.next >= self.end || len > self.bytes_left {
            return None;
        }
        self.bytes_left -= len;
        let n = self.dek.nonce(self.next);
        self.next += 1;
        Some(n)
    }
}

impl fmt::Debug for NonceBlock<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceBlock")
            .field("dek", &self.dek.id())
            .field("remaining", &self.remaining())
            .field("bytes_left", &self.bytes_left)
            .finish()
    }
}

impl fmt::Debug for ActiveDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveDek")
            .field("id", &self.key.id)
            .field("nonces_used", &self.nonces_used())
            .field("bytes_sealed", &self.bytes_sealed())
            .field(
                "retired",
                &Retired::from_code(self.retired.load(Ordering::Relaxed)),
            )
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn limits(messages: u64, bytes: u64, age: Duration) -> DekLimits {
        DekLimits::new(messages, bytes, age).unwrap()
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let dek = ActiveDek::generate(DekLimits::default()).unwrap();
        let hex_key = hex::encode(dek.key().secret_bytes());
        for text in [
            format!("{dek:?}"),
            format!("{:?}", dek.key()),
            format!("{dek:#?}"),
        ] {
            assert!(!text.contains(&hex_key), "{text}");
            assert!(text.contains(&dek.id().to_string()));
            // no run of the key's bytes in decimal either (as `[u8; 32]` Debug would print)
            let first = dek.key().secret_bytes()[..4]
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            assert!(!text.contains(&first), "{text}");
        }
    }

    #[test]
    fn keys_and_prefixes_are_random_and_ids_are_v7() {
        let a = ActiveDek::generate(DekLimits::default()).unwrap();
        let b = ActiveDek::generate(DekLimits::default()).unwrap();
        assert_ne!(a.key().secret_bytes(), b.key().secret_bytes());
        assert_ne!(a.id(), b.id());
        assert_eq!(a.id().as_uuid().get_version_num(), 7);
        assert_ne!(a.key().secret_bytes(), &[0u8; 32]);
    }

    #[test]
    fn nonce_is_prefix_then_big_endian_counter_from_zero() {
        let dek = ActiveDek::generate(DekLimits::default()).unwrap();
        let n0 = dek.reserve_nonce(10).unwrap();
        let n1 = dek.reserve_nonce(10).unwrap();
        assert_eq!(n0[..4], n1[..4]);
        assert_eq!(n0[4..], 0u64.to_be_bytes());
        assert_eq!(n1[4..], 1u64.to_be_bytes());
    }

    #[test]
    fn limits_refuse_zero_and_above_the_ceiling() {
        assert!(DekLimits::new(MAX_MESSAGES_CEILING, 1, Duration::from_secs(1)).is_ok());
        assert_eq!(
            DekLimits::new(MAX_MESSAGES_CEILING + 1, 1, Duration::from_secs(1)),
            Err(InvalidDekLimits::MaxMessages(MAX_MESSAGES_CEILING + 1))
        );
        assert!(DekLimits::new(0, 1, Duration::from_secs(1)).is_err());
        assert!(DekLimits::new(1, 0, Duration::from_secs(1)).is_err());
        assert!(DekLimits::new(1, 1, Duration::ZERO).is_err());
        let d = DekLimits::default();
        assert_eq!(d.max_messages(), 1 << 24);
        assert_eq!(d.max_bytes(), 64 << 30);
        assert_eq!(d.max_age(), Duration::from_secs(3600));
    }

    #[test]
    fn retires_after_max_messages_and_never_seals_again() {
        let dek = ActiveDek::generate(limits(3, u64::MAX, Duration::from_secs(3600))).unwrap();
        for _ in 0..3 {
            dek.reserve_nonce(1).unwrap();
        }
        assert_eq!(dek.reserve_nonce(1), Err(Retired::Messages));
        assert_eq!(dek.reserve_nonce(0), Err(Retired::Messages));
        assert_eq!(dek.retired(), Some(Retired::Messages));
    }

    #[test]
    fn retires_after_max_bytes_and_never_seals_again() {
        let dek = ActiveDek::generate(limits(1000, 100, Duration::from_secs(3600))).unwrap();
        dek.reserve_nonce(60).unwrap();
        dek.reserve_nonce(40).unwrap();
        assert_eq!(dek.reserve_nonce(1), Err(Retired::Bytes));
        // even an empty record: a retired DEK stays retired
        assert_eq!(dek.reserve_nonce(0), Err(Retired::Bytes));
    }

    #[test]
    fn retires_after_max_age() {
        let dek = ActiveDek::generate(limits(1000, 1000, Duration::from_millis(30))).unwrap();
        dek.reserve_nonce(1).unwrap();
        assert_eq!(dek.retired(), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(dek.reserve_nonce(1), Err(Retired::Age));
        assert_eq!(dek.retired(), Some(Retired::Age));
    }

    #[test]
    fn blocks_are_disjoint_and_partial_at_the_limit() {
        let dek = ActiveDek::generate(limits(10, 1000, Duration::from_secs(3600))).unwrap();
        let mut a = dek.reserve(4, 40).unwrap();
        let mut b = dek.reserve(4, 40).unwrap();
        let mut c = dek.reserve(4, 40).unwrap(); // only 2 left under max_messages
        assert_eq!((a.remaining(), b.remaining(), c.remaining()), (4, 4, 2));
        assert_eq!(dek.retired(), Some(Retired::Messages));
        assert!(dek.reserve(1, 1).is_err());
        let mut seen = HashSet::new();
        for block in [&mut a, &mut b, &mut c] {
            while let Some(n) = block.take(10) {
                assert!(seen.insert(n));
            }
        }
        assert_eq!(seen.len(), 10);
    }

    #[test]
    fn a_block_refuses_more_bytes_than_reserved() {
        let dek = ActiveDek::generate(DekLimits::default()).unwrap();
        let mut block = dek.reserve(3, 100).unwrap();
        assert!(block.take(60).is_some());
        assert!(block.take(41).is_none());
        assert!(block.take(40).is_some());
        assert!(block.take(0).is_some());
        assert!(block.take(0).is_none());
    }

    #[test]
    fn manual_retirement_keeps_the_first_reason() {
        let dek = ActiveDek::generate(DekLimits::default()).unwrap();
        dek.retire(Retired::Manual);
        dek.retire(Retired::Age);
        assert_eq!(dek.reserve_nonce(1), Err(Retired::Manual));
    }

    #[test]
    fn concurrent_reservations_never_repeat_a_nonce_and_respect_the_limit() {
        const THREADS: usize = 8;
        const PER_THREAD: usize = 20_000;
        let max = (THREADS * PER_THREAD / 2) as u64;
        let dek = Arc::new(
            ActiveDek::generate(limits(max, u64::MAX, Duration::from_secs(3600))).unwrap(),
        );
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let dek = Arc::clone(&dek);
                let barrier = Arc::clone(&barrier);
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut got = Vec::new();
                    for _ in 0..PER_THREAD {
                        if let Ok(n) = dek.reserve_nonce(16) {
                            got.push(n);
                        }
                    }
                    got
                })
            })
            .collect();
        let mut all = HashSet::new();
        let mut total = 0;
        for h in handles {
            for n in h.join().unwrap() {
                total += 1;
                assert!(all.insert(n), "nonce handed out twice");
            }
        }
        assert_eq!(
            total as u64, max,
            "exactly max_messages reservations succeed"
        );
        assert_eq!(dek.retired(), Some(Retired::Messages));
    }

    #[test]
    fn unwrapped_bytes_of_the_wrong_length_are_refused_and_wiped() {
        let mut short = [7u8; 31];
        let err = DataKey::from_unwrapped(DekId::new_v7(), &mut short).unwrap_err();
        assert_eq!(err.got, 31);
        assert_eq!(short, [0u8; 31]);
        let mut good = [9u8; 32];
        let key = DataKey::from_unwrapped(DekId::new_v7(), &mut good).unwrap();
        assert_eq!(good, [0u8; 32]);
        assert_eq!(key.secret_bytes(), &[9u8; 32]);
    }

    #[test]
    fn dek_id_text_is_strict() {
        let id = DekId::parse("0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21").unwrap();
        assert_eq!(id.to_string(), "0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21");
        assert!(DekId::parse("0193A1C2-7A4E-7C3B-9F10-2B8E5D6A4C21").is_err());
        assert!(DekId::parse("0193a1c27a4e7c3b9f102b8e5d6a4c21").is_err());
        assert!(DekId::parse("{0193a1c2-7a4e-7c3b-9f10-2b8e5d6a4c21}").is_err());
        assert!(DekId::parse("").is_err());
    }
}
