//! Record formats: what the forwarder checks in each value before it is produced, and
//! what goes to the dead-letter topic instead.
//!
//! - `bytes`: nothing is checked; values are copied byte for byte.
//! - `string` (default): the value must be UTF-8.
//! - `json`: the value must be one JSON document; it is forwarded as the bytes it came in.
//! - `json` + `schemas.enable`: the value must be an object that fits its topic's schema
//!   in the [`registry`] (or an envelope carrying its own Connect schema, which it must
//!   fit); it is written in the Kafka Connect envelope `{"schema":…,"payload":…}`.
//!
//! The format applies to values only: keys are copied unchanged. Null values
//! (tombstones) pass as null in every format.

pub mod registry;
pub mod schema;

use std::sync::Arc;

use serde::de::IgnoredAny;
use serde_json::Value;

use crate::config::Format;
use crate::record::SourceRecord;
use crate::wal::WalError;
use registry::SchemaRegistry;

/// Why a record goes to the dead-letter topic; the name is written in the
/// `__connect.errors.exception.class.name` header and never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// `format=string` and the value is not UTF-8.
    InvalidUtf8,
    /// `format=json` and the value is not one JSON document.
    MalformedJson,
    /// `schemas.enable=true` and the value does not fit the schema.
    SchemaMismatch,
}

impl ErrorKind {
    /// Every kind, in the order of [`ErrorKind::index`].
    pub const ALL: [ErrorKind; 3] = [
        ErrorKind::InvalidUtf8,
        ErrorKind::MalformedJson,
        ErrorKind::SchemaMismatch,
    ];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::InvalidUtf8 => "InvalidUtf8",
            ErrorKind::MalformedJson => "MalformedJson",
            ErrorKind::SchemaMismatch => "SchemaMismatch",
        }
    }

    /// Position in [`ErrorKind::ALL`] (for counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The kind with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Why a record is refused: its kind and a message that says what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The kind.
    pub kind: ErrorKind,
    /// For people: e.g. "expected int64 at $.order.qty, got string".
    pub message: String,
}

/// What happens to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Produced to the internal topic as it is.
    Forward,
    /// Produced to the internal topic with this value (the schema envelope).
    ForwardAs(Vec<u8>),
    /// Produced to the dead-letter topic.
    Reject(Rejection),
}

/// Checks the records of one source topic.
#[derive(Debug, Clone)]
pub struct Formatter {
    format: Format,
    /// The registry and this topic's subject, with `schemas.enable=true`.
    schemas: Option<(Arc<SchemaRegistry>, String)>,
}

impl Formatter {
    /// A formatter for `format`; `schemas` names the registry and subject when schemas
    /// are enabled.
    pub fn new(format: Format, schemas: Option<(Arc<SchemaRegistry>, String)>) -> Self {
        Self { format, schemas }
    }

    /// The WAL write mark a record this formatter let through may depend on (a schema
    /// version it names): to be made durable before the record is produced. `None`
    /// without schemas.
    pub fn durable_mark(&self) -> Option<u64> {
        self.schemas
            .as_ref()
            .map(|(registry, _)| registry.durable_mark())
    }

    /// Decides what happens to `record`. Errors only when storing a new schema fails.
    pub fn check(&self, record: &SourceRecord) -> Result<Verdict, WalError> {
        let Some(value) = record.value.as_deref() else {
            return Ok(Verdict::Forward);
        };
        let reject = |kind, message| Verdict::Reject(Rejection { kind, message });
        match self.format {
            Format::Bytes => Ok(Verdict::Forward),
            Format::String => Ok(match std::str::from_utf8(value) {
                Ok(_) => Verdict::Forward,
                Err(e) => reject(
                    ErrorKind::InvalidUtf8,
                    format!(
                        "value is not valid UTF-8: invalid byte 0x{:02x} at position {} of {}",
                        value[e.valid_up_to()],
                        e.valid_up_to(),
                        value.len()
                    ),
                ),
            }),
            Format::Json => {
                if value.iter().all(u8::is_ascii_whitespace) {
                    return Ok(reject(
                        ErrorKind::MalformedJson,
                        format!(
                            "value is not JSON: it is empty ({} bytes of whitespace)",
                            value.len()
                        ),
                    ));
                }
                // serde_json refuses NaN/Infinity, and nesting deeper than 128 levels
                // (no stack overflow on hostile input).
                let Some((registry, subject)) = &self.schemas else {
                    // Syntax only: nothing is built.
                    return Ok(match serde_json::from_slice::<Syntax>(value) {
                        Ok(_) => Verdict::Forward,
                        Err(e) => reject(
                            ErrorKind::MalformedJson,
                            format!("value is not valid JSON: {e}"),
                        ),
                    });
                };
                // The common case, a value that fits the latest version, without a tree.
                if let Some(latest) = registry.latest(subject) {
                    if !latest.schema.has_envelope_fields() && latest.schema.fits_bytes(value) {
                        return Ok(Verdict::ForwardAs(wrap(&latest.connect, value)));
                    }
                }
                let parsed: Value = match serde_json::from_slice(value) {
                    Ok(v) => v,
                    Err(e) => {
                        return Ok(reject(
                            ErrorKind::MalformedJson,
                            format!("value is not valid JSON: {e}"),
                        ))
                    }
                };
                Self::check_schema(registry, subject, value, &parsed)
            }
        }
    }

