//! The rules: what [`analyse`] finds in the operations of one run (for the counter workload
//! lost updates, stale reads, a final counter below an acknowledged value; for both workloads
//! fencing tokens accepted out of order, acquisitions out of token order, overlapping
//! holders, stale rejections, other failures, lease expiries) and the verdict. The set
//! workload's own rules are in `set.rs`.
//!
//! Invariants this file owns:
//! - the counter rules run on counter histories only, the set rules on set histories only;
//!   the rules of the lock and the fence run on both;
//! - an acknowledged increment (a write completed `ok`) is counted lost at most once, however
//!   many rules see it (see [`LostUpdates`]);
//! - a write whose outcome is unknown (`info`, or no completion) is never counted as
//!   acknowledged nor as lost, as Jepsen does: it is counted apart;
//! - which accesses move the fence is asked of [`fence::check`], never re-derived here;
//! - the counter rules that need a fence on reads (stale reads) apply only under a policy
//!   whose fence checks reads; the others apply under every policy and count as violations
//!   only under one that claims safety.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use super::ops::{FaultSpan, Hold, Input, Op, Outcome, fault_spans, holds, operations, secs};
use super::report::{
    AckedWrite, Acquisition, BackwardsToken, CounterFindings, DuplicateWrite, FailureGroup,
    FaultCount, FinalBelow, Holder, LeaseExpiry, LostUpdates, OpCounts, Overlap, Overlaps, Report,
    StaleRead, StaleRejections, TokenOrder, WriteRef, show,
};
use super::set;
use crate::check::history::{self, FaultKind, KeyChange, OpKind, Resource, Target, Workload};
use fencelock::FencingToken;
use fencelock::storage::fence::{self, Access, Policy};

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

const ALL_FAULTS: [FaultKind; 12] = [
    FaultKind::FreezeHolder,
    FaultKind::FreezeAfterRead,
    FaultKind::Revoke,
    FaultKind::FreezeLockService,
    FaultKind::KillStorage,
    FaultKind::KillMember,
    FaultKind::KillPostgres,
    FaultKind::IsolateHolder,
    FaultKind::ClockSkew,
    FaultKind::IsolateStorage,
    FaultKind::PartitionLeader,
    FaultKind::PartitionHalves,
];

/// How often `fault` came, and the reads and writes it touched: in progress while one of
/// its spans lasted (a span or an operation still open at the end lasts to the run's end).
fn fault_count(input: &Input, ops: &[Op], spans: &[FaultSpan], fault: FaultKind) -> FaultCount {
    let end_s = secs(input, input.end_mono_ns);
    let spans: Vec<&FaultSpan> = spans.iter().filter(|s| s.fault == fault).collect();
    let touched: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.f, OpKind::Read | OpKind::Write))
        .filter(|op| {
            let from = secs(input, op.invoke_ns);
            let to = op.complete_ns.map_or(end_s, |ns| secs(input, ns));
            spans.iter().any(|s| {
                let worker_ok = match s.target {
                    Target::Worker(w) => w == op.worker,
                    _ => true,
                };
                worker_ok && from <= s.end_s.unwrap_or(end_s) && s.start_s <= to
            })
        })
        .collect();
    FaultCount {
        fault,
        count: spans.len() as u64,
        operations: touched.len() as u64,
        stale: touched
            .iter()
            .filter(|op| op.outcome == Outcome::Fail && op.stale)
            .count() as u64,
        unknown: touched
            .iter()
            .filter(|op| matches!(op.outcome, Outcome::Info | Outcome::Pending))
            .count() as u64,
    }
}

