//! Reading a V2 action request: the JSON body `{"account_id", "action",
//! "params"}` and the parameters of each action.
//!
//! Upstream does not document what it does with a malformed body or a wrong
//! content type; the simulator answers 400 `INVALID_PARAMS` for both, and the
//! messages below say which rule failed so a test failure reads clearly.

use http::HeaderValue;
use serde_json::{Map, Value};

/// A well-formed action request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ActionRequest {
    pub(crate) account_id: String,
    pub(crate) action: String,
    pub(crate) params: Map<String, Value>,
}

/// What could be read from a request body. The action is kept even when the
/// request is invalid so that error metadata can echo it.
#[derive(Debug)]
pub(crate) struct ParsedBody {
    pub(crate) action_hint: Option<String>,
    pub(crate) request: Result<ActionRequest, String>,
}

/// True for `application/json` and any `+json` type, parameters ignored.
pub(crate) fn is_json_content_type(value: Option<&HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

/// Parses a body. `body` is `None` when it was larger than the simulator
/// accepts.
pub(crate) fn parse_body(content_type: Option<&HeaderValue>, body: Option<&[u8]>) -> ParsedBody {
    let Some(body) = body else {
        return ParsedBody {
            action_hint: None,
            request: Err("request body is too large".to_owned()),
        };
    };
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let action_hint = value
        .as_ref()
        .and_then(|v| v.get("action"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let request = if !is_json_content_type(content_type) {
        Err("content-type must be application/json".to_owned())
    } else {
        match value {
            None => Err("request body is not valid JSON".to_owned()),
            Some(Value::Object(object)) => action_request(object),
            Some(_) => Err("request body must be a JSON object".to_owned()),
        }
    };
    ParsedBody {
        action_hint,
        request,
    }
}

/// Parses a body that must be a JSON object, for the endpoints that take no
/// `action` (`/v2/login`, `/v2/checkpoint`); the error is the
/// `INVALID_PARAMS` message.
pub(crate) fn parse_object(
    content_type: Option<&HeaderValue>,
    body: Option<&[u8]>,
) -> Result<Map<String, Value>, String> {
    let Some(body) = body else {
        return Err("request body is too large".to_owned());
    };
    if !is_json_content_type(content_type) {
        return Err("content-type must be application/json".to_owned());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err("request body must be a JSON object".to_owned()),
        Err(_) => Err("request body is not valid JSON".to_owned()),
    }
}

fn action_request(mut object: Map<String, Value>) -> Result<ActionRequest, String> {
    let account_id = match object.remove("account_id") {
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(Value::String(_)) => return Err("account_id must not be empty".to_owned()),
        _ => return Err("account_id is required and must be a string".to_owned()),
    };
    let action = match object.remove("action") {
        Some(Value::String(s)) => s,
        _ => return Err("action is required and must be a string".to_owned()),
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(_) => return Err("params must be a JSON object".to_owned()),
    };
    Ok(ActionRequest {
        account_id,
        action,
        params,
    })
}

/// The page a list action asks for, defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageParams {
    pub(crate) offset: u32,
    pub(crate) count: u32,
}

/// Reads `offset` (default 0) and `count` (default `default_count`, allowed
/// `1..=max_count`). Both must be JSON integers: strings, floats and negative
/// numbers are refused rather than coerced, so a gateway bug that sends
/// `"10"` shows up. `null` counts as absent.
pub(crate) fn page_params(
    params: &Map<String, Value>,
    default_count: u32,
    max_count: u32,
) -> Result<PageParams, String> {
    let offset = optional_u32(params, "offset")?.unwrap_or(0);
    let count = optional_u32(params, "count")?.unwrap_or(default_count);
    if count == 0 || count > max_count {
        return Err(format!(
            "params.count must be between 1 and {max_count}, got {count}"
        ));
    }
    Ok(PageParams { offset, count })
}

/// The page a cursor-paged action asks for: its `count` (defaults as for
/// [`page_params`]) and the `cursor` it was given (`None`, `null` or `""`
/// for the first page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CursorParams<'a> {
    pub(crate) cursor: Option<&'a str>,
    pub(crate) count: u32,
}

/// Reads `count` and `cursor`; the cursor is checked by the action, which
/// knows which list it belongs to.
pub(crate) fn cursor_params(
    params: &Map<String, Value>,
    default_count: u32,
    max_count: u32,
) -> Result<CursorParams<'_>, String> {
    let count = optional_u32(params, "count")?.unwrap_or(default_count);
    if count == 0 || count > max_count {
        return Err(format!(
            "params.count must be between 1 and {max_count}, got {count}"
        ));
    }
    let cursor = optional_string(params, "cursor")?.filter(|c| !c.is_empty());
    Ok(CursorParams { cursor, count })
}

fn optional_u32(params: &Map<String, Value>, name: &str) -> Result<Option<u32>, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| format!("params.{name} must be a non-negative integer")),
        Some(_) => Err(format!(
            "params.{name} must be a non-negative integer, not a {}",
            json_type(params.get(name))
        )),
    }
}

/// Reads a required, non-empty string parameter.
pub(crate) fn required_string<'a>(
    params: &'a Map<String, Value>,
    name: &str,
) -> Result<&'a str, String> {
    match params.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(format!("params.{name} must not be empty")),
        None | Some(Value::Null) => Err(format!("params.{name} is required")),
        other => Err(format!(
            "params.{name} must be a string, not a {}",
            json_type(other)
        )),
    }
}

