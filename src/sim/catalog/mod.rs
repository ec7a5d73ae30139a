//! The simulator's synthetic data: every list and object an action answers
//! with, plus the paging, cursor and pricing rules the list actions share.
//!
//! Everything here is a pure function of its inputs. An item is derived from
//! `(seed, kind, index)` through a small hash, where the seed is the account
//! (and, for searches, reactions and conversations, what was asked for), so
//! the same page asked twice is byte-for-byte the same (the gateway's cache
//! tests rely on it) and no state is kept per account. Objects looked up by
//! URL (`get`, `get_company`, a post's reactions) depend on the URL only: a
//! profile looks the same to every account.
//!
//! `people` holds persons (viewers, invitations, candidates, profiles, search
//! results, reactions), `companies` companies, `messages` the inbox.

mod companies;
mod messages;
mod people;

pub(crate) use companies::{Company, CompanyResult, company, company_result};
pub(crate) use messages::{
    Conversation, Message, comment_urn, conversation, conversation_for, message, message_id,
};
pub(crate) use people::{
    Candidate, Invitation, PersonResult, Profile, Reaction, ReceivedInvitation, Viewer,
    account_name, candidate, invitation, person_result, profile, reaction, received_invitation,
    viewer,
};

use serde::Serialize;

/// Names and companies the generator picks from. Short lists are enough: the
/// point is plausible shapes, not variety.
pub(crate) const FIRST_NAMES: [&str; 16] = [
    "Jane", "Omar", "Lucia", "Kenji", "Amara", "Felix", "Ingrid", "Rahul", "Chloe", "Mateo",
    "Zainab", "Pieter", "Yuki", "Tomasz", "Aisha", "Liam",
];
pub(crate) const LAST_NAMES: [&str; 16] = [
    "Doe",
    "Haddad",
    "Moreau",
    "Tanaka",
    "Okafor",
    "Becker",
    "Lindqvist",
    "Iyer",
    "Martin",
    "Alvarez",
    "Hussain",
    "de Vries",
    "Sato",
    "Nowak",
    "Bello",
    "Walsh",
];
pub(crate) const COMPANIES: [&str; 12] = [
    "The Hive Company",
    "Northwind Traders",
    "Blue Harbor Labs",
    "Quarry Analytics",
    "Lumen Health",
    "Fennel & Sons",
    "Orbital Freight",
    "Cedar Robotics",
    "Kestrel Capital",
    "Mosaic Studio",
    "Tidewater Energy",
    "Polaris Learning",
];
pub(crate) const ROLES: [&str; 8] = [
    "Software Engineer",
    "Head of Sales",
    "Product Manager",
    "Talent Partner",
    "Data Scientist",
    "Founder",
    "Marketing Lead",
    "Operations Manager",
];
pub(crate) const CITIES: [&str; 8] = [
    "Paris",
    "Berlin",
    "London",
    "Lagos",
    "Toronto",
    "Madrid",
    "Tokyo",
    "Amsterdam",
];

/// Characters used for the opaque ids inside URLs and URNs.
const ID_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Which list an item belongs to, so an account's viewers and its candidates
/// do not share seeds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ItemKind {
    Viewer,
    Invitation,
    Candidate,
    /// Seeds the per-account size of the lists that are not configured.
    ListSize,
    ReceivedInvitation,
    Profile,
    Person,
    Company,
    Reaction,
    Conversation,
    Message,
    /// Ids of what a write created (message ids, comment URNs).
    Created,
    /// Cursor check digits.
    Cursor,
    /// Display names of connected accounts.
    Account,
}

