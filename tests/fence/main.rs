//! The fence in users' own data: the PostgreSQL adapter against a real private server, the
//! etcd adapter against real etcd and lockd.
//!
//! One test binary per topic, each case in a file of its own: the crate and the test
//! support are compiled and linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod etcd;
mod postgres;
