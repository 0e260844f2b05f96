//! Child processes that end with the process that started them.

use std::os::unix::process::CommandExt as _;
use std::process::Command;

/// Makes `command`'s child receive SIGKILL when the thread that spawns it ends, so that a
/// parent that dies without cleaning up (SIGKILL, a panic that aborts) leaves no child
/// running. Spawn from a thread that lives as long as the child: a runtime's worker or the
/// main thread. For a tokio command, pass `command.as_std_mut()`.
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    // SAFETY: the hook runs between fork and exec and makes one async-signal-safe call.
    unsafe { command.pre_exec(set_parent_death_signal) }
}

fn set_parent_death_signal() -> std::io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_PDEATHSIG changes only the calling (child) process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
