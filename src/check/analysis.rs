//! The analysis of a merged check history: lost updates, fencing tokens accepted out of
//! order, overlapping holders, stale rejections, other failures, faults and lease expiries,
//! and the verdict.
//!
//! [`analyse`] is pure: it sees only the recorded events, so the same history always gives
//! the same [`Report`], and hand-built histories test it exactly.
//!
//! Invariants this file owns:
//! - the input may come in any order and with duplicates; it is first put in a canonical
//!   order (monotonic time, then worker, then op, invocation before completion) and each
//!   operation keeps its first completion;
//! - an acknowledged increment (a write completed `ok`) is counted lost at most once, however
//!   many rules see it (see [`LostUpdates`]);
//! - a write whose outcome is unknown (`info`, or no completion) is never counted as
//!   acknowledged nor as lost, as Jepsen does: it is counted apart;
//! - which accesses move the fence is asked of [`fence::check`], never re-derived here.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Serialize;

use super::history::{self, EventType, FaultKind, KeyChange, OpKind, Target};
use fencelock::FencingToken;
use fencelock::storage::fence::{self, Access, Policy};

/// Everything the analysis looks at: the merged files of one run under one policy.
#[derive(Clone, Debug)]
pub struct Input {
    pub policy: Policy,
    /// All workers' events, in any order.
    pub events: Vec<history::Event>,
    /// Fault start lines and end lines (sharing an id), in any order.
    pub faults: Vec<history::FaultEvent>,
    /// Lock keys created and deleted under the lock name, from a watch.
    pub keys: Vec<history::KeyEvent>,
    /// The counter read at the end of the run; `None` when it could not be read. The
    /// counter is taken to start at 0 (a fresh storage), so it is the number of increments
    /// that survived.
    pub final_value: Option<u64>,
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
    /// For a read: the value read; for a write: the value written.
    pub value: Option<u64>,
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

/// The analysis of one run.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Report {
    /// The storage's fencing policy during the run.
    pub policy: String,
    /// Whether the policy claims to prevent lost updates and backwards tokens (only strict).
    pub claims_safety: bool,
    /// `!claims_safety || (no lost update && no backwards token)`.
    pub valid: bool,
    /// One line for people: "valid", "invalid: …" or "not claimed safe (writes): …".
    pub verdict: String,
    pub duration_s: f64,
    /// Per operation kind, how many ended each way.
    pub operations: Vec<OpCounts>,
    pub history: HistoryNotes,
    /// Writes completed `ok`: increments the storage acknowledged.
    pub acknowledged_increments: u64,
    /// Writes whose outcome is unknown (`info`, or never completed): counted apart, never
    /// as acknowledged nor as lost.
    pub unknown_writes: u64,
    /// The counter at the end, when it could be read.
    pub final_value: Option<u64>,
    pub lost_updates: LostUpdates,
    /// The accesses the backwards-token rule looked at (those the policy checks).
    pub fenced_accesses: Vec<OpKind>,
    /// Accepted operations whose token was below one the fence had already accepted.
    pub backwards_tokens: Vec<BackwardsToken>,
    pub overlaps: Overlaps,
    pub stale_rejections: StaleRejections,
    /// Reads, writes and lock operations that failed or ended unknown for a reason other
    /// than a stale token, per kind.
    pub other_failures: Vec<FailureGroup>,
    /// How many faults of each kind were injected.
    pub faults: Vec<FaultCount>,
    pub fault_spans: Vec<FaultSpan>,
    /// Lock keys that vanished before their owner asked to release them.
    pub lease_expiries: Vec<LeaseExpiry>,
}

/// Outcomes of one kind of operation.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct OpCounts {
    pub kind: OpKind,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    /// Invoked, never completed.
    pub pending: u64,
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

/// Acknowledged increments that did not survive.
///
/// Counting, with `acked` the acknowledged increments:
/// - *duplicates*: for each value written by `k > 1` acknowledged writes, `k - 1` of them
///   were lost (they built on the same read, so the counter moved once for all of them);
/// - *shortfall*: the increments that survive the duplicates are `acked - duplicate_lost`;
///   if the final counter is below that, the difference was lost too (overwritten from an
///   older read without producing a duplicate, or the storage lost acknowledged data);
/// - `count = duplicate_lost + shortfall`, i.e. `max(duplicate_lost, acked - final)`, so
///   a write is never counted twice.
///
/// The counter starts at 0 (a fresh storage). Unknown writes may have taken effect and
/// leave the final counter above `acked`: that is not a loss, and it can hide a shortfall,
/// never invent one. Without a final value only duplicates are counted.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LostUpdates {
    pub count: u64,
    /// `count / acknowledged increments` (0 when nothing was acknowledged).
    pub share: f64,
    pub duplicate_lost: u64,
    pub shortfall: u64,
    pub duplicates: Vec<DuplicateWrite>,
    /// The same findings as sentences.
    pub details: Vec<String>,
}

/// A value that more than one acknowledged write wrote.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct DuplicateWrite {
    pub value: u64,
    /// The writes, in completion order.
    pub writes: Vec<WriteRef>,
    /// `writes.len() - 1`.
    pub lost: u64,
}

/// An acknowledged write.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct WriteRef {
    pub worker: u32,
    pub op: u64,
    pub token: Option<u64>,
    /// The value of the worker's last successful read before this write.
    pub read: Option<u64>,
    pub at_s: f64,
}

/// An accepted operation whose token was below the highest token the fence had already
/// accepted from an operation that completed before this one was invoked.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct BackwardsToken {
    pub worker: u32,
    pub op: u64,
    pub f: OpKind,
    pub token: u64,
    pub invoked_s: f64,
    /// The higher token already accepted, and the operation that presented it.
    pub fence_token: u64,
    pub fence_worker: u32,
    pub fence_op: u64,
    pub fence_at_s: f64,
}

