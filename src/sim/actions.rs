//! The action table: which actions each `/v2/{category}` knows and how their
//! parameters are checked. What they answer and cost is in `answers`.
//!
//! Checking (`prepare`) is split from answering (`execute`) because upstream's
//! order puts the rate limit between the two: a request with bad parameters
//! is refused before it uses any of the key's quota.
//!
//! Parameters, as decided here where upstream does not document them:
//! paged reads take `count` (default 10, at most 100) and `offset`;
//! `list_inbox` and `get_conversation` take `count` and an opaque `cursor`
//! from the previous page's `next_cursor`; `send` takes `message` (the text)
//! and one of `conversation_id` or `profile_url`; `comment` takes `post_url`
//! and `text`; `invite` takes `profile_url` and an optional `message`.

use serde_json::{Map, Value};

use super::SimConfig;
use super::catalog;
use super::request::{self, CursorParams, PageParams};

/// Categories that exist upstream. A known category with an action the
/// simulator does not play answers `INVALID_ACTION`; any other `/v2/` path
/// is `NOT_FOUND`.
pub(crate) const CATEGORIES: [&str; 8] = [
    "profiles",
    "network",
    "messages",
    "content",
    "recruiter",
    "companies",
    "posts",
    "search",
];

/// The actions the simulator plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    GetViewers,
    Get,
    SearchPeople,
    SearchCompanies,
    GetCompany,
    GetReactions,
    Invite,
    ListInvitations,
    ListSent,
    Send,
    ListInbox,
    GetConversation,
    Comment,
    GetCandidates,
}

/// Every action with its category and name.
const TABLE: [(&str, &str, Action); 14] = [
    ("profiles", "get_viewers", Action::GetViewers),
    ("profiles", "get", Action::Get),
    ("profiles", "search_people", Action::SearchPeople),
    ("profiles", "search_companies", Action::SearchCompanies),
    ("profiles", "get_company", Action::GetCompany),
    ("profiles", "get_reactions", Action::GetReactions),
    ("network", "invite", Action::Invite),
    ("network", "list_invitations", Action::ListInvitations),
    ("network", "list_sent", Action::ListSent),
    ("messages", "send", Action::Send),
    ("messages", "list_inbox", Action::ListInbox),
    ("messages", "get_conversation", Action::GetConversation),
    ("content", "comment", Action::Comment),
    ("recruiter", "get_candidates", Action::GetCandidates),
];

impl Action {
    /// The action named `action` on `category`, if upstream has it.
    pub(crate) fn find(category: &str, action: &str) -> Option<Action> {
        TABLE
            .iter()
            .find(|(c, a, _)| *c == category && *a == action)
            .map(|(_, _, found)| *found)
    }

