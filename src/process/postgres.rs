//! A private PostgreSQL server on loopback, started, crashed and restarted by this process.
//!
//! Used by the tests, the checker and the demo when no database is given. Invariants:
//! - the cluster is created by `initdb` in a temporary directory removed on drop, and listens
//!   on 127.0.0.1 only (no Unix socket), on a port that was free when chosen;
//! - as root, the server runs as the `postgres` system user (or `nobody`), since PostgreSQL
//!   refuses to run as root; the temporary directory is handed to that user;
//! - `start` and `restart` return only once the server answers a query;
//! - the postmaster and every process it started (each backend leads its own session, so a
//!   process group does not hold them) are killed at once on [`PostgresServer::crash`] and
//!   on drop, and the postmaster is reaped; it dies with the thread that started it if this
//!   process ends without dropping it, and its backends then exit on seeing it gone.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{ChildGuard, die_with_parent};

/// How long a server may take to answer its first query.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts with a fresh port when the chosen one was taken before the server bound it.
const START_ATTEMPTS: usize = 3;

/// The superuser `initdb` creates, trusted on loopback (the cluster is private to this run).
pub const POSTGRES_USER: &str = "fencelock";

/// Errors starting PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// No `initdb` and `postgres` were found.
    #[error(
        "PostgreSQL's server programs (initdb, postgres) are not installed: install Debian's \
         postgresql package or set FENCELOCK_POSTGRES_BIN to their directory"
    )]
    NotInstalled,
    /// `initdb` failed.
    #[error("initdb failed: {0}")]
    Initdb(String),
    /// The server exited while starting.
    #[error("postgres exited during start-up; its log ends with:\n{0}")]
    Exited(String),
    /// The server did not answer in time.
    #[error("postgres did not answer within {timeout:?}: {detail}")]
    Unhealthy {
        /// How long it was given.
        timeout: Duration,
        /// The last connection error.
        detail: String,
    },
    /// The directory, the log or the port could not be prepared.
    #[error("cannot prepare PostgreSQL's directory or port: {0}")]
    Io(#[from] std::io::Error),
}

/// The directory holding `initdb` and `postgres`: `$FENCELOCK_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian's layout, not on PATH), else PATH's `initdb`.
pub fn postgres_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("FENCELOCK_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return has_both(&dir).then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|path| std::env::split_paths(&path).find(|dir| has_both(dir)))
}

/// A running private PostgreSQL server owned by this process.
pub struct PostgresServer {
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
    data: PathBuf,
    log: PathBuf,
    postmaster: Option<ChildGuard>,
    // Removed after the server is killed (fields drop in order).
    dir: tempfile::TempDir,
}

impl PostgresServer {
    /// Creates a cluster in a temporary directory and starts it; returns once it answers.
    pub async fn start() -> Result<Self, PostgresError> {
        let bin = postgres_bin_dir().ok_or(PostgresError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("fencelock-postgres-")
            .tempdir()?;
        let run_as = if rustix::process::geteuid().is_root() {
            let ids = system_user("postgres")
                .or_else(|| system_user("nobody"))
                .ok_or_else(|| {
                    PostgresError::Initdb("running as root, and no postgres or nobody user".into())
                })?;
            rustix::fs::chown(
                dir.path(),
                Some(rustix::fs::Uid::from_raw(ids.0)),
                Some(rustix::fs::Gid::from_raw(ids.1)),
            )
            .map_err(std::io::Error::from)?;
            Some(ids)
        } else {
            None
        };
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", POSTGRES_USER, "--auth=trust", "-E", "UTF8"])
            .args(["--no-locale", "--no-sync", "--no-instructions"])
            .stdin(Stdio::null());
        as_user(&mut initdb, run_as);
        let out = initdb.output()?;
        if !out.status.success() {
            return Err(PostgresError::Initdb(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        let mut server = PostgresServer {
            bin,
            port: 0,
            run_as,
            data,
            log,
            postmaster: None,
            dir,
        };
        server.start_on_new_port().await?;
        Ok(server)
    }

    async fn start_on_new_port(&mut self) -> Result<(), PostgresError> {
        let mut attempt = 1;
        loop {
            self.port = super::free_ports(1)?[0];
            match self.spawn_and_wait().await {
                Err(PostgresError::Exited(log)) if attempt < START_ATTEMPTS && port_taken(&log) => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn spawn_and_wait(&mut self) -> Result<(), PostgresError> {
        let log = File::options().create(true).append(true).open(&self.log)?;
        if let Some((uid, gid)) = self.run_as {
            rustix::fs::chown(
                &self.log,
                Some(rustix::fs::Uid::from_raw(uid)),
                Some(rustix::fs::Gid::from_raw(gid)),
            )
            .map_err(std::io::Error::from)?;
        }
        let log_start = log.metadata()?.len();
        let args: Vec<OsString> = vec![
            "-D".into(),
            self.data.clone().into_os_string(),
            "-p".into(),
            self.port.to_string().into(),
            "-c".into(),
            "listen_addresses=127.0.0.1".into(),
            "-c".into(),
            "unix_socket_directories=".into(),
            "-c".into(),
            "max_connections=200".into(),
        ];
        let mut command = Command::new(self.bin.join("postgres"));
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        as_user(&mut command, self.run_as);
        die_with_parent(&mut command);
        self.postmaster = Some(ChildGuard::spawn_group("postgres", &mut command)?);
        self.wait_ready(log_start).await
    }

    async fn wait_ready(&mut self, log_start: u64) -> Result<(), PostgresError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(postmaster) = self.postmaster.as_mut()
                && !postmaster.is_running()
            {
                self.postmaster = None;
                return Err(PostgresError::Exited(super::log_tail(&self.log, log_start)));
            }
            let detail = match tokio_postgres::connect(&self.url(), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    let task = tokio::spawn(connection);
                    let answered = client.simple_query("SELECT 1").await;
                    drop(client);
                    let _ = task.await;
                    match answered {
                        Ok(_) => return Ok(()),
                        Err(e) => e.to_string(),
                    }
                }
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(PostgresError::Unhealthy {
                    timeout: START_TIMEOUT,
                    detail,
                });
            }
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// A connection URL (`postgresql://fencelock@127.0.0.1:PORT/postgres`).
    pub fn url(&self) -> String {
        format!(
            "postgresql://{POSTGRES_USER}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster.as_ref().and_then(ChildGuard::pid)
    }

    /// Kills the postmaster and every backend with SIGKILL at once, as a crash of the machine
    /// would end them (only what reached the write-ahead log survives), and reaps the
    /// postmaster; returns once all of them are dead.
    pub fn crash(&mut self) {
        if let Some(mut postmaster) = self.postmaster.take() {
            postmaster.kill_with_children();
        }
    }

    /// Starts the server again on the same data and port (crash recovery runs first) and
    /// returns once it answers.
    pub async fn restart(&mut self) -> Result<(), PostgresError> {
        self.crash();
        match self.spawn_and_wait().await {
            // Someone took the port while the server was down: the data survives a move.
            Err(PostgresError::Exited(log)) if port_taken(&log) => self.start_on_new_port().await,
            other => other,
        }
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The temporary directory holding the data and the log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.crash();
    }
}

fn port_taken(log: &str) -> bool {
    log.contains("could not bind") || log.contains("Address already in use")
}

fn as_user(command: &mut Command, ids: Option<(u32, u32)>) {
    if let Some((uid, gid)) = ids {
        command.uid(uid).gid(gid);
    }
}

/// The uid and gid of `name` in `/etc/passwd`.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}
