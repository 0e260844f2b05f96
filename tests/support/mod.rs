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

/// The value of `series` (its name with any labels, as printed) in the Prometheus text that
/// `metrics_url` serves; panics with the text when it is not there.
pub async fn metric(metrics_url: &str, series: &str) -> f64 {
    let text = http_client()
        .get(metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in the metrics:\n{text}"))
}
