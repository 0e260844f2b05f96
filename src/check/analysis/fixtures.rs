//! Hand-built histories for the checker's unit tests: compact builders of worker events
//! (of the counter and of the set workload), lock keys and faults on a monotonic clock that
//! starts at [`START`], and two histories several tests share.

use std::collections::HashMap;

use super::Input;
use crate::check::history::{
    Event, EventType, FaultEvent, FaultKind, FinalSet, KeyChange, KeyEvent, OpKind, Resource,
    Target, Workload, element,
};
use fencelock::storage::fence::Policy;

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
            element: None,
            set: None,
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

    /// An add of the set workload: a write of worker `worker`'s element for this op,
    /// `w<worker>-<op>`, ending as `end`; returns the element.
    pub fn add(&mut self, worker: u32, from: u64, to: u64, end: End, token: u64) -> String {
        let error = match end {
            End::Fail => Some("storage answered 400 Bad Request: bad_request: refused"),
            End::Stale => Some("stale"),
            End::Info => Some("storage request failed: operation timed out"),
            End::Ok | End::Never => None,
        };
        let op = self.op(
            worker,
            OpKind::Write,
            from,
            to,
            end,
            Some(token),
            None,
            error,
        );
        let added = element(worker, op);
        for e in self
            .events
            .iter_mut()
            .filter(|e| e.worker == worker && e.op == op)
        {
            e.element = Some(added.clone());
        }
        added
    }

    /// A fenced read of the set workload that returned `elements`.
    pub fn read_set(
        &mut self,
        worker: u32,
        from: u64,
        to: u64,
        token: u64,
        elements: &[&str],
    ) -> u64 {
        let op = self.op(
            worker,
            OpKind::Read,
            from,
            to,
            End::Ok,
            Some(token),
            None,
            None,
        );
        let last = self.events.len() - 1;
        self.events[last].set = Some(elements.iter().map(|e| e.to_string()).collect());
        op
    }

    /// One uneventful turn of the set workload from `from`: lock, read `read`, add the
    /// worker's element (acknowledged), unlock, within 300 ms; returns the element.
    pub fn set_turn(&mut self, worker: u32, from: u64, token: u64, read: &[&str]) -> String {
        self.lock(worker, from, from + 10, 0x100 + token as i64, token);
        self.read_set(worker, from + 20, from + 30, token, read);
        let added = self.add(worker, from + 200, from + 210, End::Ok, token);
        self.unlock(worker, from + 250, from + 260);
        added
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
            resource: Resource::Storage,
            workload: Workload::Counter,
            events: self.events.clone(),
            faults: self.faults.clone(),
            keys: self.keys.clone(),
            final_value,
            final_set: None,
            start_mono_ns: START,
            end_mono_ns: at(end_ms),
        }
    }

    /// The set workload's input; the checker's final read, when given, is invoked at
    /// `end_ms` and returns `final_set`.
    pub fn set_input(&self, policy: Policy, final_set: Option<&[&str]>, end_ms: u64) -> Input {
        Input {
            workload: Workload::Set,
            final_value: None,
            final_set: final_set.map(|elements| FinalSet {
                invoke_mono_ns: at(end_ms),
                elements: elements.iter().map(|e| e.to_string()).collect(),
            }),
            ..self.input(policy, None, end_ms)
        }
    }
}

/// Worker 1, then 2, then 1 again, each finishing before the next starts.
pub fn sequential() -> History {
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
pub fn frozen_reader() -> History {
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

/// The set workload's two violations in one history: worker 1 adds w1-3; worker 2's add of
/// w2-3 definitely fails, yet worker 1's next read (op 6) shows it; worker 1 then adds
/// w1-7. A final read of `[w2-3, w1-7]` has lost w1-3 and shows the phantom again.
pub fn phantom_and_loss() -> History {
    let mut h = History::default();
    let a = h.set_turn(1, 0, 10, &[]);
    h.lock(2, 1000, 1010, 0x10b, 11);
    h.read_set(2, 1020, 1030, 11, &[&a]);
    let failed = h.add(2, 1200, 1210, End::Fail, 11);
    h.unlock(2, 1250, 1260);
    let c = h.set_turn(1, 2000, 12, &[&a, &failed]);
    assert_eq!(
        (a.as_str(), failed.as_str(), c.as_str()),
        ("w1-3", "w2-3", "w1-7")
    );
    h
}
