//! `fencelock bench storage`: requests and keys written per second by the storage's REST
//! face, durable and in memory, with one connection and with many, next to a baseline server
//! measured in the same run by the same loader.
//!
//! Scenarios, all fenced writes under one fence with one token (equal tokens are accepted,
//! so every request passes the fence check and none is refused):
//! - `one-key`: `PUT /v1/kv/k0`, the same key every time;
//! - `distinct`: `PUT /v1/kv/{key}`, a key never written before every time (each one is also
//!   bound to the fence, durably);
//! - `txn`: `POST /v1/txn`, [`TXN_KEYS`] writes of new keys in one transaction;
//! - `read`: `GET /v1/kv/{key}`, a fenced read of one of the stored keys, picked at random.
//!
//! `--stored-keys N` fills each storage with N keys before its run is measured
//! (transactions of [`FILL_TXN_KEYS`] fenced writes of [`FILL_VALUE_BYTES`]-byte values, on
//! [`FILL_CONNECTIONS`] connections, untimed), and `--value-size` sets the size of every
//! measured write's value: how throughput grows with what the store holds and carries.
//! After the fill, a run waits until the storage's CPU is quiet (the durable engine has
//! flushed and compacted what the fill wrote; see [`SETTLED_CPU_SHARE`]), so it measures a
//! store at rest rather than one still digesting a bulk load.
//!
//! With `--rounds N` the baseline and every run are made N times, a round of all of them
//! after the other; each run is set against its own round's baseline, and the ratios are
//! printed as medians over the rounds (see [`super::rounds`]).
//!
//! With `--verify-tokens` every run is made twice in a row, on a plain storage and on one
//! started with `--verify-tokens` against a lockd of the benchmark's own, under a lock the
//! benchmark holds for the whole run: the writes then carry that lock's name and token, and
//! each pair is compared.
//!
//! Invariants: each run has a storage process of its own on a store holding only the run's
//! fill (so one run's keys do not slow the next), started from this binary on a free loopback port, its data in a
//! temporary directory removed after it is stopped; the loader runs in this process and the
//! servers in theirs, as wrk and a server would; every storage figure is set against the
//! baseline's with as many connections.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fencelock::process::{ServerProcess, SpawnError};
use fencelock::storage::{Policy, limits};

use super::baseline::{BaselineError, BaselineProcess};
use super::chart::{Chart, Scale, curves};
use super::http_load::{self, LoadError, LoadStats, RequestFn};
use super::rounds::{Ratios, median_points};

/// The table's name for the baseline.
const BASELINE: &str = "baseline";

/// The table's name for the synced baseline: the baseline answering after a group sync.
const SYNCED: &str = "synced";

/// The lock name every benchmark write is fenced under.
const FENCE: &str = "/fencelock-bench";

/// The fencing token of every write without verification: one holder that never loses its
/// lock.
const TOKEN: u64 = 1;

/// Writes per transaction in the `txn` scenario.
pub const TXN_KEYS: usize = 16;

/// Bytes of each measured write's value unless `--value-size` says otherwise (its default):
/// a short value, as the seed's clients write.
pub const DEFAULT_VALUE_BYTES: usize = 5;

/// Bytes of each value the fill writes.
pub const FILL_VALUE_BYTES: usize = 100;

/// Writes per transaction of the fill: as many as a transaction may hold.
pub const FILL_TXN_KEYS: usize = fencelock::storage::wire::MAX_TXN_OPS;

/// Connections the fill keeps busy.
pub const FILL_CONNECTIONS: usize = 4;

/// After a fill, the window over which the storage's CPU use is sampled while it settles.
const SETTLE_WINDOW: Duration = Duration::from_millis(500);

/// The storage has settled after a fill once it uses less CPU than this share of one core
/// over a [`SETTLE_WINDOW`]: the durable engine's flushes and compactions of the filled keys
/// are done, and the run measures a store at rest, as a long-running one would be.
const SETTLED_CPU_SHARE: f64 = 0.05;

/// Longest wait for a filled storage to settle; the run is measured anyway after it, and
/// says so.
const SETTLE_LIMIT: Duration = Duration::from_secs(600);

/// Bytes of a request's body besides its values: keys, JSON and headers, with room to spare.
const OVERHEAD_PER_KEY: usize = 96;

/// How the storage keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Store {
    /// On disk, each answer after its batch is synced (the default of `fencelock storage`).
    Durable,
    /// `--in-memory`: nothing synced, nothing kept.
    InMemory,
}

/// What the requests of a run do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Every request writes the same key.
    OneKey,
    /// Every request writes a new key.
    Distinct,
    /// Every request is a transaction writing [`TXN_KEYS`] new keys.
    Txn,
    /// Every request reads one of the stored keys (needs `--stored-keys`).
    Read,
}

