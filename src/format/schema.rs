//! Schemas of JSON values: inference from records, the compatibility check that lets a
//! schema evolve, and the Kafka Connect JSON form written in the envelope.
//!
//! Rules (docs/formats.md):
//! - the first record defines version 1: each field gets the type of its value and is
//!   required, except fields that are null, whose type stays unknown (optional);
//! - a record with fields the schema lacks makes a new version in which they are optional;
//! - a field that changes type, a required field that is missing or null, or a value
//!   that is not an object is a mismatch: the record goes to the dead-letter topic.
//!
//! Integers are `int64`; a number with a fraction or exponent, or an integer beyond
//! `i64`, is `double`. An `int64` field refuses a `double`; a `double` field takes
//! integers (they widen without loss of meaning).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The type of a value, in Kafka Connect's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Type {
    /// Only nulls seen so far: the type is not known yet.
    Unknown,
    /// `boolean`.
    Boolean,
    /// `int64`.
    Int64,
    /// `double`.
    Double,
    /// `string`.
    String,
    /// `array` of one element schema.
    Array {
        /// The elements' schema.
        items: Box<Schema>,
    },
    /// `struct`: named fields in first-seen order.
    Struct {
        /// The fields.
        fields: Vec<Field>,
    },
}

/// A type and whether null (or absence, for a field) is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    /// The type.
    #[serde(flatten)]
    pub ty: Type,
    /// Whether null is allowed.
    pub optional: bool,
}

/// A field of a struct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    /// The field's name.
    pub name: String,
    /// Its schema.
    pub schema: Schema,
}

/// Why a value does not fit a schema: what was expected, where, and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {expected} at {path}, got {found}")]
pub struct Mismatch {
    /// JSONPath-like location, `$` for the value itself.
    pub path: String,
    /// What the schema wants.
    pub expected: String,
    /// What the value holds.
    pub found: String,
}

/// What [`Schema::check`] found for a value that fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The value fits as it is.
    Fits,
    /// The value fits a compatible evolution of the schema ([`Schema::evolve`]).
    NeedsEvolution,
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() => "int64",
        Value::Number(_) => "double",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn child(path: &str, name: &str) -> String {
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        format!("{path}.{name}")
    } else {
        format!("{path}[{}]", Value::String(name.to_owned()))
    }
}

impl Schema {
    /// Version 1's schema from a first record's value, which must be an object.
    pub fn infer_record(value: &Value) -> Result<Schema, Mismatch> {
        if !value.is_object() {
            return Err(Mismatch {
                path: "$".into(),
                expected: "a JSON object".into(),
                found: kind(value).into(),
            });
        }
        Ok(Self::infer(value, false))
    }

    /// The schema of `value`: required unless `optional` or null.
    fn infer(value: &Value, optional: bool) -> Schema {
        let ty = match value {
            Value::Null => {
                return Schema {
                    ty: Type::Unknown,
                    optional: true,
                }
            }
            Value::Bool(_) => Type::Boolean,
            Value::Number(n) if n.is_i64() => Type::Int64,
            Value::Number(_) => Type::Double,
            Value::String(_) => Type::String,
            Value::Array(items) => {
                let mut schema = Schema {
                    ty: Type::Unknown,
                    optional: true,
                };
                for item in items {
                    // Elements of one array that disagree: the first one decides, the
                    // others are checked against it below.
                    if schema.check_at(item, "$").ok() == Some(Fit::NeedsEvolution) {
                        let _ = schema.evolve_at(item, "$");
                    }
                }
                // Elements are nullable only if a null was seen (or none at all).
                if schema.ty != Type::Unknown && !items.iter().any(Value::is_null) {
                    schema.optional = false;
                }
                Type::Array {
                    items: Box::new(schema),
                }
            }
            Value::Object(map) => Type::Struct {
                fields: map
                    .iter()
                    .map(|(name, v)| Field {
                        name: name.clone(),
                        schema: Self::infer(v, false),
                    })
                    .collect(),
            },
        };
        Schema { ty, optional }
    }

