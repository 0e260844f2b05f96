//! `fencelock bench ...`: measurements.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use fencelock::lock::WatchStart;
use fencelock::storage::Policy;

use super::{
    EtcdConnect, announce, current_exe, duration, exit, listen, shutdown_signal, unless_interrupted,
};
use crate::bench::baseline;
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
    /// The storage benchmark's baseline server (started by the benchmark): every request is
    /// answered with the same small body.
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
    /// `distinct` (every write to a new key), `txn` (transactions of 16 new keys).
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
}

#[derive(Args)]
pub struct BenchMemoryArgs {
    /// Held locks per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    sessions: Vec<usize>,
}

#[derive(Args)]
pub struct BaselineArgs {
    /// Address to listen on; port 0 picks a free port, printed once the server is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    listen: String,
}

pub async fn run(command: BenchCommand) -> anyhow::Result<u8> {
    match command {
        BenchCommand::Lock(args) => bench_lock(*args).await,
        BenchCommand::Storage(args) => bench_storage(args).await,
        BenchCommand::Memory(args) => bench_memory(args).await,
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
    let options = storage::Options {
        binary: current_exe()?,
        stores: args.stores,
        scenarios: args.scenarios,
        connections: args.connections,
        duration: args.duration,
        policy: args.fencing,
        verify_tokens: args.verify_tokens,
    };
    // Interrupted, the benchmark is dropped, which stops the servers it started.
    let work = async {
        storage::run(&options, &mut std::io::stdout())
            .await
            .context("storage benchmark failed")
    };
    unless_interrupted(work).await?;
    Ok(exit::SUCCESS)
}

async fn serve_baseline(args: BaselineArgs) -> anyhow::Result<u8> {
    let (listener, addr) = listen(&args.listen).await?;
    announce(addr)?;
    baseline::serve(listener, shutdown_signal())
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
    };
    // Interrupted, the benchmark is dropped, which stops the etcd cluster it started.
    let work = async {
        lock::run(&options, &mut std::io::stdout())
            .await
            .context("lock benchmark failed")
    };
    unless_interrupted(work).await?;
    Ok(exit::SUCCESS)
}
