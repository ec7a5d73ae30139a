//! viewgate: an authenticated caching gateway for the LinkupAPI V2 `get_viewers` action.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub)]

pub(crate) mod accounts;
pub mod actions;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod cache;
pub mod call;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod context;
pub(crate) mod credits;
pub(crate) mod degraded;
pub(crate) mod error;
pub mod keys;
pub mod layers;
pub mod ledger;
pub mod listener;
pub mod live;
pub(crate) mod log_throttle;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod miss;
pub(crate) mod ratelimit;
pub(crate) mod redis;
pub mod response;
pub(crate) mod scrub;
pub(crate) mod shadow;
pub mod sim;
pub mod tenant;
pub(crate) mod upstream;
