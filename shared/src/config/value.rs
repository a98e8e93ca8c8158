//! A serde deserializer over a parsed `toml::Value` whose error type keeps what serde's
//! derived code reports as data: an unknown key (and the keys it expected), a missing key,
//! an unknown enum variant (and the variants). The loader acts on these by kind; it never
//! reads an error's text to find out what went wrong. Other failures (a wrong type, a value
//! out of range) carry serde's own message, shown to the person as is.

use std::fmt;

use serde::de::value::{MapDeserializer, SeqDeserializer};
use serde::de::{self, IntoDeserializer, Visitor};

/// Why a value did not deserialize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Failure {
    UnknownKey {
        key: String,
        expected: &'static [&'static str],
    },
    MissingKey(&'static str),
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    /// A wrong type or value, in serde's words (or a type's own, such as a secret's).
    BadValue(String),
}

impl de::Error for Failure {
    fn custom<T: fmt::Display>(message: T) -> Self {
        Failure::BadValue(message.to_string())
    }

    fn unknown_field(key: &str, expected: &'static [&'static str]) -> Self {
        Failure::UnknownKey {
            key: key.to_owned(),
            expected,
        }
    }

    fn missing_field(key: &'static str) -> Self {
        Failure::MissingKey(key)
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Failure::UnknownVariant {
            variant: variant.to_owned(),
            expected,
        }
    }
}

impl std::error::Error for Failure {}

/// "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.as_slice() {
        [] => "nothing".to_owned(),
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        _ => format!("one of {}", quoted.join(", ")),
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::UnknownKey { key, expected } => {
                write!(f, "unknown key `{key}`, expected {}", one_of(expected))
            }
            Failure::MissingKey(key) => write!(f, "missing key `{key}`"),
            Failure::UnknownVariant { variant, expected } => {
                write!(
                    f,
                    "unknown variant `{variant}`, expected {}",
                    one_of(expected)
                )
            }
            Failure::BadValue(message) => f.write_str(message),
        }
    }
}

/// Deserializes a TOML value with [`Failure`] as its error.
#[derive(Debug)]
pub(super) struct ValueDeserializer(pub(super) toml::Value);

impl<'de> IntoDeserializer<'de, Failure> for ValueDeserializer {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer {
    type Error = Failure;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Failure> {
        match self.0 {
            toml::Value::String(s) => visitor.visit_string(s),
            toml::Value::Integer(i) => visitor.visit_i64(i),
            toml::Value::Float(x) => visitor.visit_f64(x),
            toml::Value::Boolean(b) => visitor.visit_bool(b),
            toml::Value::Datetime(d) => visitor.visit_string(d.to_string()),
            toml::Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(ValueDeserializer));
                let value = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(value)
            }
            toml::Value::Table(table) => {
                let mut map = MapDeserializer::new(
                    table
                        .into_iter()
                        .map(|(key, value)| (key, ValueDeserializer(value))),
                );
                let value = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(value)
            }
        }
    }

    /// A key that is there is `Some`; an absent one never reaches a deserializer.
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Failure> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Failure> {
        visitor.visit_newtype_struct(self)
    }

    /// Config enums are strings (`kind = "file"`): a unit variant by name.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Failure> {
        match self.0 {
            toml::Value::String(s) => visitor.visit_enum(s.into_deserializer()),
            other => ValueDeserializer(other).deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}
