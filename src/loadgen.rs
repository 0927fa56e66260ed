//! `byok loadgen`: synthetic capture traffic for load tests, the benchmark harness and the
//! compose deployment. Chat-like JSON messages (channel, conversation, sender, body, sent_at)
//! of a fixed size or of realistic sizes, spread over tenants, produced at a rate, as fast as
//! possible, or as fast as a consumer group keeps up (bounded lag).
//!
//! It must never be part of the worker: it writes capture traffic, as a producer of the platform
//! would.

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio::sync::watch;

/// Message sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// Every message has exactly this many bytes (at least [`MIN_FIXED_SIZE`]).
    Fixed(usize),
    /// Realistic chat: mostly tens of bytes of body, some hundreds, a few KiB.
    Chat,
}

/// The smallest fixed size: tenant, message id and body fields with short ids.
pub const MIN_FIXED_SIZE: usize = 128;

/// Where the tenant is named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantIn {
    /// The JSON field `tenant_id` only (the worker scans for it).
    Json,
    /// The `tenant-id` header too.
    Header,
}

/// What to produce.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Kafka bootstrap servers.
    pub bootstrap: String,
    /// Topic to produce to.
    pub topic: String,
    /// Messages to produce (`None`: until stopped).
    pub messages: Option<u64>,
    /// Messages per second (`None`: as fast as possible, or as the followed group keeps up).
    pub rate: Option<f64>,
    /// Tenant ids, used round-robin.
    pub tenants: Vec<String>,
    /// Message sizes.
    pub size: Size,
    /// Where the tenant is named.
    pub tenant_in: TenantIn,
    /// Stay at most `max_lag` records ahead of this consumer group's committed offsets.
    pub follow: Option<(String, u64)>,
    /// Extra producer settings.
    pub producer: Vec<(String, String)>,
    /// First message number (message ids and content derive from it).
    pub start: u64,
}

/// What was produced.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadStats {
    /// Messages acknowledged.
    pub sent: u64,
    /// Value bytes acknowledged.
    pub bytes: u64,
    /// Time since the start.
    pub elapsed: Duration,
    /// Time spent waiting for the followed group.
    pub waited: Duration,
}

fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

const CHANNELS: [&str; 5] = ["whatsapp", "wechat", "sms", "imessage", "teams"];
const WORDS: [&str; 16] = [
    "please", "confirm", "the", "trade", "at", "101.25", "call", "me", "before", "close", "client",
    "wants", "to", "sell", "bonds", "today",
];

/// Message number `i` of `tenant`: (record key = conversation, JSON value). Deterministic.
pub fn message(i: u64, tenant: &str, size: Size) -> (String, String) {
    let mut next = xorshift(i);
    let conversation = format!("{tenant}-conv-{}", next() % 40);
    let channel = CHANNELS[(next() % 5) as usize];
    let sender = format!("+44 20 7946 {:04}", next() % 10_000);
    let sent_at = format!(
        "2026-11-29T{:02}:{:02}:{:02}Z",
        9 + (i / 3600) % 8,
        (i / 60) % 60,
        i % 60
    );
    let body = match size {
        Size::Chat => {
            // sizes from tens of bytes to a few KiB (a few long ones)
            let words = match next() % 20 {
                0 => 400 + (next() % 300) as usize,
                1..=4 => 40 + (next() % 60) as usize,
                _ => 2 + (next() % 20) as usize,
            };
            let words: Vec<&str> = (0..words).map(|_| WORDS[(next() % 16) as usize]).collect();
            words.join(" ")
        }
        Size::Fixed(_) => String::new(),
    };
    let json = |body: &str| {
        serde_json::json!({
            "tenant_id": tenant,
            "message_id": format!("m-{i}"),
            "channel": channel,
            "conversation": conversation,
            "sender": sender,
            "body": body,
            "sent_at": sent_at,
        })
        .to_string()
    };
    let value = match size {
        Size::Chat => json(&body),
        Size::Fixed(n) if json("").len() > n => {
            // too small for every field: tenant, id and body only
            let empty = serde_json::json!({"tenant_id": tenant, "message_id": format!("m-{i}"), "body": ""})
                .to_string()
                .len();
            let body = "x".repeat(n.saturating_sub(empty));
            serde_json::json!({"tenant_id": tenant, "message_id": format!("m-{i}"), "body": body})
                .to_string()
        }
        Size::Fixed(n) => {
            let empty = json("").len();
            let mut body = String::with_capacity(n.saturating_sub(empty));
            while body.len() < n.saturating_sub(empty) {
                body.push_str(WORDS[(next() % 16) as usize]);
                body.push(' ');
            }
            body.truncate(n.saturating_sub(empty));
            json(&body)
        }
    };
    (conversation, value)
}