impl ItemKind {
    fn salt(self) -> u64 {
        match self {
            ItemKind::Viewer => 0x5649_4557,
            ItemKind::Invitation => 0x494e_5649,
            ItemKind::Candidate => 0x4341_4e44,
            ItemKind::ListSize => 0x5349_5a45,
            ItemKind::ReceivedInvitation => 0x5245_4356,
            ItemKind::Profile => 0x5052_4f46,
            ItemKind::Person => 0x5045_5253,
            ItemKind::Company => 0x434f_4d50,
            ItemKind::Reaction => 0x5245_4143,
            ItemKind::Conversation => 0x434f_4e56,
            ItemKind::Message => 0x4d45_5353,
            ItemKind::Created => 0x4352_4541,
            ItemKind::Cursor => 0x4355_5253,
            ItemKind::Account => 0x4143_4354,
        }
    }
}

/// FNV-1a over the bytes: cheap, stable across platforms and Rust versions
/// (unlike `DefaultHasher`), which is what determinism across runs needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// One splitmix64 step: spreads the FNV seed so neighbouring indexes differ
/// in every bit.
fn splitmix(mut state: u64) -> u64 {
    state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a over several strings, each followed by a separator byte that no
/// string here contains, so `("ab", "c")` and `("a", "bc")` differ.
fn fnv1a_parts(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0x1f)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// A stable 64-bit hash of `parts` for `kind`: ids of created things and
/// cursor check digits.
pub(crate) fn stable_hash(kind: ItemKind, parts: &[&str]) -> u64 {
    splitmix(fnv1a_parts(parts) ^ kind.salt())
}

/// A deterministic stream of pseudo-random numbers for one item.
pub(crate) struct ItemRng(u64);

impl ItemRng {
    /// The stream of item `index` of `kind` in the lists of `account_id`.
    pub(crate) fn new(account_id: &str, kind: ItemKind, index: u64) -> Self {
        Self::from_seed(fnv1a(account_id.as_bytes()), kind, index)
    }

    /// The stream of item `index` of `kind` in a list defined by several
    /// strings (an account and what it searched for, a URL, ...).
    pub(crate) fn scoped(parts: &[&str], kind: ItemKind, index: u64) -> Self {
        Self::from_seed(fnv1a_parts(parts), kind, index)
    }

    fn from_seed(seed: u64, kind: ItemKind, index: u64) -> Self {
        let seed = seed ^ kind.salt().rotate_left(32);
        ItemRng(splitmix(seed ^ splitmix(index)))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// Picks an element; the lists are small so modulo bias does not matter.
    pub(crate) fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        let len = from.len() as u64;
        // `len` is a non-zero constant length, so the index is in bounds.
        from[(self.next() % len) as usize]
    }

    /// A number in `low..low + spread`.
    pub(crate) fn between(&mut self, low: u64, spread: u64) -> u64 {
        low + self.next() % spread.max(1)
    }

    /// True about once in `n` draws.
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n.max(1))
    }

    pub(crate) fn id(&mut self, len: usize) -> String {
        let mut out = String::with_capacity(len);
        let mut bits = 0u64;
        for i in 0..len {
            if i.is_multiple_of(10) {
                bits = self.next();
            }
            out.push(char::from(ID_ALPHABET[(bits & 63) as usize]));
            bits >>= 6;
        }
        out
    }
}

/// Lower-case slug of a person's name for a profile URL (`de Vries` -> `devries`).
pub(crate) fn slug(first: &str, last: &str) -> String {
    first
        .chars()
        .chain(last.chars())
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// Size of a list that has no configured total, derived from the account so
/// it is stable: `base + (hash % spread)`.
pub(crate) fn derived_total(account_id: &str, kind: ItemKind, base: u64, spread: u64) -> u64 {
    let mut rng = ItemRng::new(account_id, ItemKind::ListSize, kind.salt());
    base + rng.next() % spread.max(1)
}

/// Size of a list defined by several strings, like [`derived_total`].
pub(crate) fn scoped_total(parts: &[&str], kind: ItemKind, base: u64, spread: u64) -> u64 {
    let mut rng = ItemRng::scoped(parts, ItemKind::ListSize, kind.salt());
    rng.between(base, spread)
}

/// The account a `POST /v2/login` with this email connects: `li-` and ten
/// hex digits of a hash of the email, trimmed and in lower case, so logging
/// in twice names the same account.
pub(crate) fn login_account_id(email: &str) -> String {
    let normalized = email.trim().to_lowercase();
    let hash = stable_hash(ItemKind::Account, &[&normalized]);
    format!("li-{:010x}", hash >> 24)
}

/// The `pagination` object of a list answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Pagination {
    pub(crate) offset: u64,
    /// Echoes the requested page size, not the number of items returned.
    pub(crate) count: u64,
    pub(crate) total: u64,
    pub(crate) has_more: bool,
    pub(crate) next_offset: Option<u64>,
}

