//! `fencelock bench lock`: lock+unlock cycles per second on lockd and on a loopback etcd
//! cluster in the same run, with 1 session and with several sessions contending for one lock.
//!
//! lockd runs as its own process (`fencelock lockd --in-memory`), as etcd's members do, so
//! that neither shares the benchmark's threads.
//!
//! Each cycle is one `lock` (including the wait for the sessions ahead) and one `unlock`,
//! timed from the lock call to the unlock's answer. A run's window opens once every session
//! has finished one cycle (the queue is full and the sessions' first enqueuing burst is
//! over) and lasts the run's duration; cycles ending in it are counted. Runs can repeat with the watch starting
//! at the Range's own revision, as etcd's Go client does, to show what starting after it
//! gains, and with idle watchers on keys no cycle touches, to show what they cost a cycle.

use super::chart::{Chart, Scale, curves};
use super::rounds::{Ratios, median_points};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use fencelock::etcd::etcdserverpb::{
    self as pb, StatusRequest, WatchCreateRequest, WatchRequest, watch_request::RequestUnion,
};
use fencelock::lock::{Client, ConnectOptions, LockOptions, WatchStart};
use fencelock::process::{ClusterError, EtcdCluster};
use fencelock::process::{ServerProcess, SpawnError};

/// Lease TTL of the benchmark's sessions: long enough that no session expires under load.
const TTL: Duration = Duration::from_secs(10);

/// The longest a lock call may wait before the run is declared failed: a stuck waiter.
/// Generous, because a whole queue passes during one wait: 1,024 waiters on a 3-member
/// etcd have taken over 20 s per cycle here.
const CYCLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Cycles run before measuring, so connections and etcd's caches are warm.
const WARMUP_CYCLES: usize = 20;

/// A lock service the benchmark starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// `fencelock lockd --in-memory` on a loopback port.
    Lockd,
    /// A loopback etcd cluster of `Options::members`.
    Etcd,
}

