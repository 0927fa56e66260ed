//! Records the broker refuses for good: too large for the topic, a topic that does not exist, a
//! topic the worker may not write. Such a record is never retried forever and never stops the
//! worker: it goes to the quarantine instead, sealed as it was (topic missing, not authorized:
//! the record under its tenant's DEK, with `byok.reason` and `byok.detail` added) or, when it is
//! too large for Kafka, as a marker holding the reason and the provenance only (the original
//! stays in the input topic until its retention). Every other produce error is transient: the
//! sink retries it with a bounded backoff (at-least-once) or aborts and retries the transaction.
//!
//! This module must never redirect a record of the registry, the keks or the quarantine topic
//! (nowhere else could hold it: those wait and retry), never put plaintext into a marker, and
//! never echo a tenant header that is not a tenant id.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use super::stage::Out;
use crate::envelope::headers::{MAX_DETAIL_LEN, QuarantineReason, VERSION_VALUE, names};
use crate::tenant::TenantId;

/// How long a topic that refused a record is skipped (its records go straight to the quarantine)
/// before it is tried again: an operator who creates the topic or grants the ACL is picked up
/// within this.
pub const TOPIC_RECHECK: Duration = Duration::from_secs(30);

/// A refusal that no retry can change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// The record is larger than the producer or the topic accepts.
    TooLarge,
    /// The topic (or partition) does not exist.
    TopicMissing,
    /// The worker's principal may not write the topic.
    NotAuthorized,
}

impl Refusal {
    /// The permanent refusal behind a produce error, or `None` when a retry may succeed.
    pub fn classify(e: &KafkaError) -> Option<Self> {
        use RDKafkaErrorCode as C;
        match e.rdkafka_error_code()? {
            C::MessageSizeTooLarge | C::MessageBatchTooLarge | C::InvalidMessageSize => {
                Some(Self::TooLarge)
            }
            C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition => {
                Some(Self::TopicMissing)
            }
            C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed | C::PolicyViolation => {
                Some(Self::NotAuthorized)
            }
            _ => None,
        }
    }

    /// The quarantine reason it becomes.
    pub const fn reason(self) -> QuarantineReason {
        match self {
            Self::TooLarge => QuarantineReason::TooLarge,
            Self::TopicMissing => QuarantineReason::TopicMissing,
            Self::NotAuthorized => QuarantineReason::NotAuthorized,
        }
    }
}

/// What the sink knows about refusals, shared by its produce tasks.
#[derive(Debug)]
pub struct Refusals {
    quarantine_topic: Arc<str>,
    /// Topics whose records are never redirected.
    kept: Vec<String>,
    /// Topics that refused a record, and when.
    topics: Mutex<HashMap<Arc<str>, (Refusal, Instant)>>,
    /// `byok.src` of records found too large (exactly-once: applied when the batch is retried).
    too_large: Mutex<HashSet<Bytes>>,
    counts: [AtomicU64; 3],
}

impl Refusals {
    /// Refused records go to `quarantine_topic`; records of `kept` topics (the registry, the keks,
    /// the quarantine itself) are never redirected.
    pub fn new(quarantine_topic: &str, kept: Vec<String>) -> Self {
        let mut kept = kept;
        kept.push(quarantine_topic.to_owned());
        Self {
            quarantine_topic: Arc::from(quarantine_topic),
            kept,
            topics: Mutex::new(HashMap::new()),
            too_large: Mutex::new(HashSet::new()),
            counts: Default::default(),
        }
    }

    /// Whether a refused `out` may go to the quarantine: a sealed record (it carries `byok.src`,
    /// and `byok.dek` unless it is too large) of a topic that is not kept.
    pub fn redirectable(&self, out: &Out, refusal: Refusal) -> bool {
        !self.kept.iter().any(|t| **t == *out.topic)
            && header(out, names::SRC).is_some()
            && (refusal == Refusal::TooLarge || header(out, names::DEK).is_some())
    }

    /// Remembers a refusal, so that a retried transaction sends the record (or the topic's
    /// records) to the quarantine at once.
    pub fn learn(&self, out: &Out, refusal: Refusal) {
        match refusal {
            Refusal::TooLarge => {
                if let Some(src) = header(out, names::SRC) {
                    lock(&self.too_large).insert(src.clone());
                }
            }
            _ => {
                lock(&self.topics).insert(Arc::clone(&out.topic), (refusal, Instant::now()));
            }
        }
    }

