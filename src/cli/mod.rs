//! The `fencelock` command line: the commands, one file each with its arguments and its
//! `run`, and what several of them share (endpoints, listening, signals).
//!
//! Invariants: exit statuses come from [`exit`] only; every time flag parses through
//! [`duration`]; a server announces its address with [`announce`] only once it accepts
//! connections.

pub mod bench;
pub mod check;
pub mod check_worker;
pub mod client;
pub mod demo;
pub mod duration;
pub mod exit;
pub mod fence;
pub mod lock;
pub mod lockd;
pub mod storage;

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::info;

#[derive(Parser)]
#[command(
    name = "fencelock",
    version,
    about = "Fenced distributed locking on etcd",
    after_help = format!("Time flags take a DURATION: {}.\n\n{}", duration::HELP, exit::TABLE)
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the fenced storage server: the seed's JSON protocol on `POST /`, plus a REST face.
    Storage(storage::StorageArgs),
    /// Acquire a lock and hold it until stdin closes or SIGTERM/SIGINT, like `etcdctl lock`.
    ///
    /// Prints JSON lines: {"event":"acquired","key","token","lease","ttl"}, then "released"
    /// or "lost".
    ///
    /// Exit status: 0 when released, 3 when the lock was lost while held, 1 on failure.
    Lock(lock::LockArgs),
    /// Run the embedded lock service, an etcd-compatible server in one process.
    ///
    /// It speaks etcd's v3 gRPC protocol (KV, Watch, Lease, Lock, MemberList, Status), for
    /// `fencelock` commands and etcd's own clients.
    ///
    /// Keys and leases live in memory; only the revision high-water mark is kept in the data
    /// dir, so that lock tokens keep growing across a restart.
    Lockd(lockd::LockdArgs),
    /// The fence in your own database: install PostgreSQL's fence table and SQL functions.
    #[command(subcommand)]
    Fence(fence::FenceCommand),
    /// Measurements.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Fault-injection checker, after Jepsen's etcd lock tests.
    ///
    /// Worker processes increment a counter under a fenced lock while holders, the lock service and the storage are frozen,
    /// revoked and killed; the history is analysed for lost updates and tokens accepted out
    /// of order.
    ///
    /// Exit status: 0 when valid, 4 when a safety violation was found under a policy that
    /// claims safety (strict), 2 on a usage error, 1 on a setup or other failure, 130 when
    /// interrupted.
    Check(check::CheckArgs),
    /// One worker of `fencelock check` (started by the checker).
    #[command(hide = true)]
    CheckWorker(check_worker::CheckWorkerArgs),
    /// The seed's client: acquire the lock, then write to the storage with the fencing token.
    ///
    /// Client 1 prints its lease and token and waits for Enter (or `--pause`s) before writing;
    /// client 2 writes at once.
    ///
    /// Exit status: 0 when the write was accepted, 3 when it was rejected as stale, 1 for any
    /// other failure.
    Client(client::ClientArgs),
    /// The expired-lease scenario, automated, with fencing and without.
    ///
    /// Client 1 is frozen with SIGSTOP past its lease, client 2 acquires and writes, client 1 resumes and writes.
    ///
    /// Exit status: 0 when fencing rejected the stale write, 4 when it did not, 1 on failure,
    /// 130 when interrupted.
    Demo(demo::DemoArgs),
}

impl Command {
    /// The level of fencelock's own log lines when `RUST_LOG` is not set.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            // A line per lock cycle would cost more than the cycle; a worker's or a client's
            // log would drown the tool's own output.
            Command::Bench(_)
            | Command::Check(_)
            | Command::CheckWorker(_)
            | Command::Client(_) => "warn",
            // The demo's storage warns of every stale write, which the demo provokes and shows.
            Command::Demo(_) => "error",
            Command::Storage(_) | Command::Lock(_) | Command::Lockd(_) | Command::Fence(_) => {
                "info"
            }
        }
    }

    /// Runs the command on `runtime`; the exit status on success.
    pub fn run(self, runtime: &tokio::runtime::Runtime) -> anyhow::Result<u8> {
        match self {
            Command::Storage(args) => runtime.block_on(storage::run(args)),
            Command::Lock(args) => runtime.block_on(lock::run(args)),
            Command::Lockd(args) => runtime.block_on(lockd::run(args)),
            Command::Fence(command) => runtime.block_on(fence::run(command)),
            Command::Bench(command) => runtime.block_on(bench::run(command)),
            Command::Check(args) => runtime.block_on(check::run(args)),
            Command::CheckWorker(args) => runtime.block_on(check_worker::run(args)),
            Command::Demo(args) => runtime.block_on(demo::run(args)),
            // On a one-thread runtime of its own, which `--pause` stops (`demo::client`).
            Command::Client(args) => client::run(args),
        }
    }
}

/// The lock service's endpoints, for commands that only talk to one.
#[derive(Args)]
pub struct Endpoints {
    /// etcd endpoints, comma-separated (host:port, http://host:port or https://host:port).
    #[arg(
        long,
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    #[command(flatten)]
    pub tls: EtcdConnect,
}

