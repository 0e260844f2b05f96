//! Test support shared by the integration tests: real processes, free ports, readiness waits.
//!
//! Every test binary compiles this whole module and uses part of it.
#![allow(dead_code)]

pub mod backend;
pub mod certs;
pub mod etcd;
pub mod faketime;
pub mod lock_cmd;
pub mod lockd;
pub mod net;
pub mod postgres;
pub mod proc;
pub mod storage;

/// A plain HTTP client for the tests. reqwest is built without a TLS provider of its own, so
/// its `Client::new()` would panic; every client is built through the library's builder.
pub fn http_client() -> reqwest::Client {
    fencelock::storage::http_client_builder(&Default::default())
        .expect("the default HTTP client options")
        .build()
        .expect("an HTTP client")
}