    /// Checks the parameters of a call for `account_id`; the error is the
    /// `INVALID_PARAMS` message.
    pub(crate) fn prepare(
        self,
        params: &Map<String, Value>,
        account_id: &str,
        config: &SimConfig,
    ) -> Result<Prepared, String> {
        let page = || request::page_params(params, config.default_count, config.max_count);
        let cursor = |scope: &[&str]| {
            let CursorParams { cursor, count } =
                request::cursor_params(params, config.default_count, config.max_count)?;
            let start = match cursor {
                None => 0,
                Some(c) => catalog::cursor_index(scope, c)
                    .ok_or("params.cursor is not a cursor this list gave")?,
            };
            Ok::<_, String>(CursorPage { start, count })
        };
        let owned = |s: &str| s.to_owned();
        let keywords = || {
            request::optional_string(params, "keywords").map(|k| k.unwrap_or_default().to_owned())
        };
        Ok(match self {
            Action::GetViewers => Prepared::GetViewers(page()?),
            Action::Get => Prepared::Get {
                profile_url: owned(request::required_string(params, "profile_url")?),
            },
            Action::SearchPeople => Prepared::SearchPeople {
                keywords: keywords()?,
                page: page()?,
            },
            Action::SearchCompanies => Prepared::SearchCompanies {
                keywords: keywords()?,
                page: page()?,
            },
            Action::GetCompany => {
                let company_id = request::optional_string(params, "company_id")?;
                let company_url = request::optional_string(params, "company_url")?;
                let given = |v: Option<&str>| v.filter(|s| !s.trim().is_empty()).map(owned);
                let (company_id, company_url) = (given(company_id), given(company_url));
                if company_id.is_none() && company_url.is_none() {
                    return Err("params.company_url or params.company_id is required".to_owned());
                }
                Prepared::GetCompany {
                    company_id,
                    company_url,
                }
            }
            Action::GetReactions => Prepared::GetReactions {
                post_url: owned(request::required_string(params, "post_url")?),
                page: page()?,
            },
            Action::Invite => {
                let profile_url = request::required_string(params, "profile_url")?;
                // Checked for type only; the note is not kept.
                request::optional_string(params, "message")?;
                Prepared::Invite {
                    profile_url: owned(profile_url),
                }
            }
            Action::ListInvitations => Prepared::ListInvitations(page()?),
            Action::ListSent => Prepared::ListSent(page()?),
            Action::Send => {
                let conversation_id = request::optional_string(params, "conversation_id")?;
                let profile_url = request::optional_string(params, "profile_url")?;
                let given = |v: Option<&str>| v.filter(|s| !s.trim().is_empty()).map(owned);
                let to = match (given(conversation_id), given(profile_url)) {
                    (Some(id), None) => Recipient::Conversation(id),
                    (None, Some(url)) => Recipient::Profile(url),
                    (None, None) => {
                        return Err(
                            "params.conversation_id or params.profile_url is required".to_owned()
                        );
                    }
                    (Some(_), Some(_)) => {
                        return Err(
                            "give params.conversation_id or params.profile_url, not both"
                                .to_owned(),
                        );
                    }
                };
                // Required, but never echoed: the answer names the message by id.
                request::required_string(params, "message")?;
                Prepared::Send { to }
            }
            Action::ListInbox => Prepared::ListInbox(cursor(&[account_id, "inbox"])?),
            Action::GetConversation => {
                let conversation_id = request::required_string(params, "conversation_id")?;
                let page = cursor(&[account_id, "conversation", conversation_id])?;
                Prepared::GetConversation {
                    conversation_id: owned(conversation_id),
                    page,
                }
            }
            Action::Comment => {
                let post_url = request::required_string(params, "post_url")?;
                request::required_string(params, "text")?;
                Prepared::Comment {
                    post_url: owned(post_url),
                }
            }
            Action::GetCandidates => Prepared::GetCandidates(page()?),
        })
    }
}

/// Where `send` writes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Recipient {
    Conversation(String),
    Profile(String),
}

/// A cursor-paged request, its cursor resolved to an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CursorPage {
    pub(crate) start: u64,
    pub(crate) count: u32,
}

/// An action whose parameters passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    GetViewers(PageParams),
    Get {
        profile_url: String,
    },
    SearchPeople {
        keywords: String,
        page: PageParams,
    },
    SearchCompanies {
        keywords: String,
        page: PageParams,
    },
    GetCompany {
        company_id: Option<String>,
        company_url: Option<String>,
    },
    GetReactions {
        post_url: String,
        page: PageParams,
    },
    Invite {
        profile_url: String,
    },
    ListInvitations(PageParams),
    ListSent(PageParams),
    Send {
        to: Recipient,
    },
    ListInbox(CursorPage),
    GetConversation {
        conversation_id: String,
        page: CursorPage,
    },
    Comment {
        post_url: String,
    },
    GetCandidates(PageParams),
}

