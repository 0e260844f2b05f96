//! The `fencelock` command: argument parsing and start-up only; the work lives in the library.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
mod bench;
mod check;
mod demo;
mod svg;

use demo::client::ClientOptions;
use fencelock::lock::WatchStart;
use fencelock::lock::hold::{self, HoldOptions, HoldOutcome};
use fencelock::lockd;
use fencelock::storage::{self, DEFAULT_MAX_BODY, Engine, Policy};
use tracing::info;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "fencelock",
    version,
    about = "Fenced distributed locking on etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the fenced storage server (the seed's JSON protocol on `POST /`, plus a REST face).
    Storage(StorageArgs),
    /// Acquire a lock and hold it until stdin closes or SIGTERM/SIGINT (like `etcdctl lock`).
    ///
    /// Prints JSON lines: {"event":"acquired","key","token","lease","ttl"}, then "released"
    /// (exit 0) or "lost" (exit 3, when the session is lost while holding).
    Lock(LockArgs),
    /// Run the embedded lock service: etcd's v3 gRPC protocol (KV, Watch, Lease, Lock,
    /// MemberList, Status) in one process, for `fencelock` commands and etcd's own clients.
    ///
    /// Keys and leases live in memory; only the revision high-water mark is kept in the data
    /// dir, so that lock tokens keep growing across a restart.
    Lockd(LockdArgs),
    /// Measurements.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Fault-injection checker, after Jepsen's etcd lock tests: worker processes increment a
    /// counter under a fenced lock while holders, the lock service and the storage are frozen,
    /// revoked and killed; the history is analysed for lost updates and tokens accepted out
    /// of order.
    ///
    /// Exit status: 0 when valid, 1 when a safety violation was found under a policy that
    /// claims safety (strict), 2 on a usage or setup error.
    Check(CheckArgs),
    /// One worker of `fencelock check` (started by the checker).
    #[command(hide = true)]
    CheckWorker(CheckWorkerArgs),
    /// The seed's client: acquire the lock, then write to the storage with the fencing token.
    ///
    /// Client 1 prints its lease and token and waits for Enter (or `--pause`s) before writing;
    /// client 2 writes at once. Exit status: 0 when the write was accepted, 3 when it was
    /// rejected as stale, 1 for any other failure.
    Client(ClientArgs),
    /// The expired-lease scenario, automated: client 1 frozen with SIGSTOP past its lease,
    /// client 2 acquires and writes, client 1 resumes and writes; with fencing and without.
    ///
    /// Exit status 0 when fencing rejected the stale write, 2 when it did not, 1 on failure.
    Demo(DemoArgs),
}

#[derive(Args)]
struct ClientArgs {
    /// Which client: 1 waits (or pauses) before writing, 2 writes at once.
    #[arg(value_parser = clap::value_parser!(u8).range(1..=2))]
    client: u8,
    /// etcd endpoints, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379"
    )]
    endpoints: Vec<String>,
    /// The fenced storage's URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    storage: String,
    /// The lock name; also the fence the storage checks the token against.
    #[arg(long, value_name = "NAME", default_value = "/lock")]
    lock: String,
    /// The storage key to write.
    #[arg(long, default_value = "key0")]
    key: String,
    /// Lease TTL in seconds (the lock service may grant more; the granted TTL is printed).
    #[arg(long, value_name = "SECS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
    /// Client 1: instead of waiting for Enter, stop all work, keepalives included, for this
    /// long (e.g. 3s, 1500ms), then write.
    #[arg(long, value_name = "DURATION", value_parser = demo::client::parse_duration)]
    pause: Option<Duration>,
    /// Print JSON lines (one per event) instead of plain words.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Use this etcd cluster (comma-separated endpoints) instead of an embedded lockd.
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// Lease TTL in seconds the clients ask for.
    #[arg(long, value_name = "SECS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
    /// Directory for the timeline picture, demo-timeline.svg.
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: PathBuf,
    /// Print only a machine-readable JSON result.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StorageArgs {
    /// Address to listen on; port 0 picks a free port. The address is printed on stdout as
    /// `listening on http://IP:PORT` once the server is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory of the durable store, created when missing.
    #[arg(long, value_name = "DIR", default_value = "fencelock-storage.data")]
    data_dir: PathBuf,
    /// Keep everything in memory instead: nothing survives the process.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Which requests are checked against the fence: strict (reads and writes), writes, seed
    /// (the seed's equality check) or off.
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    fencing: Policy,
    /// Largest request body accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY)]
    max_body: usize,
}

