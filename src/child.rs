//! Child processes that end with the process that started them.

/// For `pre_exec`: asks the kernel to SIGKILL the child when the thread that spawned it ends,
/// so that a parent that dies without cleaning up (SIGKILL, a panic that aborts) leaves no
/// child running. Spawn from a thread that lives as long as the child: a runtime's worker or
/// the main thread.
///
/// Only async-signal-safe calls are made, as `pre_exec` requires.
pub(crate) fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl(2) with PR_SET_PDEATHSIG changes only the calling (child) process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
