//! A closed-loop HTTP/1.1 load generator, as wrk is: a fixed number of keep-alive
//! connections, each sending its next request as soon as the answer to the last has arrived.
//!
//! It writes each request with one `write` and reads answers with `httparse` (the parser
//! hyper uses), so a request costs the loader about what it costs wrk: one send, one receive
//! and a parse. A full HTTP client (hyper's connection task, reqwest's pool) would add a task
//! hop and a channel per request, on the same two cores the server needs.
//!
//! Invariants: every connection is warmed up before the clock starts, and all of them share
//! one measured window; only answers completed inside it are counted and timed; any answer
//! but a 2xx ends the run with an error, so a figure never counts refusals.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::Instant;

/// Requests each connection sends before the clock starts, so that connections are open,
/// the server's per-connection state exists and caches are warm.
const WARMUP_REQUESTS: u64 = 20;

/// The longest latency recorded exactly, in nanoseconds (60 s); longer ones saturate.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// Headers an answer may carry; the storage and the baseline send four or five.
const MAX_HEADERS: usize = 32;

/// Writes connection `connection`'s `seq`-th request (a whole HTTP/1.1 request) into `out`.
pub type RequestFn = dyn Fn(usize, u64, &mut Vec<u8>) + Send + Sync;

/// Why a load run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A connection could not be opened.
    #[error("cannot connect to {addr}")]
    Connect {
        /// The server's address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("connection failed")]
    Io(#[source] std::io::Error),
    /// The server closed a connection while an answer was awaited.
    #[error("the server closed a connection")]
    Closed,
    /// An answer that is not HTTP/1.1 as this loader reads it.
    #[error("unreadable answer: {0}")]
    Malformed(String),
    /// An answer other than 2xx: the benchmark's requests are wrong, or the server failed.
    #[error("answered {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The body, as text.
        body: String,
    },
    /// A connection's task panicked or was cancelled.
    #[error("a connection's task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// What one run measured.
pub struct LoadStats {
    /// Answers completed inside the window.
    pub requests: u64,
    /// The window's length.
    pub elapsed: Duration,
    /// Latency of each counted request, in nanoseconds.
    pub latency: Histogram<u64>,
}

impl LoadStats {
    /// Answers per second.
    pub fn requests_per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// The latency at `quantile` (0.5, 0.99, ...).
    pub fn latency_at(&self, quantile: f64) -> Duration {
        Duration::from_nanos(self.latency.value_at_quantile(quantile))
    }
}

/// Opens `connections` connections to `addr`, warms them up, and keeps each one busy with
/// `request`'s requests for `duration`.
pub async fn run(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    request: Arc<RequestFn>,
) -> Result<LoadStats, LoadError> {
    let barrier = Arc::new(Barrier::new(connections));
    let deadline = Arc::new(OnceLock::new());
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..connections {
        let connection = Connection {
            addr,
            index,
            request: Arc::clone(&request),
            barrier: Arc::clone(&barrier),
            deadline: Arc::clone(&deadline),
            duration,
        };
        tasks.spawn(connection.run());
    }
    let mut requests = 0;
    let mut latency = new_histogram();
    // The first failure ends the run; dropping the set aborts the other connections.
    while let Some(joined) = tasks.join_next().await {
        let (count, histogram) = joined??;
        requests += count;
        // Both come from `new_histogram`, with the same bounds, which is all `add` can
        // refuse (a value beyond the bounds of the sum).
        latency
            .add(&histogram)
            .expect("histograms of the same bounds add up");
    }
    Ok(LoadStats {
        requests,
        elapsed: duration,
        latency,
    })
}

fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

struct Connection {
    addr: SocketAddr,
    index: usize,
    request: Arc<RequestFn>,
    barrier: Arc<Barrier>,
    deadline: Arc<OnceLock<Instant>>,
    duration: Duration,
}

impl Connection {
    /// Requests counted and their latencies.
    async fn run(self) -> Result<(u64, Histogram<u64>), LoadError> {
        let mut lane = Lane::open(self.addr, self.index, self.request).await?;
        for _ in 0..WARMUP_REQUESTS {
            lane.exchange().await?;
        }
        self.barrier.wait().await;
        // The first connection through the barrier starts the window for all of them.
        let deadline = *self.deadline.get_or_init(|| Instant::now() + self.duration);
        let mut histogram = new_histogram();
        let mut count = 0;
        loop {
            let sent = Instant::now();
            lane.exchange().await?;
            let answered = Instant::now();
            if answered > deadline {
                return Ok((count, histogram));
            }
            let nanos = u64::try_from((answered - sent).as_nanos()).unwrap_or(u64::MAX);
            histogram.saturating_record(nanos.max(1));
            count += 1;
        }
    }
}

/// One keep-alive connection and its buffers, sending its requests in order.
struct Lane {
    stream: TcpStream,
    request: Arc<RequestFn>,
    index: usize,
    /// The number of the next request.
    seq: u64,
    out: Vec<u8>,
    answers: BytesMut,
}

impl Lane {
    /// Connects as connection `index`, whose requests `request` writes.
    async fn open(
        addr: SocketAddr,
        index: usize,
        request: Arc<RequestFn>,
    ) -> Result<Self, LoadError> {
        Ok(Lane {
            stream: connect(addr).await?,
            request,
            index,
            seq: 0,
            out: Vec::with_capacity(1024),
            answers: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// Sends the next request and reads its answer.
    async fn exchange(&mut self) -> Result<(), LoadError> {
        self.out.clear();
        (self.request)(self.index, self.seq, &mut self.out);
        self.seq += 1;
        self.stream
            .write_all(&self.out)
            .await
            .map_err(LoadError::Io)?;
        loop {
            if let Some(len) = complete_answer(&self.answers)? {
                self.answers.advance(len);
                return Ok(());
            }
            if self
                .stream
                .read_buf(&mut self.answers)
                .await
                .map_err(LoadError::Io)?
                == 0
            {
                return Err(LoadError::Closed);
            }
        }
    }
}

/// Opens one connection per entry of `counts` and sends connection `i` its requests
/// `0..counts[i]`, one at a time, untimed: how a benchmark fills a server before measuring.
pub async fn send_counted(
    addr: SocketAddr,
    counts: &[u64],
    request: Arc<RequestFn>,
) -> Result<(), LoadError> {
    let mut tasks = tokio::task::JoinSet::new();
    for (index, &count) in counts.iter().enumerate() {
        let request = Arc::clone(&request);
        tasks.spawn(async move {
            let mut lane = Lane::open(addr, index, request).await?;
            for _ in 0..count {
                lane.exchange().await?;
            }
            Ok::<_, LoadError>(())
        });
    }
    // The first failure ends the fill; dropping the set aborts the other connections.
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// A connection to `addr` that sends each request at once.
async fn connect(addr: SocketAddr) -> Result<TcpStream, LoadError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| LoadError::Connect { addr, source })?;
    // As wrk does: a request is sent whole, at once, not held back for more data.
    stream.set_nodelay(true).map_err(LoadError::Io)?;
    Ok(stream)
}

/// The length of the whole answer at the start of `buf` once it has fully arrived; `None`
/// while more is needed. A non-2xx answer is an error.
fn complete_answer(buf: &[u8]) -> Result<Option<usize>, LoadError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut answer = httparse::Response::new(&mut headers);
    let head = match answer.parse(buf) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(LoadError::Malformed(e.to_string())),
    };
    let mut body = None;
    for header in answer.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| LoadError::Malformed("a bad Content-Length".into()))?;
            body = Some(len);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Neither the storage nor the baseline streams its small answers.
            return Err(LoadError::Malformed("a chunked answer".into()));
        }
    }
    let body = body.ok_or_else(|| LoadError::Malformed("no Content-Length".into()))?;
    if buf.len() < head + body {
        return Ok(None);
    }
    let status = answer.code.unwrap_or(0);
    if !(200..300).contains(&status) {
        return Err(LoadError::Status {
            status,
            body: String::from_utf8_lossy(&buf[head..head + body]).into_owned(),
        });
    }
    Ok(Some(head + body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_complete_once_its_body_has_arrived() {
        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let with_next = [&answer[..], b"HTTP/1.1"].concat();
        assert_eq!(complete_answer(&answer[..10]).unwrap(), None);
        assert_eq!(complete_answer(&answer[..answer.len() - 1]).unwrap(), None);
        assert_eq!(complete_answer(&with_next).unwrap(), Some(answer.len()));
    }

    #[test]
    fn a_refusal_ends_the_run_with_its_body() {
        let refused = b"HTTP/1.1 409 Conflict\r\nContent-Length: 5\r\n\r\nstale";
        match complete_answer(refused) {
            Err(LoadError::Status { status, body }) => {
                assert_eq!((status, body.as_str()), (409, "stale"));
            }
            other => panic!("expected a status error, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn answers_without_a_length_are_refused() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(matches!(
            complete_answer(chunked),
            Err(LoadError::Malformed(_))
        ));
    }
}