impl Scenario {
    /// The name in the table, as on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::OneKey => "one-key",
            Scenario::Distinct => "distinct",
            Scenario::Txn => "txn",
            Scenario::Read => "read",
        }
    }

    /// Keys each request writes.
    pub fn keys_per_request(self) -> usize {
        match self {
            Scenario::OneKey | Scenario::Distinct | Scenario::Read => 1,
            Scenario::Txn => TXN_KEYS,
        }
    }
}

/// What to measure and for how long.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `fencelock` binary that runs the storage and the baseline.
    pub binary: PathBuf,
    /// Stores measured, one after the other.
    pub stores: Vec<Store>,
    /// Scenarios run on each store.
    pub scenarios: Vec<Scenario>,
    /// Connections per run, e.g. `[1, 32]`.
    pub connections: Vec<usize>,
    /// Measured time per run.
    pub duration: Duration,
    /// The storage's `--fencing`.
    pub policy: Policy,
    /// Also measure each run with `--verify-tokens`, next to the plain one.
    pub verify_tokens: bool,
    /// Keys put in each storage before its run, one set of runs per count.
    pub stored_keys: Vec<u64>,
    /// Bytes of every measured write's value, one set of runs per size.
    pub value_sizes: Vec<usize>,
    /// Times every run is made, the baseline included, one round of all after the other;
    /// each run is set against its own round's baseline (see [`super::rounds`]).
    pub rounds: usize,
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The storage could not be started.
    #[error(transparent)]
    Storage(#[from] SpawnError),
    /// The baseline could not be started.
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    /// The temporary data directory could not be created.
    #[error("cannot create a data directory for the storage")]
    DataDir(#[source] std::io::Error),
    /// The lock service for `--verify-tokens` could not be started or locked.
    #[error("the lock service for --verify-tokens: {0}")]
    LockService(String),
    /// The fill before a run failed.
    #[error("filling {server} with {keys} keys")]
    Fill {
        /// The server's label.
        server: &'static str,
        /// Keys the fill was to write.
        keys: u64,
        /// What went wrong.
        #[source]
        source: LoadError,
    },
    /// A run failed.
    #[error("{server} {scenario}, {connections} connection(s)")]
    Load {
        /// The server's label.
        server: &'static str,
        /// The scenario's label.
        scenario: &'static str,
        /// Connections of the run.
        connections: usize,
        /// What went wrong.
        #[source]
        source: LoadError,
    },
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// "baseline", or the store's label.
    pub server: &'static str,
    /// `None` for the baseline.
    pub scenario: Option<Scenario>,
    /// Connections of the run.
    pub connections: usize,
    /// Keys the store held before the run.
    pub stored_keys: u64,
    /// Bytes of each value written; 0 for the baseline and for reads.
    pub value_bytes: usize,
    /// Answers per second.
    pub requests_per_second: f64,
    /// Keys written per second; zero for the baseline.
    pub keys_per_second: f64,
    /// Latency percentiles: 50th, 99th, 99.9th.
    pub p50: Duration,
    /// See `p50`.
    pub p99: Duration,
    /// See `p50`.
    pub p999: Duration,
    /// CPU time of this process (the loader) per request, when the kernel told.
    pub loader_cpu: Option<Duration>,
    /// CPU time of the server process per request, when the kernel told.
    pub server_cpu: Option<Duration>,
    /// Which round of [`Options::rounds`] the run belongs to, from 1.
    pub round: usize,
}

/// Measures the baseline, then every scenario on every store, printing a table to `out` and
/// then the transaction's keys per second over single-key writes'; returns the figures.
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Vec<RunStats>, BenchError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "{:?} per run, {cores} cores shared by the loader and the server; fencing {}; \
         \"of base\" is requests/s over the baseline's at as many connections, \
         \"of sync\" a durable run's over the synced baseline's (the same server answering \
         after a group sync); CPU is per request",
        options.duration, options.policy
    );
    let _ = writeln!(
        out,
        "{:<9}  {:<8}  {:>8}  {:>6}  {:>5}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>7}  {:>7}  {:>10}  {:>10}",
        "server",
        "scenario",
        "stored",
        "value",
        "conns",
        "requests/s",
        "keys/s",
        "p50",
        "p99",
        "p99.9",
        "of base",
        "of sync",
        "loader CPU",
        "server CPU"
    );
    let verifying = match options.verify_tokens {
        true => Some(LockHeld::take(&options.binary).await?),
        false => None,
    };
    let mut all = Vec::new();
    for round in 1..=options.rounds.max(1) {
        run_round(options, verifying.as_ref(), round, out, &mut all).await?;
    }

    compare_baseline(&all, out);
    compare(&all, out);
    if options.verify_tokens {
        compare_verified(&all, out);
    }
    Ok(all)
}

