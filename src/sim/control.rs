//! The `/_sim/` control endpoints tests and operators use to steer a
//! running simulator over HTTP: stats, faults, counter reset, key
//! revocation. No key: the simulator is a loopback test tool.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::call::reject;
use super::envelope::{self, ErrorCode, SimBody, SimError};
use super::fault::Fault;
use super::handle::Shared;
use super::server::{method_not_allowed, read_body};

/// `/_sim/` control endpoints. No key: the simulator is a loopback test tool.
pub(crate) async fn control(shared: &Shared, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let not_allowed = |allow| method_not_allowed(shared, allow);
    match path.as_str() {
        "/_sim/stats" => match method {
            Method::GET => envelope::json(StatusCode::OK, &shared.counters.snapshot()),
            _ => not_allowed("GET"),
        },
        "/_sim/fault" => match method {
            Method::GET => envelope::json(StatusCode::OK, &shared.fault.current()),
            Method::POST => set_fault(shared, req.into_body()).await,
            Method::DELETE => {
                shared.fault.clear();
                envelope::no_content()
            }
            _ => not_allowed("GET, POST, DELETE"),
        },
        "/_sim/reset" => match method {
            Method::POST => {
                shared.counters.reset();
                envelope::no_content()
            }
            _ => not_allowed("POST"),
        },
        other => {
            let revoke = other
                .strip_prefix("/_sim/keys/")
                .and_then(|rest| rest.rsplit_once('/'));
            let revoked = match revoke {
                Some((_, "revoke")) => true,
                Some((_, "unrevoke")) => false,
                _ => {
                    let err = SimError::new(ErrorCode::NotFound, "No such endpoint");
                    return reject(shared, &err, None);
                }
            };
            if method != Method::POST {
                return not_allowed("POST");
            }
            let name = revoke.map(|(name, _)| name).unwrap_or_default();
            if shared.set_revoked(name, revoked) {
                envelope::no_content()
            } else {
                let err = SimError::new(ErrorCode::NotFound, "No key with this name");
                reject(shared, &err, None)
            }
        }
    }
}

async fn set_fault(shared: &Shared, body: Incoming) -> Response<SimBody> {
    let parsed = match read_body(body).await {
        Ok(Some(bytes)) => serde_json::from_slice::<Fault>(&bytes).map_err(|e| e.to_string()),
        Ok(None) => Err("body too large".to_owned()),
        Err(err) => Err(err.to_string()),
    };
    match parsed {
        Ok(fault) => {
            tracing::info!(?fault, "sim: fault set");
            shared.fault.set(fault);
            envelope::no_content()
        }
        Err(message) => {
            let err = SimError::new(
                ErrorCode::InvalidParams,
                format!("invalid fault: {message}"),
            );
            reject(shared, &err, None)
        }
    }
}
