//! Scrubbing what the upstream says before a tenant or a log sees it.
//!
//! An upstream error may echo the key it was sent, whole, in another letter
//! case, or in part. viewgate passes upstream error codes and messages on
//! (they are the drop-in contract), so each is cleaned first: a code that is
//! not `UPPER_SNAKE_CASE` (at most 64 characters) becomes `UPSTREAM_ERROR`,
//! and every run of [`MIN_RUN`] or more characters that also appears in a
//! configured key, in any letter case, is replaced by `***`.

use std::borrow::Cow;

/// Shortest run of a key's characters that is removed. Eight characters of
/// a 32-byte random key are never in a message by chance, and shorter runs
/// would eat ordinary words.
pub const MIN_RUN: usize = 8;

/// Longest upstream message passed on; the rest is cut (it bounds the
/// scrubbing work, which grows with message length × key length).
pub const MAX_MESSAGE: usize = 512;

/// The code given instead of one that is not a plain V2 code.
pub const FALLBACK_CODE: &str = "UPSTREAM_ERROR";

/// Removes fragments of known secrets from text.
#[derive(Clone, Default)]
pub struct Scrubber {
    /// Each secret, ASCII-lowercased.
    secrets: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} secrets)", self.secrets.len())
    }
}

impl Scrubber {
    /// A scrubber of `secrets` (their case does not matter).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        Self {
            secrets: secrets
                .into_iter()
                .filter(|s| !s.is_empty())
                .map(|s| s.to_ascii_lowercase())
                .collect(),
        }
    }

    /// `text` with every run of [`MIN_RUN`]+ characters of a secret replaced
    /// by `***`, cut to [`MAX_MESSAGE`] bytes first.
    pub fn message<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let text = cut(text, MAX_MESSAGE);
        let mut marked = vec![false; text.len()];
        let mut any = false;
        for secret in &self.secrets {
            any |= mark_common_runs(text.as_bytes(), secret, &mut marked);
        }
        if !any {
            return Cow::Borrowed(text);
        }
        // Marked bytes are ASCII (secrets are header values), so every
        // unmarked stretch starts and ends on a character boundary.
        let mut out = String::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            if marked[i] {
                out.push_str("***");
                while i < text.len() && marked[i] {
                    i += 1;
                }
            } else {
                let start = i;
                while i < text.len() && !marked[i] {
                    i += 1;
                }
                out.push_str(&text[start..i]);
            }
        }
        Cow::Owned(out)
    }

    /// The upstream's code if it is a plain V2 code that reveals no secret,
    /// else [`FALLBACK_CODE`].
    pub fn code(&self, code: &str) -> String {
        let plain = !code.is_empty()
            && code.len() <= 64
            && code.as_bytes()[0].is_ascii_uppercase()
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if plain && matches!(self.message(code), Cow::Borrowed(_)) {
            code.to_string()
        } else {
            FALLBACK_CODE.to_string()
        }
    }
}

/// Marks in `marked` every byte of `text` that lies in a run of at least
/// [`MIN_RUN`] bytes also found, contiguously, in `secret` (compared
/// ASCII-case-insensitively). Longest-common-substring table, one row at a time.
fn mark_common_runs(text: &[u8], secret: &[u8], marked: &mut [bool]) -> bool {
    let mut previous = vec![0usize; secret.len() + 1];
    let mut current = vec![0usize; secret.len() + 1];
    let mut any = false;
    for (i, &t) in text.iter().enumerate() {
        let t = t.to_ascii_lowercase();
        for (j, &s) in secret.iter().enumerate() {
            current[j + 1] = if t == s { previous[j] + 1 } else { 0 };
            let run = current[j + 1];
            if run >= MIN_RUN {
                for m in &mut marked[i + 1 - run..=i] {
                    *m = true;
                }
                any = true;
            }
        }
        std::mem::swap(&mut previous, &mut current);
    }
    any
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "lk_Test0nlyNotAKeyXyZ123456789";

    fn scrubber() -> Scrubber {
        Scrubber::new([KEY.as_bytes(), b"second-secret-value".as_slice()])
    }

    #[test]
    fn keys_are_removed_whole_in_any_case_and_in_part() {
        let s = scrubber();
        for echoed in [
            KEY.to_string(),
            KEY.to_lowercase(),
            KEY.to_uppercase(),
            KEY[..KEY.len() - 1].to_string(),
            KEY[1..].to_string(),
            KEY[5..13].to_string(),
        ] {
            let text = format!("key {echoed} is not allowed");
            assert_eq!(s.message(&text), "key *** is not allowed", "{echoed}");
        }
        assert_eq!(
            s.message("both lk_Test0nlyNotAKeyXyZ123456789 and SECOND-SECRET"),
            "both *** and ***"
        );
    }

    #[test]
    fn ordinary_messages_are_untouched() {
        let s = scrubber();
        for text in [
            "account not found",
            "count must be at most 100",
            "Test0nl", // seven characters of the key: too short to be a leak
            "é unicode ünïcode",
        ] {
            assert!(matches!(s.message(text), Cow::Borrowed(_)), "{text}");
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = Scrubber::default();
        let text = "é".repeat(400);
        let out = s.message(&text);
        assert!(out.len() <= MAX_MESSAGE);
        assert!(out.chars().all(|c| c == 'é'));
    }

    #[test]
    fn codes_must_be_plain_and_secret_free() {
        let s = Scrubber::new([b"ABCDEFGHIJKLMNOP".as_slice()]);
        assert_eq!(s.code("INVALID_PARAMS"), "INVALID_PARAMS");
        assert_eq!(s.code("ACCOUNT_INACTIVE"), "ACCOUNT_INACTIVE");
        for bad in [
            "",
            "invalid_params",
            "Invalid",
            "_X",
            "A B",
            "ABCDEFGHIJK", // eleven characters of a key, upper case
            &"A".repeat(65),
            "CODE\n",
        ] {
            assert_eq!(s.code(bad), FALLBACK_CODE, "{bad:?}");
        }
        let s = scrubber();
        assert_eq!(s.code(KEY), FALLBACK_CODE);
        assert_eq!(s.code(&KEY.to_uppercase()), FALLBACK_CODE);
    }
}
