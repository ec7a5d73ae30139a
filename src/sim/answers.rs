//! What each action answers and what it costs, once its parameters passed
//! the checks (`actions`) and the rate limit.
//!
//! Prices (credits in `metadata.credits_consumed`): `get_viewers`,
//! `search_people`, `search_companies`, `get_reactions`, `list_inbox`,
//! `get_conversation` and `get_candidates` 1 per 10 results returned;
//! `list_invitations` and `list_sent` 1 per 50; `get`, `get_company`,
//! `invite`, `send` and `comment` 1 per call. A list page with no results
//! costs `empty_page_cost` (0).

use serde::Serialize;

use super::SimConfig;
use super::actions::{CursorPage, Prepared, Recipient};
use super::catalog::{
    self, Candidate, Company, CompanyResult, Conversation, Invitation, ItemKind, Message,
    Pagination, PersonResult, Profile, Reaction, ReceivedInvitation, Viewer,
};
use super::request::PageParams;

/// Results per credit of the paged reads.
const PER_TEN: u64 = 10;
const PER_FIFTY: u64 = 50;

/// What an action answers: the envelope's `data` and the credits billed.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) credits: u64,
    pub(crate) data: AnswerData,
}

/// A page of an offset-paged list: its items under their own name, the
/// number of items and the pagination object.
#[derive(Debug, Serialize)]
pub(crate) struct OffsetPage<T> {
    #[serde(flatten)]
    items: Named<T>,
    total_results: u64,
    pagination: Pagination,
}

/// A page of a cursor-paged list: `next_cursor` is `null` at the end.
#[derive(Debug, Serialize)]
pub(crate) struct CursorList<T> {
    #[serde(skip_serializing_if = "Option::is_none")]
    conversation_id: Option<String>,
    #[serde(flatten)]
    items: Named<T>,
    total_results: u64,
    next_cursor: Option<String>,
}

/// A list serialised under the name its action uses (`viewers`, ...).
#[derive(Debug)]
struct Named<T> {
    name: &'static str,
    items: Vec<T>,
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.name, &self.items)?;
        map.end()
    }
}

/// The `data` object of each action.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum AnswerData {
    Viewers(OffsetPage<Viewer>),
    Invitations(OffsetPage<Invitation>),
    Received(OffsetPage<ReceivedInvitation>),
    Candidates(OffsetPage<Candidate>),
    People(OffsetPage<PersonResult>),
    Companies(OffsetPage<CompanyResult>),
    Reactions {
        post_url: String,
        #[serde(flatten)]
        page: OffsetPage<Reaction>,
    },
    Profile(Box<Profile>),
    Company(Box<Company>),
    Conversations(CursorList<Conversation>),
    Messages(CursorList<Message>),
    Invited {
        invitation_sent: bool,
        profile_url: String,
    },
    Sent {
        message_sent: bool,
        conversation_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        profile_url: Option<String>,
        message_id: String,
    },
    Commented {
        comment_posted: bool,
        post_url: String,
        comment_urn: String,
    },
}

/// Cuts an offset page out of a list of `total` items made by `item`, and
/// prices it at one credit per `per_credit` results.
fn offset_page<T>(
    name: &'static str,
    page: PageParams,
    total: u64,
    step: u64,
    per_credit: u64,
    config: &SimConfig,
    item: impl Fn(u64) -> T,
) -> (u64, OffsetPage<T>) {
    let window = catalog::page_window(page.offset.into(), page.count.into(), total, step);
    let items: Vec<T> = window.items.map(item).collect();
    let returned = items.len() as u64;
    let credits = catalog::list_cost(returned, per_credit, config.empty_page_cost.into());
    let page = OffsetPage {
        items: Named { name, items },
        total_results: returned,
        pagination: window.pagination,
    };
    (credits, page)
}

/// Cuts a cursor page out of the list `scope` of `total` items.
fn cursor_page<T>(
    name: &'static str,
    scope: &[&str],
    page: CursorPage,
    total: u64,
    config: &SimConfig,
    item: impl Fn(u64) -> T,
) -> (u64, CursorList<T>) {
    let window = catalog::cursor_window(scope, page.start, page.count.into(), total);
    let items: Vec<T> = window.items.map(item).collect();
    let returned = items.len() as u64;
    let credits = catalog::list_cost(returned, PER_TEN, config.empty_page_cost.into());
    let list = CursorList {
        conversation_id: None,
        items: Named { name, items },
        total_results: returned,
        next_cursor: window.next_cursor,
    };
    (credits, list)
}

