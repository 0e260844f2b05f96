//! The operations of a check history: the recorded events put in a canonical order and each
//! invocation joined with its completion, the spans in which workers believed they held the
//! lock, and the faults with their start and end joined.
//!
//! Invariants this file owns: the input may come in any order and with duplicates; it is
//! first put in a canonical order (monotonic time, then worker, then op, invocation before
//! completion) and each operation keeps its first completion; what was odd about the record
//! is counted in [`HistoryNotes`], never silently dropped.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::check::history::{
    self, EventType, FaultKind, FinalSet, OpKind, Resource, Target, Workload,
};
use fencelock::storage::fence::Policy;

/// Everything the analysis looks at: the merged files of one run under one policy.
#[derive(Clone, Debug)]
pub struct Input {
    pub policy: Policy,
    /// Where the data lived: which accesses its fence checks depends on the adapter.
    pub resource: Resource,
    /// What the workers did, and so which rules apply.
    pub workload: Workload,
    /// All workers' events, in any order.
    pub events: Vec<history::Event>,
    /// Fault start lines and end lines (sharing an id), in any order.
    pub faults: Vec<history::FaultEvent>,
    /// Lock keys created and deleted under the lock name, from a watch.
    pub keys: Vec<history::KeyEvent>,
    /// The counter read at the end of the run; `None` when it could not be read. The
    /// counter is taken to start at 0 (a fresh storage), so it is the number of increments
    /// that survived. Counter workload only.
    pub final_value: Option<u64>,
    /// The set read by the checker after every worker stopped; `None` when it could not be
    /// read. Set workload only.
    pub final_set: Option<FinalSet>,
    /// Run start and end, on the same monotonic clock as the events.
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
    /// Invoked and never completed (the worker was frozen or killed, or the run ended).
    /// Indeterminate, like `info`.
    Pending,
}

/// One operation: an invocation joined with its first completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Op {
    pub worker: u32,
    pub op: u64,
    pub f: OpKind,
    pub invoke_ns: u64,
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
    pub lease: Option<i64>,
    pub token: Option<u64>,
    /// For a read: the value read; for a write: the value written (counter workload).
    pub value: Option<u64>,
    /// For a write: the element it adds (set workload).
    pub element: Option<String>,
    /// For a read: the set it returned (set workload).
    pub set: Option<Vec<String>>,
    pub stale: bool,
    pub error: Option<String>,
}

impl Op {
    /// When the operation's effect is placed on the timeline: its completion, or its
    /// invocation when it never completed.
    pub fn at_ns(&self) -> u64 {
        self.complete_ns.unwrap_or(self.invoke_ns)
    }
}

/// A span of time in which one worker believed it held the lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Hold {
    pub worker: u32,
    pub token: Option<u64>,
    pub lease: Option<i64>,
    /// The `lock` operation's completion.
    pub start_ns: u64,
    /// The worker's next `unlock`/`close`/`session`/`lock` invocation, or the run's end.
    pub end_ns: u64,
}

/// A fault with its start and end lines joined.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultSpan {
    pub id: u64,
    pub fault: FaultKind,
    pub target: Target,
    pub start_s: f64,
    /// `None` when the fault never ended within the record (the run stopped first).
    pub end_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Irregularities of the record itself, kept so that a strange result can be traced.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryNotes {
    pub events: u64,
    /// Second and later completions of one operation (ignored: the first one counts).
    pub duplicate_completions: u64,
    /// Completions with no invocation (kept, timed at their completion).
    pub orphan_completions: u64,
    /// Second invocations of one operation number (ignored).
    pub duplicate_invocations: u64,
}

/// Seconds since the run's start, for people and JSON.
pub(super) fn secs(input: &Input, ns: u64) -> f64 {
    ns.saturating_sub(input.start_mono_ns) as f64 / 1e9
}

/// The message of a storage answer, as the storage client words it: `storage answered
/// <status>: <error code>: <message>`.
const SERVER_ANSWER: &str = "storage answered ";

/// The one 5xx that is a definite no: the storage's admission limit refuses a request
/// before reading its body, so nothing of it was applied.
const BUSY_ANSWER: &str = "503 Service Unavailable: busy:";

/// A `fail` the worker recorded for a storage 5xx other than `503 busy`, as workers did
/// before they recorded those as `info`: the storage gave no definite no (the `503` of a
/// failed commit may still be replayed after a restart), so the outcome is unknown. Kept so
/// that `--analyse` of an older run's directory gives the sound answer too.
fn recorded_unknown(e: &history::Event) -> bool {
    matches!(e.f, OpKind::Read | OpKind::Write)
        && !e.stale
        && e.error.as_deref().is_some_and(|error| {
            error
                .strip_prefix(SERVER_ANSWER)
                .is_some_and(|answer| answer.starts_with('5') && !answer.starts_with(BUSY_ANSWER))
        })
}

