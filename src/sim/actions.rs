//! The action table: which actions each `/v2/{category}` knows, how their
//! parameters are checked, what they answer and what they cost.
//!
//! Checking (`prepare`) is split from answering (`execute`) because upstream's
//! order puts the rate limit between the two: a request with bad parameters
//! is refused before it uses any of the key's quota.

use serde::Serialize;
use serde_json::{Map, Value};

use super::SimConfig;
use super::catalog::{self, Candidate, Invitation, ItemKind, Pagination, Viewer};
use super::request::{self, PageParams};

/// Categories that exist upstream. A known category with an action the
/// simulator does not play answers `INVALID_ACTION`; any other `/v2/` path
/// is `NOT_FOUND`.
pub(crate) const CATEGORIES: [&str; 7] = [
    "profiles",
    "network",
    "messages",
    "recruiter",
    "companies",
    "posts",
    "search",
];

/// `list_sent` pages are priced per 50 results, `get_viewers` and
/// `get_candidates` per 10.
const VIEWERS_PER_CREDIT: u64 = 10;
const INVITATIONS_PER_CREDIT: u64 = 50;
const CANDIDATES_PER_CREDIT: u64 = 10;

/// The actions the simulator plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    GetViewers,
    ListSent,
    Invite,
    GetCandidates,
}

impl Action {
    /// The action named `action` on `category`, if upstream has it.
    pub(crate) fn find(category: &str, action: &str) -> Option<Action> {
        match (category, action) {
            ("profiles", "get_viewers") => Some(Action::GetViewers),
            ("network", "list_sent") => Some(Action::ListSent),
            ("network", "invite") => Some(Action::Invite),
            ("recruiter", "get_candidates") => Some(Action::GetCandidates),
            _ => None,
        }
    }

    /// Checks the parameters; the error is the `INVALID_PARAMS` message.
    pub(crate) fn prepare(
        self,
        params: &Map<String, Value>,
        config: &SimConfig,
    ) -> Result<Prepared, String> {
        let page = || request::page_params(params, config.default_count, config.max_count);
        Ok(match self {
            Action::GetViewers => Prepared::GetViewers(page()?),
            Action::ListSent => Prepared::ListSent(page()?),
            Action::GetCandidates => Prepared::GetCandidates(page()?),
            Action::Invite => {
                let profile_url = request::required_string(params, "profile_url")?;
                // Checked for type only; the simulator does not send messages.
                request::optional_string(params, "message")?;
                Prepared::Invite {
                    profile_url: profile_url.to_owned(),
                }
            }
        })
    }
}

/// An action whose parameters passed the checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Prepared {
    GetViewers(PageParams),
    ListSent(PageParams),
    Invite { profile_url: String },
    GetCandidates(PageParams),
}

/// What an action answers: the envelope's `data` and the credits billed.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) credits: u64,
    pub(crate) data: AnswerData,
}

/// The `data` object of each action.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum AnswerData {
    Viewers {
        viewers: Vec<Viewer>,
        total_results: u64,
        pagination: Pagination,
    },
    Invitations {
        invitations: Vec<Invitation>,
        total_results: u64,
        pagination: Pagination,
    },
    Invited {
        invitation_sent: bool,
        profile_url: String,
    },
    Candidates {
        candidates: Vec<Candidate>,
        total_results: u64,
        pagination: Pagination,
    },
}

/// Answers a prepared action for `account_id`. `viewers_total` is the
/// account's configured number of viewers.
pub(crate) fn execute(
    prepared: Prepared,
    account_id: &str,
    viewers_total: u64,
    config: &SimConfig,
) -> Answer {
    let empty_cost = u64::from(config.empty_page_cost);
    match prepared {
        Prepared::GetViewers(page) => {
            let window = catalog::page_window(
                page.offset.into(),
                page.count.into(),
                viewers_total,
                config.next_offset_step.into(),
            );
            let viewers: Vec<Viewer> = window
                .items
                .map(|i| catalog::viewer(account_id, i))
                .collect();
            let items = viewers.len() as u64;
            Answer {
                credits: catalog::list_cost(items, VIEWERS_PER_CREDIT, empty_cost),
                data: AnswerData::Viewers {
                    viewers,
                    total_results: items,
                    pagination: window.pagination,
                },
            }
        }
        Prepared::ListSent(page) => {
            // Upstream documents no paging quirk for this list: plain offsets.
            let total = catalog::derived_total(account_id, ItemKind::Invitation, 5, 40);
            let window = catalog::page_window(page.offset.into(), page.count.into(), total, 1);
            let invitations: Vec<Invitation> = window
                .items
                .map(|i| catalog::invitation(account_id, i))
                .collect();
            let items = invitations.len() as u64;
            Answer {
                credits: catalog::list_cost(items, INVITATIONS_PER_CREDIT, empty_cost),
                data: AnswerData::Invitations {
                    invitations,
                    total_results: items,
                    pagination: window.pagination,
                },
            }
        }
        Prepared::Invite { profile_url } => Answer {
            credits: 1,
            data: AnswerData::Invited {
                invitation_sent: true,
                profile_url,
            },
        },
        Prepared::GetCandidates(page) => {
            let total = catalog::derived_total(account_id, ItemKind::Candidate, 20, 100);
            let window = catalog::page_window(page.offset.into(), page.count.into(), total, 1);
            let candidates: Vec<Candidate> = window
                .items
                .map(|i| catalog::candidate(account_id, i))
                .collect();
            let items = candidates.len() as u64;
            Answer {
                credits: catalog::list_cost(items, CANDIDATES_PER_CREDIT, empty_cost),
                data: AnswerData::Candidates {
                    candidates,
                    total_results: items,
                    pagination: window.pagination,
                },
            }
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

    fn viewers(offset: u32, count: u32, total: u64) -> Answer {
        let config = SimConfig::default();
        let prepared = Prepared::GetViewers(PageParams { offset, count });
        execute(prepared, "acct", total, &config)
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
        assert_eq!(Action::find("messages", "send"), None);
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
    fn other_actions_check_their_params() {
        let config = SimConfig::default();
        assert!(Action::Invite.prepare(&Map::new(), &config).is_err());
        assert!(
            Action::Invite
                .prepare(&params(json!({"profile_url": 3})), &config)
                .is_err()
        );
        let invite = Action::Invite
            .prepare(&params(json!({"profile_url": "https://x"})), &config)
            .expect("valid invite");
        assert_eq!(execute(invite, "acct", 0, &config).credits, 1);

        let list = Action::ListSent
            .prepare(&Map::new(), &config)
            .expect("defaults");
        assert_eq!(
            list,
            Prepared::ListSent(PageParams {
                offset: 0,
                count: 10
            })
        );
        // At most 10 results: one credit (per 50).
        assert_eq!(execute(list, "acct", 0, &config).credits, 1);
        assert!(
            Action::GetCandidates
                .prepare(&params(json!({"count": 1000})), &config)
                .is_err()
        );
    }
}
