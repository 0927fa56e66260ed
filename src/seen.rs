//! Records already written, as compact keys: the first 16 bytes of SHA-256 over a record's
//! provenance (`byok.src`) and its plaintext's SHA-256, so that only a record that opened to the
//! same plaintext counts as a copy (a junk record with a copied `byok.src` does not), at 16 bytes
//! a record (a false match needs a 2^-64 collision).
//!
//! It must never be keyed by a header alone.

use std::collections::{HashSet, VecDeque};

/// A record's key: provenance and plaintext digest.
pub type Key = [u8; 16];

/// The key of a record with provenance `src` whose plaintext has SHA-256 `digest`.
pub fn key(src: &str, digest: &[u8; 32]) -> Key {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    h.update(src.as_bytes());
    h.update(&[0]);
    h.update(digest);
    let mut k = [0u8; 16];
    k.copy_from_slice(&h.finish().as_ref()[..16]);
    k
}

/// SHA-256 of a plaintext.
pub fn digest(plain: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, plain);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A set of keys, optionally only the last `window` inserted.
#[derive(Debug, Default)]
pub struct Seen {
    set: HashSet<Key>,
    order: VecDeque<Key>,
    window: Option<usize>,
}

impl Seen {
    /// Keeps every key.
    pub fn unbounded() -> Self {
        Self::default()
    }

    /// Keeps the last `window` keys.
    pub fn window(window: usize) -> Self {
        Self {
            window: Some(window.max(1)),
            ..Self::default()
        }
    }

    /// Whether `k` was inserted (and not yet forgotten).
    pub fn contains(&self, k: &Key) -> bool {
        self.set.contains(k)
    }

    /// Inserts `k`; false when it was there.
    pub fn insert(&mut self, k: Key) -> bool {
        if !self.set.insert(k) {
            return false;
        }
        if let Some(w) = self.window {
            self.order.push_back(k);
            if self.order.len() > w
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
        true
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// No key held.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copied_src_with_another_plaintext_is_another_record() {
        let a = key("capture/0/1", &digest(b"hello"));
        assert_eq!(a, key("capture/0/1", &digest(b"hello")));
        assert_ne!(a, key("capture/0/1", &digest(b"junk")));
        assert_ne!(a, key("capture/0/2", &digest(b"hello")));
    }

    #[test]
    fn a_window_forgets_the_oldest() {
        let mut s = Seen::window(2);
        let k = |i: u8| key("s", &[i; 32]);
        assert!(s.insert(k(1)));
        assert!(!s.insert(k(1)));
        assert!(s.insert(k(2)));
        assert!(s.insert(k(3)));
        assert!(!s.contains(&k(1)) && s.contains(&k(2)) && s.contains(&k(3)));
        assert_eq!(s.len(), 2);
    }
}
