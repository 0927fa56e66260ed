//! Unit tests of the trust rules (pure).
use super::*;
use crate::audit::merkle::ZERO;
use crate::audit::records::Session;
use crate::kms::KekId;

const KID: &str = "https://acme.vault.azure.net/keys/acme-kek/0123456789abcdef0123456789abcdef";

fn session(writer: &str, seed: u8) -> Session {
    Session::from_seed(writer, &[seed; 32]).unwrap()
}

fn signers(sessions: &[&Session]) -> Signers {
    let mut s = Signers::new(Pinned::new(), "test");
    let now = OffsetDateTime::now_utc();
    for x in sessions {
        s.trust_session_for_tests(
            x.writer(),
            &x.public_key(),
            now - time::Duration::days(30),
            now + time::Duration::days(30),
        );
    }
    s
}

fn record(dek: DekId, wrapped: u8) -> DekRecord {
    DekRecord {
        dek,
        tenant: "acme".into(),
        kek: KekId::parse(KID).unwrap(),
        wrapped: vec![wrapped; 384],
        created: OffsetDateTime::now_utc() - time::Duration::hours(1),
        worker: "w".into(),
        rewrapped: None,
        wrapped_locally: false,
    }
}

fn place(offset: i64) -> Place {
    Place {
        topic: "byok.deks".into(),
        partition: 0,
        offset,
    }
}

struct Fixture {
    signers: Signers,
    unsigned_below: i64,
}

impl Fixture {
    fn apply(
        &self,
        t: &mut Trusted<DekRecord>,
        offset: i64,
        key: &DekId,
        value: Option<&[u8]>,
    ) -> Option<Rejection> {
        let below = self.unsigned_below;
        let unsigned_ok = move |p: &Place| p.offset < below;
        let rules = Rules {
            signers: &self.signers,
            unsigned_ok: &unsigned_ok,
            check: &|_: &DekRecord| Ok(()),
        };
        let k = key.to_string();
        t.apply(&rules, place(offset), Some(k.as_bytes()), value, false)
    }
}

#[test]
fn a_signed_record_is_used_once_and_its_copy_is_the_same_value() {
    let w = session("w1", 1);
    let f = Fixture {
        signers: signers(&[&w]),
        unsigned_below: 0,
    };
    let id = DekId::new_v7();
    let v = w
        .record_signer()
        .sign(&record(id, 1).to_json(), RecordKind::Dek, &ZERO);
    let mut t = Trusted::default();
    assert_eq!(f.apply(&mut t, 0, &id, Some(&v)), None);
    let copy = RecordKind::Dek.copy_key(&id.to_string());
    let rules = Rules {
        signers: &f.signers,
        unsigned_ok: &|_: &Place| false,
        check: &|_: &DekRecord| Ok(()),
    };
    assert_eq!(
        t.apply(&rules, place(9), Some(copy.as_bytes()), Some(&v), true),
        None
    );
    assert_eq!(t.get(&id.to_string()).unwrap().record.wrapped, vec![1; 384]);
    assert!(t.rejected.is_empty());
}

#[test]
fn forged_unsigned_relabelled_and_tombstone_records_are_not_used() {
    let w = session("w1", 1);
    let mallory = session("w1", 2); // same writer id, uncertified key
    let f = Fixture {
        signers: signers(&[&w]),
        unsigned_below: 0,
    };
    let id = DekId::new_v7();
    let good = w
        .record_signer()
        .sign(&record(id, 1).to_json(), RecordKind::Dek, &ZERO);
    let mut t = Trusted::default();
    assert_eq!(f.apply(&mut t, 0, &id, Some(&good)), None);

    let forged =
        mallory
            .record_signer()
            .sign(&record(id, 7).to_json(), RecordKind::Dek, &hash(&good));
    assert!(matches!(
        f.apply(&mut t, 1, &id, Some(&forged)),
        Some(Rejection::Forged(_))
    ));
    assert_eq!(
        f.apply(&mut t, 2, &id, Some(&record(id, 7).to_json())),
        Some(Rejection::Unsigned)
    );
    assert_eq!(f.apply(&mut t, 3, &id, None), Some(Rejection::Tombstone));
    // a valid record of another DEK under this DEK's key
    let other = DekId::new_v7();
    let moved = w
        .record_signer()
        .sign(&record(other, 7).to_json(), RecordKind::Dek, &hash(&good));
    assert!(matches!(
        f.apply(&mut t, 4, &id, Some(&moved)),
        Some(Rejection::Relabelled { .. })
    ));
    // a signature that verifies over different bytes
    let mut flipped = good.clone();
    let at = flipped.len() / 3;
    flipped[at] ^= 1;
    assert!(f.apply(&mut t, 5, &id, Some(&flipped)).is_some());
    assert_eq!(t.get(&id.to_string()).unwrap().value, good);
    // the topic ends on a refused record: the good value is to be put back
    assert_eq!(t.to_restore().len(), 1);
    assert_eq!(f.apply(&mut t, 6, &id, Some(&good)), None);
    assert!(
        t.to_restore().is_empty(),
        "the topic ends on the current value"
    );
    let kinds: Vec<&str> = t.rejected.iter().map(|r| r.why.kind()).collect();
    assert_eq!(
        kinds[..4],
        ["forged", "unsigned", "tombstoned", "relabelled"]
    );
}

