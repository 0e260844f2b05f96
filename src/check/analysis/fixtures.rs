//! Hand-built histories for the checker's unit tests: compact builders of worker events,
//! lock keys and faults on a monotonic clock that starts at [`START`], and two histories
//! several tests share.

use std::collections::HashMap;

use super::Input;
use crate::check::history::{
    Event, EventType, FaultEvent, FaultKind, KeyChange, KeyEvent, OpKind, Target,
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
