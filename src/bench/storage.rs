//! `fencelock bench storage`: requests and keys written per second by the storage's REST
//! face, durable and in memory, with one connection and with many, next to a baseline server
//! measured in the same run by the same loader.
//!
//! Scenarios, all fenced writes under one fence with one token (equal tokens are accepted,
//! so every request passes the fence check and none is refused):
//! - `one-key`: `PUT /v1/kv/k0`, the same key every time;
//! - `distinct`: `PUT /v1/kv/{key}`, a key never written before every time (each one is also
//!   bound to the fence, durably);
//! - `txn`: `POST /v1/txn`, [`TXN_KEYS`] writes of new keys in one transaction.
//!
//! With `--verify-tokens` every run is made twice in a row, on a plain storage and on one
//! started with `--verify-tokens` against a lockd of the benchmark's own, under a lock the
//! benchmark holds for the whole run: the writes then carry that lock's name and token, and
//! each pair is compared.
//!
//! Invariants: each run has a storage process of its own on an empty store (so one run's keys
//! do not slow the next), started from this binary on a free loopback port, its data in a
//! temporary directory removed after it is stopped; the loader runs in this process and the
//! servers in theirs, as wrk and a server would; every storage figure is set against the
//! baseline's with as many connections.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fencelock::process::{ServerProcess, SpawnError};
use fencelock::storage::Policy;

use super::baseline::{BaselineError, BaselineProcess};
use super::http_load::{self, LoadError, LoadStats, RequestFn};

/// The lock name every benchmark write is fenced under.
const FENCE: &str = "/fencelock-bench";

/// The fencing token of every write without verification: one holder that never loses its
/// lock.
const TOKEN: u64 = 1;

/// Writes per transaction in the `txn` scenario.
pub const TXN_KEYS: usize = 16;

/// The value of every write: as small as a lock holder's typical record.
const VALUE: &str = "value";

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
}

impl Scenario {
    /// The name in the table, as on the command line.
    pub fn label(self) -> &'static str {
        match self {
            Scenario::OneKey => "one-key",
            Scenario::Distinct => "distinct",
            Scenario::Txn => "txn",
        }
    }

    /// Keys each request writes.
    pub fn keys_per_request(self) -> usize {
        match self {
            Scenario::OneKey | Scenario::Distinct => 1,
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
}

/// Measures the baseline, then every scenario on every store, printing a table to `out` and
/// then the transaction's keys per second over single-key writes'; returns the figures.
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Vec<RunStats>, BenchError> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let _ = writeln!(
        out,
        "{:?} per run, {cores} cores shared by the loader and the server; fencing {}; \
         \"of base\" is requests/s over the baseline's at as many connections; \
         CPU is per request",
        options.duration, options.policy
    );
    let _ = writeln!(
        out,
        "{:<9}  {:<8}  {:>5}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>7}  {:>10}  {:>10}",
        "server",
        "scenario",
        "conns",
        "requests/s",
        "keys/s",
        "p50",
        "p99",
        "p99.9",
        "of base",
        "loader CPU",
        "server CPU"
    );
    let mut all = Vec::new();
    let baseline = BaselineProcess::spawn(&options.binary).await?;
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
            server: "baseline",
            scenario: "fixed",
            connections,
            source,
        })?;
        let stats = figures("baseline", None, connections, &stats);
        print_row(out, &stats, &all);
        all.push(stats);
    }
    drop(baseline);
    let verifying = match options.verify_tokens {
        true => Some(LockHeld::take(&options.binary).await?),
        false => None,
    };
    // Without verification the plain runs only; with it, each plain run and then its twin.
    let variants: Vec<Option<&LockHeld>> = std::iter::once(None)
        .chain(verifying.as_ref().map(Some))
        .collect();
    let token = verifying.as_ref().map_or(TOKEN, |held| held.token);
    for &store in &options.stores {
        for &scenario in &options.scenarios {
            for &connections in &options.connections {
                for &verify in &variants {
                    let label = label(store, verify.is_some());
                    let extra = verify.map(|held| held.storage_args()).unwrap_or_default();
                    let storage =
                        StorageProcess::start(&options.binary, store, options.policy, &extra)
                            .await?;
                    let request = storage_request(storage.server.addr(), scenario, token);
                    let measured = measure(
                        storage.server.addr(),
                        storage.server.pid(),
                        connections,
                        options,
                        request,
                    )
                    .await;
                    storage.stop().await;
                    let measured = measured.map_err(|source| BenchError::Load {
                        server: label,
                        scenario: scenario.label(),
                        connections,
                        source,
                    })?;
                    let stats = figures(label, Some(scenario), connections, &measured);
                    print_row(out, &stats, &all);
                    all.push(stats);
                }
            }
        }
    }
    compare(&all, out);
    if options.verify_tokens {
        compare_verified(&all, out);
    }
    Ok(all)
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
    measured: &Measured,
) -> RunStats {
    let load = &measured.load;
    let keys = scenario.map_or(0, Scenario::keys_per_request);
    RunStats {
        server,
        scenario,
        connections,
        requests_per_second: load.requests_per_second(),
        keys_per_second: load.requests_per_second() * keys as f64,
        p50: load.latency_at(0.5),
        p99: load.latency_at(0.99),
        p999: load.latency_at(0.999),
        loader_cpu: measured.loader_cpu,
        server_cpu: measured.server_cpu,
    }
}

