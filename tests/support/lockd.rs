//! A `fencelock lockd` process for tests: the embedded lock service on a loopback port, its
//! data directory in a temporary folder that outlives restarts, killed on drop.
//!
//! - The first start listens on `127.0.0.1:0`; the address comes from the
//!   readiness line it prints once ready (`fencelock::process::READY_PREFIX`).
//! - A restart reuses the data directory and the port, so clients connected before keep
//!   their endpoints and reconnect by themselves.

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use super::proc::{ChildGuard, Signal, fencelock_bin};

/// How long lockd may take to open its data directory and print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of lockd's stderr kept to explain a failed start.
const LOG_TAIL_LINES: usize = 20;

pub struct LockdProcess {
    // Declared before `data_dir` so the process is gone before its directory is removed.
    child: ChildGuard,
    /// `IP:PORT`, the form `EtcdCluster::endpoints` uses.
    addr: String,
    /// Flags beyond the listener and the data directory, kept for restarts.
    args: Vec<String>,
    data_dir: tempfile::TempDir,
}

impl LockdProcess {
    /// Starts lockd on a free loopback port with a fresh data directory.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with more `fencelock lockd` flags (TLS, metrics URLs).
    pub fn start_with(args: &[String]) -> Self {
        let data_dir = tempfile::Builder::new()
            .prefix("fencelock-lockd-")
            .tempdir()
            .expect("temporary data directory");
        let (child, addr) = spawn(data_dir.path(), "127.0.0.1:0", args);
        LockdProcess {
            child,
            addr,
            args: args.to_vec(),
            data_dir,
        }
    }

    /// Client endpoints, one: `127.0.0.1:PORT`.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.addr.clone()]
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends `signal` (e.g. `Signal::STOP`) to the lockd process.
    pub fn signal(&self, signal: Signal) {
        self.child.signal(signal);
    }

    /// SIGSTOP, then waits until the kernel shows lockd stopped: kill(2) returns before the
    /// stop takes effect, and a request that arrives in between would still be answered.
    pub fn freeze(&self) {
        assert!(
            fencelock::process::freeze(self.child.pid()),
            "lockd was not seen stopped"
        );
    }

    /// SIGKILL: no shutdown code runs, only what lockd already made durable survives.
    pub fn kill9(&mut self) {
        self.child.kill();
    }

    /// SIGTERM, then waits for lockd to exit by itself.
    pub fn stop(&mut self) -> ExitStatus {
        self.child.signal(Signal::TERM);
        self.child.wait_exit(Duration::from_secs(10))
    }

    /// Starts lockd again on the same data directory and port (killing it first if it
    /// still runs).
    pub fn restart(&mut self) {
        self.child.kill();
        let (child, addr) = spawn(self.data_dir.path(), &self.addr, &self.args);
        assert_eq!(addr, self.addr, "lockd restarted on another address");
        self.child = child;
    }
}

/// `fencelock lockd --listen <listen> --data-dir <dir> <args>`, once it says where it
/// listens. Its log goes to the test's stderr when `FENCELOCK_TEST_LOG` is set.
fn spawn(data_dir: &std::path::Path, listen: &str, args: &[String]) -> (ChildGuard, String) {
    let dir = data_dir.to_str().expect("UTF-8 temp path");
    let mut cmd = Command::new(fencelock_bin());
    cmd.args(["lockd", "--listen", listen, "--data-dir", dir])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard::spawn("fencelock lockd", &mut cmd);
    let stdout = child.child_mut().stdout.take().expect("piped stdout");
    let stderr = child.child_mut().stderr.take().expect("piped stderr");
    // The last lines of the log explain a start-up failure; with FENCELOCK_TEST_LOG set
    // every line is passed on as it comes.
    let echo = std::env::var_os("FENCELOCK_TEST_LOG").is_some();
    let log_reader = std::thread::spawn(move || {
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("lockd: {line}");
            }
            if tail.len() == LOG_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        Vec::from(tail).join("\n")
    });
    let addr = match fencelock::process::read_ready_addr(stdout, READY_TIMEOUT) {
        Some(addr) => addr.to_string(),
        None => {
            // Without its address the server is of no use: stop it, then show why it failed.
            let status = child.child_mut().try_wait().ok().flatten();
            child.kill();
            let tail = log_reader.join().unwrap_or_default();
            panic!(
                "cannot start lockd (`{} lockd --listen {listen}`): no readiness line within \
                 {READY_TIMEOUT:?} (exit status {status:?}); its stderr ends with:\n{tail}",
                fencelock_bin().display()
            );
        }
    };
    (child, addr)
}
