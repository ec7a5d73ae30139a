//! One connection's life: TLS handshake, HTTP/1.1 or HTTP/2, and the two
//! deadlines that keep it from holding a `server.max_connections` slot for
//! nothing.
//!
//! - `server.header_timeout_ms` bounds the reception of a request's
//!   headers: a new connection's first request (after the TLS handshake, if
//!   any), and on HTTP/1.1 every later request from its first byte on.
//! - `server.idle_timeout_ms` bounds the time a keep-alive connection spends
//!   with no request in progress (HTTP/2: no open stream); then it is closed
//!   the way clients expect: HTTP/1.1 between requests, HTTP/2 with GOAWAY.
//!
//! hyper's own HTTP/1 header timer cannot tell the two apart: it starts as
//! soon as a connection waits for its next request, so it would cut every
//! idle keep-alive connection after the header timeout, and a pooled
//! client's next request would meet a closed socket. So it is off, and the
//! connection keeps its own account instead ([`Activity`]): the service
//! notes when requests start and their responses end, the socket notes
//! when bytes of a next request arrive, and one timer per connection
//! ([`drive`]) wakes at the next deadline. Per request this costs a few
//! atomic operations and one clock read; the timer is re-armed only when
//! it fires, not per request.

// Socket deadlines are real time: a connection's idle and header timers
// run on tokio's timer, which a test's fake clock does not move.
#![allow(clippy::disallowed_methods)]

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::tls::ServerTls;
use super::{Serve, ServerOptions};
use crate::response::Body;

/// What a connection is doing, shared by its service, its socket and its timer.
struct Activity {
    /// When the connection was accepted: the origin of `idle_since`.
    epoch: Instant,
    /// Requests started whose response has not been sent in full.
    in_flight: AtomicUsize,
    /// Requests started, ever.
    started: AtomicU64,
    /// When `in_flight` last fell to zero, in nanoseconds since `epoch`.
    idle_since: AtomicU64,
    /// The connection speaks HTTP/2 (known from its first request).
    http2: AtomicBool,
    /// HTTP/1.1: bytes of a next request have arrived; its header deadline runs.
    head_started: AtomicBool,
}

/// What the timer does when it fires.
enum Verdict {
    /// No request head came within the header timeout: drop the socket (there
    /// is no request to finish, and nothing polite to say to a silent client).
    Abandon,
    /// Idle too long: close it as clients expect (HTTP/2: GOAWAY).
    CloseIdle,
    /// Look again at this instant.
    CheckAt(Instant),
}

impl Activity {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            head_started: AtomicBool::new(false),
        }
    }

    fn started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// HTTP/1.1 between requests: the next byte read starts a request head.
    /// (A first request is bounded by the connection's first deadline; HTTP/2
    /// frames between streams are pings and settings, not request heads.)
    fn awaits_head(&self) -> bool {
        self.started() > 0 && !self.http2.load(Ordering::Relaxed) && self.in_flight() == 0
    }

    /// Decides, at `now`, whether the connection has been idle too long.
    fn verdict(&self, now: Instant, options: &ServerOptions) -> Verdict {
        if self.started() == 0 {
            // The first deadline passed without a complete request head.
            return Verdict::Abandon;
        }
        if self.in_flight() > 0 {
            // Busy: requests are bounded by the stack's own deadline. Look
            // again later; the idle clock starts when the last one ends.
            return Verdict::CheckAt(now + options.idle_timeout);
        }
        if self.head_started.load(Ordering::Acquire) {
            // A request head is arriving: the socket's header deadline rules.
            return Verdict::CheckAt(now + options.header_timeout);
        }
        let since = self.epoch + Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
        let close_at = since + options.idle_timeout;
        if close_at <= now {
            Verdict::CloseIdle
        } else {
            Verdict::CheckAt(close_at)
        }
    }
}

/// One request in progress: from the service call until its response body
/// has been sent in full (or dropped, when the client goes away).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: &Arc<Activity>, version: Version) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.started.fetch_add(1, Ordering::AcqRel);
        activity.head_started.store(false, Ordering::Release);
        if version == Version::HTTP_2 {
            activity.http2.store(true, Ordering::Relaxed);
        }
        Self(Arc::clone(activity))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Before the decrement: whoever sees `in_flight` at zero sees this
        // time too. `fetch_max`: of concurrent HTTP/2 streams, the last end wins.
        let now = activity.epoch.elapsed().as_nanos() as u64;
        activity.idle_since.fetch_max(now, Ordering::AcqRel);
        activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The listener's service, counting the requests of one connection.
