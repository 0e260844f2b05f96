//! The storage benchmark's baseline: an HTTP server that answers every request with the same
//! small body, run as its own process (`fencelock bench baseline`, hidden), and the handle
//! that starts it.
//!
//! It is the storage's own server stack (axum on hyper, HTTP/1.1, `TCP_NODELAY`) without
//! routes to handlers, a store or fences, so a storage figure over the baseline's is the
//! share of this machine's HTTP ceiling, loader included, that the storage keeps.
//!
//! With `--sync-dir` it is the *synced* baseline: each answer waits until a record of the
//! request is synced to a file in that directory, in groups ([`super::group_sync`]). That is
//! the ceiling of any server that answers only after a sync, as the durable storage does.
//!
//! Invariants: the baseline runs in a process of its own, as the storage does, so it never
//! shares the loader's runtime; the child is killed and reaped when its handle drops, and
//! dies with the thread that started it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use fencelock::process::{ChildGuard, die_with_parent, read_ready_addr};

use super::group_sync::GroupSync;

/// The body of every answer: about the size of the storage's answer to a write.
pub const BODY: &str = r#"{"key":"k0","token":1}"#;

/// The hidden subcommand that runs the baseline: `fencelock bench baseline`.
pub const SUBCOMMAND: [&str; 2] = ["bench", "baseline"];

/// How long the baseline may take to print its address.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the baseline could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The binary could not be started.
    #[error("cannot start the baseline server")]
    Spawn(#[source] std::io::Error),
    /// It did not print its address in time.
    #[error("the baseline server did not report its address within {READY_TIMEOUT:?}")]
    NotReady,
}

/// Serves `listener` with the fixed answer until `shutdown` resolves; with `log`, each
/// answer only once its record in the log is synced (a 500 if that failed).
pub async fn serve(
    listener: TcpListener,
    log: Option<GroupSync>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let log = log.map(std::sync::Arc::new);
    let app = Router::new().fallback(move || {
        let log = log.clone();
        async move {
            let synced = match &log {
                Some(log) => log.append().await,
                None => true,
            };
            let status = match synced {
                true => StatusCode::OK,
                false => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (status, [("content-type", "application/json")], BODY)
        }
    });
    // As the storage does: each small answer goes out at once.
    let listener = listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY: {e}");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A running baseline server; killed and reaped when dropped.
pub struct BaselineProcess {
    child: ChildGuard,
    addr: SocketAddr,
}

impl BaselineProcess {
    /// Starts `binary bench baseline --listen 127.0.0.1:0` (with `--sync-dir` when given
    /// one: the synced baseline) and waits for its address.
    ///
    /// Call it from a runtime's worker thread, which lives as long as the child: the child
    /// dies with the thread that started it (see [`die_with_parent`]).
    pub async fn spawn(binary: &Path, sync_dir: Option<&Path>) -> Result<Self, BaselineError> {
        let mut command = Command::new(binary);
        command.args(SUBCOMMAND).args(["--listen", "127.0.0.1:0"]);
        if let Some(dir) = sync_dir {
            command.arg("--sync-dir").arg(dir);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let mut child =
            ChildGuard::spawn("baseline", &mut command).map_err(BaselineError::Spawn)?;
        let Some(stdout) = child.child_mut().and_then(|c| c.stdout.take()) else {
            unreachable!("the child runs and its stdout is piped above");
        };
        // The reader blocks on the pipe: on a blocking thread, not the runtime's.
        let addr = tokio::task::spawn_blocking(move || read_ready_addr(stdout, READY_TIMEOUT))
            .await
            .ok()
            .flatten()
            .ok_or(BaselineError::NotReady)?;
        Ok(Self { child, addr })
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PID, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.pid()
    }
}
