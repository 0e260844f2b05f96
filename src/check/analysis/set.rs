//! The set workload's rules, exact rather than counted: every acknowledged add must be in
//! every read invoked after it completed and in the checker's final read; an element whose
//! add definitely failed, or that no worker added, must be in none; an add of unknown
//! outcome may or may not be.
//!
//! Invariants this file owns:
//! - only an add completed `ok` can be lost, and only an element whose add completed `fail`
//!   (or that has no add at all) can be a phantom: adds of unknown outcome (`info`, or never
//!   completed) are neither, whatever the reads show;
//! - a read is held to an add only when it was invoked after the add completed, so a read
//!   racing the add proves nothing either way;
//! - each lost element and each phantom is reported once, with the first read (by
//!   invocation) that showed it, and how many reads did;
//! - the checker's final read counts as one more read, invoked after every worker stopped.

use std::collections::{HashMap, HashSet};

use super::ops::{Input, Op, Outcome, secs};
use super::report::{AddRef, LostElement, Phantom, ReadRef, SetFindings};
use crate::check::history::OpKind;

/// One read of the set, a worker's or the checker's final one.
struct SetRead<'a> {
    invoke_ns: u64,
    reference: ReadRef,
    /// The elements in stored order, and as a set for lookups.
    elements: &'a [String],
    members: HashSet<&'a str>,
}

impl<'a> SetRead<'a> {
    fn new(input: &Input, invoke_ns: u64, op: Option<&Op>, elements: &'a [String]) -> Self {
        SetRead {
            invoke_ns,
            reference: ReadRef {
                worker: op.map(|o| o.worker),
                op: op.map(|o| o.op),
                token: op.and_then(|o| o.token),
                invoked_s: secs(input, invoke_ns),
                size: elements.len() as u64,
            },
            elements,
            members: elements.iter().map(String::as_str).collect(),
        }
    }
}

fn add_ref(input: &Input, add: &Op) -> AddRef {
    AddRef {
        worker: add.worker,
        op: add.op,
        token: add.token,
        outcome: add.outcome,
        invoked_s: secs(input, add.invoke_ns),
        completed_s: add.complete_ns.map(|ns| secs(input, ns)),
    }
}

/// What the set rules find in one run's operations.
pub(super) fn findings(input: &Input, ops: &[Op]) -> SetFindings {
    let mut adds: Vec<&Op> = ops
        .iter()
        .filter(|o| o.f == OpKind::Write && o.element.is_some())
        .collect();
    adds.sort_by_key(|o| (o.at_ns(), o.worker, o.op));
    let mut add_of: HashMap<&str, &Op> = HashMap::new();
    for add in &adds {
        if let Some(element) = add.element.as_deref() {
            add_of.entry(element).or_insert(add);
        }
    }

    let mut reads: Vec<SetRead> = ops
        .iter()
        .filter(|o| o.f == OpKind::Read && o.outcome == Outcome::Ok)
        .filter_map(|o| Some(SetRead::new(input, o.invoke_ns, Some(o), o.set.as_deref()?)))
        .collect();
    let worker_reads = reads.len() as u64;
    let final_read = input
        .final_set
        .as_ref()
        .map(|f| SetRead::new(input, f.invoke_mono_ns, None, &f.elements));
    let final_members = final_read.as_ref().map(|f| f.members.clone());
    reads.extend(final_read);
    reads.sort_by_key(|r| (r.invoke_ns, r.reference.worker, r.reference.op));

    let acknowledged: Vec<&Op> = adds
        .iter()
        .copied()
        .filter(|o| o.outcome == Outcome::Ok)
        .collect();
    let mut lost = Vec::new();
    for add in &acknowledged {
        let (Some(element), Some(done)) = (add.element.as_deref(), add.complete_ns) else {
            continue;
        };
        let mut missed = reads
            .iter()
            .filter(|r| r.invoke_ns > done && !r.members.contains(element));
        let Some(first) = missed.next() else {
            continue;
        };
        lost.push(LostElement {
            element: element.to_owned(),
            add: add_ref(input, add),
            read: first.reference.clone(),
            missed_by: 1 + missed.count() as u64,
            in_final: final_members.as_ref().map(|f| f.contains(element)),
        });
    }

    // In the order first seen; the index finds an element's entry again.
    let mut phantoms: Vec<Phantom> = Vec::new();
    let mut phantom_index: HashMap<&str, usize> = HashMap::new();
    for read in &reads {
        for element in read.elements {
            let add = add_of.get(element.as_str());
            if add.is_some_and(|a| a.outcome != Outcome::Fail) {
                continue;
            }
            match phantom_index.get(element.as_str()) {
                Some(&i) => phantoms[i].seen_by += 1,
                None => {
                    phantom_index.insert(element, phantoms.len());
                    phantoms.push(Phantom {
                        element: element.clone(),
                        add: add.map(|a| add_ref(input, a)),
                        read: read.reference.clone(),
                        seen_by: 1,
                    });
                }
            }
        }
    }

    let unknown: Vec<&Op> = adds
        .iter()
        .copied()
        .filter(|o| matches!(o.outcome, Outcome::Info | Outcome::Pending))
        .collect();
    let acknowledged_adds = acknowledged.len() as u64;
    SetFindings {
        acknowledged_adds,
        failed_adds: adds.iter().filter(|o| o.outcome == Outcome::Fail).count() as u64,
        unknown_adds: unknown.len() as u64,
        unknown_adds_present: final_members.as_ref().map(|f| {
            unknown
                .iter()
                .filter(|o| o.element.as_deref().is_some_and(|e| f.contains(e)))
                .count() as u64
        }),
        reads: worker_reads,
        final_size: input.final_set.as_ref().map(|f| f.elements.len() as u64),
        lost_share: if acknowledged_adds == 0 {
            0.0
        } else {
            lost.len() as f64 / acknowledged_adds as f64
        },
        lost,
        phantoms,
    }
}

