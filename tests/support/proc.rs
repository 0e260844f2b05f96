//! Child processes that die with the test, free loopback ports, and waits on readiness.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub use fencelock::process::Signal;

/// The library's [`fencelock::process::ChildGuard`] with the panicking accessors tests want:
/// killed (with its process group, if it leads one) and reaped when dropped, also when a
/// test panics.
pub struct ChildGuard(fencelock::process::ChildGuard);

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in messages.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Self {
        let name = name.into();
        match fencelock::process::ChildGuard::spawn(name.clone(), cmd) {
            Ok(guard) => Self(guard),
            Err(e) => panic!("cannot start {name}: {e}"),
        }
    }

    /// Spawns `cmd` as the leader of a new process group, so that killing it also kills the
    /// programs it starts (e.g. the command `etcdctl lock NAME CMD` runs).
    pub fn spawn_group(name: impl Into<String>, cmd: &mut Command) -> Self {
        let name = name.into();
        match fencelock::process::ChildGuard::spawn_group(name.clone(), cmd) {
            Ok(guard) => Self(guard),
            Err(e) => panic!("cannot start {name}: {e}"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.0.pid().expect("child is running")
    }

    pub fn name(&self) -> &str {
        self.0.name()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.0.child_mut().expect("child is running")
    }

    /// Sends `signal` (e.g. `Signal::STOP`) to the child; panics if it cannot.
    pub fn signal(&self, signal: Signal) {
        assert!(
            self.0.signal(signal),
            "cannot send {signal:?} to {}",
            self.name()
        );
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Waits for the child to exit by itself, up to `timeout`; panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        match self.0.wait_exit(timeout) {
            Some(status) => status,
            None => panic!("{} did not exit within {timeout:?}", self.name()),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.0.is_running()
    }
}

/// A loopback port that was free a moment ago. Servers of our own are better started on
/// port 0 and asked for their address; this is for programs (etcd) that need a port upfront.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True once a TCP connect to `addr` succeeds.
pub fn accepts_connections(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Path of the `fencelock` binary that cargo built for this test run.
pub fn fencelock_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_fencelock"))
}

/// Runs `cmd` (named `name` in messages), which must exit within `within` by itself, and
/// returns its exit status and its stderr. A piped stdin is held open until it exits.
pub fn exit_and_stderr(
    name: impl Into<String>,
    cmd: &mut Command,
    within: Duration,
) -> (Option<i32>, String) {
    use std::io::Read as _;
    cmd.stderr(std::process::Stdio::piped());
    let mut child = ChildGuard::spawn(name, cmd);
    let _stdin = child.child_mut().stdin.take();
    let mut stderr = String::new();
    child
        .child_mut()
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut stderr)
        .expect("readable stderr");
    let status = child.wait_exit(within);
    (status.code(), stderr)
}

/// The stdout of a finished `fencelock` run, printed, after asserting that it succeeded (its
/// stderr is the failure message).
pub fn stdout_of_success(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{stdout}");
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `stderr` is one `fencelock: ...` line that mentions `mentions`, and no panic.
pub fn assert_one_line(stderr: &str, mentions: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(lines[0].starts_with("fencelock: "), "{stderr:?}");
    assert!(
        lines[0].contains(mentions),
        "{stderr:?} mentions {mentions:?}"
    );
    assert!(!stderr.contains("panicked"), "{stderr:?}");
}
