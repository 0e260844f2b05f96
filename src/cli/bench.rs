//! `fencelock bench ...`: measurements.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use fencelock::lock::WatchStart;
use fencelock::storage::Policy;

use super::{
    EtcdConnect, announce, current_exe, duration, exit, listen, parse_bytes, shutdown_signal,
    unless_interrupted,
};
use crate::bench::baseline;
use crate::bench::chart::Chart;
use crate::bench::commit;
use crate::bench::group_sync::GroupSync;
use crate::bench::lock::{self, Service};
use crate::bench::storage::{self, Scenario, Store};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Lock+unlock cycles on lockd and on a loopback etcd cluster, with 1 and with 8
    /// contending sessions.
    Lock(Box<BenchLockArgs>),
    /// Requests and keys written per second by the storage, durable and in memory, with 1
    /// and with 32 connections, next to a baseline HTTP server measured by the same loader.
    Storage(BenchStorageArgs),
    /// lockd's resident memory per held lock: sessions each holding a lock of their own, on
    /// a fresh in-memory lockd per count.
    Memory(BenchMemoryArgs),
    /// How long one durable commit of the storage's engine takes, by keys per commit.
    Commit(BenchCommitArgs),
    /// The storage benchmark's baseline server (started by the benchmark): every request is
    /// answered with the same small body, after a group sync with --sync-dir.
    #[command(hide = true)]
    Baseline(BaselineArgs),
}

#[derive(Args)]
pub struct BenchLockArgs {
    /// Measure this lock service (comma-separated endpoints) instead of starting lockd and etcd.
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// TLS towards the service given with --endpoints.
    #[command(flatten)]
    tls: EtcdConnect,
    /// Services to start and measure, comma-separated: `lockd` (in memory) and `etcd` (a
    /// loopback cluster of --members).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "lockd,etcd",
        hide_possible_values = true
    )]
    services: Vec<Service>,
    /// Members of the loopback cluster started when no endpoints are given.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// etcd binary for the loopback cluster.
    #[arg(long, env = "FENCELOCK_ETCD_BIN", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Contending sessions per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    sessions: Vec<usize>,
    /// Time measured per run. 500ms, 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse_positive)]
    duration: Duration,
    /// Where waiters' watches start, comma-separated, one set of runs each: `now` (the
    /// library's default), `next` (the revision after the read), `read` (the read's own
    /// revision, as etcd's Go client does).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "now,next",
        hide_possible_values = true
    )]
    watch_start: Vec<WatchStart>,
    /// Also run with the watch at the read's own revision (same as adding `read`).
    #[arg(long)]
    go_watch: bool,
    /// Watchers held open on keys no cycle touches, comma-separated, one set of runs per
    /// count (e.g. `0,10000`): what watchers elsewhere cost a lock cycle.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    idle_watchers: Vec<usize>,
    /// Times every case is run, all cases once per round; ratios between cases are then
    /// printed as the median of the rounds' with each round's, and a chart's points as
    /// medians. More rounds show how much a ratio is the machine's noise.
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Also draw cycles/s against sessions as an SVG chart into this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchStorageArgs {
    /// Stores measured, comma-separated: `durable` (on disk, synced) and `in-memory`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "durable,in-memory",
        hide_possible_values = true
    )]
    stores: Vec<Store>,
    /// Scenarios run on each store, comma-separated: `one-key` (every write to one key),
    /// `distinct` (every write to a new key), `txn` (transactions of 16 new keys), `read`
    /// (reads of stored keys, picked at random; needs --stored-keys).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "one-key,distinct,txn",
        hide_possible_values = true
    )]
    scenarios: Vec<Scenario>,
    /// Connections per run, comma-separated; each keeps one request in flight.
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    connections: Vec<usize>,
    /// Time measured per run. 500ms, 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration::parse_positive)]
    duration: Duration,
    /// The storage's fencing policy.
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    fencing: Policy,
    /// Also measure every run on a storage verifying tokens with a lockd of the
    /// benchmark's own (`fencelock storage --verify-tokens`), right after the plain run.
    #[arg(long)]
    verify_tokens: bool,
    /// Keys written into each storage before its run is measured, comma-separated, one set
    /// of runs per count (e.g. `1000,1000000,10000000`; `k` and `M` are accepted: `1k,1M,10M`).
    #[arg(long, value_name = "COUNTS", value_delimiter = ',', default_value = "0", value_parser = parse_count)]
    stored_keys: Vec<u64>,
    /// Bytes of every measured write's value, comma-separated, one set of runs per size
    /// (e.g. `100,1KiB,16KiB,64KiB`).
    #[arg(long, value_name = "BYTES", value_delimiter = ',', default_values_t = [storage::DEFAULT_VALUE_BYTES], value_parser = parse_bytes)]
    value_size: Vec<usize>,
    /// Times every run is made, the baseline included, all runs once per round; each run is
    /// set against its round's baseline, and ratios are printed as the median of the rounds'
    /// with each round's.
    #[arg(long, value_name = "N", default_value = "1", value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Also draw keys/s as an SVG chart into this file, against whichever of --stored-keys,
    /// --value-size or --connections lists several values.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchMemoryArgs {
    /// Held locks per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sessions: Vec<usize>,
}

