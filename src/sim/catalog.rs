//! The simulator's synthetic data: viewers, sent invitations and recruiter
//! candidates, plus the paging and pricing rules every list action shares.
//!
//! Everything here is a pure function of its inputs. An item is derived from
//! `(account_id, kind, index)` through a small hash, so the same page asked
//! twice is byte-for-byte the same (the gateway's cache tests rely on it) and
//! no state is kept per account.

use serde::Serialize;

/// Names and companies the generator picks from. Short lists are enough: the
/// point is plausible shapes, not variety.
const FIRST_NAMES: [&str; 16] = [
    "Jane", "Omar", "Lucia", "Kenji", "Amara", "Felix", "Ingrid", "Rahul", "Chloe", "Mateo",
    "Zainab", "Pieter", "Yuki", "Tomasz", "Aisha", "Liam",
];
const LAST_NAMES: [&str; 16] = [
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
const COMPANIES: [&str; 12] = [
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
const ROLES: [&str; 8] = [
    "Software Engineer",
    "Head of Sales",
    "Product Manager",
    "Talent Partner",
    "Data Scientist",
    "Founder",
    "Marketing Lead",
    "Operations Manager",
];
const CITIES: [&str; 8] = [
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
}

impl ItemKind {
    fn salt(self) -> u64 {
        match self {
            ItemKind::Viewer => 0x5649_4557,
            ItemKind::Invitation => 0x494e_5649,
            ItemKind::Candidate => 0x4341_4e44,
            ItemKind::ListSize => 0x5349_5a45,
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

/// A deterministic stream of pseudo-random numbers for one item.
struct ItemRng(u64);

impl ItemRng {
    fn new(account_id: &str, kind: ItemKind, index: u64) -> Self {
        let seed = fnv1a(account_id.as_bytes()) ^ kind.salt().rotate_left(32);
        ItemRng(splitmix(seed ^ splitmix(index)))
    }

    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// Picks an element; the lists are small so modulo bias does not matter.
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        let len = from.len() as u64;
        // `len` is a non-zero constant length, so the index is in bounds.
        from[(self.next() % len) as usize]
    }

    fn id(&mut self, len: usize) -> String {
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
fn slug(first: &str, last: &str) -> String {
    first
        .chars()
        .chain(last.chars())
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// One profile viewer, shaped like the documented sample.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Viewer {
    pub(crate) title: String,
    pub(crate) image_url: String,
    pub(crate) is_blurred: bool,
    pub(crate) cta_action: &'static str,
    pub(crate) profile_url: Option<String>,
    pub(crate) entity_urn: Option<String>,
}

/// The viewer at `index` of `account_id`. About one in three is blurred, as
/// on a free LinkedIn account: those hide who they are.
pub(crate) fn viewer(account_id: &str, index: u64) -> Viewer {
    let mut rng = ItemRng::new(account_id, ItemKind::Viewer, index);
    let is_blurred = rng.next().is_multiple_of(3);
    if is_blurred {
        let company = rng.pick(&COMPANIES);
        return Viewer {
            title: format!("Someone at {company}"),
            image_url: format!("https://media.licdn.com/media/{}", rng.id(16)),
            is_blurred,
            cta_action: "View",
            profile_url: None,
            entity_urn: None,
        };
    }
    let first = rng.pick(&FIRST_NAMES);
    let last = rng.pick(&LAST_NAMES);
    let cta_action = if rng.next().is_multiple_of(4) {
        "Message"
    } else {
        "Connect"
    };
    Viewer {
        title: format!("{first} {last}"),
        image_url: format!(
            "https://media.licdn.com/dms/image/v2/{}/profile-displayphoto-shrink_100_100/0/",
            rng.id(16)
        ),
        is_blurred,
        cta_action,
        profile_url: Some(format!(
            "https://www.linkedin.com/in/{}-{:08x}",
            slug(first, last),
            rng.next() as u32
        )),
        entity_urn: Some(format!("urn:li:fsd_profile:ACoAA{}", rng.id(34))),
    }
}

/// One invitation the account sent (`/v2/network` `list_sent`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Invitation {
    pub(crate) invitation_urn: String,
    pub(crate) name: String,
    pub(crate) headline: String,
    pub(crate) profile_url: String,
    pub(crate) sent_days_ago: u32,
}

/// The sent invitation at `index` of `account_id`.
pub(crate) fn invitation(account_id: &str, index: u64) -> Invitation {
    let mut rng = ItemRng::new(account_id, ItemKind::Invitation, index);
    let first = rng.pick(&FIRST_NAMES);
    let last = rng.pick(&LAST_NAMES);
    let role = rng.pick(&ROLES);
    let company = rng.pick(&COMPANIES);
    Invitation {
        invitation_urn: format!("urn:li:invitation:{}", rng.next() % 10_000_000_000),
        name: format!("{first} {last}"),
        headline: format!("{role} at {company}"),
        profile_url: format!(
            "https://www.linkedin.com/in/{}-{:08x}",
            slug(first, last),
            rng.next() as u32
        ),
        // Newest first: later indexes were sent longer ago.
        sent_days_ago: u32::try_from(index.saturating_add(1)).unwrap_or(u32::MAX),
    }
}

/// One recruiter search result (`/v2/recruiter` `get_candidates`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Candidate {
    pub(crate) name: String,
    pub(crate) headline: String,
    pub(crate) location: String,
    pub(crate) profile_url: String,
    pub(crate) open_to_work: bool,
}

/// The candidate at `index` of `account_id`.
pub(crate) fn candidate(account_id: &str, index: u64) -> Candidate {
    let mut rng = ItemRng::new(account_id, ItemKind::Candidate, index);
    let first = rng.pick(&FIRST_NAMES);
    let last = rng.pick(&LAST_NAMES);
    let role = rng.pick(&ROLES);
    let company = rng.pick(&COMPANIES);
    let city = rng.pick(&CITIES);
    Candidate {
        name: format!("{first} {last}"),
        headline: format!("{role} at {company}"),
        location: city.to_owned(),
        profile_url: format!(
            "https://www.linkedin.com/in/{}-{:08x}",
            slug(first, last),
            rng.next() as u32
        ),
        open_to_work: rng.next().is_multiple_of(5),
    }
}

/// Size of a list that has no configured total, derived from the account so
/// it is stable: `base + (hash % spread)`.
pub(crate) fn derived_total(account_id: &str, kind: ItemKind, base: u64, spread: u64) -> u64 {
    let mut rng = ItemRng::new(account_id, ItemKind::ListSize, kind.salt());
    base + rng.next() % spread.max(1)
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
    fn viewers_are_deterministic_per_account_and_index() {
        for index in 0..50 {
            assert_eq!(viewer("acct-a", index), viewer("acct-a", index));
        }
        let a: Vec<_> = (0..20).map(|i| viewer("acct-a", i)).collect();
        let b: Vec<_> = (0..20).map(|i| viewer("acct-b", i)).collect();
        assert_ne!(a, b, "different accounts should see different viewers");
    }

    #[test]
    fn blurred_viewers_hide_their_identity() {
        let viewers: Vec<_> = (0..300).map(|i| viewer("acct-a", i)).collect();
        let blurred = viewers.iter().filter(|v| v.is_blurred).count();
        // About one in three; wide bounds so the test pins the shape, not the hash.
        assert!((60..=140).contains(&blurred), "blurred = {blurred}");
        for v in &viewers {
            if v.is_blurred {
                assert!(v.title.starts_with("Someone at "));
                assert_eq!(v.cta_action, "View");
                assert!(v.profile_url.is_none() && v.entity_urn.is_none());
                assert!(v.image_url.starts_with("https://media.licdn.com/media/"));
            } else {
                let url = v.profile_url.as_deref().unwrap_or_default();
                assert!(url.starts_with("https://www.linkedin.com/in/"), "{url}");
                let urn = v.entity_urn.as_deref().unwrap_or_default();
                assert!(urn.starts_with("urn:li:fsd_profile:ACoAA"), "{urn}");
                assert!(matches!(v.cta_action, "Connect" | "Message"));
            }
        }
    }

    #[test]
    fn other_lists_are_deterministic() {
        assert_eq!(invitation("a", 3), invitation("a", 3));
        assert_eq!(candidate("a", 3), candidate("a", 3));
        assert_ne!(candidate("a", 3), candidate("a", 4));
        let total = derived_total("a", ItemKind::Invitation, 5, 40);
        assert!((5..45).contains(&total));
        assert_eq!(total, derived_total("a", ItemKind::Invitation, 5, 40));
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
