//! The sealed envelope v1 (docs/envelope-v1.md §1): the bytes of every archive and quarantine value.
//!
//! ```text
//! offset  size   field
//! 0       1      version   0x01
//! 1       1      suite     0x01 = AES-256-GCM, 96-bit nonce, 128-bit tag
//! 2       1      flags     bit 0: plaintext is one zstd frame; bits 1-7 zero
//! 3       16     dek_id    RFC 9562 byte order
//! 19      12     nonce
//! 31      n+16   ciphertext || tag
//!
//! aad = value[0..31] || u16be len(tenant) || tenant || u32be len(key) || key
//! ```
//!
//! Pure and synchronous: no I/O, no logging, no allocation beyond the output (and the AAD when
//! tenant and key together pass 120 bytes). Sealing goes through `ring`;
//! [`reference`] is a second, independent implementation over RustCrypto's `aes-gcm` that tests
//! and benches cross-check against.
//!
//! Opening fails with one opaque [`OpenError`] whatever the cause (short input, unknown version,
//! reserved flag, wrong DEK, bad tag, bad zstd frame), so a failure tells an attacker nothing.
//! [`Header::parse`] is the one place that says *why* bytes are not a v1 value: it reads only the
//! public header, for `byok inspect`.
//!
//! It must never do I/O, log, or reveal in an error why an open failed.

pub mod headers;
pub mod reference;

use std::fmt;

use ring::aead::{Aad, Nonce};

use crate::dek::{ActiveDek, DataKey, DekId, NONCE_LEN, NonceBlock, Retired};

/// Format version byte of v1.
pub const VERSION_1: u8 = 0x01;
/// Suite byte: AES-256-GCM, 96-bit nonce, 128-bit tag.
pub const SUITE_AES_256_GCM: u8 = 0x01;
/// Flag bit 0: the plaintext is one zstd frame.
pub const FLAG_ZSTD: u8 = 0x01;
/// Length of the public header (version, suite, flags, DEK id, nonce).
pub const HEADER_LEN: usize = 31;
/// Length of the GCM tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed value adds to its (possibly compressed) plaintext: 47.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// The largest plaintext a reader inflates a zstd value to. A frame claiming more is refused.
pub const MAX_DECOMPRESSED_LEN: usize = 256 << 20;

/// Default zstd level: fast, and most of the gain on chat JSON.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// When sealing compresses the plaintext first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    threshold: Option<usize>,
    level: i32,
}

impl Compression {
    /// Never compress.
    pub const fn off() -> Self {
        Self {
            threshold: None,
            level: DEFAULT_ZSTD_LEVEL,
        }
    }
    /// Compress plaintexts of `threshold` bytes or more with zstd at `level`. A compressed form
    /// that is not smaller than the plaintext is dropped and the record sealed as it is.
    pub const fn at_least(threshold: usize, level: i32) -> Self {
        Self {
            threshold: Some(threshold),
            level,
        }
    }
    /// The size from which plaintexts are compressed, if any.
    pub const fn threshold(&self) -> Option<usize> {
        self.threshold
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::off()
    }
}

/// Sealing could not be done. Carries no key or plaintext material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    /// The DEK hit a limit or was retired; seal with a new DEK.
    #[error("DEK can no longer seal: {0}; make a new DEK for this tenant")]
    Retired(#[from] Retired),
    /// The tenant id is longer than the AAD's u16 length field allows.
    #[error("tenant id is {len} bytes; the envelope allows at most 65535")]
    TenantTooLong {
        /// Its length.
        len: usize,
    },
    /// The record key is longer than the AAD's u32 length field allows.
    #[error("record key is {len} bytes; the envelope allows at most 4294967295")]
    KeyTooLong {
        /// Its length.
        len: usize,
    },
    /// The nonce block has no nonce (or not enough reserved bytes) left for this record.
    #[error("the nonce block is used up; reserve another block from the DEK")]
    BlockUsedUp,
    /// The plaintext is longer than AES-GCM allows with one nonce.
    #[error("plaintext of {len} bytes is longer than AES-GCM allows for one record")]
    PlaintextTooLong {
        /// Its length.
        len: usize,
    },
}

/// A sealed value could not be opened. Deliberately says nothing about why.
#[derive(Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "sealed value could not be opened (wrong DEK, tenant or record key, tampered, or not a v1 value)"
)]
pub struct OpenError;

