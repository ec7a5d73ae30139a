//! The inbox: conversations, their messages, and the ids of what the write
//! actions (`send`, `comment`) create.

use serde::Serialize;

use super::{COMPANIES, FIRST_NAMES, ItemKind, ItemRng, LAST_NAMES, ROLES, slug, stable_hash};

const LINES: [&str; 8] = [
    "Thanks for connecting!",
    "Would you have 15 minutes this week for a quick call?",
    "Great to hear from you, let's catch up soon.",
    "I saw your post about hiring, is the role still open?",
    "Sounds good, talk on Thursday.",
    "Could you send me the deck?",
    "Happy to help, here is the link.",
    "Congrats on the new position!",
];

/// The other person in a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Participant {
    pub(crate) name: String,
    pub(crate) headline: String,
    pub(crate) profile_url: String,
}

fn participant(rng: &mut ItemRng) -> Participant {
    let first = rng.pick(&FIRST_NAMES);
    let last = rng.pick(&LAST_NAMES);
    Participant {
        name: format!("{first} {last}"),
        headline: format!("{} at {}", rng.pick(&ROLES), rng.pick(&COMPANIES)),
        profile_url: format!(
            "https://www.linkedin.com/in/{}-{:08x}",
            slug(first, last),
            rng.next() as u32
        ),
    }
}

/// One conversation of the inbox (`list_inbox`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Conversation {
    pub(crate) conversation_id: String,
    pub(crate) participant: Participant,
    pub(crate) last_message: String,
    pub(crate) unread: bool,
    pub(crate) last_activity_days_ago: u32,
}

/// The conversation at `index` of `account_id`'s inbox, most recent first.
pub(crate) fn conversation(account_id: &str, index: u64) -> Conversation {
    let mut rng = ItemRng::new(account_id, ItemKind::Conversation, index);
    Conversation {
        conversation_id: format!("2-{}", rng.id(24)),
        participant: participant(&mut rng),
        last_message: rng.pick(&LINES).to_owned(),
        unread: index < 3 && rng.one_in(2),
        last_activity_days_ago: u32::try_from(index / 2).unwrap_or(u32::MAX),
    }
}

/// One message of a conversation (`get_conversation`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Message {
    pub(crate) message_id: String,
    pub(crate) sender_name: String,
    pub(crate) is_from_me: bool,
    pub(crate) text: String,
    pub(crate) sent_days_ago: u32,
}

/// The message at `index` (newest first) of `conversation_id` in
/// `account_id`'s inbox. Any id names a conversation: the simulator does not
/// check it against the inbox.
pub(crate) fn message(account_id: &str, conversation_id: &str, index: u64) -> Message {
    let mut other = ItemRng::scoped(&[account_id, conversation_id], ItemKind::Conversation, 0);
    let them = participant(&mut other);
    let mut rng = ItemRng::scoped(&[account_id, conversation_id], ItemKind::Message, index);
    let is_from_me = rng.one_in(2);
    Message {
        message_id: format!("msg-{:016x}", rng.next()),
        sender_name: if is_from_me {
            "me".to_owned()
        } else {
            them.name
        },
        is_from_me,
        text: rng.pick(&LINES).to_owned(),
        sent_days_ago: u32::try_from(index).unwrap_or(u32::MAX),
    }
}

/// The conversation `send` with a `profile_url` writes to: one per account
/// and profile, as on LinkedIn.
pub(crate) fn conversation_for(account_id: &str, profile_url: &str) -> String {
    let hash = stable_hash(ItemKind::Conversation, &[account_id, profile_url]);
    format!("2-{hash:016x}")
}

/// The id of the `nth` message `account_id` sent to `target`: a second send
/// of the same message gets another id, as upstream would.
pub(crate) fn message_id(account_id: &str, target: &str, nth: u64) -> String {
    let nth = nth.to_string();
    let hash = stable_hash(ItemKind::Created, &["send", account_id, target, &nth]);
    format!("msg-{hash:016x}")
}

/// The URN of the `nth` comment `account_id` posted on `post_url`.
pub(crate) fn comment_urn(account_id: &str, post_url: &str, nth: u64) -> String {
    let nth = nth.to_string();
    let hash = stable_hash(ItemKind::Created, &["comment", account_id, post_url, &nth]);
    format!("urn:li:comment:{}", hash % 10_000_000_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_items_are_deterministic() {
        assert_eq!(conversation("a", 1), conversation("a", 1));
        assert_ne!(conversation("a", 1), conversation("b", 1));
        assert!(conversation("a", 1).conversation_id.starts_with("2-"));
        assert_eq!(message("a", "2-x", 4), message("a", "2-x", 4));
        assert_ne!(message("a", "2-x", 4), message("a", "2-y", 4));
        // The other side of a conversation is one person throughout.
        let names: std::collections::HashSet<String> = (0..20)
            .map(|i| message("a", "2-x", i))
            .filter(|m| !m.is_from_me)
            .map(|m| m.sender_name)
            .collect();
        assert!(names.len() <= 1, "{names:?}");
    }

    #[test]
    fn created_ids_differ_per_write() {
        assert_eq!(conversation_for("a", "u"), conversation_for("a", "u"));
        assert_ne!(conversation_for("a", "u"), conversation_for("b", "u"));
        assert_ne!(message_id("a", "t", 1), message_id("a", "t", 2));
        assert_eq!(message_id("a", "t", 1), message_id("a", "t", 1));
        assert!(comment_urn("a", "p", 1).starts_with("urn:li:comment:"));
        assert_ne!(comment_urn("a", "p", 1), comment_urn("a", "p", 2));
    }
}
