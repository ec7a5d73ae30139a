//! Body limit, content type and parsing: `Request<B>` becomes `Request<ApiCall>`.
//!
//! Order: a declared `content-length` over `server.max_body_bytes` is refused
//! before anything else (413), then the content type (415), then the body is
//! read with the same limit enforced while streaming (413) and validated
//! (400 `INVALID_PARAMS`). Nothing after this stage sees raw bytes.
//!
//! A body that has not arrived in full within `server.body_timeout_ms` gets
//! 408 `REQUEST_TIMEOUT` and the connection is closed: a client that sends
//! its headers and then trickles or withholds the body gives its request
//! slots back instead of holding them until the request deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::discard::{close_after_answer, refuse};
use serde::Deserialize;
use serde_json::value::RawValue;
use tower::{Layer, Service};

use super::StageResult;
use super::route::Category;
use crate::actions::ActionTable;
use crate::call::{ApiCall, CallParams, DEFAULT_COUNT, MAX_COUNT};
use crate::config::valid_account_id;
use crate::error::GatewayError;

/// Reads and validates the body, and prices the call from its action's rule.
#[derive(Debug, Clone)]
pub struct ParseLayer {
    max_body_bytes: usize,
    body_timeout: Duration,
    actions: Arc<ActionTable>,
}

impl ParseLayer {
    /// Accepts bodies up to `max_body_bytes` arriving within
    /// `body_timeout`, for the actions of `actions`.
    pub fn new(max_body_bytes: usize, body_timeout: Duration, actions: Arc<ActionTable>) -> Self {
        Self {
            max_body_bytes,
            body_timeout,
            actions,
        }
    }
}

impl<S> Layer<S> for ParseLayer {
    type Service = Parse<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Parse {
            inner,
            max_body_bytes: self.max_body_bytes,
            body_timeout: self.body_timeout,
            actions: Arc::clone(&self.actions),
        }
    }
}

/// See [`ParseLayer`].
#[derive(Debug, Clone)]
pub struct Parse<S> {
    inner: S,
    max_body_bytes: usize,
    body_timeout: Duration,
    actions: Arc<ActionTable>,
}

impl<S, B> Service<Request<B>> for Parse<S>
where
    S: Service<
            Request<ApiCall>,
            Response = http::Response<crate::response::Body>,
            Error = GatewayError,
        > + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Response = S::Response;
    type Error = GatewayError;
    // Boxed: reading the body is real I/O.
    type Future = Pin<Box<dyn Future<Output = StageResult> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The clone that was polled ready goes with this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limit = self.max_body_bytes;
        let body_timeout = self.body_timeout;
        let actions = Arc::clone(&self.actions);
        Box::pin(async move {
            if request
                .extensions()
                .get::<Category>()
                .is_some_and(|c| c.0 == "webhooks")
            {
                let refused = GatewayError::OperatorOnly(
                    "webhook endpoints are managed by the gateway's operator, not by tenants",
                );
                return refuse(request, refused).await;
            }
            let declared = request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let (parts, body) = request.into_parts();
            // An answer given with part of the body unread closes the
            // connection and says so (see `discard`).
            if declared.is_some_and(|n| n > limit as u64) {
                close_after_answer(&parts);
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            // One content type: with two, which one the body is in is a guess.
            let mut types = parts.headers.get_all(header::CONTENT_TYPE).iter();
            if !is_json(types.next()) || types.next().is_some() {
                let request = Request::from_parts(parts, body);
                return refuse(request, GatewayError::UnsupportedMediaType).await;
            }
            // A small body has usually arrived with the headers.
            let read =
                super::timeout_unless_ready(body_timeout, Limited::new(body, limit).collect());
            let Ok(read) = read.await else {
                close_after_answer(&parts);
                return Err(GatewayError::RequestTimeout {
                    after_ms: body_timeout.as_millis() as u64,
                });
            };
            let bytes = match read {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
                    close_after_answer(&parts);
                    return Err(GatewayError::PayloadTooLarge { limit });
                }
                Err(_) => {
                    close_after_answer(&parts);
                    return Err(GatewayError::InvalidParams(
                        "could not read the request body".into(),
                    ));
                }
            };
            let category = parts
                .extensions
                .get::<Category>()
                .map_or("profiles", |c| c.0.as_str());
            let context = parts
                .extensions
                .get::<Arc<crate::context::RequestContext>>();
            let parsed = if CONNECT_ENDPOINTS.contains(&category) {
                parse_connect(category, &bytes, &actions)
            } else {
                parse_call_with(category, &bytes, &actions).inspect_err(|_| {
                    // A call refused after naming its action is answered
                    // and logged as that action, not the endpoint's default.
                    if let (Some(context), Some(action)) = (context, named_action(&bytes)) {
                        context.fields().action = Some(action);
                    }
                })
            };
            let mut call = parsed?;
            call.max_credits = max_credits(&parts.headers)?;
            if let Some(context) = context {
                let mut fields = context.fields();
                fields.action = Some(call.action.clone());
                // No body field of an account connection is logged.
                if !call.is_connect() {
                    fields.account_id = Some(call.account_id.clone());
                }
                if let CallParams::Viewers { offset, count } = call.params {
                    fields.offset = Some(offset);
                    fields.count = Some(count);
                }
            }
            inner.call(Request::from_parts(parts, call)).await
        })
    }
}