impl fmt::Debug for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpenError")
    }
}

/// What [`seal_into`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    /// Bytes appended to the output: the whole sealed value.
    pub len: usize,
    /// Whether the plaintext was compressed (flag bit 0).
    pub compressed: bool,
}

/// Seals `plaintext` for `tenant` and `record_key` (null key = `None`) with a fresh nonce of
/// `dek`, appending the v1 value to `out`. Reserves one nonce; a batch reserves a block with
/// [`ActiveDek::reserve`] and seals with [`seal_next`]. Appending lets a caller seal a whole batch into one
/// buffer and hand slices of it to the producer.
pub fn seal_into(
    dek: &ActiveDek,
    tenant: &str,
    record_key: Option<&[u8]>,
    plaintext: &[u8],
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<Sealed, SealError> {
    let mut block = dek.reserve(1, plaintext.len() as u64)?;
    seal_next(&mut block, tenant, record_key, plaintext, compression, out)
}

/// Seals one record with the next nonce of a block reserved by [`ActiveDek::reserve`], appending
/// the v1 value to `out`. This is the worker's hot path: no clock, no atomics per record.
pub fn seal_next(
    block: &mut NonceBlock<'_>,
    tenant: &str,
    record_key: Option<&[u8]>,
    plaintext: &[u8],
    compression: Compression,
    out: &mut Vec<u8>,
) -> Result<Sealed, SealError> {
    check_lengths(tenant, record_key, plaintext.len())?;
    let compressed = match compression.threshold {
        Some(t) if plaintext.len() >= t => compress(plaintext, compression.level),
        _ => None,
    };
    let (body, flags) = match &compressed {
        Some(c) => (c.as_slice(), FLAG_ZSTD),
        None => (plaintext, 0),
    };
    let nonce = block.take(body.len()).ok_or(SealError::BlockUsedUp)?;
    let len = seal_core(
        block.dek().key(),
        nonce,
        flags,
        tenant,
        record_key,
        body,
        out,
    )?;
    Ok(Sealed {
        len,
        compressed: flags != 0,
    })
}

/// Seals with a nonce the caller chooses, appending to `out`. **Only for conformance vectors and
/// golden fixtures**: a nonce used twice with one DEK breaks AES-GCM. Production code seals
/// through [`seal_into`], which takes nonces from the DEK's own sequence.
#[doc(hidden)]
pub fn seal_with_nonce_for_vectors(
    key: &DataKey,
    nonce: [u8; NONCE_LEN],
    flags: u8,
    tenant: &str,
    record_key: Option<&[u8]>,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, SealError> {
    check_lengths(tenant, record_key, body.len())?;
    seal_core(key, nonce, flags, tenant, record_key, body, out)
}

fn check_lengths(
    tenant: &str,
    record_key: Option<&[u8]>,
    plaintext_len: usize,
) -> Result<(), SealError> {
    if tenant.len() > u16::MAX as usize {
        return Err(SealError::TenantTooLong { len: tenant.len() });
    }
    let key_len = record_key.map_or(0, <[u8]>::len);
    if key_len as u64 > u64::from(u32::MAX) {
        return Err(SealError::KeyTooLong { len: key_len });
    }
    // GCM: at most 2^32 - 2 blocks under one nonce.
    if plaintext_len as u64 > ((1u64 << 32) - 2) * 16 {
        return Err(SealError::PlaintextTooLong { len: plaintext_len });
    }
    Ok(())
}

#[inline]
fn seal_core(
    key: &DataKey,
    nonce: [u8; NONCE_LEN],
    flags: u8,
    tenant: &str,
    record_key: Option<&[u8]>,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, SealError> {
    let mut header = [0u8; HEADER_LEN];
    header[0] = VERSION_1;
    header[1] = SUITE_AES_256_GCM;
    header[2] = flags;
    header[3..19].copy_from_slice(key.id().as_bytes());
    header[19..].copy_from_slice(&nonce);
    let start = out.len();
    out.reserve(OVERHEAD + body.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let in_out = &mut out[start + HEADER_LEN..];
    let tag = with_aad(
        &header,
        tenant.as_bytes(),
        record_key.unwrap_or(&[]),
        |aad| {
            key.ring_key().seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                in_out,
            )
        },
    )
    .map_err(|_| SealError::PlaintextTooLong { len: body.len() })?;
    out.extend_from_slice(tag.as_ref());
    Ok(out.len() - start)
}

/// Largest AAD built on the stack; longer ones (a long tenant or record key) go to the heap.
const STACK_AAD: usize = 160;

/// Calls `f` with the AAD of docs/envelope-v1.md §1. Lengths were checked by the caller.
#[inline]
fn with_aad<R>(header: &[u8], tenant: &[u8], key: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let total = header.len() + 2 + tenant.len() + 4 + key.len();
    let fill = |buf: &mut [u8]| {
        let (h, rest) = buf.split_at_mut(header.len());
        h.copy_from_slice(header);
        let (tl, rest) = rest.split_at_mut(2);
        tl.copy_from_slice(&(tenant.len() as u16).to_be_bytes());
        let (t, rest) = rest.split_at_mut(tenant.len());
        t.copy_from_slice(tenant);
        let (kl, k) = rest.split_at_mut(4);
        kl.copy_from_slice(&(key.len() as u32).to_be_bytes());
        k.copy_from_slice(key);
    };
    if total <= STACK_AAD {
        let mut buf = [0u8; STACK_AAD];
        fill(&mut buf[..total]);
        f(&buf[..total])
    } else {
        let mut buf = vec![0u8; total];
        fill(&mut buf);
        f(&buf)
    }
}

/// The AAD of a sealed value as bytes (for vectors, tools and other implementations).
pub fn aad(header: &[u8; HEADER_LEN], tenant: &str, record_key: Option<&[u8]>) -> Vec<u8> {
    with_aad(
        header,
        tenant.as_bytes(),
        record_key.unwrap_or(&[]),
        <[u8]>::to_vec,
    )
}

fn compress(plaintext: &[u8], level: i32) -> Option<Vec<u8>> {
    // A failure to compress is not a failure to seal: the record goes out uncompressed.
    let c = zstd::bulk::compress(plaintext, level).ok()?;
    (c.len() < plaintext.len()).then_some(c)
}

/// The DEK id of a sealed value, so the reader can fetch that DEK. Opaque on failure.
pub fn dek_id(sealed: &[u8]) -> Result<DekId, OpenError> {
    Header::parse(sealed)
        .map(|h| h.dek_id)
        .map_err(|_| OpenError)
}

/// Opens a v1 value sealed for `tenant` and `record_key` under `key`, returning the plaintext
/// (inflated if it was compressed, to at most [`MAX_DECOMPRESSED_LEN`] bytes).
pub fn open(
    key: &DataKey,
    tenant: &str,
    record_key: Option<&[u8]>,
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    open_bounded(key, tenant, record_key, sealed, MAX_DECOMPRESSED_LEN)
}

/// [`open`], refusing a compressed value that inflates past `max_plain` bytes (a reader passes
/// the largest record its configuration lets a worker capture: nothing larger was ever sealed).
pub fn open_bounded(
    key: &DataKey,
    tenant: &str,
    record_key: Option<&[u8]>,
    sealed: &[u8],
    max_plain: usize,
) -> Result<Vec<u8>, OpenError> {
    let header = Header::parse(sealed).map_err(|_| OpenError)?;
    if header.dek_id != key.id() || tenant.len() > u16::MAX as usize {
        return Err(OpenError);
    }
    let key_bytes = record_key.unwrap_or(&[]);
    if key_bytes.len() as u64 > u64::from(u32::MAX) {
        return Err(OpenError);
    }
    let mut buf = sealed[HEADER_LEN..].to_vec();
    let plain_len = with_aad(&sealed[..HEADER_LEN], tenant.as_bytes(), key_bytes, |aad| {
        key.ring_key()
            .open_in_place(
                Nonce::assume_unique_for_key(header.nonce),
                Aad::from(aad),
                &mut buf,
            )
            .map(|p| p.len())
    })
    .map_err(|_| OpenError)?;
    buf.truncate(plain_len);
    if header.flags & FLAG_ZSTD != 0 {
        decompress(&buf, max_plain.min(MAX_DECOMPRESSED_LEN))
    } else {
        Ok(buf)
    }
}

/// Inflates exactly one zstd frame of at most `max` bytes.
pub(crate) fn decompress(frame: &[u8], max: usize) -> Result<Vec<u8>, OpenError> {
    let frame_len = zstd::zstd_safe::find_frame_compressed_size(frame).map_err(|_| OpenError)?;
    if frame_len != frame.len() {
        return Err(OpenError); // trailing bytes or a second frame
    }
    match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= max as u64 => {
            let out = zstd::bulk::decompress(frame, size as usize).map_err(|_| OpenError)?;
            if out.len() as u64 == size {
                Ok(out)
            } else {
                Err(OpenError)
            }
        }
        Ok(Some(_)) | Err(_) => Err(OpenError),
        // A frame written without its size (streaming encoders): inflate with a bound.
        Ok(None) => {
            use std::io::Read;
            let decoder = zstd::stream::read::Decoder::new(frame).map_err(|_| OpenError)?;
            let mut out = Vec::new();
            decoder
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|_| OpenError)?;
            if out.len() > max {
                return Err(OpenError);
            }
            Ok(out)
        }
    }
}

/// The public header of a v1 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version (1).
    pub version: u8,
    /// Cipher suite (1 = AES-256-GCM).
    pub suite: u8,
    /// Flags (bit 0: zstd).
    pub flags: u8,
    /// The DEK that sealed it.
    pub dek_id: DekId,
    /// The nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Length of ciphertext and tag together.
    pub body_len: usize,
}

