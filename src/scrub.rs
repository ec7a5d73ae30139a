//! Scrubbing what the upstream says before a tenant or a log sees it.
//!
//! An upstream error may echo the key it was sent, whole, in another letter
//! case, or in part. viewgate passes upstream error codes and messages on
//! (they are the drop-in contract), so each is cleaned first: a code that is
//! not `UPPER_SNAKE_CASE` (at most 64 characters) becomes `UPSTREAM_ERROR`,
//! and every run of [`MIN_RUN`] or more characters that also appears in a
//! configured key, in any letter case, is replaced by `***`.

use std::borrow::Cow;
use std::collections::HashSet;

/// Shortest run of a key's characters that is removed. Eight characters of
/// a 32-byte random key are never in a message by chance, and shorter runs
/// would eat ordinary words.
pub(crate) const MIN_RUN: usize = 8;

/// Longest upstream message passed on; the rest is cut (it bounds the
/// scrubbing work, which grows with message length × key length).
pub(crate) const MAX_MESSAGE: usize = 512;

/// The code given instead of one that is not a plain V2 code.
pub(crate) const FALLBACK_CODE: &str = "UPSTREAM_ERROR";

/// Removes fragments of known secrets from text.
#[derive(Clone, Default)]
pub(crate) struct Scrubber {
    /// Every run of [`MIN_RUN`] bytes of every secret, ASCII-lowercased and
    /// packed into a `u64`: a text leaks where one of its windows is here.
    windows: HashSet<u64, foldhash::fast::FixedState>,
    /// One bit per [`slot`] of every run of [`GRAM`] bytes of every secret
    /// (lowercased). Every window of [`MIN_RUN`] bytes covers one of a
    /// text's [`GRAM`]-byte blocks at a multiple of [`GRAM`], and a window
    /// that is in `windows` has all its blocks here: so only blocks are
    /// tested, a quarter of the positions, and only around a block whose
    /// bit is set are windows looked up.
    filter: Box<[u64]>,
    /// Secrets shorter than [`MIN_RUN`], lowercased: matched whole.
    short: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} windows)", self.windows.len())
    }
}

/// Bits in [`Scrubber::filter`] (a power of two).
const FILTER_BITS: usize = 1 << 16;

/// Length of the blocks [`Scrubber::filter`] holds: half of [`MIN_RUN`], so
/// any window of [`MIN_RUN`] bytes holds a whole block starting at a
/// multiple of it.
const GRAM: usize = MIN_RUN / 2;

/// `bytes` (exactly [`GRAM`] of them) ASCII-lowercased and packed.
fn pack_gram(bytes: &[u8]) -> u64 {
    let gram: [u8; GRAM] = bytes.try_into().expect("a block of GRAM bytes");
    lowercase(u64::from(u32::from_le_bytes(gram)))
}

/// `bytes` (exactly [`MIN_RUN`] of them) ASCII-lowercased and packed.
fn pack(bytes: &[u8]) -> u64 {
    let word: [u8; MIN_RUN] = bytes.try_into().expect("a window of MIN_RUN bytes");
    lowercase(u64::from_le_bytes(word))
}

/// The eight bytes of `word`, each ASCII-lowercased (bytes that are not
/// ASCII upper-case letters are kept): `'A'..='Z'` gain 0x20, found eight at
/// a time with carries that cannot cross bytes (every byte is below 0x80
/// before each addition).
fn lowercase(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let low7 = word & (0x7f * ONES);
    let at_least_a = low7 + (0x80 - u64::from(b'A')) * ONES;
    let above_z = low7 + (0x80 - u64::from(b'Z') - 1) * ONES;
    let upper = at_least_a & !above_z & !word & (0x80 * ONES);
    word | (upper >> 2)
}

/// Where a packed window's bit is in [`Scrubber::filter`].
fn slot(packed: u64) -> usize {
    (packed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48) as usize & (FILTER_BITS - 1)
}

