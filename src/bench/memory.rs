//! `fencelock bench memory`: lockd's resident memory per held lock, at a number of sessions
//! each holding a lock of its own.
//!
//! For each count a fresh in-memory lockd process is started; its RSS is read from
//! `/proc/PID/status` (VmRSS) before and after the benchmark grants that many leases and puts
//! one lock key on each (`/fencelock-bench-memory/<i>/<lease hex>`, the key a held lock has),
//! and the difference is divided by the count. The leases' TTL outlives the run, so no
//! keepalive is needed and nothing expires while memory is read.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fencelock::etcd::etcdserverpb as pb;
use fencelock::lock::Client;
use fencelock::process::{ServerProcess, SpawnError};

/// Requests in flight at once while filling lockd.
const IN_FLIGHT: usize = 64;

/// Long enough to outlive any run.
const LEASE_TTL_S: i64 = 3_600;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `fencelock` binary that runs lockd.
    pub binary: PathBuf,
    /// Held locks per run, e.g. `[10_000, 100_000]`.
    pub sessions: Vec<usize>,
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// lockd could not be started.
    #[error(transparent)]
    Lockd(#[from] SpawnError),
    /// A request to lockd failed.
    #[error("lockd refused a request: {0}")]
    Request(String),
    /// `/proc` did not tell the resident size.
    #[error("cannot read lockd's resident memory from /proc")]
    NoRss,
}

/// One run's figures.
#[derive(Clone, Debug)]
pub struct MemoryStats {
    /// Sessions, each holding one lock.
    pub sessions: usize,
    /// Resident bytes before and after.
    pub rss_before: u64,
    /// See `rss_before`.
    pub rss_after: u64,
    /// How long filling took.
    pub fill: Duration,
}

impl MemoryStats {
    /// Resident bytes per held lock (its lease and its key).
    pub fn per_lock(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.sessions as f64
    }
}

/// Runs every count, printing a row each, and returns the figures.
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Vec<MemoryStats>, MemoryError> {
    let _ = writeln!(
        out,
        "{:>9}  {:>11}  {:>11}  {:>13}  {:>8}",
        "sessions", "RSS before", "RSS after", "bytes/lock", "fill"
    );
    let mut all = Vec::new();
    for &sessions in &options.sessions {
        let stats = measure(&options.binary, sessions).await?;
        let _ = writeln!(
            out,
            "{:>9}  {:>8.1} MiB  {:>8.1} MiB  {:>13.0}  {:>7.1?}",
            stats.sessions,
            mib(stats.rss_before),
            mib(stats.rss_after),
            stats.per_lock(),
            stats.fill,
        );
        all.push(stats);
    }
    Ok(all)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn measure(binary: &Path, sessions: usize) -> Result<MemoryStats, MemoryError> {
    let mut lockd = ServerProcess::spawn(binary, "lockd", ["--in-memory"]).await?;
    let pid = lockd.pid().ok_or(MemoryError::NoRss)?;
    let client = Client::connect([lockd.addr().to_string()])
        .await
        .map_err(|e| MemoryError::Request(e.to_string()))?;
    let rss_before = rss(pid).ok_or(MemoryError::NoRss)?;
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let fillers: Vec<_> = (0..IN_FLIGHT.min(sessions))
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            tokio::spawn(async move { fill(&client, &next, sessions).await })
        })
        .collect();
    for filler in fillers {
        filler
            .await
            .map_err(|e| MemoryError::Request(e.to_string()))??;
    }
    let fill_time = started.elapsed();
    let rss_after = rss(pid).ok_or(MemoryError::NoRss)?;
    lockd.kill().await;
    Ok(MemoryStats {
        sessions,
        rss_before,
        rss_after,
        fill: fill_time,
    })
}

/// Grants leases and puts a lock key on each until `sessions` are taken.
async fn fill(client: &Client, next: &AtomicUsize, sessions: usize) -> Result<(), MemoryError> {
    let failed = |e: tonic::Status| MemoryError::Request(e.message().to_owned());
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= sessions {
            return Ok(());
        }
        let grant = pb::LeaseGrantRequest {
            ttl: LEASE_TTL_S,
            id: 0,
        };
        let lease = client
            .lease()
            .lease_grant(grant)
            .await
            .map_err(failed)?
            .into_inner()
            .id;
        let put = pb::PutRequest {
            key: format!("/fencelock-bench-memory/{i}/{lease:x}").into_bytes(),
            lease,
            ..Default::default()
        };
        client.kv().put(put).await.map_err(failed)?;
    }
}

/// VmRSS of process `pid`, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_resident_size() {
        assert!(rss(std::process::id()).is_some_and(|bytes| bytes > 0));
        let stats = MemoryStats {
            sessions: 4,
            rss_before: 1_000,
            rss_after: 3_000,
            fill: Duration::ZERO,
        };
        assert_eq!(stats.per_lock(), 500.0);
    }
}
