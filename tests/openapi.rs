//! `openapi.yaml` checked against the code that defines the behaviour.
//!
//! The document must parse, describe every route (the router's own paths and
//! the account-connection endpoints are read from `src/layers/route.rs` and
//! `src/layers/parse.rs`), list every error code `GatewayError::code()` can
//! return (read from `src/error.rs` itself, so a new code cannot be added
//! without documenting it), resolve every `$ref`, declare on the V2 call
//! routes every status of the error tables, and on each route the statuses
//! and headers it can answer with. No network, no ports: just text.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const SPEC: &str = include_str!("../openapi.yaml");
const ERROR_RS: &str = include_str!("../src/error.rs");
const ROUTE_RS: &str = include_str!("../src/layers/route.rs");
const PARSE_RS: &str = include_str!("../src/layers/parse.rs");
const README: &str = include_str!("../README.md");

/// Codes the upstream may send that viewgate passes through as they are.
const UPSTREAM_PASS_THROUGH: [&str; 3] = ["INVALID_ACTION", "ACCOUNT_INACTIVE", "INTERNAL_ERROR"];

fn spec() -> Value {
    serde_saphyr::from_str::<Value>(SPEC).expect("openapi.yaml parses as YAML")
}

/// Every `=> "CODE"` arm of `GatewayError::code()`.
fn codes_in_error_rs() -> BTreeSet<String> {
    let start = ERROR_RS
        .find("pub fn code(")
        .expect("src/error.rs defines GatewayError::code()");
    let rest = &ERROR_RS[start..];
    // The function ends at the first closing brace at method indentation.
    let end = rest.find("\n    }\n").expect("code() has a closing brace");
    let body = &rest[..end];
    let mut codes = BTreeSet::new();
    for (index, _) in body.match_indices("=> \"") {
        let literal = &body[index + 4..];
        let close = literal.find('"').expect("the string literal is closed");
        codes.insert(literal[..close].to_string());
    }
    codes
}

/// Every string in an `enum` at `properties.error.properties.code`, anywhere.
fn documented_error_codes(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            let codes = value
                .pointer("/properties/error/properties/code/enum")
                .and_then(Value::as_array);
            for code in codes.into_iter().flatten() {
                out.extend(code.as_str().map(str::to_string));
            }
            map.values().for_each(|v| documented_error_codes(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| documented_error_codes(v, out)),
        _ => {}
    }
}

fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(target)) => out.push(target.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The statuses in the `| situation | status | code |` table of a markdown file.
fn table_statuses(markdown: &str) -> BTreeSet<u16> {
    let mut statuses = BTreeSet::new();
    let mut lines = markdown.lines().skip_while(|line| {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        cells.get(1..4) != Some(&["situation", "status", "code"][..])
    });
    lines.next(); // the header itself
    for line in lines.take_while(|l| l.trim_start().starts_with('|')) {
        let status_cell = line.split('|').nth(2).unwrap_or("");
        for word in status_cell.split(|c: char| !c.is_ascii_digit()) {
            if word.len() == 3
                && let Ok(status) = word.parse()
            {
                statuses.insert(status);
            }
        }
    }
    statuses
}

#[test]
fn the_document_is_openapi_3_1_with_every_route() {
    let doc = spec();
    let version = doc["openapi"].as_str().expect("openapi is a string");
    assert!(version.starts_with("3.1."), "openapi: {version}");
    for (path, method) in [
        ("/v2/profiles", "post"),
        ("/v2/{category}", "post"),
        ("/v2/accounts", "get"),
        ("/v2/accounts/{account_id}", "get"),
        ("/v2/login", "post"),
        ("/v2/checkpoint", "post"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/admin/usage", "get"),
        ("/admin/cache/purge", "post"),
        ("/admin/", "get"),
    ] {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "no {method} {path}");
        assert!(
            operation["responses"]["200"].is_object(),
            "{method} {path} has no 200"
        );
    }
    // The admin paths live on the admin listener, not the tenant one.
    let tenant_server = doc["servers"][0]["url"].as_str().expect("a tenant server");
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/admin/usage",
        "/admin/cache/purge",
        "/admin/",
    ] {
        let server = doc["paths"][path]["servers"][0]["url"].as_str();
        assert!(
            server.is_some_and(|s| s != tenant_server),
            "{path} needs its own server"
        );
    }
}

#[test]
fn keys_are_the_documented_headers() {
    let doc = spec();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["TenantKey"]["in"], "header");
    assert_eq!(schemes["TenantKey"]["name"], "x-api-key");
    assert_eq!(schemes["AdminKey"]["name"], "x-admin-key");
    assert!(doc["security"][0].get("TenantKey").is_some());
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(doc["paths"][path]["get"]["security"], serde_json::json!([]));
    }
    assert!(doc["paths"]["/admin/usage"]["get"]["security"][0]["AdminKey"].is_array());
    assert!(doc["paths"]["/admin/cache/purge"]["post"]["security"][0]["AdminKey"].is_array());
}