/// Reads an optional string parameter.
pub(crate) fn optional_string<'a>(
    params: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, String> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        other => Err(format!(
            "params.{name} must be a string, not a {}",
            json_type(other)
        )),
    }
}

fn json_type(value: Option<&Value>) -> &'static str {
    match value {
        None | Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "boolean",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
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

    const JSON: HeaderValue = HeaderValue::from_static("application/json");

    #[test]
    fn content_types() {
        assert!(is_json_content_type(Some(&JSON)));
        for ok in [
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.api+json",
        ] {
            assert!(
                is_json_content_type(Some(&HeaderValue::from_static(ok))),
                "{ok}"
            );
        }
        for bad in ["text/plain", "application/x-www-form-urlencoded", ""] {
            assert!(
                !is_json_content_type(Some(&HeaderValue::from_static(bad))),
                "{bad}"
            );
        }
        assert!(!is_json_content_type(None));
    }

    #[test]
    fn body_must_be_an_object_with_account_and_action() {
        let ok = parse_body(
            Some(&JSON),
            Some(br#"{"account_id":"a","action":"get_viewers","params":{"count":5}}"#),
        );
        let request = ok.request.expect("valid body");
        assert_eq!(request.account_id, "a");
        assert_eq!(request.action, "get_viewers");
        assert_eq!(request.params.get("count"), Some(&json!(5)));

        let no_params = parse_body(Some(&JSON), Some(br#"{"account_id":"a","action":"x"}"#));
        assert!(no_params.request.is_ok_and(|r| r.params.is_empty()));

        for bad in [
            &b"not json"[..],
            b"[1,2]",
            b"{}",
            br#"{"account_id":1,"action":"get_viewers"}"#,
            br#"{"account_id":"","action":"get_viewers"}"#,
            br#"{"account_id":"a"}"#,
            br#"{"account_id":"a","action":"get_viewers","params":[]}"#,
        ] {
            assert!(parse_body(Some(&JSON), Some(bad)).request.is_err());
        }
        assert!(parse_body(Some(&JSON), None).request.is_err());
    }

    #[test]
    fn wrong_content_type_is_refused_but_action_is_kept() {
        let text = HeaderValue::from_static("text/plain");
        let parsed = parse_body(
            Some(&text),
            Some(br#"{"account_id":"a","action":"get_viewers"}"#),
        );
        assert!(parsed.request.is_err());
        assert_eq!(parsed.action_hint.as_deref(), Some("get_viewers"));
    }

    #[test]
    fn objects_for_login_and_checkpoint() {
        let ok = parse_object(Some(&JSON), Some(br#"{"email":"a@b"}"#));
        assert_eq!(ok.map(|o| o.len()), Ok(1));
        assert!(parse_object(Some(&JSON), Some(b"[1]")).is_err());
        assert!(parse_object(Some(&JSON), Some(b"{")).is_err());
        assert!(parse_object(Some(&JSON), None).is_err());
        let text = HeaderValue::from_static("text/plain");
        assert!(parse_object(Some(&text), Some(b"{}")).is_err());
    }

    #[test]
    fn page_params_defaults_and_bounds() {
        assert_eq!(
            page_params(&Map::new(), 10, 100),
            Ok(PageParams {
                offset: 0,
                count: 10
            })
        );
        assert_eq!(
            page_params(&params(json!({"offset": 20, "count": 100})), 10, 100),
            Ok(PageParams {
                offset: 20,
                count: 100
            })
        );
        assert_eq!(
            page_params(&params(json!({"offset": null, "count": null})), 10, 100),
            Ok(PageParams {
                offset: 0,
                count: 10
            })
        );
        for bad in [
            json!({"count": 0}),
            json!({"count": 101}),
            json!({"count": "10"}),
            json!({"count": 10.0}),
            json!({"count": 2.5}),
            json!({"count": -1}),
            json!({"offset": -5}),
            json!({"offset": "0"}),
            json!({"offset": 1e3}),
            json!({"offset": true}),
            json!({"offset": 4_294_967_296u64}),
        ] {
            assert!(page_params(&params(bad.clone()), 10, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn cursor_params_defaults_and_bounds() {
        assert_eq!(
            cursor_params(&Map::new(), 10, 100),
            Ok(CursorParams {
                cursor: None,
                count: 10
            })
        );
        let p = params(json!({"cursor": "a.b", "count": 5}));
        assert_eq!(
            cursor_params(&p, 10, 100),
            Ok(CursorParams {
                cursor: Some("a.b"),
                count: 5
            })
        );
        let empty = params(json!({"cursor": ""}));
        assert_eq!(cursor_params(&empty, 10, 100).map(|c| c.cursor), Ok(None));
        for bad in [
            json!({"cursor": 3}),
            json!({"count": 0}),
            json!({"count": 101}),
        ] {
            assert!(
                cursor_params(&params(bad.clone()), 10, 100).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn string_params() {
        let p = params(json!({"profile_url": "https://x", "empty": " ", "n": 3}));
        assert_eq!(required_string(&p, "profile_url"), Ok("https://x"));
        assert!(required_string(&p, "empty").is_err());
        assert!(required_string(&p, "n").is_err());
        assert!(required_string(&p, "missing").is_err());
        assert_eq!(optional_string(&p, "missing"), Ok(None));
        assert!(optional_string(&p, "n").is_err());
    }
}