impl Header {
    /// Reads the header of a v1 value, saying precisely why the bytes are not one. Only the
    /// public header is looked at; whether the value opens is another matter.
    pub fn parse(sealed: &[u8]) -> Result<Self, NotV1> {
        if sealed.is_empty() {
            return Err(NotV1::Empty);
        }
        if sealed[0] != VERSION_1 {
            return Err(NotV1::Version {
                found: sealed[0],
                looks_like: looks_like(sealed),
            });
        }
        if sealed.len() < OVERHEAD {
            return Err(NotV1::TooShort { len: sealed.len() });
        }
        if sealed[1] != SUITE_AES_256_GCM {
            return Err(NotV1::Suite { found: sealed[1] });
        }
        if sealed[2] & !FLAG_ZSTD != 0 {
            return Err(NotV1::ReservedFlags { flags: sealed[2] });
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&sealed[3..19]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[19..HEADER_LEN]);
        Ok(Self {
            version: sealed[0],
            suite: sealed[1],
            flags: sealed[2],
            dek_id: DekId::from_bytes(id),
            nonce,
            body_len: sealed.len() - HEADER_LEN,
        })
    }

    /// Whether the plaintext is a zstd frame.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_ZSTD != 0
    }

    /// Length of the sealed plaintext (compressed size when compressed).
    pub fn ciphertext_len(&self) -> usize {
        self.body_len - TAG_LEN
    }
}

