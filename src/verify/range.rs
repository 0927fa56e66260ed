//! Which checkpoints `byok verify` checks: those written in a time range (`created`) and naming
//! an offset range of an input or output partition (docs/audit-v1.md §7). Signatures and chains
//! are always followed over the whole audit log; coverage is checked for the checkpoints in range.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::audit::codec::{format_ms, parse_time};
use crate::audit::records::Checkpoint;

/// Which checkpoints to check; all when empty.
#[derive(Debug, Clone, Default)]
pub struct VerifyRange {
    /// Checkpoints created at or after this.
    pub since: Option<OffsetDateTime>,
    /// Checkpoints created before this.
    pub until: Option<OffsetDateTime>,
    /// Checkpoints whose input ranges or leaves touch one of these (any when empty).
    pub offsets: Vec<OffsetRange>,
}

/// Offsets `[from, to)` of a topic, one partition or all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetRange {
    /// Input or output topic.
    pub topic: String,
    /// One partition, or every one.
    pub partition: Option<i32>,
    /// First offset (inclusive).
    pub from: i64,
    /// Last offset (exclusive).
    pub to: i64,
}

impl OffsetRange {
    fn touches(&self, topic: &str, partition: i32, from: i64, to: i64) -> bool {
        self.topic == topic
            && self.partition.is_none_or(|p| p == partition)
            && from < self.to
            && to > self.from
    }
}

impl FromStr for OffsetRange {
    type Err = String;

    /// `TOPIC:PARTITION:FROM-TO` or `TOPIC:FROM-TO` (every partition); `FROM` or `TO` may be left
    /// out (`capture.messages:3:1200-`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fix = "write TOPIC:PARTITION:FROM-TO or TOPIC:FROM-TO, e.g. capture.messages:3:1200-1700 (either end may be left out)";
        let parts: Vec<&str> = s.split(':').collect();
        let (topic, partition, span) = match parts.as_slice() {
            [t, p, r] => {
                let p: i32 = p.parse().map_err(|_| {
                    format!("--offsets {s}: partition {p:?} is not a number: {fix}")
                })?;
                (*t, Some(p), *r)
            }
            [t, r] => (*t, None, *r),
            _ => return Err(format!("--offsets {s}: {fix}")),
        };
        let Some((a, b)) = span.split_once('-') else {
            return Err(format!("--offsets {s}: no FROM-TO: {fix}"));
        };
        let bound = |x: &str, none: i64| -> Result<i64, String> {
            match x {
                "" => Ok(none),
                x => x
                    .parse::<i64>()
                    .ok()
                    .filter(|o| *o >= 0)
                    .ok_or_else(|| format!("--offsets {s}: {x:?} is not an offset: {fix}")),
            }
        };
        let (from, to) = (bound(a, 0)?, bound(b, i64::MAX)?);
        if topic.is_empty() || from >= to {
            return Err(format!("--offsets {s}: an empty range: {fix}"));
        }
        Ok(Self {
            topic: topic.to_owned(),
            partition,
            from,
            to,
        })
    }
}

impl VerifyRange {
    /// No range: the whole log.
    pub fn is_whole(&self) -> bool {
        self.since.is_none() && self.until.is_none() && self.offsets.is_empty()
    }

    /// Whether a checkpoint is in range.
    pub(super) fn contains(&self, c: &Checkpoint) -> bool {
        if self.is_whole() {
            return true;
        }
        if self.since.is_some() || self.until.is_some() {
            let Ok(created) = parse_time(&c.created, "created") else {
                return true; // checked: a signed checkpoint's time parses
            };
            if self.since.is_some_and(|s| created < s) || self.until.is_some_and(|u| created >= u) {
                return false;
            }
        }
        self.offsets.is_empty()
            || self.offsets.iter().any(|r| {
                c.ranges
                    .iter()
                    .any(|x| r.touches(&x.topic, x.partition, x.from, x.to))
                    || c.out.iter().any(|o| {
                        o.runs
                            .iter()
                            .any(|[f, n]| r.touches(&o.topic, o.partition, *f, f + n))
                    })
            })
    }
}

impl fmt::Display for VerifyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole() {
            return f.write_str("all");
        }
        let mut parts = Vec::new();
        if let Some(s) = self.since {
            parts.push(format!("since {}", format_ms(s)));
        }
        if let Some(u) = self.until {
            parts.push(format!("until {}", format_ms(u)));
        }
        for r in &self.offsets {
            let p = r.partition.map_or("*".to_owned(), |p| p.to_string());
            let to = if r.to == i64::MAX {
                String::new()
            } else {
                r.to.to_string()
            };
            parts.push(format!("{}:{p}:{}-{to}", r.topic, r.from));
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::OffsetRange;

    #[test]
    fn offset_ranges_parse_or_say_how_to_write_them() {
        let r: OffsetRange = "capture.messages:3:1200-1700".parse().unwrap();
        assert_eq!((r.partition, r.from, r.to), (Some(3), 1200, 1700));
        let r: OffsetRange = "archive.messages:10-".parse().unwrap();
        assert_eq!((r.partition, r.from, r.to), (None, 10, i64::MAX));
        for bad in ["t:x:1-2", "t:5-1", "t:1", "t:-3-4", "a:b:c:1-2", ":1-2"] {
            let e = bad.parse::<OffsetRange>().unwrap_err();
            assert!(e.contains("TOPIC:PARTITION:FROM-TO"), "{bad}: {e}");
        }
    }
}