    fn check_schema(
        registry: &SchemaRegistry,
        subject: &str,
        raw: &[u8],
        value: &Value,
    ) -> Result<Verdict, WalError> {
        let reject = |message: String| {
            Verdict::Reject(Rejection {
                kind: ErrorKind::SchemaMismatch,
                message,
            })
        };
        // A value already in the envelope is checked against its own schema and
        // forwarded as it is.
        if let Some((schema, payload)) = envelope(value) {
            return Ok(match schema::check_connect(schema, payload, "$.payload") {
                Ok(()) => Verdict::Forward,
                Err(m) => reject(format!("{m} (the record's own schema)")),
            });
        }
        Ok(match registry.admit(subject, value)? {
            Ok(admitted) => Verdict::ForwardAs(wrap(&admitted.version.connect, raw)),
            Err(m) => {
                let latest = registry
                    .latest(subject)
                    .map(|v| format!(" (schema {subject} version {})", v.version))
                    .unwrap_or_default();
                reject(format!("{m}{latest}"))
            }
        })
    }
}

/// A JSON value read for its syntax only, building nothing. Unlike serde's `IgnoredAny`
/// (which serde_json skips iteratively, at any depth) it goes through serde_json's
/// recursion limit, so a value nested deeper than 128 levels is refused as it is in the
/// other JSON paths.
struct Syntax;

impl<'de> serde::Deserialize<'de> for Syntax {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SyntaxVisitor)
    }
}

struct SyntaxVisitor;

