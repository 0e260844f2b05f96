//! `fencelock bench commit`: how long one durable commit of the storage's engine takes, by
//! the number of keys it carries.
//!
//! The storage's committer thread commits everything that joined while the last commit synced
//! as one batch (group commit), so under load one sync carries many requests. This measures
//! that commit alone, in this process: the durable engine
//! ([`fencelock::storage::backend::Fjall`], synced with `SyncData`) on a directory of its
//! own, each commit holding `batch` new keys, each one a value plus its binding to one lock's
//! fence, what a batch of `distinct` writes leaves.
//!
//! Invariants: every commit writes keys never written before; the first commits of each size
//! (the warm-up) are not counted; every size runs on its own fresh engine, whose directory is
//! removed afterwards.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fencelock::FencingToken;
use fencelock::storage::backend::{Backend as _, BackendError, Entry, Fjall, Record};
use fencelock::storage::fence::Binding;
use hdrhistogram::Histogram;
use indexmap::IndexMap;

use super::chart::{Chart, Scale, Series};

/// The lock every key is bound to.
const FENCE: &str = "/fencelock-bench";

/// Commits of each size made before the clock starts.
const WARMUP_COMMITS: usize = 20;

/// Commits counted at least, however long they take.
const MIN_COMMITS: u64 = 10;

/// What to measure.
#[derive(Clone, Debug)]
pub struct Options {
    /// Keys per commit, one run each.
    pub batches: Vec<usize>,
    /// Measured time per run (at least [`MIN_COMMITS`] commits).
    pub duration: Duration,
    /// Bytes of each value.
    pub value_bytes: usize,
    /// Where the engines' directories are made; the system's temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// Set from elsewhere to end the benchmark early (at the next commit), its directory
    /// removed.
    pub stop: Arc<AtomicBool>,
}

/// Errors that stop the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The engine's directory could not be created.
    #[error("cannot create a directory for the engine")]
    Dir(#[source] std::io::Error),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] BackendError),
}

/// One batch size's figures.
#[derive(Clone, Debug)]
pub struct CommitStats {
    /// Keys per commit.
    pub batch: usize,
    /// Commits counted.
    pub commits: u64,
    /// Their wall time together.
    pub elapsed: Duration,
    /// Latency of one commit: median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

impl CommitStats {
    /// Keys made durable per second.
    pub fn keys_per_second(&self) -> f64 {
        (self.commits as f64 * self.batch as f64) / self.elapsed.as_secs_f64()
    }

