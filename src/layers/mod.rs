//! The request path's stages, one tower layer each, in the order `app::build_stack` lists them.

pub mod accounts;
pub mod admission;
pub mod auth;
pub mod cache;
pub mod idempotency;
pub mod parse;
pub mod policy;
pub mod quote;
pub mod rate_limit;
pub mod request_id;
pub mod rescue;
pub mod route;
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
