//! The account endpoints: `GET /v2/accounts` (paged list),
//! `GET /v2/accounts/{account_id}`, `POST /v2/login` and
//! `POST /v2/checkpoint`. All free except a login that makes a new
//! connection (1 credit).
//!
//! Login body: `{"platform": "linkedin", "email", "password" | "login_token",
//! "country"?, "account_name"?, "challenge_type"?}`. The account it connects
//! is `li-` and a hash of the email. An email listed in
//! `SimConfig::checkpoint_emails` is answered `status: checkpoint_required`
//! and connected only by `POST /v2/checkpoint {"account_id", "code"}` with
//! `SimConfig::checkpoint_code`. No answer, error or log line carries the
//! password, token or code.

use bytes::Bytes;
use http::Request;
use http::header::CONTENT_TYPE;
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Map, Value};

use super::accounts::AccountEntry;
use super::call::{self, Call, Handled, reject};
use super::catalog;
use super::envelope::{self, ErrorCode, SimError};
use super::handle::{KeyIndex, Shared};
use super::request;
use super::server::{api_key, invalid_api_key, read_body};

/// The action names the account endpoints report in their metadata.
const LIST_ACCOUNTS: &str = "list_accounts";
const GET_ACCOUNT: &str = "get_account";
const LOGIN: &str = "login";
const CHECKPOINT: &str = "checkpoint";

/// `limit` of `GET /v2/accounts` when not given, and its largest value.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 500;

/// Challenge a checkpoint asks for when the login names none.
const DEFAULT_CHALLENGE: &str = "email_pin";

fn invalid_params(message: impl Into<String>) -> SimError {
    SimError::new(ErrorCode::InvalidParams, message)
}

fn account_not_found() -> SimError {
    SimError::new(
        ErrorCode::InvalidAccount,
        "Account not found for this API key",
    )
}

#[derive(Serialize)]
struct AccountsPage {
    items: Vec<AccountEntry>,
    /// Accounts of the key in all, not in this page.
    total: usize,
}

/// `GET /v2/accounts?limit=&offset=`.
pub(crate) async fn list(shared: &Shared, req: Request<Incoming>) -> Handled {
    let api_key = api_key(req.headers());
    let Some(key) = shared.authenticate(api_key) else {
        return Ok(reject(shared, &invalid_api_key(), Some(LIST_ACCOUNTS)));
    };
    let paging = list_params(req.uri().query());
    let call = Call {
        key,
        api_key: api_key.unwrap_or_default(),
        action: Some(LIST_ACCOUNTS),
        account_id: None,
    };
    call::serve(shared, call, || {
        let (limit, offset) = paging.map_err(invalid_params)?;
        shared.limiter.check(key).map_err(SimError::rate_limited)?;
        let all = shared.accounts.accounts_of(key);
        let total = all.len();
        let items = all.into_iter().skip(offset).take(limit).collect();
        let page = AccountsPage { items, total };
        Ok(envelope::success_body(LIST_ACCOUNTS, None, 0, page))
    })
    .await
}

/// Reads `limit` (1..=500, default 100) and `offset` (default 0) from a
/// query string; other parameters are ignored.
fn list_params(query: Option<&str>) -> Result<(usize, usize), String> {
    let mut limit = DEFAULT_LIMIT;
    let mut offset = 0;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<u32>().ok())
                .flatten()
                .map(|n| n as usize)
        };
        match name {
            "limit" => {
                limit = number()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| format!("limit must be an integer from 1 to {MAX_LIMIT}"))?;
            }
            "offset" => {
                offset = number().ok_or("offset must be a non-negative integer")?;
            }
            _ => {}
        }
    }
    Ok((limit, offset))
}

/// `GET /v2/accounts/{account_id}`.
pub(crate) async fn detail(shared: &Shared, req: Request<Incoming>, account_id: &str) -> Handled {
    let api_key = api_key(req.headers());
    let Some(key) = shared.authenticate(api_key) else {
        return Ok(reject(shared, &invalid_api_key(), Some(GET_ACCOUNT)));
    };
    let call = Call {
        key,
        api_key: api_key.unwrap_or_default(),
        action: Some(GET_ACCOUNT),
        account_id: Some(account_id),
    };
    call::serve(shared, call, || {
        let entry = shared
            .accounts
            .account_of(key, account_id)
            .ok_or_else(account_not_found)?;
        shared.limiter.check(key).map_err(SimError::rate_limited)?;
        Ok(envelope::success_body(
            GET_ACCOUNT,
            Some(account_id),
            0,
            entry,
        ))
    })
    .await
}

