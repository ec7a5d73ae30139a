//! The action table: for every V2 action viewgate forwards, which endpoint it
//! belongs to, whether it reads or changes the world, the upper bound of its
//! price given its params, and (for reads) how long an answer stays fresh.
//!
//! Rules for the documented V2 actions are built in ([`ActionTable::builtin`]);
//! the operator's `actions:` section adds or overrides them and
//! `upstream.estimates` sets fixed prices. An action without a rule is never
//! forwarded (400 `INVALID_ACTION`): viewgate cannot reserve credits for a
//! call it cannot price, and a budget that does not bound every call bounds
//! nothing.

use foldhash::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

/// Whether an action only reads or changes the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Safe to cache, coalesce and retry after an upstream 5xx.
    Read,
    /// Sent at most once: never cached, never retried once a byte may have
    /// reached the upstream.
    Write,
}

impl Kind {
    /// `read` or `write`, as in the config and the README.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
        }
    }
}

/// How an action's price bound follows from its params.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Price {
    /// Costs nothing.
    Free,
    /// Always this many credits at most.
    Fixed(u64),
    /// `ceil(params[param] / per)` credits, at least 1.
    Per {
        /// Results per credit.
        per: u64,
        /// The param that says how many results are asked for.
        param: String,
        /// Its value when the call does not give it.
        default: u64,
        /// Its largest accepted value, if the upstream documents one.
        max: Option<u64>,
    },
}

impl Price {
    /// `ceil(n / per)` with at least one credit, the pricing of the paged reads.
    pub fn per(per: u64, param: &str) -> Price {
        Price::Per {
            per,
            param: param.to_string(),
            default: DEFAULT_PAGE,
            max: Some(MAX_PAGE),
        }
    }

    /// The most a call with `params` can cost, or why its params are refused
    /// (an `INVALID_PARAMS` message).
    pub fn bound(&self, params: Option<&serde_json::Map<String, Value>>) -> Result<u64, String> {
        self.bound_by(|name| params.and_then(|p| p.get(name)).cloned())
    }

    /// [`Price::bound`], reading each param through `param`.
    pub fn bound_by(&self, param: impl Fn(&str) -> Option<Value>) -> Result<u64, String> {
        match self {
            Price::Free => Ok(0),
            Price::Fixed(n) => Ok(*n),
            Price::Per {
                per,
                param: name,
                default,
                max,
            } => {
                let (param_of, param) = (&param, name);
                let n = match param_of(param.as_str()) {
                    None | Some(Value::Null) => *default,
                    Some(v) => v.as_u64().ok_or_else(|| {
                        format!("{param} must be a non-negative integer (it sets the price)")
                    })?,
                };
                if let Some(max) = max
                    && n > *max
                {
                    return Err(format!("{param} must be at most {max}"));
                }
                Ok(n.div_ceil((*per).max(1)).max(1))
            }
        }
    }

    /// A short description for logs and the README table.
    pub fn describe(&self) -> String {
        match self {
            Price::Free => "free".into(),
            Price::Fixed(n) => format!("{n} per call"),
            Price::Per { per, param, .. } => format!("1 per {per} of {param}"),
        }
    }
}

/// Page size when a paged read does not say (the simulator's documented default).
pub const DEFAULT_PAGE: u64 = 10;
/// Largest page a paged read may ask for (the simulator's documented maximum).
pub const MAX_PAGE: u64 = 100;

/// Everything viewgate knows about one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRule {
    /// The action's name, as in the request body.
    pub name: String,
    /// The `/v2/{category}` it is sent to; `None` accepts any category
    /// (an operator-added action that did not name one).
    pub category: Option<String>,
    /// Read or write.
    pub kind: Kind,
    /// Its price bound.
    pub price: Price,
    /// How long an answer is fresh, for reads that are cached.
    pub cache_ttl: Option<Duration>,
}

impl ActionRule {
    /// Whether it is a write (sent once, never cached).
    pub fn is_write(&self) -> bool {
        self.kind == Kind::Write
    }
}

/// The rules of every action, by name.
#[derive(Debug, Clone, Default)]
pub struct ActionTable {
    rules: HashMap<String, Arc<ActionRule>>,
}