/// Which items a page holds and how it links to the next one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PageWindow {
    /// Indexes of the items in this page.
    pub(crate) items: std::ops::Range<u64>,
    pub(crate) pagination: Pagination,
}

/// Cuts `offset..offset+count` out of a list of `total` items.
///
/// `next_offset` is `offset + count` rounded *up* to a multiple of `step`,
/// the way upstream's sample pages in tens (offset 0, count 2 -> 10): a
/// client that follows `next_offset` may skip items, one that assumes
/// `offset + count` will disagree with upstream. `step` 0 means no rounding.
pub(crate) fn page_window(offset: u64, count: u64, total: u64, step: u64) -> PageWindow {
    let start = offset.min(total);
    let end = offset.saturating_add(count).min(total);
    let next = round_up(offset.saturating_add(count), step);
    let has_more = next < total;
    PageWindow {
        items: start..end,
        pagination: Pagination {
            offset,
            count,
            total,
            has_more,
            next_offset: has_more.then_some(next),
        },
    }
}

fn round_up(value: u64, step: u64) -> u64 {
    if step <= 1 {
        return value;
    }
    value.div_ceil(step).saturating_mul(step)
}

/// The items of a cursor-paged answer and the cursor of the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CursorWindow {
    /// Indexes of the items in this page.
    pub(crate) items: std::ops::Range<u64>,
    /// `None` at the end of the list.
    pub(crate) next_cursor: Option<String>,
}

/// Cuts `count` items from `start` out of a list of `total`, in the list
/// named by `scope` (which binds the cursor to that list).
pub(crate) fn cursor_window(scope: &[&str], start: u64, count: u64, total: u64) -> CursorWindow {
    let begin = start.min(total);
    let end = start.saturating_add(count).min(total);
    CursorWindow {
        items: begin..end,
        next_cursor: (end < total).then(|| cursor(scope, end)),
    }
}

/// The opaque cursor for index `index` of the list `scope`: the index in hex
/// and check digits, so a cursor from another list or a made-up one is
/// refused instead of silently read.
pub(crate) fn cursor(scope: &[&str], index: u64) -> String {
    format!("{index:x}.{:08x}", cursor_check(scope, index))
}

/// The index a cursor of the list `scope` points at, if it is one.
pub(crate) fn cursor_index(scope: &[&str], cursor: &str) -> Option<u64> {
    let (index, check) = cursor.split_once('.')?;
    if index.is_empty() || index.len() > 16 || check.len() != 8 {
        return None;
    }
    let index = u64::from_str_radix(index, 16).ok()?;
    let check = u32::from_str_radix(check, 16).ok()?;
    (check == cursor_check(scope, index)).then_some(index)
}

fn cursor_check(scope: &[&str], index: u64) -> u32 {
    let index = index.to_string();
    let mut parts = scope.to_vec();
    parts.push(&index);
    // The low 32 bits are enough to catch a cursor used on the wrong list.
    stable_hash(ItemKind::Cursor, &parts) as u32
}

