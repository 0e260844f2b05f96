//! `fencelock lockd`: the embedded lock service on a port of its own until SIGINT/SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use fencelock::lockd;
use tracing::info;

use super::{announce, duration, exit, listen, shutdown_signal};

#[derive(Args)]
pub struct LockdArgs {
    /// Address to listen on; port 0 picks a free port. The address is printed on stdout as
    /// `listening on http://IP:PORT` once lockd is ready.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:2379")]
    listen: String,
    /// Directory for the revision high-water mark, created when missing.
    #[arg(long, value_name = "DIR", default_value = "fencelock-lockd.data")]
    data_dir: PathBuf,
    /// Keep nothing on disk: revisions start again at 1 with every start, so tokens from an
    /// earlier run may be repeated.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// Lease TTLs below this are raised to it. Whole seconds: 2s, 1m or seconds.
    // The default is `lockd::DEFAULT_MIN_TTL`; a test below keeps the two equal.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = duration::parse_ttl)]
    min_ttl: Duration,
    /// Events kept for watches and reads of past revisions (and at most 64 MiB of keys and
    /// values); older ones are compacted.
    #[arg(long, value_name = "EVENTS", default_value_t = lockd::DEFAULT_HISTORY,
          value_parser = parse_history)]
    history: usize,
    /// Largest Put, DeleteRange or Txn accepted, in bytes (etcd's default: 1.5 MiB); larger
    /// ones get etcd's "request is too large".
    #[arg(long, value_name = "BYTES", default_value_t = lockd::DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Bound on the bytes of live keys and values; a write past it gets etcd's "database
    /// space exceeded", deletes still work.
    #[arg(long, value_name = "BYTES", default_value_t = lockd::DEFAULT_QUOTA_BACKEND_BYTES)]
    quota_backend_bytes: usize,
    /// Lock-delay: the keys of a lease that ended without being deleted (it expired or was
    /// revoked) stay this much longer, so a crashed or frozen holder's lock passes to the next
    /// waiter no sooner than this after its lease ended. Released locks pass at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = duration::parse)]
    lock_delay: Duration,
}

fn parse_history(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(args: LockdArgs) -> anyhow::Result<u8> {
    let config = lockd::Config {
        data_dir: (!args.in_memory).then(|| args.data_dir.clone()),
        min_ttl: args.min_ttl,
        history: args.history,
        max_request_bytes: args.max_request_bytes,
        quota_backend_bytes: args.quota_backend_bytes,
        lock_delay: args.lock_delay,
    };
    let (listener, addr) = listen(&args.listen).await?;
    let server = lockd::Server::open(&config).context("cannot start lockd")?;
    let data = match &config.data_dir {
        Some(dir) => dir.display().to_string(),
        None => "none (in memory)".into(),
    };
    info!(%addr, data_dir = %data, revision = server.revision(),
          min_ttl = args.min_ttl.as_secs(), "lockd ready");
    announce(addr)?;
    server
        .serve(listener, shutdown_signal())
        .await
        .context("lockd failed")?;
    Ok(exit::SUCCESS)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LockdArgs,
    }

    #[test]
    fn the_default_min_ttl_is_the_library_default() {
        let parsed = Wrapper::try_parse_from(["lockd"]).expect("defaults parse");
        assert_eq!(parsed.args.min_ttl, lockd::DEFAULT_MIN_TTL);
    }
}