impl PartialEq for ActionTable {
    fn eq(&self, other: &Self) -> bool {
        self.rules.len() == other.rules.len()
            && self
                .rules
                .iter()
                .all(|(k, v)| other.rules.get(k).is_some_and(|o| o == v))
    }
}

/// How the built-in table is written: (category, action, kind, price, ttl seconds).
type Builtin = (&'static str, &'static str, Kind, fn() -> Price, Option<u64>);

/// The documented V2 actions (`../shared/upstream-api.md`). `get_viewers`'s
/// TTL is `cache.ttl_s` (`None` here); other reads are fresh for as long as
/// their data plausibly stays the same: profiles and companies for an hour,
/// searches and lists for minutes, inboxes for half a minute.
const BUILTIN: &[Builtin] = &[
    (
        "profiles",
        "get_viewers",
        Kind::Read,
        || Price::per(10, "count"),
        None,
    ),
    (
        "profiles",
        "get",
        Kind::Read,
        || Price::Fixed(1),
        Some(3600),
    ),
    (
        "profiles",
        "search_people",
        Kind::Read,
        || Price::per(10, "count"),
        Some(600),
    ),
    (
        "profiles",
        "search_companies",
        Kind::Read,
        || Price::per(10, "count"),
        Some(600),
    ),
    (
        "profiles",
        "get_company",
        Kind::Read,
        || Price::Fixed(1),
        Some(3600),
    ),
    (
        "profiles",
        "get_reactions",
        Kind::Read,
        || Price::per(10, "count"),
        Some(300),
    ),
    ("network", "invite", Kind::Write, || Price::Fixed(1), None),
    (
        "network",
        "list_invitations",
        Kind::Read,
        || Price::per(50, "count"),
        Some(300),
    ),
    (
        "network",
        "list_sent",
        Kind::Read,
        || Price::per(50, "count"),
        Some(300),
    ),
    ("messages", "send", Kind::Write, || Price::Fixed(1), None),
    (
        "messages",
        "list_inbox",
        Kind::Read,
        || Price::per(10, "count"),
        Some(30),
    ),
    (
        "messages",
        "get_conversation",
        Kind::Read,
        || Price::per(10, "count"),
        Some(30),
    ),
    ("content", "comment", Kind::Write, || Price::Fixed(1), None),
    (
        "recruiter",
        "get_candidates",
        Kind::Read,
        || Price::per(10, "count"),
        Some(600),
    ),
    // `POST /v2/login` and `/v2/checkpoint` carry no action field: their
    // endpoint is their name. A new connection costs a credit; a checkpoint
    // only completes one.
    ("login", "login", Kind::Write, || Price::Fixed(1), None),
    (
        "checkpoint",
        "checkpoint",
        Kind::Write,
        || Price::Free,
        None,
    ),
];

impl ActionTable {
    /// The documented V2 actions; `viewers_ttl` is `get_viewers`'s freshness.
    pub fn builtin(viewers_ttl: Duration) -> Self {
        let mut table = ActionTable::default();
        for (category, name, kind, price, ttl) in BUILTIN {
            let cache_ttl = match (kind, ttl) {
                (Kind::Read, Some(s)) => Some(Duration::from_secs(*s)),
                (Kind::Read, None) => Some(viewers_ttl),
                (Kind::Write, _) => None,
            };
            table.insert(ActionRule {
                name: name.to_string(),
                category: Some(category.to_string()),
                kind: *kind,
                price: price(),
                cache_ttl,
            });
        }
        table
    }

    /// Adds or replaces a rule.
    pub fn insert(&mut self, rule: ActionRule) {
        self.rules.insert(rule.name.clone(), Arc::new(rule));
    }

    /// The rule of `action`, whatever its category.
    pub fn get(&self, action: &str) -> Option<&Arc<ActionRule>> {
        self.rules.get(action)
    }

    /// The rule of `action` when it is sent to `/v2/{category}`.
    pub fn find(&self, category: &str, action: &str) -> Option<&Arc<ActionRule>> {
        self.rules
            .get(action)
            .filter(|r| r.category.as_deref().is_none_or(|c| c == category))
    }