#[cfg(test)]
mod tests {
    use crate::check::analysis::analyse;
    use crate::check::analysis::fixtures::{End, History};
    use crate::check::analysis::report::{AddRef, LostElement, Phantom, ReadRef};
    use crate::check::analysis::{Outcome, Report};
    use fencelock::storage::fence::Policy;

    fn worker_read(worker: u32, op: u64, token: u64, invoked_s: f64, size: u64) -> ReadRef {
        ReadRef {
            worker: Some(worker),
            op: Some(op),
            token: Some(token),
            invoked_s,
            size,
        }
    }

    fn final_read(invoked_s: f64, size: u64) -> ReadRef {
        ReadRef {
            worker: None,
            op: None,
            token: None,
            invoked_s,
            size,
        }
    }

    fn add(worker: u32, op: u64, token: u64, outcome: Outcome, from_s: f64, to_s: f64) -> AddRef {
        AddRef {
            worker,
            op,
            token: Some(token),
            outcome,
            invoked_s: from_s,
            completed_s: Some(to_s),
        }
    }

    fn no_violation(report: &Report) {
        assert_eq!(report.set().lost, vec![]);
        assert_eq!(report.set().phantoms, vec![]);
        assert_eq!(report.backwards_tokens, vec![]);
        assert_eq!(report.token_order, vec![]);
        assert!(report.valid(), "{}", report.verdict);
        assert_eq!(report.violations(), 0);
    }

    #[test]
    fn a_clean_history_is_valid_and_counts_every_acknowledged_add() {
        let mut h = History::default();
        let a = h.set_turn(1, 0, 10, &[]);
        let b = h.set_turn(2, 1000, 11, &[&a]);
        let c = h.set_turn(1, 2000, 12, &[&a, &b]);
        assert_eq!(
            (a.as_str(), b.as_str(), c.as_str()),
            ("w1-3", "w2-3", "w1-7")
        );
        let report = analyse(&h.set_input(Policy::Strict, Some(&[&a, &b, &c]), 3000));
        no_violation(&report);
        let set = report.set();
        assert_eq!(
            (set.acknowledged_adds, set.failed_adds, set.unknown_adds),
            (3, 0, 0)
        );
        assert_eq!((set.reads, set.final_size), (3, Some(3)));
        assert_eq!(report.counter, None);
        assert_eq!(
            report.verdict,
            "valid: no lost element, no phantom, no backwards token"
        );
    }

