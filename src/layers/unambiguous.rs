//! Params that every JSON reader reads the same way.
//!
//! viewgate forwards a call's params as the client wrote them, but keys its
//! cache and its idempotency fingerprints by their parsed, canonical form.
//! Two texts that parse to the same value must therefore mean the same thing
//! upstream too, or one tenant's cached answer would be served for another
//! question. Two kinds of JSON break that: an object that repeats a key
//! (readers differ on which one wins) and a number a double cannot hold
//! exactly (an arbitrary-precision reader tells apart what a double merges).
//! Both are refused before anything is looked up or sent.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Significant digits a decimal may have and still name one double only.
const EXACT_DIGITS: usize = 15;

/// How deep params may nest. Each level is walked with a parser of its own
/// (so serde_json's own depth limit never applies) and reread by every level
/// above it: the bound keeps both the stack and the work per request small.
/// No V2 action's params come near it.
pub(crate) const MAX_DEPTH: usize = 32;

/// Checks `text` (one JSON value): no object repeats a key, every number is
/// one a double holds exactly, and nothing nests deeper than [`MAX_DEPTH`].
/// `Err` says what is wrong.
pub(crate) fn check(text: &str) -> Result<(), String> {
    check_at(text, 1)
}

/// [`check`] of a value `depth` levels down.
fn check_at(text: &str, depth: usize) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "params nest deeper than {MAX_DEPTH} levels of objects and arrays"
        ));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_any(Walk { depth })
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())
}

/// Visits a value `depth` levels down; each member of an object or array is
/// taken as raw text and walked in turn, so numbers are judged by how they
/// were written.
struct Walk {
    depth: usize,
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        // Judged from the text by `member`; a bare top-level number is not params.
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&RawValue>()? {
            member(raw, self.depth).map_err(de::Error::custom)?;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let raw = map.next_value::<&RawValue>()?;
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("params repeat the key {key:?}")));
            }
            member(raw, self.depth).map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

/// One member of a value `depth` levels down: a number is checked by its
/// text, an object or array walked one level further.
fn member(raw: &RawValue, depth: usize) -> Result<(), String> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => exact_number(text),
        Some(b'{' | b'[') => check_at(text, depth + 1),
        _ => Ok(()),
    }
}

/// Whether the number written as `text` names one double and nothing else:
/// an integer within 64 bits, or at most 15 significant digits.
fn exact_number(text: &str) -> Result<(), String> {
    let plain_integer = text.bytes().all(|b| b.is_ascii_digit() || b == b'-');
    if plain_integer && (text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok()) {
        return Ok(());
    }
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits: String = mantissa
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(char::from)
        .collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    // Finite, and in the normal range: a subnormal keeps only a few digits,
    // and a non-zero number that underflows to 0 keeps none.
    let normal = text
        .parse::<f64>()
        .is_ok_and(|v| v.is_finite() && (v.is_normal() || (v == 0.0 && significant == 0)));
    if significant <= EXACT_DIGITS && normal {
        Ok(())
    } else {
        Err(format!(
            "the number {text} has more precision than a double holds; send at most {EXACT_DIGITS} significant digits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_DEPTH, check};

    #[test]
    fn nesting_is_bounded_without_exhausting_the_stack() {
        let nested = |depth: usize| {
            // `depth` levels in all: the object and depth - 1 arrays.
            format!(
                r#"{{"x":{}{}}}"#,
                "[".repeat(depth - 1),
                "]".repeat(depth - 1)
            )
        };
        assert_eq!(check(&nested(MAX_DEPTH)), Ok(()));
        let err = check(&nested(MAX_DEPTH + 1)).unwrap_err();
        assert!(err.contains("nest deeper"), "{err}");
        // Deep enough to overflow a serving thread's stack when unbounded.
        let err = check(&nested(100_000)).unwrap_err();
        assert!(err.contains("nest deeper"), "{err}");
    }

    #[test]
    fn plain_params_pass() {
        for ok in [
            r#"{}"#,
            r#"{"count": 25, "offset": 0, "keyword": "rust", "flags": [true, null, 1.5]}"#,
            r#"{"n": -9223372036854775808, "m": 18446744073709551615}"#,
            r#"{"x": 0.1, "y": 1e300, "z": 123456789012345e-3, "w": 0.000000000000000001}"#,
            r#"{"zero": 0.0, "nz": -0, "e": 0e5, "small": 3e-308}"#,
            r#"{"a": {"b": {"c": [1, 2, {"d": 3}]}}, "b": {"c": 1}}"#,
            r#"{"a": [{"k": 1}, {"k": 2}]}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn repeated_keys_are_refused_at_any_depth() {
        for bad in [
            r#"{"a": 1, "a": 2}"#,
            r#"{"a": {"b": 1, "b": 1}}"#,
            r#"{"a": [{"k": 1, "k": 2}]}"#,
            r#"{"a\u0062": 1, "ab": 2}"#,
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains("repeat"), "{bad}: {err}");
        }
    }

    #[test]
    fn numbers_a_double_would_merge_are_refused() {
        for bad in [
            r#"{"id": 18446744073709551616}"#,
            r#"{"id": -9223372036854775809}"#,
            r#"{"id": 123456789012345678901234567890}"#,
            r#"{"x": 0.1000000000000000001}"#,
            r#"{"x": [1, {"y": 1.2345678901234567}]}"#,
            r#"{"x": 1e400}"#,
            r#"{"x": 4e-324}"#,
            r#"{"x": 1.00001e-320}"#,
            r#"{"x": 123456789012345e-330}"#,
            r#"{"x": 1e-400}"#,
        ] {
            let err = check(bad).expect_err(bad);
            assert!(err.contains("precision"), "{bad}: {err}");
        }
    }
}
