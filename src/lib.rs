//! viewgate: an authenticated caching gateway for the LinkupAPI V2 `get_viewers` action.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod config;
pub mod keys;
pub mod sim;
