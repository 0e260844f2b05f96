//! Measurements behind `fencelock bench`.
//!
//! - [`chart`]: the SVG line charts the benchmarks draw with `--svg`.
//! - [`commit`]: the durable engine's commit latency by keys per commit.
//! - [`lock`]: lock+unlock cycles on etcd, alone and contended.
//! - [`memory`]: lockd's resident memory per held lock.
//! - [`storage`]: the storage's requests and keys per second, next to [`baseline`], a server
//!   answering a fixed body (after a group sync by [`group_sync`] when durable stores are
//!   measured too), all loaded by [`http_load`].

pub mod baseline;
pub mod chart;
pub mod commit;
pub mod group_sync;
pub mod http_load;
pub mod lock;
pub mod memory;
pub mod rounds;
pub mod storage;
