//! One checker run: start the services and the workers, inject faults on a seeded schedule,
//! stop everything, and hand the recorded history to the analysis.
//!
//! Invariants: every process the run starts is stopped and reaped before the run returns,
//! also when it fails (handles kill on drop); nothing the checker froze is left frozen; the
//! history files, not what the checker saw on the workers' stdout, are what gets analysed.

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom as _;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{broadcast, watch};
use tokio::time::sleep;

use super::analysis::{self, Input, Report};
use super::history::{
    Event, EventType, FaultEvent, FaultKind, KeyChange, KeyEvent, Log, OpKind, Target, mono_ns,
    read_lines, wall_ms,
};
use super::timeline;
use fencelock::etcd::etcdserverpb as pb;
use fencelock::etcd::mvccpb::event::EventType as PbEventType;
use fencelock::lock::{Client, LeaseId, PrefixWatch};
use fencelock::process::ServerProcess;
use fencelock::process::{EtcdCluster, Signal, send_signal};
use fencelock::storage::fence::Policy;

/// The counter's key in the storage.
pub const COUNTER_KEY: &str = "counter";

/// How long stopped workers get to exit before they are killed.
const WORKER_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Beyond the longest work time, how far into the next holder's turn a frozen holder may
/// be resumed: enough to land after the next holder's write now and then.
const NEXT_TURN_SLACK: Duration = Duration::from_millis(100);

/// Pause before re-opening the lock-key watch after its stream broke (a member died).
const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Where the lock service comes from.
#[derive(Clone, Debug)]
pub enum Backend {
    /// A `fencelock lockd` child process.
    Lockd,
    /// A loopback etcd cluster of this many members, from this binary.
    Etcd { members: usize, binary: PathBuf },
    /// A lock service the checker does not own: no lock-service faults.
    External(Vec<String>),
}

/// Everything a check needs.
#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Duration,
    pub clients: u32,
    pub ttl: Duration,
    pub lock: String,
    pub work: (Duration, Duration),
    /// `None`: every fault the backend allows.
    pub faults: Option<Vec<FaultKind>>,
    pub interval: Duration,
    pub seed: u64,
    pub backend: Backend,
    /// One run per policy, in this order, with the same seed.
    pub policies: Vec<Policy>,
    pub out: PathBuf,
    /// The `fencelock` binary, for workers, lockd and the storage.
    pub binary: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
}

/// Why a check could not run: a usage or setup error, not a finding.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