#[derive(Args)]
pub struct BenchCommitArgs {
    /// Keys per commit, comma-separated, one run each.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256,1024,4096")]
    batch: Vec<usize>,
    /// Time measured per batch size (at least 10 commits). 500ms, 2s, 1m or seconds.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = duration::parse_positive)]
    duration: Duration,
    /// Bytes of each key's value (`100`, `1KiB`, ...).
    #[arg(long, value_name = "BYTES", default_value = "100", value_parser = parse_bytes)]
    value_size: usize,
    /// Directory on the disk to measure; the engines' directories are made in it and removed.
    /// The system's temporary directory by default.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Also draw the latencies against keys per commit as an SVG chart into this file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
}

#[derive(Args)]
pub struct BaselineArgs {
    /// Address to listen on; port 0 picks a free port, printed once the server is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
    /// Answer each request only once a record of it is synced to a log in this directory
    /// (the synced baseline, the ceiling of a server that syncs before it answers).
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<u8> {
    match command {
        BenchCommand::Lock(args) => bench_lock(*args).await,
        BenchCommand::Storage(args) => bench_storage(args).await,
        BenchCommand::Memory(args) => bench_memory(args).await,
        BenchCommand::Commit(args) => bench_commit(args).await,
        BenchCommand::Baseline(args) => serve_baseline(args).await,
    }
}

async fn bench_memory(args: BenchMemoryArgs) -> anyhow::Result<u8> {
    if args.sessions.is_empty() || args.sessions.contains(&0) {
        return Err(exit::usage("--sessions must be positive numbers"));
    }
    let options = crate::bench::memory::Options {
        binary: current_exe()?,
        sessions: args.sessions,
    };
    // Interrupted, the benchmark is dropped, which stops the lockd it started.
    let work = async {
        crate::bench::memory::run(&options, &mut std::io::stdout())
            .await
            .context("lockd memory benchmark failed")
    };
    unless_interrupted(work).await?;
    Ok(exit::SUCCESS)
}

async fn bench_storage(args: BenchStorageArgs) -> anyhow::Result<u8> {
    if args.connections.is_empty() || args.connections.contains(&0) {
        return Err(exit::usage("--connections must be positive numbers"));
    }
    if args.value_size.contains(&0) {
        return Err(exit::usage("--value-size must be positive sizes"));
    }
    if args.scenarios.contains(&Scenario::Read) && args.stored_keys.contains(&0) {
        return Err(exit::usage(
            "--scenarios read needs --stored-keys of at least 1: it reads stored keys",
        ));
    }
    let axis = match &args.svg {
        Some(_) => Some(storage::ChartAxis::of(&args.stored_keys, &args.value_size, &args.connections).ok_or_else(|| {
            exit::usage("--svg needs several values in one of --stored-keys, --value-size or --connections")
        })?),
        None => None,
    };
    let options = storage::Options {
        binary: current_exe()?,
        stores: args.stores,
        scenarios: args.scenarios,
        connections: args.connections,
        duration: args.duration,
        policy: args.fencing,
        verify_tokens: args.verify_tokens,
        stored_keys: args.stored_keys,
        value_sizes: args.value_size,
        rounds: args.rounds as usize,
    };
    // Interrupted, the benchmark is dropped, which stops the servers it started.
    let work = async {
        storage::run(&options, &mut std::io::stdout())
            .await
            .context("storage benchmark failed")
    };
    let all = unless_interrupted(work).await?;
    if let (Some(path), Some(axis)) = (&args.svg, axis) {
        write_chart(&storage::chart(&all, axis), path)?;
    }
    Ok(exit::SUCCESS)
}

async fn bench_commit(args: BenchCommitArgs) -> anyhow::Result<u8> {
    if args.batch.is_empty() || args.batch.contains(&0) {
        return Err(exit::usage("--batch must be positive numbers"));
    }
    if args.svg.is_some() && args.batch.len() < 2 {
        return Err(exit::usage(
            "--svg needs several --batch sizes: it draws latency against them",
        ));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = commit::Options {
        batches: args.batch,
        duration: args.duration,
        value_bytes: args.value_size,
        dir: args.dir,
        stop: stop.clone(),
    };
    // The engine syncs: blocking work, off the runtime's threads. Interrupted, it is told to
    // stop and waited for, so that its directory is removed.
    let mut work =
        tokio::task::spawn_blocking(move || commit::run(&options, &mut std::io::stdout()));
    let joined = tokio::select! {
        joined = &mut work => joined,
        () = shutdown_signal() => {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = work.await;
            return Err(exit::Interrupted.into());
        }
    };
    let all = joined
        .context("the commit benchmark's thread failed")?
        .context("commit benchmark failed")?;
    if let Some(path) = &args.svg {
        write_chart(&commit::chart(&all), path)?;
    }
    Ok(exit::SUCCESS)
}

/// Writes `chart` to `path` and says where it went.
fn write_chart(chart: &Chart, path: &std::path::Path) -> anyhow::Result<()> {
    crate::bench::chart::write(chart, path)
        .with_context(|| format!("cannot write the chart to {}", path.display()))?;
    println!("chart written to {}", path.display());
    Ok(())
}

/// A count with an optional `k` (thousand) or `M` (million): `1000`, `1k`, `10M`.
fn parse_count(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, factor) = match text.strip_suffix('M') {
        Some(number) => (number, 1_000_000),
        None => match text.strip_suffix('k') {
            Some(number) => (number, 1_000),
            None => (text, 1),
        },
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is not a count (1000, 1k, 10M)"))
}

async fn serve_baseline(args: BaselineArgs) -> anyhow::Result<u8> {
    let log = match &args.sync_dir {
        Some(dir) => Some(
            GroupSync::create(dir)
                .with_context(|| format!("cannot create the sync log in {}", dir.display()))?,
        ),
        None => None,
    };
    let (listener, addr) = listen(&args.listen).await?;
    announce(addr)?;
    baseline::serve(listener, log, shutdown_signal())
        .await
        .context("baseline server failed")?;
    Ok(exit::SUCCESS)
}

async fn bench_lock(args: BenchLockArgs) -> anyhow::Result<u8> {
    if args.members == 0 {
        return Err(exit::usage("--members must be at least 1"));
    }
    if args.sessions.contains(&0) {
        return Err(exit::usage("--sessions must be positive numbers"));
    }
    if args.svg.is_some() && args.sessions.len() < 2 {
        return Err(exit::usage(
            "--svg needs several --sessions: it draws cycles/s against them",
        ));
    }
    let mut watch_starts = args.watch_start;
    if args.go_watch && !watch_starts.contains(&WatchStart::AtRange) {
        watch_starts.push(WatchStart::AtRange);
    }
    let options = lock::Options {
        endpoints: args.endpoints,
        connect: args.tls.connect_options()?,
        services: args.services,
        lockd_bin: current_exe()?,
        members: args.members,
        etcd_bin: args.etcd_bin,
        sessions: args.sessions,
        duration: args.duration,
        watch_starts,
        idle_watchers: args.idle_watchers,
        rounds: args.rounds as usize,
    };
    // Interrupted, the benchmark is dropped, which stops the etcd cluster it started.
    let work = async {
        lock::run(&options, &mut std::io::stdout())
            .await
            .context("lock benchmark failed")
    };
    let all = unless_interrupted(work).await?;
    if let Some(path) = &args.svg {
        write_chart(&lock::chart(&all), path)?;
    }
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_take_thousands_and_millions() {
        assert_eq!(parse_count("1000"), Ok(1000));
        assert_eq!(parse_count("1k"), Ok(1000));
        assert_eq!(parse_count("10M"), Ok(10_000_000));
        assert!(parse_count("1.5M").is_err());
        assert!(parse_count("ten").is_err());
        assert!(parse_count("99999999999999999999M").is_err());
    }

    #[test]
    fn sizes_take_bytes_kibibytes_mebibytes_and_gibibytes() {
        assert_eq!(parse_bytes("100"), Ok(100));
        assert_eq!(parse_bytes("100B"), Ok(100));
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("1MiB"), Ok(1 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("64KB").is_err());
        assert!(parse_bytes("").is_err());
    }
}
