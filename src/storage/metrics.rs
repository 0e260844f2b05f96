//! Counters and histograms of the storage server, exposed in Prometheus' text format.
//!
//! Every label set is closed (a handful of operations and outcomes), so each series is a
//! plain atomic allocated up front: recording is one relaxed `fetch_add` on the hot path, with
//! no registry lock and no label hashing. The text exposition is rendered on demand for
//! `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::limits::Refusal;

/// The operation a request asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Fence,
    Txn,
    /// A request that could not be decoded far enough to know its operation.
    Unknown,
}

impl Op {
    const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Fence, Op::Txn, Op::Unknown];

    fn label(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Fence => "fence",
            Op::Txn => "txn",
            Op::Unknown => "unknown",
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    NotFound,
    Stale,
    MissingToken,
    WrongFence,
    BadRequest,
    Failed,
    /// Refused by token verification (`--verify-tokens`).
    Unverified,
}

impl Outcome {
    const ALL: [Outcome; 8] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Stale,
        Outcome::MissingToken,
        Outcome::WrongFence,
        Outcome::BadRequest,
        Outcome::Failed,
        Outcome::Unverified,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Stale => "stale",
            Outcome::MissingToken => "missing_token",
            Outcome::WrongFence => "wrong_fence",
            Outcome::BadRequest => "bad_request",
            Outcome::Failed => "failed",
            Outcome::Unverified => "unverified",
        }
    }
}

/// The server's metrics; one instance shared by the handlers and the store's threads.
pub struct Metrics {
    requests: [[AtomicU64; Outcome::ALL.len()]; Op::ALL.len()],
    stale_rejections: AtomicU64,
    batch_size: Histogram,
    commit_latency: Histogram,
    /// Connections open now.
    pub(super) connections: AtomicU64,
    /// Bytes of request bodies being read or waiting for their commit now.
    pub(super) queued_bytes: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Default::default(),
            stale_rejections: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            queued_bytes: AtomicU64::new(0),
            refused: Default::default(),
            // Requests per durable commit: powers of two up to the largest batches seen.
            batch_size: Histogram::new(&[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096], 1.0),
            // Nanoseconds, shown in seconds: an fdatasync is ~0.1-1 ms, stalls reach 100 ms.
            commit_latency: Histogram::new(
                &[
                    50_000,
                    100_000,
                    250_000,
                    500_000,
                    1_000_000,
                    2_500_000,
                    5_000_000,
                    10_000_000,
                    25_000_000,
                    100_000_000,
                    1_000_000_000,
                ],
                1e9,
            ),
        }
    }
}

impl Metrics {
    pub fn request(&self, op: Op, outcome: Outcome) {
        self.requests[op as usize][outcome as usize].fetch_add(1, Relaxed);
        if outcome == Outcome::Stale {
            self.stale_rejections.fetch_add(1, Relaxed);
        }
    }

    /// Requests answered by `op` and `outcome` so far.
    pub fn requests(&self, op: Op, outcome: Outcome) -> u64 {
        self.requests[op as usize][outcome as usize].load(Relaxed)
    }

    /// One request or connection turned away by a bound.
    pub(super) fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Relaxed);
    }

    /// One durable commit of `requests` requests that took `elapsed`.
    pub fn commit(&self, requests: usize, elapsed: Duration) {
        self.batch_size.observe(requests as u64);
        self.commit_latency
            .observe(u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP fencelock_storage_requests_total Requests answered, by operation and outcome.\n\
             # TYPE fencelock_storage_requests_total counter\n",
        );
        for op in Op::ALL {
            for outcome in Outcome::ALL {
                let _ = writeln!(
                    out,
                    "fencelock_storage_requests_total{{op=\"{}\",outcome=\"{}\"}} {}",
                    op.label(),
                    outcome.label(),
                    self.requests(op, outcome)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP fencelock_storage_stale_rejections_total Requests rejected for a stale fencing token.\n\
             # TYPE fencelock_storage_stale_rejections_total counter\n\
             fencelock_storage_stale_rejections_total {}",
            self.stale_rejections.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP fencelock_storage_connections Connections open.\n\
             # TYPE fencelock_storage_connections gauge\n\
             fencelock_storage_connections {}\n\
             # HELP fencelock_storage_queued_body_bytes Bytes of request bodies being read or waiting for their commit.\n\
             # TYPE fencelock_storage_queued_body_bytes gauge\n\
             fencelock_storage_queued_body_bytes {}\n\
             # HELP fencelock_storage_busy_total Requests and connections answered 503 busy, by the bound they met.\n\
             # TYPE fencelock_storage_busy_total counter",
            self.connections.load(Relaxed),
            self.queued_bytes.load(Relaxed),
        );
        for why in Refusal::ALL {
            let _ = writeln!(
                out,
                "fencelock_storage_busy_total{{bound=\"{}\"}} {}",
                why.label(),
                self.refused[why as usize].load(Relaxed)
            );
        }
        self.batch_size.render(
            &mut out,
            "fencelock_storage_commit_batch_size",
            "Requests answered by one commit of the store.",
        );
        self.commit_latency.render(
            &mut out,
            "fencelock_storage_commit_seconds",
            "Time to apply and durably commit one batch.",
        );
        out
    }
}

/// A fixed-bucket histogram over integers, rendered divided by `divisor` (1e9 for ns → s).
struct Histogram {
    bounds: Vec<u64>,
    /// One count per bound, plus the `+Inf` bucket; not cumulative (summed when rendered).
    counts: Vec<AtomicU64>,
    sum: AtomicU64,
    divisor: f64,
}

impl Histogram {
    fn new(bounds: &[u64], divisor: f64) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            divisor,
        }
    }

    fn observe(&self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket].fetch_add(1, Relaxed);
        self.sum.fetch_add(value, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let le = *bound as f64 / self.divisor;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Relaxed);
        let sum = self.sum.load(Relaxed) as f64 / self.divisor;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {cumulative}\n{name}_sum {sum}\n{name}_count {cumulative}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lists_requests_stale_rejections_and_histograms() {
        let m = Metrics::default();
        m.request(Op::Write, Outcome::Ok);
        m.request(Op::Write, Outcome::Stale);
        m.commit(3, Duration::from_micros(300));
        let text = m.render();
        assert!(text.contains("fencelock_storage_requests_total{op=\"write\",outcome=\"ok\"} 1\n"));
        assert!(text.contains("fencelock_storage_stale_rejections_total 1\n"));
        assert!(text.contains("fencelock_storage_commit_batch_size_bucket{le=\"2\"} 0\n"));
        assert!(text.contains("fencelock_storage_commit_batch_size_bucket{le=\"4\"} 1\n"));
        assert!(text.contains("fencelock_storage_commit_batch_size_sum 3\n"));
        assert!(text.contains("fencelock_storage_commit_seconds_bucket{le=\"0.00025\"} 0\n"));
        assert!(text.contains("fencelock_storage_commit_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("fencelock_storage_commit_seconds_count 1\n"));
    }
}
