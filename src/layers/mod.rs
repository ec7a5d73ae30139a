//! The request path's stages, one tower layer each, in the order `app::build_stack` lists them.

pub(crate) mod accounts;
pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod cache;
mod discard;
pub(crate) mod idempotency;
pub mod parse;
pub(crate) mod policy;
pub(crate) mod quote;
pub(crate) mod rate_limit;
pub(crate) mod request_id;
pub(crate) mod rescue;
pub(crate) mod route;
mod unambiguous;

use std::sync::Arc;

use http::Request;

use crate::context::RequestContext;
use crate::error::GatewayError;
use crate::response::Body;

/// What every stage inside the rescue layer returns.
pub type StageResult = Result<http::Response<Body>, GatewayError>;

/// The request's context, which the request-id layer always inserts.
pub(crate) fn context<B>(request: &Request<B>) -> Option<&Arc<RequestContext>> {
    request.extensions().get::<Arc<RequestContext>>()
}
