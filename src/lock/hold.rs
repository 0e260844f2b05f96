//! Holding a lock from a process of its own: the body of `fencelock lock NAME`.
//!
//! Like `etcdctl lock`, but it reports in JSON lines on its output (one per event:
//! `acquired`, then `released` or `lost`) so scripts and tests can follow it, and it reports
//! the fencing token. Invariant: `acquired` is printed only after the lock is held, and
//! nothing is printed after `lost` or `released`.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use super::{Client, LockGuard, LossReason, Result, Session};

/// What to lock and where.
#[derive(Clone, Debug)]
pub struct HoldOptions {
    pub endpoints: Vec<String>,
    pub name: String,
    pub ttl: Duration,
}

/// How holding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Told to stop while holding: the lock was released and the session closed.
    Released,
    /// Told to stop before the lock was acquired.
    Stopped,
    /// The lock was lost while held.
    Lost(LossReason),
}

/// Acquires `options.name`, prints `acquired`, and holds the lock until `stop` resolves
/// (then unlocks) or the lock is lost.
pub async fn hold(
    options: &HoldOptions,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> Result<HoldOutcome> {
    let client = Client::connect(&options.endpoints).await?;
    let session = client.session(options.ttl).await?;
    tokio::pin!(stop);
    let guard = tokio::select! {
        guard = session.lock(&options.name) => guard?,
        () = &mut stop => {
            session.close().await?;
            return Ok(HoldOutcome::Stopped);
        }
    };
    emit(out, "acquired", &session, &guard, None);
    tokio::select! {
        reason = guard.lost() => {
            emit(out, "lost", &session, &guard, Some(reason));
            Ok(HoldOutcome::Lost(reason))
        }
        () = &mut stop => {
            let (key, token) = (guard.key().to_string(), guard.token());
            guard.unlock().await?;
            session.close().await?;
            line(out, json!({"event": "released", "key": key, "token": token}));
            Ok(HoldOutcome::Released)
        }
    }
}

fn emit(
    out: &mut impl Write,
    event: &str,
    session: &Session,
    guard: &LockGuard,
    reason: Option<LossReason>,
) {
    let mut value = json!({
        "event": event,
        "key": guard.key(),
        "token": guard.token(),
        "lease": session.lease().to_string(),
        "ttl": session.ttl().as_secs(),
    });
    if let Some(reason) = reason {
        value["reason"] = json!(reason.to_string());
    }
    line(out, value);
}

/// One JSON line, flushed at once: a reader may act on it while this process waits.
fn line(out: &mut impl Write, value: serde_json::Value) {
    // A closed output (reader gone) must not stop the holder from releasing; ignore it.
    let _ = writeln!(out, "{value}").and_then(|()| out.flush());
}
