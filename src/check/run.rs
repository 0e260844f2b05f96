//! One checker run: start the services and the workers, inject faults on a seeded schedule,
//! stop everything, and hand the recorded history to the analysis.
//!
//! Invariants: every process the run starts is stopped and reaped before the run returns,
//! also when it fails (handles kill on drop); nothing the checker froze is left frozen; the
//! history files, not what the checker saw on the workers' stdout, are what gets analysed.

use std::io::{IsTerminal as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng as _;
use tokio::sync::{broadcast, watch};
use tokio::time::sleep;

use super::analysis::Report;
use super::faults::Injector;
use super::history::{
    Event, FaultKind, FinalSet, KeyChange, KeyEvent, Log, Resource, Workload, decode_set, mono_ns,
    wall_ms,
};
use super::saved::{RUN_FILE, RunMeta, load};
use super::worker::{CHECK_SCHEMA, DATA_TABLE};
use super::workers::{
    Tracker, WorkerState, follow_worker, locked, revoke_leftover_leases, spawn_worker, stop_workers,
};
use fencelock::etcd::etcdserverpb as pb;
use fencelock::etcd::mvccpb::event::EventType as PbEventType;
use fencelock::fence::postgres::PgFence;
use fencelock::lock::{Client, LeaseId, PrefixWatch};
use fencelock::process::{EtcdCluster, PostgresServer, ServerProcess, TestNet};
use fencelock::storage::fence::Policy;

/// How long stopped workers get to exit before they are killed.
pub(crate) const WORKER_EXIT_GRACE: Duration = Duration::from_secs(3);

/// Beyond the longest work time, how far into the next holder's turn a frozen holder may
/// be resumed: enough to land after the next holder's write now and then.
pub(crate) const NEXT_TURN_SLACK: Duration = Duration::from_millis(100);

/// Pause before re-opening the lock-key watch after its stream broke (a member died).
pub(crate) const WATCH_RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The hosts of the test network of a run with network faults: lockd (or etcd's first
/// member), the storage and the checker itself on hosts of their own, then one per worker,
/// then one per further etcd member. The checker's own host makes every connection of the
/// checker (its lock client, the lock-key watch, the final read) one from the test network,
/// never from the root namespace, which has no route to it.
pub(crate) mod hosts {
    /// lockd's host, and etcd member 0's.
    pub(crate) const LOCKD: usize = 0;
    /// The storage's host.
    pub(crate) const STORAGE: usize = 1;
    /// The host the checker's run loop runs in.
    pub(crate) const CHECKER: usize = 2;
    /// Hosts before the workers'.
    const FIRST_WORKER: usize = 3;

    /// The host of worker `index` (0-based).
    pub(crate) fn worker(index: usize) -> usize {
        FIRST_WORKER + index
    }

    /// The host of lock-service member `member` (0 for lockd) in a network of `workers`
    /// workers.
    pub(crate) fn member(member: usize, workers: usize) -> usize {
        match member {
            0 => LOCKD,
            m => FIRST_WORKER + workers + m - 1,
        }
    }

    /// Hosts in a network for `workers` workers and a lock service of `members` members.
    pub(crate) fn count(workers: usize, members: usize) -> usize {
        FIRST_WORKER + workers + members.max(1) - 1
    }
}

/// Faults that cut links, and so need a test network; never in the default set.
pub(crate) const NETWORK_FAULTS: &[FaultKind] = &[
    FaultKind::IsolateHolder,
    FaultKind::IsolateStorage,
    FaultKind::PartitionLeader,
    FaultKind::PartitionHalves,
];

/// Faults that hold for the whole run rather than come on the schedule; never in the default
/// set, since they need libfaketime.
pub(crate) const STANDING_FAULTS: &[FaultKind] = &[FaultKind::ClockSkew];

/// Under `clock-skew`, the rate of each skewed worker's clocks (worker number, rate): worker
/// 1's runs at a quarter of real time, so its keepalives come at four times the interval it
/// means and its lease ends on the lock service while it believes it has most of it left;
/// worker 2's runs at four times real time, so its timers and timeouts fire early.
pub(crate) const SKEWED_CLOCKS: &[(u32, f64)] = &[(1, 0.25), (2, 4.0)];

/// The rate of worker `id`'s clocks in a run with `faults`, when it is skewed.
pub(crate) fn clock_rate(faults: &[FaultKind], id: u32) -> Option<f64> {
    if !faults.contains(&FaultKind::ClockSkew) {
        return None;
    }
    SKEWED_CLOCKS
        .iter()
        .find(|(worker, _)| *worker == id)
        .map(|(_, rate)| *rate)
}

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
    pub workload: Workload,
    pub work: (Duration, Duration),
    /// `None`: every fault the backend allows.
    pub faults: Option<Vec<FaultKind>>,
    pub interval: Duration,
    pub seed: u64,
    pub backend: Backend,
    /// Where the workers' data lives.
    pub resource: Resource,
    /// `--resource postgres`: the user's database; `None`: the checker starts its own.
    pub database_url: Option<String>,
    /// One run per policy, in this order, with the same seed.
    pub policies: Vec<Policy>,
    pub out: PathBuf,
    /// The `fencelock` binary, for workers, lockd and the storage.
    pub binary: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
    /// How the checker and its workers connect to an external lock service (TLS,
    /// credentials); the workers get it as etcdctl's environment variables.
    pub connect: fencelock::lock::ConnectOptions,
    /// The same, as those variables.
    pub worker_env: Vec<(&'static str, std::ffi::OsString)>,
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

pub(crate) fn setup(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> CheckError {
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

/// The faults a backend and a resource allow, in a fixed order. `own_database`: the checker
/// started the PostgreSQL server itself (no `--database-url`).
pub fn applicable_faults(
    backend: &Backend,
    resource: Resource,
    own_database: bool,
) -> Vec<FaultKind> {
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
    match resource {
        Resource::Storage => faults.push(FaultKind::KillStorage),
        Resource::Postgres if own_database => faults.push(FaultKind::KillPostgres),
        Resource::Postgres | Resource::Etcd => {}
    }
    faults
}

/// Refuses faults the checker cannot inject with the processes it owns.
pub fn validate_faults(
    backend: &Backend,
    resource: Resource,
    own_database: bool,
    faults: &[FaultKind],
) -> Result<(), CheckError> {
    let mut allowed = applicable_faults(backend, resource, own_database);
    // A worker's clock is the checker's own doing, whatever the lock service.
    allowed.extend(STANDING_FAULTS);
    // Only on request: a run without them stays on loopback, as it always was. Every
    // process must be the checker's own to be placed on a host, PostgreSQL included, so
    // they apply to the storage only.
    if resource == Resource::Storage && !matches!(backend, Backend::External(_)) {
        allowed.extend([FaultKind::IsolateHolder, FaultKind::IsolateStorage]);
        if matches!(backend, Backend::Etcd { members, .. } if *members >= 3) {
            allowed.extend([FaultKind::PartitionLeader, FaultKind::PartitionHalves]);
        }
    }
    for fault in faults {
        if allowed.contains(fault) {
            continue;
        }
        let why = match (fault, backend, resource) {
            (FaultKind::PartitionLeader | FaultKind::PartitionHalves, Backend::Lockd, _) => {
                "lockd is a single process with no leader or members; use --etcd-members 3"
            }
            (
                FaultKind::PartitionLeader | FaultKind::PartitionHalves,
                Backend::Etcd { .. },
                Resource::Storage,
            ) => "it needs at least 3 etcd members (--etcd-members 3)",
            (f, Backend::Lockd | Backend::Etcd { .. }, _) if NETWORK_FAULTS.contains(f) => {
                "network faults apply to --resource storage only"
            }
            (f, Backend::External(_), _) if NETWORK_FAULTS.contains(f) => {
                "network faults need the checker's own lock service (lockd or --etcd-members), \
                 not --endpoints"
            }
            (FaultKind::KillMember, Backend::Lockd, _) => {
                "lockd is a single process with no members; use --etcd-members 3"
            }
            (FaultKind::KillStorage, _, Resource::Postgres) => {
                "with --resource postgres there is no storage server; kill-postgres kills the \
                 database"
            }
            (FaultKind::KillStorage, _, Resource::Etcd) => {
                "with --resource etcd the data lives in the lock service; use \
                 freeze-lock-service or kill-member"
            }
            (FaultKind::KillPostgres, _, Resource::Postgres) => {
                "the database given by --database-url is not a process this checker started"
            }
            (FaultKind::KillPostgres, _, _) => "it applies to --resource postgres only",
            (_, Backend::External(_), _) => {
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

/// Refuses policies and options that do not apply to the resource: the PostgreSQL and
/// etcd adapters have one fence each, used (`strict`) or left out (`off`).
pub fn validate_resource(
    resource: Resource,
    database_url: Option<&str>,
    policies: &[Policy],
) -> Result<(), CheckError> {
    if database_url.is_some() && resource != Resource::Postgres {
        return Err(CheckError::Usage(
            "--database-url applies to --resource postgres only".into(),
        ));
    }
    if resource == Resource::Storage {
        return Ok(());
    }
    match policies
        .iter()
        .find(|p| !matches!(p, Policy::Strict | Policy::Off))
    {
        Some(policy) => Err(CheckError::Usage(format!(
            "--fencing {policy} does not apply to --resource {}: its adapter fences every \
             cycle (strict) or is left out (off)",
            resource.as_str()
        ))),
        None => Ok(()),
    }
}

/// The policies `--compare` runs on a resource: the storage's four, or the adapters' two.
pub fn compared_policies(resource: Resource) -> Vec<Policy> {
    match resource {
        Resource::Storage => vec![Policy::Strict, Policy::Writes, Policy::Seed, Policy::Off],
        Resource::Postgres | Resource::Etcd => vec![Policy::Strict, Policy::Off],
    }
}

/// Runs the check once per policy and returns every run, analysed. `out` receives progress
/// lines when stderr is not a terminal.
pub async fn run(options: &Options) -> Result<Vec<Run>, CheckError> {
    validate_resource(
        options.resource,
        options.database_url.as_deref(),
        &options.policies,
    )?;
    let own_database = options.database_url.is_none();
    let faults = match &options.faults {
        Some(faults) => faults.clone(),
        None => applicable_faults(&options.backend, options.resource, own_database),
    };
    validate_faults(&options.backend, options.resource, own_database, &faults)?;
    if options.clients == 0 {
        return Err(CheckError::Usage("--clients must be at least 1".into()));
    }
    if faults.contains(&FaultKind::ClockSkew) {
        fencelock::process::faketime_library()
            .map_err(|e| CheckError::Usage(format!("fault clock-skew cannot be injected: {e}")))?;
    }
    std::fs::create_dir_all(&options.out)
        .map_err(|e| setup(format!("cannot create {}", options.out.display()))(e.into()))?;
    let Some(network_fault) = faults.iter().find(|f| NETWORK_FAULTS.contains(f)) else {
        return run_all(options, &faults, None).await;
    };
    TestNet::available().map_err(|e| {
        CheckError::Usage(format!(
            "fault {} cannot be injected: {e}",
            network_fault.name()
        ))
    })?;
    let members = match options.backend {
        Backend::Etcd { members, .. } => members,
        _ => 1,
    };
    let net = TestNet::new(hosts::count(options.clients as usize, members))
        .map_err(|e| setup("cannot make the test network")(e.into()))?;
    let net = Arc::new(net);
    let checker = net.host(hosts::CHECKER).clone();
    let (options, inner) = (options.clone(), net.clone());
    let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done) = std::sync::mpsc::channel::<()>();
    // Declared after `net`, so dropped before it: the network goes last, also when this
    // future is dropped (Ctrl-C), which ends the run on its thread first.
    let _ended = RunEnded {
        cancel: Some(cancel),
        done,
    };
    // The whole run, in the checker's host.
    checker
        .run(move || async move {
            let result = tokio::select! {
                result = run_all(&options, &faults, Some(&inner)) => result,
                // The caller's future was dropped (Ctrl-C): no one reads this answer.
                _ = cancelled => Err(CheckError::Usage("interrupted".into())),
            };
            // The run's processes are gone (their handles kill on drop), and this host's
            // handle on the network with them.
            drop(inner);
            let _ = done_tx.send(());
            result
        })
        .await
        .map_err(|e| setup("cannot enter the checker's test network host")(e.into()))?
}

/// How long a run interrupted in a test network gets to drop its processes before the
/// network is removed: dropping handles only sends signals, milliseconds of work.
const RUN_END_GRACE: Duration = Duration::from_secs(5);

/// Held by the caller of a run in a test network: dropped, it cancels the run (a no-op once
/// it is over) and waits until the run's thread has let go of the network, so that the
/// caller's handle is the last one and removes the namespaces, even after Ctrl-C.
struct RunEnded {
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
}

impl Drop for RunEnded {
    fn drop(&mut self) {
        drop(self.cancel.take());
        // Blocks this thread briefly; a run that ended normally has already answered. An
        // `Err` (the run's thread ended without answering: it failed to enter, or panicked)
        // means it holds nothing either.
        let _ = self.done.recv_timeout(RUN_END_GRACE);
    }
}

/// Starts the services (in `net`'s hosts, when given) and runs every policy.
async fn run_all(
    options: &Options,
    faults: &[FaultKind],
    net: Option<&TestNet>,
) -> Result<Vec<Run>, CheckError> {
    let mut lock_service = LockService::start(options, net).await?;
    // Owned like the lock service: dropped (killed and removed) when the check ends, fails
    // or is interrupted.
    let mut database = Database::start(options).await?;
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
        let services = Services {
            lock_service: &mut lock_service,
            database: database.as_mut(),
            net,
        };
        let run = run_policy(options, faults, services, policy, &lock, &dir, i).await?;
        runs.push(run);
    }
    Ok(runs)
}

/// Removes what an earlier check left in `dir` (only the files a check writes).
pub(crate) fn prepare_dir(dir: &Path) -> anyhow::Result<()> {
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
pub(crate) enum LockService {
    Lockd(Box<ServerProcess>),
    Etcd(Box<EtcdCluster>),
    External(Vec<String>),
}

impl LockService {
    /// Starts the lock service; lockd or each etcd member on its host of `net`, when given.
    async fn start(options: &Options, net: Option<&TestNet>) -> Result<Self, CheckError> {
        let workers = options.clients as usize;
        Ok(match &options.backend {
            Backend::Lockd => {
                let host = net.map(|n| n.host(hosts::LOCKD));
                let lockd =
                    ServerProcess::spawn_on(host, &options.binary, "lockd", ["--in-memory"])
                        .await
                        .map_err(|e| setup("cannot start lockd")(e.into()))?;
                LockService::Lockd(Box::new(lockd))
            }
            Backend::Etcd { members, binary } => {
                let hosts = net.map_or_else(Vec::new, |n| {
                    (0..*members)
                        .map(|m| n.host(hosts::member(m, workers)).clone())
                        .collect()
                });
                let etcd_options = fencelock::process::EtcdOptions {
                    hosts,
                    ..Default::default()
                };
                let cluster = EtcdCluster::start_with(*members, binary, etcd_options)
                    .await
                    .map_err(|e| setup("cannot start the etcd cluster")(e.into()))?;
                LockService::Etcd(Box::new(cluster))
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

/// The PostgreSQL database of `--resource postgres`: the user's, or a private server the
/// checker started (and removes when it is dropped).
pub(crate) struct Database {
    url: String,
    server: Option<PostgresServer>,
}

impl Database {
    async fn start(options: &Options) -> Result<Option<Self>, CheckError> {
        if options.resource != Resource::Postgres {
            return Ok(None);
        }
        Ok(Some(match &options.database_url {
            Some(url) => Database {
                url: url.clone(),
                server: None,
            },
            None => {
                let server = PostgresServer::start()
                    .await
                    .map_err(|e| setup("cannot start PostgreSQL")(e.into()))?;
                Database {
                    url: server.url(),
                    server: Some(server),
                }
            }
        }))
    }
}

/// The services a run uses and does not start itself.
pub(crate) struct Services<'a> {
    pub(crate) lock_service: &'a mut LockService,
    pub(crate) database: Option<&'a mut Database>,
    /// The test network, with network faults.
    pub(crate) net: Option<&'a TestNet>,
}

/// The key holding the workload's data: the storage's own key (a fresh storage per run), or
/// one per lock name in the lock service or the database, which outlive a run. `<lock
/// name>:<key>` is outside the lock name's range (`<lock name>/`), so the lock-key watch
/// never sees it.
pub(crate) fn data_key(resource: Resource, lock: &str, workload: Workload) -> String {
    match resource {
        Resource::Storage => workload.key().to_owned(),
        Resource::Postgres | Resource::Etcd => {
            format!("{}:{}", lock.trim_end_matches('/'), workload.key())
        }
    }
}

/// Creates the checker's fence and data table if missing, and starts lock name `lock` and
/// key `key` afresh: the fence row goes (a previous check's lock service handed out higher
/// tokens than this one's will) and the data row is emptied.
async fn prepare_postgres(url: &str, lock: &str, key: &str) -> anyhow::Result<()> {
    let (mut client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    let fence = PgFence::in_schema(CHECK_SCHEMA)?;
    fence.install(&mut client).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {DATA_TABLE} (name text PRIMARY KEY, value text NOT NULL)"
        ))
        .await?;
    client
        .execute(
            &format!("DELETE FROM {CHECK_SCHEMA}.fences WHERE name = $1"),
            &[&lock],
        )
        .await?;
    client
        .execute(
            &format!(
                "INSERT INTO {DATA_TABLE} (name, value) VALUES ($1, '') \
                 ON CONFLICT (name) DO UPDATE SET value = ''"
            ),
            &[&key],
        )
        .await?;
    drop(client);
    let _ = connection.await;
    Ok(())
}

/// The text under `key` in the database at the end, `None` when it cannot be read.
async fn read_final_postgres(url: &str, key: &str) -> Option<String> {
    for _ in 0..FINAL_READ_ATTEMPTS {
        if let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await
        {
            let connection = tokio::spawn(connection);
            let sql = format!("SELECT value FROM {DATA_TABLE} WHERE name = $1");
            let row = client.query_opt(&sql, &[&key]).await;
            drop(client);
            let _ = connection.await;
            if let Ok(row) = row {
                return Some(row.map(|r| r.get(0)).unwrap_or_default());
            }
        }
        sleep(FINAL_READ_PAUSE).await;
    }
    None
}

/// The text under `key` in the lock service at the end (a linearizable get), `None` when it
/// cannot be read.
async fn read_final_etcd(client: &Client, key: &str) -> Option<String> {
    for _ in 0..FINAL_READ_ATTEMPTS {
        let mut kv = client.kv();
        let get = kv.range(pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        });
        if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), get).await {
            let kvs = response.into_inner().kvs;
            return Some(
                kvs.first()
                    .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                    .unwrap_or_default(),
            );
        }
        sleep(FINAL_READ_PAUSE).await;
    }
    None
}

/// How often the final read is tried, and the pause between tries: enough for a restarted
/// service (a PostgreSQL crash recovery, an etcd member) to answer.
const FINAL_READ_ATTEMPTS: usize = 20;
const FINAL_READ_PAUSE: Duration = Duration::from_millis(250);

/// One policy's run: a fresh storage under `policy`, the workers on lock name `lock`, faults
/// until the duration is up, then the history files in `dir` loaded and analysed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_policy(
    options: &Options,
    faults: &[FaultKind],
    services: Services<'_>,
    policy: Policy,
    lock: &str,
    dir: &Path,
    index: usize,
) -> Result<Run, CheckError> {
    let Services {
        lock_service,
        database,
        net,
    } = services;
    let scratch = tempfile::Builder::new()
        .prefix("fencelock-check-")
        .tempdir()
        .map_err(|e| setup("cannot create a temporary directory")(e.into()))?;
    let endpoints = lock_service.endpoints();
    let client = Client::connect_with(&endpoints, &options.connect)
        .await
        .map_err(|e| setup("cannot reach the lock service")(e.into()))?;
    let key = data_key(options.resource, lock, options.workload);
    let mut data_args = vec![
        "--resource".to_string(),
        options.resource.as_str().to_string(),
        "--key".to_string(),
        key.clone(),
    ];
    if options.resource != Resource::Storage && policy == Policy::Off {
        data_args.push("--unfenced".into());
    }
    let mut storage = None;
    let mut database_url = None;
    match options.resource {
        Resource::Storage => {
            let storage_dir = scratch.path().join("storage");
            let storage_args = [
                "--data-dir".to_string(),
                storage_dir.display().to_string(),
                "--fencing".to_string(),
                policy.as_str().to_string(),
            ];
            let host = net.map(|n| n.host(hosts::STORAGE));
            let server = ServerProcess::spawn_on(host, &options.binary, "storage", storage_args)
                .await
                .map_err(|e| setup("cannot start the storage")(e.into()))?;
            data_args.extend(["--storage".to_string(), server.endpoint()]);
            storage = Some(server);
        }
        Resource::Postgres => {
            let url = database
                .as_ref()
                .map(|d| d.url.clone())
                .ok_or_else(|| setup("no database")(anyhow::anyhow!("PostgreSQL is not set up")))?;
            prepare_postgres(&url, lock, &key)
                .await
                .map_err(setup("cannot prepare the checker's tables in PostgreSQL"))?;
            data_args.extend(["--database-url".to_string(), url.clone()]);
            database_url = Some(url);
        }
        Resource::Etcd => {
            let mut kv = client.kv();
            let delete = kv.delete_range(pb::DeleteRangeRequest {
                key: key.as_bytes().to_vec(),
                ..Default::default()
            });
            delete
                .await
                .map_err(|e| setup(format!("cannot empty {key} in the lock service"))(e.into()))?;
        }
    }

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
    let faketime = if faults.contains(&FaultKind::ClockSkew) {
        let library = fencelock::process::faketime_library()
            .map_err(|e| setup("cannot skew a worker's clock")(anyhow::anyhow!(e)))?;
        Some(library)
    } else {
        None
    };
    for id in 1..=options.clients {
        let host = net.map(|n| n.host(hosts::worker(id as usize - 1)));
        let clock = faketime.as_deref().zip(clock_rate(faults, id));
        let worker = spawn_worker(options, id, host, clock, &endpoints, &data_args, lock, dir)
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
        storage: storage.as_mut(),
        postgres: database.and_then(|d| d.server.as_mut()),
        lock_service,
        net,
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
    let invoke_mono_ns = mono_ns();
    let text = match (&storage, &database_url) {
        (Some(storage), _) => read_final(&storage.endpoint(), &key).await,
        (None, Some(url)) => read_final_postgres(url, &key).await,
        (None, None) => read_final_etcd(&client, &key).await,
    };
    let (final_value, final_set) = match options.workload {
        Workload::Counter => (text.and_then(|t| counter_value(&t)), None),
        Workload::Set => {
            let elements = text.as_deref().and_then(decode_set);
            let final_set = elements.map(|elements| FinalSet {
                invoke_mono_ns,
                elements,
            });
            (None, final_set)
        }
    };
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
        resource: options.resource,
        workload: options.workload,
        final_value,
        final_set,
        start_mono_ns,
        end_mono_ns,
    };
    let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
    std::fs::write(dir.join(RUN_FILE), text)
        .map_err(|e| setup(format!("cannot write {RUN_FILE}"))(e.into()))?;
    drop(storage);
    load(dir)
}

/// The text stored under `key` at the end, read without a token (a plain read under every
/// policy): empty when the key holds nothing, `None` when the storage cannot answer.
pub(crate) async fn read_final(storage: &str, key: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Value {
        value: String,
    }
    let http = fencelock::storage::http_client_builder(&Default::default())
        .ok()?
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?;
    let url = format!("{storage}/v1/kv/{key}");
    for _ in 0..20 {
        match http.get(&url).send().await {
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Some(String::new()),
            Ok(r) if r.status().is_success() => {
                return r.json::<Value>().await.ok().map(|v| v.value);
            }
            _ => sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

/// The counter in a stored text: 0 when nothing is stored yet.
fn counter_value(text: &str) -> Option<u64> {
    if text.is_empty() {
        Some(0)
    } else {
        text.parse().ok()
    }
}

pub(crate) async fn current_revision(client: &Client) -> anyhow::Result<u64> {
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
pub(crate) async fn watch_keys(
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

/// The progress line: a bar on a terminal, a line every 10 s otherwise.
pub(crate) async fn show_progress(
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
        let acknowledged = match options.workload {
            Workload::Set => "adds",
            Workload::Counter => "increments",
        };
        let line = format!(
            "check {label} [{}{}] {:>3}/{} s  {acknowledged} {increments}  stale {stale}  faults {faults}",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_follow_the_processes_the_checker_owns() {
        let etcd = Backend::Etcd {
            members: 3,
            binary: "etcd".into(),
        };
        let storage = |backend: &Backend| applicable_faults(backend, Resource::Storage, true);
        assert!(storage(&etcd).contains(&FaultKind::KillMember));
        assert!(!storage(&Backend::Lockd).contains(&FaultKind::KillMember));
        assert!(storage(&Backend::Lockd).contains(&FaultKind::FreezeLockService));
        let external = Backend::External(vec!["127.0.0.1:2379".into()]);
        assert!(!storage(&external).contains(&FaultKind::FreezeLockService));
        assert!(storage(&external).contains(&FaultKind::KillStorage));

        let refused = validate_faults(
            &Backend::Lockd,
            Resource::Storage,
            true,
            &[FaultKind::Revoke, FaultKind::KillMember],
        );
        let Err(CheckError::Usage(message)) = refused else {
            panic!("kill-member on lockd must be refused");
        };
        assert!(message.contains("kill-member") && message.contains("--etcd-members"));
        assert!(validate_faults(&etcd, Resource::Storage, true, &storage(&etcd)).is_ok());
    }

    fn refusal(result: Result<(), CheckError>) -> String {
        match result {
            Err(CheckError::Usage(message)) => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn each_resource_gets_its_own_process_fault_and_refuses_the_others() {
        let lockd = &Backend::Lockd;
        let postgres = applicable_faults(lockd, Resource::Postgres, true);
        assert!(postgres.contains(&FaultKind::KillPostgres));
        assert!(!postgres.contains(&FaultKind::KillStorage));
        let users_database = applicable_faults(lockd, Resource::Postgres, false);
        assert!(!users_database.contains(&FaultKind::KillPostgres));
        let etcd = applicable_faults(lockd, Resource::Etcd, true);
        assert!(
            !etcd.contains(&FaultKind::KillStorage) && !etcd.contains(&FaultKind::KillPostgres)
        );
        assert!(etcd.contains(&FaultKind::FreezeLockService));

        let kill_storage = [FaultKind::KillStorage];
        let message = refusal(validate_faults(
            lockd,
            Resource::Postgres,
            true,
            &kill_storage,
        ));
        assert!(message.contains("kill-storage") && message.contains("kill-postgres"));
        let message = refusal(validate_faults(lockd, Resource::Etcd, true, &kill_storage));
        assert!(message.contains("lock service"), "{message}");
        let kill_postgres = [FaultKind::KillPostgres];
        let message = refusal(validate_faults(
            lockd,
            Resource::Postgres,
            false,
            &kill_postgres,
        ));
        assert!(message.contains("--database-url"), "{message}");
        let message = refusal(validate_faults(
            lockd,
            Resource::Storage,
            true,
            &kill_postgres,
        ));
        assert!(message.contains("--resource postgres"), "{message}");
    }

    #[test]
    fn network_faults_run_only_when_named_on_the_checkers_own_services_with_the_storage() {
        let lockd = &Backend::Lockd;
        let etcd = |members| Backend::Etcd {
            members,
            binary: "etcd".into(),
        };
        let external = Backend::External(vec!["http://127.0.0.1:2379".into()]);
        for backend in [lockd, &etcd(3)] {
            for resource in [Resource::Storage, Resource::Postgres, Resource::Etcd] {
                let default = applicable_faults(backend, resource, true);
                assert!(NETWORK_FAULTS.iter().all(|f| !default.contains(f)));
            }
        }
        let isolate = [FaultKind::IsolateHolder, FaultKind::IsolateStorage];
        let partitions = [FaultKind::PartitionLeader, FaultKind::PartitionHalves];
        for backend in [lockd, &etcd(1), &etcd(3)] {
            assert!(validate_faults(backend, Resource::Storage, true, &isolate).is_ok());
            let message = refusal(validate_faults(backend, Resource::Etcd, true, &isolate));
            assert!(message.contains("--resource storage"), "{message}");
        }
        assert!(validate_faults(&etcd(3), Resource::Storage, true, &partitions).is_ok());
        for fault in partitions {
            let message = refusal(validate_faults(lockd, Resource::Storage, true, &[fault]));
            assert!(message.contains("--etcd-members 3"), "{message}");
            let message = refusal(validate_faults(&etcd(1), Resource::Storage, true, &[fault]));
            assert!(message.contains("at least 3"), "{message}");
        }
        let message = refusal(validate_faults(
            &external,
            Resource::Storage,
            true,
            &isolate,
        ));
        assert!(message.contains("--endpoints"), "{message}");
    }

    #[test]
    fn clock_skew_runs_only_when_named_on_any_lock_service_and_skews_two_workers() {
        let external = Backend::External(vec!["http://127.0.0.1:2379".into()]);
        let skew = [FaultKind::ClockSkew];
        for backend in [&Backend::Lockd, &external] {
            for resource in [Resource::Storage, Resource::Postgres, Resource::Etcd] {
                assert!(!applicable_faults(backend, resource, false).contains(&skew[0]));
                assert!(validate_faults(backend, resource, false, &skew).is_ok());
            }
        }
        assert_eq!(clock_rate(&skew, 1), Some(0.25));
        assert_eq!(clock_rate(&skew, 2), Some(4.0));
        assert_eq!(clock_rate(&skew, 3), None);
        assert_eq!(clock_rate(&[FaultKind::Revoke], 1), None);
    }

    #[test]
    fn the_adapters_are_checked_fenced_or_unfenced_only() {
        for resource in [Resource::Postgres, Resource::Etcd] {
            assert!(validate_resource(resource, None, &compared_policies(resource)).is_ok());
            let message = refusal(validate_resource(resource, None, &[Policy::Writes]));
            assert!(message.contains("--fencing writes"), "{message}");
            assert!(message.contains(resource.as_str()), "{message}");
        }
        assert!(validate_resource(Resource::Storage, None, &[Policy::Seed]).is_ok());
        let message = refusal(validate_resource(
            Resource::Etcd,
            Some("postgresql://localhost/db"),
            &[Policy::Strict],
        ));
        assert!(message.contains("--database-url"), "{message}");
        assert_eq!(
            data_key(Resource::Etcd, "/fencelock-check/strict", Workload::Set),
            "/fencelock-check/strict:set"
        );
        assert_eq!(data_key(Resource::Storage, "/l", Workload::Set), "set");
    }
}