/// Why bytes are not a v1 sealed value (from the public header only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NotV1 {
    /// No bytes at all.
    #[error("the value is empty")]
    Empty,
    /// First byte is not 0x01.
    #[error("version byte is 0x{found:02x}, not 0x01{}", looks_like.map(|l| format!(": this looks like {l}, not a sealed value")).unwrap_or_default())]
    Version {
        /// The byte found.
        found: u8,
        /// A guess at what the bytes are instead.
        looks_like: Option<&'static str>,
    },
    /// Shorter than header plus tag.
    #[error(
        "{len} bytes is shorter than the 47 bytes every v1 value has (31-byte header, 16-byte tag)"
    )]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Unknown cipher suite.
    #[error("suite byte is 0x{found:02x}; v1 knows only 0x01 (AES-256-GCM)")]
    Suite {
        /// The byte found.
        found: u8,
    },
    /// Reserved flag bits set.
    #[error("flags byte is 0x{flags:02x}; bits 1-7 are reserved and must be 0")]
    ReservedFlags {
        /// The byte found.
        flags: u8,
    },
}

fn looks_like(bytes: &[u8]) -> Option<&'static str> {
    let first = bytes.iter().copied().find(|b| !b.is_ascii_whitespace())?;
    match first {
        b'{' | b'[' => Some("JSON text (plaintext?)"),
        0x28 if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) => Some("a bare zstd frame"),
        _ if bytes.iter().take(64).all(|b| b.is_ascii_hexdigit()) => {
            Some("hex text (pass --hex to decode it)")
        }
        _ if std::str::from_utf8(bytes).is_ok() => Some("UTF-8 text"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dek::DekLimits;

    fn dek() -> ActiveDek {
        ActiveDek::generate(DekLimits::default()).unwrap()
    }

    #[test]
    fn round_trip_with_and_without_key() {
        let d = dek();
        for key in [None, Some(&b"conv-42"[..]), Some(&b""[..])] {
            let mut out = Vec::new();
            let s = seal_into(&d, "acme", key, b"hello", Compression::off(), &mut out).unwrap();
            assert_eq!(s.len, out.len());
            assert_eq!(out.len(), 5 + OVERHEAD);
            assert_eq!(open(d.key(), "acme", key, &out).unwrap(), b"hello");
        }
    }

    #[test]
    fn appends_to_existing_buffer() {
        let d = dek();
        let mut out = b"prefix".to_vec();
        let s = seal_into(&d, "t", None, b"abc", Compression::off(), &mut out).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(
            open(d.key(), "t", None, &out[6..6 + s.len]).unwrap(),
            b"abc"
        );
    }

    #[test]
    fn null_key_and_empty_key_share_an_aad() {
        // docs/envelope-v1.md: "length 0 when null"
        let h = [1u8; HEADER_LEN];
        assert_eq!(aad(&h, "x", None), aad(&h, "x", Some(b"")));
    }

    #[test]
    fn long_tenant_and_key_use_the_heap_path() {
        let d = dek();
        let tenant = "t".repeat(300);
        let key = vec![7u8; 5000];
        let mut out = Vec::new();
        seal_into(&d, &tenant, Some(&key), b"x", Compression::off(), &mut out).unwrap();
        assert_eq!(open(d.key(), &tenant, Some(&key), &out).unwrap(), b"x");
        assert_eq!(
            open(d.key(), &tenant, Some(&key[1..]), &out),
            Err(OpenError)
        );
    }

    #[test]
    fn tenant_over_u16_is_refused() {
        let d = dek();
        let tenant = "t".repeat(70_000);
        let err = seal_into(&d, &tenant, None, b"x", Compression::off(), &mut Vec::new());
        assert_eq!(err, Err(SealError::TenantTooLong { len: 70_000 }));
    }

    #[test]
    fn compression_sets_the_flag_and_round_trips() {
        let d = dek();
        let text =
            br#"{"tenant_id":"acme","body":"hello hello hello hello hello hello hello hello"}"#
                .repeat(20);
        let mut out = Vec::new();
        let s = seal_into(
            &d,
            "acme",
            None,
            &text,
            Compression::at_least(100, 3),
            &mut out,
        )
        .unwrap();
        assert!(s.compressed);
        assert!(out.len() < text.len());
        assert_eq!(out[2], FLAG_ZSTD);
        assert_eq!(open(d.key(), "acme", None, &out).unwrap(), text);
        // below the threshold: not compressed
        let mut small = Vec::new();
        let s = seal_into(
            &d,
            "acme",
            None,
            &text[..50],
            Compression::at_least(100, 3),
            &mut small,
        )
        .unwrap();
        assert!(!s.compressed);
        assert_eq!(small[2], 0);
    }

    #[test]
    fn incompressible_data_is_sealed_as_is() {
        let d = dek();
        let mut noise = vec![0u8; 4096];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut noise).unwrap();
        let mut out = Vec::new();
        let s = seal_into(&d, "a", None, &noise, Compression::at_least(1, 3), &mut out).unwrap();
        assert!(!s.compressed);
        assert_eq!(open(d.key(), "a", None, &out).unwrap(), noise);
    }

    #[test]
    fn a_zstd_flag_over_garbage_or_two_frames_fails_opaquely() {
        let d = dek();
        let mut one = zstd::bulk::compress(b"aaaaaaaaaaaaaaaa", 3).unwrap();
        let two = [one.clone(), one.clone()].concat();
        let mut out = Vec::new();
        seal_with_nonce_for_vectors(d.key(), [0; 12], FLAG_ZSTD, "a", None, &two, &mut out)
            .unwrap();
        assert_eq!(open(d.key(), "a", None, &out), Err(OpenError));
        one.truncate(one.len() - 1);
        out.clear();
        seal_with_nonce_for_vectors(d.key(), [1; 12], FLAG_ZSTD, "a", None, &one, &mut out)
            .unwrap();
        assert_eq!(open(d.key(), "a", None, &out), Err(OpenError));
    }

    #[test]
    fn a_frame_claiming_more_than_the_limit_is_refused() {
        // a frame that inflates to MAX + 1 zero bytes compresses to a few KiB
        let huge = vec![0u8; MAX_DECOMPRESSED_LEN + 1];
        let frame = zstd::bulk::compress(&huge, 1).unwrap();
        assert!(frame.len() < 1 << 20);
        assert_eq!(decompress(&frame, MAX_DECOMPRESSED_LEN), Err(OpenError));
        let ok = zstd::bulk::compress(&huge[..1000], 1).unwrap();
        assert_eq!(decompress(&ok, MAX_DECOMPRESSED_LEN).unwrap().len(), 1000);
        // a reader's own bound (the largest record its configuration captures) holds too
        assert_eq!(decompress(&ok, 999), Err(OpenError));
    }

    #[test]
    fn open_bounded_refuses_a_plaintext_over_the_readers_bound() {
        let d = dek();
        let plain = vec![7u8; 10_000];
        let mut out = Vec::new();
        seal_with_nonce_for_vectors(
            d.key(),
            [2; 12],
            FLAG_ZSTD,
            "a",
            None,
            &zstd::bulk::compress(&plain, 1).unwrap(),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            open_bounded(d.key(), "a", None, &out, 10_000).unwrap(),
            plain
        );
        assert_eq!(
            open_bounded(d.key(), "a", None, &out, 9_999),
            Err(OpenError)
        );
    }

    #[test]
    fn every_failure_is_the_same_error() {
        let d = dek();
        let other = dek();
        let mut out = Vec::new();
        seal_into(
            &d,
            "acme",
            Some(b"k"),
            b"secret",
            Compression::off(),
            &mut out,
        )
        .unwrap();
        let mut bad_version = out.clone();
        bad_version[0] = 2;
        let mut bad_flags = out.clone();
        bad_flags[2] = 0x80;
        let cases: Vec<Result<Vec<u8>, OpenError>> = vec![
            open(d.key(), "acme", Some(b"k"), &out[..46]),
            open(d.key(), "acme", Some(b"k"), &bad_version),
            open(d.key(), "acme", Some(b"k"), &bad_flags),
            open(other.key(), "acme", Some(b"k"), &out),
            open(d.key(), "acme2", Some(b"k"), &out),
            open(d.key(), "acme", None, &out),
            open(d.key(), "acme", Some(b"k"), &[]),
        ];
        for c in cases {
            assert_eq!(c, Err(OpenError));
        }
        let msg = OpenError.to_string();
        assert!(!msg.contains("secret"));
        assert_eq!(format!("{OpenError:?}"), "OpenError");
    }

    #[test]
    fn header_parse_explains_what_is_wrong() {
        assert_eq!(Header::parse(&[]), Err(NotV1::Empty));
        let e = Header::parse(br#"{"tenant_id":"acme"}"#).unwrap_err();
        assert!(e.to_string().contains("JSON"), "{e}");
        assert_eq!(Header::parse(&[1u8; 46]), Err(NotV1::TooShort { len: 46 }));
        let mut v = vec![1u8; 47];
        v[1] = 2;
        assert_eq!(Header::parse(&v), Err(NotV1::Suite { found: 2 }));
        v[1] = 1;
        v[2] = 0x02;
        assert_eq!(Header::parse(&v), Err(NotV1::ReservedFlags { flags: 2 }));
        v[2] = 1;
        let h = Header::parse(&v).unwrap();
        assert!(h.compressed());
        assert_eq!(h.ciphertext_len(), 0);
    }

    #[test]
    fn a_retired_dek_refuses_to_seal() {
        let d = ActiveDek::generate(
            DekLimits::new(1, 1 << 20, std::time::Duration::from_secs(60)).unwrap(),
        )
        .unwrap();
        seal_into(&d, "a", None, b"1", Compression::off(), &mut Vec::new()).unwrap();
        let err = seal_into(&d, "a", None, b"2", Compression::off(), &mut Vec::new()).unwrap_err();
        assert_eq!(err, SealError::Retired(Retired::Messages));
    }
}