fn setup(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> CheckError {
    let what = what.into();
    move |source| CheckError::Setup { what, source }
}

/// One policy's run.
pub struct Run {
    pub policy: Policy,
    pub dir: PathBuf,
    pub meta: RunMeta,
    pub report: Report,
}

/// The faults a backend allows, in a fixed order.
pub fn applicable_faults(backend: &Backend) -> Vec<FaultKind> {
    let mut faults = vec![
        FaultKind::FreezeHolder,
        FaultKind::FreezeAfterRead,
        FaultKind::Revoke,
    ];
    match backend {
        Backend::Lockd => faults.push(FaultKind::FreezeLockService),
        Backend::Etcd { .. } => {
            faults.push(FaultKind::FreezeLockService);
            faults.push(FaultKind::KillMember);
        }
        Backend::External(_) => {}
    }
    faults.push(FaultKind::KillStorage);
    faults
}

/// Refuses faults the checker cannot inject with the processes it owns.
pub fn validate_faults(backend: &Backend, faults: &[FaultKind]) -> Result<(), CheckError> {
    let allowed = applicable_faults(backend);
    for fault in faults {
        if allowed.contains(fault) {
            continue;
        }
        let why = match (fault, backend) {
            (FaultKind::KillMember, Backend::Lockd) => {
                "lockd is a single process with no members; use --etcd-members 3"
            }
            (_, Backend::External(_)) => {
                "the lock service given by --endpoints is not a process this checker started"
            }
            _ => "it does not apply to this lock service",
        };
        return Err(CheckError::Usage(format!(
            "fault {} cannot be injected: {why}",
            fault.name()
        )));
    }
    Ok(())
}

/// Runs the check once per policy and returns every run, analysed. `out` receives progress
/// lines when stderr is not a terminal.
pub async fn run(options: &Options) -> Result<Vec<Run>, CheckError> {
    let faults = match &options.faults {
        Some(faults) => faults.clone(),
        None => applicable_faults(&options.backend),
    };
    validate_faults(&options.backend, &faults)?;
    if options.clients == 0 {
        return Err(CheckError::Usage("--clients must be at least 1".into()));
    }
    std::fs::create_dir_all(&options.out)
        .map_err(|e| setup(format!("cannot create {}", options.out.display()))(e.into()))?;
    let mut lock_service = LockService::start(options).await?;
    let mut runs = Vec::new();
    for (i, &policy) in options.policies.iter().enumerate() {
        let dir = options.out.join(policy.as_str());
        prepare_dir(&dir).map_err(|e| setup(format!("cannot prepare {}", dir.display()))(e))?;
        // A lock name per run, so that keys a previous run's workers left behind (their
        // leases still running) do not delay this one.
        let lock = if options.policies.len() > 1 {
            format!("{}/{}", options.lock.trim_end_matches('/'), policy.as_str())
        } else {
            options.lock.clone()
        };
        let run = run_policy(options, &faults, &mut lock_service, policy, &lock, &dir, i).await?;
        runs.push(run);
    }
    Ok(runs)
}

/// Removes what an earlier check left in `dir` (only the files a check writes).
fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = name.starts_with("worker-")
            || matches!(
                name,
                "faults.jsonl" | "lock-service.jsonl" | "report.json" | "timeline.svg" | RUN_FILE
            );
        if ours && path.is_file() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The lock service the workers use, owned or not.
enum LockService {
    Lockd(Box<ServerProcess>),
    Etcd(EtcdCluster),
    External(Vec<String>),
}

impl LockService {
    async fn start(options: &Options) -> Result<Self, CheckError> {
        Ok(match &options.backend {
            Backend::Lockd => {
                let lockd = ServerProcess::spawn(&options.binary, "lockd", ["--in-memory"])
                    .await
                    .map_err(|e| setup("cannot start lockd")(e.into()))?;
                LockService::Lockd(Box::new(lockd))
            }
            Backend::Etcd { members, binary } => {
                let cluster = EtcdCluster::start(*members, binary)
                    .await
                    .map_err(|e| setup("cannot start the etcd cluster")(e.into()))?;
                LockService::Etcd(cluster)
            }
            Backend::External(endpoints) => LockService::External(endpoints.clone()),
        })
    }

    /// For titles: what served the locks.
    fn describe(&self) -> String {
        match self {
            LockService::Lockd(_) => "lockd".into(),
            LockService::Etcd(cluster) => format!("a {}-member etcd", cluster.len()),
            LockService::External(endpoints) => endpoints.join(","),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        match self {
            LockService::Lockd(lockd) => vec![lockd.endpoint()],
            LockService::Etcd(cluster) => cluster.endpoints(),
            LockService::External(endpoints) => endpoints.clone(),
        }
    }
}

/// What the checker knows about one worker, from its stdout.
#[derive(Clone, Debug, Default)]
struct WorkerState {
    lease: Option<i64>,
    /// The token while the worker believes it holds the lock.
    holding: Option<u64>,
    frozen: bool,
}

/// Shared between the readers of workers' stdout and the fault loop.
#[derive(Default)]
struct Tracker {
    workers: Vec<WorkerState>,
    increments: u64,
    stale: u64,
    faults: u64,
}

/// The tracker, locked. A panic while holding it (its holders only update fields) would
/// leave it consistent, so a poisoned lock is simply taken over.
fn locked(tracker: &Mutex<Tracker>) -> std::sync::MutexGuard<'_, Tracker> {
    tracker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Worker {
    child: Child,
    /// Closing it tells the worker to stop.
    stdin: Option<ChildStdin>,
}

#[allow(clippy::too_many_arguments)]
async fn run_policy(
    options: &Options,
    faults: &[FaultKind],
    lock_service: &mut LockService,
    policy: Policy,
    lock: &str,
    dir: &Path,
    index: usize,
) -> Result<Run, CheckError> {
    let scratch = tempfile::Builder::new()
        .prefix("fencelock-check-")
        .tempdir()
        .map_err(|e| setup("cannot create a temporary directory")(e.into()))?;
    let storage_dir = scratch.path().join("storage");
    let storage_args = [
        "--data-dir".to_string(),
        storage_dir.display().to_string(),
        "--fencing".to_string(),
        policy.as_str().to_string(),
    ];
    let mut storage = ServerProcess::spawn(&options.binary, "storage", storage_args)
        .await
        .map_err(|e| setup("cannot start the storage")(e.into()))?;
    let endpoints = lock_service.endpoints();
    let client = Client::connect(&endpoints)
        .await
        .map_err(|e| setup("cannot reach the lock service")(e.into()))?;

    let (key_tx, _) = broadcast::channel::<KeyEvent>(4096);
    let (event_tx, _) = broadcast::channel::<Event>(4096);
    let key_log =
        Log::create(&dir.join("lock-service.jsonl")).map_err(|e| setup("history")(e.into()))?;
    let start_revision = current_revision(&client)
        .await
        .map_err(setup("cannot read the lock service's revision"))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_keys(
        client.clone(),
        format!("{}/", lock.trim_end_matches('/')),
        start_revision + 1,
        key_log,
        key_tx.clone(),
    ));

    let tracker = Arc::new(Mutex::new(Tracker {
        workers: vec![WorkerState::default(); options.clients as usize],
        ..Tracker::default()
    }));
    let start_mono_ns = mono_ns();
    let mut workers = Vec::new();
    for id in 1..=options.clients {
        let worker = spawn_worker(options, id, &endpoints, &storage.endpoint(), lock, dir)
            .map_err(|e| setup(format!("cannot start worker {id}"))(e))?;
        workers.push(worker);
    }
    let mut readers = Vec::new();
    for (i, worker) in workers.iter_mut().enumerate() {
        let stdout = worker.child.stdout.take().expect("stdout is piped");
        readers.push(tokio::spawn(follow_worker(
            i,
            stdout,
            tracker.clone(),
            event_tx.clone(),
        )));
    }

    let mut fault_log =
        Log::create(&dir.join("faults.jsonl")).map_err(|e| setup("history")(e.into()))?;
    let mut injector = Injector {
        options,
        faults,
        rng: rand::rngs::StdRng::seed_from_u64(options.seed),
        tracker: tracker.clone(),
        workers: &workers,
        storage: &mut storage,
        lock_service,
        client: &client,
        keys: key_tx,
        events: event_tx,
        log: &mut fault_log,
        next_id: 0,
        stop: stop_rx.clone(),
    };
    let label = format!("{} ({}/{})", policy, index + 1, options.policies.len());
    let started = Instant::now();
    let progress = show_progress(options, &label, &tracker, started, stop_rx.clone());
    let deadline = async {
        sleep(options.duration).await;
        let _ = stop_tx.send(true);
    };
    let injected = async {
        let result = injector.run().await;
        // Whatever happened, nothing stays frozen.
        injector.thaw_all();
        result
    };
    let ((), injected, ()) = tokio::join!(deadline, injected, progress);
    let end_mono_ns = mono_ns();
    drop(injector);
    stop_workers(&mut workers).await;
    for reader in readers {
        let _ = reader.await;
    }
    injected?;
    revoke_leftover_leases(&client, &tracker).await;
    let final_value = read_counter(&storage.endpoint()).await;
    // Events delivered by now are in the file; the watch may stop.
    watcher.abort();
    let _ = watcher.await;

    let meta = RunMeta {
        policy: policy.as_str().to_string(),
        clients: options.clients,
        seed: options.seed,
        ttl_s: options.ttl.as_secs(),
        duration_s: options.duration.as_secs_f64(),
        lock: lock.to_string(),
        lock_service: lock_service.describe(),
        final_value,
        start_mono_ns,
        end_mono_ns,
    };
    let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    std::fs::write(dir.join(RUN_FILE), text)
        .map_err(|e| setup(format!("cannot write {RUN_FILE}"))(e.into()))?;
    drop(storage);
    load(dir)
}

/// The file in a run's directory that describes the run.
pub const RUN_FILE: &str = "run.json";

/// What a run's history files do not say by themselves.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunMeta {
    pub policy: String,
    pub clients: u32,
    pub seed: u64,
    pub ttl_s: u64,
    pub duration_s: f64,
    pub lock: String,
    pub lock_service: String,
    /// The counter read after the workers stopped.
    pub final_value: Option<u64>,
    pub start_mono_ns: u64,
    pub end_mono_ns: u64,
}