/// The `data` of login and checkpoint answers.
#[derive(Serialize)]
struct Connection<'a> {
    account_id: &'a str,
    /// `connected` or `checkpoint_required`.
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    challenge_type: Option<&'a str>,
}

/// Reads a top-level string field. Messages name the field, never its value.
fn field<'a>(
    fields: &'a Map<String, Value>,
    name: &str,
    required: bool,
) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s)),
        None | Some(Value::Null) | Some(Value::String(_)) if required => {
            Err(format!("{name} is required"))
        }
        None | Some(Value::Null) | Some(Value::String(_)) => Ok(None),
        Some(_) => Err(format!("{name} must be a string")),
    }
}

/// A login request whose fields passed the checks.
#[derive(Debug)]
struct Login<'a> {
    /// Trimmed, in lower case.
    email: String,
    account_name: Option<&'a str>,
    challenge_type: Option<&'a str>,
}

impl<'a> Login<'a> {
    fn parse(fields: &'a Map<String, Value>) -> Result<Self, String> {
        let platform = field(fields, "platform", true)?.unwrap_or_default();
        if !platform.eq_ignore_ascii_case("linkedin") {
            return Err("platform must be \"linkedin\"".to_owned());
        }
        let email = field(fields, "email", true)?.unwrap_or_default();
        if !email.contains('@') {
            return Err("email must be an email address".to_owned());
        }
        let password = field(fields, "password", false)?;
        let token = field(fields, "login_token", false)?;
        if password.is_none() && token.is_none() {
            return Err("password or login_token is required".to_owned());
        }
        field(fields, "country", false)?;
        Ok(Login {
            email: email.trim().to_lowercase(),
            account_name: field(fields, "account_name", false)?,
            challenge_type: field(fields, "challenge_type", false)?,
        })
    }
}

/// Reads the body of a login or checkpoint call: `Err` is the
/// `INVALID_PARAMS` message.
async fn read_fields(
    req: Request<Incoming>,
) -> Result<(http::request::Parts, Result<Map<String, Value>, String>), super::body::Dropped> {
    let (parts, body) = req.into_parts();
    let body = read_body(body).await?;
    let fields = request::parse_object(parts.headers.get(CONTENT_TYPE), body.as_deref());
    Ok((parts, fields))
}

/// `POST /v2/login`.
pub(crate) async fn login(shared: &Shared, req: Request<Incoming>) -> Handled {
    let (parts, fields) = read_fields(req).await?;
    let api_key = api_key(&parts.headers);
    let Some(key) = shared.authenticate(api_key) else {
        return Ok(reject(shared, &invalid_api_key(), Some(LOGIN)));
    };
    let account_id = fields
        .as_ref()
        .ok()
        .and_then(|f| f.get("email"))
        .and_then(Value::as_str)
        .map(catalog::login_account_id);
    let call = Call {
        key,
        api_key: api_key.unwrap_or_default(),
        action: Some(LOGIN),
        account_id: account_id.as_deref(),
    };
    call::serve(shared, call, || {
        let fields = fields.as_ref().map_err(|m| invalid_params(m.as_str()))?;
        let login = Login::parse(fields).map_err(invalid_params)?;
        shared.limiter.check(key).map_err(SimError::rate_limited)?;
        Ok(perform_login(shared, key, &login))
    })
    .await
}

/// Connects the account (or starts its checkpoint), counts the write and
/// bills a new connection.
fn perform_login(shared: &Shared, key: KeyIndex, login: &Login<'_>) -> Bytes {
    let account_id = catalog::login_account_id(&login.email);
    shared
        .counters
        .record_write(LOGIN, &account_id, &login.email);
    let answer = |credits, status, challenge_type| {
        let data = Connection {
            account_id: &account_id,
            status,
            challenge_type,
        };
        envelope::success_body(LOGIN, Some(&account_id), credits, data)
    };
    if shared.accounts.is_connected(key, &account_id) {
        // Logging in again to a connected account is free.
        return answer(0, "connected", None);
    }
    shared.counters.bill(key, 1);
    let name = login
        .account_name
        .map_or_else(|| catalog::account_name(&account_id), str::to_owned);
    if shared.needs_checkpoint(&login.email) {
        shared.accounts.await_checkpoint(key, &account_id, name);
        let challenge = login.challenge_type.unwrap_or(DEFAULT_CHALLENGE);
        return answer(1, "checkpoint_required", Some(challenge));
    }
    shared.accounts.connect(key, &account_id, name);
    tracing::info!(account_id = %account_id, "sim: account connected");
    answer(1, "connected", None)
}

