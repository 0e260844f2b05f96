//! Child processes for the tools and the integration tests: a `fencelock` server to freeze,
//! kill or restart ([`ServerProcess`]), a real loopback etcd cluster ([`EtcdCluster`]), and
//! the one place that makes a child die with its parent ([`die_with_parent`]).
//!
//! Invariant: every child started here is killed and reaped when its handle drops, and dies
//! with the thread that spawned it if this process ends without dropping it.

mod child;
mod etcd;
mod server;

pub use child::{READY_PREFIX, Signal, die_with_parent, send_signal};
pub use etcd::{ClusterError, EtcdCluster};
pub use server::{ServerProcess, SpawnError};