/// Credits for a list answer of `items` results at one credit per `per_credit`
/// results, rounded up; an empty answer costs `empty_cost`.
pub(crate) fn list_cost(items: u64, per_credit: u64, empty_cost: u64) -> u64 {
    if items == 0 {
        empty_cost
    } else {
        items.div_ceil(per_credit.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_are_bound_to_their_list() {
        let scope = ["acct", "inbox"];
        let c = cursor(&scope, 25);
        assert_eq!(cursor_index(&scope, &c), Some(25));
        assert_eq!(cursor_index(&["acct-b", "inbox"], &c), None);
        for bad in ["", "19", "19.", ".00000000", "zz.00000000", "19.0000000g"] {
            assert_eq!(cursor_index(&scope, bad), None, "{bad}");
        }
        let window = cursor_window(&scope, 0, 10, 25);
        assert_eq!(window.items, 0..10);
        let next = window.next_cursor.expect("more");
        assert_eq!(cursor_index(&scope, &next), Some(10));
        let last = cursor_window(&scope, 20, 10, 25);
        assert_eq!(last.items, 20..25);
        assert_eq!(last.next_cursor, None);
        assert!(cursor_window(&scope, 30, 10, 25).items.is_empty());
    }

    #[test]
    fn login_account_ids_follow_the_email() {
        let id = login_account_id("Jane.Doe@example.com ");
        assert_eq!(id, login_account_id("jane.doe@example.com"));
        assert_ne!(id, login_account_id("john@example.com"));
        assert!(id.starts_with("li-") && id.len() == 13, "{id}");
    }

    #[test]
    fn scoped_hashes_separate_their_parts() {
        assert_ne!(
            stable_hash(ItemKind::Created, &["ab", "c"]),
            stable_hash(ItemKind::Created, &["a", "bc"])
        );
        let total = scoped_total(&["a", "rust"], ItemKind::Person, 30, 100);
        assert!((30..130).contains(&total));
        assert_eq!(
            total,
            scoped_total(&["a", "rust"], ItemKind::Person, 30, 100)
        );
    }

    #[test]
    fn next_offset_rounds_up_to_the_step() {
        // The documented sample: offset 0, count 2 of 87 -> next_offset 10.
        let page = page_window(0, 2, 87, 10);
        assert_eq!(page.items, 0..2);
        assert_eq!(page.pagination.next_offset, Some(10));
        assert!(page.pagination.has_more);

        assert_eq!(page_window(0, 10, 87, 10).pagination.next_offset, Some(10));
        assert_eq!(page_window(10, 12, 87, 10).pagination.next_offset, Some(30));
        assert_eq!(page_window(5, 5, 87, 0).pagination.next_offset, Some(10));
        assert_eq!(page_window(5, 3, 87, 1).pagination.next_offset, Some(8));
    }

    #[test]
    fn last_and_past_the_end_pages() {
        let last = page_window(80, 10, 87, 10);
        assert_eq!(last.items, 80..87);
        assert!(!last.pagination.has_more);
        assert_eq!(last.pagination.next_offset, None);

        // Rounding up can jump past the end even when items remain unseen.
        let jump = page_window(79, 2, 87, 10);
        assert_eq!(jump.items, 79..81);
        assert!(!jump.pagination.has_more);

        let past = page_window(200, 10, 87, 10);
        assert!(past.items.is_empty());
        assert_eq!(past.pagination.offset, 200);
        assert_eq!(past.pagination.count, 10);

        let huge = page_window(u64::from(u32::MAX), u64::from(u32::MAX), 87, 10);
        assert!(huge.items.is_empty());
    }

    #[test]
    fn cost_is_one_credit_per_started_block() {
        assert_eq!(list_cost(0, 10, 0), 0);
        assert_eq!(list_cost(0, 10, 1), 1);
        assert_eq!(list_cost(1, 10, 0), 1);
        assert_eq!(list_cost(10, 10, 0), 1);
        assert_eq!(list_cost(11, 10, 0), 2);
        assert_eq!(list_cost(20, 10, 0), 2);
        assert_eq!(list_cost(100, 10, 0), 10);
        assert_eq!(list_cost(50, 50, 0), 1);
        assert_eq!(list_cost(51, 50, 0), 2);
        assert_eq!(list_cost(3, 0, 0), 3);
    }
}