/// Puts the events in canonical order and joins each invocation with its first completion.
pub(crate) fn operations(input: &Input) -> (Vec<Op>, HistoryNotes) {
    let mut events: Vec<&history::Event> = input.events.iter().collect();
    events.sort_by_key(|e| (e.mono_ns, e.worker, e.op, e.kind != EventType::Invoke));
    let mut notes = HistoryNotes {
        events: events.len() as u64,
        ..HistoryNotes::default()
    };
    let mut ops: Vec<Op> = Vec::new();
    let mut index: HashMap<(u32, u64), usize> = HashMap::new();
    for e in events {
        let outcome = match e.kind {
            EventType::Invoke => None,
            EventType::Ok => Some(Outcome::Ok),
            EventType::Fail if recorded_unknown(e) => Some(Outcome::Info),
            EventType::Fail => Some(Outcome::Fail),
            EventType::Info => Some(Outcome::Info),
        };
        match (index.get(&(e.worker, e.op)), outcome) {
            (None, outcome) => {
                if outcome.is_some() {
                    notes.orphan_completions += 1;
                }
                index.insert((e.worker, e.op), ops.len());
                ops.push(Op {
                    worker: e.worker,
                    op: e.op,
                    f: e.f,
                    invoke_ns: e.mono_ns,
                    complete_ns: outcome.map(|_| e.mono_ns),
                    outcome: outcome.unwrap_or(Outcome::Pending),
                    lease: e.lease,
                    token: e.token,
                    value: e.value,
                    element: e.element.clone(),
                    set: e.set.clone(),
                    stale: e.stale,
                    error: e.error.clone(),
                });
            }
            (Some(_), None) => notes.duplicate_invocations += 1,
            (Some(&i), Some(outcome)) => {
                let op = &mut ops[i];
                if op.complete_ns.is_some() {
                    notes.duplicate_completions += 1;
                    continue;
                }
                op.complete_ns = Some(e.mono_ns);
                op.outcome = outcome;
                op.lease = e.lease.or(op.lease);
                op.token = e.token.or(op.token);
                op.value = e.value.or(op.value);
                op.element = e.element.clone().or(op.element.take());
                op.set = e.set.clone().or(op.set.take());
                op.stale = e.stale;
                op.error = e.error.clone();
            }
        }
    }
    ops.sort_by_key(|o| (o.worker, o.op));
    (ops, notes)
}

/// The spans in which each worker believed it held the lock: from a `lock` completed `ok`
/// until the worker next invokes `unlock`, `close`, `session` or `lock`, or the run ends.
/// A frozen worker keeps believing: that is the point of fencing. `ops` must be sorted by
/// worker and op, as [`operations`] returns them.
pub(crate) fn holds(ops: &[Op], end_ns: u64) -> Vec<Hold> {
    let mut holds = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if op.f != OpKind::Lock || op.outcome != Outcome::Ok {
            continue;
        }
        let start_ns = op.at_ns();
        let end = ops[i + 1..]
            .iter()
            .take_while(|next| next.worker == op.worker)
            .find(|next| {
                matches!(
                    next.f,
                    OpKind::Unlock | OpKind::Close | OpKind::Session | OpKind::Lock
                )
            })
            .map_or(end_ns, |next| next.invoke_ns);
        holds.push(Hold {
            worker: op.worker,
            token: op.token,
            lease: op.lease,
            start_ns,
            end_ns: end.max(start_ns),
        });
    }
    holds.sort_by_key(|h| (h.start_ns, h.worker));
    holds
}

/// Joins fault start and end lines by id.
pub(crate) fn fault_spans(input: &Input) -> Vec<FaultSpan> {
    let mut by_id: BTreeMap<u64, (&history::FaultEvent, Option<u64>, u64)> = BTreeMap::new();
    for f in &input.faults {
        let entry = by_id
            .entry(f.id)
            .or_insert((f, f.end_mono_ns, f.start_mono_ns));
        entry.1 = entry.1.or(f.end_mono_ns);
        entry.2 = entry.2.min(f.start_mono_ns);
        if entry.0.note.is_none() && f.note.is_some() {
            entry.0 = f;
        }
    }
    let mut spans: Vec<FaultSpan> = by_id
        .into_iter()
        .map(|(id, (f, end, start))| FaultSpan {
            id,
            fault: f.fault,
            target: f.target.clone(),
            start_s: secs(input, start),
            end_s: end.map(|end| secs(input, end.max(start))),
            lease: f.lease,
            note: f.note.clone(),
        })
        .collect();
    spans.sort_by(|a, b| a.start_s.total_cmp(&b.start_s).then(a.id.cmp(&b.id)));
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::analysis::analyse;
    use crate::check::analysis::fixtures::{End, History, frozen_reader};

    #[test]
    fn a_holder_that_never_lets_go_holds_until_the_run_ends() {
        let mut h = History::default();
        h.lock(1, 0, 10, 0xa, 5);
        h.op(1, OpKind::Write, 100, 0, End::Never, Some(5), Some(1), None);
        h.lock(2, 3000, 3010, 0xb, 6);
        h.unlock(2, 3500, 3510);
        h.lock(3, 4000, 4010, 0xc, 7);
        let report = analyse(&h.input(Policy::Strict, None, 5000));
        let spans: Vec<(f64, f64, usize)> = report
            .overlaps
            .intervals
            .iter()
            .map(|o| (o.start_s, o.duration_s, o.holders.len()))
            .collect();
        assert_eq!(spans, vec![(3.01, 0.49, 2), (4.01, 0.99, 2)]);
        assert_eq!(report.overlaps.total_s, 1.48);
    }

    #[test]
    fn events_in_any_order_with_a_duplicate_completion_give_the_same_report() {
        let h = frozen_reader();
        let ordered = analyse(&h.input(Policy::Writes, Some(4), 7000));
        let mut shuffled = h.input(Policy::Writes, Some(4), 7000);
        shuffled.events.reverse();
        shuffled.faults.reverse();
        shuffled.keys.reverse();
        let mut again = shuffled.events[0].clone();
        assert_ne!(again.kind, EventType::Invoke);
        again.mono_ns += 1;
        again.kind = EventType::Info;
        shuffled.events.push(again);
        let mut report = analyse(&shuffled);
        assert_eq!(report.history.duplicate_completions, 1);
        report.history = ordered.history.clone();
        assert_eq!(report, ordered);
    }
}