impl Scrubber {
    /// A scrubber of `secrets` (their case does not matter).
    pub(crate) fn new<'a>(secrets: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut scrubber = Scrubber::default();
        let mut filter = vec![0u64; FILTER_BITS / 64];
        for secret in secrets.into_iter().filter(|s| !s.is_empty()) {
            if secret.len() < MIN_RUN {
                scrubber.short.push(secret.to_ascii_lowercase());
            } else {
                scrubber.windows.extend(secret.windows(MIN_RUN).map(pack));
                // Every run of GRAM bytes of the secret, not only the halves
                // of its windows: in a key shorter than 12 bytes some runs
                // are neither, and a window of the text may hold only such
                // a run at a multiple of GRAM.
                for gram in secret.windows(GRAM) {
                    let at = slot(pack_gram(gram));
                    filter[at / 64] |= 1 << (at % 64);
                }
            }
        }
        if !scrubber.windows.is_empty() {
            scrubber.filter = filter.into_boxed_slice();
        }
        scrubber
    }

    /// Marks every byte of `text` inside a window of [`MIN_RUN`] bytes that a
    /// secret also contains (overlapping windows mark whole runs), or inside
    /// a whole short secret. `None` when nothing is marked.
    fn mark(&self, text: &[u8], known: &Known<'_>) -> Option<Vec<bool>> {
        let mut marked: Option<Vec<bool>> = None;
        let mut mark = |from: usize, len: usize| {
            let m = marked.get_or_insert_with(|| vec![false; text.len()]);
            for b in &mut m[from..from + len] {
                *b = true;
            }
        };
        if !self.windows.is_empty() && text.len() >= MIN_RUN {
            let last_start = text.len() - MIN_RUN;
            let in_filter = |gram: u64| {
                let at = slot(gram);
                self.filter[at / 64] & (1 << (at % 64)) != 0
            };
            let mut look_around = |block: usize| {
                // The windows that hold this block whole.
                let block_start = block * GRAM;
                let first = block_start.saturating_sub(MIN_RUN - GRAM);
                for start in first..=block_start.min(last_start) {
                    let window = pack(&text[start..start + MIN_RUN]);
                    if self.windows.contains(&window) && !known.has(window) {
                        mark(start, MIN_RUN);
                    }
                }
            };
            // Two blocks per load: a word lowercased at once is its two
            // halves lowercased (the letters are done byte by byte). This
            // loop is most of a miss's scrubbing, run on every page.
            let words = text.chunks_exact(2 * GRAM);
            let tail = words.remainder();
            for (w, word) in words.enumerate() {
                let word = pack(word);
                if in_filter(word & 0xffff_ffff) {
                    look_around(2 * w);
                }
                if in_filter(word >> 32) {
                    look_around(2 * w + 1);
                }
            }
            if tail.len() >= GRAM && in_filter(pack_gram(&tail[..GRAM])) {
                look_around(text.len() / (2 * GRAM) * 2);
            }
        }
        for short in self.short.iter().filter(|s| !known.has_short(s)) {
            for (i, window) in text.windows(short.len()).enumerate() {
                if window.eq_ignore_ascii_case(short) {
                    mark(i, short.len());
                }
            }
        }
        marked
    }

    /// Whether `bytes` holds a fragment of a secret.
    pub(crate) fn leaks(&self, bytes: &[u8]) -> bool {
        self.mark(bytes, &Known::nothing()).is_some()
    }

    /// `bytes` with each run of marked bytes replaced by `***`.
    #[cfg(test)]
    pub(crate) fn bytes<'t>(&self, bytes: &'t [u8]) -> Cow<'t, [u8]> {
        self.bytes_known(bytes, &Known::nothing())
    }

    /// [`Self::bytes`], leaving runs the client itself sent.
    fn bytes_known<'t>(&self, bytes: &'t [u8], known: &Known<'_>) -> Cow<'t, [u8]> {
        match self.mark(bytes, known) {
            Some(marked) => Cow::Owned(starred(bytes, &marked)),
            None => Cow::Borrowed(bytes),
        }
    }

    /// `data`, a JSON value from the upstream, with no run of a secret in it
    /// as a client reads it: in its strings once their escapes are decoded
    /// (`\u006c\u006b…` or `\/` spell a key as surely as the key itself),
    /// and in its bytes as they stand. Untouched (borrowed, byte for byte)
    /// when it holds none. A string or object key written with escapes that
    /// holds one is decoded, scrubbed and written again (valid JSON, the
    /// same text but for the runs); a run in the bytes as they stand is
    /// cut out, as [`Self::bytes`] does (inside a string that keeps it a
    /// string; in a number it leaves the number cut). Runs that are also in
    /// `known`, the client's own request, are left: they are no news to it,
    /// and starring them would tell it which of its guesses are in a key.
    ///
    /// The strings are found by a scan of the bytes, not by parsing `data`
    /// into a value: a page the envelope accepted but a value cannot hold
    /// (a number out of range, nesting past the parser's limit, a lone
    /// surrogate, a key given twice) is checked like any other.
    pub(crate) fn json<'t>(&self, data: &'t [u8], known: &Known<'_>) -> Cow<'t, [u8]> {
        let escaped = data.contains(&b'\\');
        let raw = self.mark(data, known);
        if raw.is_none() && !escaped {
            return Cow::Borrowed(data);
        }
        let mut decoded_out: Option<Vec<u8>> = None;
        if escaped {
            let mut out = Vec::new();
            let mut copied = 0;
            for (start, end, inner) in escaped_strings(data) {
                let text = decode_string(inner);
                if let Cow::Owned(clean) = self.bytes_known(text.as_bytes(), known) {
                    out.extend_from_slice(&data[copied..start]);
                    // Marked bytes are ASCII (secrets are header values), so
                    // what is left is the decoded text, still UTF-8.
                    let clean = String::from_utf8_lossy(&clean);
                    let _ = serde_json::to_writer(&mut out, &*clean);
                    copied = end;
                }
            }
            if copied > 0 {
                out.extend_from_slice(&data[copied..]);
                decoded_out = Some(out);
            }
        }
        match (decoded_out, raw) {
            (Some(written), _) => match self.bytes_known(&written, known) {
                Cow::Borrowed(_) => Cow::Owned(written),
                Cow::Owned(cut) => Cow::Owned(cut),
            },
            (None, Some(marked)) => Cow::Owned(starred(data, &marked)),
            (None, None) => Cow::Borrowed(data),
        }
    }

    /// `text` with every run of [`MIN_RUN`]+ characters of a secret replaced
    /// by `***`, cut to [`MAX_MESSAGE`] bytes first.
    /// Runs also in `known`, the client's own request, are left (see
    /// [`Self::json`]).
    pub(crate) fn message<'t>(&self, text: &'t str, known: &Known<'_>) -> Cow<'t, str> {
        let text = cut(text, MAX_MESSAGE);
        match self.bytes_known(text.as_bytes(), known) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // Marked bytes are ASCII (secrets are header values), so cutting
            // them out leaves valid UTF-8.
            Cow::Owned(out) => Cow::Owned(String::from_utf8_lossy(&out).into_owned()),
        }
    }

    /// The upstream's code if it is a plain V2 code that reveals no secret,
    /// else [`FALLBACK_CODE`].
    pub(crate) fn code(&self, code: &str) -> String {
        let plain = !code.is_empty()
            && code.len() <= 64
            && code.as_bytes()[0].is_ascii_uppercase()
            && code
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if plain && !self.leaks(code.as_bytes()) {
            code.to_string()
        } else {
            FALLBACK_CODE.to_string()
        }
    }
}

