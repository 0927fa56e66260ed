//! Leaves, Merkle roots and chain links of audit log v1 (docs/audit-v1.md §2-3). Pure: the
//! bytes hashed are exactly those the page defines, so an independent verifier reaches the same
//! hashes.

use ring::digest::{Context, SHA256, digest};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The link before the first batch of a partition, and the `wprev` of a writer's first record.
pub const ZERO: Hash = [0; 32];

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut c = Context::new(&SHA256);
    for p in parts {
        c.update(p);
    }
    let mut out = [0; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// SHA-256 of `bytes`.
pub fn hash(bytes: &[u8]) -> Hash {
    let mut out = [0; 32];
    out.copy_from_slice(digest(&SHA256, bytes).as_ref());
    out
}

/// One produced record, as its leaf sees it.
#[derive(Debug, Clone, Copy)]
pub struct LeafRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The `byok.src` header's value, empty when absent.
    pub src: &'a [u8],
    /// Record key.
    pub key: Option<&'a [u8]>,
    /// Record value.
    pub value: Option<&'a [u8]>,
    /// Headers in record order.
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

fn push_str16(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len().min(u16::MAX as usize) as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn push_opt_hash(out: &mut Vec<u8>, x: Option<&[u8]>) {
    match x {
        None => out.push(0),
        Some(x) => {
            out.push(1);
            out.extend_from_slice(&hash(x));
        }
    }
}

/// SHA-256 of the headers' encoding (`u16 count || name/value pairs`).
pub fn headers_hash(headers: &[(&str, Option<&[u8]>)]) -> Hash {
    let mut c = Context::new(&SHA256);
    c.update(&(headers.len() as u16).to_be_bytes());
    for (name, value) in headers {
        c.update(&(name.len() as u16).to_be_bytes());
        c.update(name.as_bytes());
        match value {
            None => c.update(&u32::MAX.to_be_bytes()),
            Some(v) => {
                c.update(&(v.len() as u32).to_be_bytes());
                c.update(v);
            }
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(c.finish().as_ref());
    out
}

/// `leaf_data` of §2.
pub fn leaf_data(r: &LeafRecord<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + r.topic.len() + 12 + 2 + r.src.len() + 33 * 2 + 32);
    push_str16(&mut out, r.topic.as_bytes());
    out.extend_from_slice(&(r.partition as u32).to_be_bytes());
    out.extend_from_slice(&(r.offset as u64).to_be_bytes());
    push_str16(&mut out, r.src);
    push_opt_hash(&mut out, r.key);
    push_opt_hash(&mut out, r.value);
    out.extend_from_slice(&headers_hash(r.headers));
    out
}

/// `leaf_hash = SHA-256(0x00 || leaf_data)`.
pub fn leaf_hash(r: &LeafRecord<'_>) -> Hash {
    sha256(&[&[0], &leaf_data(r)])
}

/// The RFC 6962 Merkle Tree Hash of leaf hashes (in the order given).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => hash(&[]),
        1 => leaves[0],
        n => {
            // the largest power of two below n
            let k = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            let (l, r) = (root(&leaves[..k]), root(&leaves[k..]));
            sha256(&[&[1], &l, &r])
        }
    }
}

/// One input partition's range in a batch, as chained.
#[derive(Debug, Clone, Copy)]
pub struct ChainStep<'a> {
    /// The previous link of the partition.
    pub prev: &'a Hash,
    /// Input topic.
    pub topic: &'a str,
    /// Input partition.
    pub partition: i32,
    /// The committed offset the batch started from.
    pub from: i64,
    /// The offset the batch commits.
    pub to: i64,
    /// Records consumed there.
    pub n: u64,
    /// The checkpoint's root.
    pub root: &'a Hash,
}

/// `link` of §3.
pub fn link(s: &ChainStep<'_>) -> Hash {
    sha256(&[
        b"byok-chain-v1",
        s.prev,
        &(s.topic.len() as u16).to_be_bytes(),
        s.topic.as_bytes(),
        &(s.partition as u32).to_be_bytes(),
        &(s.from as u64).to_be_bytes(),
        &(s.to as u64).to_be_bytes(),
        &s.n.to_be_bytes(),
        s.root,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_splits_at_the_largest_power_of_two_below_n() {
        let l: Vec<Hash> = (0..5u8).map(|i| [i; 32]).collect();
        let node = |a: &Hash, b: &Hash| sha256(&[&[1], a, b]);
        assert_eq!(root(&l[..1]), l[0]);
        assert_eq!(root(&l[..2]), node(&l[0], &l[1]));
        assert_eq!(root(&l[..3]), node(&node(&l[0], &l[1]), &l[2]));
        assert_eq!(
            root(&l[..5]),
            node(&node(&node(&l[0], &l[1]), &node(&l[2], &l[3])), &l[4])
        );
    }
}
