//! Child processes that end with the process that started them, typed signals to them, a
//! guard that kills and reaps a child on drop, and the one reader of a server's readiness line.

use std::io::{self, BufRead as _, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process, set_parent_process_death_signal};

/// The line a `fencelock` server prints on stdout once it is ready, followed by its address
/// (`listening on http://127.0.0.1:PORT`). Tools that start a server on port 0 read it to
/// learn the port; it is written and read only through this constant.
pub const READY_PREFIX: &str = "listening on http://";

/// [`READY_PREFIX`] for a server whose port speaks TLS (`listening on https://IP:PORT`);
/// [`parse_ready_line`] reads both.
pub const READY_PREFIX_TLS: &str = "listening on https://";

/// Makes `command`'s child receive SIGKILL when the thread that spawns it ends, so that a
/// parent that dies without cleaning up (SIGKILL, a panic that aborts) leaves no child
/// running. Spawn from a thread that lives as long as the child: a runtime's worker or the
/// main thread. For a tokio command, pass `command.as_std_mut()`.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: the hook runs between fork and exec and makes one system call, prctl(2), which
    // is async-signal-safe and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            set_parent_process_death_signal(Some(Signal::KILL)).map_err(std::io::Error::from)
        })
    }
}

/// Sends `signal` to process `pid`; false when no such process could be signalled.
///
/// Call it only with the PID of a child the caller has not reaped yet: until it is reaped,
/// the kernel cannot give that PID to another process.
pub fn send_signal(pid: u32, signal: Signal) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    kill_process(pid, signal).is_ok()
}

/// How long [`freeze`] waits for the kernel to show the process stopped.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// SIGSTOP, then waits until the kernel shows process `pid` stopped (state `T` in
/// `/proc/PID/stat`): kill(2) returns before the stop takes effect, and a request that
/// arrives in between would still be answered. False when it could not be signalled or was
/// not seen stopped within a few seconds. The same rule about `pid` as [`send_signal`].
pub fn freeze(pid: u32) -> bool {
    if !send_signal(pid, Signal::STOP) {
        return false;
    }
    let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
    loop {
        match state(pid) {
            Some('T') => return true,
            // Gone, or a zombie: it will not answer anything any more either.
            None | Some('Z') => return false,
            Some(_) if std::time::Instant::now() >= deadline => return false,
            // Stopping takes the kernel microseconds; a short pause keeps this from spinning.
            Some(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    }
}

/// The fields of `/proc/PID/stat` that follow the command name (field 2, in parentheses, may
/// hold spaces): the state (field 3) first, then the parent's PID (field 4), and so on; `None`
/// when it cannot be read. `pid` may be `self`.
pub fn stat_fields(pid: impl std::fmt::Display) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = text.rsplit_once(')')?.1;
    Some(after_name.split_whitespace().map(str::to_owned).collect())
}

/// Process `pid`'s state letter (`R`, `S`, `T`, `Z`...); `None` once it is gone.
fn state(pid: u32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// Signals the process group `pgid` (a group leader's PID); false when nothing was signalled.
fn send_group_signal(pgid: u32, signal: Signal) -> bool {
    let Some(pgid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) else {
        return false;
    };
    rustix::process::kill_process_group(pgid, signal).is_ok()
}

/// The PIDs of the processes whose parent is `pid`, from `/proc`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let child: u32 = entry.file_name().to_str()?.parse().ok()?;
            let parent: u32 = stat_fields(child)?.get(1)?.parse().ok()?;
            (parent == pid).then_some(child)
        })
        .collect()
}

/// A synchronous child process that is killed and reaped when dropped, also when the owner
/// panics; for tests and tools that do not run inside a runtime.
///
/// Invariants: the PID is signalled only while the child is held unreaped, so it cannot
/// name another process; a child started with [`ChildGuard::spawn_group`] leads its own
/// process group, and the whole group is killed with it.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    group: bool,
}

impl ChildGuard {
    /// Spawns `command`, naming it `name` in messages.
    pub fn spawn(name: impl Into<String>, command: &mut Command) -> io::Result<Self> {
        Ok(Self {
            child: Some(command.spawn()?),
            name: name.into(),
            group: false,
        })
    }

    /// Spawns `command` as the leader of a new process group, so that killing it also kills
    /// the programs it starts (e.g. the command `etcdctl lock NAME CMD` runs).
    pub fn spawn_group(name: impl Into<String>, command: &mut Command) -> io::Result<Self> {
        let mut guard = Self::spawn(name, command.process_group(0))?;
        guard.group = true;
        Ok(guard)
    }

    /// The PID, until the child is reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The child, to take its pipes; `None` once it is reaped.
    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    /// Sends `signal` to the child; false when it is reaped or could not be signalled.
    pub fn signal(&self, signal: Signal) -> bool {
        self.pid().is_some_and(|pid| send_signal(pid, signal))
    }

    /// Kills the child (and its group, if it leads one) with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.group {
                // The group's ID is the leader's PID, which stays ours until it is reaped.
                send_group_signal(child.id(), Signal::KILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the child and every process it started, including those that left its process
    /// group (PostgreSQL's backends each lead their own session), with SIGKILL, and reaps the
    /// child; returns once all of them have ended (within a few seconds). The child is frozen
    /// first, so it forks nothing more and reaps nothing: a process it started stays a zombie
    /// after it ends, so none of the PIDs signalled can have been given to another process.
    pub fn kill_with_children(&mut self) {
        if let Some(pid) = self.pid()
            && freeze(pid)
        {
            let children = children_of(pid);
            for &child in &children {
                send_signal(child, Signal::KILL);
            }
            // Dead means a zombie: its memory and files are released, so nothing it held
            // (a shared memory segment, a port) is still in use when the child goes.
            let deadline = Instant::now() + FREEZE_TIMEOUT;
            while children
                .iter()
                .any(|&child| !matches!(state(child), None | Some('Z')))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.kill();
    }

    /// Waits up to `timeout` for the child to exit by itself and reaps it; `None` if it is
    /// still running then (or was already reaped). Programs a group leader started are killed
    /// once it exits, since they may outlive it.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                if self.group {
                    // Reaped just now; no other process group can have taken the ID while
                    // members of this one still run, and none is signalled if none run.
                    send_group_signal(child.id(), Signal::KILL);
                }
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // A stopped child acts on SIGKILL too, but continuing it first lets it be reaped
        // promptly on every kernel.
        self.signal(Signal::CONT);
        self.kill();
    }
}

/// Reads a server's stdout until its [`READY_PREFIX`] line and returns the address on it;
/// `None` if the stream ends, or no such line comes within `timeout`. The stream is read on a
/// thread that keeps draining it afterwards, so the server never blocks on a full pipe and a
/// server that never gets ready cannot hang the caller.
pub fn read_ready_addr(
    stdout: impl io::Read + Send + 'static,
    timeout: Duration,
) -> Option<SocketAddr> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = parse_ready_line(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    rx.recv_timeout(timeout).ok()
}

/// The address on a [`READY_PREFIX`] or [`READY_PREFIX_TLS`] line, `None` for any other line.
pub fn parse_ready_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(READY_PREFIX)
        .or_else(|| line.strip_prefix(READY_PREFIX_TLS))?
        .trim()
        .parse()
        .ok()
}