/// `x-max-credits: N`: the client's cap on one call's price.
fn max_credits(headers: &http::HeaderMap) -> Result<Option<u64>, GatewayError> {
    let mut values = headers.get_all("x-max-credits").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let n = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|_| values.next().is_none())
        .ok_or_else(|| invalid("x-max-credits must be one non-negative integer"))?;
    Ok(Some(n))
}

/// `application/json`, any case, with or without parameters.
fn is_json(value: Option<&http::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    account_id: Option<&'a RawValue>,
    #[serde(borrow)]
    action: Option<&'a RawValue>,
    #[serde(borrow)]
    params: Option<&'a RawValue>,
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::InvalidParams(message.into())
}

/// Endpoints that connect accounts: their body is not a V2 call but the
/// connection's own fields, and their endpoint is their action.
pub const CONNECT_ENDPOINTS: [&str; 2] = ["login", "checkpoint"];

/// Validates a body sent to `/v2/login` or `/v2/checkpoint`: a JSON object
/// (the upstream checks its fields), with a valid `account_id` for a
/// checkpoint. The body is forwarded as written.
pub fn parse_connect(
    endpoint: &str,
    body: &[u8],
    actions: &ActionTable,
) -> Result<ApiCall, GatewayError> {
    let rule = actions.find(endpoint, endpoint).ok_or_else(|| {
        GatewayError::InvalidAction(format!("viewgate has no price for /v2/{endpoint}"))
    })?;
    let text = std::str::from_utf8(body).map_err(|_| invalid("the body must be UTF-8 JSON"))?;
    super::unambiguous::check(text).map_err(invalid)?;
    let map = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(invalid("the body must be a JSON object")),
    };
    let account_id = match map.get("account_id") {
        None if endpoint == "login" => String::new(),
        Some(serde_json::Value::String(id)) if valid_account_id(id) => id.clone(),
        _ => {
            return Err(invalid(
                "account_id is required: 1 to 128 printable ASCII characters without spaces",
            ));
        }
    };
    let bound = rule.price.bound(Some(&map)).map_err(invalid)?;
    let raw = RawValue::from_string(text.to_string())
        .map_err(|_| invalid("the body must be a JSON object"))?;
    Ok(ApiCall {
        category: endpoint.to_string(),
        account_id,
        action: endpoint.to_string(),
        params: CallParams::Connect(raw),
        rule: Arc::clone(rule),
        bound,
        max_credits: None,
    })
}

/// The built-in action table (cache TTL of get_viewers at its default),
/// for callers that parse without a configuration: fuzzing and tests.
fn builtin_actions() -> &'static ActionTable {
    static TABLE: std::sync::OnceLock<ActionTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| ActionTable::builtin(std::time::Duration::from_secs(300)))
}

/// Validates a body sent to `/v2/{category}` against the built-in actions.
pub fn parse_call(category: &str, body: &[u8]) -> Result<ApiCall, GatewayError> {
    parse_call_with(category, body, builtin_actions())
}

