//! Bounds on what clients can make the server hold: open connections, and request bodies
//! being read or waiting for their commit. Past either bound the server answers
//! `503 {"error":"busy",...}` with `Retry-After` and goes on serving everyone else, so a
//! flood of large bodies or idle connections costs a bounded amount of memory.
//!
//! Bodies are counted by their declared length (or `max_body` when they declare none)
//! before a byte of them is read, and stay counted until the answer is ready, which for a
//! write is after its durable commit.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::http::error_response;
use super::metrics::Metrics;
use super::wire::ErrorBody;

/// The default `--max-body`: far above any value a lock holder writes, far below memory trouble.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;
/// The default `--max-queued-bytes`: 64 bodies of the largest size at once.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 64 * DEFAULT_MAX_BODY;
/// The default `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How much the server holds for its clients at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body accepted, in bytes; larger ones get a 413.
    pub max_body: usize,
    /// Bytes of request bodies held at once (being read or waiting for their commit); a
    /// request that would go past it gets a 503. At least `max_body`.
    pub max_queued_bytes: usize,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: DEFAULT_MAX_BODY,
            max_queued_bytes: DEFAULT_MAX_QUEUED_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// Why a set of [`Limits`] cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// One body of the largest size would never fit in the queue.
    #[error(
        "the queue of request bodies ({queued} bytes) must hold at least one body of the largest size ({body} bytes)"
    )]
    QueueBelowBody {
        /// `max_queued_bytes`.
        queued: usize,
        /// `max_body`.
        body: usize,
    },
    /// A bound of zero would refuse everything.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// The semaphore that counts queued bytes takes at most `u32::MAX` bytes per request.
    #[error("max_body is at most {} bytes", u32::MAX)]
    BodyTooLarge,
}

impl Limits {
    /// Refuses limits that would refuse every request or could never admit a large one.
    pub fn check(&self) -> Result<(), LimitsError> {
        if self.max_body == 0 {
            return Err(LimitsError::Zero("max_body"));
        }
        if self.max_connections == 0 {
            return Err(LimitsError::Zero("max_connections"));
        }
        if u32::try_from(self.max_body).is_err() {
            return Err(LimitsError::BodyTooLarge);
        }
        if self.max_queued_bytes < self.max_body {
            return Err(LimitsError::QueueBelowBody {
                queued: self.max_queued_bytes,
                body: self.max_body,
            });
        }
        Ok(())
    }
}

/// The error code of every bound's 503.
const BUSY: &str = "busy";

/// The 503 every bound answers with.
fn busy(message: String) -> Response {
    let mut response = error_response(StatusCode::SERVICE_UNAVAILABLE, BUSY, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// The byte budget for request bodies, shared by every request.
#[derive(Clone)]
pub(super) struct BodyQueue {
    bytes: Arc<Semaphore>,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl BodyQueue {
    pub(super) fn new(limits: Limits, metrics: Arc<Metrics>) -> Self {
        BodyQueue {
            bytes: Arc::new(Semaphore::new(limits.max_queued_bytes)),
            limits,
            metrics,
        }
    }

    /// Bytes a request may bring: its declared length (a larger one is refused by the body
    /// limit when read), `max_body` for a chunked body, nothing without a body.
    fn weight(&self, request: &Request) -> u32 {
        let headers = request.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let bytes = match declared {
            Some(length) => usize::try_from(length).unwrap_or(usize::MAX),
            None if headers.contains_key(header::TRANSFER_ENCODING) => self.limits.max_body,
            None => 0,
        };
        // Checked by `Limits::check`: max_body fits in a u32.
        bytes.min(self.limits.max_body) as u32
    }
}

/// Bodies this small are not counted: HTTP/1.1 serves one request per connection at a time,
/// so together they hold at most `max_connections` times this, and the common small write
/// pays nothing for the queue.
const UNCOUNTED_BODY: u32 = 4096;

/// The layer that puts [`BodyQueue`] in front of every route.
#[derive(Clone)]
pub(super) struct AdmitLayer(pub(super) BodyQueue);

impl<S> tower_layer::Layer<S> for AdmitLayer {
    type Service = Admit<S>;

    fn layer(&self, inner: S) -> Admit<S> {
        Admit {
            queue: self.0.clone(),
            inner,
        }
    }
}

/// Admits a request only while its body fits in the queue, and keeps it counted until its
/// answer is ready.
#[derive(Clone)]
pub(super) struct Admit<S> {
    queue: BodyQueue,
    inner: S,
}

type Admitting<F> = futures::future::Either<
    F,
    futures::future::BoxFuture<'static, Result<Response, std::convert::Infallible>>,
>;

impl<S> tower_service::Service<Request> for Admit<S>
where
    S: tower_service::Service<Request, Response = Response, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Admitting<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        use futures::future::{Either, FutureExt as _};
        let weight = self.queue.weight(&request);
        if weight <= UNCOUNTED_BODY {
            return Either::Left(self.inner.call(request));
        }
        let Ok(permit) = self.queue.bytes.clone().try_acquire_many_owned(weight) else {
            self.queue.metrics.refused(Refusal::QueuedBytes);
            let refused = busy(format!(
                "the server already holds {} bytes of request bodies (--max-queued-bytes); retry later",
                self.queue.limits.max_queued_bytes
            ));
            return Either::Right(futures::future::ready(Ok(refused)).boxed());
        };
        let queued = Queued::new(permit, weight, self.queue.metrics.clone());
        let answer = self.inner.call(request);
        Either::Right(
            async move {
                let answer = answer.await;
                drop(queued);
                answer
            }
            .boxed(),
        )
    }
}

/// A request's bytes in the queue, given back when its answer is ready or its client left.
struct Queued {
    _permit: OwnedSemaphorePermit,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl Queued {
    fn new(permit: OwnedSemaphorePermit, bytes: u32, metrics: Arc<Metrics>) -> Self {
        let bytes = u64::from(bytes);
        metrics.queued_bytes.fetch_add(bytes, Relaxed);
        Queued {
            _permit: permit,
            bytes,
            metrics,
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.metrics.queued_bytes.fetch_sub(self.bytes, Relaxed);
    }
}

/// Which bound refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    Connections,
    QueuedBytes,
}

impl Refusal {
    pub(super) const ALL: [Refusal; 2] = [Refusal::Connections, Refusal::QueuedBytes];

    pub(super) fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::QueuedBytes => "queued_bytes",
        }
    }
}