    /// The refusal already known for `out`, if any (a topic's is forgotten after
    /// [`TOPIC_RECHECK`], so that the topic is tried again).
    pub fn known(&self, out: &Out) -> Option<Refusal> {
        if let Some(src) = header(out, names::SRC)
            && lock(&self.too_large).contains(src)
        {
            return Some(Refusal::TooLarge);
        }
        let mut topics = lock(&self.topics);
        match topics.get(&out.topic) {
            Some((r, since)) if since.elapsed() < TOPIC_RECHECK => Some(*r),
            Some(_) => {
                topics.remove(&out.topic);
                None
            }
            None => None,
        }
    }

    /// `outs` with every record of a known refusal replaced by its quarantine record.
    pub fn rewrite(&self, outs: Vec<Out>) -> Vec<Out> {
        if lock(&self.topics).is_empty() && lock(&self.too_large).is_empty() {
            return outs;
        }
        outs.into_iter()
            .map(|o| match self.known(&o) {
                Some(r) if self.redirectable(&o, r) => self.replacement(&o, r),
                _ => o,
            })
            .collect()
    }

    /// Forgets the too-large records of a batch that was produced.
    pub fn settled(&self, outs: &[Out]) {
        let mut set = lock(&self.too_large);
        if set.is_empty() {
            return;
        }
        for o in outs {
            if let Some(src) = header(o, names::SRC) {
                set.remove(src);
            }
        }
    }

    /// The quarantine record that stands for a refused `out`, counted.
    pub fn replacement(&self, out: &Out, refusal: Refusal) -> Out {
        let reason = refusal.reason();
        self.counts[refusal as usize].fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!("byok_records_quarantined_total", "reason" => reason.as_str())
            .increment(1);
        let src = header(out, names::SRC).cloned().unwrap_or_default();
        let detail = match refusal {
            Refusal::TooLarge => format!(
                "the sealed record ({} bytes) is larger than {} accepts (producer message.max.bytes or the topic's max.message.bytes); not stored: the original stays at byok.src until the input's retention",
                out.len(),
                out.topic
            ),
            Refusal::TopicMissing => format!(
                "topic {} does not exist; create it, then move these records with byok drain --tenant",
                out.topic
            ),
            Refusal::NotAuthorized => format!(
                "the worker may not write {}; grant its principal Write on it, then byok drain --tenant",
                out.topic
            ),
        };
        let mut detail = detail;
        if detail.len() > MAX_DETAIL_LEN {
            let mut cut = MAX_DETAIL_LEN;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        tracing::warn!(topic = %out.topic, reason = reason.as_str(), src = %String::from_utf8_lossy(&src), "record refused by the broker for good; quarantined");
        let tenant = header(out, names::TENANT)
            .filter(|t| std::str::from_utf8(t).is_ok_and(|t| TenantId::parse(t).is_ok()))
            .cloned();
        let mut headers: Vec<(&'static str, Bytes)> = vec![
            (names::VERSION, Bytes::from_static(VERSION_VALUE)),
            (
                names::REASON,
                Bytes::from_static(reason.as_str().as_bytes()),
            ),
        ];
        if let Some(t) = tenant {
            headers.push((names::TENANT, t));
        }
        headers.push((names::SRC, src));
        headers.push((names::DETAIL, Bytes::from(detail)));
        let value = if refusal == Refusal::TooLarge {
            // the reason and the provenance only: never the plaintext, and no ciphertext that
            // would be refused again
            Vec::new()
        } else {
            if let Some(dek) = header(out, names::DEK) {
                headers.push((names::DEK, dek.clone()));
            }
            out.value.clone()
        };
        Out {
            topic: Arc::clone(&self.quarantine_topic),
            key: out.key.clone(),
            value,
            headers,
        }
    }

    /// Records quarantined because of refusals so far, by reason.
    pub fn counts(&self) -> Vec<(QuarantineReason, u64)> {
        [
            Refusal::TooLarge,
            Refusal::TopicMissing,
            Refusal::NotAuthorized,
        ]
        .into_iter()
        .map(|r| (r.reason(), self.counts[r as usize].load(Ordering::Relaxed)))
        .filter(|(_, n)| *n > 0)
        .collect()
    }
}

fn header<'a>(out: &'a Out, name: &str) -> Option<&'a Bytes> {
    out.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
}

use crate::lock;

#[cfg(test)]
mod tests {
    use super::*;

    fn archived(topic: &str, tenant: &str) -> Out {
        Out {
            topic: Arc::from(topic),
            key: Some(b"k".to_vec()),
            value: vec![1, 2, 3],
            headers: vec![
                (names::VERSION, Bytes::from_static(b"1")),
                (names::TENANT, Bytes::from(tenant.to_owned())),
                (
                    names::DEK,
                    Bytes::from_static(b"0b4f2c1e-7f0e-4c59-9d3a-2f6b1d9e8a10"),
                ),
                (names::SRC, Bytes::from_static(b"capture/0/7")),
            ],
        }
    }

