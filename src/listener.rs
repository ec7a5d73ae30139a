//! The accept loop: HTTP/1.1 and h2c on one port, header limits, graceful drain.
//!
//! Headers must arrive within `server.header_timeout_ms` (slowloris) and fit
//! in 16 KiB (else 431). At most `server.max_connections` connections are
//! open; one more is closed as soon as it is accepted. On shutdown the
//! listener stops accepting and waits for in-flight requests to finish, up
//! to `server.shutdown_grace_s`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;

use crate::config::ServerConfig;
use crate::response::Body;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Any service the listener can serve.
pub type HttpService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Connections whose request headers take longer are closed.
    pub header_timeout: Duration,
    /// Open connections at most; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl ServerOptions {
    /// The options of `server:`.
    pub fn from_config(server: &ServerConfig) -> Self {
        Self {
            header_timeout: server.header_timeout,
            max_connections: server.max_connections,
            shutdown_grace: server.shutdown_grace,
        }
    }
}

/// A server running in the background.
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningServer {
    /// The bound address (the real port when asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, drains in-flight requests, and returns when done.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// What the listener can serve: a hyper service answering every request.
pub trait Serve:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Serve for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// Notes that a connection has started its first request.
#[derive(Clone)]
struct FirstRequest<S> {
    inner: S,
    started: Arc<AtomicBool>,
}

impl<S: Serve> hyper::service::Service<Request<Incoming>> for FirstRequest<S> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = S::Future;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        self.started.store(true, Ordering::Relaxed);
        self.inner.call(request)
    }
}

/// A boxed tower service, served as a hyper one.
pub fn tower(service: HttpService) -> TowerToHyperService<HttpService> {
    TowerToHyperService::new(service)
}

/// Binds `addr` and serves `service` in a background task.
pub async fn spawn(
    addr: SocketAddr,
    service: impl Serve,
    options: ServerOptions,
) -> std::io::Result<RunningServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, service, options, async {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        task,
    })
}

/// Serves connections from `listener` until `shutdown` completes, then drains.
pub async fn serve(
    listener: TcpListener,
    service: impl Serve,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&connections).try_acquire_owned() else {
                    // Over server.max_connections: refused by closing at once.
                    tracing::debug!("connection refused: server.max_connections reached");
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let io = TokioIo::new(stream);
                let started = Arc::new(AtomicBool::new(false));
                let service = FirstRequest {
                    inner: service.clone(),
                    started: Arc::clone(&started),
                };
                let conn = builder.serve_connection(io, service).into_owned();
                let conn = graceful.watch(conn);
                let header_timeout = options.header_timeout;
                tokio::spawn(async move {
                    tokio::pin!(conn);
                    // hyper's header timeout covers HTTP/1 request heads only:
                    // a connection that sends nothing (or only an HTTP/2
                    // preface) would otherwise hold a slot forever.
                    tokio::select! {
                        _ = &mut conn => {}
                        _ = tokio::time::sleep(header_timeout) => {
                            if started.load(Ordering::Relaxed) {
                                // Connection errors (resets, timeouts) are the client's business.
                                let _ = conn.await;
                            }
                        }
                    }
                    drop(slot);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with requests still in flight");
    }
}