/// Records the group has not committed yet, over every partition of `topic`.
fn group_lag(c: &BaseConsumer, topic: &str, partitions: &[i32]) -> Option<u64> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    let mut lag = 0u64;
    for e in committed.elements() {
        let (lo, hi) = c
            .fetch_watermarks(topic, e.partition(), Duration::from_secs(5))
            .ok()?;
        let done = match e.offset() {
            Offset::Offset(o) => o,
            _ => lo,
        };
        lag += (hi - done.max(lo)).max(0) as u64;
    }
    Some(lag)
}

/// The load could not be generated.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// No tenant to write messages for.
    #[error("no tenants: give --tenants N or --tenant NAME")]
    NoTenants,
    /// A fixed size too small for the message's JSON fields.
    #[error(
        "--size {size} is too small for the JSON fields around the body (tenant {tenant:?}); use at least {least} bytes"
    )]
    SizeTooSmall {
        /// The size asked for.
        size: usize,
        /// The longest tenant id.
        tenant: String,
        /// The least size that fits.
        least: usize,
    },
    /// A Kafka client could not be made or asked.
    #[error("Kafka ({step}): {source}")]
    Kafka {
        /// What was done.
        step: &'static str,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
    /// A message was not acknowledged.
    #[error("produce to {topic}: {source}")]
    Produce {
        /// The topic.
        topic: String,
        /// Cause.
        source: rdkafka::error::KafkaError,
    },
}

/// A fixed `--size` must leave room for the JSON fields around the body.
fn check_size(opts: &LoadOptions) -> Result<(), LoadError> {
    if let Size::Fixed(n) = opts.size {
        let longest = opts
            .tenants
            .iter()
            .max_by_key(|t| t.len())
            .map_or("", String::as_str);
        let probe = message(
            opts.start + opts.messages.unwrap_or(1 << 40),
            longest,
            opts.size,
        )
        .1;
        if n < MIN_FIXED_SIZE || probe.len() != n {
            return Err(LoadError::SizeTooSmall {
                size: n,
                tenant: longest.to_owned(),
                least: probe.len().max(MIN_FIXED_SIZE),
            });
        }
    }
    Ok(())
}

/// With `--follow-group`: a consumer of that group and the topic's partitions, to read its lag.
#[allow(clippy::type_complexity)]
fn follower(opts: &LoadOptions) -> Result<Option<(BaseConsumer, Vec<i32>, u64)>, LoadError> {
    Ok(match &opts.follow {
        Some((group, max_lag)) => {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &opts.bootstrap)
                .set("group.id", group)
                .create()
                .map_err(|source| LoadError::Kafka {
                    step: "create the group follower",
                    source,
                })?;
            let md = c
                .fetch_metadata(Some(&opts.topic), Duration::from_secs(10))
                .map_err(|source| LoadError::Kafka {
                    step: "read the topic's partitions",
                    source,
                })?;
            let partitions: Vec<i32> = md
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            Some((c, partitions, *max_lag))
        }
        None => None,
    })
}

