//! Accepting HTTP/1.1 and HTTP/2 connections with the defences both of the host's
//! listeners (gateway and admin API) need against hostile or broken clients:
//!
//! - both protocols on one port: HTTP/2 with prior knowledge (h2c, as gRPC clients
//!   send it) is told from HTTP/1.1 by its connection preface, and over TLS the
//!   client may pick `h2` by ALPN;
//! - a cap on open connections: beyond it, new connections wait in the kernel's
//!   backlog (or are refused by it) while the host keeps serving the ones it has, so
//!   no client can use up the process's file descriptors;
//! - a header-read timeout: a connection that does not send a whole request head in
//!   time is closed (slowloris);
//! - an idle timeout: a keep-alive connection with no request in flight (a request
//!   is in flight until its response body has been sent) for that long is closed,
//!   whatever else its client sends (HTTP/2 `PING`s and half-sent headers included);
//! - HTTP/2 caps: concurrent streams per connection, the size of a header list
//!   (however many `CONTINUATION` frames carry it), streams a client resets before
//!   the host takes them up ("rapid reset") and streams the host must reset for the
//!   client's errors; beyond the last two the connection is closed with
//!   `ENHANCE_YOUR_CALM`. `PING` and `SETTINGS` frames are answered one at a time:
//!   a client that floods them without reading the answers stops being read;
//! - graceful drain on shutdown;
//! - TLS when the listener has certificates: the handshake, too, must finish within
//!   the header-read timeout.

use http::{Request, Response};
use hyper::body::{Body as HttpBody, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::serving_threads::ServingThreads;

/// The defences of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a whole request head.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request in flight.
    pub idle_timeout: Duration,
    /// HTTP/2 streams (requests) open at once on one connection.
    pub max_concurrent_streams: u32,
}

/// The timeouts both listeners share, and how long a shutdown drains them: their part
/// of the `shoal serve` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ConnectionSettings {
    /// Time a client has to send a whole request head, on both listeners, in ms.
    #[arg(long, env = "SHOAL_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,

    /// Time a keep-alive connection may sit with no request in flight, in ms.
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// HTTP/2 streams one connection may have open at once, on both listeners (a
    /// gRPC client multiplexes its calls as streams of one connection).
    #[arg(long, env = "SHOAL_MAX_CONCURRENT_STREAMS", default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrent_streams: u32,

    /// How long SIGTERM waits for in-flight requests before exiting, in seconds.
    #[arg(long, env = "SHOAL_DRAIN_SECS", default_value_t = 30)]
    pub drain_secs: u64,
}

impl ConnectionSettings {
    /// The defences of a listener that keeps up to `max_connections` open.
    pub fn limits(&self, max_connections: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms.max(1)),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms.max(1)),
            max_concurrent_streams: self.max_concurrent_streams.max(1),
        }
    }

    /// How long a shutdown lets in-flight requests finish.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
}

/// A bound listener and how it serves: its defences, its certificate, and the
/// serving threads its connections go to (none: the calling runtime).
pub struct Bound {
    /// The listener's name in logs (`gateway`, `admin`).
    pub name: &'static str,
    /// The socket.
    pub listener: TcpListener,
    /// Its defences.
    pub limits: ConnectionLimits,
    /// TLS, when it has a certificate.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where its connections are served.
    pub threads: Option<Arc<ServingThreads>>,
}

impl Bound {
    /// Bind `address` for the listener `name`.
    pub async fn bind(
        name: &'static str,
        address: SocketAddr,
        limits: ConnectionLimits,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|error| anyhow::anyhow!("binding the {name} to {address}: {error}"))?;
        Ok(Self {
            name,
            listener,
            limits,
            tls,
            threads: None,
        })
    }

    /// The same listener, its connections served on `threads`.
    pub fn on(mut self, threads: Arc<ServingThreads>) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Where it listens.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Largest request head (request line and headers) accepted, in bytes.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields accepted in one request.
const MAX_HEADERS: usize = 128;
/// Streams a client may open and reset before the host takes them up: more, and the
/// connection is closed ("rapid reset", CVE-2023-44487).
const MAX_PENDING_RESETS: usize = 20;
/// Streams the host may reset for a client's protocol errors before it closes the
/// connection.
const MAX_ERROR_RESETS: usize = 64;
/// Bytes the host buffers to send on one HTTP/2 stream before it waits for the
/// client to read.
const MAX_SEND_BUFFER: usize = 256 * 1024;
/// How often the host pings an HTTP/2 client that has requests in flight, and how
/// long it waits for the answer before taking the connection for dead.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