    /// Whether `value` (a whole record value) fits this schema, or fits once the schema
    /// evolves; a mismatch otherwise. Reads only: the hot path of every record.
    pub fn check(&self, value: &Value) -> Result<Fit, Mismatch> {
        if !value.is_object() {
            return Err(Mismatch {
                path: "$".into(),
                expected: "a JSON object".into(),
                found: kind(value).into(),
            });
        }
        self.check_at(value, "$")
    }

    fn check_at(&self, value: &Value, path: &str) -> Result<Fit, Mismatch> {
        let mismatch = |expected: &str| Mismatch {
            path: path.to_owned(),
            expected: expected.to_owned(),
            found: kind(value).to_owned(),
        };
        if value.is_null() {
            return if self.optional {
                Ok(Fit::Fits)
            } else {
                Err(Mismatch {
                    path: path.to_owned(),
                    expected: format!("{} (the field is required)", self.ty.name()),
                    found: "null".into(),
                })
            };
        }
        match (&self.ty, value) {
            (Type::Unknown, _) => Ok(Fit::NeedsEvolution),
            (Type::Boolean, Value::Bool(_)) | (Type::String, Value::String(_)) => Ok(Fit::Fits),
            (Type::Int64, Value::Number(n)) if n.is_i64() => Ok(Fit::Fits),
            (Type::Double, Value::Number(_)) => Ok(Fit::Fits),
            (Type::Array { items }, Value::Array(values)) => {
                let mut fit = Fit::Fits;
                for (i, v) in values.iter().enumerate() {
                    if items.check_at(v, &format!("{path}[{i}]"))? == Fit::NeedsEvolution {
                        fit = Fit::NeedsEvolution;
                    }
                }
                Ok(fit)
            }
            (Type::Struct { fields }, Value::Object(map)) => check_struct(fields, map, path),
            (ty, _) => Err(mismatch(ty.name())),
        }
    }

    /// This schema grown to accept `value` ([`Fit::NeedsEvolution`]): fields it lacks
    /// are added as optional, unknown types take the value's type.
    pub fn evolve(&self, value: &Value) -> Result<Schema, Mismatch> {
        let mut next = self.clone();
        next.evolve_at(value, "$")?;
        Ok(next)
    }

    fn evolve_at(&mut self, value: &Value, path: &str) -> Result<(), Mismatch> {
        if value.is_null() {
            return self.check_at(value, path).map(|_| ());
        }
        match (&mut self.ty, value) {
            (Type::Unknown, _) => {
                self.ty = Self::infer(value, true).ty;
                Ok(())
            }
            (Type::Array { items }, Value::Array(values)) => {
                for (i, v) in values.iter().enumerate() {
                    items.evolve_at(v, &format!("{path}[{i}]"))?;
                }
                Ok(())
            }
            (Type::Struct { fields }, Value::Object(map)) => {
                for field in fields.iter_mut() {
                    match map.get(&field.name) {
                        Some(v) => field.schema.evolve_at(v, &child(path, &field.name))?,
                        None if field.schema.optional => {}
                        None => return Err(missing(path, field)),
                    }
                }
                for (name, v) in map {
                    if !fields.iter().any(|f| &f.name == name) {
                        fields.push(Field {
                            name: name.clone(),
                            schema: Self::infer(v, true),
                        });
                    }
                }
                Ok(())
            }
            _ => self.check_at(value, path).map(|_| ()),
        }
    }

