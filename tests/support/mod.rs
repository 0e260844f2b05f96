//! Test support shared by the integration tests: real processes, free ports, readiness waits.
//!
//! Every test binary compiles this whole module and uses part of it.
#![allow(dead_code)]

pub mod backend;
pub mod certs;
pub mod etcd;
pub mod lock_cmd;
pub mod lockd;
pub mod proc;
pub mod storage;