#[test]
fn every_error_code_the_code_can_emit_is_documented() {
    let emitted = codes_in_error_rs();
    // A sanity floor: if the extraction broke, the test must not pass vacuously.
    assert!(emitted.len() >= 10, "extracted only {emitted:?}");
    assert!(emitted.contains("INVALID_API_KEY") && emitted.contains("UPSTREAM_TIMEOUT"));

    let mut documented = BTreeSet::new();
    documented_error_codes(&spec(), &mut documented);
    let missing: Vec<&String> = emitted.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "error codes from src/error.rs missing from openapi.yaml's enums: {missing:?}"
    );
    for code in UPSTREAM_PASS_THROUGH {
        assert!(documented.contains(code), "{code} is not documented");
    }
}

#[test]
fn every_ref_resolves_to_a_component() {
    let doc = spec();
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let pointer = target
            .strip_prefix('#')
            .filter(|p| p.starts_with("/components/"))
            .unwrap_or_else(|| panic!("{target} is not a local component reference"));
        assert!(
            doc.pointer(pointer).is_some_and(Value::is_object),
            "{target} does not resolve"
        );
    }
}

#[test]
fn profiles_declares_every_status_of_the_error_tables() {
    let doc = spec();
    let responses = doc["paths"]["/v2/profiles"]["post"]["responses"]
        .as_object()
        .expect("POST /v2/profiles has responses");
    let mut statuses = table_statuses(README);
    assert!(
        statuses.contains(&403) && statuses.contains(&504),
        "README's error table not found: {statuses:?}"
    );
    // design.md sits beside the crate in the workspace; use it when present.
    let design = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/design.md");
    if let Ok(text) = std::fs::read_to_string(&design) {
        let from_design = table_statuses(&text);
        assert!(
            from_design.contains(&429),
            "design.md's error table not found"
        );
        statuses.extend(from_design);
    }
    for status in statuses {
        assert!(
            responses.contains_key(&status.to_string()),
            "POST /v2/profiles does not declare {status}"
        );
    }
}

/// `value`, or what its `$ref` points at.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(target) => doc
            .pointer(target.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("{target} does not resolve")),
        None => value,
    }
}

/// The string literals of `const NAME: [&str; N] = [...]` in `source`.
fn const_list(source: &str, name: &str) -> Vec<String> {
    let start = source
        .find(&format!("const {name}"))
        .unwrap_or_else(|| panic!("{name} is defined"));
    let rest = &source[start..];
    let open = rest.find("= [").expect("an array") + 3;
    let close = rest[open..].find(']').expect("a closed array") + open;
    rest[open..close]
        .split(',')
        .map(|item| item.trim().trim_matches('"').to_string())
        .filter(|item| !item.is_empty())
        .collect()
}

#[test]
fn every_route_the_gateway_serves_is_described() {
    let doc = spec();
    let paths = doc["paths"].as_object().expect("paths");
    // The account endpoints the router recognises.
    assert!(ROUTE_RS.contains("strip_prefix(\"/v2/accounts\")"));
    assert!(paths["/v2/accounts"]["get"].is_object());
    assert!(paths["/v2/accounts/{account_id}"]["get"].is_object());
    // Every endpoint whose body is an account connection, not a V2 call.
    let connect = const_list(PARSE_RS, "CONNECT_ENDPOINTS");
    assert!(
        connect.contains(&"login".to_string()),
        "extracted {connect:?}"
    );
    for name in &connect {
        let path = format!("/v2/{name}");
        assert!(
            paths.get(&path).is_some_and(|p| p["post"].is_object()),
            "{path} is not described"
        );
    }
    // The category the router keeps for the operator is described as refused.
    assert!(ROUTE_RS.contains("category != \"webhooks\""));
    let webhooks = doc["paths"]["/v2/webhooks"]["post"]["responses"]
        .as_object()
        .expect("/v2/webhooks is described");
    assert!(webhooks.contains_key("403"));
    assert!(
        webhooks.keys().all(|s| !s.starts_with('2')),
        "/v2/webhooks never succeeds"
    );
    // `/v2/{category}` does not claim the paths described on their own.
    let not = &paths["/v2/{category}"]["post"]["parameters"][0]["schema"]["not"]["enum"];
    for path in paths.keys().filter_map(|p| p.strip_prefix("/v2/")) {
        if !path.contains('{') && !path.contains('/') {
            assert!(
                not.as_array().unwrap().iter().any(|v| v == path),
                "/v2/{{category}} should exclude {path}"
            );
        }
    }
}