    /// Mean time per commit.
    pub fn mean(&self) -> Duration {
        self.elapsed / u32::try_from(self.commits.max(1)).unwrap_or(u32::MAX)
    }
}

/// Measures every batch size in turn (blocking: run it off the async runtime), printing a
/// row per size to `out`; returns the figures.
pub fn run(options: &Options, out: &mut impl Write) -> Result<Vec<CommitStats>, BenchError> {
    let _ = writeln!(
        out,
        "{:?} per batch size; every key a new one, {} bytes of value plus its binding to one lock",
        options.duration, options.value_bytes
    );
    let _ = writeln!(
        out,
        "{:>6}  {:>8}  {:>10}  {:>10}  {:>10}  {:>10}  {:>11}",
        "batch", "commits", "mean", "p50", "p99", "per key", "keys/s"
    );
    let value = Bytes::from(vec![b'v'; options.value_bytes]);
    let mut all = Vec::new();
    for &batch in &options.batches {
        if options.stop.load(Ordering::Relaxed) {
            break;
        }
        let dir = match &options.dir {
            Some(dir) => tempfile::Builder::new()
                .prefix("fencelock-bench-commit-")
                .tempdir_in(dir),
            None => tempfile::Builder::new()
                .prefix("fencelock-bench-commit-")
                .tempdir(),
        }
        .map_err(BenchError::Dir)?;
        let engine = Fjall::open(dir.path())?;
        let stats = measure(&engine, batch, &value, options)?;
        let per_key = stats.mean() / u32::try_from(batch.max(1)).unwrap_or(u32::MAX);
        let _ = writeln!(
            out,
            "{:>6}  {:>8}  {:>10.1?}  {:>10.1?}  {:>10.1?}  {:>10.1?}  {:>11.0}",
            batch,
            stats.commits,
            stats.mean(),
            stats.p50,
            stats.p99,
            per_key,
            stats.keys_per_second()
        );
        all.push(stats);
        // The engine closes before its directory goes.
        drop(engine);
        drop(dir);
    }
    Ok(all)
}

fn measure(
    engine: &Fjall,
    batch: usize,
    value: &Bytes,
    options: &Options,
) -> Result<CommitStats, BenchError> {
    let stopped = || options.stop.load(Ordering::Relaxed);
    let mut next_key = 0u64;
    let mut records = IndexMap::with_capacity(batch);
    let no_fences = IndexMap::new();
    let mut commit = |records: &mut IndexMap<String, Record>| -> Result<Duration, BenchError> {
        records.clear();
        for _ in 0..batch {
            let record = Record {
                binding: Some(Binding::Lock(FENCE.to_owned())),
                value: Some(Entry {
                    value: value.clone(),
                    token: FencingToken::new(1),
                }),
            };
            records.insert(format!("c{next_key}"), record);
            next_key += 1;
        }
        let started = Instant::now();
        engine.commit(records, &no_fences)?;
        Ok(started.elapsed())
    };
    for _ in 0..WARMUP_COMMITS {
        commit(&mut records)?;
    }
    // The bounds are constants that hdrhistogram accepts.
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
    let mut commits = 0;
    let mut elapsed = Duration::ZERO;
    let window = Instant::now();
    while !stopped() && (commits < MIN_COMMITS || window.elapsed() < options.duration) {
        let took = commit(&mut records)?;
        histogram.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1));
        elapsed += took;
        commits += 1;
    }
    let at = |q| Duration::from_nanos(histogram.value_at_quantile(q));
    Ok(CommitStats {
        batch,
        commits,
        elapsed,
        p50: at(0.5),
        p99: at(0.99),
    })
}

/// Commit latency (median and 99th percentile) and time per key against keys per commit.
pub fn chart(all: &[CommitStats]) -> Chart {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let curve = |label: &str, y: &dyn Fn(&CommitStats) -> f64| Series {
        label: label.into(),
        points: all.iter().map(|s| (s.batch as f64, y(s))).collect(),
    };
    Chart {
        title: "Durable commit latency vs keys per commit".into(),
        x_label: "keys per commit (the batch)".into(),
        y_label: "milliseconds".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        series: vec![
            curve("p50 per commit", &|s| ms(s.p50)),
            curve("p99 per commit", &|s| ms(s.p99)),
            curve("mean per key", &|s| ms(s.mean()) / s.batch.max(1) as f64),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_is_measured_on_a_fresh_engine_and_its_directory_removed() {
        let parent = tempfile::tempdir().unwrap();
        let options = Options {
            batches: vec![1, 64],
            duration: Duration::from_millis(50),
            value_bytes: 100,
            dir: Some(parent.path().to_owned()),
            stop: Arc::default(),
        };
        let mut out = Vec::new();
        let all = run(&options, &mut out).unwrap();
        assert_eq!(all.iter().map(|s| s.batch).collect::<Vec<_>>(), [1, 64]);
        for stats in &all {
            assert!(stats.commits >= MIN_COMMITS, "{stats:?}");
            assert!(
                stats.p50 <= stats.p99 && stats.p99 > Duration::ZERO,
                "{stats:?}"
            );
            assert!(stats.keys_per_second() > 0.0);
        }
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 2 + 2, "{text}");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
        let chart = chart(&all);
        assert_eq!(chart.series.len(), 3);
        assert!(chart.series.iter().all(|s| s.points.len() == 2));
    }
}