/// Reads a finished run's directory, analyses it, and writes `report.json` and
/// `timeline.svg` there: the one path from history files to findings, for a run just made
/// and for `fencelock check --analyse DIR`.
pub fn load(dir: &Path) -> Result<Run, CheckError> {
    let read_error = |name: &str| setup(format!("cannot read {}", dir.join(name).display()));
    let meta_text =
        std::fs::read_to_string(dir.join(RUN_FILE)).map_err(|e| read_error(RUN_FILE)(e.into()))?;
    let meta: RunMeta =
        serde_json::from_str(&meta_text).map_err(|e| read_error(RUN_FILE)(e.into()))?;
    let policy: Policy = meta
        .policy
        .parse()
        .map_err(|e: String| read_error(RUN_FILE)(anyhow::anyhow!(e)))?;
    let mut events = Vec::new();
    for id in 1..=meta.clients {
        let name = format!("worker-{id}.jsonl");
        let path = dir.join(&name);
        if path.exists() {
            events.extend(read_lines::<Event>(&path).map_err(|e| read_error(&name)(e.into()))?);
        }
    }
    let faults = read_lines::<FaultEvent>(&dir.join("faults.jsonl"))
        .map_err(|e| read_error("faults.jsonl")(e.into()))?;
    let mut keys = read_lines::<KeyEvent>(&dir.join("lock-service.jsonl"))
        .map_err(|e| read_error("lock-service.jsonl")(e.into()))?;
    // Keys that vanish after the end are the checker's own clean-up (it revokes the leases
    // its stopped workers left), not expiries.
    keys.retain(|k| k.mono_ns <= meta.end_mono_ns);
    let input = Input {
        policy,
        events,
        faults,
        keys,
        final_value: meta.final_value,
        start_mono_ns: meta.start_mono_ns,
        end_mono_ns: meta.end_mono_ns,
    };
    let report = analysis::analyse(&input);
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| setup(format!("cannot write {name}"))(e.into()))
    };
    write(
        "report.json",
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )?;
    let title = format!(
        "fencelock check · {} workers on {} · TTL {} s · seed {}",
        meta.clients, meta.lock_service, meta.ttl_s, meta.seed
    );
    write("timeline.svg", timeline::svg(&input, &report, &title))?;
    Ok(Run {
        policy,
        dir: dir.to_owned(),
        meta,
        report,
    })
}

