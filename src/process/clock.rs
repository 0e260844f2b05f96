//! A process whose clocks run at another rate: libfaketime, preloaded.
//!
//! libfaketime replaces the C library's clock functions (`clock_gettime`, `gettimeofday`,
//! `time`), so everything in the process that reads time through them, the standard
//! library's `Instant` and `SystemTime` and so tokio's timers, sees the skewed clock. Code
//! that reads the kernel's clock without the C library (rustix's `clock_gettime`, which the
//! checker's history stamps use) still sees the true one.

use std::path::PathBuf;
use std::process::Command;

/// Where Debian and a source install put the multithreaded library.
const LIBRARY_DIRS: &[&str] = &[
    "/usr/lib/{triplet}/faketime",
    "/usr/lib/faketime",
    "/usr/local/lib/faketime",
];

/// The multithreaded variant: tokio reads the clock from several threads.
const LIBRARY: &str = "libfaketimeMT.so.1";

/// libfaketime's multithreaded library: `$FENCELOCK_FAKETIME_LIB`, else where Debian's
/// `libfaketime` package installs it. The error says what to install.
pub fn faketime_library() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("FENCELOCK_FAKETIME_LIB") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "FENCELOCK_FAKETIME_LIB names {}, which is not a file",
                path.display()
            ))
        };
    }
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    LIBRARY_DIRS
        .iter()
        .map(|dir| PathBuf::from(dir.replace("{triplet}", &triplet)).join(LIBRARY))
        .find(|path| path.is_file())
        .ok_or_else(|| {
            format!(
                "libfaketime is not installed (Debian's libfaketime package, or \
                 FENCELOCK_FAKETIME_LIB=/path/to/{LIBRARY})"
            )
        })
}

/// Makes `command` run with its clocks at `rate` times real time (0.25: four real seconds
/// pass for each one it sees), from the moment it starts.
pub fn skew_clock(command: &mut Command, library: &std::path::Path, rate: f64) {
    let preload = match std::env::var_os("LD_PRELOAD") {
        Some(other) if !other.is_empty() => {
            let mut both = library.as_os_str().to_owned();
            both.push(":");
            both.push(other);
            both
        }
        _ => library.as_os_str().to_owned(),
    };
    command
        .env("LD_PRELOAD", preload)
        // No offset, only the rate; a dot whatever the locale, which libfaketime reads
        // with strtod in the C locale.
        .env("FAKETIME", format!("+0 x{rate}"))
        .env("LC_NUMERIC", "C")
        // The rate applies to the monotonic clock too: timers and timeouts run skewed.
        .env("DONT_FAKE_MONOTONIC", "0")
        .env_remove("FAKETIME_TIMESTAMP_FILE");
}
