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
mod clock;
mod etcd;
mod net;
mod postgres;
mod server;

pub use child::{
    ChildGuard, READY_PREFIX, READY_PREFIX_TLS, Signal, die_with_parent, freeze, parse_ready_line,
    read_ready_addr, send_signal, stat_fields,
};
pub use clock::{faketime_library, skew_clock};
pub use etcd::{ClusterError, EtcdCluster, EtcdOptions, ServerTls};
pub use net::{NETNS_PREFIX, NetError, NetHost, TestNet};
pub use postgres::{POSTGRES_USER, PostgresError, PostgresServer, postgres_bin_dir};
pub use server::{ServerProcess, SpawnError};

/// `count` distinct loopback ports that were free a moment ago. All listeners stay open
/// until every port is chosen, so the same port is never returned twice.
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// The last 2,000 bytes of the log at `path` written after byte `from` (what explains a
/// failed start); empty when it cannot be read.
fn log_tail(path: &std::path::Path, from: u64) -> String {
    use std::io::{Read as _, Seek as _, SeekFrom};
    const TAIL: u64 = 2000;
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path) {
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(from.max(len.saturating_sub(TAIL))));
        let _ = file.read_to_string(&mut text);
    }
    text
}
