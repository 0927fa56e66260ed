//! Which tenant a captured message belongs to: the `tenant-id` header, else the top-level JSON
//! field `tenant_id`, found by a scanner that stops as soon as it has it (it does not parse or
//! allocate the rest of the message, and never copies the body).

/// The header that names the tenant.
pub const TENANT_HEADER: &str = "tenant-id";

/// Where the tenant came from, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantOf {
    /// Found (header or JSON field).
    Found(String),
    /// No header, and the value is not a JSON object with a string `tenant_id`.
    Missing(&'static str),
}

/// The tenant of a record from its headers and value.
pub fn tenant_of<'a>(
    headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
    value: Option<&[u8]>,
) -> TenantOf {
    let mut header = None;
    for (name, v) in headers {
        if name == TENANT_HEADER {
            if header.is_some() {
                return TenantOf::Missing("the tenant-id header appears more than once");
            }
            header = Some(v);
        }
    }
    if let Some(v) = header {
        let t = match v.map(std::str::from_utf8) {
            Some(Ok(t)) if !t.trim().is_empty() => t.trim(),
            _ => return TenantOf::Missing("the tenant-id header is empty or not UTF-8"),
        };
        // a body that names another tenant makes the record ambiguous (a body that is not JSON,
        // or names none, is fine with a header)
        if let Some(v) = value
            && let Ok(Some(body)) = json_tenant_id(v)
            && body != t
        {
            return TenantOf::Missing("the tenant-id header and the body's tenant_id differ");
        }
        return TenantOf::Found(t.to_owned());
    }
    match value {
        None | Some([]) => TenantOf::Missing("no tenant-id header and an empty value"),
        Some(v) => match json_tenant_id(v) {
            Ok(Some(t)) => TenantOf::Found(t),
            Ok(None) => {
                TenantOf::Missing("no tenant-id header and no top-level \"tenant_id\" string")
            }
            Err(why) => TenantOf::Missing(why),
        },
    }
}

/// Finds the top-level string field `tenant_id` of a JSON object, stopping at it.
///
/// Terminates on every input: each step of the scan consumes at least one byte or fails, nesting
/// is bounded by [`MAX_DEPTH`], and a fuel counter of one step per input byte turns any
/// violation of that rule into an error instead of a loop (the property tests check it is never
/// reached).
pub fn json_tenant_id(bytes: &[u8]) -> Result<Option<String>, &'static str> {
    let mut s = Scanner::new(bytes);
    s.ws();
    if s.peek() != Some(b'{') {
        return Err("the value is not a JSON object and there is no tenant-id header");
    }
    s.i += 1;
    s.ws();
    if s.peek() == Some(b'}') {
        return Ok(None);
    }
    loop {
        s.tick()?;
        s.ws();
        if s.peek() != Some(b'"') {
            return Err(BAD);
        }
        let key_is_tenant = s.string_equals(b"tenant_id")?;
        s.ws();
        s.expect(b':')?;
        s.ws();
        if key_is_tenant {
            if s.peek() != Some(b'"') {
                return Err("\"tenant_id\" is not a string");
            }
            return s.string().map(Some);
        }
        s.skip_value(0)?;
        s.ws();
        match s.peek() {
            Some(b',') => s.i += 1,
            Some(b'}') => return Ok(None),
            _ => return Err(BAD),
        }
    }
}

/// How deeply values before `tenant_id` may nest.
pub const MAX_DEPTH: usize = 128;

const BAD: &str = "the value is not valid JSON";
/// The error the scanner returns if it ever ran out of fuel (never expected: tested).
pub const NO_PROGRESS: &str = "the JSON scanner made no progress (a bug: please report it)";

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Structural steps left: one per input byte, plus one for the end.
    fuel: usize,
}

