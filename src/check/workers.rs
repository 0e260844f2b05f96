//! The worker processes of a run and the tracker of what their stdout says: spawning,
//! following, signalling and stopping them.
//!
//! Invariants: a worker is signalled only while its handle is alive (never reaped), so its
//! PID cannot name another process; stopping continues a frozen worker before waiting, and
//! kills those that do not exit within the grace.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::broadcast;

use super::history::{Event, EventType, OpKind};
use super::run::{Options, WORKER_EXIT_GRACE};
use fencelock::lock::{Client, LeaseId};
use fencelock::process::{NetHost, Signal};

/// What the checker knows about one worker, from its stdout.
#[derive(Clone, Debug, Default)]
pub(crate) struct WorkerState {
    pub(crate) lease: Option<i64>,
    /// The token while the worker believes it holds the lock.
    pub(crate) holding: Option<u64>,
    pub(crate) frozen: bool,
}

/// Shared between the readers of workers' stdout and the fault loop.
#[derive(Default)]
pub(crate) struct Tracker {
    pub(crate) workers: Vec<WorkerState>,
    /// Writes acknowledged: increments or adds.
    pub(crate) increments: u64,
    pub(crate) stale: u64,
    pub(crate) faults: u64,
}

/// The tracker, locked. A panic while holding it (its holders only update fields) would
/// leave it consistent, so a poisoned lock is simply taken over.
pub(crate) fn locked(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) struct Worker {
    pub(crate) child: Child,
    /// Closing it tells the worker to stop.
    pub(crate) stdin: Option<ChildStdin>,
}

/// Starts worker `id`, inside `host` when given, with its clocks skewed by `clock`
/// (libfaketime's library and the rate) when given; `data` are the arguments naming its data
/// (`--resource`, `--key` and where the resource is, see `run::data_args`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_worker(
    options: &Options,
    id: u32,
    host: Option<&NetHost>,
    clock: Option<(&Path, f64)>,
    endpoints: &[String],
    data: &[String],
    lock: &str,
    dir: &Path,
) -> anyhow::Result<Worker> {
    let log = std::fs::File::create(dir.join(format!("worker-{id}.log")))?;
    let mut command = Command::new(&options.binary);
    command
        .arg("check-worker")
        .args(["--id", &id.to_string()])
        .args(["--endpoints", &endpoints.join(",")])
        .args(data)
        .args(["--lock", lock])
        .args(["--workload", options.workload.name()])
        .args(["--ttl", &options.ttl.as_secs().to_string()])
        .args(["--work-min", &options.work.0.as_secs_f64().to_string()])
        .args(["--work-max", &options.work.1.as_secs_f64().to_string()])
        .args(["--seed", &options.seed.to_string()])
        .arg("--history")
        .arg(dir.join(format!("worker-{id}.jsonl")))
        .env_remove("ETCDCTL_ENDPOINTS")
        .envs(
            options
                .worker_env
                .iter()
                .map(|(name, value)| (*name, value)),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    fencelock::process::die_with_parent(command.as_std_mut());
    if let Some((library, rate)) = clock {
        fencelock::process::skew_clock(command.as_std_mut(), library, rate);
    }
    if let Some(host) = host {
        host.enter(command.as_std_mut())?;
    }
    let mut child = command.spawn()?;
    let stdin = child.stdin.take();
    Ok(Worker { child, stdin })
}

/// Reads a worker's stdout, keeping the tracker current and passing events on.
pub(crate) async fn follow_worker(
    index: usize,
    stdout: tokio::process::ChildStdout,
    tracker: Arc<Mutex<Tracker>>,
    events: broadcast::Sender<Event>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            continue;
        };
        {
            let mut tracker = locked(&tracker);
            let stale = event.stale;
            let state = &mut tracker.workers[index];
            match (event.f, event.kind) {
                (OpKind::Session, EventType::Ok) => state.lease = event.lease,
                (OpKind::Lock, EventType::Ok) => state.holding = event.token,
                (OpKind::Unlock | OpKind::Close, EventType::Invoke) => state.holding = None,
                _ => {}
            }
            if event.f == OpKind::Write && event.kind == EventType::Ok {
                tracker.increments += 1;
            }
            if stale {
                tracker.stale += 1;
            }
        }
        let _ = events.send(event);
    }
}

/// Closes the workers' stdin (their signal to stop), continues any left stopped, and kills
/// those that do not exit in time.
pub(crate) async fn stop_workers(workers: &mut [Worker]) {
    for worker in workers.iter_mut() {
        if let Some(pid) = worker.child.id() {
            signal(pid, Signal::CONT);
        }
        worker.stdin = None;
    }
    let deadline = tokio::time::Instant::now() + WORKER_EXIT_GRACE;
    for worker in workers.iter_mut() {
        if tokio::time::timeout_at(deadline, worker.child.wait())
            .await
            .is_err()
        {
            let _ = worker.child.kill().await;
        }
    }
}

/// Revokes the leases workers still had, so their lock keys do not outlive the run.
pub(crate) async fn revoke_leftover_leases(client: &Client, tracker: &Mutex<Tracker>) {
    let leases: Vec<i64> = {
        let tracker = locked(tracker);
        tracker.workers.iter().filter_map(|w| w.lease).collect()
    };
    for lease in leases {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), client.revoke(LeaseId::new(lease))).await;
    }
}

/// Signals a worker. Only called with the PID of a worker whose handle is alive (not yet
/// reaped), so the PID cannot belong to another process.
pub(crate) fn signal(pid: u32, signal: Signal) -> bool {
    fencelock::process::send_signal(pid, signal)
}
