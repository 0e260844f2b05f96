//! `fencelock storage` over real HTTP: fence rules and bindings, transactions, the REST face, bad input, durability.
//!
//! One test binary per topic, each case in a file of its own: the crate and the test
//! support are compiled and linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod bad_input;
mod durability;
mod fence_binding;
mod fencing;
mod https;
mod limits;
mod rest;
mod txn;
mod verify;
