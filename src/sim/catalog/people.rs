//! Persons: profile viewers, invitations, recruiter candidates, profiles,
//! people search results and the people who reacted to a post.

use serde::Serialize;

use super::{CITIES, COMPANIES, FIRST_NAMES, ItemKind, ItemRng, LAST_NAMES, ROLES, slug};

/// Short invitation notes; most invitations come without one.
const NOTES: [&str; 4] = [
    "Hi, I enjoyed your last post and would love to connect.",
    "We met at the meetup last week, great to stay in touch!",
    "Hello, I am hiring for a similar role and would like to connect.",
    "Fellow alumnus here, let's connect.",
];

/// LinkedIn's reaction types.
const REACTIONS: [&str; 6] = [
    "LIKE",
    "PRAISE",
    "EMPATHY",
    "INTEREST",
    "APPRECIATION",
    "ENTERTAINMENT",
];

const DEGREES: [&str; 3] = ["1st", "2nd", "3rd+"];

/// Who a generated person is: the fields every person-shaped item uses.
struct Person {
    first: &'static str,
    last: &'static str,
    role: &'static str,
    company: &'static str,
    city: &'static str,
    profile_url: String,
}

impl Person {
    fn draw(rng: &mut ItemRng) -> Self {
        let first = rng.pick(&FIRST_NAMES);
        let last = rng.pick(&LAST_NAMES);
        let role = rng.pick(&ROLES);
        let company = rng.pick(&COMPANIES);
        let city = rng.pick(&CITIES);
        let profile_url = format!(
            "https://www.linkedin.com/in/{}-{:08x}",
            slug(first, last),
            rng.next() as u32
        );
        Person {
            first,
            last,
            role,
            company,
            city,
            profile_url,
        }
    }

    fn name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    fn headline(&self) -> String {
        format!("{} at {}", self.role, self.company)
    }
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

/// One invitation the account received (`/v2/network` `list_invitations`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ReceivedInvitation {
    pub(crate) invitation_urn: String,
    pub(crate) name: String,
    pub(crate) headline: String,
    pub(crate) profile_url: String,
    /// The note sent with the invitation, if any.
    pub(crate) message: Option<String>,
    pub(crate) received_days_ago: u32,
}

/// The received invitation at `index` of `account_id`, newest first.
pub(crate) fn received_invitation(account_id: &str, index: u64) -> ReceivedInvitation {
    let mut rng = ItemRng::new(account_id, ItemKind::ReceivedInvitation, index);
    let person = Person::draw(&mut rng);
    let message = rng.one_in(3).then(|| rng.pick(&NOTES).to_owned());
    ReceivedInvitation {
        invitation_urn: format!("urn:li:invitation:{}", rng.next() % 10_000_000_000),
        name: person.name(),
        headline: person.headline(),
        profile_url: person.profile_url,
        message,
        received_days_ago: u32::try_from(index / 3).unwrap_or(u32::MAX),
    }
}

/// One position in a profile's experience.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Position {
    pub(crate) title: String,
    pub(crate) company: String,
    pub(crate) years: u32,
}

/// A full profile (`/v2/profiles` `get`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Profile {
    pub(crate) profile_url: String,
    pub(crate) public_identifier: String,
    pub(crate) entity_urn: String,
    pub(crate) first_name: String,
    pub(crate) last_name: String,
    pub(crate) full_name: String,
    pub(crate) headline: String,
    pub(crate) location: String,
    pub(crate) current_company: String,
    pub(crate) connections: u32,
    pub(crate) followers: u32,
    pub(crate) about: String,
    pub(crate) experience: Vec<Position>,
}