/// One round: the baseline, then every run, each appended to `all` as it is printed.
async fn run_round(
    options: &Options,
    verifying: Option<&LockHeld>,
    round: usize,
    out: &mut impl Write,
    all: &mut Vec<RunStats>,
) -> Result<(), BenchError> {
    // The synced baseline only when a durable store is measured: it is their ceiling.
    let durable = options.stores.contains(&Store::Durable);
    let ceilings = [(BASELINE, false), (SYNCED, true)];
    for (server, sync) in ceilings.into_iter().filter(|&(_, sync)| durable || !sync) {
        let dir = match sync {
            true => Some(data_dir()?),
            false => None,
        };
        let baseline =
            BaselineProcess::spawn(&options.binary, dir.as_ref().map(|d| d.path())).await?;
        for &connections in &options.connections {
            let request = baseline_request(baseline.addr());
            let stats = measure(
                baseline.addr(),
                baseline.pid(),
                connections,
                options,
                request,
            )
            .await
            .map_err(|source| BenchError::Load {
                server,
                scenario: "fixed",
                connections,
                source,
            })?;
            let mut stats = figures(server, None, connections, (0, 0), &stats);
            stats.round = round;
            print_row(out, &stats, all);
            all.push(stats);
        }
        // Stopped before its log's directory is removed.
        drop(baseline);
        drop(dir);
    }
    // Without verification the plain runs only; with it, each plain run and then its twin.
    let variants: Vec<Option<&LockHeld>> =
        std::iter::once(None).chain(verifying.map(Some)).collect();
    let token = verifying.map_or(TOKEN, |held| held.token);
    for &store in &options.stores {
        for &scenario in &options.scenarios {
            for &stored in &options.stored_keys {
                // A read carries no value: one set of runs whatever the sizes.
                let sizes = match scenario {
                    Scenario::Read => &[0][..],
                    _ => &options.value_sizes[..],
                };
                for &value_bytes in sizes {
                    for &connections in &options.connections {
                        for &verify in &variants {
                            let run = Run {
                                store,
                                scenario,
                                stored,
                                value_bytes,
                                connections,
                                token,
                                verify,
                            };
                            let mut stats = run.measure(options).await?;
                            stats.round = round;
                            print_row(out, &stats, all);
                            all.push(stats);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The baseline's run with as many connections in the same round as `stats`.
fn baseline_of<'a>(stats: &RunStats, all: &'a [RunStats]) -> Option<&'a RunStats> {
    baseline_named(BASELINE, stats, all)
}

/// The synced baseline's run with as many connections in the same round as `stats`, for
/// a durable store's run.
fn synced_of<'a>(stats: &RunStats, all: &'a [RunStats]) -> Option<&'a RunStats> {
    match stats.server.starts_with("durable") {
        true => baseline_named(SYNCED, stats, all),
        false => None,
    }
}

fn baseline_named<'a>(server: &str, stats: &RunStats, all: &'a [RunStats]) -> Option<&'a RunStats> {
    all.iter().find(|b| {
        b.server == server && b.connections == stats.connections && b.round == stats.round
    })
}

/// With several rounds: every run's requests/s over its round's baseline, as the median of
/// the rounds (one round's table already shows it, as "of base").
fn compare_baseline(all: &[RunStats], out: &mut impl Write) {
    if !all.iter().any(|s| s.round > 1) {
        return;
    }
    let mut ratios = Ratios::default();
    for stats in all.iter().filter(|s| s.server != BASELINE) {
        let ceilings = [
            ("the baseline", baseline_of(stats, all)),
            ("the synced baseline", synced_of(stats, all)),
        ];
        for (name, baseline) in ceilings {
            if let Some(baseline) = baseline {
                ratios.add(
                    format!(
                        "{} {}{} over {name}, requests/s, {} connection(s)",
                        stats.server,
                        stats.scenario.map_or("fixed", Scenario::label),
                        shape_label(stats),
                        stats.connections
                    ),
                    stats.requests_per_second,
                    baseline.requests_per_second,
                );
            }
        }
    }
    ratios.print(out);
}

/// ", 1M stored, 1KiB values" for a run over stored keys or with sized values; empty for
/// the defaults.
fn shape_label(stats: &RunStats) -> String {
    let mut label = String::new();
    if stats.stored_keys > 0 {
        let _ = write!(label, ", {} stored", count_label(stats.stored_keys));
    }
    if stats.value_bytes > 0 && stats.value_bytes != DEFAULT_VALUE_BYTES {
        let _ = write!(label, ", {} values", bytes_label(stats.value_bytes));
    }
    label
}

/// One measured run on a storage of its own.
struct Run<'a> {
    store: Store,
    scenario: Scenario,
    stored: u64,
    value_bytes: usize,
    connections: usize,
    token: u64,
    verify: Option<&'a LockHeld>,
}