#[derive(Args)]
struct LockdArgs {
    /// Address to listen on; port 0 picks a free port. The address is printed on stdout as
    /// `listening on http://IP:PORT` once lockd is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2379")]
    listen: String,
    /// Directory for the revision high-water mark, created when missing.
    #[arg(long, value_name = "DIR", default_value = "fencelock-lockd.data")]
    data_dir: PathBuf,
    /// Keep nothing on disk: revisions start again at 1 with every start, so tokens from an
    /// earlier run may be repeated.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Lease TTLs below this many seconds are raised to it.
    #[arg(long, value_name = "SECS", default_value_t = lockd::DEFAULT_MIN_TTL.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    min_ttl: u64,
    /// Events kept for watches and reads of past revisions (and at most 64 MiB of keys and
    /// values); older ones are compacted.
    #[arg(long, value_name = "EVENTS", default_value_t = lockd::DEFAULT_HISTORY,
          value_parser = parse_history)]
    history: usize,
    /// Longest request accepted, in bytes (etcd's default, 1.5 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = lockd::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Bytes of live keys and values writes may grow to; past it writes are refused.
    #[arg(long, value_name = "BYTES", default_value_t = lockd::DEFAULT_QUOTA_BACKEND_BYTES)]
    quota_backend_bytes: usize,
}

fn parse_history(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Args)]
struct Endpoints {
    /// etcd endpoints, comma-separated (host:port or http://host:port).
    #[arg(
        long,
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
}

#[derive(Args)]
struct LockArgs {
    /// The lock name (a key prefix, e.g. /orders).
    name: String,
    #[command(flatten)]
    endpoints: Endpoints,
    /// Session lease TTL in seconds (etcd may raise it to its minimum).
    #[arg(long, default_value_t = 10)]
    ttl: u64,
}

#[derive(Args)]
struct CheckArgs {
    /// Seconds each run lasts.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    duration: f64,
    /// Worker processes.
    #[arg(long, value_name = "N", default_value_t = 5)]
    clients: u32,
    /// Session lease TTL in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2,
          value_parser = clap::value_parser!(u64).range(1..))]
    ttl: u64,
    /// The lock name the workers contend for.
    #[arg(long, value_name = "NAME", default_value = "/fencelock-check")]
    lock: String,
    /// Seconds of work between a worker's read and its write: uniformly random in MIN-MAX
    /// (or 0-MAX when one number is given).
    #[arg(long, value_name = "MIN-MAX", default_value = "0-2", value_parser = parse_work)]
    work: (Duration, Duration),
    /// Faults to inject, comma-separated: freeze-holder, freeze-after-read, revoke,
    /// freeze-lock-service, kill-storage, kill-member, or none. Each time one is drawn at
    /// random from the list, so a fault named twice comes twice as often. Default: all that
    /// apply to the lock service.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    faults: Option<Vec<FaultArg>>,
    /// Seconds between faults.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    interval: f64,
    /// Seed of the fault schedule and the workers' work times (default: chosen at random and
    /// printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Start and use a loopback etcd cluster of this many members instead of lockd (needed
    /// for kill-member).
    #[arg(long, value_name = "N", conflicts_with = "endpoints")]
    etcd_members: Option<usize>,
    /// etcd binary for --etcd-members.
    #[arg(long, env = "FENCELOCK_ETCD_BIN", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Use this running lock service (comma-separated endpoints) instead of starting one; its
    /// processes cannot be faulted.
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// The storage's fencing policy: strict, writes, seed or off.
    #[arg(long, value_name = "POLICY", default_value = "strict")]
    fencing: Policy,
    /// Run once per policy (strict, writes, seed, off) with the same seed and faults.
    #[arg(long, conflicts_with = "fencing")]
    compare: bool,
    /// Directory for the history files, reports and timelines (one subdirectory per policy).
    #[arg(long, value_name = "DIR", default_value = "fencelock-check.out")]
    out: PathBuf,
    /// Print the result as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Analyse the histories of an earlier check kept in DIR (its --out) again, instead of
    /// running one: reports and timelines are rewritten there.
    #[arg(long, value_name = "DIR")]
    analyse: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FaultArg {
    FreezeHolder,
    FreezeAfterRead,
    Revoke,
    FreezeLockService,
    KillStorage,
    KillMember,
    None,
}