/// A lower-case action name such as `get_viewers`, at most 64 bytes.
fn well_formed_action(action: &str) -> bool {
    !action.is_empty()
        && action.len() <= 64
        && action
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The action a body names, when it is a JSON object naming a well-formed
/// one (whatever else is wrong with it).
fn named_action(body: &[u8]) -> Option<String> {
    let wire: Wire<'_> = serde_json::from_slice(body).ok()?;
    let action: String = serde_json::from_str(wire.action?.get()).ok()?;
    well_formed_action(&action).then_some(action)
}

/// Validates a body sent to `/v2/{category}` and prices it by `actions`.
pub fn parse_call_with(
    category: &str,
    body: &[u8],
    actions: &ActionTable,
) -> Result<ApiCall, GatewayError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(invalid("the body must be a JSON object"));
    }
    // One UTF-8 check of the whole body: parsed from a `str`, serde checks
    // neither each string again nor the values it hands back raw.
    let wire: Wire<'_> = std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| invalid("the body is not valid JSON (or repeats a field)"))?;
    let account_id: String = wire
        .account_id
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(|| invalid("account_id is required and must be a string"))?;
    if !valid_account_id(&account_id) {
        return Err(invalid(
            "account_id must be 1 to 128 printable ASCII characters without spaces",
        ));
    }
    let action: String = wire
        .action
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .ok_or_else(|| invalid("action is required and must be a string"))?;
    if !well_formed_action(&action) {
        return Err(invalid(
            "action must be a lower-case action name such as get_viewers",
        ));
    }
    let Some(rule) = actions.find(category, &action) else {
        return Err(GatewayError::InvalidAction(match actions.get(&action) {
            Some(rule) => format!(
                "action {action:?} belongs to /v2/{}, not /v2/{category}",
                rule.category.as_deref().unwrap_or("?")
            ),
            None => format!("viewgate has no price for action {action:?}, so it cannot forward it"),
        }));
    };
    let params = wire.params.filter(|raw| raw.get().trim() != "null");
    let (params, bound) = if category == "profiles" && action == "get_viewers" {
        let params = viewer_params(params)?;
        let CallParams::Viewers { offset, count } = params else {
            unreachable!("viewer_params returns viewer params")
        };
        let bound = rule.price.bound_by(|name| match name {
            "count" => Some(serde_json::Value::from(count)),
            "offset" => Some(serde_json::Value::from(offset)),
            _ => None,
        });
        (params, bound.map_err(invalid)?)
    } else {
        let map = match params {
            None => None,
            Some(raw) => {
                super::unambiguous::check(raw.get()).map_err(invalid)?;
                // Forwarded as written, so it must be JSON any parser reads the
                // same way: an object, with numbers a double can hold.
                match serde_json::from_str::<serde_json::Value>(raw.get()) {
                    Ok(serde_json::Value::Object(map)) => Some(map),
                    _ => {
                        return Err(invalid(
                            "params must be a JSON object (numbers within the range of a double)",
                        ));
                    }
                }
            }
        };
        let bound = rule.price.bound(map.as_ref()).map_err(invalid)?;
        (CallParams::Other(params.map(|raw| raw.to_owned())), bound)
    };
    Ok(ApiCall {
        category: category.to_string(),
        account_id,
        action,
        params,
        rule: Arc::clone(rule),
        bound,
        max_credits: None,
    })
}

/// `get_viewers` params as sent: numbers are checked from their text, so
/// reading them allocates nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewerWire<'a> {
    #[serde(borrow)]
    count: Option<&'a RawValue>,
    #[serde(borrow)]
    offset: Option<&'a RawValue>,
}