/// Times in which two or more workers each believed they held the lock.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Overlaps {
    pub total_s: f64,
    pub intervals: Vec<Overlap>,
}

/// A maximal interval in which at least two workers believed they held the lock.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Overlap {
    pub start_s: f64,
    pub duration_s: f64,
    /// Every worker that believed it held the lock at some point of the interval.
    pub holders: Vec<Holder>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub worker: u32,
    pub token: Option<u64>,
}

/// Reads and writes the storage refused because their token was behind the fence.
#[derive(Serialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StaleRejections {
    pub reads: u64,
    pub writes: u64,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct FailureGroup {
    pub kind: OpKind,
    pub fail: u64,
    pub info: u64,
    /// A few distinct error messages.
    pub examples: Vec<String>,
}

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct FaultCount {
    pub fault: FaultKind,
    pub count: u64,
}

/// A lock key deleted without its owner having asked to release it first: its lease
/// expired or was revoked.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LeaseExpiry {
    pub at_s: f64,
    pub key: String,
    pub lease: Option<i64>,
    pub token: u64,
    /// The worker whose session owned the lease, when known.
    pub worker: Option<u32>,
    /// Whether that worker had acquired the lock with this key (rather than still waiting).
    pub held: bool,
    /// Whether a `revoke` fault on this lease came first.
    pub revoked: bool,
}

/// The fence name passed to [`fence::check`]; it only appears in rejections, which the
/// analysis never shows.
const FENCE: &str = "check";

/// Distinct error messages kept per kind of failure: enough to see the causes, few enough
/// for a table.
const MAX_EXAMPLES: usize = 3;

const ALL_KINDS: [OpKind; 6] = [
    OpKind::Session,
    OpKind::Lock,
    OpKind::Read,
    OpKind::Write,
    OpKind::Unlock,
    OpKind::Close,
];

const ALL_FAULTS: [FaultKind; 6] = [
    FaultKind::FreezeHolder,
    FaultKind::FreezeAfterRead,
    FaultKind::Revoke,
    FaultKind::FreezeLockService,
    FaultKind::KillStorage,
    FaultKind::KillMember,
];

impl Report {
    /// True when the run shows no violation of the policy's safety claim.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// Violations of the policy's safety claim: lost updates plus backwards tokens under a
    /// policy that claims safety, 0 under one that claims none (its anomalies are still in
    /// [`Report::lost_updates`] and [`Report::backwards_tokens`]). The tests' one-number
    /// summary of a report; the binary reports the parts.
    #[cfg(test)]
    pub fn violations(&self) -> usize {
        if self.claims_safety {
            self.lost_updates.count as usize + self.backwards_tokens.len()
        } else {
            0
        }
    }
}

/// Seconds since the run's start, for people and JSON.
fn secs(input: &Input, ns: u64) -> f64 {
    ns.saturating_sub(input.start_mono_ns) as f64 / 1e9
}

/// Whether `policy` checks `access` against the fence, asked of the fence rule itself: a
/// checked access presenting a token below the fence is refused.
fn fenced(policy: Policy, access: Access) -> bool {
    fence::check(
        policy,
        access,
        FENCE,
        FencingToken::new(1),
        FencingToken::new(2),
    )
    .is_err()
}