fn parse_work(text: &str) -> Result<(Duration, Duration), String> {
    let seconds = |t: &str| -> Result<Duration, String> {
        let v: f64 = t
            .trim()
            .parse()
            .map_err(|_| format!("{t:?} is not a number of seconds"))?;
        Duration::try_from_secs_f64(v).map_err(|_| format!("{t:?} is not a valid duration"))
    };
    let (low, high) = match text.split_once('-') {
        Some((low, high)) => (seconds(low)?, seconds(high)?),
        None => (Duration::ZERO, seconds(text)?),
    };
    if low > high {
        return Err(format!("{text:?}: the minimum is above the maximum"));
    }
    Ok((low, high))
}

#[derive(Args)]
struct CheckWorkerArgs {
    #[arg(long)]
    id: u32,
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    #[arg(long)]
    storage: String,
    #[arg(long)]
    lock: String,
    #[arg(long)]
    key: String,
    #[arg(long)]
    ttl: u64,
    #[arg(long)]
    work_min: f64,
    #[arg(long)]
    work_max: f64,
    #[arg(long)]
    seed: u64,
    #[arg(long)]
    history: PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Lock+unlock cycles on lockd and on a loopback etcd cluster, with 1 and with 8
    /// contending sessions.
    Lock(BenchLockArgs),
}

#[derive(Args)]
struct BenchLockArgs {
    /// Measure this lock service (comma-separated endpoints) instead of starting lockd and etcd.
    #[arg(long, value_delimiter = ',')]
    endpoints: Option<Vec<String>>,
    /// Services to start and measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lockd,etcd")]
    services: Vec<ServiceArg>,
    /// Members of the loopback cluster started when no endpoints are given.
    #[arg(long, default_value_t = 3)]
    members: usize,
    /// etcd binary for the loopback cluster.
    #[arg(long, env = "FENCELOCK_ETCD_BIN", default_value = "etcd")]
    etcd_bin: PathBuf,
    /// Contending sessions per run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    sessions: Vec<usize>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Where waiters' watches start, comma-separated, one set of runs each: `now` (the
    /// library's default), `next` (the revision after the read), `read` (the read's own
    /// revision, as etcd's Go client does).
    #[arg(long, value_delimiter = ',', default_value = "now,next")]
    watch_start: Vec<WatchStartArg>,
    /// Also run with the watch at the read's own revision (same as adding `read`).
    #[arg(long)]
    go_watch: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServiceArg {
    Lockd,
    Etcd,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum WatchStartArg {
    Now,
    Next,
    Read,
}

impl From<WatchStartArg> for WatchStart {
    fn from(arg: WatchStartArg) -> Self {
        match arg {
            WatchStartArg::Now => WatchStart::Latest,
            WatchStartArg::Next => WatchStart::AfterRange,
            WatchStartArg::Read => WatchStart::AtRange,
        }
    }
}

/// Exit status when the lock was lost while held.
const EXIT_LOST: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A benchmark logs only problems: a line per lock cycle would cost more than the cycle.
    let default_level = match cli.command {
        Command::Bench(_) | Command::Check(_) | Command::CheckWorker(_) | Command::Client(_) => {
            "warn"
        }
        // The demo's storage warns of every stale write, which the demo provokes and shows.
        Command::Demo(_) => "error",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(format!("warn,fencelock={default_level}"))),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fencelock: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line. Library errors often show their cause in their own
/// message as well, so a cause already shown is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let command = match cli.command {
        // On a one-thread runtime of its own, which `--pause` stops (`demo::client`).
        Command::Client(args) => return client(args),
        command => command,
    };
    // One async worker per core (tokio's default). Measured for the storage on 2 cores with
    // wrk sharing them: a single worker cuts throughput by a third, since parsing and
    // answering HTTP, not the disk, is what runs out first.
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = match command {
        Command::Storage(args) => runtime.block_on(run_storage(args)),
        Command::Lock(args) => runtime.block_on(lock(args)),
        Command::Lockd(args) => runtime.block_on(run_lockd(args)),
        Command::Bench(BenchCommand::Lock(args)) => runtime.block_on(bench_lock(args)),
        Command::Check(args) => runtime.block_on(check(args)),
        Command::CheckWorker(args) => runtime.block_on(check_worker(args)),
        Command::Demo(args) => runtime.block_on(run_demo(args)),
        Command::Client(_) => unreachable!("the client runs before this runtime starts"),
    };
    // Reading stdin occupies a blocking thread that no one can interrupt; waiting for it
    // would keep the process alive after its work is done.
    runtime.shutdown_background();
    result
}

