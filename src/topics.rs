//! `byok config check --connect`: the topics the worker reads and writes, as the cluster has
//! them. Each must exist (the worker never creates topics), and each output topic needs the right
//! cleanup policy: the archive and the quarantine `delete` (compaction would keep only the last
//! record of each conversation key), `byok.deks` and `byok.keks` `compact` (deletion by age would
//! destroy the only wrapped copy of a DEK). It also shows each topic's `max.message.bytes`.
//!
//! This module must never create, alter or write a topic: it only describes.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;

use crate::config::Config;

/// What a topic is for, and so which cleanup policy it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Captured plaintext (read).
    Input,
    /// Sealed records.
    Archive,
    /// Records that could not be archived.
    Quarantine,
    /// Wrapped DEKs (compacted).
    Registry,
    /// Tenants' last known public keys (compacted).
    Keks,
    /// The audit log (never compacted).
    Audit,
}

impl Role {
    /// The cleanup policy the topic needs, if any.
    const fn needs(self) -> Option<&'static str> {
        match self {
            Role::Input => None,
            Role::Archive | Role::Quarantine | Role::Audit => Some("delete"),
            Role::Registry | Role::Keks => Some("compact"),
        }
    }

    const fn why(self) -> &'static str {
        match self {
            Role::Input => "",
            Role::Archive | Role::Quarantine => {
                "compaction keeps only the last record of each key (conversation): it would delete archived messages"
            }
            Role::Audit => {
                "compaction keeps only each writer's last record: it would delete checkpoints and break every chain"
            }
            Role::Registry | Role::Keks => {
                "deletion by age removes the only wrapped copy of a DEK (or a tenant's last known public key)"
            }
        }
    }
}

/// One topic as found.
#[derive(Debug, Clone, Serialize)]
pub struct TopicCheck {
    /// Topic name.
    pub topic: String,
    /// What it is for.
    pub role: Role,
    /// Partitions (0 when it does not exist).
    pub partitions: usize,
    /// `cleanup.policy`, when the broker described it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cleanup_policy: Option<String>,
    /// `max.message.bytes`, when the broker described it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<String>,
    /// What is wrong and the fix, or `None` when it is right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// What may go wrong (the worker runs), and the fix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// The topics could not be looked at.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the Kafka cluster at {bootstrap}: {source}")]
pub struct ConnectError {
    bootstrap: String,
    #[source]
    source: rdkafka::error::KafkaError,
}

/// Every topic of `config` with its role: the input topics, the archive (one per BYOK tenant for
/// a `{tenant}` template), the quarantine, the registry and the keks.
pub fn topics_of(config: &Config) -> Vec<(String, Role)> {
    let mut out: Vec<(String, Role)> = config
        .kafka
        .input_topics
        .iter()
        .map(|t| (t.clone(), Role::Input))
        .collect();
    if config.kafka.archive_topic.is_per_tenant() {
        for (id, t) in &config.tenants {
            if t.byok_enabled {
                out.push((config.kafka.archive_topic.topic_for(id), Role::Archive));
            }
        }
    } else {
        out.push((
            config.kafka.archive_topic.as_str().to_owned(),
            Role::Archive,
        ));
    }
    out.push((config.kafka.quarantine_topic.clone(), Role::Quarantine));
    out.push((config.kafka.registry_topic.clone(), Role::Registry));
    out.push((config.kafka.keks_topic.clone(), Role::Keks));
    if let Some(a) = &config.audit {
        out.push((a.topic.clone(), Role::Audit));
    }
    out
}

/// Looks at every topic of `config` on its cluster.
pub async fn check(config: &Config) -> Result<Vec<TopicCheck>, ConnectError> {
    let failed = |source| ConnectError {
        bootstrap: config.kafka.bootstrap_servers.clone(),
        source,
    };
    let mut cc = crate::kafka::admin_config(config);
    cc.set("group.id", "byok-config-check");
    let consumer: BaseConsumer = cc.create().map_err(failed)?;
    let metadata =
        tokio::task::block_in_place(|| consumer.fetch_metadata(None, Duration::from_secs(15)))
            .map_err(failed)?;
    let partitions: BTreeMap<String, usize> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect();
    let wanted = topics_of(config);
    let admin: AdminClient<DefaultClientContext> = cc.create().map_err(failed)?;
    let present: Vec<&str> = wanted
        .iter()
        .filter(|(t, _)| partitions.contains_key(t))
        .map(|(t, _)| t.as_str())
        .collect();
    let specs: Vec<ResourceSpecifier<'_>> = present
        .iter()
        .map(|t| ResourceSpecifier::Topic(t))
        .collect();
    let mut described: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(15)));
    if let Ok(results) = admin.describe_configs(&specs, &opts).await {
        for r in results.into_iter().flatten() {
            if let rdkafka::admin::OwnedResourceSpecifier::Topic(name) = &r.specifier {
                let entries = r
                    .entries
                    .iter()
                    .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                    .collect();
                described.insert(name.clone(), entries);
            }
        }
    }
    let hold = config.keys.unknown_key_hold;
    Ok(wanted
        .into_iter()
        .map(|(topic, role)| {
            let mut c = judge(topic, role, &partitions, &described);
            c.warning = retention_warning(&c, &described, hold);
            c
        })
        .collect())
}