/// Whether `policy` checks `access` against the fence, asked of the fence rule itself: a
/// checked access presenting a token below the fence is refused. On the etcd resource only
/// writes are fenced (a Txn guarded by the holder's lock key); its reads are plain gets.
fn fenced(policy: Policy, resource: Resource, access: Access) -> bool {
    if resource == Resource::Etcd && access == Access::Read {
        return false;
    }
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
fn fenced_accesses(policy: Policy, resource: Resource) -> Vec<OpKind> {
    let mut kinds: Vec<OpKind> = [(Access::Read, OpKind::Read), (Access::Write, OpKind::Write)]
        .into_iter()
        .filter(|(access, _)| fenced(policy, resource, *access))
        .map(|(_, kind)| kind)
        .collect();
    if kinds.is_empty() {
        kinds.push(OpKind::Write);
    }
    kinds
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

    let fenced_accesses = fenced_accesses(input.policy, input.resource);
    let backwards_tokens = backwards_tokens(input, &ops, &fenced_accesses);
    let token_order = token_order(input, &ops);
    let (counter, set) = match input.workload {
        Workload::Counter => (Some(counter_findings(input, &ops)), None),
        Workload::Set => (None, Some(set::findings(input, &ops))),
    };
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
        .map(|&fault| fault_count(input, &ops, &fault_spans, fault))
        .filter(|c| c.count > 0)
        .collect();
    let lease_expiries = lease_expiries(input, &ops, &holds);

    let claims_safety = input.policy == Policy::Strict;
    let mut report = Report {
        policy: input.policy.to_string(),
        claims_safety,
        valid: true,
        verdict: String::new(),
        duration_s: secs(input, input.end_mono_ns),
        operations,
        history,
        workload: input.workload,
        counter,
        set,
        fenced_accesses,
        backwards_tokens,
        token_order,
        overlaps,
        stale_rejections,
        other_failures,
        faults,
        fault_spans,
        lease_expiries,
    };
    report.valid = !claims_safety || report.anomalies() == 0;
    report.verdict = verdict(&report, input.policy);
    report
}

/// The counter rules' findings.
fn counter_findings(input: &Input, ops: &[Op]) -> CounterFindings {
    let writes = || ops.iter().filter(|o| o.f == OpKind::Write);
    let acknowledged_increments = writes().filter(|o| o.outcome == Outcome::Ok).count() as u64;
    let unknown_writes = writes()
        .filter(|o| matches!(o.outcome, Outcome::Info | Outcome::Pending))
        .count() as u64;
    let reads_checked = fenced(input.policy, input.resource, Access::Read);
    CounterFindings {
        acknowledged_increments,
        unknown_writes,
        final_value: input.final_value,
        lost_updates: lost_updates(input, ops, acknowledged_increments),
        reads_checked,
        stale_reads: if reads_checked {
            stale_reads(input, ops)
        } else {
            Vec::new()
        },
        final_below_acknowledged: final_below_acknowledged(input, ops),
    }
}

/// One line for people: the two findings every run has (lost updates or lost elements, and
/// backwards tokens), then the rarer ones found.
fn verdict(report: &Report, policy: Policy) -> String {
    let backwards = report.backwards_tokens.len() as u64;
    let mut found = match (&report.counter, &report.set) {
        (Some(counter), _) => {
            let lost = counter.lost_updates.count;
            format!("{lost} lost update{}", plural(lost))
        }
        (None, Some(set)) => {
            let lost = set.lost.len() as u64;
            format!("{lost} lost element{}", plural(lost))
        }
        (None, None) => String::new(),
    };
    let _ = write!(found, ", {backwards} backwards token{}", plural(backwards));
    let out_of_order = report.token_order.len() as u64;
    if out_of_order > 0 {
        let _ = write!(
            found,
            ", {out_of_order} acquisition{} out of token order",
            plural(out_of_order)
        );
    }
    if let Some(counter) = &report.counter {
        let stale = counter.stale_reads.len() as u64;
        if stale > 0 {
            let _ = write!(found, ", {stale} stale read{}", plural(stale));
        }
        if let Some(below) = &counter.final_below_acknowledged {
            let _ = write!(
                found,
                ", final counter {} below the acknowledged {}",
                below.final_value, below.write.value
            );
        }
    }
    if let Some(set) = &report.set {
        let phantoms = set.phantoms.len() as u64;
        if phantoms > 0 {
            let _ = write!(found, ", {phantoms} phantom element{}", plural(phantoms));
        }
    }
    match (report.claims_safety, report.valid) {
        (true, true) if report.set.is_some() => {
            "valid: no lost element, no phantom, no backwards token".to_owned()
        }
        (true, true) => "valid: no lost update, no backwards token".to_owned(),
        (true, false) => format!("invalid: {found} under {policy} fencing"),
        (false, _) => format!("not claimed safe ({policy}): {found}"),
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

/// The fenced-mutex model: acquisitions of the lock, in the order they completed, carry
/// strictly increasing tokens. A run checks one lock name, so every `lock` in it is of that
/// name. Each acquisition is held against the highest-token one completed strictly before
/// it; acquisitions completed at the same instant are not ordered.
fn token_order(input: &Input, ops: &[Op]) -> Vec<TokenOrder> {
    let mut acquired: Vec<&Op> = ops
        .iter()
        .filter(|o| o.f == OpKind::Lock && o.outcome == Outcome::Ok && o.token.is_some())
        .collect();
    // Real-time order: an acquisition must carry a newer token than every acquisition that
    // completed before it was invoked. Two that overlap (one invoked before the other
    // completed, e.g. a waiter frozen with its answer in flight) may complete in either
    // order.
    acquired.sort_by_key(|o| (o.at_ns(), o.worker, o.op));
    let mut by_invocation = acquired.clone();
    by_invocation.sort_by_key(|o| (o.invoke_ns, o.worker, o.op));
    let acquisition = |o: &Op| Acquisition {
        worker: o.worker,
        op: o.op,
        token: o.token.unwrap_or(0),
        invoked_s: secs(input, o.invoke_ns),
        acquired_s: secs(input, o.at_ns()),
    };
    let mut found = Vec::new();
    let mut highest: Option<&Op> = None;
    let mut next = acquired.iter().peekable();
    for op in &by_invocation {
        while let Some(done) = next.next_if(|d| d.at_ns() < op.invoke_ns) {
            if highest.is_none_or(|h| done.token > h.token) {
                highest = Some(done);
            }
        }
        if let Some(earlier) = highest
            && op.token <= earlier.token
        {
            found.push(TokenOrder {
                earlier: acquisition(earlier),
                later: acquisition(op),
            });
        }
    }
    found
}

/// Acknowledged writes that carry a value, as the report shows them.
fn acked_writes<'a>(input: &'a Input, ops: &'a [Op]) -> impl Iterator<Item = (&'a Op, AckedWrite)> {
    ops.iter()
        .filter(|o| o.f == OpKind::Write && o.outcome == Outcome::Ok)
        .filter_map(move |o| {
            let value = o.value?;
            Some((
                o,
                AckedWrite {
                    worker: o.worker,
                    op: o.op,
                    token: o.token,
                    value,
                    at_s: secs(input, o.at_ns()),
                },
            ))
        })
}

/// A read invoked after an acknowledged write of `v` completed must see at least `v`: the
/// counter only grows while every stale holder's request is refused. Unlike the duplicate
/// rule this sees a lost update whose overwriting write's value nobody else wrote, and
/// unlike the shortfall it cannot be hidden by unknown writes that took effect later. Only
/// acknowledged reads and writes take part; each read is held against the largest value
/// acknowledged before it was invoked.
fn stale_reads(input: &Input, ops: &[Op]) -> Vec<StaleRead> {
    let mut writes: Vec<(&Op, AckedWrite)> = acked_writes(input, ops).collect();
    writes.sort_by_key(|(o, _)| (o.at_ns(), o.worker, o.op));
    let mut reads: Vec<&Op> = ops
        .iter()
        .filter(|o| o.f == OpKind::Read && o.outcome == Outcome::Ok && o.value.is_some())
        .collect();
    reads.sort_by_key(|o| (o.invoke_ns, o.worker, o.op));
    let mut found = Vec::new();
    let mut largest: Option<&AckedWrite> = None;
    let mut next = writes.iter().peekable();
    for read in reads {
        while let Some((_, done)) = next.next_if(|(w, _)| w.at_ns() < read.invoke_ns) {
            if largest.is_none_or(|l| done.value > l.value) {
                largest = Some(done);
            }
        }
        let (Some(write), Some(value)) = (largest, read.value) else {
            continue;
        };
        if value < write.value {
            found.push(StaleRead {
                worker: read.worker,
                op: read.op,
                token: read.token,
                value,
                invoked_s: secs(input, read.invoke_ns),
                write: write.clone(),
            });
        }
    }
    found
}

/// The final counter must be at least the largest acknowledged value: the counter reached
/// it, and under strict fencing no accepted write lowers it again. Unknown writes that took effect
/// only raise the counter, so they cannot hide this the way they hide a shortfall.
fn final_below_acknowledged(input: &Input, ops: &[Op]) -> Option<FinalBelow> {
    let final_value = input.final_value?;
    let (_, write) = acked_writes(input, ops)
        .min_by_key(|(o, w)| (std::cmp::Reverse(w.value), o.at_ns(), o.worker, o.op))?;
    (final_value < write.value).then_some(FinalBelow { final_value, write })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::analysis::fixtures::{End, History, at, frozen_reader, sequential};
    use crate::check::history::{FaultEvent, Target};

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

    #[test]
    fn a_clean_sequential_history_is_valid() {
        let report = analyse(&sequential().input(Policy::Strict, Some(3), 3000));
        assert_eq!(report.counter().lost_updates, no_lost());
        assert_eq!(report.backwards_tokens, vec![]);
        assert_eq!(report.overlaps, no_overlap());
        assert_eq!(report.counter().acknowledged_increments, 3);
        assert_eq!(report.counter().unknown_writes, 0);
        assert_eq!(counts(&report, OpKind::Lock), (3, 0, 0, 0));
        assert_eq!(counts(&report, OpKind::Write), (3, 0, 0, 0));
        assert_eq!(report.stale_rejections, StaleRejections::default());
        assert_eq!(report.other_failures, vec![]);
        assert_eq!(report.lease_expiries, vec![]);
        assert_eq!(report.fenced_accesses, vec![OpKind::Read, OpKind::Write]);
        assert_eq!(report.token_order, vec![]);
        assert!(report.counter().reads_checked);
        assert_eq!(report.counter().stale_reads, vec![]);
        assert_eq!(report.counter().final_below_acknowledged, None);
        assert!(report.claims_safety && report.valid());
        assert_eq!(report.violations(), 0);
        assert_eq!(report.verdict, "valid: no lost update, no backwards token");
        assert_eq!(report.duration_s, 3.0);
    }

    #[test]
    fn write_only_fencing_loses_the_update_of_a_frozen_reader() {
        let report = analyse(&frozen_reader().input(Policy::Writes, Some(4), 7000));
        // 5 acknowledged writes of 1, 2, 3, 4, 4: the counter moved 4 times.
        assert_eq!(report.counter().acknowledged_increments, 5);
        assert_eq!(
            report.counter().lost_updates,
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
                count: 1,
                operations: 2,
                stale: 0,
                unknown: 0,
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
        assert_eq!(report.counter().lost_updates.count, 1);
        // Worker 2's read raised a strict fence to 16 before worker 1 wrote with 15.
        assert_eq!(report.backwards_tokens.len(), 1);
        assert!(!report.valid());
        assert_eq!(report.violations(), 2);
    }

    #[test]
    fn on_keys_in_the_lock_service_only_writes_are_held_to_the_fence() {
        // Worker 2 (token 6) writes; then worker 1 (token 5) reads (a plain get, which the etcd
        // adapter does not fence) and writes (refused there, but accepted in this history).
        let mut h = History::default();
        h.op(2, OpKind::Write, 100, 110, End::Ok, Some(6), Some(1), None);
        h.op(1, OpKind::Read, 200, 210, End::Ok, Some(5), Some(1), None);
        let read_only = Input {
            resource: Resource::Etcd,
            ..h.input(Policy::Strict, Some(1), 1000)
        };
        let etcd = analyse(&read_only);
        assert_eq!(etcd.fenced_accesses, vec![OpKind::Write]);
        assert_eq!(etcd.backwards_tokens, vec![]);
        assert!(etcd.valid());
        let storage = analyse(&h.input(Policy::Strict, Some(1), 1000));
        assert_eq!(
            storage.backwards_tokens.len(),
            1,
            "a strict storage fences reads"
        );

        h.op(1, OpKind::Write, 300, 310, End::Ok, Some(5), Some(2), None);
        let late_write = Input {
            resource: Resource::Etcd,
            ..h.input(Policy::Strict, Some(2), 1000)
        };
        let etcd = analyse(&late_write);
        assert_eq!(
            etcd.backwards_tokens.len(),
            1,
            "{:?}",
            etcd.backwards_tokens
        );
        assert_eq!(etcd.backwards_tokens[0].f, OpKind::Write);
        assert!(!etcd.valid());
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
        assert_eq!(report.counter().lost_updates, no_lost());
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
        assert_eq!(report.counter().acknowledged_increments, 1);
        assert_eq!(report.counter().unknown_writes, 2);
        assert_eq!(counts(&report, OpKind::Write), (1, 0, 1, 1));
        assert_eq!(report.counter().lost_updates, no_lost());
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
    fn acquisitions_that_overlap_in_time_may_complete_out_of_token_order() {
        let mut h = History::default();
        // Worker 1 asks first and gets 10, but its answer arrives after worker 2, who asked
        // while worker 1 was still waiting for it, got 12 and let go.
        h.lock(1, 0, 3000, 0x10a, 10);
        h.unlock(1, 3100, 3200);
        h.turn(2, 1000, 12, 0);
        let report = analyse(&h.input(Policy::Strict, Some(1), 4000));
        assert_eq!(report.token_order, vec![]);
    }

    #[test]
    fn an_acquisition_completed_later_with_a_lower_token_is_out_of_token_order() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.turn(2, 1000, 12, 1);
        // Granted after worker 2's acquisition of 12 completed, yet with token 11; the
        // fence refuses its read.
        h.lock(3, 2000, 2010, 0x10b, 11);
        h.op(
            3,
            OpKind::Read,
            2020,
            2030,
            End::Stale,
            Some(11),
            None,
            Some("stale"),
        );
        h.unlock(3, 2050, 2060);
        h.turn(1, 3000, 13, 2);
        let report = analyse(&h.input(Policy::Strict, Some(3), 4000));
        assert_eq!(
            report.token_order,
            vec![TokenOrder {
                earlier: Acquisition {
                    worker: 2,
                    op: 1,
                    token: 12,
                    invoked_s: 1.0,
                    acquired_s: 1.01,
                },
                later: Acquisition {
                    worker: 3,
                    op: 1,
                    token: 11,
                    invoked_s: 2.0,
                    acquired_s: 2.01,
                },
            }]
        );
        assert_eq!(report.counter().lost_updates, no_lost());
        assert_eq!(report.counter().stale_reads, vec![]);
        assert_eq!(report.counter().final_below_acknowledged, None);
        assert!(!report.valid());
        assert_eq!(report.violations(), 1);
        assert_eq!(
            report.verdict,
            "invalid: 0 lost updates, 0 backwards tokens, 1 acquisition out of token order \
             under strict fencing"
        );
    }

    #[test]
    fn an_acquisition_with_the_token_of_an_earlier_one_is_out_of_token_order() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.turn(2, 1000, 10, 1);
        let report = analyse(&h.input(Policy::Writes, Some(2), 2000));
        let pairs: Vec<((u32, u64), (u32, u64))> = report
            .token_order
            .iter()
            .map(|t| {
                (
                    (t.earlier.worker, t.earlier.token),
                    (t.later.worker, t.later.token),
                )
            })
            .collect();
        assert_eq!(pairs, vec![((1, 10), (2, 10))]);
        // Not claimed by the storage's policy: reported, not a violation of it.
        assert!(report.valid());
        assert_eq!(
            report.verdict,
            "not claimed safe (writes): 0 lost updates, 0 backwards tokens, 1 acquisition out \
             of token order"
        );
    }

    /// Worker 2's increment to 2 ends unknown but took effect; worker 1 builds 3 on it;
    /// worker 2 then reads 1, below the acknowledged 3, and writes 2: the acknowledged 3 is
    /// lost, and no acknowledged value repeats.
    fn stale_read_without_duplicate() -> History {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.lock(2, 1000, 1010, 0x10b, 11);
        h.read(2, 1020, 1030, 11, 1);
        h.op(
            2,
            OpKind::Write,
            1200,
            1210,
            End::Info,
            Some(11),
            Some(2),
            Some("storage answered 503 Service Unavailable: store_failed: commit failed"),
        );
        h.unlock(2, 1250, 1260);
        h.turn(1, 2000, 12, 2);
        h.turn(2, 3000, 13, 1);
        h
    }

    #[test]
    fn a_stale_read_shows_a_lost_update_that_left_no_duplicate_value() {
        // The counter could not be read at the end, so no shortfall can be computed.
        let report = analyse(&stale_read_without_duplicate().input(Policy::Strict, None, 4000));
        assert_eq!(report.counter().acknowledged_increments, 3);
        assert_eq!(report.counter().lost_updates, no_lost());
        assert_eq!(
            report.counter().stale_reads,
            vec![StaleRead {
                worker: 2,
                op: 6,
                token: Some(13),
                value: 1,
                invoked_s: 3.02,
                write: AckedWrite {
                    worker: 1,
                    op: 7,
                    token: Some(12),
                    value: 3,
                    at_s: 2.21,
                },
            }]
        );
        assert_eq!(report.backwards_tokens, vec![]);
        assert_eq!(report.token_order, vec![]);
        assert_eq!(report.counter().final_below_acknowledged, None);
        assert!(!report.valid());
        assert_eq!(report.violations(), 1);
        assert_eq!(
            report.verdict,
            "invalid: 0 lost updates, 0 backwards tokens, 1 stale read under strict fencing"
        );
    }

    #[test]
    fn reads_are_held_to_acknowledged_writes_only_under_a_policy_that_fences_them() {
        let report = analyse(&stale_read_without_duplicate().input(Policy::Writes, None, 4000));
        assert!(!report.counter().reads_checked);
        assert_eq!(report.counter().stale_reads, vec![]);
        assert_eq!(report.fenced_accesses, vec![OpKind::Write]);
    }

    #[test]
    fn unknown_writes_that_raised_the_counter_do_not_hide_a_lost_acknowledged_value() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        for (worker, from, token, read) in [(2, 1000, 11, 1), (3, 2000, 12, 2)] {
            h.lock(worker, from, from + 10, 0x100 + token as i64, token);
            h.read(worker, from + 20, from + 30, token, read);
            h.op(
                worker,
                OpKind::Write,
                from + 200,
                from + 210,
                End::Info,
                Some(token),
                Some(read + 1),
                Some("storage request failed: operation timed out"),
            );
            h.unlock(worker, from + 250, from + 260);
        }
        h.turn(1, 3000, 13, 3);
        // The acknowledged 4 is gone; the unknown writes leave the counter at 3, above the
        // 2 acknowledged increments, so the shortfall sees nothing.
        let report = analyse(&h.input(Policy::Strict, Some(3), 4000));
        assert_eq!(report.counter().acknowledged_increments, 2);
        assert_eq!(report.counter().unknown_writes, 2);
        assert_eq!(report.counter().lost_updates, no_lost());
        assert_eq!(report.counter().stale_reads, vec![]);
        assert_eq!(
            report.counter().final_below_acknowledged,
            Some(FinalBelow {
                final_value: 3,
                write: AckedWrite {
                    worker: 1,
                    op: 7,
                    token: Some(13),
                    value: 4,
                    at_s: 3.21,
                },
            })
        );
        assert!(!report.valid());
        assert_eq!(report.violations(), 1);
        assert_eq!(
            report.verdict,
            "invalid: 0 lost updates, 0 backwards tokens, final counter 3 below the \
             acknowledged 4 under strict fencing"
        );
    }

    #[test]
    fn a_failed_commit_recorded_as_a_failure_is_read_back_as_unknown_but_busy_stays_a_failure() {
        let mut h = History::default();
        h.turn(1, 0, 10, 0);
        h.lock(2, 1000, 1010, 0x10b, 11);
        h.read(2, 1020, 1030, 11, 1);
        h.op(
            2,
            OpKind::Write,
            1200,
            1210,
            End::Fail,
            Some(11),
            Some(2),
            Some("storage answered 503 Service Unavailable: store_failed: commit failed"),
        );
        h.op(
            2,
            OpKind::Write,
            1300,
            1310,
            End::Fail,
            Some(11),
            Some(2),
            Some("storage answered 503 Service Unavailable: busy: too many bytes queued"),
        );
        h.op(
            2,
            OpKind::Write,
            1400,
            1410,
            End::Fail,
            Some(11),
            Some(2),
            Some("storage answered 409 Conflict: wrong_fence: key belongs to another fence"),
        );
        h.unlock(2, 1500, 1510);
        let report = analyse(&h.input(Policy::Strict, Some(2), 2000));
        assert_eq!(counts(&report, OpKind::Write), (1, 2, 1, 0));
        assert_eq!(report.counter().unknown_writes, 1);
        assert_eq!(report.counter().lost_updates, no_lost());
        assert!(report.valid());
    }

    #[test]
    fn a_final_counter_below_the_acknowledged_increments_is_a_shortfall() {
        let report = analyse(&sequential().input(Policy::Strict, Some(1), 3000));
        assert_eq!(
            report.counter().lost_updates,
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
            (
                report.counter().lost_updates.count,
                report.counter().lost_updates.shortfall
            ),
            (1, 0)
        );
        // Final 3: one more increment is missing beyond the duplicate.
        let report = analyse(&frozen_reader().input(Policy::Writes, Some(3), 7000));
        let lost = &report.counter().lost_updates;
        assert_eq!((lost.count, lost.duplicate_lost, lost.shortfall), (2, 1, 1));
        // No final value: only the duplicate can be seen.
        let report = analyse(&frozen_reader().input(Policy::Writes, None, 7000));
        assert_eq!(
            (
                report.counter().lost_updates.count,
                report.counter().lost_updates.shortfall
            ),
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
        assert_eq!(report.counter().lost_updates, no_lost());
        assert!(report.valid());
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
}
