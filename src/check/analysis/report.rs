//! The report of one run: the shape of what the rules found, which is also its JSON (for
//! `--json` and `report.json`), and the summary table for people.
//!
//! Invariants this file owns: the report is plain data, so its JSON is exactly its fields;
//! the table is drawn from reports alone, and shows an unknown value as `?`.

use std::fmt::Write as _;

use serde::Serialize;

use super::ops::{FaultSpan, HistoryNotes, Outcome};
use crate::check::history::{FaultKind, OpKind, Workload};

/// The analysis of one run.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Report {
    /// The storage's fencing policy during the run.
    pub policy: String,
    /// Whether the policy claims to prevent lost updates and backwards tokens (only strict).
    pub claims_safety: bool,
    /// `!claims_safety ||` no anomaly: no backwards token nor acquisition out of token
    /// order, and, for the counter, no lost update, stale read, nor final counter below an
    /// acknowledged value, for the set, no lost element nor phantom.
    pub valid: bool,
    /// One line for people: "valid", "invalid: …" or "not claimed safe (writes): …".
    pub verdict: String,
    pub duration_s: f64,
    /// Per operation kind, how many ended each way.
    pub operations: Vec<OpCounts>,
    pub history: HistoryNotes,
    /// What the workers did.
    pub workload: Workload,
    /// The counter workload's findings, at the report's top level in JSON; absent for the
    /// set workload.
    #[serde(flatten)]
    pub counter: Option<CounterFindings>,
    /// The set workload's findings; absent for the counter workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub set: Option<SetFindings>,
    /// The accesses the backwards-token rule looked at (those the policy checks).
    pub fenced_accesses: Vec<OpKind>,
    /// Accepted operations whose token was below one the fence had already accepted.
    pub backwards_tokens: Vec<BackwardsToken>,
    /// Acquisitions of the lock whose token was not above that of an acquisition completed
    /// before them (the fenced-mutex model): the lock service's own claim, whatever the
    /// storage's policy.
    pub token_order: Vec<TokenOrder>,
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

/// What the counter rules found.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct CounterFindings {
    /// Writes completed `ok`: increments the storage acknowledged.
    pub acknowledged_increments: u64,
    /// Writes whose outcome is unknown (`info`, or never completed): counted apart, never
    /// as acknowledged nor as lost.
    pub unknown_writes: u64,
    /// The counter at the end, when it could be read.
    pub final_value: Option<u64>,
    pub lost_updates: LostUpdates,
    /// Whether the stale-read rule applied: only under a policy whose fence checks reads
    /// (strict), since elsewhere a stale holder's write may legitimately lower the counter.
    pub reads_checked: bool,
    /// Acknowledged reads that saw less than an acknowledged write completed before they
    /// were invoked (empty when `reads_checked` is false).
    pub stale_reads: Vec<StaleRead>,
    /// The final counter, when below the largest value an acknowledged write wrote.
    pub final_below_acknowledged: Option<FinalBelow>,
}

/// What the set rules found: each acknowledged add held against every read invoked after
/// it completed and against the final read, each element read held against its add.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SetFindings {
    /// Adds (writes of the set) completed `ok`.
    pub acknowledged_adds: u64,
    /// Adds the storage certainly did not apply: their elements must never appear.
    pub failed_adds: u64,
    /// Adds whose outcome is unknown (`info`, or never completed): they may or may not
    /// appear, and are never counted as acknowledged nor as lost.
    pub unknown_adds: u64,
    /// Of the unknown adds, those whose element is in the final read (they took effect);
    /// `None` without a final read.
    pub unknown_adds_present: Option<u64>,
    /// Reads completed `ok` whose sets were checked, the checker's final read not included.
    pub reads: u64,
    /// Elements in the final read; `None` when it could not be read.
    pub final_size: Option<u64>,
    /// Acknowledged adds missing from a read invoked after they completed, or from the
    /// final read: one entry per element, in the order the adds completed.
    pub lost: Vec<LostElement>,
    /// `lost / acknowledged adds` (0 when nothing was acknowledged).
    pub lost_share: f64,
    /// Elements read whose add definitely failed, or that no worker ever added: one entry
    /// per element, in the order they were first seen.
    pub phantoms: Vec<Phantom>,
}