#[test]
fn a_rewrap_supersedes_and_the_older_value_replayed_is_rolled_back() {
    let w = session("w1", 1);
    let f = Fixture {
        signers: signers(&[&w]),
        unsigned_below: 0,
    };
    let id = DekId::new_v7();
    let s = w.record_signer();
    let v1 = s.sign(&record(id, 1).to_json(), RecordKind::Dek, &ZERO);
    let mut r2 = record(id, 2);
    r2.rewrapped = Some(OffsetDateTime::now_utc());
    let v2 = s.sign(&r2.to_json(), RecordKind::Dek, &hash(&v1));
    let mut t = Trusted::default();
    assert_eq!(f.apply(&mut t, 0, &id, Some(&v1)), None);
    assert_eq!(f.apply(&mut t, 1, &id, Some(&v2)), None);
    // the older value met again is history, unless it is the topic's last word on the DEK
    assert_eq!(f.apply(&mut t, 2, &id, Some(&v1)), None);
    assert_eq!(f.apply(&mut t, 3, &id, Some(&v2)), None);
    t.finish();
    assert!(t.rejected.is_empty(), "v1 then v2: nothing rolled back");
    assert_eq!(f.apply(&mut t, 4, &id, Some(&v1)), None);
    t.finish();
    assert_eq!(t.rejected.len(), 1);
    assert_eq!(t.rejected[0].why, Rejection::RolledBack);
    assert_eq!(t.rejected[0].place.offset, 4);
    assert_eq!(t.get(&id.to_string()).unwrap().record.wrapped, vec![2; 384]);
    // a value no successor names: rolled back at once
    let mut r3 = record(id, 3);
    r3.rewrapped = Some(OffsetDateTime::now_utc());
    let v3 = s.sign(&r3.to_json(), RecordKind::Dek, &hash(&v1));
    assert_eq!(
        f.apply(&mut t, 5, &id, Some(&v3)),
        Some(Rejection::RolledBack)
    );
}

#[test]
fn unsigned_records_are_trusted_only_below_the_mark_and_outside_validity_is_forged() {
    let w = session("w1", 1);
    let f = Fixture {
        signers: signers(&[&w]),
        unsigned_below: 10,
    };
    let id = DekId::new_v7();
    let mut t = Trusted::default();
    assert_eq!(
        f.apply(&mut t, 3, &id, Some(&record(id, 1).to_json())),
        None
    );
    assert_eq!(t.trusted_unsigned, 1);
    let late = DekId::new_v7();
    assert_eq!(
        f.apply(&mut t, 10, &late, Some(&record(late, 1).to_json())),
        Some(Rejection::Unsigned)
    );
    let mut old = record(late, 1);
    old.created = OffsetDateTime::now_utc() - time::Duration::days(90);
    let v = w
        .record_signer()
        .sign(&old.to_json(), RecordKind::Dek, &ZERO);
    assert_eq!(
        f.apply(&mut t, 11, &late, Some(&v)),
        Some(Rejection::Forged("signed outside its session's validity"))
    );
}

#[test]
fn two_writers_stating_the_same_key_record_both_count_as_current() {
    let (a, b) = (session("a", 1), session("b", 2));
    let signers = signers(&[&a, &b]);
    let kek = |kid: &str, seen: &str| {
        KekRecord {
            tenant: "acme".into(),
            version: crate::kms::VersionInfo {
                kid: KekId::parse(kid).unwrap(),
                kty: "RSA".into(),
                n: vec![0xC5; 384],
                e: vec![1, 0, 1],
                key_ops: vec![],
                enabled: true,
                nbf: None,
                exp: None,
                recovery_level: None,
                recoverable_days: None,
            },
            seen: seen.into(),
        }
        .to_json()
    };
    let now = crate::registry::format_time(OffsetDateTime::now_utc());
    let v2 = KID.replace("0123", "9999");
    let va = a
        .record_signer()
        .sign(&kek(KID, &now), RecordKind::Kek, &ZERO);
    let vb = b
        .record_signer()
        .sign(&kek(KID, &now), RecordKind::Kek, &ZERO);
    let vb2 = b
        .record_signer()
        .sign(&kek(&v2, &now), RecordKind::Kek, &hash(&vb));
    let too_small = |r: &KekRecord| {
        if r.version.bits() < 3072 {
            Err("smaller than 3072 bits".to_owned())
        } else {
            Ok(())
        }
    };
    let rules = Rules {
        signers: &signers,
        unsigned_ok: &|_: &Place| false,
        check: &too_small,
    };
    let mut t: Trusted<KekRecord> = Trusted::default();
    for (i, v) in [&va, &vb, &vb2].into_iter().enumerate() {
        assert_eq!(
            t.apply(&rules, place(i as i64), Some(b"acme"), Some(v), false),
            None
        );
    }
    assert_eq!(t.get("acme").unwrap().record.version.kid.as_str(), v2);
    // a replay of the first value, last in the topic
    assert_eq!(
        t.apply(&rules, place(3), Some(b"acme"), Some(&va), false),
        None
    );
    t.finish();
    assert_eq!(t.rejected.len(), 1);
    assert_eq!(t.rejected[0].why, Rejection::RolledBack);
    assert_eq!(t.get("acme").unwrap().record.version.kid.as_str(), v2);
}
