//! Property tests of the envelope: round trips for any length up to 1 MiB, any tenant and record
//! key, across both implementations; any single flipped bit in the value, the tenant or the key
//! makes opening fail; concurrent sealing with one DEK never repeats a nonce.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

use std::collections::HashSet;
use std::sync::Arc;

use byok::dek::{ActiveDek, DekLimits};
use byok::envelope::{self, Compression, OpenError, reference};
use proptest::prelude::*;

/// Bytes of a given length from a seed (generating 1 MiB element by element would be slow).
fn bytes(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            if compressible {
                b"chat message body "[i % 18]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

fn lengths() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..64, 0usize..4096, 0usize..=(1 << 20)]
}

fn dek() -> ActiveDek {
    ActiveDek::generate(DekLimits::default()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_any_length_tenant_and_key(
        len in lengths(),
        seed in any::<u64>(),
        compressible in any::<bool>(),
        compress in any::<bool>(),
        tenant in "\\PC{0,40}",
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
    ) {
        let d = dek();
        let plaintext = bytes(len, seed, compressible);
        let compression = if compress { Compression::at_least(64, 1) } else { Compression::off() };
        let mut sealed = Vec::new();
        let s = envelope::seal_into(&d, &tenant, key.as_deref(), &plaintext, compression, &mut sealed).unwrap();
        prop_assert_eq!(s.len, sealed.len());
        if !s.compressed {
            prop_assert_eq!(sealed.len(), plaintext.len() + envelope::OVERHEAD);
        }
        prop_assert_eq!(&envelope::open(d.key(), &tenant, key.as_deref(), &sealed).unwrap(), &plaintext);
        // cross-check: the independent implementation opens what ring sealed...
        prop_assert_eq!(&reference::open(d.key().secret_bytes(), &tenant, key.as_deref(), &sealed).unwrap(), &plaintext);
        // ...and ring opens what it seals
        let nonce: [u8; 12] = sealed[19..31].try_into().unwrap();
        let body = if s.compressed { zstd::bulk::compress(&plaintext, 1).unwrap() } else { plaintext.clone() };
        let other = reference::seal(d.key().secret_bytes(), d.id(), nonce, sealed[2], &tenant, key.as_deref(), &body);
        prop_assert_eq!(&envelope::open(d.key(), &tenant, key.as_deref(), &other).unwrap(), &plaintext);
    }

    #[test]
    fn any_flipped_bit_in_value_fails(len in 0usize..2048, seed in any::<u64>(), bit in any::<prop::sample::Index>()) {
        let d = dek();
        let plaintext = bytes(len, seed, false);
        let mut sealed = Vec::new();
        envelope::seal_into(&d, "acme", Some(b"conv-1"), &plaintext, Compression::off(), &mut sealed).unwrap();
        let i = bit.index(sealed.len() * 8);
        sealed[i / 8] ^= 1 << (i % 8);
        prop_assert_eq!(envelope::open(d.key(), "acme", Some(b"conv-1"), &sealed), Err(OpenError));
        prop_assert_eq!(reference::open(d.key().secret_bytes(), "acme", Some(b"conv-1"), &sealed), Err(OpenError));
    }

    #[test]
    fn any_flipped_bit_in_tenant_or_key_fails(
        tenant in "[a-z0-9._-]{1,40}",
        key in proptest::collection::vec(any::<u8>(), 1..100),
        bit in any::<prop::sample::Index>(),
        in_tenant in any::<bool>(),
    ) {
        let d = dek();
        let mut sealed = Vec::new();
        envelope::seal_into(&d, &tenant, Some(&key), b"payload", Compression::off(), &mut sealed).unwrap();
        if in_tenant {
            let mut t = tenant.clone().into_bytes();
            let i = bit.index(t.len() * 8);
            t[i / 8] ^= 1 << (i % 8);
            // only flips that leave valid UTF-8 can be asked for through a &str
            if let Ok(t) = String::from_utf8(t) {
                prop_assert_eq!(envelope::open(d.key(), &t, Some(&key), &sealed), Err(OpenError));
            }
        } else {
            let mut k = key.clone();
            let i = bit.index(k.len() * 8);
            k[i / 8] ^= 1 << (i % 8);
            prop_assert_eq!(envelope::open(d.key(), &tenant, Some(&k), &sealed), Err(OpenError));
        }
        // and a present key is not the same as a null one
        prop_assert_eq!(envelope::open(d.key(), &tenant, None, &sealed), Err(OpenError));
    }
}

#[test]
fn concurrent_sealing_with_one_dek_never_repeats_a_nonce() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 5_000;
    let d = Arc::new(dek());
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let d = Arc::clone(&d);
            std::thread::spawn(move || {
                let mut values = Vec::with_capacity(PER_THREAD);
                for i in 0..PER_THREAD {
                    let mut out = Vec::new();
                    let body = format!("thread {t} record {i}");
                    envelope::seal_into(
                        &d,
                        "acme",
                        None,
                        body.as_bytes(),
                        Compression::off(),
                        &mut out,
                    )
                    .unwrap();
                    values.push((body, out));
                }
                values
            })
        })
        .collect();
    let mut nonces = HashSet::new();
    for h in handles {
        for (body, sealed) in h.join().unwrap() {
            assert!(nonces.insert(sealed[19..31].to_vec()), "nonce repeated");
            assert_eq!(
                envelope::open(d.key(), "acme", None, &sealed).unwrap(),
                body.as_bytes()
            );
        }
    }
    assert_eq!(nonces.len(), THREADS * PER_THREAD);
    assert_eq!(d.nonces_used(), (THREADS * PER_THREAD) as u64);
}

#[test]
fn concurrent_sealing_stops_exactly_at_max_messages() {
    let limit = 1000;
    let d = Arc::new(
        ActiveDek::generate(
            DekLimits::new(limit, u64::MAX, std::time::Duration::from_secs(600)).unwrap(),
        )
        .unwrap(),
    );
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let d = Arc::clone(&d);
            std::thread::spawn(move || {
                (0..600)
                    .filter(|_| {
                        envelope::seal_into(
                            &d,
                            "a",
                            None,
                            b"x",
                            Compression::off(),
                            &mut Vec::new(),
                        )
                        .is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let sealed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(sealed as u64, limit);
    assert!(envelope::seal_into(&d, "a", None, b"x", Compression::off(), &mut Vec::new()).is_err());
}