#[test]
fn every_route_declares_the_statuses_and_headers_it_can_answer_with() {
    let doc = spec();
    // What the stack can answer on each route: routing (405), auth (403),
    // rate limit (429), the HTTP layer (431), admission (503); the body
    // stages (400, 413, 415), idempotency (409, 422), the ledger (402) and
    // the upstream (5xx) where the route has them.
    let posts: &[u16] = &[
        200, 400, 402, 403, 405, 409, 413, 415, 422, 429, 431, 500, 502, 503, 504,
    ];
    let table: [(&str, &str, &[u16]); 7] = [
        ("/v2/profiles", "post", posts),
        ("/v2/{category}", "post", posts),
        ("/v2/login", "post", posts),
        ("/v2/checkpoint", "post", posts),
        (
            "/v2/accounts",
            "get",
            &[200, 400, 403, 405, 429, 431, 502, 503],
        ),
        (
            "/v2/accounts/{account_id}",
            "get",
            &[200, 403, 404, 405, 429, 431, 500, 502, 503, 504],
        ),
        ("/v2/webhooks", "post", &[403, 429, 431, 503]),
    ];
    for (path, method, statuses) in table {
        let operation = &doc["paths"][path][method];
        let responses = operation["responses"].as_object().expect("responses");
        for status in statuses {
            assert!(
                responses.contains_key(&status.to_string()),
                "{method} {path} does not declare {status}"
            );
        }
        let has_header = |status: &str, name: &str| {
            resolve(&doc, &responses[status])["headers"]
                .get(name)
                .is_some()
        };
        // 431 comes from the HTTP layer, before any stage that sets headers.
        for status in responses.keys().filter(|s| *s != "431") {
            assert!(
                has_header(status, "x-request-id"),
                "{method} {path} {status} lacks x-request-id"
            );
        }
        for (status, name) in [("405", "allow"), ("429", "retry-after")] {
            if responses.contains_key(status) {
                assert!(
                    has_header(status, name),
                    "{method} {path} {status} lacks {name}"
                );
            }
        }
        if method == "post" && path != "/v2/webhooks" {
            assert!(
                has_header("409", "retry-after"),
                "{path} 409 lacks retry-after"
            );
            assert!(
                has_header("200", "idempotent-replayed"),
                "{path} 200 lacks idempotent-replayed"
            );
            let parameters: Vec<&str> = operation["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter_map(|p| resolve(&doc, p)["name"].as_str())
                .collect();
            for name in ["Idempotency-Key", "x-max-credits"] {
                assert!(parameters.contains(&name), "{path} lacks {name}");
            }
        }
    }
    // Cached reads say so in headers and metadata; writes do not.
    for path in ["/v2/profiles", "/v2/{category}"] {
        let ok = resolve(&doc, &doc["paths"][path]["post"]["responses"]["200"]);
        for name in ["x-cache", "age", "x-credits-remaining"] {
            assert!(ok["headers"].get(name).is_some(), "{path} 200 lacks {name}");
        }
    }
    let forwarded = &doc["components"]["schemas"]["ForwardedMetadata"]["allOf"][1];
    assert_eq!(
        forwarded["properties"]["cache"]["enum"],
        serde_json::json!(["hit", "miss", "coalesced", "stale"])
    );
    assert!(forwarded["properties"]["cached_at"].is_object());
    // The account list answers `data.items` and `data.total`.
    let list = &doc["components"]["schemas"]["AccountsListResponse"]["properties"]["data"];
    assert_eq!(list["required"], serde_json::json!(["items", "total"]));
}

#[test]
fn the_other_v2_call_routes_declare_every_status_of_the_error_tables() {
    let doc = spec();
    let statuses = table_statuses(README);
    assert!(statuses.contains(&413), "README's error table not found");
    for path in ["/v2/{category}", "/v2/login", "/v2/checkpoint"] {
        let responses = doc["paths"][path]["post"]["responses"]
            .as_object()
            .expect("responses");
        for status in &statuses {
            // A login names no account: its only 404 would be the router's,
            // for another path.
            if path == "/v2/login" && *status == 404 {
                continue;
            }
            assert!(
                responses.contains_key(&status.to_string()),
                "POST {path} does not declare {status}"
            );
        }
    }
}

#[test]
fn status_tables_are_read_from_markdown() {
    let table = "text\n\n| situation | status | code |\n|---|---|---|\n| a | 404 / 405 | `X` |\n| b | as upstream | c |\n| c | 431 | — |\n\nafter | 999 |\n";
    assert_eq!(table_statuses(table), BTreeSet::from([404, 405, 431]));
}
