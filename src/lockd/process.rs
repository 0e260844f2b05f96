//! A `fencelock lockd` child process on a free loopback port, for tools that want the lock
//! service in its own process (to freeze or kill it, or to measure it apart from the client).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a starting lockd may take to print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a lockd process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot start {binary} lockd: {source}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("{binary} lockd did not report its address within {READY_TIMEOUT:?}")]
    NotReady { binary: String },
}

/// A running lockd; killed (and reaped) when dropped.
pub struct LockdProcess {
    child: Child,
    endpoint: String,
}

impl LockdProcess {
    /// Starts `binary lockd --listen 127.0.0.1:0` with `extra` arguments (for example
    /// `--in-memory`, or `--data-dir DIR`) and waits until it listens.
    pub async fn spawn(binary: &Path, extra: &[&str]) -> Result<Self, SpawnError> {
        let name = binary.display().to_string();
        let mut command = Command::new(binary);
        command
            .args(["lockd", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // If this process dies without dropping the child, the kernel ends the child too.
        // SAFETY: the hook makes one async-signal-safe call (see `die_with_parent`).
        unsafe {
            command.pre_exec(crate::child::die_with_parent);
        }
        let mut child = command.spawn().map_err(|source| SpawnError::Spawn {
            binary: name.clone(),
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let announced = tokio::time::timeout(READY_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.to_string());
                }
            }
            None
        })
        .await;
        match announced {
            Ok(Some(endpoint)) => Ok(Self { child, endpoint }),
            _ => Err(SpawnError::NotReady { binary: name }),
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}