/// Answers a prepared action for `account_id`. `viewers_total` is the
/// account's configured number of viewers; `nth_write` is how many times this
/// write (action, account, target) has now been performed, counting this one
/// (ignored for reads).
pub(crate) fn execute(
    prepared: Prepared,
    account_id: &str,
    viewers_total: u64,
    config: &SimConfig,
    nth_write: u64,
) -> Answer {
    let step = u64::from(config.next_offset_step);
    let (credits, data) = match prepared {
        Prepared::GetViewers(page) => {
            let (credits, page) =
                offset_page("viewers", page, viewers_total, step, PER_TEN, config, |i| {
                    catalog::viewer(account_id, i)
                });
            (credits, AnswerData::Viewers(page))
        }
        Prepared::Get { profile_url } => (
            1,
            AnswerData::Profile(Box::new(catalog::profile(&profile_url))),
        ),
        Prepared::SearchPeople { keywords, page } => {
            let total = catalog::scoped_total(&[account_id, &keywords], ItemKind::Person, 30, 270);
            // Searches page with plain offsets: no paging quirk is documented.
            let (credits, page) = offset_page("people", page, total, 1, PER_TEN, config, |i| {
                catalog::person_result(account_id, &keywords, i)
            });
            (credits, AnswerData::People(page))
        }
        Prepared::SearchCompanies { keywords, page } => {
            let scope = [account_id, keywords.as_str()];
            let total = catalog::scoped_total(&scope, ItemKind::Company, 15, 120);
            let (credits, page) = offset_page("companies", page, total, 1, PER_TEN, config, |i| {
                catalog::company_result(account_id, &keywords, i)
            });
            (credits, AnswerData::Companies(page))
        }
        Prepared::GetCompany {
            company_id,
            company_url,
        } => {
            let company = catalog::company(company_id.as_deref(), company_url.as_deref());
            (1, AnswerData::Company(Box::new(company)))
        }
        Prepared::GetReactions { post_url, page } => {
            let total = catalog::scoped_total(&[&post_url], ItemKind::Reaction, 3, 150);
            let (credits, page) = offset_page("reactions", page, total, 1, PER_TEN, config, |i| {
                catalog::reaction(&post_url, i)
            });
            (credits, AnswerData::Reactions { post_url, page })
        }
        Prepared::Invite { profile_url } => (
            1,
            AnswerData::Invited {
                invitation_sent: true,
                profile_url,
            },
        ),
        Prepared::ListInvitations(page) => {
            let total = catalog::derived_total(account_id, ItemKind::ReceivedInvitation, 2, 30);
            let (credits, page) =
                offset_page("invitations", page, total, 1, PER_FIFTY, config, |i| {
                    catalog::received_invitation(account_id, i)
                });
            (credits, AnswerData::Received(page))
        }
        Prepared::ListSent(page) => {
            let total = catalog::derived_total(account_id, ItemKind::Invitation, 5, 40);
            let (credits, page) =
                offset_page("invitations", page, total, 1, PER_FIFTY, config, |i| {
                    catalog::invitation(account_id, i)
                });
            (credits, AnswerData::Invitations(page))
        }
        Prepared::Send { to } => {
            let (conversation_id, profile_url) = match to {
                Recipient::Conversation(id) => (id, None),
                Recipient::Profile(url) => (catalog::conversation_for(account_id, &url), Some(url)),
            };
            let target = profile_url.as_deref().unwrap_or(&conversation_id);
            let message_id = catalog::message_id(account_id, target, nth_write);
            let data = AnswerData::Sent {
                message_sent: true,
                conversation_id,
                profile_url,
                message_id,
            };
            (1, data)
        }
        Prepared::ListInbox(page) => {
            let total = catalog::derived_total(account_id, ItemKind::Conversation, 5, 40);
            let scope = [account_id, "inbox"];
            let (credits, list) = cursor_page("conversations", &scope, page, total, config, |i| {
                catalog::conversation(account_id, i)
            });
            (credits, AnswerData::Conversations(list))
        }
        Prepared::GetConversation {
            conversation_id,
            page,
        } => {
            let total =
                catalog::scoped_total(&[account_id, &conversation_id], ItemKind::Message, 1, 40);
            let scope = [account_id, "conversation", conversation_id.as_str()];
            let (credits, mut list) = cursor_page("messages", &scope, page, total, config, |i| {
                catalog::message(account_id, &conversation_id, i)
            });
            list.conversation_id = Some(conversation_id);
            (credits, AnswerData::Messages(list))
        }
        Prepared::Comment { post_url } => {
            let comment_urn = catalog::comment_urn(account_id, &post_url, nth_write);
            let data = AnswerData::Commented {
                comment_posted: true,
                post_url,
                comment_urn,
            };
            (1, data)
        }
        Prepared::GetCandidates(page) => {
            let total = catalog::derived_total(account_id, ItemKind::Candidate, 20, 100);
            let (credits, page) = offset_page("candidates", page, total, 1, PER_TEN, config, |i| {
                catalog::candidate(account_id, i)
            });
            (credits, AnswerData::Candidates(page))
        }
    };
    Answer { credits, data }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::actions::Action;
    use serde_json::{Map, Value, json};

    fn run(action: Action, params: Value) -> (u64, Value) {
        let config = SimConfig::default();
        let params = match params {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let prepared = action
            .prepare(&params, "acct", &config)
            .expect("valid params");
        let answer = execute(prepared, "acct", 87, &config, 1);
        let data = serde_json::to_value(&answer.data).expect("json");
        (answer.credits, data)
    }

    fn viewers(offset: u32, count: u32, total: u64) -> Answer {
        let config = SimConfig::default();
        let prepared = Prepared::GetViewers(PageParams { offset, count });
        execute(prepared, "acct", total, &config, 0)
    }

    #[test]
    fn viewer_pages_are_priced_per_ten() {
        assert_eq!(viewers(0, 10, 87).credits, 1);
        assert_eq!(viewers(0, 11, 87).credits, 2);
        assert_eq!(viewers(0, 20, 87).credits, 2);
        // Last page of 87: seven results, one credit.
        assert_eq!(viewers(80, 20, 87).credits, 1);
        // Past the end: empty and free by default.
        let empty = viewers(100, 10, 87);
        assert_eq!(empty.credits, 0);
        let json = serde_json::to_value(&empty.data).expect("json");
        assert_eq!(json["total_results"], 0);
        assert_eq!(json["viewers"], json!([]));
    }

    #[test]
    fn viewer_page_shape_matches_the_sample() {
        let json = serde_json::to_value(&viewers(0, 2, 87).data).expect("json");
        assert_eq!(json["total_results"], 2);
        assert_eq!(
            json["pagination"],
            json!({"offset": 0, "count": 2, "total": 87, "has_more": true, "next_offset": 10})
        );
        let first = &json["viewers"][0];
        for field in [
            "title",
            "image_url",
            "is_blurred",
            "cta_action",
            "profile_url",
            "entity_urn",
        ] {
            assert!(first.get(field).is_some(), "missing {field}");
        }
    }

    #[test]
    fn list_prices() {
        let per_ten = [
            Action::SearchPeople,
            Action::SearchCompanies,
            Action::GetCandidates,
        ];
        for action in per_ten {
            assert_eq!(run(action, json!({"count": 11})).0, 2, "{action:?}");
        }
        let (credits, data) = run(Action::GetReactions, json!({"post_url": "p", "count": 3}));
        assert_eq!((credits, data["total_results"].clone()), (1, json!(3)));
        assert_eq!(data["post_url"], "p");
        // Per 50: a page of at most 10 costs one credit.
        assert_eq!(run(Action::ListSent, json!({})).0, 1);
        assert_eq!(run(Action::ListInvitations, json!({"offset": 1000})).0, 0);
        for (action, params) in [
            (Action::Get, json!({"profile_url": "u"})),
            (Action::GetCompany, json!({"company_id": "1"})),
            (Action::Invite, json!({"profile_url": "u"})),
            (Action::Send, json!({"profile_url": "u", "message": "hi"})),
            (Action::Comment, json!({"post_url": "p", "text": "hi"})),
        ] {
            assert_eq!(run(action, params).0, 1, "{action:?}");
        }
    }

    #[test]
    fn cursor_lists_end_with_a_null_cursor() {
        let (credits, first) = run(Action::ListInbox, json!({"count": 100}));
        let total = first["total_results"].as_u64().expect("count");
        assert!((5..45).contains(&total));
        assert_eq!(credits, total.div_ceil(10));
        assert!(first["next_cursor"].is_null());
        assert_eq!(
            first["conversations"].as_array().map(Vec::len),
            Some(total as usize)
        );
        assert!(first.get("conversation_id").is_none());

        let (_, page) = run(Action::ListInbox, json!({"count": 2}));
        let cursor = page["next_cursor"]
            .as_str()
            .expect("a next page")
            .to_owned();
        let (_, next) = run(Action::ListInbox, json!({"count": 2, "cursor": cursor}));
        assert_eq!(next["conversations"][0], first["conversations"][2]);

        let (_, messages) = run(
            Action::GetConversation,
            json!({"conversation_id": "2-abc", "count": 100}),
        );
        assert_eq!(messages["conversation_id"], "2-abc");
        assert!(messages["messages"].is_array());
        assert!(messages["next_cursor"].is_null());
    }

    #[test]
    fn writes_answer_what_they_created() {
        let (_, sent) = run(Action::Send, json!({"profile_url": "u", "message": "hi"}));
        assert_eq!(sent["message_sent"], true);
        assert_eq!(sent["profile_url"], "u");
        assert!(
            sent["conversation_id"]
                .as_str()
                .is_some_and(|c| c.starts_with("2-"))
        );
        let (_, sent) = run(
            Action::Send,
            json!({"conversation_id": "2-x", "message": "hi"}),
        );
        assert_eq!(sent["conversation_id"], "2-x");
        assert!(sent.get("profile_url").is_none());
        assert!(sent.get("message").is_none(), "the text is not echoed");
        let (_, comment) = run(Action::Comment, json!({"post_url": "p", "text": "hi"}));
        assert_eq!(comment["comment_posted"], true);
        let (_, profile) = run(Action::Get, json!({"profile_url": "https://x/in/jd"}));
        assert_eq!(profile["public_identifier"], "jd");
    }
}