/// `POST /v2/checkpoint`.
pub(crate) async fn checkpoint(shared: &Shared, req: Request<Incoming>) -> Handled {
    let (parts, fields) = read_fields(req).await?;
    let api_key = api_key(&parts.headers);
    let Some(key) = shared.authenticate(api_key) else {
        return Ok(reject(shared, &invalid_api_key(), Some(CHECKPOINT)));
    };
    let hinted = fields.as_ref().ok().and_then(|f| f.get("account_id"));
    let call = Call {
        key,
        api_key: api_key.unwrap_or_default(),
        action: Some(CHECKPOINT),
        account_id: hinted.and_then(Value::as_str),
    };
    call::serve(shared, call, || {
        let fields = fields.as_ref().map_err(|m| invalid_params(m.as_str()))?;
        let account_id = field(fields, "account_id", true)
            .map_err(invalid_params)?
            .unwrap_or_default();
        let code = field(fields, "code", true)
            .map_err(invalid_params)?
            .unwrap_or_default();
        shared.limiter.check(key).map_err(SimError::rate_limited)?;
        let pending = shared.accounts.pending_name(key, account_id);
        if pending.is_none() && !shared.accounts.is_connected(key, account_id) {
            // Owned through `*` but never logged in: nothing to complete.
            return Err(if shared.accounts.owns(key, account_id) {
                invalid_params("no checkpoint is pending for this account")
            } else {
                account_not_found()
            });
        }
        if code != shared.config.checkpoint_code {
            return Err(invalid_params("the checkpoint code is wrong"));
        }
        shared
            .counters
            .record_write(CHECKPOINT, account_id, account_id);
        if let Some(name) = pending {
            shared.accounts.connect(key, account_id, name);
            tracing::info!(account_id = %account_id, "sim: account connected after checkpoint");
        }
        let data = Connection {
            account_id,
            status: "connected",
            challenge_type: None,
        };
        Ok(envelope::success_body(
            CHECKPOINT,
            Some(account_id),
            0,
            data,
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn list_params_bounds() {
        assert_eq!(list_params(None), Ok((100, 0)));
        assert_eq!(list_params(Some("")), Ok((100, 0)));
        assert_eq!(list_params(Some("limit=500&offset=3&x=y")), Ok((500, 3)));
        assert_eq!(list_params(Some("limit=1")), Ok((1, 0)));
        for bad in [
            "limit=0",
            "limit=501",
            "limit=",
            "limit=-1",
            "limit=+5",
            "limit=ten",
            "offset=-1",
            "offset=1.5",
            "offset=99999999999",
        ] {
            assert!(list_params(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn login_fields() {
        let ok = object(json!({"platform": "linkedin", "email": " Jane@X.io ", "password": "p"}));
        let login = Login::parse(&ok).expect("valid");
        assert_eq!(login.email, "jane@x.io");
        let token = object(
            json!({"platform": "linkedin", "email": "a@b", "login_token": "t",
                                  "account_name": "Sales", "challenge_type": "sms_pin"}),
        );
        let login = Login::parse(&token).expect("valid");
        assert_eq!(login.account_name, Some("Sales"));
        assert_eq!(login.challenge_type, Some("sms_pin"));
        for bad in [
            json!({"email": "a@b", "password": "p"}),
            json!({"platform": "x", "email": "a@b", "password": "p"}),
            json!({"platform": "linkedin", "password": "p"}),
            json!({"platform": "linkedin", "email": "nope", "password": "p"}),
            json!({"platform": "linkedin", "email": "a@b"}),
            json!({"platform": "linkedin", "email": "a@b", "password": ""}),
            json!({"platform": "linkedin", "email": "a@b", "password": 12345678}),
            json!({"platform": "linkedin", "email": "a@b", "password": "p", "country": 3}),
        ] {
            let err = Login::parse(&object(bad.clone())).expect_err("invalid");
            assert!(!err.contains("12345678"), "never echo a secret: {err}");
        }
    }
}
