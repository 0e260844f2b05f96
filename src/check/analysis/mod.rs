//! The analysis of a merged check history: for the set workload lost and phantom elements,
//! for the counter workload lost updates, stale reads and a final counter below an
//! acknowledged value; for both fencing tokens accepted out of order, acquisitions out of
//! token order, overlapping holders, stale rejections, other failures, faults and lease
//! expiries, and the verdict.
//!
//! [`analyse`] is pure: it sees only the recorded events, so the same history always gives
//! the same [`Report`], and hand-built histories test it exactly. Each file owns the
//! invariants of its step:
//!
//! - [`ops`]: the events in canonical order, joined into operations, holds and fault spans;
//! - [`rules`]: [`analyse`], the rules that find violations in the operations (the counter's
//!   among them), and the verdict;
//! - [`set`]: the set workload's rules (lost elements, phantoms);
//! - [`report`]: the [`Report`] those rules fill in (its JSON) and the [`summary_table`];
//! - `fixtures` (tests only): hand-built histories, shared with the timeline's tests.

mod ops;
mod report;
mod rules;
mod set;

#[cfg(test)]
pub(crate) mod fixtures;

pub use ops::{FaultSpan, Input, Outcome};
pub(crate) use ops::{Hold, Op, fault_spans, holds, operations};
pub(crate) use report::show;
pub use report::{Report, summary_table};
pub use rules::analyse;
