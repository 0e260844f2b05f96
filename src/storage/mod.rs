//! The fenced storage server: a key/value store that refuses requests whose fencing token has
//! gone backwards, and [`StorageClient`] to talk to it.
//!
//! - [`fence`] holds the fence rule, one pure function, and the policies.
//! - [`wire`] holds the seed's JSON protocol and the REST face's bodies.
//! - `backend` holds the engines (fjall on disk, or memory).
//! - `store` decides every request under one lock and holds the group commit.
//! - `server` holds routes, start-up and graceful shutdown; `seed` and `rest` the handlers,
//!   `http` the state and JSON answers they share (so no two of these import each other).
//! - `limits` holds the bounds on connections and queued request bodies (503 past them).
//! - `metrics` holds the Prometheus counters and histograms.
//! - [`verify`] holds token verification against the lock service (`--verify-tokens`).
//! - `tls` holds HTTPS (a listener that completes handshakes), `auth` the bearer token.
//! - [`client`] holds [`StorageClient`].
//!
//! The fence rule and the wire format are always compiled; the client needs the `client`
//! feature, the server the `storage` feature.
//!
//! The safety argument this module carries (DESIGN.md): per fence, the highest token seen;
//! lower is rejected, equal accepted, higher raises; check and effect are one step, durable
//! before the reply; reads raise the fence too under the strict policy.

#[cfg(feature = "storage")]
mod auth;
#[cfg(feature = "storage")]
pub mod backend;
#[cfg(feature = "client")]
pub mod client;
pub mod fence;
#[cfg(feature = "storage")]
mod http;
#[cfg(feature = "storage")]
pub mod limits;
#[cfg(feature = "storage")]
mod metrics;
#[cfg(feature = "storage")]
mod rest;
#[cfg(feature = "storage")]
mod seed;
#[cfg(feature = "storage")]
pub mod server;
#[cfg(feature = "storage")]
mod store;
#[cfg(feature = "storage")]
mod tls;
#[cfg(feature = "storage")]
pub mod verify;
pub mod wire;

#[cfg(feature = "storage")]
pub use auth::AuthConfig;
#[cfg(feature = "storage")]
pub use backend::BackendError;
#[cfg(feature = "client")]
pub use client::{
    ClientError, Protocol, StorageClient, StorageOptions, Stored, http_client_builder,
};
pub use fence::Policy;
#[cfg(feature = "storage")]
pub use limits::{DEFAULT_MAX_BODY, Limits, LimitsError};
#[cfg(feature = "storage")]
pub use server::{Config, Server, ServerError, run};
#[cfg(feature = "storage")]
pub use store::Engine;
#[cfg(feature = "storage")]
pub use tls::TlsConfig;
pub use wire::FENCING_TOKEN;