impl Run<'_> {
    /// Starts the run's storage, fills it, loads it and stops it.
    async fn measure(&self, options: &Options) -> Result<RunStats, BenchError> {
        let label = label(self.store, self.verify.is_some());
        let mut extra = self
            .verify
            .map(|held| held.storage_args())
            .unwrap_or_default();
        extra.extend(self.limits());
        let storage =
            StorageProcess::start(&options.binary, self.store, options.policy, &extra).await?;
        let addr = storage.server.addr();
        let filled = fill(addr, self.stored, self.token).await;
        let measured = match filled {
            Ok(()) => {
                if self.stored > 0
                    && let Some(pid) = storage.server.pid()
                    && !settle(pid).await
                {
                    eprintln!(
                        "{label} with {} stored keys still busy after {SETTLE_LIMIT:?}; measuring anyway",
                        count_label(self.stored)
                    );
                }
                let request = storage_request(
                    addr,
                    self.scenario,
                    self.token,
                    self.value_bytes,
                    self.stored,
                );
                measure(
                    addr,
                    storage.server.pid(),
                    self.connections,
                    options,
                    request,
                )
                .await
                .map_err(|source| BenchError::Load {
                    server: label,
                    scenario: self.scenario.label(),
                    connections: self.connections,
                    source,
                })
            }
            Err(source) => Err(BenchError::Fill {
                server: label,
                keys: self.stored,
                source,
            }),
        };
        storage.stop().await;
        let shape = (self.stored, self.value_bytes);
        Ok(figures(
            label,
            Some(self.scenario),
            self.connections,
            shape,
            &measured?,
        ))
    }

    /// `--max-body` and `--max-queued-bytes` for requests whose values go past the defaults.
    fn limits(&self) -> Vec<String> {
        let body = self.scenario.keys_per_request() * (self.value_bytes + OVERHEAD_PER_KEY);
        let fill_body = FILL_TXN_KEYS * (FILL_VALUE_BYTES + OVERHEAD_PER_KEY);
        let body = body.max(fill_body);
        if body <= limits::DEFAULT_MAX_BODY {
            return Vec::new();
        }
        let queued =
            (body * self.connections.max(FILL_CONNECTIONS)).max(limits::DEFAULT_MAX_QUEUED_BYTES);
        vec![
            "--max-body".into(),
            body.to_string(),
            "--max-queued-bytes".into(),
            queued.to_string(),
        ]
    }
}