/// What the client itself sent (its request body): a run of a secret that
/// is also in it is no news to that client. Its windows are only computed
/// when a run is found, which is rare.
pub(crate) struct Known<'a> {
    text: &'a [u8],
    windows: std::sync::OnceLock<HashSet<u64, foldhash::fast::FixedState>>,
}

impl<'a> Known<'a> {
    /// Nothing known: every run is scrubbed.
    pub(crate) const fn nothing() -> Known<'static> {
        Known {
            text: b"",
            windows: std::sync::OnceLock::new(),
        }
    }

    /// The client sent `text`.
    pub(crate) fn new(text: &'a [u8]) -> Self {
        Known {
            text,
            windows: std::sync::OnceLock::new(),
        }
    }

    /// Every window of [`MIN_RUN`] bytes of the text, lowercased, as it
    /// stands and in its strings decoded.
    fn windows(&self) -> &HashSet<u64, foldhash::fast::FixedState> {
        self.windows.get_or_init(|| {
            let mut set = HashSet::default();
            set.extend(self.text.windows(MIN_RUN).map(pack));
            for (_, _, inner) in escaped_strings(self.text) {
                set.extend(decode_string(inner).as_bytes().windows(MIN_RUN).map(pack));
            }
            set
        })
    }

    fn has(&self, window: u64) -> bool {
        !self.text.is_empty() && self.windows().contains(&window)
    }

    fn has_short(&self, short: &[u8]) -> bool {
        !self.text.is_empty()
            && self
                .text
                .windows(short.len())
                .any(|w| w.eq_ignore_ascii_case(short))
    }
}

