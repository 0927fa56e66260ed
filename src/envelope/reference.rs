//! A second, independent implementation of envelope v1 over RustCrypto's `aes-gcm`, written
//! straight from docs/envelope-v1.md without sharing the ring path's AAD or layout code.
//!
//! Tests seal with one implementation and open with the other, and the bench runs both, so a
//! bug in either (or in ring) shows up as a disagreement. It is slower than the ring path and
//! not used by the worker.
//!
//! It must never be used on the worker's path.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

use super::{FLAG_ZSTD, OpenError, SUITE_AES_256_GCM, VERSION_1};
use crate::dek::{DEK_LEN, DekId, NONCE_LEN};

fn aad(head: &[u8], tenant: &str, record_key: Option<&[u8]>) -> Vec<u8> {
    let key = record_key.unwrap_or_default();
    let mut aad = Vec::with_capacity(head.len() + 6 + tenant.len() + key.len());
    aad.extend_from_slice(head);
    aad.extend_from_slice(
        &u16::try_from(tenant.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    aad.extend_from_slice(tenant.as_bytes());
    aad.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    aad.extend_from_slice(key);
    aad
}

/// Seals `body` (already compressed when `flags` has bit 0) with the given nonce.
/// The caller guarantees the nonce is fresh for this key.
pub fn seal(
    dek: &[u8; DEK_LEN],
    dek_id: DekId,
    nonce: [u8; NONCE_LEN],
    flags: u8,
    tenant: &str,
    record_key: Option<&[u8]>,
    body: &[u8],
) -> Vec<u8> {
    let mut value = Vec::with_capacity(31 + body.len() + 16);
    value.push(VERSION_1);
    value.push(SUITE_AES_256_GCM);
    value.push(flags);
    value.extend_from_slice(dek_id.as_bytes());
    value.extend_from_slice(&nonce);
    let aad = aad(&value, tenant, record_key);
    let mut buf = body.to_vec();
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(dek));
    // Fails only for plaintexts beyond GCM's limit, far beyond what this module is used for.
    let tag = match cipher.encrypt_in_place_detached(Nonce::from_slice(&nonce), &aad, &mut buf) {
        Ok(tag) => tag,
        Err(_) => return Vec::new(),
    };
    value.extend_from_slice(&buf);
    value.extend_from_slice(&tag);
    value
}

/// Opens a v1 value; the same opaque error as the ring path.
pub fn open(
    dek: &[u8; DEK_LEN],
    tenant: &str,
    record_key: Option<&[u8]>,
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < 47
        || sealed[0] != VERSION_1
        || sealed[1] != SUITE_AES_256_GCM
        || sealed[2] & !FLAG_ZSTD != 0
        || tenant.len() > usize::from(u16::MAX)
    {
        return Err(OpenError);
    }
    let (head, rest) = sealed.split_at(31);
    let (ct, tag) = rest.split_at(rest.len() - 16);
    let aad = aad(head, tenant, record_key);
    let mut buf = ct.to_vec();
    let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(dek));
    cipher
        .decrypt_in_place_detached(
            Nonce::from_slice(&head[19..31]),
            &aad,
            &mut buf,
            Tag::from_slice(tag),
        )
        .map_err(|_| OpenError)?;
    if head[2] & FLAG_ZSTD != 0 {
        super::decompress(&buf, super::MAX_DECOMPRESSED_LEN)
    } else {
        Ok(buf)
    }
}
