//! The fenced storage server: a key/value store that refuses requests whose fencing token has
//! gone backwards, and [`StorageClient`] to talk to it.
//!
//! - [`fence`] holds the fence rule, one pure function, and the policies.
//! - [`wire`] holds the seed's JSON protocol and the REST face's bodies.
//! - `backend` holds the engines (fjall on disk, or memory).
//! - `store` holds the single writer thread and its group commit.
//! - [`server`] holds routes, start-up and graceful shutdown; `seed` and `rest` the handlers.
//! - `metrics` holds the Prometheus counters and histograms.
//! - [`client`] holds [`StorageClient`].
//!
//! The safety argument this module carries (DESIGN.md): per fence, the highest token seen;
//! lower is rejected, equal accepted, higher raises; check and effect are one step, durable
//! before the reply; reads raise the fence too under the strict policy.

mod backend;
pub mod client;
pub mod fence;
mod metrics;
mod rest;
mod seed;
pub mod server;
mod store;
pub mod wire;

pub use backend::BackendError;
pub use client::{ClientError, StorageClient, Stored};
pub use fence::Policy;
pub use rest::FENCING_TOKEN;
pub use server::{Config, DEFAULT_MAX_BODY, Server, ServerError, run};
pub use store::Engine;