/// The accesses whose accepted tokens must not go backwards: those the policy checks. Under
/// `off` nothing is checked, so writes are looked at, the access every fencing policy
/// checks: the report then shows what a fence would have been asked to refuse.
fn fenced_accesses(policy: Policy) -> Vec<OpKind> {
    let mut kinds: Vec<OpKind> = [(Access::Read, OpKind::Read), (Access::Write, OpKind::Write)]
        .into_iter()
        .filter(|(access, _)| fenced(policy, *access))
        .map(|(_, kind)| kind)
        .collect();
    if kinds.is_empty() {
        kinds.push(OpKind::Write);
    }
    kinds
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

/// Analyses one run.
pub fn analyse(input: &Input) -> Report {
    let (ops, history) = operations(input);
    let holds = holds(&ops, input.end_mono_ns);

    let operations = ALL_KINDS
        .iter()
        .map(|&kind| {
            let mut counts = OpCounts {
                kind,
                ok: 0,
                fail: 0,
                info: 0,
                pending: 0,
            };
            for op in ops.iter().filter(|o| o.f == kind) {
                match op.outcome {
                    Outcome::Ok => counts.ok += 1,
                    Outcome::Fail => counts.fail += 1,
                    Outcome::Info => counts.info += 1,
                    Outcome::Pending => counts.pending += 1,
                }
            }
            counts
        })
        .collect();

    let writes = || ops.iter().filter(|o| o.f == OpKind::Write);
    let acknowledged_increments = writes().filter(|o| o.outcome == Outcome::Ok).count() as u64;
    let unknown_writes = writes()
        .filter(|o| matches!(o.outcome, Outcome::Info | Outcome::Pending))
        .count() as u64;
    let lost_updates = lost_updates(input, &ops, acknowledged_increments);

    let fenced_accesses = fenced_accesses(input.policy);
    let backwards_tokens = backwards_tokens(input, &ops, &fenced_accesses);
    let overlaps = overlaps(input, &holds);

    let mut stale_rejections = StaleRejections::default();
    for op in ops.iter().filter(|o| o.outcome == Outcome::Fail && o.stale) {
        match op.f {
            OpKind::Read => stale_rejections.reads += 1,
            OpKind::Write => stale_rejections.writes += 1,
            _ => {}
        }
    }
    let other_failures = other_failures(&ops);

    let fault_spans = fault_spans(input);
    let faults = ALL_FAULTS
        .iter()
        .map(|&fault| FaultCount {
            fault,
            count: fault_spans.iter().filter(|s| s.fault == fault).count() as u64,
        })
        .filter(|c| c.count > 0)
        .collect();
    let lease_expiries = lease_expiries(input, &ops, &holds);

    let claims_safety = input.policy == Policy::Strict;
    let anomalies = lost_updates.count > 0 || !backwards_tokens.is_empty();
    let valid = !claims_safety || !anomalies;
    let found = format!(
        "{} lost update{}, {} backwards token{}",
        lost_updates.count,
        plural(lost_updates.count),
        backwards_tokens.len(),
        plural(backwards_tokens.len() as u64)
    );
    let verdict = match (claims_safety, valid) {
        (true, true) => "valid: no lost update, no backwards token".to_owned(),
        (true, false) => format!("invalid: {found} under {} fencing", input.policy),
        (false, _) => format!("not claimed safe ({}): {found}", input.policy),
    };

    Report {
        policy: input.policy.to_string(),
        claims_safety,
        valid,
        verdict,
        duration_s: secs(input, input.end_mono_ns),
        operations,
        history,
        acknowledged_increments,
        unknown_writes,
        final_value: input.final_value,
        lost_updates,
        fenced_accesses,
        backwards_tokens,
        overlaps,
        stale_rejections,
        other_failures,
        faults,
        fault_spans,
        lease_expiries,
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The value of `write`'s worker's last successful read before it.
fn read_before(ops: &[Op], write: &Op) -> Option<u64> {
    ops.iter()
        .rfind(|o| {
            o.worker == write.worker
                && o.op < write.op
                && o.f == OpKind::Read
                && o.outcome == Outcome::Ok
        })
        .and_then(|o| o.value)
}

/// See [`LostUpdates`] for the counting.
fn lost_updates(input: &Input, ops: &[Op], acked: u64) -> LostUpdates {
    let mut by_value: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| o.f == OpKind::Write && o.outcome == Outcome::Ok)
    {
        if let Some(value) = op.value {
            by_value.entry(value).or_default().push(op);
        }
    }
    let mut details = Vec::new();
    let mut duplicates = Vec::new();
    for (value, mut writes) in by_value.into_iter().filter(|(_, w)| w.len() > 1) {
        writes.sort_by_key(|w| (w.at_ns(), w.worker));
        let refs: Vec<WriteRef> = writes
            .iter()
            .map(|w| WriteRef {
                worker: w.worker,
                op: w.op,
                token: w.token,
                read: read_before(ops, w),
                at_s: secs(input, w.at_ns()),
            })
            .collect();
        let who: Vec<String> = refs
            .iter()
            .map(|w| format!("{} (token {})", w.worker, show(w.token)))
            .collect();
        let reads: Vec<String> = refs.iter().map(|w| show(w.read)).collect();
        let mut sentence = format!(
            "duplicate value {value} written by workers {}",
            who.join(" and ")
        );
        if reads.iter().all(|r| *r == reads[0]) {
            let _ = write!(sentence, ", all read {}", reads[0]);
        } else {
            let _ = write!(sentence, ", read {}", reads.join(", "));
        }
        details.push(sentence);
        duplicates.push(DuplicateWrite {
            value,
            lost: refs.len() as u64 - 1,
            writes: refs,
        });
    }
    let duplicate_lost: u64 = duplicates.iter().map(|d| d.lost).sum();
    let surviving = acked - duplicate_lost;
    let shortfall = input
        .final_value
        .map_or(0, |last| surviving.saturating_sub(last));
    if shortfall > 0 {
        details.push(format!(
            "final counter {} below the {surviving} acknowledged increments left after \
             duplicates ({acked} acknowledged)",
            input.final_value.unwrap_or(0)
        ));
    }
    let count = duplicate_lost + shortfall;
    LostUpdates {
        count,
        share: if acked == 0 {
            0.0
        } else {
            count as f64 / acked as f64
        },
        duplicate_lost,
        shortfall,
        duplicates,
        details,
    }
}

fn show(n: Option<impl std::fmt::Display>) -> String {
    n.map_or_else(|| "?".to_owned(), |n| n.to_string())
}

/// Real-time order: `a` is backwards when it was accepted with a token below the highest
/// token of an accepted operation (of a fenced access) that completed before `a` was
/// invoked. Operations that overlap in time are not ordered, so they never count; an
/// operation with an unknown outcome never raises the reference, so none is blamed on it.
fn backwards_tokens(input: &Input, ops: &[Op], accesses: &[OpKind]) -> Vec<BackwardsToken> {
    let accepted: Vec<&Op> = ops
        .iter()
        .filter(|o| accesses.contains(&o.f) && o.outcome == Outcome::Ok && o.token.is_some())
        .collect();
    let mut by_completion = accepted.clone();
    by_completion.sort_by_key(|o| (o.at_ns(), o.worker, o.op));
    let mut by_invocation = accepted;
    by_invocation.sort_by_key(|o| (o.invoke_ns, o.worker, o.op));

    let mut found = Vec::new();
    let mut highest: Option<&Op> = None;
    let mut next = by_completion.iter().peekable();
    for op in by_invocation {
        while let Some(done) = next.next_if(|d| d.at_ns() < op.invoke_ns) {
            if highest.is_none_or(|h| done.token > h.token) {
                highest = Some(done);
            }
        }
        let (Some(fence_op), Some(token)) = (highest, op.token) else {
            continue;
        };
        let fence_token = fence_op.token.unwrap_or(0);
        if token < fence_token {
            found.push(BackwardsToken {
                worker: op.worker,
                op: op.op,
                f: op.f,
                token,
                invoked_s: secs(input, op.invoke_ns),
                fence_token,
                fence_worker: fence_op.worker,
                fence_op: fence_op.op,
                fence_at_s: secs(input, fence_op.at_ns()),
            });
        }
    }
    found
}

/// Maximal intervals in which at least two holds are open, by a sweep over hold starts and
/// ends. A hold ending exactly when another starts does not overlap it.
fn overlaps(input: &Input, holds: &[Hold]) -> Overlaps {
    // (time, +1 start / -1 end, index); ends sort before starts at the same instant.
    let mut edges: Vec<(u64, i8, usize)> = Vec::new();
    for (i, h) in holds.iter().enumerate() {
        if h.end_ns > h.start_ns {
            edges.push((h.start_ns, 1, i));
            edges.push((h.end_ns, -1, i));
        }
    }
    edges.sort();
    let mut open: Vec<usize> = Vec::new();
    let mut current: Option<(u64, Vec<usize>)> = None;
    let mut intervals = Vec::new();
    let mut total_ns = 0;
    for (at, delta, i) in edges {
        if delta > 0 {
            open.push(i);
        } else {
            open.retain(|&o| o != i);
        }
        match (&mut current, open.len() >= 2) {
            (None, true) => current = Some((at, open.clone())),
            (Some((_, members)), true) => {
                for &o in &open {
                    if !members.contains(&o) {
                        members.push(o);
                    }
                }
            }
            (Some(_), false) => {
                if let Some((start, members)) = current.take() {
                    total_ns += at - start;
                    let mut holders: Vec<Holder> = members
                        .iter()
                        .map(|&m| Holder {
                            worker: holds[m].worker,
                            token: holds[m].token,
                        })
                        .collect();
                    holders.sort_by_key(|h| (h.token, h.worker));
                    intervals.push(Overlap {
                        start_s: secs(input, start),
                        duration_s: (at - start) as f64 / 1e9,
                        holders,
                    });
                }
            }
            (None, false) => {}
        }
    }
    Overlaps {
        total_s: total_ns as f64 / 1e9,
        intervals,
    }
}

/// Failures not explained by a stale token, and unknown outcomes, per kind.
fn other_failures(ops: &[Op]) -> Vec<FailureGroup> {
    ALL_KINDS
        .iter()
        .filter_map(|&kind| {
            let mut group = FailureGroup {
                kind,
                fail: 0,
                info: 0,
                examples: Vec::new(),
            };
            for op in ops.iter().filter(|o| o.f == kind && !o.stale) {
                match op.outcome {
                    Outcome::Fail => group.fail += 1,
                    Outcome::Info => group.info += 1,
                    Outcome::Ok | Outcome::Pending => continue,
                }
                if let Some(error) = &op.error
                    && group.examples.len() < MAX_EXAMPLES
                    && !group.examples.contains(error)
                {
                    group.examples.push(error.clone());
                }
            }
            (group.fail + group.info > 0).then_some(group)
        })
        .collect()
}

/// Lock keys deleted while their owner had not invoked `unlock` or `close` since the key
/// was created. The owner is found through the lease: the worker whose `session` or `lock`
/// reported it, or the hold whose token is the key's create_revision.
fn lease_expiries(input: &Input, ops: &[Op], holds: &[Hold]) -> Vec<LeaseExpiry> {
    let mut owner_of_lease: HashMap<i64, u32> = HashMap::new();
    for op in ops.iter().filter(|o| o.outcome == Outcome::Ok) {
        if let (OpKind::Session | OpKind::Lock, Some(lease)) = (op.f, op.lease) {
            owner_of_lease.insert(lease, op.worker);
        }
    }
    let mut keys: Vec<&history::KeyEvent> = input.keys.iter().collect();
    keys.sort_by_key(|k| (k.mono_ns, k.revision));
    let mut created: HashMap<(&str, u64), u64> = HashMap::new();
    let mut expiries = Vec::new();
    for key in keys {
        if key.change == KeyChange::Created {
            created.insert((key.key.as_str(), key.token), key.mono_ns);
            continue;
        }
        let hold = holds.iter().find(|h| h.token == Some(key.token));
        let worker = hold
            .map(|h| h.worker)
            .or_else(|| key.lease.and_then(|l| owner_of_lease.get(&l).copied()));
        let since = created
            .get(&(key.key.as_str(), key.token))
            .copied()
            .or(hold.map(|h| h.start_ns))
            .unwrap_or(0);
        let released = worker.is_some_and(|w| {
            ops.iter().any(|o| {
                o.worker == w
                    && matches!(o.f, OpKind::Unlock | OpKind::Close)
                    && (since..=key.mono_ns).contains(&o.invoke_ns)
            })
        });
        if released {
            continue;
        }
        let revoked = input.faults.iter().any(|f| {
            f.fault == FaultKind::Revoke
                && f.lease.is_some()
                && f.lease == key.lease
                && f.start_mono_ns <= key.mono_ns
        });
        expiries.push(LeaseExpiry {
            at_s: secs(input, key.mono_ns),
            key: key.key.clone(),
            lease: key.lease,
            token: key.token,
            worker,
            held: hold.is_some(),
            revoked,
        });
    }
    expiries
}

/// An aligned text table: one row per measure, one column per labelled report (one per
/// policy with `--compare`).
pub fn summary_table(rows: &[(&str, &Report)]) -> String {
    let measures: Vec<(&str, Vec<String>)> = vec![
        ("verdict", each(rows, |r| verdict_word(r).to_owned())),
        ("operations", each(rows, |r| total_ops(r).to_string())),
        (
            "acknowledged increments",
            each(rows, |r| r.acknowledged_increments.to_string()),
        ),
        (
            "unknown writes",
            each(rows, |r| r.unknown_writes.to_string()),
        ),
        ("final counter", each(rows, |r| show(r.final_value))),
        (
            "lost updates",
            each(rows, |r| {
                format!(
                    "{} ({:.1}%)",
                    r.lost_updates.count,
                    r.lost_updates.share * 100.0
                )
            }),
        ),
        (
            "backwards tokens",
            each(rows, |r| r.backwards_tokens.len().to_string()),
        ),
        (
            "overlapping holders",
            each(rows, |r| {
                format!(
                    "{} ({:.1} s)",
                    r.overlaps.intervals.len(),
                    r.overlaps.total_s
                )
            }),
        ),
        (
            "stale rejections r/w",
            each(rows, |r| {
                format!("{}/{}", r.stale_rejections.reads, r.stale_rejections.writes)
            }),
        ),
        (
            "other failures",
            each(rows, |r| {
                r.other_failures
                    .iter()
                    .map(|g| g.fail + g.info)
                    .sum::<u64>()
                    .to_string()
            }),
        ),
        (
            "lease expiries",
            each(rows, |r| r.lease_expiries.len().to_string()),
        ),
        ("faults", each(rows, |r| r.fault_spans.len().to_string())),
    ];
    let name_width = measures
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = rows
        .iter()
        .enumerate()
        .map(|(i, (label, _))| {
            measures
                .iter()
                .map(|(_, cells)| cells[i].chars().count())
                .chain([label.chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    let mut line = |name: &str, cells: &mut dyn Iterator<Item = &str>| {
        let _ = write!(out, "{name:<name_width$}");
        for (cell, width) in cells.zip(&widths) {
            let _ = write!(out, "  {cell:>width$}");
        }
        out.push('\n');
    };
    line("", &mut rows.iter().map(|(label, _)| *label));
    for (name, cells) in &measures {
        line(name, &mut cells.iter().map(String::as_str));
    }
    out
}

fn each(rows: &[(&str, &Report)], cell: impl Fn(&Report) -> String) -> Vec<String> {
    rows.iter().map(|(_, r)| cell(r)).collect()
}

/// One word for a table cell.
fn verdict_word(report: &Report) -> &'static str {
    match (report.claims_safety, report.valid) {
        (true, true) => "valid",
        (true, false) => "INVALID",
        (false, _) => "not claimed",
    }
}

fn total_ops(report: &Report) -> u64 {
    report
        .operations
        .iter()
        .map(|c| c.ok + c.fail + c.info + c.pending)
        .sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::check::history::{Event, FaultEvent, KeyEvent};

    /// The run's start on the monotonic clock: not zero, so relative times are exercised.
    pub const START: u64 = 7_000_000_000;

    /// Milliseconds since the run's start, on the monotonic clock.
    pub fn at(ms: u64) -> u64 {
        START + ms * 1_000_000
    }

    /// Builds histories compactly: each call records an invocation and its completion, with
    /// the worker's next op number.
    #[derive(Default)]
    pub struct History {
        pub events: Vec<Event>,
        pub faults: Vec<FaultEvent>,
        pub keys: Vec<KeyEvent>,
        next_op: HashMap<u32, u64>,
    }

    /// What one call records: the completion's type, and for `fail`s whether it was stale.
    #[derive(Clone, Copy)]
    pub enum End {
        Ok,
        Fail,
        Stale,
        Info,
        /// No completion at all.
        Never,
    }

    impl History {
        /// Records one operation `[from, to]` (ms since start); returns its op number.
        #[allow(clippy::too_many_arguments)]
        pub fn op(
            &mut self,
            worker: u32,
            f: OpKind,
            from: u64,
            to: u64,
            end: End,
            token: Option<u64>,
            value: Option<u64>,
            error: Option<&str>,
        ) -> u64 {
            let op = *self
                .next_op
                .entry(worker)
                .and_modify(|n| *n += 1)
                .or_insert(1);
            let event = |kind, ms| Event {
                worker,
                op,
                kind,
                f,
                mono_ns: at(ms),
                wall_ms: 1_700_000_000_000 + ms,
                lease: None,
                token,
                // A read's value is known only at its completion; a write's at both.
                value: if f == OpKind::Read && kind == EventType::Invoke {
                    None
                } else {
                    value
                },
                stale: false,
                current: None,
                error: None,
            };
            self.events.push(event(EventType::Invoke, from));
            let kind = match end {
                End::Ok => EventType::Ok,
                End::Fail | End::Stale => EventType::Fail,
                End::Info => EventType::Info,
                End::Never => return op,
            };
            let mut done = event(kind, to);
            done.stale = matches!(end, End::Stale);
            done.current = done.stale.then(|| token.unwrap_or(0) + 1);
            done.error = error.map(str::to_owned);
            self.events.push(done);
            op
        }

        pub fn lock(&mut self, worker: u32, from: u64, to: u64, lease: i64, token: u64) -> u64 {
            let op = self.op(
                worker,
                OpKind::Lock,
                from,
                to,
                End::Ok,
                Some(token),
                None,
                None,
            );
            let last = self.events.len() - 1;
            self.events[last].lease = Some(lease);
            op
        }

        pub fn read(&mut self, worker: u32, from: u64, to: u64, token: u64, value: u64) -> u64 {
            self.op(
                worker,
                OpKind::Read,
                from,
                to,
                End::Ok,
                Some(token),
                Some(value),
                None,
            )
        }

        pub fn write(&mut self, worker: u32, from: u64, to: u64, token: u64, value: u64) -> u64 {
            self.op(
                worker,
                OpKind::Write,
                from,
                to,
                End::Ok,
                Some(token),
                Some(value),
                None,
            )
        }

        pub fn unlock(&mut self, worker: u32, from: u64, to: u64) -> u64 {
            self.op(worker, OpKind::Unlock, from, to, End::Ok, None, None, None)
        }

        /// One uneventful turn from `from`: lock, read `read`, write `read + 1`, unlock,
        /// within 300 ms.
        pub fn turn(&mut self, worker: u32, from: u64, token: u64, read: u64) {
            self.lock(worker, from, from + 10, 0x100 + token as i64, token);
            self.read(worker, from + 20, from + 30, token, read);
            self.write(worker, from + 200, from + 210, token, read + 1);
            self.unlock(worker, from + 250, from + 260);
        }

        pub fn key(&mut self, ms: u64, lease: i64, token: u64, change: KeyChange) {
            self.keys.push(KeyEvent {
                mono_ns: at(ms),
                wall_ms: 1_700_000_000_000 + ms,
                key: format!("/lock/{lease:x}"),
                lease: Some(lease),
                token,
                change,
                revision: token,
            });
        }

        /// A fault with a start line and an end line, as the checker writes them.
        pub fn fault(&mut self, id: u64, fault: FaultKind, target: Target, from: u64, to: u64) {
            let start = FaultEvent {
                id,
                fault,
                target,
                start_mono_ns: at(from),
                end_mono_ns: None,
                wall_ms: 1_700_000_000_000 + from,
                lease: None,
                note: None,
            };
            let end = FaultEvent {
                end_mono_ns: Some(at(to)),
                ..start.clone()
            };
            self.faults.push(start);
            self.faults.push(end);
        }

        pub fn input(&self, policy: Policy, final_value: Option<u64>, end_ms: u64) -> Input {
            Input {
                policy,
                events: self.events.clone(),
                faults: self.faults.clone(),
                keys: self.keys.clone(),
                final_value,
                start_mono_ns: START,
                end_mono_ns: at(end_ms),
            }
        }
    }

    fn no_lost() -> LostUpdates {
        LostUpdates {
            count: 0,
            share: 0.0,
            duplicate_lost: 0,
            shortfall: 0,
            duplicates: vec![],
            details: vec![],
        }
    }

    fn no_overlap() -> Overlaps {
        Overlaps {
            total_s: 0.0,
            intervals: vec![],
        }
    }

    fn counts(report: &Report, kind: OpKind) -> (u64, u64, u64, u64) {
        let c = report
            .operations
            .iter()
            .find(|c| c.kind == kind)
            .expect("every kind is counted");
        (c.ok, c.fail, c.info, c.pending)
    }

    /// Worker 1, then 2, then 1 again, each finishing before the next starts.
    fn sequential() -> History {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.turn(2, 1000, 11, 1);
        h.turn(1, 2000, 12, 2);
        h
    }

    /// The lost update write-only fencing lets through, after two clean turns: worker 1
    /// (token 5) reads 2 and freezes; its lease expires; worker 2 (token 6) reads 2 too;
    /// worker 1 wakes up and writes 3 (accepted: 5 is the highest write token yet); worker
    /// 2 writes 3 (accepted).
    fn frozen_reader() -> History {
        let mut h = sequential();
        h.lock(1, 3000, 3010, 0xa, 15);
        h.key(3010, 0xa, 15, KeyChange::Created);
        h.read(1, 3020, 3030, 15, 3);
        h.fault(1, FaultKind::FreezeAfterRead, Target::Worker(1), 3030, 6000);
        h.key(5030, 0xa, 15, KeyChange::Deleted);
        h.lock(2, 4000, 5040, 0xb, 16);
        h.key(5040, 0xb, 16, KeyChange::Created);
        h.read(2, 5050, 5060, 16, 3);
        h.write(1, 6000, 6010, 15, 4);
        h.unlock(1, 6100, 6110);
        h.write(2, 6500, 6510, 16, 4);
        h.unlock(2, 6600, 6610);
        h.key(6610, 0xb, 16, KeyChange::Deleted);
        h
    }

    #[test]
    fn a_clean_sequential_history_is_valid() {
        let report = analyse(&sequential().input(Policy::Strict, Some(3), 3000));
        assert_eq!(report.lost_updates, no_lost());
        assert_eq!(report.backwards_tokens, vec![]);
        assert_eq!(report.overlaps, no_overlap());
        assert_eq!(report.acknowledged_increments, 3);
        assert_eq!(report.unknown_writes, 0);
        assert_eq!(counts(&report, OpKind::Lock), (3, 0, 0, 0));
        assert_eq!(counts(&report, OpKind::Write), (3, 0, 0, 0));
        assert_eq!(report.stale_rejections, StaleRejections::default());
        assert_eq!(report.other_failures, vec![]);
        assert_eq!(report.lease_expiries, vec![]);
        assert_eq!(report.fenced_accesses, vec![OpKind::Read, OpKind::Write]);
        assert!(report.claims_safety && report.valid());
        assert_eq!(report.violations(), 0);
        assert_eq!(report.verdict, "valid: no lost update, no backwards token");
        assert_eq!(report.duration_s, 3.0);
    }

    #[test]
    fn write_only_fencing_loses_the_update_of_a_frozen_reader() {
        let report = analyse(&frozen_reader().input(Policy::Writes, Some(4), 7000));
        // 5 acknowledged writes of 1, 2, 3, 4, 4: the counter moved 4 times.
        assert_eq!(report.acknowledged_increments, 5);
        assert_eq!(
            report.lost_updates,
            LostUpdates {
                count: 1,
                share: 0.2,
                duplicate_lost: 1,
                shortfall: 0,
                duplicates: vec![DuplicateWrite {
                    value: 4,
                    writes: vec![
                        WriteRef {
                            worker: 1,
                            op: 11,
                            token: Some(15),
                            read: Some(3),
                            at_s: 6.01,
                        },
                        WriteRef {
                            worker: 2,
                            op: 7,
                            token: Some(16),
                            read: Some(3),
                            at_s: 6.51,
                        },
                    ],
                    lost: 1,
                }],
                details: vec![
                    "duplicate value 4 written by workers 1 (token 15) and 2 (token 16), all \
                     read 3"
                        .to_owned()
                ],
            }
        );
        // Only writes move the fence under `writes`: worker 2's read of token 16 does not.
        assert_eq!(report.fenced_accesses, vec![OpKind::Write]);
        assert_eq!(report.backwards_tokens, vec![]);
        assert_eq!(
            report.overlaps,
            Overlaps {
                total_s: 1.06,
                intervals: vec![Overlap {
                    start_s: 5.04,
                    duration_s: 1.06,
                    holders: vec![
                        Holder {
                            worker: 1,
                            token: Some(15)
                        },
                        Holder {
                            worker: 2,
                            token: Some(16)
                        },
                    ],
                }],
            }
        );
        assert_eq!(
            report.lease_expiries,
            vec![LeaseExpiry {
                at_s: 5.03,
                key: "/lock/a".into(),
                lease: Some(0xa),
                token: 15,
                worker: Some(1),
                held: true,
                revoked: false,
            }]
        );
        assert_eq!(
            report.faults,
            vec![FaultCount {
                fault: FaultKind::FreezeAfterRead,
                count: 1
            }]
        );
        assert_eq!(report.fault_spans[0].end_s, Some(6.0));
        assert!(!report.claims_safety && report.valid());
        assert_eq!(report.violations(), 0);
        assert_eq!(
            report.verdict,
            "not claimed safe (writes): 1 lost update, 0 backwards tokens"
        );
    }

    #[test]
    fn a_lost_update_under_strict_is_a_violation() {
        let report = analyse(&frozen_reader().input(Policy::Strict, Some(4), 7000));
        assert_eq!(report.lost_updates.count, 1);
        // Worker 2's read raised a strict fence to 16 before worker 1 wrote with 15.
        assert_eq!(report.backwards_tokens.len(), 1);
        assert!(!report.valid());
        assert_eq!(report.violations(), 2);
    }

    /// Worker 2 (token 6) reads before worker 1 (token 5) writes, and both are accepted.
    fn write_after_newer_read() -> History {
        let mut h = History::default();
        h.lock(1, 0, 10, 0xa, 5);
        h.lock(2, 900, 910, 0xb, 6);
        h.read(2, 1000, 1010, 6, 0);
        h.unlock(2, 1100, 1110);
        h.write(1, 2000, 2010, 5, 1);
        h.unlock(1, 2100, 2110);
        h
    }

    #[test]
    fn a_token_accepted_after_a_higher_one_under_strict_is_a_backwards_token() {
        let report = analyse(&write_after_newer_read().input(Policy::Strict, Some(1), 3000));
        assert_eq!(
            report.backwards_tokens,
            vec![BackwardsToken {
                worker: 1,
                op: 2,
                f: OpKind::Write,
                token: 5,
                invoked_s: 2.0,
                fence_token: 6,
                fence_worker: 2,
                fence_op: 2,
                fence_at_s: 1.01,
            }]
        );
        assert_eq!(report.lost_updates, no_lost());
        assert_eq!(report.overlaps.intervals.len(), 1);
        assert!(!report.valid());
        assert_eq!(report.violations(), 1);
        assert_eq!(
            report.verdict,
            "invalid: 0 lost updates, 1 backwards token under strict fencing"
        );
    }

    #[test]
    fn reads_do_not_move_the_fence_under_write_only_fencing() {
        let report = analyse(&write_after_newer_read().input(Policy::Writes, Some(1), 3000));
        assert_eq!(report.backwards_tokens, vec![]);
        let off = analyse(&write_after_newer_read().input(Policy::Off, Some(1), 3000));
        assert_eq!(off.fenced_accesses, vec![OpKind::Write]);
        assert_eq!(off.backwards_tokens, vec![]);
    }

    #[test]
    fn operations_that_overlap_in_time_are_not_ordered() {
        let mut h = History::default();
        h.write(2, 0, 500, 6, 1);
        h.write(1, 400, 600, 5, 2);
        let report = analyse(&h.input(Policy::Strict, Some(2), 1000));
        assert_eq!(report.backwards_tokens, vec![]);
    }

    #[test]
    fn two_holders_at_once_are_reported_as_exactly_that_overlap() {
        let mut h = History::default();
        h.lock(1, 0, 10, 0xa, 5);
        h.lock(2, 500, 1010, 0xb, 6);
        h.unlock(2, 2000, 2010);
        h.unlock(1, 3000, 3010);
        h.lock(3, 2900, 3010, 0xc, 7);
        h.unlock(3, 4000, 4010);
        let report = analyse(&h.input(Policy::Strict, None, 5000));
        assert_eq!(
            report.overlaps,
            Overlaps {
                total_s: 0.99,
                intervals: vec![Overlap {
                    start_s: 1.01,
                    duration_s: 0.99,
                    holders: vec![
                        Holder {
                            worker: 1,
                            token: Some(5)
                        },
                        Holder {
                            worker: 2,
                            token: Some(6)
                        },
                    ],
                }],
            }
        );
    }

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
    fn unknown_writes_are_counted_apart_and_never_as_lost() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.lock(2, 1000, 1010, 0xb, 11);
        h.read(2, 1020, 1030, 11, 1);
        h.op(
            2,
            OpKind::Write,
            1100,
            1200,
            End::Info,
            Some(11),
            Some(2),
            Some("connection reset"),
        );
        h.unlock(2, 1300, 1310);
        h.lock(1, 2000, 2010, 0xc, 12);
        h.read(1, 2020, 2030, 12, 2);
        h.op(
            1,
            OpKind::Write,
            2100,
            0,
            End::Never,
            Some(12),
            Some(3),
            None,
        );
        // The info write took effect, the last one is unknown: final 2 with 1 acknowledged.
        let report = analyse(&h.input(Policy::Strict, Some(2), 3000));
        assert_eq!(report.acknowledged_increments, 1);
        assert_eq!(report.unknown_writes, 2);
        assert_eq!(counts(&report, OpKind::Write), (1, 0, 1, 1));
        assert_eq!(report.lost_updates, no_lost());
        assert_eq!(
            report.other_failures,
            vec![FailureGroup {
                kind: OpKind::Write,
                fail: 0,
                info: 1,
                examples: vec!["connection reset".into()],
            }]
        );
        assert!(report.valid());
    }

    #[test]
    fn a_final_counter_below_the_acknowledged_increments_is_a_shortfall() {
        let report = analyse(&sequential().input(Policy::Strict, Some(1), 3000));
        assert_eq!(
            report.lost_updates,
            LostUpdates {
                count: 2,
                share: 2.0 / 3.0,
                duplicate_lost: 0,
                shortfall: 2,
                duplicates: vec![],
                details: vec![
                    "final counter 1 below the 3 acknowledged increments left after duplicates \
                     (3 acknowledged)"
                        .to_owned()
                ],
            }
        );
        assert!(!report.valid());
    }

    #[test]
    fn duplicates_and_a_shortfall_are_not_counted_twice() {
        // Acknowledged: 1, 2, 3, 4, 4. Final 4: the duplicate explains the whole gap.
        let report = analyse(&frozen_reader().input(Policy::Writes, Some(4), 7000));
        assert_eq!(
            (report.lost_updates.count, report.lost_updates.shortfall),
            (1, 0)
        );
        // Final 3: one more increment is missing beyond the duplicate.
        let report = analyse(&frozen_reader().input(Policy::Writes, Some(3), 7000));
        let lost = &report.lost_updates;
        assert_eq!((lost.count, lost.duplicate_lost, lost.shortfall), (2, 1, 1));
        // No final value: only the duplicate can be seen.
        let report = analyse(&frozen_reader().input(Policy::Writes, None, 7000));
        assert_eq!(
            (report.lost_updates.count, report.lost_updates.shortfall),
            (1, 0)
        );
    }

    #[test]
    fn stale_rejections_are_counted_by_access_and_other_failures_by_kind() {
        let mut h = History::default();
        h.lock(1, 0, 10, 0xa, 5);
        h.op(
            1,
            OpKind::Read,
            20,
            30,
            End::Stale,
            Some(5),
            None,
            Some("stale"),
        );
        h.op(
            1,
            OpKind::Write,
            40,
            50,
            End::Stale,
            Some(5),
            Some(1),
            Some("stale"),
        );
        h.op(
            2,
            OpKind::Read,
            60,
            70,
            End::Stale,
            Some(4),
            None,
            Some("stale"),
        );
        h.op(
            2,
            OpKind::Write,
            80,
            90,
            End::Fail,
            Some(4),
            Some(1),
            Some("refused"),
        );
        h.op(
            2,
            OpKind::Write,
            80,
            90,
            End::Fail,
            Some(4),
            Some(1),
            Some("refused"),
        );
        h.op(
            3,
            OpKind::Lock,
            80,
            90,
            End::Fail,
            None,
            None,
            Some("no leader"),
        );
        let report = analyse(&h.input(Policy::Strict, Some(0), 1000));
        assert_eq!(
            report.stale_rejections,
            StaleRejections {
                reads: 2,
                writes: 1
            }
        );
        assert_eq!(
            report.other_failures,
            vec![
                FailureGroup {
                    kind: OpKind::Lock,
                    fail: 1,
                    info: 0,
                    examples: vec!["no leader".into()],
                },
                FailureGroup {
                    kind: OpKind::Write,
                    fail: 2,
                    info: 0,
                    examples: vec!["refused".into()],
                },
            ]
        );
        assert_eq!(report.lost_updates, no_lost());
        assert!(report.valid());
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

    #[test]
    fn a_key_released_by_its_owner_is_no_expiry_and_a_revoked_one_says_so() {
        let mut h = History::default();
        h.lock(1, 0, 10, 0xa, 5);
        h.key(10, 0xa, 5, KeyChange::Created);
        h.unlock(1, 100, 110);
        h.key(110, 0xa, 5, KeyChange::Deleted);
        h.lock(2, 200, 210, 0xb, 6);
        h.key(210, 0xb, 6, KeyChange::Created);
        h.faults.push(FaultEvent {
            id: 1,
            fault: FaultKind::Revoke,
            target: Target::Worker(2),
            start_mono_ns: at(300),
            end_mono_ns: Some(at(300)),
            wall_ms: 0,
            lease: Some(0xb),
            note: None,
        });
        h.key(301, 0xb, 6, KeyChange::Deleted);
        let report = analyse(&h.input(Policy::Strict, None, 1000));
        assert_eq!(
            report.lease_expiries,
            vec![LeaseExpiry {
                at_s: 0.301,
                key: "/lock/b".into(),
                lease: Some(0xb),
                token: 6,
                worker: Some(2),
                held: true,
                revoked: true,
            }]
        );
    }

    #[test]
    fn the_report_serialises_to_json_for_the_json_flag() {
        let report = analyse(&frozen_reader().input(Policy::Writes, Some(4), 7000));
        let json = serde_json::to_value(&report).expect("a report is plain data");
        assert_eq!(json["policy"], "writes");
        assert_eq!(json["valid"], true);
        assert_eq!(json["claims_safety"], false);
        assert_eq!(json["lost_updates"]["count"], 1);
        assert_eq!(
            json["lost_updates"]["duplicates"][0]["writes"][1]["worker"],
            2
        );
        assert_eq!(json["operations"][1]["kind"], "lock");
        assert_eq!(json["fault_spans"][0]["fault"], "freeze-after-read");
        assert_eq!(json["fault_spans"][0]["target"]["kind"], "worker");
        assert_eq!(json["overlaps"]["intervals"][0]["duration_s"], 1.06);
    }

    #[test]
    fn summary_table_has_one_aligned_column_per_label() {
        let strict = analyse(&sequential().input(Policy::Strict, Some(3), 3000));
        let writes = analyse(&frozen_reader().input(Policy::Writes, Some(4), 7000));
        let table = summary_table(&[("strict", &strict), ("writes", &writes)]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].ends_with("strict       writes"), "{table}");
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        let row = |name: &str| {
            lines
                .iter()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        };
        assert_eq!(row("verdict").as_deref(), Some("verdict valid not claimed"));
        assert_eq!(
            row("lost updates").as_deref(),
            Some("lost updates 0 (0.0%) 1 (20.0%)")
        );
        assert_eq!(
            row("acknowledged").as_deref(),
            Some("acknowledged increments 3 5")
        );
        assert_eq!(
            row("overlapping").as_deref(),
            Some("overlapping holders 0 (0.0 s) 1 (1.1 s)")
        );
    }
}
