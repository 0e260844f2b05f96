//! Measurements behind `fencelock bench`.
//!
//! - [`lock`]: lock+unlock cycles on etcd, alone and contended.

pub mod lock;