/// Where the benchmark finds its lock services and how long it runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// An existing service's endpoints, measured instead of `services`.
    pub endpoints: Option<Vec<String>>,
    /// How to connect to `endpoints` (TLS).
    pub connect: fencelock::lock::ConnectOptions,
    /// Services to start and measure, one after the other.
    pub services: Vec<Service>,
    /// The `fencelock` binary that runs lockd.
    pub lockd_bin: PathBuf,
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
    /// Watchers held open on keys no cycle touches, one set of runs per count.
    pub idle_watchers: Vec<usize>,
    /// Times every case is run, one round of all cases after the other, so that a ratio
    /// between two cases can be taken within each round and its spread seen.
    pub rounds: usize,
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Lockd(#[from] SpawnError),
    #[error(transparent)]
    Lock(#[from] fencelock::lock::Error),
    #[error("a benchmark session's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot start the idle watchers: {0}")]
    IdleWatch(tonic::Status),
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct RunStats {
    /// Which service: "lockd", "etcd" or "given".
    pub service: &'static str,
    pub sessions: usize,
    pub watch_start: WatchStart,
    pub idle_watchers: usize,
    /// Which round of [`Options::rounds`] this run belongs to, from 1.
    pub round: usize,
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

/// Runs every case on every service and prints a table to `out`, then how lockd's median
/// compares with etcd's; returns the figures.
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Vec<RunStats>, BenchError> {
    let _ = writeln!(out, "{:?} per run", options.duration);
    let _ = writeln!(
        out,
        "{:<24}  {:>8}  {:<22}  {:>6}  {:>7}  {:>9}  {:>10}  {:>10}",
        "service", "sessions", "watch starts at", "idle", "cycles", "cycles/s", "median", "p99"
    );
    let mut all = Vec::new();
    if let Some(endpoints) = &options.endpoints {
        all.extend(run_service("given", endpoints, &options.connect, options, out).await?);
        return Ok(all);
    }
    for &service in &options.services {
        // Each service runs alone: the one measured before is stopped first.
        match service {
            Service::Lockd => {
                let lockd =
                    ServerProcess::spawn(&options.lockd_bin, "lockd", ["--in-memory"]).await?;
                let endpoints = [lockd.endpoint().to_string()];
                let plain = ConnectOptions::default();
                all.extend(run_service("lockd", &endpoints, &plain, options, out).await?);
            }
            Service::Etcd => {
                let cluster = EtcdCluster::start(options.members, &options.etcd_bin).await?;
                let plain = ConnectOptions::default();
                all.extend(run_service("etcd", &cluster.endpoints(), &plain, options, out).await?);
            }
        }
    }
    compare(&all, out);
    scaling(&all, out);
    Ok(all)
}

/// Per service: cycles/s with the most sessions over cycles/s with 8 (or the fewest), and
/// with idle watchers over without; each pair from the same round. With several rounds,
/// each ratio is printed as the median of its rounds' with their range.
fn scaling(all: &[RunStats], out: &mut impl Write) {
    let rate = |like: &RunStats, sessions: usize, idle: usize| {
        all.iter()
            .find(|s| {
                s.service == like.service
                    && s.round == like.round
                    && s.sessions == sessions
                    && s.watch_start == like.watch_start
                    && s.idle_watchers == idle
            })
            .map(RunStats::cycles_per_second)
    };
    let mut ratios = Ratios::default();
    for stats in all {
        let (service, start, idle) = (stats.service, stats.watch_start, stats.idle_watchers);
        let sessions: Vec<usize> = all
            .iter()
            .filter(|s| s.service == service && s.watch_start == start && s.round == stats.round)
            .filter(|s| s.idle_watchers == idle)
            .map(|s| s.sessions)
            .collect();
        let most = sessions.iter().copied().max().unwrap_or(0);
        let base = if sessions.contains(&8) && most > 8 {
            8
        } else {
            sessions.iter().copied().min().unwrap_or(0)
        };
        if stats.sessions == most
            && most > base
            && let Some(low) = rate(stats, base, idle)
        {
            ratios.add(
                format!(
                    "{service} cycles/s, {most} over {base} sessions, watch {}, {idle} idle",
                    watch_start_label(start)
                ),
                stats.cycles_per_second(),
                low,
            );
        }
        if idle > 0
            && let Some(quiet) = rate(stats, stats.sessions, 0)
        {
            ratios.add(
                format!(
                    "{service} cycles/s, {idle} over 0 idle watchers, {} session(s), watch {}",
                    stats.sessions,
                    watch_start_label(start)
                ),
                stats.cycles_per_second(),
                quiet,
            );
        }
    }
    ratios.print(out);
}

/// Cycles per second against contending sessions, one curve per service and watch start
/// (and per count of idle watchers, where that varies); with several rounds, each point is
/// the median of its rounds.
pub fn chart(all: &[RunStats]) -> Chart {
    let idle_varies = all
        .iter()
        .any(|s| Some(s.idle_watchers) != all.first().map(|f| f.idle_watchers));
    let mut labelled = Vec::new();
    for stats in all {
        let mut label = format!(
            "{}, watch {}",
            stats.service,
            watch_start_label(stats.watch_start)
        );
        if idle_varies {
            label.push_str(&format!(", {} idle watchers", stats.idle_watchers));
        }
        let point = (stats.sessions as f64, stats.cycles_per_second());
        labelled.push((label, point));
    }
    // With several rounds, a point is the median of its rounds.
    let series = curves(median_points(labelled));
    Chart {
        title: "Lock hand-over vs waiters".into(),
        x_label: "contending sessions".into(),
        y_label: "lock+unlock cycles/s".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        series,
    }
}

/// Watches on keys no lock cycle touches, held open while they live: what a lock service
/// pays per change for watchers that do not cover it.
struct IdleWatchers {
    _streams: Vec<(
        mpsc::Sender<WatchRequest>,
        tonic::Streaming<pb::WatchResponse>,
    )>,
}

/// Idle watchers per watch stream, as a client multiplexing its watches would hold them.
const IDLE_WATCHERS_PER_STREAM: usize = 1000;

impl IdleWatchers {
    /// Creates `count` watchers, each on a key of its own, and returns once all are confirmed.
    async fn start(client: &Client, count: usize) -> Result<Self, BenchError> {
        let mut streams = Vec::new();
        let mut left = count;
        while left > 0 {
            let n = left.min(IDLE_WATCHERS_PER_STREAM);
            left -= n;
            let (requests, rx) = mpsc::channel(n);
            for i in 0..n {
                let create = WatchCreateRequest {
                    key: format!("/fencelock-bench-idle/{}/{i}", streams.len()).into_bytes(),
                    ..Default::default()
                };
                // The channel has room for all n.
                let _ = requests.try_send(WatchRequest {
                    request_union: Some(RequestUnion::CreateRequest(create)),
                });
            }
            let mut answers = client
                .watch()
                .watch(ReceiverStream::new(rx))
                .await
                .map_err(BenchError::IdleWatch)?
                .into_inner();
            let mut created = 0;
            while created < n {
                match answers.message().await.map_err(BenchError::IdleWatch)? {
                    Some(answer) if answer.created && !answer.canceled => created += 1,
                    Some(_) => {}
                    None => {
                        return Err(BenchError::IdleWatch(tonic::Status::unavailable(
                            "the watch stream ended",
                        )));
                    }
                }
            }
            streams.push((requests, answers));
        }
        Ok(IdleWatchers { _streams: streams })
    }
}

/// One line per (sessions, watch start) measured on both: lockd's median over etcd's.
fn compare(all: &[RunStats], out: &mut impl Write) {
    let rounds = all.iter().any(|s| s.round > 1);
    for lockd in all.iter().filter(|s| s.service == "lockd") {
        let etcd = all.iter().find(|s| {
            s.service == "etcd"
                && s.round == lockd.round
                && s.sessions == lockd.sessions
                && s.watch_start == lockd.watch_start
                && s.idle_watchers == lockd.idle_watchers
        });
        if let Some(etcd) = etcd {
            let _ = writeln!(
                out,
                "lockd/etcd median, {} session(s), watch {}{}: {:.2} ({:.2?} / {:.2?})",
                lockd.sessions,
                watch_start_label(lockd.watch_start),
                match rounds {
                    true => format!(", round {}", lockd.round),
                    false => String::new(),
                },
                lockd.median.as_secs_f64() / etcd.median.as_secs_f64(),
                lockd.median,
                etcd.median
            );
        }
    }
}

async fn run_service(
    service: &'static str,
    endpoints: &[String],
    connect: &ConnectOptions,
    options: &Options,
    out: &mut impl Write,
) -> Result<Vec<RunStats>, BenchError> {
    let client = Client::connect_with(endpoints, connect).await?;
    let status = client.maintenance().status(StatusRequest {}).await;
    let version = status.map_or_else(|_| "?".into(), |s| s.into_inner().version);
    let label = format!("{service} {version}, {}x", endpoints.len());
    let mut all = Vec::new();
    for round in 1..=options.rounds.max(1) {
        all.extend(run_round(&client, service, &label, round, options, out).await?);
    }
    Ok(all)
}

/// Every case once: per count of idle watchers, per watch start, per count of sessions.
async fn run_round(
    client: &Client,
    service: &'static str,
    label: &str,
    round: usize,
    options: &Options,
    out: &mut impl Write,
) -> Result<Vec<RunStats>, BenchError> {
    let mut all = Vec::new();
    for &idle in &options.idle_watchers {
        let _idle = IdleWatchers::start(client, idle).await?;
        for &watch_start in &options.watch_starts {
            for &sessions in &options.sessions {
                let mut stats = run_case(client, sessions, watch_start, options.duration).await?;
                stats.service = service;
                stats.idle_watchers = idle;
                stats.round = round;
                let _ = writeln!(
                    out,
                    "{:<24}  {:>8}  {:<22}  {:>6}  {:>7}  {:>9.0}  {:>10.2?}  {:>10.2?}",
                    label,
                    stats.sessions,
                    watch_start_label(watch_start),
                    idle,
                    stats.cycles,
                    stats.cycles_per_second(),
                    stats.median,
                    stats.p99
                );
                all.push(stats);
            }
        }
    }
    Ok(all)
}

/// The measured window of one run: it opens when the last of `sessions` has finished its
/// first cycle and closes `duration` later.
struct Window {
    sessions: usize,
    duration: Duration,
    warmed: AtomicUsize,
    span: OnceLock<(Instant, Instant)>,
}

impl Window {
    fn new(sessions: usize, duration: Duration) -> Self {
        Window {
            sessions,
            duration,
            warmed: AtomicUsize::new(0),
            span: OnceLock::new(),
        }
    }

    /// A session finished its first cycle at `at`; the last one opens the window.
    fn warmed(&self, at: Instant) {
        let done = self.warmed.fetch_add(1, Ordering::AcqRel) + 1;
        if done == self.sessions {
            let _ = self.span.set((at, at + self.duration));
        }
    }

    /// Where the window starts and ends, once it is open.
    fn span(&self) -> Option<(Instant, Instant)> {
        self.span.get().copied()
    }
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
    // A cycle that takes this long means a stuck waiter: the run fails instead of hanging.
    let options = LockOptions {
        watch_start,
        timeout: Some(CYCLE_TIMEOUT),
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
    // The measured window opens once every session has finished a cycle in the contended
    // run (so the queue is as long as it will be, and the first enqueuing burst of all
    // sessions is behind), and lasts `duration`. Cycles are counted by when they end.
    let window = Arc::new(Window::new(sessions, duration));
    let mut tasks = tokio::task::JoinSet::new();
    for session in &all {
        let session = session.clone();
        let (name, histogram, window) = (name.clone(), Arc::clone(&histogram), Arc::clone(&window));
        tasks.spawn(async move {
            let mut cycles = 0u64;
            let mut first = true;
            loop {
                let cycle = Instant::now();
                session.lock_with(&name, options).await?.unlock().await?;
                let ended = Instant::now();
                if std::mem::take(&mut first) {
                    window.warmed(ended);
                }
                match window.span() {
                    Some((_, end)) if ended >= end => break,
                    Some((start, _)) if ended >= start => {
                        let micros = (ended - cycle).as_micros() as u64;
                        histogram
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .saturating_record(micros.max(1));
                        cycles += 1;
                    }
                    _ => {}
                }
            }
            Ok::<_, fencelock::lock::Error>(cycles)
        });
    }
    let mut cycles = 0;
    // The first failure ends the run: the other sessions may be waiting for a key that the
    // failed one left behind.
    while let Some(joined) = tasks.join_next().await {
        cycles += joined??;
    }
    let elapsed = duration;
    for session in all {
        session.close().await?;
    }
    let histogram = histogram.lock().unwrap_or_else(|e| e.into_inner());
    Ok(RunStats {
        service: "",
        sessions,
        watch_start,
        idle_watchers: 0,
        round: 1,
        cycles,
        elapsed,
        median: Duration::from_micros(histogram.value_at_quantile(0.5)),
        p99: Duration::from_micros(histogram.value_at_quantile(0.99)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(sessions: usize, idle: usize, round: usize, cycles: u64) -> RunStats {
        RunStats {
            service: "lockd",
            sessions,
            watch_start: WatchStart::Latest,
            idle_watchers: idle,
            round,
            cycles,
            elapsed: Duration::from_secs(1),
            median: Duration::from_millis(1),
            p99: Duration::from_millis(2),
        }
    }

    fn printed(all: &[RunStats]) -> String {
        let mut out = Vec::new();
        scaling(all, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_round_prints_each_ratio_with_its_two_rates() {
        let text = printed(&[stats(8, 0, 1, 2000), stats(1024, 0, 1, 1800)]);
        assert_eq!(
            text,
            "lockd cycles/s, 1024 over 8 sessions, watch now (+ read if needed), 0 idle: 0.90 (1800 / 2000)\n"
        );
    }

    #[test]
    fn several_rounds_print_the_median_of_the_ratios_taken_within_each_round() {
        let all = [
            stats(8, 0, 1, 2000),
            stats(1024, 0, 1, 1000),
            stats(8, 0, 2, 1000),
            stats(1024, 0, 2, 900),
            stats(8, 0, 3, 1000),
            stats(1024, 0, 3, 800),
        ];
        // Within rounds: 0.5, 0.9, 0.8; across rounds the rates would give other figures.
        let text = printed(&all);
        assert_eq!(
            text,
            "lockd cycles/s, 1024 over 8 sessions, watch now (+ read if needed), 0 idle: 0.80 median of 3 rounds (0.50, 0.80, 0.90)\n"
        );
    }

    #[test]
    fn idle_watchers_are_compared_with_none_in_the_same_round() {
        let all = [
            stats(1, 0, 1, 1000),
            stats(1, 10_000, 1, 950),
            stats(1, 0, 2, 2000),
            stats(1, 10_000, 2, 2100),
        ];
        let text = printed(&all);
        assert!(
            text.contains(
                "lockd cycles/s, 10000 over 0 idle watchers, 1 session(s), watch now (+ read if needed): 1.00 median of 2 rounds (0.95, 1.05)"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_chart_point_is_the_median_of_its_rounds() {
        let all = [
            stats(1, 0, 1, 100),
            stats(8, 0, 1, 80),
            stats(1, 0, 2, 300),
            stats(8, 0, 2, 60),
            stats(1, 0, 3, 200),
            stats(8, 0, 3, 70),
        ];
        let chart = chart(&all);
        assert_eq!(chart.series.len(), 1);
        assert_eq!(chart.series[0].points, vec![(1.0, 200.0), (8.0, 70.0)]);
    }
}