impl<'a> Scanner<'a> {
    fn new(b: &'a [u8]) -> Self {
        Scanner {
            b,
            i: 0,
            fuel: b.len() + 1,
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    /// Spends one step of fuel: every structural loop turn consumes at least one byte, so the
    /// fuel never runs out unless that rule is broken.
    fn tick(&mut self) -> Result<(), &'static str> {
        self.fuel = self.fuel.checked_sub(1).ok_or(NO_PROGRESS)?;
        Ok(())
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn expect(&mut self, c: u8) -> Result<(), &'static str> {
        if self.peek() != Some(c) {
            return Err(BAD);
        }
        self.i += 1;
        Ok(())
    }
    /// Skips a string starting at `"`, reporting whether its raw content equals `want`.
    fn string_equals(&mut self, want: &[u8]) -> Result<bool, &'static str> {
        let start = self.i + 1;
        self.skip_string()?;
        Ok(&self.b[start..self.i - 1] == want)
    }
    fn skip_string(&mut self) -> Result<(), &'static str> {
        self.i += 1; // opening quote
        loop {
            // SIMD search for the next quote or backslash: bodies are most of a message
            let rest = self.b.get(self.i..).ok_or(BAD)?;
            let at = memchr::memchr2(b'"', b'\\', rest).ok_or(BAD)?;
            self.i += at;
            if rest[at] == b'"' {
                self.i += 1;
                return Ok(());
            }
            self.i += 2; // an escape: skip the escaped byte
        }
    }
    /// Reads a string value with its escapes.
    fn string(&mut self) -> Result<String, &'static str> {
        let start = self.i;
        self.skip_string()?;
        let raw = &self.b[start..self.i];
        serde_json::from_slice::<String>(raw).map_err(|_| BAD)
    }
    /// Skips one JSON value (string, object, array, number, literal) after whitespace.
    fn skip_value(&mut self, depth: usize) -> Result<(), &'static str> {
        if depth > MAX_DEPTH {
            return Err("the JSON value nests too deeply");
        }
        self.tick()?;
        self.ws();
        match self.peek() {
            Some(b'"') => self.skip_string(),
            Some(b'{') => self.skip_container(depth, b'}', true),
            Some(b'[') => self.skip_container(depth, b']', false),
            Some(b'-' | b'0'..=b'9') => {
                self.i += 1;
                while matches!(
                    self.peek(),
                    Some(b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                ) {
                    self.i += 1;
                }
                Ok(())
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(BAD),
        }
    }
    /// Skips an object (`"key": value, ...`) or an array (`value, ...`) from its opening byte.
    fn skip_container(&mut self, depth: usize, close: u8, keyed: bool) -> Result<(), &'static str> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.tick()?;
            self.ws();
            if keyed {
                if self.peek() != Some(b'"') {
                    return Err(BAD);
                }
                self.skip_string()?;
                self.ws();
                self.expect(b':')?;
            }
            self.skip_value(depth + 1)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(BAD),
            }
        }
    }
    fn literal(&mut self, word: &[u8]) -> Result<(), &'static str> {
        if !self.b[self.i..].starts_with(word) {
            return Err(BAD);
        }
        self.i += word.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three 7-byte values that made the scanner of 2026-11 loop forever: a closing bracket
    /// of the wrong kind inside a container.
    #[test]
    fn wrong_closing_bracket_is_malformed_not_a_hang() {
        for v in [&br#"{"a":[}"#[..], br#"{"a":{]}"#, br#"{"a":[ }"#] {
            assert_eq!(
                json_tenant_id(v),
                Err(BAD),
                "{}",
                String::from_utf8_lossy(v)
            );
            assert!(matches!(tenant_of([], Some(v)), TenantOf::Missing(BAD)));
        }
    }

    #[test]
    fn malformed_values_before_the_field_are_errors() {
        for v in [
            &br#"{"a":}"#[..],
            br#"{"a":,"tenant_id":"x"}"#,
            br#"{"a":[1,,2]}"#,
            br#"{"a":{"k"}}"#,
            br#"{"a":{1:2}}"#,
            br#"{"a":tru,"tenant_id":"x"}"#,
            br#"{"a" "tenant_id":"x"}"#,
            br#"{,}"#,
            br#"{"a":[1 2]}"#,
        ] {
            assert!(json_tenant_id(v).is_err(), "{}", String::from_utf8_lossy(v));
        }
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(
            json_tenant_id(deep.as_bytes()),
            Err("the JSON value nests too deeply")
        );
        assert_eq!(json_tenant_id(br#"{}"#), Ok(None));
        assert_eq!(
            json_tenant_id(br#"{"a":[],"b":{},"tenant_id":"t"}"#),
            Ok(Some("t".into()))
        );
    }

    #[test]
    fn a_header_and_a_body_that_disagree_or_a_repeated_header_are_malformed() {
        let v = br#"{"tenant_id":"json"}"#;
        let hdr = |t: &'static [u8]| ("tenant-id", Some(t));
        assert_eq!(
            tenant_of([hdr(b"hdr")], Some(v)),
            TenantOf::Missing("the tenant-id header and the body's tenant_id differ")
        );
        assert_eq!(
            tenant_of([hdr(b"json")], Some(v)),
            TenantOf::Found("json".into())
        );
        assert_eq!(
            tenant_of([hdr(b"acme"), hdr(b"acme")], Some(v)),
            TenantOf::Missing("the tenant-id header appears more than once")
        );
        // a header with a body that names no tenant, or is not JSON
        assert_eq!(
            tenant_of([hdr(b"acme")], Some(&br#"{"body":"x"}"#[..])),
            TenantOf::Found("acme".into())
        );
        assert_eq!(
            tenant_of([hdr(b"acme")], Some(&b"\x00binary"[..])),
            TenantOf::Found("acme".into())
        );
        assert_eq!(tenant_of([], Some(v)), TenantOf::Found("json".into()));
    }

    #[test]
    fn finds_top_level_field_only() {
        let v = br#"{"meta":{"tenant_id":"nested"},"list":[1,{"a":"}"}],"n":-1.5e3,"ok":true,"tenant_id":"acme","body":"x"}"#;
        assert_eq!(json_tenant_id(v), Ok(Some("acme".into())));
        assert_eq!(
            json_tenant_id(br#"{"meta":{"tenant_id":"nested"}}"#),
            Ok(None)
        );
        assert_eq!(
            json_tenant_id(br#" { "tenant_id" : "t\u00e9\"q" } "#),
            Ok(Some("t\u{e9}\"q".into()))
        );
        assert_eq!(
            json_tenant_id(br#"{"body":"has \"tenant_id\": \"fake\"","tenant_id":"real"}"#),
            Ok(Some("real".into()))
        );
    }

    #[test]
    fn stops_at_the_field_without_reading_the_rest() {
        // everything after the field is garbage: still found
        assert_eq!(
            json_tenant_id(br#"{"tenant_id":"early", <<<not json>>>"#),
            Ok(Some("early".into()))
        );
    }

    #[test]
    fn explains_what_is_missing() {
        assert!(
            matches!(tenant_of([], Some(b"not json")), TenantOf::Missing(w) if w.contains("not a JSON object"))
        );
        assert!(
            matches!(tenant_of([], Some(br#"{"tenant_id":42}"#)), TenantOf::Missing(w) if w.contains("not a string"))
        );
        assert!(matches!(
            tenant_of([], Some(br#"{"a":1}"#)),
            TenantOf::Missing(_)
        ));
        assert!(matches!(tenant_of([], None), TenantOf::Missing(_)));
        assert!(matches!(
            tenant_of([("tenant-id", Some(&b" "[..]))], None),
            TenantOf::Missing(_)
        ));
        assert!(matches!(
            tenant_of([], Some(br#"{"a":"unterminated"#)),
            TenantOf::Missing(_)
        ));
    }
}