/// How long a refused connection is given to read its 503 before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// A listener that admits at most `max_connections` at once; each one over is answered
/// 503 and closed, without reaching the HTTP server.
pub(super) struct BoundedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: usize,
    metrics: Arc<Metrics>,
    /// Whether a connection over the bound gets a plaintext 503 before it is closed.
    answer_refusals: bool,
}

impl BoundedListener {
    pub(super) fn new(inner: TcpListener, max_connections: usize, metrics: Arc<Metrics>) -> Self {
        BoundedListener {
            inner,
            slots: Arc::new(Semaphore::new(max_connections)),
            max_connections,
            metrics,
            answer_refusals: true,
        }
    }

    /// The same listener closing connections over the bound without an answer, for a port
    /// that speaks TLS, where a plaintext 503 would only break the handshake.
    pub(super) fn closing_refusals(mut self) -> Self {
        self.answer_refusals = false;
        self
    }
}

impl Listener for BoundedListener {
    type Io = Admitted;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Admitted, std::net::SocketAddr) {
        loop {
            let (stream, addr) = match self.inner.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or the peer gave up before the accept: neither is
                    // the listener's end. A pause keeps a descriptor shortage from spinning.
                    warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Replies are small and each one answers a waiting client: send them at once.
            if let Err(e) = stream.set_nodelay(true) {
                warn!("cannot set TCP_NODELAY: {e}");
            }
            match self.slots.clone().try_acquire_owned() {
                Ok(slot) => {
                    let metrics = self.metrics.clone();
                    metrics.connections.fetch_add(1, Relaxed);
                    return (
                        Admitted {
                            stream,
                            _slot: slot,
                            metrics,
                        },
                        addr,
                    );
                }
                Err(_) => {
                    self.metrics.refused(Refusal::Connections);
                    if self.answer_refusals {
                        tokio::spawn(refuse(stream, self.max_connections));
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }
}

/// Answers a connection over the bound with a 503 and closes it. What the client sent is
/// read and dropped for a moment first: closing with unread data would reset the
/// connection, and the client could lose the answer.
async fn refuse(mut stream: TcpStream, max_connections: usize) {
    let refusal = ErrorBody {
        error: BUSY.to_owned(),
        message: format!(
            "the server has {max_connections} connections open (--max-connections); retry later"
        ),
    };
    // Serializing two strings cannot fail.
    let body = serde_json::to_string(&refusal).unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, linger).await;
}

/// An admitted connection; it gives its slot back when closed.
pub(super) struct Admitted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Relaxed);
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_that_could_never_admit_a_request_are_refused() {
        assert_eq!(Limits::default().check(), Ok(()));
        let small_queue = Limits {
            max_queued_bytes: 10,
            max_body: 11,
            ..Limits::default()
        };
        assert!(matches!(
            small_queue.check(),
            Err(LimitsError::QueueBelowBody { .. })
        ));
        let no_connections = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert_eq!(
            no_connections.check(),
            Err(LimitsError::Zero("max_connections"))
        );
    }
}