/// An add of the set workload: the write that adds its element.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct AddRef {
    pub worker: u32,
    pub op: u64,
    pub token: Option<u64>,
    pub outcome: Outcome,
    pub invoked_s: f64,
    /// `None` when it never completed.
    pub completed_s: Option<f64>,
}

/// A read of the set: a worker's fenced read, or the checker's own final read.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct ReadRef {
    /// `None` for the checker's final read after every worker stopped.
    pub worker: Option<u32>,
    pub op: Option<u64>,
    pub token: Option<u64>,
    pub invoked_s: f64,
    /// How many elements the read returned.
    pub size: u64,
}

/// An acknowledged add whose element a later read did not return.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct LostElement {
    pub element: String,
    pub add: AddRef,
    /// The first read (by invocation) invoked after the add completed that missed it.
    pub read: ReadRef,
    /// How many reads invoked after the add completed missed it, the final read included.
    pub missed_by: u64,
    /// Whether the final read has it (it was lost for a while and came back, from a stale
    /// holder's copy); `None` without a final read.
    pub in_final: Option<bool>,
}

/// An element a read returned that cannot be there: its add definitely failed, or no worker
/// ever added it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Phantom {
    pub element: String,
    /// The failed add; `None` when no worker added the element.
    pub add: Option<AddRef>,
    /// The first read (by invocation) that returned it.
    pub read: ReadRef,
    /// How many reads returned it, the final read included.
    pub seen_by: u64,
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
/// never invent one. Without a final value only duplicates are counted. What this count
/// misses, [`Report::stale_reads`] and [`Report::final_below_acknowledged`] see.
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

/// A successful acquisition of the lock.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Acquisition {
    pub worker: u32,
    pub op: u64,
    pub token: u64,
    pub invoked_s: f64,
    pub acquired_s: f64,
}

/// Two acquisitions of the lock name out of token order: `later` completed after `earlier`
/// but its token is not higher. `earlier` is the highest-token acquisition completed before
/// `later`, so one stray token is reported once, not against every acquisition before it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct TokenOrder {
    pub earlier: Acquisition,
    pub later: Acquisition,
}

/// An acknowledged write of the counter, with the value it wrote.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct AckedWrite {
    pub worker: u32,
    pub op: u64,
    pub token: Option<u64>,
    pub value: u64,
    pub at_s: f64,
}

/// A read that returned less than an acknowledged write completed before the read was
/// invoked: the write was lost, whether or not a duplicate value shows it.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct StaleRead {
    pub worker: u32,
    pub op: u64,
    pub token: Option<u64>,
    pub value: u64,
    pub invoked_s: f64,
    /// The acknowledged write of the largest value completed before the read was invoked.
    pub write: AckedWrite,
}

/// The final counter below the largest acknowledged value: that write's effect is gone,
/// however many unknown writes raised the counter otherwise.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FinalBelow {
    pub final_value: u64,
    /// The acknowledged write of the largest value (the first to complete, among equals).
    pub write: AckedWrite,
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
    /// Reads and writes in progress during a span of this fault (of the targeted worker
    /// only, when the fault targets a worker).
    pub operations: u64,
    /// Of those, refused as stale.
    pub stale: u64,
    /// Of those, of unknown outcome (timeouts, resets, 5xx) or never completed.
    pub unknown: u64,
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

impl Report {
    /// True when the run shows no violation of the policy's safety claim.
    pub fn valid(&self) -> bool {
        self.valid
    }

    /// Violations of the policy's safety claim under a policy that claims safety (backwards
    /// tokens, acquisitions out of token order; lost updates, stale reads, a final counter
    /// below an acknowledged value; lost elements, phantoms), 0 under one that claims none
    /// (its anomalies are still in the report). The tests' one-number summary of a report;
    /// the binary reports the parts.
    #[cfg(test)]
    pub fn violations(&self) -> usize {
        if self.claims_safety {
            self.anomalies()
        } else {
            0
        }
    }

