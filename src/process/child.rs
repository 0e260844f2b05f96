//! Child processes that end with the process that started them, and typed signals to them.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

pub use rustix::process::Signal;
use rustix::process::{Pid, kill_process, set_parent_process_death_signal};

/// The line a `fencelock` server prints on stdout once it is ready, followed by its address
/// (`listening on http://127.0.0.1:PORT`). Tools that start a server on port 0 read it to
/// learn the port; it is written and read only through this constant.
pub const READY_PREFIX: &str = "listening on http://";

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