    /// Worker 1 (token 10) reads the empty set and freezes; worker 2 (token 11) reads the
    /// empty set too and adds w2-3, acknowledged; worker 1 wakes and writes its copy plus
    /// w1-3, accepted without a fence; worker 2's next read misses w2-3, and so does the
    /// final read.
    fn lost_add() -> History {
        let mut h = History::default();
        h.lock(1, 0, 10, 0x10a, 10);
        h.read_set(1, 20, 30, 10, &[]);
        h.lock(2, 3000, 3010, 0x10b, 11);
        h.read_set(2, 3020, 3030, 11, &[]);
        assert_eq!(h.add(2, 3200, 3210, End::Ok, 11), "w2-3");
        h.unlock(2, 3250, 3260);
        assert_eq!(h.add(1, 4000, 4010, End::Ok, 10), "w1-3");
        h.unlock(1, 4050, 4060);
        h.set_turn(2, 5000, 12, &["w1-3"]);
        h
    }

    #[test]
    fn an_acknowledged_add_missing_from_a_later_read_is_a_lost_element() {
        let report = analyse(&lost_add().set_input(Policy::Strict, Some(&["w1-3", "w2-7"]), 6000));
        assert_eq!(
            report.set().lost,
            vec![LostElement {
                element: "w2-3".into(),
                add: add(2, 3, 11, Outcome::Ok, 3.2, 3.21),
                read: worker_read(2, 6, 12, 5.02, 1),
                missed_by: 2,
                in_final: Some(false),
            }]
        );
        assert_eq!(report.set().lost_share, 1.0 / 3.0);
        assert_eq!(report.set().phantoms, vec![]);
        // Worker 1's late write is also a token accepted behind the fence.
        assert_eq!(report.backwards_tokens.len(), 1);
        assert!(!report.valid());
        assert_eq!(report.violations(), 2);
        assert_eq!(
            report.verdict,
            "invalid: 1 lost element, 1 backwards token under strict fencing"
        );

        // Without fencing nothing is claimed: the same loss is reported, not a violation.
        let off = analyse(&lost_add().set_input(Policy::Off, Some(&["w1-3", "w2-7"]), 6000));
        assert_eq!(off.set().lost.len(), 1);
        assert!(off.valid());
        assert_eq!(
            off.verdict,
            "not claimed safe (off): 1 lost element, 1 backwards token"
        );
    }

    #[test]
    fn an_acknowledged_add_missing_only_from_the_final_read_is_lost_there() {
        let mut h = History::default();
        let a = h.set_turn(1, 0, 10, &[]);
        let b = h.set_turn(2, 1000, 11, &[&a]);
        let report = analyse(&h.set_input(Policy::Strict, Some(&[&a]), 2000));
        assert_eq!(
            report.set().lost,
            vec![LostElement {
                element: b,
                add: add(2, 3, 11, Outcome::Ok, 1.2, 1.21),
                read: final_read(2.0, 1),
                missed_by: 1,
                in_final: Some(false),
            }]
        );
        assert!(!report.valid());
    }

    #[test]
    fn an_element_whose_add_definitely_failed_is_a_phantom_where_it_is_read() {
        let mut h = History::default();
        let a = h.set_turn(1, 0, 10, &[]);
        h.lock(2, 1000, 1010, 0x10b, 11);
        h.read_set(2, 1020, 1030, 11, &[&a]);
        let failed = h.add(2, 1200, 1210, End::Fail, 11);
        h.unlock(2, 1250, 1260);
        let c = h.set_turn(1, 2000, 12, &[&a, &failed]);
        let report = analyse(&h.set_input(Policy::Strict, Some(&[&a, &failed, &c]), 3000));
        assert_eq!(
            report.set().phantoms,
            vec![Phantom {
                element: "w2-3".into(),
                add: Some(add(2, 3, 11, Outcome::Fail, 1.2, 1.21)),
                read: worker_read(1, 6, 12, 2.02, 2),
                seen_by: 2,
            }]
        );
        assert_eq!(report.set().lost, vec![]);
        assert_eq!(report.set().failed_adds, 1);
        assert!(!report.valid());
        assert_eq!(report.violations(), 1);
        assert_eq!(
            report.verdict,
            "invalid: 0 lost elements, 0 backwards tokens, 1 phantom element under strict fencing"
        );
    }