    /// Each rule priced below the rule of the same name in `documented`, as
    /// `(action, its bound, documented bound, results asked for)` at the
    /// first page size where it is cheaper. A price below what the upstream
    /// charges holds too little: the difference is recorded when the call
    /// settles, but a crash before then counts only what was held, and a
    /// budget can be overrun by it.
    pub fn priced_below(&self, documented: &ActionTable) -> Vec<(String, u64, u64, u64)> {
        // Every page size a call may ask for (config load only: cheap enough).
        const MOST_ASKED: u64 = 1000;
        let mut below = Vec::new();
        for rule in self.rules() {
            let Some(known) = documented.get(&rule.name) else {
                continue;
            };
            // A call asking for `n` results: the documented price's param
            // is `n`, any other param the override reads is left out (its
            // default), so pricing by another param (`offset`) shows too.
            let asks = match &known.price {
                Price::Per { param, .. } => Some(param.as_str()),
                _ => None,
            };
            let cheaper = (1..=MOST_ASKED).find_map(|n| {
                let at = |price: &Price| {
                    price
                        .bound_by(|name| asks.is_none_or(|p| p == name).then(|| Value::from(n)))
                        .ok()
                };
                match (at(&rule.price), at(&known.price)) {
                    (Some(ours), Some(theirs)) if ours < theirs => Some((ours, theirs, n)),
                    _ => None,
                }
            });
            if let Some((ours, theirs, n)) = cheaper {
                below.push((rule.name.clone(), ours, theirs, n));
            }
        }
        below
    }

    /// Every rule, sorted by category then name (for reports).
    pub fn rules(&self) -> Vec<&Arc<ActionRule>> {
        let mut all: Vec<_> = self.rules.values().collect();
        all.sort_by(|a, b| (&a.category, &a.name).cmp(&(&b.category, &b.name)));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bound(price: &Price, params: Value) -> Result<u64, String> {
        price.bound(params.as_object())
    }

    #[test]
    fn paged_reads_are_bounded_by_what_they_ask_for() {
        let p = Price::per(10, "count");
        assert_eq!(bound(&p, json!({})), Ok(1));
        assert_eq!(bound(&p, json!({"count": null})), Ok(1));
        assert_eq!(bound(&p, json!({"count": 1})), Ok(1));
        assert_eq!(bound(&p, json!({"count": 11})), Ok(2));
        assert_eq!(bound(&p, json!({"count": 100})), Ok(10));
        assert_eq!(p.bound(None), Ok(1));
        // A zero-result page may cost 0, but a bound of 0 would let a spent budget call.
        assert_eq!(bound(&p, json!({"count": 0})), Ok(1));
        let per50 = Price::per(50, "count");
        assert_eq!(bound(&per50, json!({"count": 51})), Ok(2));
    }

    #[test]
    fn a_price_param_that_is_not_a_count_is_refused() {
        let p = Price::per(10, "count");
        for bad in [
            json!({"count": -1}),
            json!({"count": 1.5}),
            json!({"count": "10"}),
            json!({"count": 101}),
            json!({"count": 1e300}),
        ] {
            assert!(bound(&p, bad.clone()).is_err(), "{bad}");
        }
        let unbounded = Price::Per {
            per: 10,
            param: "count".into(),
            default: 10,
            max: None,
        };
        assert_eq!(
            bound(&unbounded, json!({"count": u64::MAX})),
            Ok(u64::MAX.div_ceil(10))
        );
    }

    #[test]
    fn the_builtin_table_covers_the_documented_actions() {
        let t = ActionTable::builtin(Duration::from_secs(300));
        for (category, action) in [
            ("profiles", "get_viewers"),
            ("profiles", "search_people"),
            ("network", "invite"),
            ("network", "list_sent"),
            ("messages", "send"),
            ("content", "comment"),
            ("recruiter", "get_candidates"),
        ] {
            assert!(t.find(category, action).is_some(), "{category} {action}");
        }
        // An action is tied to its endpoint.
        assert!(t.find("network", "get_viewers").is_none());
        assert!(t.find("profiles", "no_such_action").is_none());
        let invite = t.get("invite").unwrap();
        assert!(invite.is_write() && invite.cache_ttl.is_none());
        assert_eq!(
            t.get("get_viewers").unwrap().cache_ttl,
            Some(Duration::from_secs(300))
        );
    }
}