    /// Every anomaly found, whatever the policy claims.
    pub(super) fn anomalies(&self) -> usize {
        let counter = self.counter.as_ref().map_or(0, |c| {
            c.lost_updates.count as usize
                + c.stale_reads.len()
                + usize::from(c.final_below_acknowledged.is_some())
        });
        let set = self
            .set
            .as_ref()
            .map_or(0, |s| s.lost.len() + s.phantoms.len());
        counter + set + self.backwards_tokens.len() + self.token_order.len()
    }

    /// The counter's findings, in tests of counter histories.
    #[cfg(test)]
    pub fn counter(&self) -> &CounterFindings {
        self.counter.as_ref().expect("a counter workload's report")
    }

    /// The set's findings, in tests of set histories.
    #[cfg(test)]
    pub fn set(&self) -> &SetFindings {
        self.set.as_ref().expect("a set workload's report")
    }
}

/// An optional value for people: `?` when it is not known.
pub(crate) fn show(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "?".to_owned(), |v| v.to_string())
}

/// An aligned text table: one row per measure, one column per labelled report (one per
/// policy with `--compare`).
pub fn summary_table(rows: &[(&str, &Report)]) -> String {
    let counter = |f: fn(&CounterFindings) -> String| {
        each(rows, move |r| r.counter.as_ref().map_or("-".to_owned(), f))
    };
    let set = |f: fn(&SetFindings) -> String| {
        each(rows, move |r| r.set.as_ref().map_or("-".to_owned(), f))
    };
    let mut measures: Vec<(&str, Vec<String>)> = vec![
        ("verdict", each(rows, |r| verdict_word(r).to_owned())),
        ("workload", each(rows, |r| r.workload.name().to_owned())),
        ("operations", each(rows, |r| total_ops(r).to_string())),
    ];
    if rows.iter().any(|(_, r)| r.counter.is_some()) {
        measures.extend([
            (
                "acknowledged increments",
                counter(|c| c.acknowledged_increments.to_string()),
            ),
            ("unknown writes", counter(|c| c.unknown_writes.to_string())),
            ("final counter", counter(|c| show(c.final_value))),
            (
                "lost updates",
                counter(|c| {
                    format!(
                        "{} ({:.1}%)",
                        c.lost_updates.count,
                        c.lost_updates.share * 100.0
                    )
                }),
            ),
        ]);
    }
    if rows.iter().any(|(_, r)| r.set.is_some()) {
        measures.extend([
            (
                "acknowledged adds",
                set(|s| s.acknowledged_adds.to_string()),
            ),
            (
                "unknown adds (in final)",
                set(|s| format!("{} ({})", s.unknown_adds, show(s.unknown_adds_present))),
            ),
            ("failed adds", set(|s| s.failed_adds.to_string())),
            ("final set", set(|s| show(s.final_size))),
            (
                "lost elements",
                set(|s| format!("{} ({:.1}%)", s.lost.len(), s.lost_share * 100.0)),
            ),
            ("phantom elements", set(|s| s.phantoms.len().to_string())),
        ]);
    }
    measures.extend([
        (
            "backwards tokens",
            each(rows, |r| r.backwards_tokens.len().to_string()),
        ),
        (
            "token order violations",
            each(rows, |r| r.token_order.len().to_string()),
        ),
    ]);
    if rows.iter().any(|(_, r)| r.counter.is_some()) {
        measures.extend([
            (
                "stale reads",
                counter(|c| {
                    if c.reads_checked {
                        c.stale_reads.len().to_string()
                    } else {
                        "not claimed".to_owned()
                    }
                }),
            ),
            (
                "final below acknowledged",
                counter(|c| match (&c.final_below_acknowledged, c.final_value) {
                    (Some(below), _) => format!("{} < {}", below.final_value, below.write.value),
                    (None, Some(_)) => "no".to_owned(),
                    (None, None) => "?".to_owned(),
                }),
            ),
        ]);
    }
    measures.extend([
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
    ]);
    // Per fault kind: how often it came, and the reads and writes it touched (refused as
    // stale, of unknown outcome).
    let kinds: Vec<FaultKind> = rows
        .iter()
        .flat_map(|(_, r)| r.faults.iter().map(|f| f.fault))
        .fold(Vec::new(), |mut kinds, f| {
            if !kinds.contains(&f) {
                kinds.push(f);
            }
            kinds
        });
    if !kinds.is_empty() {
        measures.push((
            "per fault: n: r+w/stale/unknown",
            each(rows, |_| String::new()),
        ));
    }
    for kind in kinds {
        measures.push((
            kind.name(),
            each(rows, |r| {
                r.faults
                    .iter()
                    .find(|f| f.fault == kind)
                    .map_or("-".to_owned(), |f| {
                        format!("{}: {}/{}/{}", f.count, f.operations, f.stale, f.unknown)
                    })
            }),
        ));
    }
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
mod tests {
    use super::*;
    use crate::check::analysis::analyse;
    use crate::check::analysis::fixtures::{frozen_reader, phantom_and_loss, sequential};
    use fencelock::storage::fence::Policy;

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
        assert_eq!(json["token_order"], serde_json::json!([]));
        assert_eq!(json["reads_checked"], false);
        assert_eq!(json["stale_reads"], serde_json::json!([]));
        assert_eq!(json["final_below_acknowledged"], serde_json::Value::Null);
    }

    fn set_with_a_phantom_and_a_lost_element() -> Report {
        analyse(&phantom_and_loss().set_input(Policy::Strict, Some(&["w2-3", "w1-7"]), 3000))
    }

    #[test]
    fn a_set_report_serialises_its_findings_under_set_and_no_counter_fields() {
        let report = set_with_a_phantom_and_a_lost_element();
        let json = serde_json::to_value(&report).expect("a report is plain data");
        assert_eq!(json["workload"], "set");
        assert_eq!(json["valid"], false);
        assert_eq!(json.get("lost_updates"), None);
        assert_eq!(json.get("acknowledged_increments"), None);
        let set = &json["set"];
        assert_eq!(set["acknowledged_adds"], 2);
        assert_eq!(set["failed_adds"], 1);
        assert_eq!(set["final_size"], 2);
        assert_eq!(set["lost"][0]["element"], "w1-3");
        assert_eq!(set["lost"][0]["add"]["outcome"], "ok");
        assert_eq!(set["lost"][0]["read"]["worker"], serde_json::Value::Null);
        assert_eq!(set["phantoms"][0]["element"], "w2-3");
        assert_eq!(set["phantoms"][0]["add"]["outcome"], "fail");
        assert_eq!(set["phantoms"][0]["read"]["worker"], 1);
        assert_eq!(set["phantoms"][0]["seen_by"], 2);

        let counter = analyse(&sequential().input(Policy::Strict, Some(3), 3000));
        let json = serde_json::to_value(&counter).expect("a report is plain data");
        assert_eq!(json["workload"], "counter");
        assert_eq!(json.get("set"), None);
    }

    #[test]
    fn summary_table_shows_the_rows_of_the_workload_run() {
        let set = set_with_a_phantom_and_a_lost_element();
        let table = summary_table(&[("strict", &set)]);
        let rows: Vec<String> = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        for row in [
            "verdict INVALID",
            "workload set",
            "acknowledged adds 2",
            "unknown adds (in final) 0 (0)",
            "failed adds 1",
            "final set 2",
            "lost elements 1 (50.0%)",
            "phantom elements 1",
        ] {
            assert!(rows.iter().any(|r| r == row), "no {row:?} in\n{table}");
        }
        assert!(!table.contains("increments"), "{table}");
        assert!(!table.contains("final counter"), "{table}");
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
            row("token order").as_deref(),
            Some("token order violations 0 0")
        );
        assert_eq!(
            row("stale reads").as_deref(),
            Some("stale reads 0 not claimed")
        );
        assert_eq!(
            row("final below").as_deref(),
            Some("final below acknowledged no no")
        );
        assert_eq!(
            row("overlapping").as_deref(),
            Some("overlapping holders 0 (0.0 s) 1 (1.1 s)")
        );
    }
}
