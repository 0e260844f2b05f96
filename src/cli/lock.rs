//! `fencelock lock NAME`: hold a lock from a process of its own.
//!
//! Like `etcdctl lock`, but it reports in JSON lines on its output (one per event:
//! `acquired`, then `released` or `lost`) so scripts and tests can follow it, and it reports
//! the fencing token. Invariant: `acquired` is printed only after the lock is held, and
//! nothing is printed after `lost` or `released`.

use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fencelock::lock::{Client, ConnectOptions, LockGuard, LockOptions, LossReason, Session};
use serde_json::json;

use super::{Endpoints, duration, exit, stop_requested};

#[derive(Args)]
pub struct LockArgs {
    /// The lock name (a key prefix, e.g. /orders).
    name: String,
    #[command(flatten)]
    endpoints: Endpoints,
    /// Session lease TTL (etcd may raise it to its minimum). Whole seconds: 2s, 1m or
    /// seconds.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse_ttl)]
    ttl: Duration,
    /// Lock-delay: when the holder ahead lost its lease rather than releasing, acquire no
    /// sooner than this after its key went (for resources that cannot check tokens).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration::parse)]
    lock_delay: Duration,
}

pub async fn run(args: LockArgs) -> anyhow::Result<u8> {
    let mut out = std::io::stdout();
    let options = args.endpoints.tls.connect_options()?;
    let outcome = hold(&args, &options, &mut out, stop_requested())
        .await
        .with_context(|| format!("cannot hold lock {}", args.name))?;
    Ok(match outcome {
        Outcome::Released | Outcome::Stopped => exit::SUCCESS,
        Outcome::Lost(reason) => {
            eprintln!("fencelock: lock {} lost: {reason}", args.name);
            exit::STALE
        }
    })
}

/// How holding ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Told to stop while holding: the lock was released and the session closed.
    Released,
    /// Told to stop before the lock was acquired.
    Stopped,
    /// The lock was lost while held.
    Lost(LossReason),
}

/// Acquires `args.name`, prints `acquired`, and holds the lock until `stop` resolves (then
/// unlocks) or the lock is lost.
async fn hold(
    args: &LockArgs,
    options: &ConnectOptions,
    out: &mut impl Write,
    stop: impl Future<Output = ()>,
) -> fencelock::lock::Result<Outcome> {
    let client = Client::connect_with(&args.endpoints.endpoints, options).await?;
    let session = client.session(args.ttl).await?;
    let lock_options = LockOptions {
        lock_delay: args.lock_delay,
        ..LockOptions::default()
    };
    tokio::pin!(stop);
    let guard = tokio::select! {
        guard = session.lock_with(&args.name, lock_options) => guard?,
        () = &mut stop => {
            session.close().await?;
            return Ok(Outcome::Stopped);
        }
    };
    emit(out, "acquired", &session, &guard, None);
    tokio::select! {
        reason = guard.lost() => {
            emit(out, "lost", &session, &guard, Some(reason));
            Ok(Outcome::Lost(reason))
        }
        () = &mut stop => {
            let (key, token) = (guard.key().to_string(), guard.token());
            guard.unlock().await?;
            session.close().await?;
            line(out, json!({"event": "released", "key": key, "token": token}));
            Ok(Outcome::Released)
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
