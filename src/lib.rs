//! viewgate: an authenticated caching gateway for the LinkupAPI V2 `get_viewers` action.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod accounts;
pub mod actions;
pub mod admin;
pub mod alerts;
pub mod app;
pub mod cache;
pub mod call;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod credits;
pub mod degraded;
pub mod error;
pub mod keys;
pub mod layers;
pub mod ledger;
pub mod listener;
pub mod live;
pub mod log_throttle;
pub mod logging;
pub mod metrics;
pub mod miss;
pub mod ratelimit;
pub(crate) mod redis;
pub mod response;
pub mod scrub;
pub mod shadow;
pub mod sim;
pub mod tenant;
pub mod upstream;
