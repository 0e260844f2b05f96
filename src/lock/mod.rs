//! The etcd lock client: connect, keep a session, take fenced locks.
//!
//! ```no_run
//! # async fn example() -> Result<(), fencelock::lock::Error> {
//! use std::time::Duration;
//! use fencelock::lock::Client;
//!
//! let client = Client::connect(["127.0.0.1:2379"]).await?;
//! let session = client.session(Duration::from_secs(5)).await?;
//! let guard = session.lock("/orders").await?;
//! println!("holding {} with fencing token {}", guard.key(), guard.token());
//! // ... pass guard.token() with every request to the fenced resource ...
//! guard.unlock().await?;
//! session.close().await?;
//! # Ok(()) }
//! ```
//!
//! Files: `client.rs` (the balanced channel, retries), `session.rs` (lease + keepalive + loss
//! detection), `mutex.rs` (the lock recipe and `LockGuard`), `watch.rs` (waiting for a
//! deletion), `shared_watch.rs` (the one Watch stream a client's waits share), `lease_id.rs`,
//! `error.rs`.
//! The protocol types come from [`crate::etcd`].

pub(crate) mod client;
mod error;
mod lease_id;
mod mutex;
mod session;
mod shared_watch;
mod watch;

pub use client::{
    AuthToken, Client, ConnectOptions, Credentials, DEFAULT_TIMEOUT, LockKey, TlsOptions, Transport,
};
pub use error::{Error, LossReason, Result};
pub use lease_id::LeaseId;
pub use mutex::{LockGuard, LockOptions, RESERVED_PREFIX};
pub use session::Session;
pub use watch::{PrefixWatch, WatchStart};
