//! fencelock: fenced distributed locking.
//!
//! A lock service (etcd, or the embedded `lockd`) hands each lock holder a *fencing token*,
//! the lock key's create_revision. A shared resource that checks the token on every request
//! rejects a holder that woke up from a pause still believing it holds the lock.
//!
//! Modules:
//! - [`token`]: [`FencingToken`], the ordered number that every other part passes around.
//! - [`storage`]: the fenced key/value server (seed-compatible JSON and a REST face), the
//!   fence rule, and [`storage::StorageClient`].
//! - [`lock`]: the etcd lock client: `Client`, `Session` (a kept-alive lease), fenced locks.
//! - [`lockd`]: the embedded lock service, speaking etcd's protocol, for a machine without
//!   etcd.
//! - [`bench`]: the measurement commands behind `fencelock bench`.
//! - [`check`]: the fault-injection checker behind `fencelock check`.
//! - [`process`]: a `fencelock` server as a child process, to freeze, kill or restart.
//! - [`demo`]: `fencelock demo` and `fencelock client 1|2`, the seed's walkthrough for real.
//! - [`etcd_cluster`]: a real loopback etcd cluster this process starts, faults and stops.

pub mod bench;
pub mod check;
mod child;
pub mod demo;
pub mod etcd_cluster;
pub mod lock;
pub mod lockd;
pub mod process;
pub mod storage;
mod svg;
pub mod token;

pub use token::FencingToken;
