//! fencelock: fenced distributed locking.
//!
//! A lock service (etcd, or the embedded `lockd`) hands each lock holder a *fencing token*,
//! the lock key's create_revision. A shared resource that checks the token on every request
//! rejects a holder that woke up from a pause still believing it holds the lock.
//!
//! Modules, from the bottom up (each uses only those above it in this list):
//! - [`token`]: [`FencingToken`], the ordered number that every other part passes around.
//! - [`etcd`]: the etcd v3 protocol subset (generated types and stubs) and key-range
//!   helpers, shared by the lock client and lockd, which never import each other.
//! - [`lock`] (feature `client`): the etcd lock client: `Client`, `Session` (a kept-alive
//!   lease), fenced locks.
//! - [`storage`]: the fence rule and the wire format (always), [`storage::StorageClient`]
//!   (feature `client`) and the fenced key/value server (feature `storage`).
//! - [`fence`]: the fence carried into the user's own data: PostgreSQL (feature `postgres`),
//!   keys in etcd (feature `client`), and the rule over any compare-and-swap resource.
//! - [`lockd`] (feature `lockd`): the embedded lock service, speaking etcd's protocol, for a
//!   machine without etcd.
//! - [`process`] (feature `cli`): child processes for the tools and the tests: servers to
//!   freeze, kill or restart, a real etcd cluster on loopback or across a private test
//!   network of namespaces whose links can be cut, and a private PostgreSQL server.
//!
//! The `fencelock` binary (`src/main.rs`) holds the commands and the tools behind them
//! (`demo`, `check`, `bench`); they are not part of this library.
//!
//! Cargo features: `client` (the clients alone: no HTTP server, storage engine, CLI parser or
//! log subscriber is compiled), `lockd`, `postgres`, `storage`, and `cli` (the binary, with everything);
//! `default` is `cli`.

#![warn(missing_docs)]
// The map above links every module; a build without some features lacks their modules, and
// only the full build (`cli`, the default) checks those links.
#![cfg_attr(not(feature = "cli"), allow(rustdoc::broken_intra_doc_links))]

pub mod etcd;
pub mod fence;
#[cfg(feature = "client")]
pub mod lock;
#[cfg(feature = "lockd")]
pub mod lockd;
#[cfg(feature = "cli")]
pub mod process;
pub mod storage;
pub mod token;

pub use token::FencingToken;