/// TLS and credentials towards the lock service, with etcdctl's flag and environment
/// variable names. Any TLS flag turns TLS on; endpoints without a scheme then mean
/// `https://`.
#[derive(Args, Clone, Debug, Default)]
pub struct EtcdConnect {
    /// CA bundle (PEM) that signs the lock service's certificates; the system's roots when
    /// only `https://` endpoints are given.
    #[arg(long, env = "ETCDCTL_CACERT", value_name = "FILE")]
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --key.
    #[arg(long, env = "ETCDCTL_CERT", value_name = "FILE", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's key (PEM); needs --cert.
    #[arg(long, env = "ETCDCTL_KEY", value_name = "FILE", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// The name the lock service's certificates carry, when it is not the endpoint's host.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// Authenticate as this etcd user: `name:password`, or `name` with --password.
    #[arg(long, env = "ETCDCTL_USER", value_name = "NAME[:PASSWORD]")]
    pub user: Option<String>,
    /// The user's password, when --user gives only the name.
    #[arg(
        long,
        env = "ETCDCTL_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
}

impl EtcdConnect {
    /// The settings as etcdctl's environment variables, for a child process that reads them
    /// (`fencelock client`, started by the demo).
    pub fn as_env(&self) -> Vec<(&'static str, std::ffi::OsString)> {
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.clone().into_os_string());
        let text = |t: &Option<String>| t.as_ref().map(std::ffi::OsString::from);
        [
            ("ETCDCTL_CACERT", path(&self.cacert)),
            ("ETCDCTL_CERT", path(&self.cert)),
            ("ETCDCTL_KEY", path(&self.key)),
            ("ETCDCTL_USER", text(&self.user)),
            ("ETCDCTL_PASSWORD", text(&self.password)),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
        .collect()
    }

    /// The library's connect options: TLS when any TLS flag was given.
    pub fn connect_options(&self) -> anyhow::Result<fencelock::lock::ConnectOptions> {
        let mut options = fencelock::lock::ConnectOptions::default();
        if self.cacert.is_some() || self.cert.is_some() || self.server_name.is_some() {
            let mut tls = fencelock::lock::TlsOptions::from_files(
                self.cacert.as_deref(),
                self.cert.as_deref(),
                self.key.as_deref(),
            )?;
            tls.server_name = self.server_name.clone();
            options.tls = Some(tls);
        }
        if let Some(user) = &self.user {
            let (name, password) = match (user.split_once(':'), &self.password) {
                (Some((name, password)), None) => (name, password),
                (Some(_), Some(_)) => {
                    return Err(exit::usage(
                        "the password is given twice: in --user name:password and in --password",
                    ));
                }
                (None, Some(password)) => (user.as_str(), password.as_str()),
                (None, None) => {
                    return Err(exit::usage(
                        "--user needs a password: --user name:password, or --password",
                    ));
                }
            };
            options.user = Some(fencelock::lock::Credentials {
                name: name.to_owned(),
                password: password.to_owned(),
            });
        }
        Ok(options)
    }
}

/// The `fencelock` binary itself, which the tools start again as their child processes.
pub fn current_exe() -> anyhow::Result<std::path::PathBuf> {
    std::env::current_exe().context("cannot find the fencelock binary")
}

/// Binds `address` (port 0 picks a free port) and returns the listener with its real address.
pub async fn listen(address: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let addr = listener
        .local_addr()
        .context("cannot read the listening address")?;
    Ok((listener, addr))
}

/// Prints the address a server listens on: tools that start it on port 0 read this line.
pub fn announce(addr: SocketAddr) -> anyhow::Result<()> {
    announce_line(fencelock::process::READY_PREFIX, addr)
}

/// [`announce`] for a server whose port speaks TLS: `listening on https://IP:PORT`.
pub fn announce_tls(addr: SocketAddr) -> anyhow::Result<()> {
    announce_line(fencelock::process::READY_PREFIX_TLS, addr)
}

fn announce_line(prefix: &str, addr: SocketAddr) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{prefix}{addr}").context("cannot write to stdout")?;
    stdout.flush().context("cannot write to stdout")
}

/// A size in bytes with an optional `B`, `KiB`, `MiB` or `GiB`: `100`, `100B`, `64KiB`, `1GiB`.
pub fn parse_bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let (number, factor) = [
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|&(unit, factor)| text.strip_suffix(unit).map(|n| (n, factor)))
    .unwrap_or((text, 1));
    number
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is not a size in bytes (100, 100B, 64KiB, 1MiB, 1GiB)"))
}

/// Reads a PEM file named by `flag`, saying which flag and file when it cannot.
pub fn read_pem(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {flag} {}", path.display()))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
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

/// Runs `work` unless SIGINT or SIGTERM comes first; then `work` is dropped (which stops
/// and reaps the processes it started) and the result is [`exit::Interrupted`].
pub async fn unless_interrupted<T>(
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        () = shutdown_signal() => Err(exit::Interrupted.into()),
    }
}

/// Resolves on stdin EOF, SIGTERM or SIGINT: the ways a parent tells a holder to let go.
pub async fn stop_requested() {
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// clap's own checks of every command (two flags with one name, a `requires` naming no
    /// flag...), which otherwise fire only when that command is run.
    #[test]
    fn every_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
