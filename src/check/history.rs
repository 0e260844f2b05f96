//! The checker's record of what happened: one JSON line per event, appended and flushed by
//! the process that saw it, so a worker that is frozen or killed loses nothing it already
//! did.
//!
//! Each worker writes `worker-<n>.jsonl`: an `invoke` event before every operation and one
//! completion (`ok`, `fail` or `info`) after it, as Jepsen does. An operation with no
//! completion (the worker was killed or the run ended while it waited) is indeterminate,
//! like `info`. The checker itself writes `faults.jsonl` (what it did to whom) and
//! `lock-service.jsonl` (lock keys appearing and vanishing, seen through a watch).
//!
//! Times: `mono_ns` is CLOCK_MONOTONIC, which Linux shares across processes on one machine,
//! so events from different files order correctly; `wall_ms` is the Unix time for people.

use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on this machine.
pub fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Milliseconds since the Unix epoch.
///
/// Read from the kernel without the C library, like [`mono_ns`], so a worker whose clock is
/// skewed (libfaketime replaces the C library's clock functions) still stamps true times.
pub fn wall_ms() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    ts.tv_sec as u64 * 1_000 + ts.tv_nsec as u64 / 1_000_000
}

/// What the workers do under the lock, and so what the analysis looks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Each cycle adds the worker's own element (`w<worker>-<op>`) to a set held under one
    /// key: every loss is observed exactly, as an acknowledged element missing from a later
    /// read (Jepsen's lock-set workload).
    Set,
    /// Each cycle increments a counter: losses are inferred from duplicate values, stale
    /// reads and the final counter.
    Counter,
}

impl Workload {
    /// The name on the command line and in the files.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Counter => "counter",
        }
    }

    /// The storage key the workload's workers read and write.
    pub fn key(self) -> &'static str {
        match self {
            Workload::Set => "set",
            Workload::Counter => "counter",
        }
    }

    /// The workload of a run recorded before the set workload existed: the counter.
    pub fn recorded_before_sets() -> Self {
        Workload::Counter
    }
}

/// A set as the set workload stores it: its elements joined by commas (elements are
/// `w<worker>-<op>`, which never contain one). The empty string is the empty set.
pub fn encode_set(elements: &[String]) -> String {
    elements.join(",")
}

/// The elements of a stored set, in stored order; `None` when the text is not a set the
/// workers could have written (an element other than `w<worker>-<op>`).
pub fn decode_set(text: &str) -> Option<Vec<String>> {
    let mut elements = Vec::new();
    for element in text.split(',').filter(|e| !e.is_empty()) {
        let (worker, op) = element.strip_prefix('w')?.split_once('-')?;
        worker.parse::<u32>().ok()?;
        op.parse::<u64>().ok()?;
        elements.push(element.to_owned());
    }
    Some(elements)
}

/// Where the workers' data lives, and so which adapter's fence the run checks: fencelock's
/// storage under its `--fencing` policy; a PostgreSQL row, one fenced transaction per cycle
/// from the read to the write; or a key in the lock service, written by `apply_held`, read by
/// plain linearizable gets.
pub use fencelock::fence::Resource;

/// The set as the checker read it itself, after every worker had stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalSet {
    /// When the checker sent its read (CLOCK_MONOTONIC): every add completed before it must
    /// be in the set.
    pub invoke_mono_ns: u64,
    pub elements: Vec<String>,
}

/// The element worker `worker` adds in its operation `op`.
pub fn element(worker: u32, op: u64) -> String {
    format!("w{worker}-{op}")
}

/// What a worker did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Grant a lease and start keeping it alive. Completion carries `lease`.
    Session,
    /// Acquire the lock. Completion carries `lease` and `token`.
    Lock,
    /// Fenced read of the counter or the set. Completion carries `token` and, for the
    /// counter, `value` (0 when the key has no value yet) or, for the set, `set` (empty when
    /// the key has no value yet).
    Read,
    /// Fenced write of the counter or the set. Invocation and completion carry `token` and,
    /// for the counter, `value` (the value written: the value read + 1) or, for the set,
    /// `element` (the write is the add of that element to the set read).
    Write,
    /// Release the lock (delete the lock key).
    Unlock,
    /// Close the session (revoke the lease).
    Close,
}

/// Jepsen's event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventType {
    /// The operation starts.
    Invoke,
    /// It took effect.
    Ok,
    /// It certainly did not take effect: the storage said no (a stale token, a wrong
    /// fence, a 4xx, `503 busy`) or the request was never sent.
    Fail,
    /// It may or may not have taken effect: the request was sent and got no answer (a
    /// timeout, a reset) or any other 5xx (a failed commit's batch may still be replayed).
    Info,
}

