//! Child processes for the tools and the integration tests: a `fencelock` server to freeze,
//! kill or restart ([`ServerProcess`]), a real etcd cluster ([`EtcdCluster`]) on loopback or
//! on the hosts of a private test network ([`TestNet`]: network namespaces on a bridge, with
//! links cut and healed), a private PostgreSQL server ([`PostgresServer`]), and
//! the one place that makes a child die with its parent ([`die_with_parent`]), a synchronous
//! child guard ([`ChildGuard`]), typed signals ([`send_signal`], [`freeze`], which waits until
//! the kernel shows the process stopped) and the one reader of a
//! server's readiness line ([`read_ready_addr`], [`READY_PREFIX`]).
//!
//! Invariant: every child started here is killed and reaped when its handle drops, and dies
//! with the thread that spawned it if this process ends without dropping it.

mod child;
mod etcd;
mod net;
mod postgres;
mod server;

pub use child::{
    ChildGuard, READY_PREFIX, READY_PREFIX_TLS, Signal, die_with_parent, freeze, parse_ready_line,
    read_ready_addr, send_signal,
};
pub use etcd::{ClusterError, EtcdCluster, EtcdOptions, ServerTls};
pub use net::{NETNS_PREFIX, NetError, NetHost, TestNet};
pub use postgres::{POSTGRES_USER, PostgresError, PostgresServer, postgres_bin_dir};
pub use server::{ServerProcess, SpawnError};