#[derive(Clone)]
struct Counted<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: Serve> hyper::service::Service<Request<Incoming>> for Counted<S> {
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = CountedFuture<S::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(&self.activity, request.version());
        CountedFuture {
            inner: self.inner.call(request),
            in_flight: Some(in_flight),
        }
    }
}

pin_project! {
    /// The inner service's future; its response body carries the request's
    /// [`InFlight`] on, so the connection counts as busy until it is sent.
    struct CountedFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<CountedBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(response.map(|body| CountedBody {
            body,
            _in_flight: in_flight,
        })))
    }
}

pin_project! {
    /// A response body that ends its request's [`InFlight`] when dropped
    /// (hyper drops it once the last frame is written, or the client left).
    struct CountedBody {
        #[pin]
        body: Body,
        _in_flight: Option<InFlight>,
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, watched for the first bytes of a next HTTP/1.1 request: from
/// then on its head must arrive within the header timeout, else reading
/// fails and hyper drops the connection (a slowloris, not a client between
/// requests).
struct Watched<T> {
    io: T,
    activity: Arc<Activity>,
    header_timeout: Duration,
    /// A head on its way: its deadline, once the socket has had to wait
    /// for it (a head that arrives whole in one read never reads the
    /// clock), and `started` when its first bytes came (a change means the
    /// head arrived and its request ran).
    head: Option<(Option<Instant>, u64)>,
    /// Made on the first wait, then reset: a head that arrives whole in one
    /// read never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Watched<T> {
    fn new(io: T, activity: Arc<Activity>, header_timeout: Duration) -> Self {
        Self {
            io,
            activity,
            header_timeout,
            head: None,
            timer: None,
        }
    }

    /// Whether a head is on its way (its request has not run yet).
    fn head_arriving(&mut self) -> bool {
        match self.head {
            Some((_, armed_at)) if self.activity.started() == armed_at => true,
            Some(_) => {
                self.head = None;
                false
            }
            None => false,
        }
    }

    /// Bytes arrived: if the connection was between requests, a head starts.
    fn on_bytes(&mut self) {
        if !self.head_arriving() && self.activity.awaits_head() {
            self.head = Some((None, self.activity.started()));
            self.activity.head_started.store(true, Ordering::Release);
        }
    }

    /// Nothing to read: fails once the head deadline has passed, and makes
    /// sure the task is woken at it. The deadline runs from the first wait
    /// after the head's first bytes, in the same poll as their read.
    fn poll_head_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.head_arriving() {
            return Poll::Pending;
        }
        let Some((deadline, _)) = &mut self.head else {
            return Poll::Pending;
        };
        let at = *deadline.get_or_insert_with(|| Instant::now() + self.header_timeout);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.deadline() != at {
            timer.as_mut().reset(at);
        }
        ready!(timer.as_mut().poll(cx));
        self.head = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "request headers did not arrive within server.header_timeout_ms",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_head_deadline(cx),
            failed => failed,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Serves one accepted connection until it ends, is closed for idling, or
/// the listener drains (`stop` changes).
pub(super) async fn run<S: Serve>(
    stream: TcpStream,
    tls: Option<Arc<ServerTls>>,
    service: S,
    builder: Arc<auto::Builder<TokioExecutor>>,
    options: ServerOptions,
    stop: watch::Receiver<()>,
) {
    let accepted = Instant::now();
    // The handshake counts against the first request's header deadline: a
    // client that opens a socket and never finishes it holds no slot longer.
    let first_deadline = accepted + options.header_timeout;
    match tls {
        None => drive(stream, service, &builder, options, stop, accepted).await,
        Some(tls) => {
            let handshake = tls.acceptor().accept(stream);
            match tokio::time::timeout_at(first_deadline, handshake).await {
                Ok(Ok(stream)) => drive(stream, service, &builder, options, stop, accepted).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake too slow: connection closed"),
            }
        }
    }
}

/// Drives HTTP on `io`, with the connection's timer beside it.
async fn drive<T, S>(
    io: T,
    service: S,
    builder: &auto::Builder<TokioExecutor>,
    options: ServerOptions,
    mut stop: watch::Receiver<()>,
    accepted: Instant,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Serve,
{
    let activity = Arc::new(Activity::new(accepted));
    let io = TokioIo::new(Watched::new(
        io,
        Arc::clone(&activity),
        options.header_timeout,
    ));
    let service = Counted {
        inner: service,
        activity: Arc::clone(&activity),
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let timer = tokio::time::sleep_until(accepted + options.header_timeout);
    tokio::pin!(timer);
    // Once closing, the connection has `header_timeout` to finish: hyper
    // closes an idle HTTP/1.1 connection at once, but an HTTP/2 GOAWAY waits
    // for the client's answer to a ping, which a client may never send.
    let mut closing = false;
    loop {
        tokio::select! {
            // Errors (resets, timeouts, bad requests) are the client's business.
            _ = conn.as_mut() => return,
            _ = timer.as_mut() => {
                let now = Instant::now();
                let next = if closing {
                    if activity.in_flight() == 0 {
                        return;
                    }
                    // A request that raced the GOAWAY, or is being drained:
                    // bounded by the stack's request deadline.
                    now + options.header_timeout
                } else {
                    match activity.verdict(now, &options) {
                        Verdict::CheckAt(at) => at,
                        Verdict::Abandon => {
                            tracing::debug!("connection closed: no request within server.header_timeout_ms");
                            return;
                        }
                        Verdict::CloseIdle => {
                            tracing::debug!(
                                requests = activity.started(),
                                "closing a connection idle for server.idle_timeout_ms"
                            );
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            now + options.header_timeout
                        }
                    }
                };
                timer.as_mut().reset(next);
            }
            _ = stop.changed(), if !closing => {
                // Draining: finish what is in flight, take nothing new.
                conn.as_mut().graceful_shutdown();
                closing = true;
                timer.as_mut().reset(Instant::now() + options.header_timeout);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ServerOptions {
        ServerOptions {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            max_connections: 1,
            shutdown_grace: Duration::from_secs(1),
        }
    }

    fn close_at(verdict: Verdict) -> Option<Instant> {
        match verdict {
            Verdict::CheckAt(at) => Some(at),
            Verdict::Abandon | Verdict::CloseIdle => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_from_the_end_of_its_last_response() {
        let epoch = Instant::now();
        let activity = Arc::new(Activity::new(epoch));
        let options = options();
        // No request by the first deadline: abandoned.
        assert!(matches!(
            activity.verdict(epoch + options.header_timeout, &options),
            Verdict::Abandon
        ));
        let first = InFlight::start(&activity, Version::HTTP_11);
        tokio::time::advance(Duration::from_secs(100)).await;
        // Busy for longer than the idle timeout: not idle.
        let now = Instant::now();
        assert_eq!(
            close_at(activity.verdict(now, &options)),
            Some(now + options.idle_timeout)
        );
        drop(first);
        let ended = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            close_at(activity.verdict(Instant::now(), &options)),
            Some(ended + options.idle_timeout)
        );
        assert!(activity.awaits_head(), "HTTP/1.1 between requests");
        tokio::time::advance(Duration::from_secs(45)).await;
        assert!(matches!(
            activity.verdict(Instant::now(), &options),
            Verdict::CloseIdle
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn of_concurrent_http2_streams_the_last_to_end_starts_the_idle_clock() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let options = options();
        let long = InFlight::start(&activity, Version::HTTP_2);
        let short = InFlight::start(&activity, Version::HTTP_2);
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(short);
        tokio::time::advance(Duration::from_secs(80)).await;
        assert!(matches!(
            activity.verdict(Instant::now(), &options),
            Verdict::CheckAt(_)
        ));
        drop(long);
        let ended = Instant::now();
        assert_eq!(
            close_at(activity.verdict(ended, &options)),
            Some(ended + options.idle_timeout)
        );
        assert!(
            !activity.awaits_head(),
            "HTTP/2 has no request heads to time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_next_request_head_is_timed_by_the_header_timeout_not_the_idle_one() {
        let activity = Arc::new(Activity::new(Instant::now()));
        let options = options();
        drop(InFlight::start(&activity, Version::HTTP_11));
        activity.head_started.store(true, Ordering::Release);
        let now = Instant::now();
        tokio::time::advance(options.idle_timeout * 2).await;
        let later = Instant::now();
        assert_eq!(
            close_at(activity.verdict(later, &options)),
            Some(later + options.header_timeout),
            "a head in progress is not idle"
        );
        // The head arrived: its request runs, and the flag is cleared.
        let next = InFlight::start(&activity, Version::HTTP_11);
        assert!(!activity.head_started.load(Ordering::Acquire));
        drop(next);
        assert!(now < later);
    }
}