async fn lock(args: LockArgs) -> anyhow::Result<ExitCode> {
    let options = HoldOptions {
        endpoints: args.endpoints.endpoints,
        name: args.name,
        ttl: Duration::from_secs(args.ttl),
    };
    let outcome = hold::hold(&options, &mut std::io::stdout(), stop_requested())
        .await
        .with_context(|| format!("cannot hold lock {}", options.name))?;
    Ok(match outcome {
        HoldOutcome::Released | HoldOutcome::Stopped => ExitCode::SUCCESS,
        HoldOutcome::Lost(reason) => {
            eprintln!("fencelock: lock {} lost: {reason}", options.name);
            ExitCode::from(EXIT_LOST)
        }
    })
}

/// Resolves on stdin EOF, SIGTERM or SIGINT: the ways a parent tells a holder to let go.
async fn stop_requested() {
    use tokio::io::AsyncReadExt;

    let stdin_closed = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    tokio::select! {
        () = stdin_closed => {}
        () = shutdown_signal() => {}
    }
}

fn client(args: ClientArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.pause.is_none() || args.client == 1,
        "--pause is for client 1"
    );
    let options = ClientOptions {
        role: if args.client == 1 {
            demo::client::Role::First
        } else {
            demo::client::Role::Second
        },
        endpoints: args.endpoints,
        storage: args.storage,
        lock: args.lock,
        key: args.key,
        ttl: Duration::from_secs(args.ttl),
        pause: args.pause,
        json: args.json,
    };
    let outcome = demo::client::run(&options, &mut std::io::stdout())?;
    Ok(ExitCode::from(outcome.exit_code()))
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let options = demo::DemoOptions {
        endpoints: args.endpoints,
        ttl: Duration::from_secs(args.ttl),
        out_dir: args.out,
        json: args.json,
        client_bin: std::env::current_exe().context("cannot find the fencelock binary")?,
    };
    // On Ctrl-C the demo is dropped, which kills its clients and stops its servers.
    let mut out = std::io::stdout();
    tokio::select! {
        report = demo::run(&options, &mut out) => Ok(if report?.fencing_rejected_stale_write {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        }),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("fencelock: interrupted");
            Ok(ExitCode::from(130))
        }
    }
}

