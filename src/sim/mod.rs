//! The upstream simulator (placeholder, being written).
