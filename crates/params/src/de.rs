//! serde support: a parsed [`Value`] or [`Object`] deserializes into any
//! `Deserialize` type, borrowing strings where the target type allows.

use serde::de::value::{BorrowedStrDeserializer, MapDeserializer, SeqDeserializer};
use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, Unexpected, VariantAccess,
    Visitor,
};

use crate::error::ParamError;
use crate::value::{Object, Value};

fn visit_array<'de, 'a: 'de, V: Visitor<'de>>(
    items: &'de [Value<'a>],
    visitor: V,
) -> Result<V::Value, ParamError> {
    let mut seq = SeqDeserializer::new(items.iter());
    let value = visitor.visit_seq(&mut seq)?;
    seq.end()?;
    Ok(value)
}

fn visit_object<'de, 'a: 'de, V: Visitor<'de>>(
    object: &'de Object<'a>,
    visitor: V,
) -> Result<V::Value, ParamError> {
    let mut map = MapDeserializer::new(
        object
            .entries()
            .iter()
            .map(|(k, v)| (BorrowedStrDeserializer::new(k.as_ref()), v)),
    );
    let value = visitor.visit_map(&mut map)?;
    map.end()?;
    Ok(value)
}

fn unexpected<'v>(value: &'v Value<'_>) -> Unexpected<'v> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(i)) => Unexpected::Signed(i),
            (None, None) => Unexpected::Float(n.as_f64()),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

/// Deserializes from a borrowed value: `T::deserialize(&value)`.
///
/// ```
/// use cloudproxy_params::Value;
/// use serde::Deserialize;
///
/// #[derive(Deserialize, PartialEq, Debug)]
/// struct Codec<'a> {
///     name: &'a str,
///     rates: Vec<u32>,
/// }
///
/// let v = Value::parse(r#"{"name":"opus","rates":[16000,48000]}"#)?;
/// let codec = Codec::deserialize(&v)?;
/// assert_eq!(codec, Codec { name: "opus", rates: vec![16000, 48000] });
/// # Ok::<(), cloudproxy_params::ParamError>(())
/// ```
impl<'de, 'a: 'de> Deserializer<'de> for &'de Value<'a> {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        match self {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => n.visit(visitor),
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visit_array(items, visitor),
            Value::Object(object) => visit_object(object, visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        match self {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, ParamError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ParamError> {
        match self {
            Value::String(s) => visitor.visit_enum(BorrowedStrDeserializer::new(s.as_ref())),
            Value::Object(object) if object.len() == 1 => {
                let (variant, value) = &object.entries()[0];
                visitor.visit_enum(Enum { variant, value })
            }
            other => Err(de::Error::invalid_type(
                unexpected(other),
                &"a string or an object with one key",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

impl<'de, 'a: 'de> IntoDeserializer<'de, ParamError> for &'de Value<'a> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// Deserializes an object as a map or struct: `T::deserialize(&object)`.
impl<'de, 'a: 'de> Deserializer<'de> for &'de Object<'a> {
    type Error = ParamError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ParamError> {
        visit_object(self, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

impl<'de, 'a: 'de> IntoDeserializer<'de, ParamError> for &'de Object<'a> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// `{"Variant": value}` as an enum.
struct Enum<'de, 'a> {
    variant: &'de str,
    value: &'de Value<'a>,
}

impl<'de, 'a: 'de> EnumAccess<'de> for Enum<'de, 'a> {
    type Error = ParamError;
    type Variant = Variant<'de, 'a>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), ParamError> {
        let variant = seed.deserialize(BorrowedStrDeserializer::new(self.variant))?;
        Ok((variant, Variant { value: self.value }))
    }
}

struct Variant<'de, 'a> {
    value: &'de Value<'a>,
}

impl<'de, 'a: 'de> VariantAccess<'de> for Variant<'de, 'a> {
    type Error = ParamError;

    fn unit_variant(self) -> Result<(), ParamError> {
        match self.value {
            Value::Null => Ok(()),
            other => Err(de::Error::invalid_type(unexpected(other), &"null")),
        }
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, ParamError> {
        seed.deserialize(self.value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, ParamError> {
        self.value.deserialize_seq(visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ParamError> {
        self.value.deserialize_map(visitor)
    }
}
