//! The exit statuses of every `fencelock` command, in one table, and the two errors that
//! choose a status other than [`FAILURE`].
//!
//! Invariant: a command chooses its status only through these constants; `main` is the one
//! place that turns an error into a status ([`for_error`]).

use std::fmt;

/// The command did what it was asked (for `client`: its write was accepted).
pub const SUCCESS: u8 = 0;
/// Anything else: an unreachable service, a setup error, an I/O error.
pub const FAILURE: u8 = 1;
/// A mistake on the command line. clap exits with 2 for what it detects itself; checks made
/// after parsing use the same status, so scripts need only one.
pub const USAGE: u8 = 2;
/// Fencing refused us: `client`'s write was rejected as stale, or `lock` lost its lock while
/// holding it.
pub const STALE: u8 = 3;
/// Fencing did not hold: `demo`'s stale write went through, or `check` found a safety
/// violation under a policy that claims safety.
pub const UNSAFE: u8 = 4;
/// Stopped by SIGINT or SIGTERM before the work was done (128 + SIGINT, the shell's usage).
pub const INTERRUPTED: u8 = 130;

/// The table above as the top-level `--help` shows it.
pub const TABLE: &str = "\
Exit status:
  0    success
  1    failure (unreachable service, setup error, anything else)
  2    usage error
  3    stale: the write was refused as stale, or the lock was lost while held
  4    unsafe: fencing did not hold (demo), or a safety violation was found (check)
  130  interrupted";

/// A mistake on the command line found after parsing; exits with [`USAGE`].
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error with this message, for `return Err(usage(...))` and `anyhow::ensure!`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// The command was stopped by a signal; exits with [`INTERRUPTED`].
#[derive(Debug)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// The status for a command that failed with `error`.
pub fn for_error(error: &anyhow::Error) -> u8 {
    if error.is::<UsageError>() {
        USAGE
    } else if error.is::<Interrupted>() {
        INTERRUPTED
    } else {
        FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_and_interruptions_have_their_own_status_and_the_rest_fail() {
        assert_eq!(for_error(&usage("--members must be at least 1")), USAGE);
        assert_eq!(for_error(&Interrupted.into()), INTERRUPTED);
        assert_eq!(for_error(&anyhow::anyhow!("connection refused")), FAILURE);
        // Context on top keeps the status: anyhow looks through it.
        let wrapped = anyhow::Result::<()>::Err(usage("bad"))
            .map_err(|e| e.context("while starting"))
            .unwrap_err();
        assert_eq!(for_error(&wrapped), USAGE);
    }

    #[test]
    fn the_help_table_lists_every_status() {
        for code in [SUCCESS, FAILURE, USAGE, STALE, UNSAFE, INTERRUPTED] {
            assert!(
                TABLE
                    .lines()
                    .any(|l| l.trim_start().starts_with(&code.to_string())),
                "{code} missing from the table"
            );
        }
    }
}