    fn get<'a>(o: &'a Out, name: &str) -> Option<&'a [u8]> {
        header(o, name).map(|b| b.as_ref())
    }

    #[test]
    fn produce_errors_are_classified() {
        use RDKafkaErrorCode as C;
        let e = |c| KafkaError::MessageProduction(c);
        assert_eq!(
            Refusal::classify(&e(C::MessageSizeTooLarge)),
            Some(Refusal::TooLarge)
        );
        assert_eq!(
            Refusal::classify(&e(C::UnknownTopic)),
            Some(Refusal::TopicMissing)
        );
        assert_eq!(
            Refusal::classify(&e(C::UnknownTopicOrPartition)),
            Some(Refusal::TopicMissing)
        );
        assert_eq!(
            Refusal::classify(&e(C::TopicAuthorizationFailed)),
            Some(Refusal::NotAuthorized)
        );
        for transient in [
            C::MessageTimedOut,
            C::NotEnoughReplicas,
            C::LeaderNotAvailable,
            C::RequestTimedOut,
            C::BrokerTransportFailure,
        ] {
            assert_eq!(Refusal::classify(&e(transient)), None, "{transient:?}");
        }
    }

    #[test]
    fn a_refused_archive_record_keeps_its_ciphertext_and_gains_a_reason() {
        let r = Refusals::new("byok.quarantine", vec!["byok.deks".into()]);
        let out = archived("archive.acme", "acme");
        assert!(r.redirectable(&out, Refusal::TopicMissing));
        let q = r.replacement(&out, Refusal::TopicMissing);
        assert_eq!(&*q.topic, "byok.quarantine");
        assert_eq!(q.value, out.value);
        assert_eq!(get(&q, names::REASON), Some(&b"topic-missing"[..]));
        assert_eq!(get(&q, names::DEK), get(&out, names::DEK));
        assert_eq!(get(&q, names::SRC), Some(&b"capture/0/7"[..]));
        assert_eq!(get(&q, names::TENANT), Some(&b"acme"[..]));
        assert!(String::from_utf8_lossy(get(&q, names::DETAIL).unwrap()).contains("archive.acme"));
        assert_eq!(r.counts(), vec![(QuarantineReason::TopicMissing, 1)]);
    }

    #[test]
    fn a_too_large_record_becomes_a_marker_without_its_value() {
        let r = Refusals::new("byok.quarantine", vec![]);
        let out = archived("archive.acme", "acme");
        let q = r.replacement(&out, Refusal::TooLarge);
        assert!(q.value.is_empty());
        assert_eq!(get(&q, names::DEK), None);
        assert_eq!(get(&q, names::REASON), Some(&b"too-large"[..]));
        assert_eq!(get(&q, names::SRC), Some(&b"capture/0/7"[..]));
    }

    #[test]
    fn kept_topics_are_never_redirected_and_a_bad_tenant_is_never_echoed() {
        let r = Refusals::new("byok.quarantine", vec!["byok.deks".into()]);
        for topic in ["byok.deks", "byok.quarantine"] {
            assert!(!r.redirectable(&archived(topic, "acme"), Refusal::TopicMissing));
        }
        let q = r.replacement(
            &archived("archive.x", "not a tenant\n"),
            Refusal::NotAuthorized,
        );
        assert_eq!(get(&q, names::TENANT), None);
    }

    #[test]
    fn a_learnt_refusal_rewrites_the_retry_and_a_topic_is_tried_again_later() {
        let r = Refusals::new("byok.quarantine", vec![]);
        let out = archived("archive.acme", "acme");
        r.learn(&out, Refusal::NotAuthorized);
        let outs = r.rewrite(vec![
            archived("archive.acme", "acme"),
            archived("archive.globex", "globex"),
        ]);
        assert_eq!(&*outs[0].topic, "byok.quarantine");
        assert_eq!(&*outs[1].topic, "archive.globex");
        // past the recheck interval the topic is tried again
        lock(&r.topics).get_mut("archive.acme").unwrap().1 =
            Instant::now().checked_sub(TOPIC_RECHECK).unwrap();
        assert_eq!(r.known(&out), None);
        // too large: by provenance, forgotten once the batch settled
        r.learn(&out, Refusal::TooLarge);
        assert_eq!(
            r.known(&archived("archive.other", "acme")),
            Some(Refusal::TooLarge)
        );
        r.settled(&[out]);
        assert_eq!(r.known(&archived("archive.other", "acme")), None);
    }
}
