//! `fencelock check`: a fault-injection checker after Jepsen's etcd lock tests. Worker
//! processes increment a counter under a fenced lock while the checker freezes, revokes and
//! kills; the recorded history is then analysed for lost updates, tokens accepted out of
//! order, and overlapping holders.
//!
//! - [`history`]: the events each process records, one JSON line at a time.
//! - [`analysis`]: the pure analysis of a merged history into a [`analysis::Report`] and the
//!   summary table.
//! - [`timeline`]: the SVG timeline picture of one run.
//! - [`worker`]: one worker process's loop (`fencelock check-worker`).
//! - [`run`]: starting services and workers, injecting faults, stopping, analysing.

pub mod analysis;
pub mod faults;
pub mod history;
pub mod run;
pub mod saved;
pub mod timeline;
pub mod worker;
pub mod workers;
