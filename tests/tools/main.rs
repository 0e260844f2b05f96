//! The binary's tools end to end: `fencelock demo`, `fencelock client`, `fencelock check` and `fencelock bench`.
//!
//! One test binary per topic, each case in a file of its own: the crate and the test
//! support are compiled and linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod bench;
mod bench_storage;
mod check;
mod client;
mod client_seed_protocol;
mod demo;