impl<'de> serde::de::Visitor<'de> for SyntaxVisitor {
    type Value = Syntax;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Syntax, E> {
        Ok(Syntax)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Syntax, E> {
        Ok(Syntax)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Syntax, E> {
        Ok(Syntax)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Syntax, E> {
        Ok(Syntax)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Syntax, E> {
        Ok(Syntax)
    }

    fn visit_str<E>(self, _: &str) -> Result<Syntax, E> {
        Ok(Syntax)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Syntax, A::Error> {
        while seq.next_element::<Syntax>()?.is_some() {}
        Ok(Syntax)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Syntax, A::Error> {
        while map.next_entry::<IgnoredAny, Syntax>()?.is_some() {}
        Ok(Syntax)
    }
}

/// The Kafka Connect envelope of `raw` (valid JSON, which goes in as the bytes it came
/// in) with the schema `connect`.
fn wrap(connect: &str, raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + connect.len() + 24);
    out.extend_from_slice(b"{\"schema\":");
    out.extend_from_slice(connect.as_bytes());
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(raw);
    out.push(b'}');
    out
}

/// The `(schema, payload)` of a value in the Kafka Connect envelope: an object with
/// exactly those two keys whose schema is an object naming a type.
fn envelope(value: &Value) -> Option<(&Value, &Value)> {
    let map = value.as_object()?;
    if map.len() != 2 {
        return None;
    }
    let schema = map.get("schema")?;
    let payload = map.get("payload")?;
    schema.get("type")?.as_str()?;
    Some((schema, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{SyncPolicy, Wal, WalOptions};

    fn record(value: Option<&[u8]>) -> SourceRecord {
        SourceRecord {
            offset: 0,
            timestamp_ms: 0,
            key: Some(b"\xff not json key".to_vec()),
            value: value.map(<[u8]>::to_vec),
            headers: vec![],
        }
    }

    fn verdict(f: &Formatter, value: Option<&[u8]>) -> Verdict {
        f.check(&record(value)).unwrap()
    }

    fn rejected(f: &Formatter, value: &[u8]) -> (ErrorKind, String) {
        match verdict(f, Some(value)) {
            Verdict::Reject(r) => (r.kind, r.message),
            other => panic!(
                "{:?} was not rejected: {other:?}",
                String::from_utf8_lossy(value)
            ),
        }
    }

    fn registry() -> (tempfile::TempDir, Arc<SchemaRegistry>) {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(
            dir.path(),
            WalOptions {
                sync: SyncPolicy::Flush,
                max_bytes: 1 << 30,
                cache_bytes: 1 << 20,
            },
        )
        .unwrap();
        let reg = Arc::new(SchemaRegistry::open(&wal, "c").unwrap());
        (dir, reg)
    }

    #[test]
    fn strings_must_be_utf8_and_bytes_pass_anything() {
        let string = Formatter::new(Format::String, None);
        assert_eq!(
            verdict(&string, Some("ünïcode".as_bytes())),
            Verdict::Forward
        );
        assert_eq!(verdict(&string, Some(b"")), Verdict::Forward);
        assert_eq!(verdict(&string, None), Verdict::Forward);
        let (kind, message) = rejected(&string, b"ab\xffc");
        assert_eq!(kind, ErrorKind::InvalidUtf8);
        assert_eq!(
            message,
            "value is not valid UTF-8: invalid byte 0xff at position 2 of 4"
        );
        let bytes = Formatter::new(Format::Bytes, None);
        assert_eq!(verdict(&bytes, Some(b"ab\xffc")), Verdict::Forward);
    }

    #[test]
    fn json_refuses_what_is_not_one_document() {
        let json = Formatter::new(Format::Json, None);
        for good in [&b"{\"a\": [1, 2.5, null]}"[..], b" 3 ", b"\"s\"", b"[]"] {
            assert_eq!(verdict(&json, Some(good)), Verdict::Forward);
        }
        assert_eq!(verdict(&json, None), Verdict::Forward, "tombstones pass");
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        for bad in [
            &b"{\"a\": 1"[..],
            b"{\"a\": 1} trailing",
            b"{\"a\": NaN}",
            b"",
            b"  ",
            deep.as_bytes(),
            b"\xff",
        ] {
            let (kind, message) = rejected(&json, bad);
            assert_eq!(kind, ErrorKind::MalformedJson);
            assert!(message.starts_with("value is not"), "{message}");
        }
        assert!(rejected(&json, deep.as_bytes())
            .1
            .contains("recursion limit"));
    }

    #[test]
    fn schemas_wrap_values_in_the_connect_envelope_and_refuse_drift() {
        let (_dir, reg) = registry();
        let f = Formatter::new(Format::Json, Some((reg, "int.orders".into())));
        let first = f.check(&record(Some(br#"{"qty": 1}"#))).unwrap();
        let Verdict::ForwardAs(bytes) = first else {
            panic!("not wrapped")
        };
        let envelope: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            envelope,
            serde_json::json!({"schema": {"type": "struct", "optional": false, "version": 1,
                "fields": [{"type": "int64", "optional": false, "field": "qty"}]},
                "payload": {"qty": 1}})
        );
        let (kind, message) = rejected(&f, br#"{"qty": "two"}"#);
        assert_eq!(kind, ErrorKind::SchemaMismatch);
        assert_eq!(
            message,
            "expected int64 at $.qty, got string (schema int.orders version 1)"
        );
        assert_eq!(rejected(&f, b"[1]").0, ErrorKind::SchemaMismatch);
        assert_eq!(rejected(&f, b"{").0, ErrorKind::MalformedJson);
        assert_eq!(
            verdict(&f, None),
            Verdict::Forward,
            "tombstones are not wrapped"
        );
        // A record carrying its own schema is checked against it, not re-wrapped.
        let own = br#"{"schema": {"type": "struct", "fields": [{"field": "n", "type": "string", "optional": false}]}, "payload": {"n": "x"}}"#;
        assert_eq!(verdict(&f, Some(own)), Verdict::Forward);
        let wrong = br#"{"schema": {"type": "struct", "fields": [{"field": "n", "type": "string", "optional": false}]}, "payload": {"n": 1}}"#;
        assert_eq!(
            rejected(&f, wrong).1,
            "expected string at $.payload.n, got int64 (the record's own schema)"
        );
    }
}
