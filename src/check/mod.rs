//! `fencelock check`: a fault-injection checker after Jepsen's etcd lock tests. Worker
//! processes add their own elements to a set (the default workload) or increment a counter
//! under a fenced lock while the checker freezes, revokes and kills; the recorded history is
//! then analysed for lost and phantom elements (or lost updates and stale reads of the
//! counter), tokens accepted out of order, acquisitions out of token order, and overlapping
//! holders. The data lives in fencelock's storage (the default), or, to prove the fence
//! adapters, in a PostgreSQL table row (`--resource postgres`, `fence::postgres`) or a key in
//! the lock service itself (`--resource etcd`, `fence::etcd`).
//!
//! - [`history`]: the events each process records, one JSON line at a time.
//! - [`worker`]: one worker process's loop (`fencelock check-worker`).
//! - [`run`]: one run per policy: starting the services and the workers, watching the lock
//!   keys, stopping everything, and handing the history files to the analysis.
//! - [`faults`]: the fault injector, one seeded fault every interval, each undone before the
//!   run stops.
//! - [`workers`]: the worker processes of a run and the tracker of what their stdout says.
//! - [`saved`]: a run's directory read back and analysed (also for `--analyse`), and runs as
//!   a table or JSON.
//! - [`analysis`]: the pure analysis of a merged history into a [`analysis::Report`]:
//!   - `analysis/ops.rs`: the events in canonical order, joined into operations, holds and
//!     fault spans;
//!   - `analysis/rules.rs`: the rules (lost updates, stale reads, backwards tokens, token
//!     order, overlaps, lease expiries, …) and the verdict;
//!   - `analysis/set.rs`: the set workload's rules (lost elements, phantoms);
//!   - `analysis/report.rs`: the report's shape (its JSON) and the summary table;
//!   - `analysis/fixtures.rs`: hand-built histories for the unit tests.
//! - [`timeline`]: the SVG timeline picture of one run.

pub mod analysis;
pub mod faults;
pub mod history;
pub mod run;
pub mod saved;
pub mod timeline;
pub mod worker;
pub mod workers;
