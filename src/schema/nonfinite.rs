//! Non-finite numbers in run files. JSON has no NaN or infinity; a diverged run records them
//! anyway. Written: NaN as `null`, +∞ as the string `"Infinity"`, −∞ as `"-Infinity"`; finite
//! values as plain numbers. Read: numbers, `null` (NaN: also what older writers wrote for every
//! non-finite value) and the strings `"NaN"`, `"Infinity"`, `"-Infinity"` (also `"inf"`,
//! `"-inf"`, `"nan"`, any case). Used with `#[serde(with = "crate::schema::nonfinite")]` on every
//! recorded number that may be non-finite, and on containers of them ([`NonFinite`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

/// A number, or a container of numbers, written and read with the non-finite scheme above.
pub trait NonFinite: Sized {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error>;
    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

/// `serialize_with` for any [`NonFinite`].
pub fn serialize<T: NonFinite, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    v.ser(s)
}

/// `deserialize_with` for any [`NonFinite`].
pub fn deserialize<'de, T: NonFinite, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    T::de(d)
}

/// Serializes a borrowed [`NonFinite`] with the scheme.
pub struct Ser<'a, T>(pub &'a T);

impl<T: NonFinite> Serialize for Ser<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.ser(s)
    }
}

/// Deserializes a [`NonFinite`] with the scheme.
pub struct De<T>(pub T);

impl<'de, T: NonFinite> Deserialize<'de> for De<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::de(d).map(De)
    }
}

/// The string a non-finite value is written as (None for NaN, which is written as null).
pub fn nonfinite_str(v: f64) -> Option<&'static str> {
    if v == f64::INFINITY {
        Some("Infinity")
    } else if v == f64::NEG_INFINITY {
        Some("-Infinity")
    } else {
        None
    }
}

struct NumVisitor;

impl<'de> Visitor<'de> for NumVisitor {
    type Value = f64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, null (NaN), \"NaN\", \"Infinity\" or \"-Infinity\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
        Ok(v as f64)
    }

    fn visit_unit<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }

    fn visit_none<E: de::Error>(self) -> Result<f64, E> {
        Ok(f64::NAN)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<f64, D::Error> {
        d.deserialize_any(NumVisitor)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
        match v.to_ascii_lowercase().as_str() {
            "nan" => Ok(f64::NAN),
            "infinity" | "inf" | "+infinity" | "+inf" => Ok(f64::INFINITY),
            "-infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

impl NonFinite for f64 {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_finite() {
            s.serialize_f64(*self)
        } else if let Some(t) = nonfinite_str(*self) {
            s.serialize_str(t)
        } else {
            s.serialize_none()
        }
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumVisitor)
    }
}

impl NonFinite for f32 {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_finite() {
            s.serialize_f32(*self)
        } else {
            f64::from(*self).ser(s)
        }
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        f64::de(d).map(|v| v as f32)
    }
}

impl<T: NonFinite> NonFinite for Vec<T> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Ser))
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Vec::<De<T>>::deserialize(d)?
            .into_iter()
            .map(|v| v.0)
            .collect())
    }
}

impl<K: Serialize + for<'a> Deserialize<'a> + Ord, T: NonFinite> NonFinite for BTreeMap<K, T> {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter().map(|(k, v)| (k, Ser(v))))
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(BTreeMap::<K, De<T>>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect())
    }
}

/// A (token id, number) pair, written as a two-element array.
impl<T: NonFinite> NonFinite for (u32, T) {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.0, Ser(&self.1)).serialize(s)
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (id, De(v)) = <(u32, De<T>)>::deserialize(d)?;
        Ok((id, v))
    }
}

impl<const N: usize> NonFinite for [f64; N] {
    fn ser<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Ser))
    }

    fn de<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Vec::<f64>::de(d)?;
        let n = v.len();
        v.try_into()
            .map_err(|_| de::Error::invalid_length(n, &format!("{N} numbers").as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct R {
        #[serde(with = "super")]
        x: Vec<f64>,
        #[serde(with = "super")]
        t: Vec<Vec<(u32, f32)>>,
    }

    #[test]
    fn every_non_finite_value_round_trips() {
        let r = R {
            x: vec![1.5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.25],
            t: vec![vec![(3, f32::NEG_INFINITY), (4, f32::NAN), (5, -1.0)]],
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"x":[1.5,null,"Infinity","-Infinity",-0.25],"t":[[[3,"-Infinity"],[4,null],[5,-1.0]]]}"#
        );
        let back: R = serde_json::from_str(&s).unwrap();
        assert_eq!(back.x[0], 1.5);
        assert!(back.x[1].is_nan());
        assert_eq!(back.x[2], f64::INFINITY);
        assert_eq!(back.x[3], f64::NEG_INFINITY);
        assert_eq!(back.t[0][0], (3, f32::NEG_INFINITY));
        assert!(back.t[0][1].1.is_nan());
        let other: R = serde_json::from_str(r#"{"x":["NaN","inf",2],"t":[]}"#).unwrap();
        assert!(other.x[0].is_nan() && other.x[1] == f64::INFINITY && other.x[2] == 2.0);
        let e = serde_json::from_str::<R>(r#"{"x":["big"],"t":[]}"#).unwrap_err();
        assert!(e.to_string().contains("\"big\""), "{e}");
    }
}