    /// The Kafka Connect JSON form of this schema (`{"type":"struct","fields":[…]}`).
    /// Fields whose type is still unknown are left out (Connect has no null type; a
    /// payload field the schema does not name is ignored by Connect's converter);
    /// array elements of unknown type are written as optional strings.
    pub fn to_connect(&self) -> Value {
        let mut out = Map::new();
        match &self.ty {
            Type::Unknown => {
                out.insert("type".into(), "string".into());
                out.insert("optional".into(), true.into());
                return Value::Object(out);
            }
            Type::Array { items } => {
                out.insert("type".into(), "array".into());
                out.insert("items".into(), items.to_connect());
            }
            Type::Struct { fields } => {
                out.insert("type".into(), "struct".into());
                let fields: Vec<Value> = fields
                    .iter()
                    .filter(|f| f.schema.ty != Type::Unknown)
                    .map(|f| {
                        let mut v = f.schema.to_connect();
                        v.as_object_mut()
                            .expect("a schema is an object")
                            .insert("field".into(), f.name.clone().into());
                        v
                    })
                    .collect();
                out.insert("fields".into(), fields.into());
            }
            ty => {
                out.insert("type".into(), ty.name().into());
            }
        }
        out.insert("optional".into(), self.optional.into());
        Value::Object(out)
    }
}

/// The fast path of [`Schema::fits_bytes`]: walks the JSON text with serde's visitors
/// against the schema, building no tree and allocating nothing while the value fits.
/// Any doubt (a mismatch, a field to add, malformed text) ends the walk with an error;
/// the caller then takes the full path, which says precisely what is wrong.
struct Fits<'s>(&'s Schema);

fn no<E: serde::de::Error>() -> E {
    E::custom("does not fit")
}

impl<'de> serde::de::DeserializeSeed<'de> for Fits<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Fits<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a value of type {}", self.0.ty.name())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        if self.0.optional {
            Ok(())
        } else {
            Err(no())
        }
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        match self.0.ty {
            Type::Boolean => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        match self.0.ty {
            Type::Int64 | Type::Double => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        match self.0.ty {
            Type::Int64 if i64::try_from(v).is_ok() => Ok(()),
            Type::Double => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        match self.0.ty {
            Type::Double => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        match self.0.ty {
            Type::String => Ok(()),
            _ => Err(no()),
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Type::Array { items } = &self.0.ty else {
            return Err(no());
        };
        while seq.next_element_seed(Fits(items))?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Type::Struct { fields } = &self.0.ty else {
            return Err(no());
        };
        // Required fields seen, as a bit set (structs with more than 128 fields take the
        // full path).
        if fields.len() > 128 {
            return Err(no());
        }
        let mut seen = 0u128;
        while let Some(i) = map.next_key_seed(FieldIndex(fields))? {
            let Some(i) = i else {
                return Err(no()); // a field the schema lacks: evolution
            };
            map.next_value_seed(Fits(&fields[i].schema))?;
            seen |= 1 << i;
        }
        let all_required = fields
            .iter()
            .enumerate()
            .all(|(i, f)| f.schema.optional || seen & (1 << i) != 0);
        if all_required {
            Ok(())
        } else {
            Err(no())
        }
    }
}

/// Reads an object key as the index of the field of that name, without copying it.
struct FieldIndex<'s>(&'s [Field]);

impl<'de> serde::de::DeserializeSeed<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldIndex<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|f| f.name == key))
    }
}

impl Schema {
    /// Whether this is a struct with a field `schema` or `payload`: a value of that shape
    /// might be an envelope, which the fast path cannot tell.
    pub fn has_envelope_fields(&self) -> bool {
        match &self.ty {
            Type::Struct { fields } => fields
                .iter()
                .any(|f| f.name == "schema" || f.name == "payload"),
            _ => false,
        }
    }

    /// Whether `raw` is one JSON document that fits this schema as it is: the common
    /// case, checked without building a tree. `false` says nothing more (malformed, a
    /// mismatch, or a field to add): use [`Schema::check`] on the parsed value for that.
    pub fn fits_bytes(&self, raw: &[u8]) -> bool {
        let mut de = serde_json::Deserializer::from_slice(raw);
        serde::de::DeserializeSeed::deserialize(Fits(self), &mut de).is_ok() && de.end().is_ok()
    }
}

fn missing(path: &str, field: &Field) -> Mismatch {
    Mismatch {
        path: child(path, &field.name),
        expected: format!("{} (the field is required)", field.schema.ty.name()),
        found: "no such field".into(),
    }
}