impl Prepared {
    /// For a write, what it writes to (counted per action, account and
    /// target); `None` for a read.
    pub(crate) fn write_target(&self) -> Option<&str> {
        match self {
            Prepared::Invite { profile_url } => Some(profile_url),
            Prepared::Send {
                to: Recipient::Conversation(target) | Recipient::Profile(target),
            } => Some(target),
            Prepared::Comment { post_url } => Some(post_url),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn prepare(action: Action, p: Value) -> Result<Prepared, String> {
        action.prepare(&params(p), "acct", &SimConfig::default())
    }

    #[test]
    fn action_table() {
        assert_eq!(
            Action::find("profiles", "get_viewers"),
            Some(Action::GetViewers)
        );
        assert_eq!(Action::find("network", "get_viewers"), None);
        assert_eq!(
            Action::find("recruiter", "get_candidates"),
            Some(Action::GetCandidates)
        );
        assert_eq!(Action::find("messages", "send"), Some(Action::Send));
        assert_eq!(Action::find("content", "comment"), Some(Action::Comment));
        assert_eq!(Action::find("content", "send"), None);
        for (category, _, _) in TABLE {
            assert!(CATEGORIES.contains(&category), "{category}");
        }
    }

    #[test]
    fn required_params() {
        for (action, missing) in [
            (Action::Get, json!({})),
            (Action::GetCompany, json!({})),
            (Action::GetCompany, json!({"company_id": " "})),
            (Action::GetReactions, json!({})),
            (Action::Invite, json!({"profile_url": 3})),
            (Action::Send, json!({"message": "hi"})),
            (Action::Send, json!({"profile_url": "u"})),
            (
                Action::Send,
                json!({"profile_url": "u", "conversation_id": "c", "message": "hi"}),
            ),
            (Action::GetConversation, json!({})),
            (Action::Comment, json!({"post_url": "p"})),
            (Action::Comment, json!({"text": "nice"})),
            (Action::SearchPeople, json!({"keywords": 7})),
        ] {
            assert!(
                prepare(action, missing.clone()).is_err(),
                "{action:?} {missing}"
            );
        }
        assert!(prepare(Action::GetCompany, json!({"company_id": "1"})).is_ok());
        assert!(prepare(Action::GetCompany, json!({"company_url": "u"})).is_ok());
        assert!(prepare(Action::SearchPeople, json!({})).is_ok());
    }

    #[test]
    fn write_targets() {
        let send = prepare(
            Action::Send,
            json!({"conversation_id": "c1", "message": "hi"}),
        );
        assert_eq!(
            send.as_ref().ok().and_then(Prepared::write_target),
            Some("c1")
        );
        let send = prepare(Action::Send, json!({"profile_url": "u1", "message": "hi"}));
        assert_eq!(
            send.as_ref().ok().and_then(Prepared::write_target),
            Some("u1")
        );
        let comment = prepare(Action::Comment, json!({"post_url": "p1", "text": "x"}));
        assert_eq!(
            comment.as_ref().ok().and_then(Prepared::write_target),
            Some("p1")
        );
        let invite = prepare(Action::Invite, json!({"profile_url": "u2"}));
        assert_eq!(
            invite.as_ref().ok().and_then(Prepared::write_target),
            Some("u2")
        );
        let read = prepare(Action::ListInbox, json!({}));
        assert_eq!(read.as_ref().ok().and_then(Prepared::write_target), None);
    }

    #[test]
    fn cursors_are_checked_against_their_list() {
        let inbox = catalog::cursor(&["acct", "inbox"], 10);
        assert_eq!(
            prepare(Action::ListInbox, json!({"cursor": inbox, "count": 5})),
            Ok(Prepared::ListInbox(CursorPage {
                start: 10,
                count: 5
            }))
        );
        // Another account's cursor, or another list's, is refused.
        let foreign = catalog::cursor(&["other", "inbox"], 10);
        assert!(prepare(Action::ListInbox, json!({"cursor": foreign})).is_err());
        let params = json!({"conversation_id": "2-x", "cursor": inbox});
        assert!(prepare(Action::GetConversation, params).is_err());
        assert!(prepare(Action::ListInbox, json!({"cursor": "nope"})).is_err());
    }
}