fn viewer_params(raw: Option<&RawValue>) -> Result<CallParams, GatewayError> {
    let Some(raw) = raw else {
        return Ok(CallParams::Viewers {
            offset: 0,
            count: DEFAULT_COUNT,
        });
    };
    if !raw.get().trim_start().starts_with('{') {
        return Err(invalid("params must be a JSON object"));
    }
    let wire: ViewerWire<'_> = serde_json::from_str(raw.get()).map_err(|e| {
        // An unknown parameter could change the page the upstream returns,
        // and the cache key would not know: refuse rather than mix pages up.
        let text = e.to_string();
        match text
            .strip_prefix("unknown field `")
            .and_then(|t| t.split('`').next())
        {
            Some(name) => invalid(format!(
                "unknown parameter {:?} for get_viewers (allowed: count, offset)",
                name.chars().take(64).collect::<String>()
            )),
            None => invalid("params must be an object with count and offset, each at most once"),
        }
    })?;
    let number = |v: Option<&RawValue>| v.map(|v| v.get().trim().parse::<u64>().ok());
    let count = match number(wire.count) {
        None => DEFAULT_COUNT,
        Some(Some(n)) if (1..=u64::from(MAX_COUNT)).contains(&n) => n as u32,
        Some(_) => {
            return Err(invalid(format!(
                "count must be an integer from 1 to {MAX_COUNT}"
            )));
        }
    };
    let offset = match number(wire.offset) {
        None => 0,
        Some(Some(n)) if n <= u64::from(u32::MAX) => n as u32,
        Some(_) => return Err(invalid("offset must be a non-negative integer")),
    };
    Ok(CallParams::Viewers { offset, count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewers(body: &str) -> Result<(u32, u32), String> {
        match parse_call("profiles", body.as_bytes()) {
            Ok(ApiCall {
                params: CallParams::Viewers { offset, count },
                ..
            }) => Ok((offset, count)),
            Ok(other) => Err(format!("not viewers: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn defaults_make_equal_pages_equal() {
        let a = r#"{"account_id":"acc-1","action":"get_viewers"}"#;
        let b = r#"{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}"#;
        let c = r#"{"account_id":"acc-1","action":"get_viewers","params":null}"#;
        let d = r#"{"account_id":"acc-1","action":"get_viewers","params":{}}"#;
        for body in [a, b, c, d] {
            assert_eq!(viewers(body), Ok((0, 10)), "{body}");
        }
        let ka = parse_call("profiles", a.as_bytes()).unwrap().cache_key();
        let kb = parse_call("profiles", b.as_bytes()).unwrap().cache_key();
        assert_eq!(ka, kb);
    }

    #[test]
    fn bad_bodies_are_invalid_params() {
        for body in [
            "",
            "not json",
            "[1,2]",
            "\"x\"",
            r#"{"action":"get_viewers"}"#,
            r#"{"account_id":5,"action":"get_viewers"}"#,
            r#"{"account_id":"","action":"get_viewers"}"#,
            r#"{"account_id":"a b","action":"get_viewers"}"#,
            r#"{"account_id":"a\nb","action":"get_viewers"}"#,
            r#"{"account_id":"acc","action":"Get Viewers"}"#,
            r#"{"account_id":"acc"}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":[]}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"count":0}}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"count":101}}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"count":"10"}}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"count":1.5}}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"offset":-1}}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"offset":4294967296}}"#,
            r#"{"account_id":"acc","action":"get_viewers","params":{"cursor":"x"}}"#,
            r#"{"account_id":"acc","account_id":"other","action":"get_viewers"}"#,
        ] {
            let e = parse_call("profiles", body.as_bytes()).unwrap_err();
            assert_eq!(e.code(), "INVALID_PARAMS", "{body}");
        }
        let long = format!(
            r#"{{"account_id":"{}","action":"get_viewers"}}"#,
            "a".repeat(129)
        );
        assert!(parse_call("profiles", long.as_bytes()).is_err());
    }

    #[test]
    fn other_params_must_be_readable_json() {
        // Found by fuzzing: a number no double can hold was forwarded upstream as is.
        let body =
            br#"{"account_id":"acc-2","action":"get_candidates","params":{"count":21e4000}}"#;
        assert_eq!(
            parse_call("recruiter", body).unwrap_err().code(),
            "INVALID_PARAMS"
        );
    }

    #[test]
    fn other_actions_pass_their_params_through() {
        let call = parse_call(
            "network",
            br#"{"account_id":"acc","action":"invite","params":{"profile_url":"u"}}"#,
        )
        .unwrap();
        assert!(call.cache_key().is_none());
        assert_eq!(
            call.upstream_body(),
            Bytes::from_static(
                br#"{"account_id":"acc","action":"invite","params":{"profile_url":"u"}}"#
            )
        );
    }

    #[test]
    fn the_upstream_body_spells_out_defaults() {
        let call = parse_call(
            "profiles",
            br#"{"account_id":"acc-1","action":"get_viewers"}"#,
        )
        .unwrap();
        assert_eq!(
            call.upstream_body(),
            Bytes::from_static(br#"{"account_id":"acc-1","action":"get_viewers","params":{"count":10,"offset":0}}"#)
        );
        assert_eq!(call.bound, 1);
    }

    #[test]
    fn content_types() {
        let v = |s: &'static str| http::HeaderValue::from_static(s);
        assert!(is_json(Some(&v("application/json"))));
        assert!(is_json(Some(&v("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&v("text/plain"))));
        assert!(!is_json(None));
    }
}
