//! The lock client against real lock services: the suite on etcd and lockd, the `fencelock lock` command, clusters, names, enqueue clean-up, and lockd held to etcd's answers.
//!
//! One test binary per topic, each case in a file of its own: the crate and the test
//! support are compiled and linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod cli;
mod cluster;
mod differential;
mod enqueue;
mod errors;
mod lock_delay;
mod names;
mod suite;
mod tls;
mod v3lock;
