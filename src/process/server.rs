//! A `fencelock` server (`lockd`, `storage`) as a child process on a loopback port, or on the
//! address of a [`NetHost`] of a test network, for tools that want a server in its own
//! process: to freeze it, kill it, restart it, cut it off, or measure it apart from its
//! clients.
//!
//! Invariants: the child is killed and reaped when the handle drops, and also dies with the
//! thread that spawned it (see `die_with_parent`); a restart listens on the same address, in
//! the same host, so clients keep their URL.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::{NetHost, Signal};

/// How long a starting server may take to print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a server process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The binary could not be started.
    #[error("cannot start {what}")]
    Spawn {
        /// The command, `BINARY SUBCOMMAND`.
        what: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// The host of a test network could not be entered.
    #[error("cannot start {what} in its test network host")]
    Enter {
        /// The command, `BINARY SUBCOMMAND`.
        what: String,
        /// Why.
        #[source]
        source: super::NetError,
    },
    /// The server did not print its [`READY_PREFIX`](super::READY_PREFIX) line in time.
    #[error("{what} did not report its address within {READY_TIMEOUT:?}")]
    NotReady {
        /// The command, `BINARY SUBCOMMAND`.
        what: String,
    },
}

/// A running `fencelock <subcommand>`; killed (and reaped) when dropped.
pub struct ServerProcess {
    binary: PathBuf,
    subcommand: String,
    args: Vec<OsString>,
    child: Option<Child>,
    addr: SocketAddr,
    /// The test network host it runs in, if any.
    host: Option<NetHost>,
}

impl ServerProcess {
    /// Starts `binary subcommand --listen 127.0.0.1:0 args...` and waits until it prints
    /// its readiness line ([`READY_PREFIX`](super::READY_PREFIX) and its address).
    pub async fn spawn(
        binary: &Path,
        subcommand: &str,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self, SpawnError> {
        Self::spawn_on(None, binary, subcommand, args).await
    }

    /// As [`ServerProcess::spawn`], but inside `host` (when given) and listening on its
    /// address, `ADDR:0`: a server that a [`TestNet`](super::TestNet) can cut off.
    pub async fn spawn_on(
        host: Option<&NetHost>,
        binary: &Path,
        subcommand: &str,
        args: impl IntoIterator<Item = impl Into<OsString>>,
    ) -> Result<Self, SpawnError> {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let listen = match host {
            Some(host) => format!("{}:0", host.addr()),
            None => "127.0.0.1:0".to_owned(),
        };
        let (child, addr) = start(host, binary, subcommand, &listen, &args).await?;
        Ok(Self {
            binary: binary.to_owned(),
            subcommand: subcommand.to_owned(),
            args,
            child: Some(child),
            addr,
            host: host.cloned(),
        })
    }

    /// The server's URL, `http://IP:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's address, `IP:PORT`; the same after a restart.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PID, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `signal` (`Signal::STOP`, `Signal::CONT`, ...) to the process; false when it is
    /// not running. The PID is that of a child this handle has not reaped yet, so it cannot
    /// have been reused by another process.
    pub fn signal(&self, signal: Signal) -> bool {
        self.pid()
            .is_some_and(|pid| super::send_signal(pid, signal))
    }

    /// Kills the process with SIGKILL and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Kills the process if it runs, then starts it again with the same arguments on the same
    /// address.
    pub async fn restart(&mut self) -> Result<(), SpawnError> {
        self.kill().await;
        let (child, addr) = start(
            self.host.as_ref(),
            &self.binary,
            &self.subcommand,
            &self.addr.to_string(),
            &self.args,
        )
        .await?;
        self.child = Some(child);
        self.addr = addr;
        Ok(())
    }
}

async fn start(
    host: Option<&NetHost>,
    binary: &Path,
    subcommand: &str,
    listen: &str,
    args: &[OsString],
) -> Result<(Child, SocketAddr), SpawnError> {
    let what = format!("{} {subcommand}", binary.display());
    let mut command = Command::new(binary);
    command
        .args([subcommand, "--listen", listen])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    // If this process dies without dropping the child, the kernel ends the child too.
    super::die_with_parent(command.as_std_mut());
    if let Some(host) = host {
        host.enter(command.as_std_mut())
            .map_err(|source| SpawnError::Enter {
                what: what.clone(),
                source,
            })?;
    }
    let mut child = command.spawn().map_err(|source| SpawnError::Spawn {
        what: what.clone(),
        source,
    })?;
    let Some(stdout) = child.stdout.take() else {
        unreachable!("stdout is piped above");
    };
    let mut lines = BufReader::new(stdout).lines();
    let announced = tokio::time::timeout(READY_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(addr) = super::parse_ready_line(&line) {
                return Some(addr);
            }
        }
        None
    })
    .await;
    match announced {
        Ok(Some(addr)) => Ok((child, addr)),
        _ => Err(SpawnError::NotReady { what }),
    }
}