/// One line of a worker's history file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub worker: u32,
    /// The worker's operation counter: an invocation and its completion share it.
    pub op: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: OpKind,
    pub mono_ns: u64,
    pub wall_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// For a write of the set workload: the element it adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub element: Option<String>,
    /// For a read of the set workload, at its completion: the set it returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Vec<String>>,
    /// For a `fail` of a read or write: true when the storage refused the token as stale.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
    /// For a stale refusal, the fence's token at the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the checker did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    FreezeHolder,
    FreezeAfterRead,
    Revoke,
    FreezeLockService,
    KillStorage,
    KillMember,
    KillPostgres,
    /// Cuts the holder's worker off from the lock service, not from the storage.
    IsolateHolder,
    /// Workers whose clocks run slow or fast for the whole run (libfaketime).
    ClockSkew,
    /// Cuts the storage off from every other host for longer than the TTL.
    IsolateStorage,
    /// Cuts the etcd leader off from the other members, the workers and the checker.
    PartitionLeader,
    /// Splits the etcd members into a majority and a minority, workers on both sides.
    PartitionHalves,
}

impl FaultKind {
    /// The name on the command line and in the files: `freeze-holder`, ...
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::FreezeHolder => "freeze-holder",
            FaultKind::FreezeAfterRead => "freeze-after-read",
            FaultKind::Revoke => "revoke",
            FaultKind::FreezeLockService => "freeze-lock-service",
            FaultKind::KillStorage => "kill-storage",
            FaultKind::KillMember => "kill-member",
            FaultKind::KillPostgres => "kill-postgres",
            FaultKind::IsolateHolder => "isolate-holder",
            FaultKind::ClockSkew => "clock-skew",
            FaultKind::IsolateStorage => "isolate-storage",
            FaultKind::PartitionLeader => "partition-leader",
            FaultKind::PartitionHalves => "partition-halves",
        }
    }
}

/// Whom a fault hit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "id")]
pub enum Target {
    Worker(u32),
    /// lockd, or etcd member `n`.
    LockService(Option<u32>),
    Storage,
    /// The checker's own PostgreSQL server.
    Postgres,
}

/// One line of `faults.jsonl`: written when a fault starts (`end_mono_ns` absent) and again
/// when it ends (instantaneous faults such as `revoke` are written once, with both times).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// Counter of faults in the run: a start and its end share it.
    pub id: u64,
    pub fault: FaultKind,
    pub target: Target,
    pub start_mono_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_mono_ns: Option<u64>,
    pub wall_ms: u64,
    /// The lease revoked, for `revoke`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One line of `lock-service.jsonl`: a lock key under the checked lock name appeared or
/// vanished, as the lock service's watch reported it. A key that vanishes without its
/// worker's `unlock`/`close` completing first was removed by lease expiry or revocation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEvent {
    pub mono_ns: u64,
    pub wall_ms: u64,
    pub key: String,
    /// The lease the key is attached to (parsed from the key's last segment).
    pub lease: Option<i64>,
    /// The key's create_revision: the fencing token its holder gets.
    pub token: u64,
    pub change: KeyChange,
    /// The revision of the change.
    pub revision: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyChange {
    Created,
    Deleted,
}

/// Appends JSON lines to a file, flushing each one to the kernel before returning: a
/// process killed after `append` returns has its line in the file.
pub struct Log {
    file: File,
}

impl Log {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(Self { file })
    }

    pub fn append<T: Serialize>(&mut self, record: &T) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        // One write(2) per line, so a line is never interleaved or half-written by a kill
        // between two calls.
        self.file.write_all(&line)
    }
}

/// Reads every line of a JSON-lines file. A last line cut short (the writer was killed
/// mid-write) is skipped; any other bad line is an error.
pub fn read_lines<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Vec<T>> {
    let reader = BufReader::new(File::open(path)?);
    let lines: Vec<String> = reader.lines().collect::<Result<_, _>>()?;
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}:{}: {e}", path.display(), i + 1),
                ));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_a_log_and_a_cut_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-1.jsonl");
        let event = Event {
            worker: 1,
            op: 7,
            kind: EventType::Fail,
            f: OpKind::Write,
            mono_ns: 5,
            wall_ms: 6,
            lease: None,
            token: Some(12),
            value: Some(4),
            element: None,
            set: None,
            stale: true,
            current: Some(13),
            error: None,
        };
        let mut log = Log::create(&path).unwrap();
        log.append(&event).unwrap();
        log.append(&event).unwrap();
        drop(log);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"worker\":1,\"op\"");
        std::fs::write(&path, text).unwrap();
        let back: Vec<Event> = read_lines(&path).unwrap();
        assert_eq!(back, vec![event.clone(), event]);
    }

    #[test]
    fn a_set_round_trips_through_its_stored_text_and_foreign_text_is_no_set() {
        let elements = vec![element(1, 4), element(12, 30)];
        assert_eq!(encode_set(&elements), "w1-4,w12-30");
        assert_eq!(decode_set(&encode_set(&elements)), Some(elements));
        assert_eq!(decode_set(""), Some(vec![]));
        assert_eq!(decode_set("7"), None);
        assert_eq!(decode_set("w1-4,x"), None);
    }

    #[test]
    fn monotonic_time_moves_forward() {
        let a = mono_ns();
        let b = mono_ns();
        assert!(a > 0 && b >= a);
    }
}
