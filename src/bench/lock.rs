//! `fencelock bench lock`: lock+unlock cycles per second on etcd, with 1 session and with
//! several sessions contending for one lock.
//!
//! Each cycle is one `lock` (including the wait for the sessions ahead) and one `unlock`,
//! timed from the lock call to the unlock's answer. Runs can repeat with the watch starting
//! at the Range's own revision, as etcd's Go client does, to show what starting after it
//! gains.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::etcd_cluster::{ClusterError, EtcdCluster};
use crate::lock::pb::etcdserverpb::StatusRequest;
use crate::lock::{Client, LockOptions, WatchStart};

/// Lease TTL of the benchmark's sessions: long enough that no session expires under load.
const TTL: Duration = Duration::from_secs(10);

/// Cycles run before measuring, so connections and etcd's caches are warm.
const WARMUP_CYCLES: usize = 20;

/// Where the benchmark finds etcd and how long it runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// An existing cluster's endpoints; `None` starts a loopback cluster.
    pub endpoints: Option<Vec<String>>,
    /// Members of the cluster started when no endpoints are given.
    pub members: usize,
    /// etcd binary for that cluster.
    pub etcd_bin: PathBuf,
    /// Contending sessions per run, e.g. `[1, 8]`.
    pub sessions: Vec<usize>,
    /// Measured time per run.
    pub duration: Duration,
    /// Where waiters' watches start, one set of runs per choice.
    pub watch_starts: Vec<WatchStart>,
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Lock(#[from] crate::lock::Error),
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct RunStats {
    pub sessions: usize,
    pub watch_start: WatchStart,
    pub cycles: u64,
    pub elapsed: Duration,
    pub median: Duration,
    pub p99: Duration,
}

impl RunStats {
    pub fn cycles_per_second(&self) -> f64 {
        self.cycles as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs every case and prints a table to `out`; returns the figures.
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Vec<RunStats>, BenchError> {
    // Kept alive until the end: dropping it stops the cluster.
    let mut _cluster = None;
    let endpoints = match &options.endpoints {
        Some(endpoints) => endpoints.clone(),
        None => {
            let cluster = EtcdCluster::start(options.members, &options.etcd_bin).await?;
            let endpoints = cluster.endpoints();
            _cluster = Some(cluster);
            endpoints
        }
    };
    let client = Client::connect(&endpoints).await?;
    let version = client
        .maintenance()
        .status(StatusRequest {})
        .await
        .map(|s| s.into_inner().version)
        .unwrap_or_else(|_| "unknown".into());
    let _ = writeln!(
        out,
        "etcd {version}, {} endpoint(s): {}; {:?} per run",
        endpoints.len(),
        endpoints.join(","),
        options.duration
    );
    let _ = writeln!(
        out,
        "{:>8}  {:<22}  {:>7}  {:>9}  {:>10}  {:>10}",
        "sessions", "watch starts at", "cycles", "cycles/s", "median", "p99"
    );
    let mut all = Vec::new();
    for &watch_start in &options.watch_starts {
        for &sessions in &options.sessions {
            let stats = run_case(&client, sessions, watch_start, options.duration).await?;
            let _ = writeln!(
                out,
                "{:>8}  {:<22}  {:>7}  {:>9.0}  {:>10.2?}  {:>10.2?}",
                stats.sessions,
                watch_start_label(watch_start),
                stats.cycles,
                stats.cycles_per_second(),
                stats.median,
                stats.p99
            );
            all.push(stats);
        }
    }
    Ok(all)
}

fn watch_start_label(start: WatchStart) -> &'static str {
    match start {
        WatchStart::Latest => "now (+ read if needed)",
        WatchStart::AfterRange => "read revision + 1",
        WatchStart::AtRange => "read revision (Go)",
    }
}

async fn run_case(
    client: &Client,
    sessions: usize,
    watch_start: WatchStart,
    duration: Duration,
) -> Result<RunStats, BenchError> {
    let name = format!(
        "/fencelock-bench/{sessions}-{watch_start:?}-{}",
        std::process::id()
    );
    let options = LockOptions {
        watch_start,
        ..LockOptions::default()
    };
    let mut all = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        all.push(client.session(TTL).await?);
    }
    for session in &all {
        for _ in 0..WARMUP_CYCLES / sessions.max(1) {
            session.lock_with(&name, options).await?.unlock().await?;
        }
    }
    // 1 µs to 60 s at 3 significant digits; the bounds are constants that hdrhistogram accepts.
    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
    ));
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = Vec::with_capacity(sessions);
    for session in &all {
        let session = session.clone();
        let (name, histogram) = (name.clone(), Arc::clone(&histogram));
        tasks.push(tokio::spawn(async move {
            let mut cycles = 0u64;
            while Instant::now() < until {
                let cycle = Instant::now();
                session.lock_with(&name, options).await?.unlock().await?;
                let micros = cycle.elapsed().as_micros() as u64;
                histogram
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .saturating_record(micros.max(1));
                cycles += 1;
            }
            Ok::<_, crate::lock::Error>(cycles)
        }));
    }
    let mut cycles = 0;
    for task in tasks {
        cycles += task
            .await
            .map_err(|e| crate::lock::Error::protocol("bench", e.to_string()))??;
    }
    let elapsed = started.elapsed();
    for session in all {
        session.close().await?;
    }
    let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner());
    Ok(RunStats {
        sessions,
        watch_start,
        cycles,
        elapsed,
        median: Duration::from_micros(histogram.value_at_quantile(0.5)),
        p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
    })
}
