//! `fencelock lockd` as etcd's own tools and clients see it: etcdctl, HTTP health and
//! metrics, limits, restarts, watches.
//!
//! One test binary per topic, each case in a file of its own: the crate and the test
//! support are compiled and linked once for all of them.

#[path = "../support/mod.rs"]
mod support;

mod etcdctl;
mod http;
mod limits;
mod restart;
mod tls;
mod watch;