/// Serve connections from `bound` with `service_for(peer)` until `shutdown`
/// resolves; then stop accepting and let open connections finish their requests for
/// up to `drain`. Connections are served on the bound's threads when it has them
/// (see [`ServingThreads`]), otherwise on the calling runtime.
pub async fn serve<F, S, B>(
    bound: Bound,
    service_for: F,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    B: HttpBody + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Bound {
        name,
        listener,
        limits,
        tls,
        threads,
    } = bound;
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // Take a permit before accepting: at the cap, new connections wait in the
        // kernel's backlog instead of costing the host a descriptor each.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::default());
        let service = Tracked {
            inner: service_for(peer),
            activity: activity.clone(),
        };
        let watcher = graceful.watcher();
        let tls = tls.clone();
        // A serving thread watches the socket with its own event loop, so it leaves
        // this runtime's.
        let stream = match &threads {
            Some(_) => match stream.into_std() {
                Ok(stream) => Accepted::Detached(stream),
                Err(error) => {
                    tracing::warn!(listener = name, %peer, %error, "cannot hand over a connection");
                    continue;
                }
            },
            None => Accepted::Here(stream),
        };
        let connection = async move {
            let _permit = permit;
            let stream = match stream {
                Accepted::Here(stream) => stream,
                Accepted::Detached(stream) => match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::warn!(listener = name, %peer, %error, "cannot take up a connection");
                        return;
                    }
                },
            };
            let stream = match tls {
                None => Stream::Plain(stream),
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => Stream::Tls(Box::new(stream)),
                        Ok(Err(error)) => {
                            tracing::debug!(listener = name, %peer, %error, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
            };
            let builder = connection_builder(&limits);
            let io = TokioIo::new(stream);
            let connection = watcher.watch(builder.serve_connection(io, service));
            let idle_timeout = limits.idle_timeout;
            tokio::select! {
                outcome = connection => {
                    if let Err(error) = outcome {
                        tracing::debug!(listener = name, %peer, %error, "connection ended with an error");
                    }
                }
                () = activity.idle_for(idle_timeout) => {
                    tracing::debug!(listener = name, %peer, "closing an idle connection");
                }
            }
        };
        match &threads {
            Some(threads) => threads.spawn(connection),
            None => {
                tokio::spawn(connection);
            }
        }
    }
    drop(listener);
    tracing::info!(listener = name, "draining in-flight requests");
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            listener = name,
            ?drain,
            "drain timed out; closing remaining connections"
        );
    }
}

/// How a connection speaks HTTP/1.1 and HTTP/2, with `limits`.
fn connection_builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        // Head, chunk sizes and body in one buffer, sent with one plain write: a
        // small answer would otherwise be a writev of five tiny slices.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_local_error_reset_streams(MAX_ERROR_RESETS)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .keep_alive_interval(H2_KEEPALIVE)
        .keep_alive_timeout(H2_KEEPALIVE);
    builder
}

/// When a connection last had a request in flight, and how many it has now.
struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last moment a request was in flight.
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Activity {
    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Resolves once the connection has had no request in flight for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let quiet_since =
                self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = quiet_since + idle;
            if Instant::now() >= due && self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            let wake = due.max(Instant::now() + Duration::from_millis(100));
            tokio::time::sleep_until(wake.into()).await;
        }
    }
}

/// Counts a connection's requests in flight: from head received until the response
/// body has been sent (or dropped).
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R, B> Service<R> for Tracked<S>
where
    S: Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn call(&self, request: R) -> Self::Future {
        let activity = self.activity.clone();
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        // The guard exists before the future is first polled, so a future dropped
        // unpolled still gives its count back.
        let guard = InFlight(activity);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            Ok(response.map(|body| TrackedBody {
                inner: body,
                _in_flight: guard,
            }))
        })
    }
}

/// A response body that keeps its request counted in flight until it is done.
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B: HttpBody + Unpin> HttpBody for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, data),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A connection as accepted: still on the accepting runtime, or detached from it to
/// be taken up by a serving thread's.
enum Accepted {
    Here(TcpStream),
    Detached(std::net::TcpStream),
}
