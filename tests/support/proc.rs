//! Child processes that die with the test, free loopback ports, and waits on readiness.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A spawned child process that is killed and reaped when dropped, also when a test panics.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    /// Set when the child leads a process group of its own, which is killed with it.
    group: bool,
}

impl ChildGuard {
    /// Spawns `cmd`, naming it `name` in messages.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command) -> Self {
        let name = name.into();
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            child: Some(child),
            name,
            group: false,
        }
    }

    /// Spawns `cmd` as the leader of a new process group, so that killing it also kills the
    /// programs it starts (e.g. the command `etcdctl lock NAME CMD` runs).
    pub fn spawn_group(name: impl Into<String>, cmd: &mut Command) -> Self {
        use std::os::unix::process::CommandExt;
        let mut guard = Self::spawn(name, cmd.process_group(0));
        guard.group = true;
        guard
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("child is running").id()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child is running")
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the child.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a PID we spawned and have not yet reaped.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.name);
    }

    /// SIGKILLs the child and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.group {
                // The group's ID is the leader's PID, which stays ours until it is reaped
                // below. SAFETY: kill(2) on a process group this guard created.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the child to exit by itself, up to `timeout`; panics if it does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                if self.group {
                    // Programs the leader started may outlive it; the group keeps its ID
                    // while any of them runs. SAFETY: kill(2) on a group this guard created.
                    unsafe { libc::kill(-(self.pid() as libc::pid_t), libc::SIGKILL) };
                }
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // A stopped process must be continued before it can act on SIGKILL's reap.
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
        }
        self.kill();
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
