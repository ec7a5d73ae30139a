//! `actions:` and `upstream.estimates` → the [`ActionTable`]: the built-in V2
//! rules, then the fixed prices of `upstream.estimates`, then the operator's
//! additions and overrides; and `cache.actions`, which may name only reads
//! the table gives a cache TTL.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::Problems;
use super::values::seconds;
use crate::actions::{ActionRule, ActionTable, DEFAULT_PAGE, Kind, MAX_PAGE, Price};
use crate::config::raw::{RawAction, RawCache, RawPrice, RawTerm};

/// The largest fixed price: far above any V2 action's, low enough that a
/// price can never overflow the ledger's signed arithmetic, whatever a
/// budget adds to it.
const MAX_FIXED_PRICE: u64 = 1_000_000;

/// Whether `name` is an action name: 1 to 64 of `a-z 0-9 _`, as the V2 API
/// spells them (it also keeps metric labels and log fields plain).
pub(super) fn valid_action_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The action table; `viewers_ttl` is `cache.ttl`, `get_viewers`'s freshness.
pub(super) fn actions(
    estimates: Option<&Spanned<BTreeMap<String, u64>>>,
    section: Option<&Spanned<HashMap<Spanned<String>, RawAction>>>,
    viewers_ttl: Duration,
    p: &mut Problems,
) -> ActionTable {
    let mut table = ActionTable::builtin(viewers_ttl);
    if let Some(map) = estimates {
        apply_estimates(map, &mut table, p);
    }
    if let Some(section) = section {
        // In file order, so that nothing depends on the map's hash order.
        let mut entries: Vec<_> = section.value.iter().collect();
        entries.sort_by_key(|(name, _)| (name.referenced.line(), name.referenced.column()));
        for (name, raw) in entries {
            let known = table.get(&name.value).map(|rule| ActionRule::clone(rule));
            if let Some(rule) = action(name, raw, known, p) {
                table.insert(rule);
            }
        }
    }
    table
}

/// `upstream.estimates`, the older way to price an action: a fixed price,
/// for a built-in action or a new one (a write, any endpoint, since the key
/// says nothing else).
fn apply_estimates(
    map: &Spanned<BTreeMap<String, u64>>,
    table: &mut ActionTable,
    p: &mut Problems,
) {
    for (action, &credits) in &map.value {
        let problem = if action == "get_viewers" {
            Some("get_viewers is always estimated as ceil(count / 10)".to_string())
        } else if !valid_action_name(action) {
            Some(format!(
                "{action:?} is not an action name (1 to 64 characters of a-z 0-9 _)"
            ))
        } else if credits == 0 {
            Some(format!("the estimate for {action:?} must be at least 1"))
        } else if credits > MAX_FIXED_PRICE {
            Some(format!(
                "the estimate for {action:?} must be at most {MAX_FIXED_PRICE}"
            ))
        } else {
            None
        };
        if let Some(message) = problem {
            p.at(&map.referenced, "upstream.estimates", message);
            continue;
        }
        let rule = match table.get(action) {
            Some(known) => ActionRule {
                price: Price::Fixed(credits),
                ..ActionRule::clone(known)
            },
            None => ActionRule {
                name: action.clone(),
                category: None,
                kind: Kind::Write,
                price: Price::Fixed(credits),
                cache_ttl: None,
            },
        };
        table.insert(rule);
    }
}

/// One entry of `actions:`. `known` is the rule it overrides, if any: what
/// the entry leaves out is kept from it.
fn action(
    name: &Spanned<String>,
    raw: &RawAction,
    known: Option<ActionRule>,
    p: &mut Problems,
) -> Option<ActionRule> {
    let key = format!("actions.{}", name.value);
    let problems_before = p.0.len();
    if !valid_action_name(&name.value) {
        p.at(
            &name.referenced,
            &key,
            "is not an action name (1 to 64 characters of a-z 0-9 _)",
        );
    }
    let kind = raw.kind.as_ref().and_then(|k| match k.value.as_str() {
        "read" => Some(Kind::Read),
        "write" => Some(Kind::Write),
        other => {
            p.at(
                &k.referenced,
                format!("{key}.kind"),
                format!("unknown kind {other:?}; use read or write"),
            );
            None
        }
    });
    let price = raw
        .price
        .as_ref()
        .and_then(|pr| price(pr, &format!("{key}.price"), p));
    let category = raw.endpoint.as_ref().and_then(|e| {
        let category = e
            .value
            .strip_prefix("/v2/")
            .filter(|c| valid_action_name(c));
        if category.is_none() {
            p.at(
                &e.referenced,
                format!("{key}.endpoint"),
                "must be /v2/{category}, e.g. /v2/profiles",
            );
        }
        category.map(str::to_string)
    });
    if known.is_none() {
        if raw.kind.is_none() {
            p.at(
                &name.referenced,
                format!("{key}.kind"),
                "is required for an action that is not built in: read or write",
            );
        }
        if raw.price.is_none() {
            p.at(
                &name.referenced,
                format!("{key}.price"),
                "is required for an action that is not built in: free, {fixed: N} or {per: N, of: PARAM}",
            );
        }
    }
    let kind = kind.or(known.as_ref().map(|k| k.kind))?;
    let cache_ttl = match (&raw.cache_ttl_s, kind) {
        (Some(ttl), Kind::Write) => {
            p.at(
                &ttl.referenced,
                format!("{key}.cache_ttl_s"),
                "only reads are cached; a write is sent every time",
            );
            None
        }
        // 0 turns caching off for a read that the built-in rules cache.
        (Some(ttl), Kind::Read) if ttl.value == 0 => None,
        (Some(ttl), Kind::Read) => Some(seconds(
            p,
            Some(ttl),
            &format!("{key}.cache_ttl_s"),
            0,
            true,
        )),
        // A read keeps its TTL only while it stays a read.
        (None, _) => known
            .as_ref()
            .filter(|k| k.kind == kind)
            .and_then(|k| k.cache_ttl),
    };
    if p.0.len() > problems_before {
        return None;
    }
    Some(ActionRule {
        name: name.value.clone(),
        category: category.or_else(|| known.as_ref().and_then(|k| k.category.clone())),
        kind,
        price: price.or_else(|| known.map(|k| k.price))?,
        cache_ttl,
    })
}