/// One table row; `earlier` holds the baseline's rows.
fn print_row(out: &mut impl Write, stats: &RunStats, earlier: &[RunStats]) {
    let baseline = earlier
        .iter()
        .find(|b| b.scenario.is_none() && b.connections == stats.connections)
        .map_or(stats.requests_per_second, |b| b.requests_per_second);
    let share = 100.0 * stats.requests_per_second / baseline;
    let keys = match stats.scenario {
        Some(_) => format!("{:.0}", stats.keys_per_second),
        None => "-".into(),
    };
    let cpu = |cpu: Option<Duration>| cpu.map_or_else(|| "?".into(), |c| format!("{c:.1?}"));
    let _ = writeln!(
        out,
        "{:<9}  {:<8}  {:>5}  {:>10.0}  {:>10}  {:>9.1?}  {:>9.1?}  {:>9.1?}  {:>6.1}%  {:>10}  {:>10}",
        stats.server,
        stats.scenario.map_or("fixed", Scenario::label),
        stats.connections,
        stats.requests_per_second,
        keys,
        stats.p50,
        stats.p99,
        stats.p999,
        share,
        cpu(stats.loader_cpu),
        cpu(stats.server_cpu),
    );
}

/// One line per store and connection count measured with both: the transaction's keys per
/// second over those of single-key writes of new keys (the same work, one key a request).
fn compare(all: &[RunStats], out: &mut impl Write) {
    for txn in all.iter().filter(|s| s.scenario == Some(Scenario::Txn)) {
        let single = all.iter().find(|s| {
            s.server == txn.server
                && s.connections == txn.connections
                && s.scenario == Some(Scenario::Distinct)
        });
        if let Some(single) = single {
            let _ = writeln!(
                out,
                "txn/distinct keys/s, {}, {} connection(s): {:.2} ({:.0} / {:.0})",
                txn.server,
                txn.connections,
                txn.keys_per_second / single.keys_per_second,
                txn.keys_per_second,
                single.keys_per_second
            );
        }
    }
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
                let dir = tempfile::Builder::new()
                    .prefix("fencelock-bench-storage-")
                    .tempdir()
                    .map_err(BenchError::DataDir)?;
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

fn baseline_request(addr: SocketAddr) -> Arc<RequestFn> {
    let request = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").into_bytes();
    Arc::new(move |_, _, out: &mut Vec<u8>| out.extend_from_slice(&request))
}

fn storage_request(addr: SocketAddr, scenario: Scenario, token: u64) -> Arc<RequestFn> {
    let headers = format!("Host: {addr}\r\nFencing-Token: {token}\r\n");
    match scenario {
        Scenario::OneKey => {
            let request = put("k0", &headers).into_bytes();
            Arc::new(move |_, _, out: &mut Vec<u8>| out.extend_from_slice(&request))
        }
        Scenario::Distinct => Arc::new(move |connection, seq, out: &mut Vec<u8>| {
            out.extend_from_slice(put(&format!("k{connection}-{seq}"), &headers).as_bytes());
        }),
        Scenario::Txn => Arc::new(move |connection, seq, out: &mut Vec<u8>| {
            let ops: Vec<String> = (0..TXN_KEYS)
                .map(|i| {
                    format!(r#"{{"op":"write","key":"t{connection}-{seq}-{i}","val":"{VALUE}"}}"#)
                })
                .collect();
            let body = format!(r#"{{"ops":[{}]}}"#, ops.join(","));
            let _ = write!(
                out,
                "POST /v1/txn?fence={FENCE} HTTP/1.1\r\n{headers}\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }),
    }
}

/// A fenced `PUT` of [`VALUE`] under `key`.
fn put(key: &str, headers: &str) -> String {
    format!(
        "PUT /v1/kv/{key}?fence={FENCE} HTTP/1.1\r\n{headers}Content-Length: {}\r\n\r\n{VALUE}",
        VALUE.len()
    )
}

/// CPU time (user and system) used so far by process `pid` (`"self"` for this one), from
/// `/proc/PID/stat`; `None` when it cannot be read.
fn cpu_time(pid: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, field 2, is in parentheses and may hold spaces; utime and stime are
    // fields 14 and 15, the 12th and 13th after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
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
        storage_request(addr, Scenario::Txn, 1)(3, 7, &mut out);
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
        let request = storage_request(addr, Scenario::Distinct, 9);
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
    fn this_process_has_used_some_cpu() {
        assert!(cpu_time("self").is_some());
        assert!(cpu_time("no-such-process").is_none());
    }
}