/// Where the JSON strings of `data` are: `(start, end)` of each, quotes
/// included (an unterminated one runs to the end). Object keys are strings
/// too.
fn string_tokens(data: &[u8]) -> Vec<(usize, usize)> {
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data[i] != b'"' {
            i += 1;
            continue;
        }
        let start = i;
        i += 1;
        while i < data.len() && data[i] != b'"' {
            // An escape takes the next byte with it (`\"` does not end the string).
            i += if data[i] == b'\\' { 2 } else { 1 };
        }
        i = (i + 1).min(data.len());
        tokens.push((start, i));
    }
    tokens
}

/// The strings of `data` written with escapes: `(start, end, inside)`, the
/// token's bounds (quotes included) and what is between its quotes.
fn escaped_strings(data: &[u8]) -> impl Iterator<Item = (usize, usize, &[u8])> {
    string_tokens(data)
        .into_iter()
        .filter_map(move |(start, end)| {
            let inside = &data[start + 1..end.saturating_sub(1).max(start + 1)];
            inside.contains(&b'\\').then_some((start, end, inside))
        })
}

/// The text a client reads from the inside of a JSON string: escapes
/// decoded, a surrogate pair joined, a lone surrogate or a broken escape
/// read as U+FFFD (it cannot be part of a key, whose bytes are ASCII).
fn decode_string(inner: &[u8]) -> String {
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    let hex4 = |at: usize| -> Option<u32> {
        let digits = inner.get(at..at + 4)?;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    };
    while i < inner.len() {
        if inner[i] != b'\\' {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let Some(&kind) = inner.get(i + 1) else {
            break;
        };
        i += 2;
        let simple = match kind {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(0x08),
            b'f' => Some(0x0c),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(byte) = simple {
            out.push(byte);
            continue;
        }
        let mut c = char::REPLACEMENT_CHARACTER;
        if kind == b'u'
            && let Some(unit) = hex4(i)
        {
            i += 4;
            let low = (0xd800..0xdc00)
                .contains(&unit)
                .then(|| {
                    let next = inner.get(i..i + 2)? == b"\\u";
                    let low = hex4(i + 2).filter(|l| next && (0xdc00..0xe000).contains(l))?;
                    Some(low)
                })
                .flatten();
            let scalar = match low {
                Some(low) => {
                    i += 6;
                    0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00)
                }
                None => unit,
            };
            c = char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER);
        }
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `bytes` with each run of `marked` bytes replaced by `***`.
fn starred(bytes: &[u8], marked: &[bool]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if marked[i] {
            out.extend_from_slice(b"***");
            while i < bytes.len() && marked[i] {
                i += 1;
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
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
            assert_eq!(
                s.message(&text, &Known::nothing()),
                "key *** is not allowed",
                "{echoed}"
            );
        }
        assert_eq!(
            s.message(
                "both lk_Test0nlyNotAKeyXyZ123456789 and SECOND-SECRET",
                &Known::nothing()
            ),
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
            assert!(
                matches!(s.message(text, &Known::nothing()), Cow::Borrowed(_)),
                "{text}"
            );
        }
    }

    #[test]
    fn short_keys_are_removed_whole_and_pages_are_scrubbed_too() {
        let s = Scrubber::new([b"Ab3dE7g".as_slice(), KEY.as_bytes()]);
        assert_eq!(
            s.message("echo AB3DE7G here", &Known::nothing()),
            "echo *** here"
        );
        let page = format!(r#"{{"note":"your key is {}"}}"#, KEY.to_lowercase());
        assert!(s.leaks(page.as_bytes()));
        assert_eq!(
            &*s.bytes(page.as_bytes()),
            br#"{"note":"your key is ***"}"#.as_slice()
        );
        assert!(!s.leaks(br#"{"viewers":[{"title":"Jane Doe"}]}"#));
    }

    #[test]
    fn eight_bytes_at_once_lowercase_as_one_at_a_time() {
        // Every byte value in every position, beside neighbours that would
        // carry into it if the additions could cross bytes.
        for neighbour in [0x00u8, 0x40, 0x5a, 0x7f, 0x80, 0xc1, 0xff] {
            for b in 0..=255u8 {
                for at in 0..MIN_RUN {
                    let mut word = [neighbour; MIN_RUN];
                    word[at] = b;
                    let expected = word.map(|c| c.to_ascii_lowercase());
                    assert_eq!(
                        lowercase(u64::from_le_bytes(word)).to_le_bytes(),
                        expected,
                        "{word:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_window_of_a_key_is_found_at_every_alignment() {
        let s = scrubber();
        for i in 0..=KEY.len() - MIN_RUN {
            // Every offset in the two blocks a load reads, and every length
            // of the tail after the last whole load.
            for pad in 0..=2 * GRAM {
                for tail in 0..=2 * GRAM {
                    let text = format!(
                        "{}{}{}",
                        "#".repeat(pad),
                        &KEY[i..i + MIN_RUN],
                        "%".repeat(tail)
                    );
                    assert!(s.leaks(text.as_bytes()), "{text}");
                    let clean = s.bytes(text.as_bytes());
                    assert_eq!(
                        &*clean,
                        format!("{}***{}", "#".repeat(pad), "%".repeat(tail)).as_bytes()
                    );
                }
            }
        }
    }

    proptest::proptest! {
        /// Keys of every length from 8 (the short ones have 4-byte runs that
        /// are no half of any of their windows), at every offset and in any
        /// letter case: the block filter finds what testing every window finds.
        #[test]
        fn short_keys_are_found_at_every_offset(
            key in proptest::collection::vec(proptest::sample::select(b"abcXYZ019_-/".to_vec()), 8..14),
            from in 0usize..6,
            len in 8usize..14,
            pad in 0usize..9,
            upper in proptest::bool::ANY,
        ) {
            let s = Scrubber::new([key.as_slice()]);
            let from = from.min(key.len() - MIN_RUN);
            let len = len.min(key.len() - from);
            let mut piece = key[from..from + len].to_vec();
            if upper {
                piece.make_ascii_uppercase();
            }
            let mut text = vec![b'#'; pad];
            text.extend_from_slice(&piece);
            text.extend_from_slice(b"%%%");
            proptest::prop_assert!(s.leaks(&text), "{:?} in {:?}", piece, text);
            let mut every = vec![false; text.len()];
            for (i, w) in text.windows(MIN_RUN).enumerate() {
                if s.windows.contains(&pack(w)) {
                    every[i..i + MIN_RUN].iter_mut().for_each(|b| *b = true);
                }
            }
            proptest::prop_assert_eq!(s.mark(&text, &Known::nothing()).unwrap(), every);
        }

        /// The block filter finds exactly what testing every window finds.
        #[test]
        fn the_filter_misses_no_window(
            text in proptest::collection::vec(
                proptest::sample::select(b"lk_Test0nlyNotAKeyXyZ123456789abcLKT_ \"{}".to_vec()),
                0..200,
            ),
            cut in 0usize..20,
        ) {
            let s = scrubber();
            // Splice a piece of the key in, somewhere.
            let mut text = text;
            let at = cut.min(text.len());
            text.splice(at..at, KEY.as_bytes()[cut % 10..cut % 10 + 9].iter().copied());
            let mut every = vec![false; text.len()];
            for (i, w) in text.windows(MIN_RUN).enumerate() {
                if s.windows.contains(&pack(w)) {
                    every[i..i + MIN_RUN].iter_mut().for_each(|b| *b = true);
                }
            }
            let found = s.mark(&text, &Known::nothing()).unwrap_or_else(|| vec![false; text.len()]);
            proptest::prop_assert_eq!(found, every);
        }
    }

    #[test]
    fn keys_spelled_with_json_escapes_are_found_in_decoded_strings() {
        let s = scrubber();
        let escaped: String = KEY
            .chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect();
        let page = format!(r#"{{"viewers":[{{"note":"key: {escaped}"}}],"total":3}}"#);
        let clean = s.json(page.as_bytes(), &Known::nothing());
        let value: serde_json::Value = serde_json::from_slice(&clean).unwrap();
        assert_eq!(value["viewers"][0]["note"], "key: ***");
        assert_eq!(value["total"], 3);
        // One character in three escaped: the same.
        let some: String = KEY
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 3 == 0 {
                    format!("\\u{:04x}", c as u32)
                } else {
                    c.to_string()
                }
            })
            .collect();
        let page = format!(r#"{{"{some}":"x"}}"#);
        let value: serde_json::Value =
            serde_json::from_slice(&s.json(page.as_bytes(), &Known::nothing())).unwrap();
        assert_eq!(value, serde_json::json!({"***": "x"}));
        // `\/` (PHP's way) in a key with slashes: valid JSON comes out.
        let slashed = Scrubber::new([b"lk_Abc/DefGhiJklMno/PqrStu".as_slice()]);
        let page = br#"{"note":"lk_Abc\/DefGhiJklMno\/PqrStu","n":1}"#;
        let value: serde_json::Value =
            serde_json::from_slice(&slashed.json(page, &Known::nothing())).unwrap();
        assert_eq!(value, serde_json::json!({"note": "***", "n": 1}));
        // Escapes with no secret behind them: the page as it came.
        let page = br#"{"name":"Ren\u00e9e \"R\" O\/K"}"#;
        assert!(matches!(s.json(page, &Known::nothing()), Cow::Borrowed(_)));
        // A run outside any string is cut from the bytes.
        let digits = Scrubber::new([b"1234567890".as_slice()]);
        assert_eq!(
            &*digits.json(br#"{"n":1234567890}"#, &Known::nothing()),
            br#"{"n":***}"#.as_slice()
        );
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = Scrubber::default();
        let text = "é".repeat(400);
        let out = s.message(&text, &Known::nothing());
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

    /// `text` written entirely in `\uXXXX` escapes.
    fn escaped(text: &str) -> String {
        text.chars()
            .map(|c| format!("\\u{:04x}", c as u32))
            .collect()
    }

    #[test]
    fn escaped_keys_are_found_where_no_json_value_can_hold_the_page() {
        // Each page is one the envelope accepts but a serde_json value
        // cannot hold, or holds with a string lost.
        let s = scrubber();
        let key = escaped(KEY);
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for (rest, name) in [
            ("1e400".to_string(), "a number out of range"),
            (deep, "nesting past the parser's limit"),
            ("\"\\ud800\"".to_string(), "a lone surrogate"),
        ] {
            let page = format!(r#"{{"n":{rest},"s":"{key}"}}"#);
            let clean = s.json(page.as_bytes(), &Known::nothing());
            assert_eq!(
                String::from_utf8_lossy(&clean),
                format!(r#"{{"n":{rest},"s":"***"}}"#),
                "{name}"
            );
        }
        // A key given twice: the first copy is the one a value would drop.
        let page = format!(r#"{{"s":"{key}","s":"x"}}"#);
        let clean = s.json(page.as_bytes(), &Known::nothing());
        assert_eq!(&*clean, br#"{"s":"***","s":"x"}"#);
        // As an object key, with text around it kept.
        let page = format!(r#"{{"id {key} end":1}}"#);
        let clean = s.json(page.as_bytes(), &Known::nothing());
        assert_eq!(&*clean, br#"{"id *** end":1}"#);
    }

    #[test]
    fn strings_decode_as_a_client_reads_them() {
        assert_eq!(decode_string(br#"a\u0041\n\/\\\"b"#), "aA\n/\\\"b");
        // A pair joins; a lone half or a broken escape is U+FFFD.
        assert_eq!(decode_string(br"\ud83d\ude00"), "\u{1f600}");
        assert_eq!(decode_string(br"\ud83dx"), "\u{fffd}x");
        assert_eq!(decode_string(br"\ude00"), "\u{fffd}");
        assert_eq!(decode_string(br"\u12"), "\u{fffd}12");
        assert_eq!(decode_string(br"end\"), "end");
        // Escaped quotes do not end a string.
        let tokens = string_tokens(br#"{"a\"b":"c\\"} "open"#);
        assert_eq!(tokens, vec![(1, 7), (8, 13), (15, 20)]);
    }

    #[test]
    fn runs_the_client_sent_itself_are_left_as_they_stand() {
        // An upstream that echoes the request: starring the runs that match
        // would tell the client which of its guesses are part of a key.
        let s = scrubber();
        let guess = &KEY[4..20];
        let request = format!(r#"{{"params":{{"url":"https://x/in/{guess}"}}}}"#);
        let known = Known::new(request.as_bytes());
        let page = format!(r#"{{"url":"https://x/in/{guess}"}}"#);
        assert!(matches!(s.json(page.as_bytes(), &known), Cow::Borrowed(_)));
        let message = format!("no profile at https://x/in/{guess}");
        assert_eq!(s.message(&message, &known), message.as_str());
        // Sent escaped, echoed plain: still the client's own text.
        let request = format!(r#"{{"params":{{"url":"{}"}}}}"#, escaped(guess));
        let known = Known::new(request.as_bytes());
        assert!(matches!(s.json(page.as_bytes(), &known), Cow::Borrowed(_)));
        // What the client did not send is scrubbed as ever, next to what it did.
        let page = format!(r#"{{"url":"{guess}","other":"{}"}}"#, &KEY[20..]);
        let known = Known::new(request.as_bytes());
        let clean = s.json(page.as_bytes(), &known);
        assert_eq!(
            String::from_utf8_lossy(&clean),
            format!(r#"{{"url":"{guess}","other":"***"}}"#)
        );
        // The whole key, of which the client sent a middle part: what it
        // did not send is starred on both sides; a run it sent may show.
        let message = format!("both {KEY}");
        let out = s.message(&message, &known);
        assert!(out.starts_with("both ***") && out.ends_with("***"), "{out}");
        assert!(
            !out.contains(&KEY[..8]) && !out.contains(&KEY[20..]),
            "{out}"
        );
        assert!(s.mark(out.as_bytes(), &known).is_none(), "{out}");
    }
}
