//! The accept loop: HTTP/1.1 and HTTP/2 on one port (h2c, or HTTPS with
//! ALPN when `server.tls` is set), header limits, idle connections, drain.
//!
//! Headers must arrive within `server.header_timeout_ms` (slowloris) and fit
//! in 16 KiB (else 431); a keep-alive connection idle for
//! `server.idle_timeout_ms` is closed (see [`connection`]). At most
//! `server.max_connections` connections are open; one more is closed as
//! soon as it is accepted. On shutdown the listener stops accepting, closes
//! idle connections, and waits for in-flight requests to finish, up to
//! `server.shutdown_grace_s`.

mod connection;
pub mod tls;
mod workers;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;

use crate::config::ServerConfig;
use crate::response::Body;

pub use tls::ServerTls;
pub use workers::Workers;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Any service the listener can serve.
pub type HttpService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// How a listener treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Connections whose request headers take longer are closed.
    pub header_timeout: Duration,
    /// Keep-alive connections with no request in progress this long are closed.
    pub idle_timeout: Duration,
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
            idle_timeout: server.idle_timeout,
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
    spawn_with_tls(addr, service, options, None).await
}

/// As [`spawn`], serving HTTPS when `tls` is given.
pub async fn spawn_with_tls(
    addr: SocketAddr,
    service: impl Serve,
    options: ServerOptions,
    tls: Option<Arc<ServerTls>>,
) -> std::io::Result<RunningServer> {
    spawn_on(TcpListener::bind(addr).await?, service, options, tls)
}

/// As [`spawn_with_tls`], on a listener already bound.
pub fn spawn_on(
    listener: TcpListener,
    service: impl Serve,
    options: ServerOptions,
    tls: Option<Arc<ServerTls>>,
) -> std::io::Result<RunningServer> {
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, service, options, tls, None, async {
        let _ = stopped.await;
    }));
    Ok(RunningServer {
        addr,
        stop: Some(stop),
        task,
    })
}

/// The HTTP settings every connection shares.
fn http_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Off: hyper's timer also runs while a keep-alive connection waits
        // for its next request, which is idling, not a slow head. The
        // connection keeps both deadlines itself (see `connection`).
        .header_read_timeout(None)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    builder
}

/// Serves connections from `listener` (HTTPS when `tls` is given) until
/// `shutdown` completes, then drains. Each connection runs on one of
/// `workers`' threads when given, else on the calling runtime.
pub async fn serve(
    listener: TcpListener,
    service: impl Serve,
    options: ServerOptions,
    tls: Option<Arc<ServerTls>>,
    workers: Option<Arc<Workers>>,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_builder());
    let connections = Arc::new(Semaphore::new(options.max_connections));
    // Told to every connection when draining starts.
    let (stop, stopping) = watch::channel(());
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
                let (tls, service, builder, stopping) =
                    (tls.clone(), service.clone(), Arc::clone(&builder), stopping.clone());
                let serve = move |stream| {
                    let connection =
                        connection::run(stream, tls, service, builder, options, stopping);
                    async move {
                        connection.await;
                        drop(slot);
                    }
                };
                match &workers {
                    Some(workers) => {
                        if let Err(e) = workers.hand(stream, serve) {
                            tracing::warn!(error = %e, "cannot hand a connection to a serving thread");
                        }
                    }
                    None => {
                        tokio::spawn(serve(stream));
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let _ = stop.send(());
    // Every connection holds a slot until it ends: all slots back means
    // every in-flight request has been answered.
    let all = u32::try_from(options.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(options.shutdown_grace, connections.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period ended with requests still in flight");
    }
}