/// The runs under `dir`: `dir` itself when it holds a run, or each subdirectory that does,
/// in name order.
pub fn load_all(dir: &Path) -> Result<Vec<Run>, CheckError> {
    if dir.join(RUN_FILE).exists() {
        return Ok(vec![load(dir)?]);
    }
    let entries = std::fs::read_dir(dir)
        .map_err(|e| setup(format!("cannot read {}", dir.display()))(e.into()))?;
    let dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join(RUN_FILE).exists())
        .collect();
    if dirs.is_empty() {
        return Err(CheckError::Usage(format!(
            "{} holds no check run (no {RUN_FILE} in it or its subdirectories)",
            dir.display()
        )));
    }
    let mut runs = dirs
        .iter()
        .map(|d| load(d))
        .collect::<Result<Vec<_>, _>>()?;
    // In the order `--compare` runs them: strongest policy first.
    let rank = |p: Policy| {
        [Policy::Strict, Policy::Writes, Policy::Seed, Policy::Off]
            .iter()
            .position(|&q| q == p)
    };
    runs.sort_by_key(|r| (rank(r.policy), r.dir.clone()));
    Ok(runs)
}

fn spawn_worker(
    options: &Options,
    id: u32,
    endpoints: &[String],
    storage: &str,
    lock: &str,
    dir: &Path,
) -> anyhow::Result<Worker> {
    let log = std::fs::File::create(dir.join(format!("worker-{id}.log")))?;
    let mut command = Command::new(&options.binary);
    command
        .arg("check-worker")
        .args(["--id", &id.to_string()])
        .args(["--endpoints", &endpoints.join(",")])
        .args(["--storage", storage])
        .args(["--lock", lock])
        .args(["--key", COUNTER_KEY])
        .args(["--ttl", &options.ttl.as_secs().to_string()])
        .args(["--work-min", &options.work.0.as_secs_f64().to_string()])
        .args(["--work-max", &options.work.1.as_secs_f64().to_string()])
        .args(["--seed", &options.seed.to_string()])
        .arg("--history")
        .arg(dir.join(format!("worker-{id}.jsonl")))
        .env_remove("ETCDCTL_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true);
    fencelock::process::die_with_parent(command.as_std_mut());
    let mut child = command.spawn()?;
    let stdin = child.stdin.take();
    Ok(Worker { child, stdin })
}

/// Reads a worker's stdout, keeping the tracker current and passing events on.
async fn follow_worker(
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
async fn stop_workers(workers: &mut [Worker]) {
    for worker in workers.iter_mut() {
        signal(worker.child.id(), Signal::CONT);
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
async fn revoke_leftover_leases(client: &Client, tracker: &Mutex<Tracker>) {
    let leases: Vec<i64> = {
        let tracker = locked(tracker);
        tracker.workers.iter().filter_map(|w| w.lease).collect()
    };
    for lease in leases {
        let _ =
            tokio::time::timeout(Duration::from_secs(2), client.revoke(LeaseId::new(lease))).await;
    }
}

/// The counter's final value, read without a token (a plain read under every policy).
/// `None` when the storage cannot answer.
async fn read_counter(storage: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Value {
        value: String,
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let url = format!("{storage}/v1/kv/{COUNTER_KEY}");
    for _ in 0..20 {
        match http.get(&url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Some(0),
            Ok(r) if r.status().is_success() => {
                return r.json::<Value>().await.ok()?.value.parse().ok();
            }
            _ => sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

async fn current_revision(client: &Client) -> anyhow::Result<u64> {
    let response = client
        .kv()
        .range(pb::RangeRequest {
            key: b"\0".to_vec(),
            count_only: true,
            ..Default::default()
        })
        .await?;
    let header = response.into_inner().header.unwrap_or_default();
    Ok(header.revision.max(0) as u64)
}

/// Records lock keys appearing and vanishing under `prefix`, from revision `from` on,
/// re-opening the watch where it left off when its stream breaks.
async fn watch_keys(
    client: Client,
    prefix: String,
    mut from: u64,
    mut log: Log,
    keys: broadcast::Sender<KeyEvent>,
) {
    loop {
        let Ok(mut watch) = PrefixWatch::start(&client, prefix.as_bytes(), from as i64).await
        else {
            sleep(WATCH_RETRY_PAUSE).await;
            continue;
        };
        while let Ok(Some(events)) = watch.next().await {
            for event in events {
                let Some(kv) = event.kv else { continue };
                let revision = kv.mod_revision.max(0) as u64;
                from = revision + 1;
                let (change, token) = if event.r#type == PbEventType::Delete as i32 {
                    let token = event.prev_kv.map_or(0, |p| p.create_revision.max(0) as u64);
                    (KeyChange::Deleted, token)
                } else if kv.create_revision == kv.mod_revision {
                    (KeyChange::Created, kv.create_revision.max(0) as u64)
                } else {
                    continue;
                };
                let key = String::from_utf8_lossy(&kv.key).into_owned();
                let lease = key
                    .rsplit('/')
                    .next()
                    .and_then(|hex| hex.parse::<LeaseId>().ok())
                    .map(LeaseId::get);
                let record = KeyEvent {
                    mono_ns: mono_ns(),
                    wall_ms: wall_ms(),
                    key,
                    lease,
                    token,
                    change,
                    revision,
                };
                let _ = log.append(&record);
                let _ = keys.send(record);
            }
        }
        sleep(WATCH_RETRY_PAUSE).await;
    }
}

/// Signals a worker or server process this run started and has not reaped (its handle is
/// alive), so the PID cannot belong to another process.
fn signal(pid: Option<u32>, signal: Signal) -> bool {
    pid.is_some_and(|pid| send_signal(pid, signal))
}

/// The progress line: a bar on a terminal, a line every 10 s otherwise.
async fn show_progress(
    options: &Options,
    label: &str,
    tracker: &Mutex<Tracker>,
    started: Instant,
    mut stop: watch::Receiver<bool>,
) {
    if !options.progress {
        return;
    }
    let terminal = std::io::stderr().is_terminal();
    let every = if terminal {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(10)
    };
    loop {
        let done = tokio::select! {
            () = sleep(every) => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        let elapsed = started.elapsed().min(options.duration);
        let (increments, stale, faults) = {
            let t = locked(tracker);
            (t.increments, t.stale, t.faults)
        };
        let share = elapsed.as_secs_f64() / options.duration.as_secs_f64().max(f64::EPSILON);
        const WIDTH: usize = 30;
        let filled = ((share * WIDTH as f64) as usize).min(WIDTH);
        let line = format!(
            "check {label} [{}{}] {:>3}/{} s  increments {increments}  stale {stale}  faults {faults}",
            "#".repeat(filled),
            "-".repeat(WIDTH - filled),
            elapsed.as_secs(),
            options.duration.as_secs(),
        );
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r{line}");
            if done {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(err, "{line}");
        }
        if done {
            return;
        }
    }
}

/// Injects one fault every interval until the run stops.
struct Injector<'a> {
    options: &'a Options,
    faults: &'a [FaultKind],
    rng: rand::rngs::StdRng,
    tracker: Arc<Mutex<Tracker>>,
    workers: &'a [Worker],
    storage: &'a mut ServerProcess,
    lock_service: &'a mut LockService,
    client: &'a Client,
    keys: broadcast::Sender<KeyEvent>,
    events: broadcast::Sender<Event>,
    log: &'a mut Log,
    next_id: u64,
    stop: watch::Receiver<bool>,
}

/// A wait cut short by the end of the run.
struct Stopped;

impl Injector<'_> {
    async fn run(&mut self) -> Result<(), CheckError> {
        if self.faults.is_empty() {
            return Ok(());
        }
        loop {
            if self.pause(self.options.interval).await.is_err() {
                return Ok(());
            }
            let fault = *self
                .faults
                .choose(&mut self.rng)
                .expect("faults is not empty");
            let result = match fault {
                FaultKind::FreezeHolder => self.freeze_holder().await,
                FaultKind::FreezeAfterRead => self.freeze_after_read().await,
                FaultKind::Revoke => self.revoke().await,
                FaultKind::FreezeLockService => self.freeze_lock_service().await,
                FaultKind::KillStorage => self.kill_storage().await?,
                FaultKind::KillMember => self.kill_member().await?,
            };
            if result.is_err() {
                return Ok(());
            }
        }
    }

    /// Sleeps, unless the run stops first.
    async fn pause(&mut self, duration: Duration) -> Result<(), Stopped> {
        let mut stop = self.stop.clone();
        tokio::select! {
            () = sleep(duration) => Ok(()),
            _ = stop.wait_for(|s| *s) => Err(Stopped),
        }
    }

    /// Waits for `what` with a time limit; `Ok(None)` when the limit passed first.
    async fn within<T>(
        &self,
        limit: Duration,
        what: impl std::future::Future<Output = T>,
    ) -> Result<Option<T>, Stopped> {
        let mut stop = self.stop.clone();
        tokio::select! {
            value = what => Ok(Some(value)),
            () = sleep(limit) => Ok(None),
            _ = stop.wait_for(|s| *s) => Err(Stopped),
        }
    }

    /// Longest a worker stays frozen: past its TTL, whatever else happens.
    fn max_freeze(&self) -> Duration {
        self.options.ttl * 3 + Duration::from_secs(2)
    }

    fn start(&mut self, fault: FaultKind, target: Target, lease: Option<i64>) -> FaultEvent {
        self.next_id += 1;
        locked(&self.tracker).faults += 1;
        let event = FaultEvent {
            id: self.next_id,
            fault,
            target,
            start_mono_ns: mono_ns(),
            end_mono_ns: None,
            wall_ms: wall_ms(),
            lease,
            note: None,
        };
        let _ = self.log.append(&event);
        event
    }

    fn end(&mut self, mut event: FaultEvent, note: Option<String>) {
        event.end_mono_ns = Some(mono_ns());
        event.wall_ms = wall_ms();
        event.note = note;
        let _ = self.log.append(&event);
    }

    fn freeze(&self, worker: usize, frozen: bool) {
        let sig = if frozen { Signal::STOP } else { Signal::CONT };
        if signal(self.workers[worker].child.id(), sig) {
            locked(&self.tracker).workers[worker].frozen = frozen;
        }
    }

    fn thaw_all(&self) {
        for i in 0..self.workers.len() {
            self.freeze(i, false);
        }
        match &*self.lock_service {
            LockService::Lockd(lockd) => {
                signal(lockd.pid(), Signal::CONT);
            }
            LockService::Etcd(cluster) => {
                for i in 0..cluster.len() {
                    cluster.resume(i);
                }
            }
            LockService::External(_) => {}
        }
    }

    /// Workers holding the lock now, with their lease and token.
    fn holders(&self) -> Vec<(usize, Option<i64>, u64)> {
        let tracker = locked(&self.tracker);
        tracker
            .workers
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.holding.map(|t| (i, w.lease, t)))
            .collect()
    }

    /// Waits until some worker holds the lock; `None` if none does within an interval.
    async fn some_holder(&mut self) -> Result<Option<(usize, Option<i64>, u64)>, Stopped> {
        let mut events = self.events.subscribe();
        if let Some(holder) = self.holders().first() {
            return Ok(Some(*holder));
        }
        let tracker = self.tracker.clone();
        let found = self
            .within(self.options.interval, async move {
                loop {
                    match events.recv().await {
                        Ok(e) if e.f == OpKind::Lock && e.kind == EventType::Ok => {
                            let i = (e.worker - 1) as usize;
                            let lease = locked(&tracker).workers[i].lease;
                            return Some((i, lease, e.token.unwrap_or(0)));
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .await?;
        Ok(found.flatten())
    }

    /// Keeps a frozen worker stopped until its lock key is seen gone (its lease expired on
    /// the lock service) and another worker has gone on to `then` (acquired, or read), within
    /// `max_freeze` in all.
    async fn hold_frozen(
        &mut self,
        lease: Option<i64>,
        token: u64,
        then: (OpKind, &'static str),
    ) -> Result<String, Stopped> {
        let began = Instant::now();
        let mut keys = self.keys.subscribe();
        let mut events = self.events.subscribe();
        let expired = self
            .within(self.max_freeze(), async move {
                loop {
                    match keys.recv().await {
                        Ok(k) if k.change == KeyChange::Deleted && k.lease == lease => return,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            })
            .await?
            .is_some();
        if !expired {
            return Ok("lock key not seen expiring; resumed at the time limit".into());
        }
        let left = self.max_freeze().saturating_sub(began.elapsed());
        let (kind, what) = then;
        let next = self
            .within(left, async move {
                loop {
                    match events.recv().await {
                        Ok(e) if e.f == kind && e.kind == EventType::Ok => {
                            if e.token.is_some_and(|t| t > token) {
                                return e.worker;
                            }
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            })
            .await?;
        Ok(match next {
            Some(worker) => format!("lease expired; resumed after worker {worker} {what}"),
            None => "lease expired; no other worker went on before the time limit".into(),
        })
    }

    async fn freeze_holder(&mut self) -> Result<(), Stopped> {
        let Some((worker, lease, token)) = self.some_holder().await? else {
            return Ok(());
        };
        self.freeze(worker, true);
        let event = self.start(
            FaultKind::FreezeHolder,
            Target::Worker(worker as u32 + 1),
            lease,
        );
        let mut outcome = self
            .hold_frozen(lease, token, (OpKind::Lock, "acquired"))
            .await;
        // Resume somewhere in the next holder's turn (before its read, between its read and
        // its write, or after), so every interleaving of the stale holder comes up.
        if let Ok(note) = &mut outcome {
            let later = self
                .rng
                .random_range(Duration::ZERO..=self.options.work.1 + NEXT_TURN_SLACK);
            if self.pause(later).await.is_err() {
                outcome = Err(Stopped);
            } else {
                note.push_str(&format!(", {} ms later", later.as_millis()));
            }
        }
        self.freeze(worker, false);
        self.end(event, outcome.as_ref().ok().cloned());
        outcome.map(|_| ())
    }

    /// Freezes the first worker to complete a read, and resumes it once its lease has expired
    /// and the next holder has read too: the interleaving that defeats write-only fencing.
    async fn freeze_after_read(&mut self) -> Result<(), Stopped> {
        let mut events = self.events.subscribe();
        let read = self
            .within(self.options.interval * 2, async move {
                loop {
                    match events.recv().await {
                        Ok(e) if e.f == OpKind::Read && e.kind == EventType::Ok => return Some(e),
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .await?
            .flatten();
        let Some(read) = read else { return Ok(()) };
        let worker = (read.worker - 1) as usize;
        self.freeze(worker, true);
        let lease = locked(&self.tracker).workers[worker].lease;
        let event = self.start(
            FaultKind::FreezeAfterRead,
            Target::Worker(read.worker),
            lease,
        );
        let outcome = self
            .hold_frozen(lease, read.token.unwrap_or(0), (OpKind::Read, "read"))
            .await;
        self.freeze(worker, false);
        self.end(event, outcome.as_ref().ok().cloned());
        outcome.map(|_| ())
    }

    async fn revoke(&mut self) -> Result<(), Stopped> {
        let Some((worker, Some(lease), _)) = self.some_holder().await? else {
            return Ok(());
        };
        let event = self.start(
            FaultKind::Revoke,
            Target::Worker(worker as u32 + 1),
            Some(lease),
        );
        let client = self.client.clone();
        let result = self
            .within(Duration::from_secs(5), client.revoke(LeaseId::new(lease)))
            .await?;
        let note = match result {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(format!("revoke failed: {e}")),
            None => Some("revoke got no answer in 5 s".into()),
        };
        self.end(event, note);
        Ok(())
    }

    async fn freeze_lock_service(&mut self) -> Result<(), Stopped> {
        // Past the TTL, so that leases run out on the service's clock while it is stopped.
        let freeze = self.options.ttl + self.options.ttl / 2 + Duration::from_millis(500);
        let (target, note) = match &*self.lock_service {
            LockService::Lockd(lockd) => {
                signal(lockd.pid(), Signal::STOP);
                (Target::LockService(None), "lockd")
            }
            LockService::Etcd(cluster) => {
                let member = self.rng.random_range(0..cluster.len());
                cluster.pause(member);
                (Target::LockService(Some(member as u32)), "etcd member")
            }
            LockService::External(_) => return Ok(()),
        };
        let event = self.start(FaultKind::FreezeLockService, target.clone(), None);
        let waited = self.pause(freeze).await;
        match (&*self.lock_service, &target) {
            (LockService::Lockd(lockd), _) => {
                signal(lockd.pid(), Signal::CONT);
            }
            (LockService::Etcd(cluster), Target::LockService(Some(member))) => {
                cluster.resume(*member as usize);
            }
            _ => {}
        }
        self.end(event, Some(format!("{note} stopped for {freeze:?}")));
        waited
    }

    async fn kill_storage(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let event = self.start(FaultKind::KillStorage, Target::Storage, None);
        self.storage.kill().await;
        let down = Duration::from_millis(self.rng.random_range(0..500));
        // The storage comes back even when the run is ending: the final read needs it.
        let waited = self.pause(down).await;
        self.storage
            .restart()
            .await
            .map_err(|e| setup("cannot restart the storage")(e.into()))?;
        self.end(event, Some(format!("down for {down:?}")));
        Ok(waited)
    }

    async fn kill_member(&mut self) -> Result<Result<(), Stopped>, CheckError> {
        let LockService::Etcd(cluster) = &mut *self.lock_service else {
            return Ok(Ok(()));
        };
        let member = self.rng.random_range(0..cluster.len());
        cluster.kill(member);
        let event = self.start(
            FaultKind::KillMember,
            Target::LockService(Some(member as u32)),
            None,
        );
        let down = Duration::from_millis(self.rng.random_range(500..2000));
        let waited = self.pause(down).await;
        let LockService::Etcd(cluster) = &mut *self.lock_service else {
            unreachable!("checked above");
        };
        cluster
            .restart(member)
            .await
            .map_err(|e| setup(format!("cannot restart etcd member {member}"))(e.into()))?;
        self.end(event, Some(format!("down for {down:?}")));
        Ok(waited)
    }
}

/// Groups runs by label for the summary table.
pub fn table(runs: &[Run]) -> String {
    let rows: Vec<(&str, &Report)> = runs
        .iter()
        .map(|r| (r.policy.as_str(), &r.report))
        .collect();
    analysis::summary_table(&rows)
}

/// Every run's description and report, for `--json`.
pub fn json(runs: &[Run]) -> serde_json::Value {
    serde_json::json!({
        "valid": runs.iter().all(|r| r.report.valid()),
        "runs": runs.iter().map(|r| serde_json::json!({
            "policy": r.policy.as_str(),
            "dir": r.dir,
            "run": r.meta,
            "report": r.report,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_follow_the_processes_the_checker_owns() {
        let etcd = Backend::Etcd {
            members: 3,
            binary: "etcd".into(),
        };
        assert!(applicable_faults(&etcd).contains(&FaultKind::KillMember));
        assert!(!applicable_faults(&Backend::Lockd).contains(&FaultKind::KillMember));
        assert!(applicable_faults(&Backend::Lockd).contains(&FaultKind::FreezeLockService));
        let external = Backend::External(vec!["127.0.0.1:2379".into()]);
        assert!(!applicable_faults(&external).contains(&FaultKind::FreezeLockService));
        assert!(applicable_faults(&external).contains(&FaultKind::KillStorage));

        let refused = validate_faults(&Backend::Lockd, &[FaultKind::Revoke, FaultKind::KillMember]);
        let Err(CheckError::Usage(message)) = refused else {
            panic!("kill-member on lockd must be refused");
        };
        assert!(message.contains("kill-member") && message.contains("--etcd-members"));
        assert!(validate_faults(&etcd, &applicable_faults(&etcd)).is_ok());
    }
}