/// The profile at `profile_url`: the same whoever asks.
pub(crate) fn profile(profile_url: &str) -> Profile {
    let mut rng = ItemRng::scoped(&[profile_url], ItemKind::Profile, 0);
    let person = Person::draw(&mut rng);
    let public_identifier = profile_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty() && !s.contains(':'))
        .map_or_else(|| slug(person.first, person.last), str::to_owned);
    let positions = rng.between(1, 4);
    let experience = (0..positions)
        .map(|i| Position {
            title: if i == 0 {
                person.role.to_owned()
            } else {
                rng.pick(&ROLES).to_owned()
            },
            company: if i == 0 {
                person.company.to_owned()
            } else {
                rng.pick(&COMPANIES).to_owned()
            },
            years: u32::try_from(rng.between(1, 8)).unwrap_or(1),
        })
        .collect();
    Profile {
        profile_url: profile_url.to_owned(),
        public_identifier,
        entity_urn: format!("urn:li:fsd_profile:ACoAA{}", rng.id(34)),
        first_name: person.first.to_owned(),
        last_name: person.last.to_owned(),
        full_name: person.name(),
        headline: person.headline(),
        location: person.city.to_owned(),
        current_company: person.company.to_owned(),
        connections: u32::try_from(rng.between(12, 500)).unwrap_or(500),
        followers: u32::try_from(rng.between(12, 5000)).unwrap_or(5000),
        about: format!(
            "{} based in {}, working at {}.",
            person.role, person.city, person.company
        ),
        experience,
    }
}

/// One `search_people` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct PersonResult {
    pub(crate) name: String,
    pub(crate) headline: String,
    pub(crate) location: String,
    pub(crate) profile_url: String,
    pub(crate) entity_urn: String,
    pub(crate) connection_degree: &'static str,
}

/// The search result at `index` for `account_id` searching `keywords`.
pub(crate) fn person_result(account_id: &str, keywords: &str, index: u64) -> PersonResult {
    let mut rng = ItemRng::scoped(&[account_id, keywords], ItemKind::Person, index);
    let person = Person::draw(&mut rng);
    PersonResult {
        name: person.name(),
        headline: person.headline(),
        location: person.city.to_owned(),
        profile_url: person.profile_url,
        entity_urn: format!("urn:li:fsd_profile:ACoAA{}", rng.id(34)),
        connection_degree: rng.pick(&DEGREES),
    }
}

/// One reaction to a post (`get_reactions`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Reaction {
    pub(crate) name: String,
    pub(crate) headline: String,
    pub(crate) profile_url: String,
    pub(crate) reaction_type: &'static str,
}

/// The reaction at `index` of the post at `post_url`: the same whoever asks.
pub(crate) fn reaction(post_url: &str, index: u64) -> Reaction {
    let mut rng = ItemRng::scoped(&[post_url], ItemKind::Reaction, index);
    let person = Person::draw(&mut rng);
    Reaction {
        name: person.name(),
        headline: person.headline(),
        profile_url: person.profile_url,
        // Most reactions are likes.
        reaction_type: if rng.one_in(2) {
            REACTIONS[0]
        } else {
            rng.pick(&REACTIONS)
        },
    }
}

/// The display name of a connected account that was given none: a person's
/// name derived from its id.
pub(crate) fn account_name(account_id: &str) -> String {
    let mut rng = ItemRng::new(account_id, ItemKind::Account, 0);
    Person::draw(&mut rng).name()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::catalog::derived_total;

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
    fn new_person_items_are_deterministic_and_scoped() {
        assert_eq!(received_invitation("a", 2), received_invitation("a", 2));
        assert_ne!(received_invitation("a", 2), received_invitation("b", 2));
        let url = "https://www.linkedin.com/in/janedoe";
        assert_eq!(profile(url), profile(url));
        assert_eq!(profile(url).public_identifier, "janedoe");
        assert_eq!(profile("https://x.test/").profile_url, "https://x.test/");
        assert!((1..=4).contains(&profile(url).experience.len()));
        assert_eq!(person_result("a", "rust", 1), person_result("a", "rust", 1));
        assert_ne!(person_result("a", "rust", 1), person_result("a", "go", 1));
        assert_eq!(reaction("p", 5), reaction("p", 5));
        assert!(REACTIONS.contains(&reaction("p", 5).reaction_type));
        assert_eq!(account_name("acc-1"), account_name("acc-1"));
        assert!(account_name("acc-1").contains(' '));
    }
}