/// An input topic whose retention is not well over `keys.unknown_key_hold`: records held that
/// long could be deleted before they are sealed.
fn retention_warning(
    c: &TopicCheck,
    described: &BTreeMap<String, BTreeMap<String, String>>,
    hold: Duration,
) -> Option<String> {
    if c.role != Role::Input {
        return None;
    }
    let ms: i64 = described.get(&c.topic)?.get("retention.ms")?.parse().ok()?;
    if ms < 0 || u128::from(ms.unsigned_abs()) >= 2 * hold.as_millis() {
        return None;
    }
    Some(format!(
        "retention.ms {ms} is not well over keys.unknown_key_hold ({}): records of a tenant held that long could be deleted before they are sealed; keep retention at least twice the hold, or shorten the hold",
        humantime::format_duration(hold)
    ))
}

/// One topic's verdict.
fn judge(
    topic: String,
    role: Role,
    partitions: &BTreeMap<String, usize>,
    described: &BTreeMap<String, BTreeMap<String, String>>,
) -> TopicCheck {
    let n = partitions.get(&topic).copied().unwrap_or(0);
    let conf = described.get(&topic);
    let cleanup_policy = conf.and_then(|c| c.get("cleanup.policy").cloned());
    let max_message_bytes = conf.and_then(|c| c.get("max.message.bytes").cloned());
    let problem = if n == 0 {
        let policy = role
            .needs()
            .map(|p| format!(" --config cleanup.policy={p}"))
            .unwrap_or_default();
        Some(format!(
            "does not exist; the worker never creates topics: kafka-topics.sh --create --topic {topic} --partitions N --replication-factor 3{policy}"
        ))
    } else {
        match (role.needs(), cleanup_policy.as_deref()) {
            (Some(need), Some(have)) if !have.split(',').any(|p| p.trim() == need) => {
                Some(format!(
                    "cleanup.policy is {have}, it must be {need}: {}; kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config cleanup.policy={need}",
                    role.why()
                ))
            }
            _ => None,
        }
    };
    TopicCheck {
        topic,
        role,
        partitions: n,
        cleanup_policy,
        max_message_bytes,
        problem,
        warning: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(role: Role, n: usize, policy: Option<&str>) -> TopicCheck {
        let partitions = BTreeMap::from([("t".to_owned(), n)]);
        let mut described = BTreeMap::new();
        if let Some(p) = policy {
            described.insert(
                "t".to_owned(),
                BTreeMap::from([("cleanup.policy".to_owned(), p.to_owned())]),
            );
        }
        judge("t".into(), role, &partitions, &described)
    }

    #[test]
    fn the_wrong_cleanup_policy_or_a_missing_topic_is_a_problem_with_its_fix() {
        assert!(one(Role::Archive, 3, Some("delete")).problem.is_none());
        assert!(one(Role::Registry, 1, Some("compact")).problem.is_none());
        assert!(
            one(Role::Registry, 1, Some("compact,delete"))
                .problem
                .is_none()
        );
        let p = one(Role::Archive, 3, Some("compact")).problem.unwrap();
        assert!(
            p.contains("must be delete") && p.contains("--add-config cleanup.policy=delete"),
            "{p}"
        );
        let p = one(Role::Registry, 1, Some("delete")).problem.unwrap();
        assert!(
            p.contains("must be compact") && p.contains("only wrapped copy"),
            "{p}"
        );
        let p = one(Role::Keks, 0, None).problem.unwrap();
        assert!(
            p.contains("does not exist") && p.contains("cleanup.policy=compact"),
            "{p}"
        );
        // a broker that does not describe configs: existence alone is checked
        assert!(one(Role::Quarantine, 1, None).problem.is_none());
        assert!(one(Role::Input, 4, Some("compact")).problem.is_none());
    }

    #[test]
    fn an_input_retention_not_well_over_the_hold_is_a_warning() {
        let day = Duration::from_secs(24 * 3600);
        let described = |ms: &str| {
            BTreeMap::from([(
                "t".to_owned(),
                BTreeMap::from([("retention.ms".to_owned(), ms.to_owned())]),
            )])
        };
        let c = one(Role::Input, 3, None);
        let w = retention_warning(&c, &described("86400000"), day).unwrap();
        assert!(w.contains("unknown_key_hold") && w.contains("1day"), "{w}");
        assert!(retention_warning(&c, &described("604800000"), day).is_none());
        assert!(retention_warning(&c, &described("-1"), day).is_none());
        assert!(retention_warning(&one(Role::Archive, 3, None), &described("1"), day).is_none());
    }
}