fn check_struct(fields: &[Field], map: &Map<String, Value>, path: &str) -> Result<Fit, Mismatch> {
    let mut fit = Fit::Fits;
    let mut present = 0;
    for field in fields {
        match map.get(&field.name) {
            Some(v) => {
                present += 1;
                if field.schema.check_at(v, &child(path, &field.name))? == Fit::NeedsEvolution {
                    fit = Fit::NeedsEvolution;
                }
            }
            None if field.schema.optional => {}
            None => return Err(missing(path, field)),
        }
    }
    // Keys are unique: more keys than known fields present means fields the schema lacks.
    if map.len() > present {
        fit = Fit::NeedsEvolution;
    }
    Ok(fit)
}

impl Type {
    /// Connect's name of the type.
    pub fn name(&self) -> &'static str {
        match self {
            Type::Unknown => "null",
            Type::Boolean => "boolean",
            Type::Int64 => "int64",
            Type::Double => "double",
            Type::String => "string",
            Type::Array { .. } => "array",
            Type::Struct { .. } => "struct",
        }
    }
}

/// Checks `value` against a schema given in Kafka Connect's JSON form (the `schema` of
/// an envelope the producer wrote itself).
pub fn check_connect(schema: &Value, value: &Value, path: &str) -> Result<(), Mismatch> {
    let mismatch = |expected: String| Mismatch {
        path: path.to_owned(),
        expected,
        found: kind(value).to_owned(),
    };
    let Some(spec) = schema.as_object() else {
        return Err(Mismatch {
            path: path.to_owned(),
            expected: "a schema object".into(),
            found: format!("schema {}", kind(schema)),
        });
    };
    let optional = spec.get("optional").and_then(Value::as_bool) == Some(true);
    if value.is_null() {
        let has_default = spec.get("default").is_some_and(|d| !d.is_null());
        return if optional || has_default {
            Ok(())
        } else {
            Err(mismatch("a value (the field is required)".into()))
        };
    }
    let ty = spec.get("type").and_then(Value::as_str).unwrap_or("");
    let int_range = |bits: u32| -> Result<(), Mismatch> {
        let max = (1i64 << (bits - 1)) - 1;
        match value.as_i64() {
            Some(n) if n >= -max - 1 && n <= max => Ok(()),
            _ => Err(mismatch(ty.to_owned())),
        }
    };
    match ty {
        "boolean" if value.is_boolean() => Ok(()),
        "string" | "bytes" if value.is_string() => Ok(()),
        "int8" => int_range(8),
        "int16" => int_range(16),
        "int32" => int_range(32),
        "int64" if value.is_i64() => Ok(()),
        "float" | "float32" | "double" | "float64" if value.is_number() => Ok(()),
        "array" => {
            let Some(values) = value.as_array() else {
                return Err(mismatch("array".into()));
            };
            let items = spec.get("items").unwrap_or(&Value::Null);
            for (i, v) in values.iter().enumerate() {
                check_connect(items, v, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        "map" => {
            let values = spec.get("values").unwrap_or(&Value::Null);
            match value {
                // Connect writes maps with string keys as objects, others as pairs.
                Value::Object(map) => map
                    .iter()
                    .try_for_each(|(k, v)| check_connect(values, v, &child(path, k))),
                Value::Array(pairs) => pairs.iter().enumerate().try_for_each(|(i, pair)| {
                    let at = format!("{path}[{i}]");
                    match pair.as_array().map(Vec::as_slice) {
                        Some([k, v]) => {
                            check_connect(spec.get("keys").unwrap_or(&Value::Null), k, &at)?;
                            check_connect(values, v, &at)
                        }
                        _ => Err(Mismatch {
                            path: at,
                            expected: "a [key, value] pair".into(),
                            found: kind(pair).into(),
                        }),
                    }
                }),
                _ => Err(mismatch("map".into())),
            }
        }
        "struct" => {
            let Some(map) = value.as_object() else {
                return Err(mismatch("struct".into()));
            };
            let fields = spec.get("fields").and_then(Value::as_array);
            for field in fields.into_iter().flatten() {
                let name = field.get("field").and_then(Value::as_str).unwrap_or("");
                let v = map.get(name).unwrap_or(&Value::Null);
                check_connect(field, v, &child(path, name))?;
            }
            Ok(())
        }
        "boolean" | "string" | "bytes" | "int64" | "float" | "float32" | "double" | "float64" => {
            Err(mismatch(ty.to_owned()))
        }
        other => Err(Mismatch {
            path: path.to_owned(),
            expected: "a Connect schema type (struct, array, map, string, int8..int64, float32/64, boolean, bytes)".into(),
            found: format!("type {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v1(value: Value) -> Schema {
        Schema::infer_record(&value).unwrap()
    }

    #[test]
    fn the_first_record_defines_required_fields_and_nulls_stay_unknown() {
        let s = v1(
            json!({"id": 7, "price": 1.5, "name": "a", "ok": true, "note": null,
                           "tags": ["x"], "order": {"qty": 2}}),
        );
        let connect = s.to_connect();
        assert_eq!(
            connect,
            json!({"type": "struct", "optional": false, "fields": [
                {"field": "id", "type": "int64", "optional": false},
                {"field": "price", "type": "double", "optional": false},
                {"field": "name", "type": "string", "optional": false},
                {"field": "ok", "type": "boolean", "optional": false},
                {"field": "tags", "type": "array", "optional": false,
                 "items": {"type": "string", "optional": false}},
                {"field": "order", "type": "struct", "optional": false,
                 "fields": [{"field": "qty", "type": "int64", "optional": false}]},
            ]})
        );
    }

    #[test]
    fn values_of_the_same_shape_fit() {
        let s = v1(json!({"id": 1, "price": 2.0, "tags": [], "note": null}));
        for v in [
            json!({"id": 2, "price": 3, "tags": [], "note": null}),
            json!({"id": -9, "price": 0.1, "tags": []}),
        ] {
            assert_eq!(s.check(&v), Ok(Fit::Fits), "{v}");
        }
    }

    #[test]
    fn a_new_field_evolves_into_an_optional_field() {
        let s = v1(json!({"id": 1}));
        let v = json!({"id": 2, "extra": {"a": "b"}});
        assert_eq!(s.check(&v), Ok(Fit::NeedsEvolution));
        let next = s.evolve(&v).unwrap();
        assert_eq!(next.check(&v), Ok(Fit::Fits));
        assert_eq!(
            next.check(&json!({"id": 3})),
            Ok(Fit::Fits),
            "the new field is optional"
        );
        let Type::Struct { fields } = &next.ty else {
            panic!()
        };
        assert!(fields[1].schema.optional);
        assert_eq!(fields[1].name, "extra");
    }

    #[test]
    fn an_unknown_type_is_learned_once_a_value_arrives() {
        let s = v1(json!({"id": 1, "note": null, "list": []}));
        let v = json!({"id": 1, "note": "now a string", "list": [1, 2]});
        assert_eq!(s.check(&v), Ok(Fit::NeedsEvolution));
        let next = s.evolve(&v).unwrap();
        assert_eq!(next.check(&v), Ok(Fit::Fits));
        assert_eq!(
            next.check(&json!({"id": 1, "note": 5}))
                .unwrap_err()
                .to_string(),
            "expected string at $.note, got int64"
        );
    }

    #[test]
    fn mismatches_name_the_place_and_the_types() {
        let s = v1(json!({"order": {"qty": 1, "items": [{"sku": "a"}]}, "weird key": true}));
        let cases = [
            (
                json!({"order": {"qty": "2", "items": []}, "weird key": true}),
                "expected int64 at $.order.qty, got string",
            ),
            (
                json!({"order": {"qty": 1.5, "items": []}, "weird key": true}),
                "expected int64 at $.order.qty, got double",
            ),
            (
                json!({"order": {"qty": 1, "items": [{"sku": 3}]}, "weird key": true}),
                "expected string at $.order.items[0].sku, got int64",
            ),
            (
                json!({"order": {"qty": 1, "items": []}}),
                "expected boolean (the field is required) at $[\"weird key\"], got no such field",
            ),
            (
                json!({"order": null, "weird key": true}),
                "expected struct (the field is required) at $.order, got null",
            ),
            (json!([1, 2]), "expected a JSON object at $, got array"),
            (json!("text"), "expected a JSON object at $, got string"),
        ];
        for (value, want) in cases {
            assert_eq!(s.check(&value).unwrap_err().to_string(), want, "{value}");
        }
        assert!(Schema::infer_record(&json!(3)).is_err());
    }

    #[test]
    fn the_fast_path_agrees_with_the_full_check() {
        let s = v1(json!({"id": 1, "price": 2.5, "tags": ["a"], "o": {"q": 1}, "n": null}));
        let cases = [
            json!({"id": 2, "price": 3, "tags": [], "o": {"q": 2}}),
            json!({"id": 2, "price": 3, "tags": ["b", "c"], "o": {"q": 2}, "n": null}),
            json!({"id": "2", "price": 3, "tags": [], "o": {"q": 2}}),
            json!({"id": 2, "price": 3, "tags": [1], "o": {"q": 2}}),
            json!({"id": 2, "price": 3, "tags": [], "o": {"q": 2.5}}),
            json!({"id": 2, "price": 3, "tags": [], "o": {}}),
            json!({"id": 2, "price": 3, "tags": [], "o": {"q": 2}, "new": 1}),
            json!({"id": 2, "price": 3, "tags": [], "o": {"q": 2}, "n": "now known"}),
            json!({"id": u64::MAX, "price": 3, "tags": [], "o": {"q": 2}}),
            json!({"price": 3, "tags": [], "o": {"q": 2}}),
            json!({"id": null, "price": 3, "tags": [], "o": {"q": 2}}),
            json!([1]),
            json!(null),
        ];
        for v in cases {
            let full = s.check(&v) == Ok(Fit::Fits);
            assert_eq!(s.fits_bytes(v.to_string().as_bytes()), full, "{v}");
        }
        for malformed in [&b"{\"id\": 1"[..], b"{\"id\": 1} x", b"", b"{\"id\": NaN}"] {
            assert!(!s.fits_bytes(malformed));
        }
    }

    #[test]
    fn the_stored_form_round_trips() {
        let s = v1(json!({"a": [1], "b": {"c": null}}));
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Schema>(&text).unwrap(), s);
    }

    #[test]
    fn connect_schemas_given_by_the_producer_are_checked() {
        let schema = json!({"type": "struct", "optional": false, "fields": [
            {"field": "id", "type": "int32", "optional": false},
            {"field": "tags", "type": "array", "items": {"type": "string"}, "optional": true},
            {"field": "attrs", "type": "map", "keys": {"type": "string"}, "values": {"type": "int64"}, "optional": true},
        ]});
        assert!(check_connect(
            &schema,
            &json!({"id": 1, "tags": ["a"], "attrs": {"x": 1}}),
            "$"
        )
        .is_ok());
        assert!(check_connect(&schema, &json!({"id": 1}), "$").is_ok());
        let err = |v: Value| check_connect(&schema, &v, "$").unwrap_err().to_string();
        assert_eq!(
            err(json!({"id": 1i64 << 40})),
            "expected int32 at $.id, got int64"
        );
        assert_eq!(
            err(json!({"tags": []})),
            "expected a value (the field is required) at $.id, got null"
        );
        assert_eq!(
            err(json!({"id": 1, "tags": [1]})),
            "expected string at $.tags[0], got int64"
        );
        assert_eq!(
            err(json!({"id": 1, "attrs": {"x": "y"}})),
            "expected int64 at $.attrs.x, got string"
        );
    }
}
