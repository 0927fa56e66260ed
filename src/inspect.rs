//! `byok inspect`: what the public header of a sealed value says, or why the bytes are not a v1
//! value. Reads only the header; it never needs, asks for or prints a key or plaintext.

use serde::Serialize;

use crate::envelope::{Header, NotV1, OVERHEAD};

/// The header of a sealed value, ready to print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Inspection {
    /// Format version.
    pub version: u8,
    /// Cipher suite byte.
    pub suite: u8,
    /// Suite name.
    pub suite_name: &'static str,
    /// Flags byte.
    pub flags: u8,
    /// Whether the plaintext was zstd-compressed.
    pub compressed: bool,
    /// DEK id.
    pub dek_id: String,
    /// Nonce, hex.
    pub nonce: String,
    /// Nonce prefix (fixed per DEK), hex.
    pub nonce_prefix: String,
    /// Nonce counter (the record's sequence number under its DEK).
    pub nonce_counter: u64,
    /// Whole value length.
    pub total_len: usize,
    /// Ciphertext length (the plaintext's length, compressed if it was).
    pub ciphertext_len: usize,
    /// Tag length.
    pub tag_len: usize,
    /// Bytes the envelope adds.
    pub overhead: usize,
}

/// Reads the header of `sealed`.
pub fn inspect(sealed: &[u8]) -> Result<Inspection, NotV1> {
    let h = Header::parse(sealed)?;
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&h.nonce[4..]);
    Ok(Inspection {
        version: h.version,
        suite: h.suite,
        suite_name: "AES-256-GCM (96-bit nonce, 128-bit tag)",
        flags: h.flags,
        compressed: h.compressed(),
        dek_id: h.dek_id.to_string(),
        nonce: hex::encode(h.nonce),
        nonce_prefix: hex::encode(&h.nonce[..4]),
        nonce_counter: u64::from_be_bytes(counter),
        total_len: sealed.len(),
        ciphertext_len: h.ciphertext_len(),
        tag_len: crate::envelope::TAG_LEN,
        overhead: OVERHEAD,
    })
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sealed value, envelope v{}", self.version)?;
        writeln!(f, "  suite       0x{:02x} {}", self.suite, self.suite_name)?;
        writeln!(
            f,
            "  flags       0x{:02x} ({})",
            self.flags,
            if self.compressed {
                "zstd-compressed plaintext"
            } else {
                "not compressed"
            }
        )?;
        writeln!(f, "  dek id      {}", self.dek_id)?;
        writeln!(
            f,
            "  nonce       {} (prefix {}, counter {})",
            self.nonce, self.nonce_prefix, self.nonce_counter
        )?;
        writeln!(
            f,
            "  size        {} bytes = 31 header + {} ciphertext + {} tag",
            self.total_len, self.ciphertext_len, self.tag_len
        )?;
        write!(
            f,
            "  to open it: the DEK {} from the registry, unwrapped by its tenant's key; the tenant (byok.tenant) and the record key",
            self.dek_id
        )
    }
}

/// Decodes hex text (whitespace ignored, optional `0x`).
pub fn decode_hex(text: &str) -> Result<Vec<u8>, NotHex> {
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let clean = clean.strip_prefix("0x").unwrap_or(&clean);
    hex::decode(clean).map_err(NotHex)
}

/// The input of `byok inspect --hex` is not hex.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("the input is not hex: {0}")]
pub struct NotHex(#[from] hex::FromHexError);
