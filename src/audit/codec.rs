//! The encodings of audit log v1 (docs/audit-v1.md §0): canonical base64url, millisecond UTC
//! times, signed JSON values (`S` with `,"sig":"B"}` appended) and the rule that no object
//! repeats a member name.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use time::OffsetDateTime;
use time::macros::format_description;

use super::AuditError;

/// Canonical base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Decodes canonical base64url: no padding, unused trailing bits zero (any other spelling of
/// the same bytes is refused, so a value has one text).
pub fn unb64(text: &str, field: &'static str) -> Result<Vec<u8>, AuditError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| AuditError::Encoding {
            field,
            reason: "not canonical base64url without padding",
        })?;
    // the engine already refuses padding and non-zero trailing bits; re-encoding proves it
    if b64(&bytes) != text {
        return Err(AuditError::Encoding {
            field,
            reason: "not the canonical base64url spelling",
        });
    }
    Ok(bytes)
}

/// A 32-byte hash from canonical base64url.
pub fn unb64_32(text: &str, field: &'static str) -> Result<[u8; 32], AuditError> {
    unb64(text, field)?
        .try_into()
        .map_err(|_| AuditError::Encoding {
            field,
            reason: "not 32 bytes",
        })
}

/// `YYYY-MM-DDTHH:MM:SS.sssZ`, UTC, milliseconds.
pub fn format_ms(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}

/// Parses a time of this page (`...sssZ`) or, for fields that come from the envelope's
/// records, RFC 3339.
pub fn parse_time(text: &str, field: &'static str) -> Result<OffsetDateTime, AuditError> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(|_| {
        AuditError::Encoding {
            field,
            reason: "not an RFC 3339 time",
        }
    })
}

/// A signed value: `unsigned` (ending in `}`) with `,"<member>":"<b64url sig>"}` in place of
/// its closing brace.
pub fn append_signature(unsigned: &str, member: &str, sig: &[u8]) -> String {
    let body = unsigned.strip_suffix('}').unwrap_or(unsigned);
    format!("{body},\"{member}\":\"{}\"}}", b64(sig))
}

/// Splits a signed value into the signed text `S` and the signature, as §0 says: the value
/// ends with `"}`, the last `,"<member>":"` starts the last member, the signature text is
/// canonical. Everything else is refused.
pub fn split_signed(value: &[u8], member: &'static str) -> Result<(String, Vec<u8>), AuditError> {
    let text = std::str::from_utf8(value).map_err(|_| AuditError::Encoding {
        field: "value",
        reason: "not UTF-8",
    })?;
    let bad = |reason| AuditError::Signed { reason };
    let Some(inner) = text.strip_suffix("\"}") else {
        return Err(bad("the value does not end with the signature member"));
    };
    let marker = format!(",\"{member}\":\"");
    let Some(at) = inner.rfind(&marker) else {
        return Err(bad("no signature member"));
    };
    let sig_text = &inner[at + marker.len()..];
    // the signature text must be the whole last member: base64url characters only
    if sig_text.is_empty()
        || !sig_text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad("the signature member is not the last member"));
    }
    let sig = unb64(sig_text, "sig")?;
    let signed = format!("{}}}", &inner[..at]);
    check_json(signed.as_bytes())?;
    check_json(value)?;
    Ok((signed, sig))
}

/// Refuses JSON that is not valid or that repeats a member name in any object.
pub fn check_json(bytes: &[u8]) -> Result<(), AuditError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de::Deserialize::deserialize(&mut de)
        .map(|NoRepeats| ())
        .and_then(|()| de.end())
        .map_err(|e| AuditError::Json {
            reason: e.to_string(),
        })
}

/// Walks a JSON value, failing on a member name repeated in an object.
struct NoRepeats;

impl<'de> de::Deserialize<'de> for NoRepeats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoRepeatsVisitor)
    }
}

struct NoRepeatsVisitor;

impl<'de> Visitor<'de> for NoRepeatsVisitor {
    type Value = NoRepeats;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_unit<E>(self) -> Result<NoRepeats, E> {
        Ok(NoRepeats)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoRepeats, A::Error> {
        while seq.next_element::<NoRepeats>()?.is_some() {}
        Ok(NoRepeats)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoRepeats, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(name) = map.next_key::<String>()? {
            if !seen.insert(name.clone()) {
                return Err(de::Error::custom(format!("member {name:?} appears twice")));
            }
            map.next_value::<NoRepeats>()?;
        }
        Ok(NoRepeats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_has_one_spelling() {
        assert_eq!(unb64("AQID", "x").unwrap(), vec![1, 2, 3]);
        assert!(unb64("AQID=", "x").is_err(), "padding");
        assert!(unb64("AQ==", "x").is_err(), "padding");
        assert!(unb64("AR", "x").is_err(), "trailing bits not zero");
        assert!(unb64("AQ", "x").is_ok());
        assert!(unb64("A+/", "x").is_err(), "standard alphabet");
    }

    #[test]
    fn times_have_milliseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_764_669_600_123_456_789).unwrap();
        assert_eq!(format_ms(t), "2025-12-02T10:00:00.123Z");
        assert_eq!(
            parse_time("2025-12-02T10:00:00.123Z", "t").unwrap(),
            OffsetDateTime::from_unix_timestamp_nanos(1_764_669_600_123_000_000).unwrap()
        );
    }

    #[test]
    fn a_signed_value_splits_back_into_its_text_and_signature() {
        let v = append_signature(r#"{"a":1}"#, "sig", &[1, 2, 3]);
        assert_eq!(v, r#"{"a":1,"sig":"AQID"}"#);
        let (s, sig) = split_signed(v.as_bytes(), "sig").unwrap();
        assert_eq!(s, r#"{"a":1}"#);
        assert_eq!(sig, vec![1, 2, 3]);
        for bad in [
            r#"{"a":1,"sig":"AQID","b":2}"#,
            r#"{"a":1, "sig":"AQID"}"#,
            r#"{"a":1,"sig":"AQID=="}"#,
            r#"{"a":1,"a":2,"sig":"AQID"}"#,
            r#"{"a":{"b":1,"b":1},"sig":"AQID"}"#,
            r#"{"a":1,"sig":"AQ\"ID"}"#,
            r#"{"a":1}"#,
        ] {
            assert!(split_signed(bad.as_bytes(), "sig").is_err(), "{bad}");
        }
    }
}