    #[test]
    fn an_element_no_worker_added_is_a_phantom_without_an_add() {
        let mut h = History::default();
        let a = h.set_turn(1, 0, 10, &[]);
        let report = analyse(&h.set_input(Policy::Strict, Some(&[&a, "w9-1"]), 1000));
        assert_eq!(
            report.set().phantoms,
            vec![Phantom {
                element: "w9-1".into(),
                add: None,
                read: final_read(1.0, 2),
                seen_by: 1,
            }]
        );
        assert!(!report.valid());
    }

    /// Worker 2's add of w2-3 times out (`info`); `seen` says whether the later read and the
    /// final read show it.
    fn unknown_add(seen: bool) -> (History, Vec<String>) {
        let mut h = History::default();
        let a = h.set_turn(1, 0, 10, &[]);
        h.lock(2, 1000, 1010, 0x10b, 11);
        h.read_set(2, 1020, 1030, 11, &[&a]);
        let unknown = h.add(2, 1200, 1210, End::Info, 11);
        h.unlock(2, 1250, 1260);
        let read: Vec<&str> = if seen { vec![&a, &unknown] } else { vec![&a] };
        let c = h.set_turn(1, 2000, 12, &read);
        let mut last: Vec<String> = read.iter().map(|e| e.to_string()).collect();
        last.push(c);
        (h, last)
    }

    #[test]
    fn an_add_of_unknown_outcome_that_appears_is_valid() {
        let (h, last) = unknown_add(true);
        let last: Vec<&str> = last.iter().map(String::as_str).collect();
        let report = analyse(&h.set_input(Policy::Strict, Some(&last), 3000));
        no_violation(&report);
        let set = report.set();
        assert_eq!((set.acknowledged_adds, set.unknown_adds), (2, 1));
        assert_eq!(set.unknown_adds_present, Some(1));
    }

    #[test]
    fn an_add_of_unknown_outcome_that_never_appears_is_valid() {
        let (mut h, last) = unknown_add(false);
        // One more add that never completed at all: the worker was killed mid-request.
        h.lock(2, 2500, 2510, 0x10d, 13);
        h.read_set(2, 2520, 2530, 13, &[&last[0], &last[1]]);
        h.add(2, 2600, 0, End::Never, 13);
        let last: Vec<&str> = last.iter().map(String::as_str).collect();
        let report = analyse(&h.set_input(Policy::Strict, Some(&last), 3000));
        no_violation(&report);
        let set = report.set();
        assert_eq!((set.acknowledged_adds, set.unknown_adds), (2, 2));
        assert_eq!(set.unknown_adds_present, Some(0));
    }

    #[test]
    fn a_read_racing_an_add_is_not_held_to_it() {
        let mut h = History::default();
        h.lock(1, 0, 10, 0x10a, 10);
        h.read_set(1, 20, 30, 10, &[]);
        let a = h.add(1, 100, 300, End::Ok, 10);
        // Invoked while the add was in flight, completed after it: either answer is right.
        h.read_set(2, 200, 400, 10, &[]);
        let report = analyse(&h.set_input(Policy::Strict, Some(&[&a]), 1000));
        assert_eq!(report.set().lost, vec![]);
    }

    #[test]
    fn without_a_final_read_only_the_workers_reads_are_checked() {
        let report = analyse(&lost_add().set_input(Policy::Strict, None, 6000));
        let set = report.set();
        assert_eq!(set.final_size, None);
        assert_eq!(set.unknown_adds_present, None);
        assert_eq!(set.lost.len(), 1);
        assert_eq!((set.lost[0].missed_by, set.lost[0].in_final), (1, None));
    }
}