async fn bench_lock(args: BenchLockArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    anyhow::ensure!(args.members > 0, "--members must be at least 1");
    anyhow::ensure!(
        args.sessions.iter().all(|&n| n > 0),
        "--sessions must be positive numbers"
    );
    let mut watch_starts: Vec<WatchStart> = args.watch_start.into_iter().map(Into::into).collect();
    if args.go_watch && !watch_starts.contains(&WatchStart::AtRange) {
        watch_starts.push(WatchStart::AtRange);
    }
    let services = args
        .services
        .into_iter()
        .map(|s| match s {
            ServiceArg::Lockd => bench::lock::Service::Lockd,
            ServiceArg::Etcd => bench::lock::Service::Etcd,
        })
        .collect();
    let options = bench::lock::Options {
        endpoints: args.endpoints,
        services,
        lockd_bin: std::env::current_exe().context("cannot find the fencelock binary")?,
        members: args.members,
        etcd_bin: args.etcd_bin,
        sessions: args.sessions,
        duration: Duration::from_secs_f64(args.duration),
        watch_starts,
    };
    // On Ctrl-C the benchmark is dropped, which stops the etcd cluster it started.
    let mut out = std::io::stdout();
    tokio::select! {
        result = bench::lock::run(&options, &mut out) => {
            result.context("lock benchmark failed")?;
            Ok(ExitCode::SUCCESS)
        }
        _ = tokio::signal::ctrl_c() => {
            eprintln!("fencelock: interrupted");
            Ok(ExitCode::from(130))
        }
    }
}

async fn run_storage(args: StorageArgs) -> anyhow::Result<ExitCode> {
    let engine = if args.in_memory {
        Engine::Memory
    } else {
        Engine::Durable(args.data_dir.clone())
    };
    let config = storage::Config {
        engine: engine.clone(),
        policy: args.fencing,
        max_body: args.max_body,
    };
    let (listener, addr) = listen(&args.listen).await?;
    let server = storage::Server::open(config)
        .await
        .with_context(|| format!("cannot start the storage ({engine})"))?;
    info!(%addr, policy = %args.fencing, %engine, max_body = args.max_body, "storage ready");
    announce(addr)?;
    server
        .serve(listener, shutdown_signal())
        .await
        .context("storage server failed")?;
    Ok(ExitCode::SUCCESS)
}

async fn run_lockd(args: LockdArgs) -> anyhow::Result<ExitCode> {
    let config = lockd::Config {
        data_dir: (!args.in_memory).then(|| args.data_dir.clone()),
        min_ttl: Duration::from_secs(args.min_ttl),
        history: args.history,
        max_request_bytes: args.max_request_bytes,
        quota_backend_bytes: args.quota_backend_bytes,
    };
    let (listener, addr) = listen(&args.listen).await?;
    let server = lockd::Server::open(&config).context("cannot start lockd")?;
    let data = match &config.data_dir {
        Some(dir) => dir.display().to_string(),
        None => "none (in memory)".into(),
    };
    info!(%addr, data_dir = %data, revision = server.revision(), min_ttl = args.min_ttl, "lockd ready");
    announce(addr)?;
    server
        .serve(listener, shutdown_signal())
        .await
        .context("lockd failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Binds `address` (port 0 picks a free port) and returns the listener with its real address.
async fn listen(address: &str) -> anyhow::Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    Ok((listener, addr))
}

/// Prints the address a server listens on: tools that start it on port 0 read this line.
fn announce(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}{addr}", fencelock::process::READY_PREFIX)
        .context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    // A handler that cannot be installed never fires; the signal's default action (ending
    // the process) then still applies.
    let on = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!("cannot listen for {name}: {e}");
                std::future::pending::<()>().await;
            }
        }
        name
    };
    let name = tokio::select! {
        name = on(SignalKind::interrupt(), "SIGINT") => name,
        name = on(SignalKind::terminate(), "SIGTERM") => name,
    };
    info!("{name} received, shutting down");
}

