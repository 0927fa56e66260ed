//! Envelope throughput: `cargo bench --bench envelope`, then `scripts/bench-ratios` for the table.
//!
//! Ids (criterion groups `seal`, `open`, `open_tampered`), at 256 B, 1 KiB and 16 KiB:
//! - `seal/raw-ring/<size>`: the baseline, ring's `seal_in_place_separate_tag` on a preallocated
//!   buffer, nothing else.
//! - `seal/raw-ring-aad/<size>`, `seal/raw-ring-aad-copy/<size>`: the baseline plus the format's
//!   AAD, then plus the copy of the plaintext into an output buffer.
//! - `seal/<size>`: the full seal path the worker runs: nonce from a block reserved per 500
//!   records (with the DEK limit checks), header, AAD, copy into the output buffer, tag,
//!   appending to a reused buffer as the worker does per batch.
//! - `seal/alloc/<size>`: the same into a fresh `Vec` per record, to show what allocation costs.
//! - `seal/one/<size>`: one record at a time through `seal_into` (a reservation per record).
//! - `seal/aes-gcm/<size>`: the independent RustCrypto implementation.
//! - `open/<size>`, `open/aes-gcm/<size>`, and `open_tampered/<size>` (one flipped tag bit: the
//!   failure path must not be slower than success).
//!
//! Compare ratios within one run (the machines are noisy), never absolute figures across runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use byok::dek::{ActiveDek, DekLimits, MAX_MESSAGES_CEILING};
use byok::envelope::{self, Compression, reference};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const SIZES: [usize; 3] = [256, 1024, 16 * 1024];
const TENANT: &str = "acme-financial";
const KEY: &[u8] = b"conversation-8d1e4f";
const BLOCK: u64 = 500;
/// AAD length for TENANT and KEY: 31-byte header, u16 + tenant, u32 + key.
const HEADER_AAD_LEN: usize = 31 + 2 + TENANT.len() + 4 + KEY.len();

fn dek() -> ActiveDek {
    // Limits far beyond what a bench run seals, so the DEK never retires mid-measurement.
    let limits =
        DekLimits::new(MAX_MESSAGES_CEILING, u64::MAX, Duration::from_secs(1 << 30)).unwrap();
    ActiveDek::generate(limits).unwrap()
}

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn seal(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal");
    for size in SIZES {
        let pt = plaintext(size);
        g.throughput(Throughput::Bytes(size as u64));

        let raw_key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).unwrap());
        let mut buf = pt.clone();
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("raw-ring", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&counter.to_be_bytes());
                let tag = raw_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::empty(),
                        &mut buf,
                    )
                    .unwrap();
                black_box(&tag);
            })
        });

        // The worker reserves nonces once per tenant group of a batch (500 records here).
        // The same ring call with what the v1 format makes it do beyond the baseline: the AAD
        // (header, tenant, record key: 70 bytes here) and the copy of the plaintext into the
        // output. They split the gap between the full path and raw ring into ring's share and ours.
        let aad = [0x5au8; HEADER_AAD_LEN];
        g.bench_with_input(BenchmarkId::new("raw-ring-aad", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&counter.to_be_bytes());
                let tag = raw_key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(n),
                        Aad::from(&aad[..]),
                        &mut buf,
                    )
                    .unwrap();
                black_box(&tag);
            })
        });
        let mut copy = Vec::with_capacity(size + 64);
        g.bench_with_input(
            BenchmarkId::new("raw-ring-aad-copy", size),
            &size,
            |b, _| {
                b.iter(|| {
                    counter += 1;
                    let mut n = [0u8; 12];
                    n[4..].copy_from_slice(&counter.to_be_bytes());
                    copy.clear();
                    copy.extend_from_slice(black_box(&pt));
                    let tag = raw_key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(n),
                            Aad::from(&aad[..]),
                            &mut copy,
                        )
                        .unwrap();
                    black_box(&tag);
                })
            },
        );

        let d = dek();
        let mut block = d.reserve(BLOCK, BLOCK * size as u64).unwrap();
        let mut out = Vec::with_capacity(size + envelope::OVERHEAD);
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                if block.remaining() == 0 {
                    block = d.reserve(BLOCK, BLOCK * size as u64).unwrap();
                }
                out.clear();
                envelope::seal_next(
                    &mut block,
                    TENANT,
                    Some(KEY),
                    black_box(&pt),
                    Compression::off(),
                    &mut out,
                )
                .unwrap();
                black_box(&out);
            })
        });

        let mut block = d.reserve(BLOCK, BLOCK * size as u64).unwrap();
        g.bench_with_input(BenchmarkId::new("alloc", size), &size, |b, _| {
            b.iter(|| {
                if block.remaining() == 0 {
                    block = d.reserve(BLOCK, BLOCK * size as u64).unwrap();
                }
                let mut out = Vec::new();
                envelope::seal_next(
                    &mut block,
                    TENANT,
                    Some(KEY),
                    black_box(&pt),
                    Compression::off(),
                    &mut out,
                )
                .unwrap();
                black_box(out)
            })
        });

        // One record at a time: a nonce reservation (clock read, two atomics) per record.
        g.bench_with_input(BenchmarkId::new("one", size), &size, |b, _| {
            b.iter(|| {
                out.clear();
                envelope::seal_into(
                    &d,
                    TENANT,
                    Some(KEY),
                    black_box(&pt),
                    Compression::off(),
                    &mut out,
                )
                .unwrap();
                black_box(&out);
            })
        });

        let key = *d.key().secret_bytes();
        let mut counter = 0u64;
        g.bench_with_input(BenchmarkId::new("aes-gcm", size), &size, |b, _| {
            b.iter(|| {
                counter += 1;
                let mut n = [0u8; 12];
                n[4..].copy_from_slice(&counter.to_be_bytes());
                black_box(reference::seal(
                    &key,
                    d.id(),
                    n,
                    0,
                    TENANT,
                    Some(KEY),
                    black_box(&pt),
                ))
            })
        });
    }
    g.finish();
}

fn open(c: &mut Criterion) {
    let mut g = c.benchmark_group("open");
    for size in SIZES {
        let d = dek();
        let mut sealed = Vec::new();
        envelope::seal_into(
            &d,
            TENANT,
            Some(KEY),
            &plaintext(size),
            Compression::off(),
            &mut sealed,
        )
        .unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                black_box(envelope::open(d.key(), TENANT, Some(KEY), black_box(&sealed)).unwrap())
            })
        });
        let key = *d.key().secret_bytes();
        g.bench_with_input(BenchmarkId::new("aes-gcm", size), &size, |b, _| {
            b.iter(|| {
                black_box(reference::open(&key, TENANT, Some(KEY), black_box(&sealed)).unwrap())
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("open_tampered");
    for size in SIZES {
        let d = dek();
        let mut sealed = Vec::new();
        envelope::seal_into(
            &d,
            TENANT,
            Some(KEY),
            &plaintext(size),
            Compression::off(),
            &mut sealed,
        )
        .unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 0x01;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &size, |b, _| {
            b.iter(|| {
                black_box(
                    envelope::open(d.key(), TENANT, Some(KEY), black_box(&sealed)).unwrap_err(),
                )
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = seal, open
}
criterion_main!(benches);