/// Writes `keys` keys (`f0`, `f1`, ...) of [`FILL_VALUE_BYTES`] bytes under the benchmark's
/// fence, in transactions of [`FILL_TXN_KEYS`] on [`FILL_CONNECTIONS`] connections.
async fn fill(addr: SocketAddr, keys: u64, token: u64) -> Result<(), LoadError> {
    if keys == 0 {
        return Ok(());
    }
    let per_txn = FILL_TXN_KEYS as u64;
    let txns = keys.div_ceil(per_txn);
    let lanes = FILL_CONNECTIONS as u64;
    // Connection `c` sends transactions c, c + lanes, c + 2 lanes, ...
    let counts: Vec<u64> = (0..lanes)
        .map(|c| (txns + lanes - 1 - c) / lanes)
        .filter(|&n| n > 0)
        .collect();
    let value = "f".repeat(FILL_VALUE_BYTES);
    let headers = format!("Host: {addr}\r\nFencing-Token: {token}\r\n");
    let request = Arc::new(move |connection: usize, seq: u64, out: &mut Vec<u8>| {
        let txn = seq * lanes + connection as u64;
        let first = txn * per_txn;
        let ops: Vec<String> = (first..(first + per_txn).min(keys))
            .map(|key| format!(r#"{{"op":"write","key":"f{key}","val":"{value}"}}"#))
            .collect();
        txn_request(out, &headers, &ops);
    });
    http_load::send_counted(addr, &counts, request).await
}

/// The table's name for a store, verifying tokens or not.
fn label(store: Store, verify: bool) -> &'static str {
    match (store, verify) {
        (Store::Durable, false) => "durable",
        (Store::Durable, true) => "durable+verify",
        (Store::InMemory, false) => "in-memory",
        (Store::InMemory, true) => "in-memory+verify",
    }
}

/// A lockd of the benchmark's own and a lock held on it for the whole run: the token every
/// verified write presents.
struct LockHeld {
    // Declared first: the guard and its session go before the server.
    _guard: fencelock::lock::LockGuard,
    endpoint: String,
    token: u64,
    _lockd: ServerProcess,
}

impl LockHeld {
    async fn take(binary: &Path) -> Result<Self, BenchError> {
        let fail = |e: &dyn std::fmt::Display| BenchError::LockService(e.to_string());
        let lockd = ServerProcess::spawn(binary, "lockd", ["--in-memory"]).await?;
        let endpoint = lockd.addr().to_string();
        let client = fencelock::lock::Client::connect([endpoint.as_str()])
            .await
            .map_err(|e| fail(&e))?;
        let session = client
            .session(Duration::from_secs(60))
            .await
            .map_err(|e| fail(&e))?;
        let guard = session.lock(FENCE).await.map_err(|e| fail(&e))?;
        Ok(Self {
            token: guard.token().get(),
            _guard: guard,
            endpoint,
            _lockd: lockd,
        })
    }

    fn storage_args(&self) -> Vec<String> {
        vec![
            "--verify-tokens".into(),
            "--endpoints".into(),
            self.endpoint.clone(),
        ]
    }
}

/// One line per run measured both ways: requests/s with verification over without.
fn compare_verified(all: &[RunStats], out: &mut impl Write) {
    for verified in all.iter().filter(|s| s.server.ends_with("+verify")) {
        let plain_label = verified.server.trim_end_matches("+verify");
        let plain = all.iter().find(|s| {
            s.server == plain_label
                && s.round == verified.round
                && s.stored_keys == verified.stored_keys
                && s.value_bytes == verified.value_bytes
                && s.scenario == verified.scenario
                && s.connections == verified.connections
        });
        if let Some(plain) = plain {
            let _ = writeln!(
                out,
                "verified/plain requests/s, {plain_label} {}, {} connection(s): {:.2} ({:.0} / {:.0}), p99 {:.1?} / {:.1?}",
                verified.scenario.map_or("fixed", Scenario::label),
                verified.connections,
                verified.requests_per_second / plain.requests_per_second,
                verified.requests_per_second,
                plain.requests_per_second,
                verified.p99,
                plain.p99,
            );
        }
    }
}

/// The load run plus the CPU each side used during it.
struct Measured {
    load: LoadStats,
    loader_cpu: Option<Duration>,
    server_cpu: Option<Duration>,
}

async fn measure(
    addr: SocketAddr,
    server_pid: Option<u32>,
    connections: usize,
    options: &Options,
    request: Arc<RequestFn>,
) -> Result<Measured, LoadError> {
    // The CPU counters include the warm-up, a few dozen requests per connection against
    // the thousands measured: per request they overstate by well under a percent.
    let loader_before = cpu_time("self");
    let server_before = server_pid.and_then(|pid| cpu_time(&pid.to_string()));
    let load = http_load::run(addr, connections, options.duration, request).await?;
    let loader_after = cpu_time("self");
    let server_after = server_pid.and_then(|pid| cpu_time(&pid.to_string()));
    let per_request = |before: Option<Duration>, after: Option<Duration>| {
        let used = after?.checked_sub(before?)?;
        let requests = u32::try_from(load.requests).ok().filter(|&n| n > 0)?;
        Some(used / requests)
    };
    Ok(Measured {
        loader_cpu: per_request(loader_before, loader_after),
        server_cpu: per_request(server_before, server_after),
        load,
    })
}

fn figures(
    server: &'static str,
    scenario: Option<Scenario>,
    connections: usize,
    (stored_keys, value_bytes): (u64, usize),
    measured: &Measured,
) -> RunStats {
    let load = &measured.load;
    let keys = scenario.map_or(0, Scenario::keys_per_request);
    RunStats {
        server,
        scenario,
        connections,
        stored_keys,
        value_bytes,
        requests_per_second: load.requests_per_second(),
        keys_per_second: load.requests_per_second() * keys as f64,
        p50: load.latency_at(0.5),
        p99: load.latency_at(0.99),
        p999: load.latency_at(0.999),
        loader_cpu: measured.loader_cpu,
        server_cpu: measured.server_cpu,
        round: 1,
    }
}

/// One table row; `earlier` holds the baseline's rows.
fn print_row(out: &mut impl Write, stats: &RunStats, earlier: &[RunStats]) {
    let baseline =
        baseline_of(stats, earlier).map_or(stats.requests_per_second, |b| b.requests_per_second);
    let share = 100.0 * stats.requests_per_second / baseline;
    let of_synced = synced_of(stats, earlier).map_or_else(
        || "-".to_owned(),
        |b| {
            format!(
                "{:.1}%",
                100.0 * stats.requests_per_second / b.requests_per_second
            )
        },
    );
    let (keys, stored, value) = match stats.scenario {
        Some(_) => (
            format!("{:.0}", stats.keys_per_second),
            count_label(stats.stored_keys),
            bytes_label(stats.value_bytes),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    };
    let cpu = |cpu: Option<Duration>| cpu.map_or_else(|| "?".into(), |c| format!("{c:.1?}"));
    let _ = writeln!(
        out,
        "{:<9}  {:<8}  {:>8}  {:>6}  {:>5}  {:>10.0}  {:>10}  {:>9.1?}  {:>9.1?}  {:>9.1?}  {:>6.1}%  {:>7}  {:>10}  {:>10}",
        stats.server,
        stats.scenario.map_or("fixed", Scenario::label),
        stored,
        value,
        stats.connections,
        stats.requests_per_second,
        keys,
        stats.p50,
        stats.p99,
        stats.p999,
        share,
        of_synced,
        cpu(stats.loader_cpu),
        cpu(stats.server_cpu),
    );
}

/// `1000` as "1k", `10000000` as "10M": how key counts read in the table.
pub fn count_label(count: u64) -> String {
    match count {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// `65536` as "64KiB", `100` as "100B"; `0` (no value) as "-".
pub fn bytes_label(bytes: usize) -> String {
    match bytes {
        0 => "-".into(),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{}MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{}KiB", n >> 10),
        n => format!("{n}B"),
    }
}

/// What a chart of the runs has along its x axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChartAxis {
    /// Keys stored before the run.
    StoredKeys,
    /// Bytes of each value written.
    ValueSize,
    /// Connections of the run.
    Connections,
}

impl ChartAxis {
    /// The first of stored keys, value sizes and connections that lists several values.
    pub fn of(stored: &[u64], sizes: &[usize], connections: &[usize]) -> Option<Self> {
        let several = |n: usize| n > 1;
        if several(stored.len()) {
            Some(ChartAxis::StoredKeys)
        } else if several(sizes.len()) {
            Some(ChartAxis::ValueSize)
        } else if several(connections.len()) {
            Some(ChartAxis::Connections)
        } else {
            None
        }
    }

    fn x(self, stats: &RunStats) -> f64 {
        match self {
            ChartAxis::StoredKeys => stats.stored_keys as f64,
            ChartAxis::ValueSize => stats.value_bytes as f64,
            ChartAxis::Connections => stats.connections as f64,
        }
    }
}

/// Keys per second against `axis`, one curve per server and scenario (and per value of the
/// other dimensions where they vary); the baseline's requests per second only against
/// connections. Points on a log axis at 0 (no stored keys, reads' values) are left out.
pub fn chart(all: &[RunStats], axis: ChartAxis) -> Chart {
    let runs: Vec<&RunStats> = all
        .iter()
        .filter(|s| s.scenario.is_some() || axis == ChartAxis::Connections)
        .collect();
    let varies = |key: fn(&RunStats) -> u64| {
        let first = runs.first().map(|s| key(s));
        runs.iter().any(|s| Some(key(s)) != first)
    };
    let show_stored = axis != ChartAxis::StoredKeys && varies(|s| s.stored_keys);
    let show_value = axis != ChartAxis::ValueSize && varies(|s| s.value_bytes as u64);
    let show_connections = axis != ChartAxis::Connections && varies(|s| s.connections as u64);
    let mut labelled = Vec::new();
    for stats in runs {
        let mut label = format!(
            "{} {}",
            stats.server,
            stats.scenario.map_or("fixed body", Scenario::label)
        );
        if show_stored {
            let _ = write!(label, ", {} stored", count_label(stats.stored_keys));
        }
        if show_value && stats.value_bytes > 0 {
            let _ = write!(label, ", {} values", bytes_label(stats.value_bytes));
        }
        if show_connections {
            let _ = write!(label, ", {} conns", stats.connections);
        }
        let y = match stats.scenario {
            Some(_) => stats.keys_per_second,
            None => stats.requests_per_second,
        };
        let point = (axis.x(stats), y);
        labelled.push((label, point));
    }
    // With several rounds, a point is the median of its rounds.
    let series = curves(median_points(labelled));
    let (title, x_label) = match axis {
        ChartAxis::StoredKeys => (
            "Storage throughput vs keys stored",
            "keys stored before the run",
        ),
        ChartAxis::ValueSize => ("Storage throughput vs value size", "bytes per value"),
        ChartAxis::Connections => ("Storage throughput vs connections", "connections"),
    };
    Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: match axis {
            ChartAxis::Connections => "keys/s (baseline: requests/s)",
            _ => "keys/s",
        }
        .into(),
        x_scale: Scale::Log,
        y_scale: Scale::Linear,
        series,
    }
}

/// One line per store and connection count measured with both: the transaction's keys per
/// second over those of single-key writes of new keys (the same work, one key a request).
fn compare(all: &[RunStats], out: &mut impl Write) {
    let mut ratios = Ratios::default();
    for txn in all.iter().filter(|s| s.scenario == Some(Scenario::Txn)) {
        let single = all.iter().find(|s| {
            s.server == txn.server
                && s.round == txn.round
                && s.connections == txn.connections
                && s.stored_keys == txn.stored_keys
                && s.value_bytes == txn.value_bytes
                && s.scenario == Some(Scenario::Distinct)
        });
        if let Some(single) = single {
            ratios.add(
                format!(
                    "txn/distinct keys/s, {}{}, {} connection(s)",
                    txn.server,
                    shape_label(txn),
                    txn.connections
                ),
                txn.keys_per_second,
                single.keys_per_second,
            );
        }
    }
    ratios.print(out);
}

/// A storage process on an empty store.
struct StorageProcess {
    // Declared first, so that on an early drop the server is killed before its data
    // directory is removed.
    server: ServerProcess,
    _data: Option<tempfile::TempDir>,
}

impl StorageProcess {
    async fn start(
        binary: &Path,
        store: Store,
        policy: Policy,
        extra: &[String],
    ) -> Result<Self, BenchError> {
        let mut args = vec!["--fencing".to_owned(), policy.to_string()];
        args.extend(extra.iter().cloned());
        let data = match store {
            Store::InMemory => {
                args.push("--in-memory".into());
                None
            }
            Store::Durable => {
                let dir = data_dir()?;
                args.push("--data-dir".into());
                args.push(dir.path().join("data").display().to_string());
                Some(dir)
            }
        };
        let server = ServerProcess::spawn(binary, "storage", args).await?;
        Ok(Self {
            server,
            _data: data,
        })
    }

    /// Kills the server and waits until it is gone, then removes its data.
    async fn stop(mut self) {
        self.server.kill().await;
    }
}

/// A temporary directory for a durable store's data or the synced baseline's log, on the
/// same file system for both.
fn data_dir() -> Result<tempfile::TempDir, BenchError> {
    tempfile::Builder::new()
        .prefix("fencelock-bench-storage-")
        .tempdir()
        .map_err(BenchError::DataDir)
}

fn baseline_request(addr: SocketAddr) -> Arc<RequestFn> {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    Arc::new(move |_, _, out: &mut Vec<u8>| out.extend_from_slice(&request))
}

fn storage_request(
    addr: SocketAddr,
    scenario: Scenario,
    token: u64,
    value_bytes: usize,
    stored: u64,
) -> Arc<RequestFn> {
    let headers = format!("Host: {addr}\r\nFencing-Token: {token}\r\n");
    let value = "v".repeat(value_bytes);
    match scenario {
        Scenario::OneKey => {
            let request = put("k0", &headers, &value).into_bytes();
            Arc::new(move |_, _, out: &mut Vec<u8>| out.extend_from_slice(&request))
        }
        Scenario::Distinct => Arc::new(move |connection, seq, out: &mut Vec<u8>| {
            out.extend_from_slice(
                put(&format!("k{connection}-{seq}"), &headers, &value).as_bytes(),
            );
        }),
        Scenario::Txn => Arc::new(move |connection, seq, out: &mut Vec<u8>| {
            let ops: Vec<String> = (0..TXN_KEYS)
                .map(|i| {
                    format!(r#"{{"op":"write","key":"t{connection}-{seq}-{i}","val":"{value}"}}"#)
                })
                .collect();
            txn_request(out, &headers, &ops);
        }),
        Scenario::Read => Arc::new(move |connection, seq, out: &mut Vec<u8>| {
            let key = spread(connection as u64, seq) % stored.max(1);
            let _ = write!(
                out,
                "GET /v1/kv/f{key}?fence={FENCE} HTTP/1.1\r\n{headers}\r\n"
            );
        }),
    }
}

/// A fenced `POST /v1/txn` of `ops` (JSON objects).
fn txn_request(out: &mut Vec<u8>, headers: &str, ops: &[String]) {
    let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
    let _ = write!(
        out,
        "POST /v1/txn?fence={FENCE} HTTP/1.1\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

/// A fenced `PUT` of `value` under `key`.
fn put(key: &str, headers: &str, value: &str) -> String {
    format!(
        "PUT /v1/kv/{key}?fence={FENCE} HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n{value}",
        value.len()
    )
}

/// Waits until process `pid` uses less than [`SETTLED_CPU_SHARE`] of a core over a
/// [`SETTLE_WINDOW`]; false when [`SETTLE_LIMIT`] passes first or its CPU cannot be read.
async fn settle(pid: u32) -> bool {
    let pid = pid.to_string();
    let deadline = tokio::time::Instant::now() + SETTLE_LIMIT;
    let Some(mut before) = cpu_time(&pid) else {
        return false;
    };
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(SETTLE_WINDOW).await;
        let Some(now) = cpu_time(&pid) else {
            return false;
        };
        let used = now.saturating_sub(before).as_secs_f64();
        if used < SETTLE_WINDOW.as_secs_f64() * SETTLED_CPU_SHARE {
            return true;
        }
        before = now;
    }
    false
}

/// A well-mixed number for connection `connection`'s request `seq` (splitmix64), so that
/// reads land all over the stored keys rather than in one cached corner.
fn spread(connection: u64, seq: u64) -> u64 {
    let mut z = (connection << 40 ^ seq).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// CPU time (user and system) used so far by process `pid` (`"self"` for this one), from
/// `/proc/PID/stat`; `None` when it cannot be read.
fn cpu_time(pid: &str) -> Option<Duration> {
    // utime and stime are fields 14 and 15, the 12th and 13th after the command name.
    let fields = fencelock::process::stat_fields(pid)?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let per_second = rustix::param::clock_ticks_per_second();
    Some(Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_writes_its_keys_under_the_fence_with_the_token() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut out = Vec::new();
        storage_request(addr, Scenario::Txn, 1, 5, 0)(3, 7, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /v1/txn?fence=/fencelock-bench HTTP/1.1\r\n"));
        assert!(head.contains("\r\nFencing-Token: 1\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}", body.len())));
        let txn = fencelock::storage::wire::TxnBody::decode(body.as_bytes()).unwrap();
        assert_eq!(txn.ops.len(), TXN_KEYS);
        assert_eq!(txn.ops[15].key(), "t3-7-15");
    }

    #[test]
    fn distinct_writes_never_repeat_a_key() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let request = storage_request(addr, Scenario::Distinct, 9, 5, 0);
        let line = |connection, seq| {
            let mut out = Vec::new();
            request(connection, seq, &mut out);
            String::from_utf8(out)
                .unwrap()
                .lines()
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            line(0, 1),
            "PUT /v1/kv/k0-1?fence=/fencelock-bench HTTP/1.1"
        );
        assert_ne!(line(1, 1), line(0, 1));
        assert_ne!(line(0, 2), line(0, 1));
    }

    #[test]
    fn reads_spread_over_the_stored_keys_and_name_the_fence() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let request = storage_request(addr, Scenario::Read, 4, 0, 1000);
        let mut keys = std::collections::BTreeSet::new();
        for seq in 0..200 {
            let mut out = Vec::new();
            request(seq as usize % 3, seq, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("\r\nFencing-Token: 4\r\n"), "{text}");
            assert!(text.ends_with("\r\n\r\n"), "{text}");
            let path = text.split(' ').nth(1).unwrap();
            let key = path.strip_prefix("/v1/kv/f").unwrap();
            let (index, query) = key.split_once('?').unwrap();
            assert_eq!(query, "fence=/fencelock-bench");
            let index: u64 = index.parse().unwrap();
            assert!(index < 1000);
            keys.insert(index);
        }
        // 200 draws from 1,000 keys: nearly all distinct if they are spread.
        assert!(keys.len() > 150, "{} distinct keys", keys.len());
    }

    #[test]
    fn values_have_the_size_asked() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut out = Vec::new();
        storage_request(addr, Scenario::OneKey, 1, 65536, 0)(0, 0, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert_eq!(body.len(), 65536);
        assert!(head.contains("\r\nContent-Length: 65536"));
    }

    #[test]
    fn counts_and_sizes_read_as_in_the_table() {
        assert_eq!(count_label(0), "0");
        assert_eq!(count_label(1000), "1k");
        assert_eq!(count_label(10_000_000), "10M");
        assert_eq!(count_label(1500), "1500");
        assert_eq!(bytes_label(0), "-");
        assert_eq!(bytes_label(100), "100B");
        assert_eq!(bytes_label(65536), "64KiB");
        assert_eq!(bytes_label(1 << 20), "1MiB");
    }

    #[test]
    fn large_values_raise_the_storage_limits_and_small_ones_keep_the_defaults() {
        let run = |scenario, value_bytes| Run {
            store: Store::InMemory,
            scenario,
            stored: 0,
            value_bytes,
            connections: 32,
            token: 1,
            verify: None,
        };
        assert!(run(Scenario::Txn, 5).limits().is_empty());
        let args = run(Scenario::Txn, 65536).limits();
        assert_eq!(args[0], "--max-body");
        let body: usize = args[1].parse().unwrap();
        assert!(body > TXN_KEYS * 65536, "{body}");
        let queued: usize = args[3].parse().unwrap();
        assert!(queued >= 32 * body);
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        assert!(cpu_time("self").is_some());
        assert!(cpu_time("no-such-process").is_none());
    }
}