/// Produces until `opts.messages` are acknowledged or `stop` turns true; calls `progress`
/// about once a second.
pub async fn run(
    opts: &LoadOptions,
    mut stop: watch::Receiver<bool>,
    mut progress: impl FnMut(&LoadStats),
) -> Result<LoadStats, LoadError> {
    if opts.tenants.is_empty() {
        return Err(LoadError::NoTenants);
    }
    check_size(opts)?;
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &opts.bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    for (k, v) in &opts.producer {
        pc.set(k, v);
    }
    let producer: FutureProducer = pc.create().map_err(|source| LoadError::Kafka {
        step: "create the producer",
        source,
    })?;
    let follower = follower(opts)?;
    let started = Instant::now();
    let mut stats = LoadStats::default();
    let mut last_progress = Instant::now();
    let window = 2000u64;
    let mut i = 0u64;
    loop {
        if *stop.borrow() || opts.messages.is_some_and(|n| i >= n) {
            break;
        }
        // one window of sends in flight at a time
        let n = opts.messages.map_or(window, |m| (m - i).min(window));
        let batch: Vec<(String, String, usize)> = (i..i + n)
            .map(|k| {
                let t = (k as usize) % opts.tenants.len();
                let (key, value) = message(opts.start + k, &opts.tenants[t], opts.size);
                (key, value, t)
            })
            .collect();
        let sends = batch.iter().map(|(key, value, t)| {
            let mut rec = FutureRecord::to(&opts.topic)
                .key(key.as_bytes())
                .payload(value.as_bytes());
            if opts.tenant_in == TenantIn::Header {
                rec = rec.headers(OwnedHeaders::new().insert(Header {
                    key: "tenant-id",
                    value: Some(opts.tenants[*t].as_bytes()),
                }));
            }
            producer.send(rec, Timeout::Never)
        });
        for (r, (_, v, _)) in futures::future::join_all(sends)
            .await
            .into_iter()
            .zip(&batch)
        {
            r.map_err(|(source, _)| LoadError::Produce {
                topic: opts.topic.clone(),
                source,
            })?;
            stats.sent += 1;
            stats.bytes += v.len() as u64;
        }
        i += n;
        if let Some(rate) = opts.rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                tokio::select! {
                    _ = tokio::time::sleep(due - now) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        if let Some((c, partitions, max_lag)) = &follower {
            let waiting = Instant::now();
            while !*stop.borrow() {
                match group_lag(c, &opts.topic, partitions) {
                    Some(lag) if lag <= *max_lag => break,
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            stats.waited += waiting.elapsed();
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            stats.elapsed = started.elapsed();
            progress(&stats);
            last_progress = Instant::now();
        }
    }
    let _ = producer.flush(Timeout::After(Duration::from_secs(30)));
    stats.elapsed = started.elapsed();
    Ok(stats)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fixed_sizes_are_exact_json_with_the_tenant() {
        for n in [MIN_FIXED_SIZE, 180, 256, 1024, 16 * 1024] {
            for i in 0..50 {
                let (_, v) = message(i, "tenant-007", Size::Fixed(n));
                assert_eq!(v.len(), n, "message {i} of size {n}");
                let j: serde_json::Value = serde_json::from_str(&v).unwrap();
                assert_eq!(j["tenant_id"], "tenant-007");
            }
        }
    }

    #[test]
    fn chat_sizes_range_from_tens_of_bytes_to_kibibytes_and_repeat() {
        let lens: Vec<usize> = (0..2000)
            .map(|i| message(i, "acme", Size::Chat).1.len())
            .collect();
        assert!(lens.iter().any(|&l| l < 250));
        assert!(lens.iter().any(|&l| l > 2048));
        assert_eq!(
            message(7, "acme", Size::Chat),
            message(7, "acme", Size::Chat)
        );
        assert_ne!(
            message(7, "acme", Size::Chat),
            message(8, "acme", Size::Chat)
        );
    }
}