/// Exit status of `check` when a policy that claims safety was violated.
const EXIT_VIOLATION: u8 = 1;
/// Exit status of `check` on a usage or setup error.
const EXIT_CHECK_ERROR: u8 = 2;

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    use check::history::FaultKind;
    use check::run::{self, Backend, CheckError};

    let usage = |message: &str| {
        eprintln!("fencelock: {message}");
        Ok(ExitCode::from(EXIT_CHECK_ERROR))
    };
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return usage("--duration must be a positive number of seconds");
    }
    if !(args.interval > 0.0 && args.interval.is_finite()) {
        return usage("--interval must be a positive number of seconds");
    }
    let faults = args.faults.map(|list| {
        list.into_iter()
            .filter_map(|f| match f {
                FaultArg::FreezeHolder => Some(FaultKind::FreezeHolder),
                FaultArg::FreezeAfterRead => Some(FaultKind::FreezeAfterRead),
                FaultArg::Revoke => Some(FaultKind::Revoke),
                FaultArg::FreezeLockService => Some(FaultKind::FreezeLockService),
                FaultArg::KillStorage => Some(FaultKind::KillStorage),
                FaultArg::KillMember => Some(FaultKind::KillMember),
                FaultArg::None => None,
            })
            .collect()
    });
    let backend = match (args.etcd_members, args.endpoints) {
        (Some(0), _) => return usage("--etcd-members must be at least 1"),
        (Some(members), _) => Backend::Etcd {
            members,
            binary: args.etcd_bin,
        },
        (None, Some(endpoints)) => Backend::External(endpoints),
        (None, None) => Backend::Lockd,
    };
    let seed = args.seed.unwrap_or_else(rand::random);
    let policies = if args.compare {
        vec![Policy::Strict, Policy::Writes, Policy::Seed, Policy::Off]
    } else {
        vec![args.fencing]
    };
    let options = run::Options {
        duration: Duration::from_secs_f64(args.duration),
        clients: args.clients,
        ttl: Duration::from_secs(args.ttl),
        lock: args.lock,
        work: args.work,
        faults,
        interval: Duration::from_secs_f64(args.interval),
        seed,
        backend,
        policies,
        out: args.out,
        binary: std::env::current_exe().context("cannot find the fencelock binary")?,
        progress: !args.json,
    };
    if !args.json && args.analyse.is_none() {
        eprintln!("fencelock check: seed {seed} (repeat with --seed {seed})");
    }
    let work = async {
        match &args.analyse {
            Some(dir) => run::load_all(dir),
            None => run::run(&options).await,
        }
    };
    let runs = tokio::select! {
        result = work => match result {
            Ok(runs) => runs,
            Err(CheckError::Usage(message)) => return usage(&message),
            Err(e) => {
                eprintln!("fencelock: {}", one_line(&anyhow::Error::new(e)));
                return Ok(ExitCode::from(EXIT_CHECK_ERROR));
            }
        },
        // Dropping the run stops and reaps every process it started.
        () = shutdown_signal() => {
            eprintln!("fencelock: interrupted");
            return Ok(ExitCode::from(130));
        }
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let value = run::json(&runs);
        writeln!(stdout, "{value:#}").context("cannot write to stdout")?;
    } else {
        write!(stdout, "{}", run::table(&runs)).context("cannot write to stdout")?;
        for run in &runs {
            writeln!(
                stdout,
                "{}: histories, report.json and timeline.svg in {}",
                run.policy,
                run.dir.display()
            )
            .context("cannot write to stdout")?;
        }
    }
    let violated = runs
        .iter()
        .any(|r| r.policy == Policy::Strict && !r.report.valid());
    Ok(if violated {
        ExitCode::from(EXIT_VIOLATION)
    } else {
        ExitCode::SUCCESS
    })
}

async fn check_worker(args: CheckWorkerArgs) -> anyhow::Result<ExitCode> {
    use check::worker::{self, WorkerOptions};

    let options = WorkerOptions {
        id: args.id,
        endpoints: args.endpoints,
        storage: args.storage,
        lock: args.lock,
        key: args.key,
        ttl: Duration::from_secs(args.ttl),
        work: (
            Duration::from_secs_f64(args.work_min),
            Duration::from_secs_f64(args.work_max),
        ),
        seed: args.seed,
        history: args.history,
    };
    worker::run(&options, std::io::stdout(), stop_requested())
        .await
        .with_context(|| format!("worker {} failed", options.id))?;
    Ok(ExitCode::SUCCESS)
}
