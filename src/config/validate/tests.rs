//! Validation as an operator meets it: whole files in, problems with lines out.

use super::*;
use crate::actions::{ActionRule, Kind, Price};
use std::path::PathBuf;
use std::time::Duration;

const HASH_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const HASH_B: &str = "2222222222222222222222222222222222222222222222222222222222222222";

/// Loads with TEST_UPSTREAM_KEY set (and nothing else).
fn load(text: &str, file: &str) -> Result<Config, ConfigError> {
    from_yaml_with_env(text, file, &|name| {
        (name == "TEST_UPSTREAM_KEY").then(|| "k".to_string())
    })
}

fn yaml(tenants: &str) -> String {
    format!(
        "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: TEST_UPSTREAM_KEY\ntenants:\n{tenants}"
    )
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let c = load(
        &yaml(&format!(
            "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"acc-1\"]\n"
        )),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.max_body_bytes, 65536);
    assert_eq!(c.upstream.timeout, Duration::from_millis(15000));
    assert_eq!(c.upstream.max_retries, 2);
    assert_eq!(c.cache.ttl, Duration::from_secs(300));
    assert!(c.cache.actions.contains("get_viewers"));
    // Every read with a cache TTL is cached unless cache.actions says otherwise.
    assert!(c.cache.actions.contains("search_people"));
    assert!(!c.cache.actions.contains("invite"));
    assert_eq!(c.tenants[0].actions, vec!["get_viewers"]);
    assert_eq!(c.tenants[0].budget, None);
    assert_eq!(
        c.ledger,
        LedgerConfig::Sqlite {
            path: PathBuf::from("data/ledger.db")
        }
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let text = yaml(&format!(
        "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"a\"]\n    budgett: {{credits: 1, period: day}}\n"
    ));
    let err = load(&text, "t.yaml").unwrap_err();
    let shown = err.to_string();
    assert!(shown.contains("budgett"), "{shown}");
    assert_eq!(err.problems[0].line, 10, "{shown}");
}

#[test]
fn every_problem_is_reported_with_key_and_line() {
    let text = yaml(&format!(
        "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"a\"]\n    budget: {{credits: 5, period: fortnight}}\n  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"b\"]\n    rate_limit: {{per_second: 0}}\n  - id: ops\n    key_sha256: \"{HASH_B}x\"\n    accounts: [\"has space\"]\n"
    ));
    let err = load(&text, "t.yaml").unwrap_err();
    let shown = err.to_string();
    for needle in [
        "t.yaml:10:",
        "tenants[0].budget.period: unknown period \"fortnight\"",
        "t.yaml:11:",
        "tenants[1].id: duplicate tenant id \"crm\" (first at line 7)",
        "tenants[1].key_sha256: duplicate key hash",
        "tenants[1].rate_limit: the rate must be at least 1",
        "tenants[2].key_sha256: must be 64 hex digits",
        "tenants[2].accounts: \"has space\" is not an account id",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
}

#[test]
fn upstream_keys_never_come_from_the_yaml() {
    let text = "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key: \"sk-live\"\n";
    let err = load(text, "t.yaml").unwrap_err();
    assert!(err.to_string().contains("api_key"), "{err}");
    let text = "upstream:\n  base_url: \"http://127.0.0.1:1\"\n  keys:\n    - name: primary\n      api_key_env: VIEWGATE_TEST_SURELY_UNSET_VARIABLE\n";
    let err = load(text, "t.yaml").unwrap_err();
    assert!(err.to_string().contains("t.yaml:5:"), "{err}");
    assert!(
        err.to_string()
            .contains("VIEWGATE_TEST_SURELY_UNSET_VARIABLE is not set"),
        "{err}"
    );
}

#[test]
fn rate_limits_build_governor_quotas() {
    let text = yaml(&format!(
        "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"*\"]\n    rate_limit: {{per_minute: 120, burst: 3}}\n    budget: {{credits: 1000, period: week}}\n"
    ));
    let c = load(&text, "t.yaml").unwrap();
    let rl = c.tenants[0].rate_limit.unwrap();
    assert_eq!(rl.quota().replenish_interval(), Duration::from_millis(500));
    assert_eq!(rl.quota().burst_size().get(), 3);
    assert_eq!(
        c.tenants[0].budget,
        Some(Budget {
            credits: 1000,
            period: Period::Week
        })
    );
    assert_eq!(c.tenants[0].accounts, vec![AccountPattern::Any]);
}

/// A file with one tenant and `extra` appended at the top level.
fn with(extra: &str) -> String {
    format!(
        "{}{extra}",
        yaml(&format!(
            "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"*\"]\n"
        ))
    )
}

/// The problems of a file that must not load, as shown to the operator.
fn refused(text: &str) -> String {
    load(text, "t.yaml").unwrap_err().to_string()
}

fn assert_shows(shown: &str, needles: &[&str]) {
    for needle in needles {
        assert!(shown.contains(needle), "missing {needle:?} in:\n{shown}");
    }
}

#[test]
fn new_sections_have_their_documented_defaults() {
    let c = load(&with(""), "t.yaml").unwrap();
    assert_eq!(c.idempotency_ttl, Duration::from_secs(86_400));
    assert!(!c.tenants[0].connect_accounts);
    assert_eq!(c.actions, ActionTable::builtin(c.cache.ttl));
    let c = load(
        &with("idempotency:\n  ttl_s: 60\n").replace(
            "accounts: [\"*\"]\n",
            "accounts: [\"*\"]\n    connect_accounts: true\n",
        ),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.idempotency_ttl, Duration::from_secs(60));
    assert!(c.tenants[0].connect_accounts);
}

#[test]
fn idempotency_ttl_is_bounded_by_a_second_and_thirty_days() {
    for bad in ["0", "2592001"] {
        let shown = refused(&with(&format!("idempotency:\n  ttl_s: {bad}\n")));
        assert_shows(
            &shown,
            &["t.yaml:11:10: idempotency.ttl_s: must be between 1"],
        );
    }
    let shown = refused(&with("idempotency:\n  ttl: 60\n"));
    assert_shows(&shown, &["t.yaml:11:", "ttl"]);
    assert!(load(&with("idempotency:\n  ttl_s: 2592000\n"), "t.yaml").is_ok());
}

#[test]
fn the_actions_section_adds_and_overrides_rules() {
    let c = load(
        &with(concat!(
            "actions:\n",
            "  get_candidates: { price: { per: 20, of: count }, kind: read, cache_ttl_s: 900 }\n",
            "  send: { price: { fixed: 2 } }\n",
            "  my_free_thing: { price: free, kind: read, endpoint: /v2/profiles }\n",
            "  bulk_export: { price: { per: 5, of: rows, default: 50 }, kind: write }\n",
            "  get: { cache_ttl_s: 0 }\n",
            "  get_viewers: { cache_ttl_s: 60 }\n",
        )),
        "t.yaml",
    )
    .unwrap();
    let rule = |name: &str| ActionRule::clone(c.actions.get(name).unwrap());
    // An override changes what it names and keeps the rest.
    let candidates = rule("get_candidates");
    assert_eq!(candidates.category.as_deref(), Some("recruiter"));
    assert_eq!(candidates.price, Price::per(20, "count"));
    assert_eq!(candidates.cache_ttl, Some(Duration::from_secs(900)));
    let send = rule("send");
    assert_eq!((send.kind, send.price), (Kind::Write, Price::Fixed(2)));
    assert_eq!(send.category.as_deref(), Some("messages"));
    assert_eq!(rule("get").cache_ttl, None, "0 turns caching off");
    assert_eq!(rule("get_viewers").cache_ttl, Some(Duration::from_secs(60)));
    // A new action: its endpoint if it names one, else any.
    let free = rule("my_free_thing");
    assert_eq!(
        (free.kind, free.price, free.cache_ttl),
        (Kind::Read, Price::Free, None)
    );
    assert!(c.actions.find("profiles", "my_free_thing").is_some());
    assert!(c.actions.find("network", "my_free_thing").is_none());
    let export = rule("bulk_export");
    assert_eq!(export.category, None);
    // A param other than count has no documented maximum.
    assert_eq!(
        export.price,
        Price::Per {
            per: 5,
            param: "rows".into(),
            default: 50,
            max: None
        }
    );
    assert!(c.actions.find("anything", "bulk_export").is_some());
    // Built-in rules nobody touched are still there.
    assert_eq!(
        c.actions.get("invite"),
        ActionTable::builtin(c.cache.ttl).get("invite")
    );
}

#[test]
fn upstream_estimates_still_set_fixed_prices() {
    let text = with("").replace(
        "  keys:\n",
        "  estimates: { invite: 3, legacy_thing: 2 }\n  keys:\n",
    );
    let c = load(&text, "t.yaml").unwrap();
    let invite = c.actions.get("invite").unwrap();
    assert_eq!(invite.price, Price::Fixed(3));
    assert_eq!(invite.category.as_deref(), Some("network"));
    let legacy = c.actions.get("legacy_thing").unwrap();
    assert_eq!(
        (
            legacy.kind,
            &legacy.price,
            legacy.category.as_deref(),
            legacy.cache_ttl
        ),
        (Kind::Write, &Price::Fixed(2), None, None)
    );
    assert_eq!(c.upstream.estimates.get("invite"), Some(&3));
    // `actions:` wins over `upstream.estimates`.
    let c = load(
        &format!("{text}actions:\n  invite: {{ price: {{ fixed: 5 }} }}\n"),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.actions.get("invite").unwrap().price, Price::Fixed(5));
    for bad in ["get_viewers: 2", "invite: 0", "Bad-Name: 1"] {
        let text = with("").replace("  keys:\n", &format!("  estimates: {{ {bad} }}\n  keys:\n"));
        assert_shows(&refused(&text), &["t.yaml:3:", "upstream.estimates"]);
    }
}

#[test]
fn every_mistake_in_actions_is_reported_with_its_line() {
    let shown = refused(&with(concat!(
        "actions:\n",
        "  Bad-Name: { price: free, kind: read }\n",
        "  brand_new: { cache_ttl_s: 5 }\n",
        "  send: { cache_ttl_s: 60 }\n",
        "  list_sent: { kind: maybe }\n",
        "  odd_price: { price: cheap, kind: read }\n",
        "  mixed: { price: { fixed: 1, per: 10, of: count }, kind: write }\n",
        "  no_of: { price: { per: 10 }, kind: read }\n",
        "  typo: { price: { pre: 10, of: count }, kind: read }\n",
        "  zero: { price: { fixed: 0 }, kind: write }\n",
        "  big_default: { price: { per: 10, of: count, default: 500 }, kind: read }\n",
        "  moved: { price: free, kind: read, endpoint: profiles }\n",
    )));
    assert_shows(
        &shown,
        &[
            "t.yaml:11:3: actions.Bad-Name: is not an action name",
            "t.yaml:12:3: actions.brand_new.kind: is required",
            "t.yaml:12:3: actions.brand_new.price: is required",
            "t.yaml:13:24: actions.send.cache_ttl_s: only reads are cached",
            "t.yaml:14:22: actions.list_sent.kind: unknown kind \"maybe\"",
            "t.yaml:15:",
            "\"cheap\" is not a price",
            "t.yaml:16:",
            "fixed takes no other term",
            "t.yaml:17:",
            "actions.no_of.price.of: is required with per",
            "t.yaml:18:",
            "unknown term \"pre\"",
            "t.yaml:19:",
            "actions.zero.price.fixed: must be at least 1",
            "t.yaml:20:",
            "actions.big_default.price.default: must be at most max (100)",
            "t.yaml:21:",
            "actions.moved.endpoint: must be /v2/{category}",
        ],
    );
    // An unknown key is refused by the parser, with its line.
    assert_shows(
        &refused(&with("actions:\n  get: { prize: 1 }\n")),
        &["t.yaml:11:10: actions.?.prize: unknown field `prize`"],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_its_key() {
    // The parser refuses these before validation: its message alone
    // ("invalid u64") would not say which key.
    assert_shows(
        &refused(&with("log:\n  level: info\n  bogus: [1]\n")),
        &["log.bogus: unknown field `bogus`"],
    );
    assert_shows(
        &refused(&with("cache:\n  ttl_s: soon\n")),
        &["t.yaml:11:10: cache.ttl_s: invalid"],
    );
}

#[test]
fn only_reads_with_a_ttl_can_be_listed_in_cache_actions() {
    let cached = |extra: &str| {
        load(&with(extra), "t.yaml").map(|c| {
            let mut a: Vec<_> = c.cache.actions.into_iter().collect();
            a.sort();
            a
        })
    };
    assert_eq!(
        cached("cache:\n  actions: [get_viewers, search_people]\n").unwrap(),
        ["get_viewers", "search_people"]
    );
    assert_eq!(
        cached("cache:\n  actions: [get_viewers, mine]\nactions:\n  mine: { price: free, kind: read, cache_ttl_s: 30 }\n")
            .unwrap(),
        ["get_viewers", "mine"]
    );
    for bad in ["send", "no_such_action"] {
        let shown = refused(&with(&format!("cache:\n  actions: [{bad}]\n")));
        assert_shows(
            &shown,
            &[
                "t.yaml:11:12: cache.actions",
                &format!("\"{bad}\" is not a read with a cache TTL"),
            ],
        );
    }
    // Turning get_viewers's caching off takes it out of the default list.
    let default = cached("actions:\n  get_viewers: { cache_ttl_s: 0 }\n").unwrap();
    assert!(!default.contains(&"get_viewers".to_string()), "{default:?}");
    assert!(
        default.contains(&"search_people".to_string()),
        "{default:?}"
    );
}

#[test]
fn an_admin_key_hash_equal_to_a_tenants_is_refused() {
    let text = format!(
        "admin:\n  listen: \"127.0.0.1:9090\"\n  key_sha256: \"{HASH_B}\"\n{}",
        yaml(&format!(
            "  - id: crm\n    key_sha256: \"{HASH_A}\"\n    accounts: [\"*\"]\n  - id: ops\n    key_sha256: \"{HASH_B}\"\n    accounts: [\"*\"]\n"
        ))
    );
    assert_shows(
        &refused(&text),
        &["t.yaml:3:15: admin.key_sha256: is also tenants[1].key_sha256 (\"ops\", line 14)"],
    );
    assert!(
        load(
            &text.replace(
                &format!("\"{HASH_B}\"\n    accounts"),
                &format!("\"{}\"\n    accounts", "3".repeat(64))
            ),
            "t.yaml"
        )
        .is_ok()
    );
}

#[test]
fn an_upstream_key_a_header_cannot_carry_is_refused_without_showing_it() {
    let text = with("");
    let err = from_yaml_with_env(&text, "t.yaml", &|_| Some("sk-live\nsecret-part".into()))
        .unwrap_err()
        .to_string();
    assert_shows(
        &err,
        &[
            "t.yaml:5:20: upstream.keys[0].api_key_env: the key of \"primary\" contains characters an HTTP header cannot carry",
        ],
    );
    assert!(
        !err.contains("sk-live") && !err.contains("secret-part"),
        "{err}"
    );
    for bad in ["a\u{7f}b", "a\u{0}b", "a\rb"] {
        assert!(from_yaml_with_env(&text, "t.yaml", &|_| Some(bad.into())).is_err());
    }
}

#[test]
fn admin_and_tenant_listeners_on_one_socket_are_refused() {
    let listen = |server: &str, admin: &str| {
        let text = format!(
            "server:\n  listen: \"{server}\"\nadmin:\n  listen: \"{admin}\"\n{}",
            with("")
        );
        load(&text, "t.yaml").map(|_| ()).map_err(|e| e.to_string())
    };
    for (server, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("10.0.0.5:8080", "0.0.0.0:8080"),
        ("[::]:8080", "127.0.0.1:8080"),
        ("[::1]:8080", "[::]:8080"),
    ] {
        let err = listen(server, admin).unwrap_err();
        assert_shows(
            &err,
            &[
                "t.yaml:4:11: admin.listen: admin.listen (",
                "are the same socket",
            ],
        );
    }
    for (server, admin) in [
        ("127.0.0.1:8080", "127.0.0.1:9090"),
        ("127.0.0.1:8080", "127.0.0.2:8080"),
        ("0.0.0.0:8080", "[::1]:8080"),
        // Port 0 picks a free port for each listener: they never collide.
        ("127.0.0.1:0", "127.0.0.1:0"),
    ] {
        assert_eq!(listen(server, admin), Ok(()), "{server} {admin}");
    }
    // The admin listener's default address, taken by the tenant listener.
    let text = format!(
        "server:\n  listen: \"127.0.0.1:9090\"\nadmin:\n  key_sha256: \"{HASH_B}\"\n{}",
        with("")
    );
    assert_shows(
        &refused(&text),
        &["t.yaml:2:11: server.listen: admin.listen (127.0.0.1:9090)"],
    );
}

#[test]
fn isolation_settings_have_their_documented_defaults() {
    let c = load(&with(""), "t.yaml").unwrap();
    assert_eq!(c.server.body_timeout, Duration::from_millis(10_000));
    assert_eq!(c.server.max_in_flight, 4096);
    assert_eq!(c.tenants[0].max_in_flight, 2048, "half the server's slots");
    assert_eq!(c.upstream.breaker_accounts, 3);
    assert_eq!(c.upstream.breaker_window, Duration::from_secs(60));
    // A one-slot server still gives each tenant one.
    let c = load(
        &format!("server:\n  max_in_flight: 1\n{}", with("")),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.tenants[0].max_in_flight, 1);
    let c = load(
        &format!(
            "server:\n  max_in_flight: 8\n  body_timeout_ms: 250\n{}",
            with("").replace(
                "accounts: [\"*\"]\n",
                "accounts: [\"*\"]\n    max_in_flight: 3\n"
            )
        )
        .replace(
            "  keys:\n",
            "  breaker: { failures: 4, open_s: 10, accounts: 5, window_s: 120 }\n  keys:\n",
        ),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.server.body_timeout, Duration::from_millis(250));
    assert_eq!(c.tenants[0].max_in_flight, 3);
    assert_eq!(c.upstream.breaker_accounts, 5);
    assert_eq!(c.upstream.breaker_window, Duration::from_secs(120));
}

#[test]
fn impossible_isolation_settings_are_refused_with_their_line() {
    let shown = refused(&with("").replace(
        "accounts: [\"*\"]\n",
        "accounts: [\"*\"]\n    max_in_flight: 0\n",
    ));
    assert_shows(
        &shown,
        &["t.yaml:10:20: tenants[0].max_in_flight: must be between 1 and 1000000"],
    );
    let shown = refused(&format!("server:\n  body_timeout_ms: 0\n{}", with("")));
    assert_shows(
        &shown,
        &["t.yaml:2:20: server.body_timeout_ms: must be between 1 and 3600000"],
    );
    let shown = refused(&format!("server:\n  workers: 0\n{}", with("")));
    assert_shows(
        &shown,
        &["t.yaml:2:12: server.workers: must be between 1 and 1024"],
    );
    let shown = refused(&with("").replace(
        "  keys:\n",
        "  breaker: { accounts: 0, window_s: 0 }\n  keys:\n",
    ));
    assert_shows(
        &shown,
        &[
            "upstream.breaker.accounts: must be between 1 and 1000",
            "upstream.breaker.window_s: must be between 1",
        ],
    );
}

#[test]
fn credit_modes_default_to_enforcing_and_refusing() {
    let c = load(&with(""), "t.yaml").unwrap();
    assert_eq!(c.tenants[0].on_budget_exhausted, OnBudgetExhausted::Refuse);
    assert!(c.tenants[0].enforce);
    let c = load(
        &with("").replace(
            "accounts: [\"*\"]\n",
            "accounts: [\"*\"]\n    on_budget_exhausted: stale\n    enforce: false\n",
        ),
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.tenants[0].on_budget_exhausted, OnBudgetExhausted::Stale);
    assert!(!c.tenants[0].enforce);
}

#[test]
fn unknown_credit_modes_are_refused_with_their_line() {
    let shown = refused(&with("").replace(
        "accounts: [\"*\"]\n",
        "accounts: [\"*\"]\n    on_budget_exhausted: serve\n",
    ));
    assert_shows(
        &shown,
        &[
            "t.yaml:10:26: tenants[0].on_budget_exhausted: unknown value \"serve\" (refuse or stale)",
        ],
    );
    let shown = refused(&with("").replace(
        "accounts: [\"*\"]\n",
        "accounts: [\"*\"]\n    enforce: sometimes\n",
    ));
    // As for every boolean key: the line and column, from the YAML reader.
    assert_shows(
        &shown,
        &["t.yaml:10:14: tenants[0].enforce: invalid boolean"],
    );
}

#[test]
fn stale_mode_without_a_window_for_expired_pages_is_refused() {
    let stale = with("").replace(
        "accounts: [\"*\"]\n",
        "accounts: [\"*\"]\n    on_budget_exhausted: stale\n",
    );
    let shown = refused(&format!(
        "cache:\n  stale_if_error_s: 0\n  stale_while_revalidate_s: 0\n{stale}"
    ));
    assert_shows(
        &shown,
        &["tenants[0].on_budget_exhausted: stale serves expired pages"],
    );
    let text = format!("cache:\n  stale_if_error_s: 0\n  stale_while_revalidate_s: 60\n{stale}");
    assert!(load(&text, "t.yaml").is_ok());
}

#[test]
fn a_price_below_the_documented_one_is_a_warning_not_a_refusal() {
    let text = with(concat!(
        "actions:\n",
        "  search_people: { price: { per: 20, of: count } }\n",
        "  invite: { price: free }\n",
        "  get_candidates: { price: { per: 5, of: count } }\n",
        "  my_new_read: { price: { fixed: 1 }, kind: read, endpoint: /v2/data }\n",
        // Priced by a param that does not say how many results are asked for.
        "  get_viewers: { price: { per: 10, of: offset } }\n",
    ));
    let c = load(&text, "t.yaml").unwrap();
    let warnings = c.warnings();
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert!(
        warnings[1].starts_with("actions.get_viewers: priced below")
            && warnings[1].contains("(1 credit(s) instead of 2 for 11 result(s))"),
        "{}",
        warnings[1]
    );
    // Named, with the first page size where it is cheaper and both prices.
    assert!(
        warnings[0].starts_with("actions.invite: priced below")
            && warnings[0].contains("(0 credit(s) instead of 1 for 1 result(s))"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[2].starts_with("actions.search_people: priced below")
            && warnings[2].contains("(1 credit(s) instead of 2 for 11 result(s))"),
        "{}",
        warnings[2]
    );
    // Cheaper for some page sizes only (1 credit for 11 to 20 results).
    let text = with("actions:\n  get_viewers: { price: { per: 11, of: count } }\n");
    let warnings = load(&text, "t.yaml").unwrap().warnings();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    assert!(warnings[0].contains("(1 credit(s) instead of 2 for 11 result(s))"));
    // Dearer than documented, or not documented at all: nothing to say.
    assert!(load(&with(""), "t.yaml").unwrap().warnings().is_empty());
}