const PRICE_FORMS: &str =
    "a price is free, {fixed: N} or {per: N, of: PARAM} (with optional default and max)";

/// `free`, `{fixed: N}` or `{per: N, of: PARAM, default: D, max: M}`.
fn price(raw: &Spanned<RawPrice>, key: &str, p: &mut Problems) -> Option<Price> {
    let at = &raw.referenced;
    let terms = match &raw.value {
        RawPrice::Word(w) if w == "free" => return Some(Price::Free),
        RawPrice::Word(other) => {
            p.at(at, key, format!("{other:?} is not a price; {PRICE_FORMS}"));
            return None;
        }
        RawPrice::Terms(terms) => terms,
    };
    let mut numbers: HashMap<&str, u64> = HashMap::new();
    let mut of = None;
    let mut ok = true;
    for (term, value) in terms {
        match (term.as_str(), value) {
            ("fixed" | "per" | "default" | "max", RawTerm::Number(n)) => {
                numbers.insert(term, *n);
            }
            ("of", RawTerm::Text(param)) if valid_action_name(param) => of = Some(param.clone()),
            ("fixed" | "per" | "default" | "max", RawTerm::Text(_)) => {
                p.at(at, format!("{key}.{term}"), "must be a whole number");
                ok = false;
            }
            ("of", _) => {
                p.at(
                    at,
                    format!("{key}.of"),
                    "must name the param that counts results, e.g. count",
                );
                ok = false;
            }
            (other, _) => {
                p.at(at, key, format!("unknown term {other:?}; {PRICE_FORMS}"));
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    let has = |t: &str| numbers.contains_key(t);
    match (numbers.get("fixed"), numbers.get("per")) {
        (Some(_), _) if has("per") || has("default") || has("max") || of.is_some() => {
            p.at(at, key, format!("fixed takes no other term; {PRICE_FORMS}"));
            None
        }
        (Some(&0), _) => {
            p.at(
                at,
                format!("{key}.fixed"),
                "must be at least 1 (a price that costs nothing is `free`)",
            );
            None
        }
        (Some(&n), _) if n > MAX_FIXED_PRICE => {
            p.at(
                at,
                format!("{key}.fixed"),
                format!("must be at most {MAX_FIXED_PRICE}"),
            );
            None
        }
        (Some(&n), _) => Some(Price::Fixed(n)),
        (None, Some(&per)) => per_price(per, of, &numbers, at, key, p),
        (None, None) => {
            p.at(at, key, format!("needs fixed or per; {PRICE_FORMS}"));
            None
        }
    }
}

/// `{per: N, of: PARAM}`: the page size defaults to the upstream's 10, and a
/// `count` param is capped at the upstream's documented 100 unless `max` says.
fn per_price(
    per: u64,
    of: Option<String>,
    numbers: &HashMap<&str, u64>,
    at: &serde_saphyr::Location,
    key: &str,
    p: &mut Problems,
) -> Option<Price> {
    let Some(param) = of else {
        p.at(
            at,
            format!("{key}.of"),
            "is required with per: the param that counts results, e.g. count",
        );
        return None;
    };
    if per == 0 {
        p.at(at, format!("{key}.per"), "must be at least 1");
        return None;
    }
    let default = numbers.get("default").copied().unwrap_or(DEFAULT_PAGE);
    let max = numbers
        .get("max")
        .copied()
        .or((param == "count").then_some(MAX_PAGE));
    if let Some(max) = max
        && default > max
    {
        p.at(
            at,
            format!("{key}.default"),
            format!("must be at most max ({max})"),
        );
        return None;
    }
    Some(Price::Per {
        per,
        param,
        default,
        max,
    })
}

/// `cache.actions`: the actions whose answers are cached; by default every
/// read with a cache TTL. Only such a read can be listed: a write must reach
/// the upstream every time, and a read without a TTL has no freshness to
/// keep it by.
pub(super) fn cached(raw: &RawCache, table: &ActionTable, p: &mut Problems) -> HashSet<String> {
    let cacheable = |a: &str| {
        table
            .get(a)
            .is_some_and(|r| r.kind == Kind::Read && r.cache_ttl.is_some())
    };
    match &raw.actions {
        None => table
            .rules()
            .into_iter()
            .filter(|r| cacheable(&r.name))
            .map(|r| r.name.clone())
            .collect(),
        Some(list) => {
            for a in list.value.iter().filter(|a| !cacheable(a)) {
                p.at(
                    &list.referenced,
                    "cache.actions",
                    format!("{a:?} is not a read with a cache TTL, so it cannot be cached"),
                );
            }
            list.value.iter().cloned().collect()
        }
    }
}
