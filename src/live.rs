//! The running configuration, and reloading it without a restart.
//!
//! [`Live`] holds the current [`Gateway`] and its request stack behind
//! `ArcSwap`s. The listener's service loads the current stack for every
//! request, so a reload takes effect at once, on connections already open
//! too, and requests already running finish on the stack they started on.
//! A reload builds the new gateway from the old one (see
//! [`Gateway::reconfigure`]) and swaps both; an invalid file changes
//! nothing and says why.
//!
//! With `server.tls`, [`Live`] also holds the listener's certificate:
//! SIGHUP re-reads it after the configuration (so new file paths apply), and
//! a watcher re-reads it when either file changes.

use std::cell::RefCell;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Request;
use hyper::body::Incoming;
use thread_local::ThreadLocal;
use tower::{Service, ServiceExt};

use crate::app::{Gateway, Stack};
use crate::config::Config;
use crate::listener::ServerTls;

/// The tenant API as a hyper service: each request runs on the stack in
/// force when it arrives.
#[derive(Clone)]
pub struct LiveService(Arc<Live>);

/// A thread's clone of the stack in force, and the stack it was made from.
type ThreadStack = (Arc<Stack<Incoming>>, Stack<Incoming>);

/// What the tenant API's requests return.
type Answer = Result<http::Response<crate::response::Body>, Infallible>;

impl hyper::service::Service<Request<Incoming>> for LiveService {
    type Response = http::Response<crate::response::Body>;
    type Error = Infallible;
    type Future = futures_util::future::BoxFuture<'static, Answer>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let in_force = self.0.stack.load();
        let mut current = self.0.per_thread.get_or_default().borrow_mut();
        let cloned = match &mut *current {
            // Holding the Arc keeps its address from being reused.
            Some((of, stack)) if Arc::ptr_eq(of, &in_force) => stack,
            stale => {
                let fresh = (Arc::clone(&in_force), Stack::clone(&in_force));
                &mut stale.insert(fresh).1
            }
        };
        // Every stage is always ready (none applies backpressure through
        // readiness: slots and rates answer 429/503 instead), so the
        // thread's clone takes the request at once.
        let mut cx = Context::from_waker(Waker::noop());
        match cloned.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => cloned.call(request),
            _ => Box::pin(Stack::clone(&in_force).oneshot(request)),
        }
    }
}

/// The gateway in force, swappable.
pub struct Live {
    gateway: ArcSwap<Gateway>,
    stack: ArcSwap<Stack<Incoming>>,
    /// Each serving thread's clone of the stack in force, made again when a
    /// reload swaps it. Cloning the stack for every request (a box, and a
    /// reference count per stage on counters all threads share) cost more
    /// than most stages' own work on a cache hit. Kept here, not in a
    /// thread-local, so the clones (and the ledger, cache and pools they
    /// hold) go when the `Live` does.
    per_thread: ThreadLocal<RefCell<Option<ThreadStack>>>,
    source: Option<PathBuf>,
    tls: Option<Arc<ServerTls>>,
}

impl Live {
    /// Serves `gateway`; `source` is the file reloads read.
    pub fn new(gateway: Gateway, source: Option<PathBuf>) -> Arc<Self> {
        Self::with_tls(gateway, source, None)
    }

    /// As [`Live::new`], with the listener's certificate (read from the
    /// files of `server.tls`), which reloads re-read.
    pub fn with_tls(
        gateway: Gateway,
        source: Option<PathBuf>,
        tls: Option<Arc<ServerTls>>,
    ) -> Arc<Self> {
        let stack = gateway.build_stack();
        Arc::new(Self {
            gateway: ArcSwap::from_pointee(gateway),
            stack: ArcSwap::from_pointee(stack),
            per_thread: ThreadLocal::new(),
            source,
            tls,
        })
    }

    /// The listener's TLS, when it serves HTTPS.
    pub fn tls(&self) -> Option<Arc<ServerTls>> {
        self.tls.clone()
    }

    /// The gateway in force now.
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.load_full()
    }

    /// The tenant API: each request runs on the stack in force when it arrives.
    pub fn service(self: &Arc<Self>) -> LiveService {
        LiveService(Arc::clone(self))
    }

    /// Applies a validated configuration: returns the settings that need a restart.
    pub fn apply(&self, mut config: Config) -> Result<Vec<&'static str>, String> {
        let current = self.gateway();
        // The listener is plain or HTTPS from its start; the files of
        // `server.tls` may change (the certificate reload reads them).
        let tls_switched = config.server.tls.is_some() != current.config.server.tls.is_some();
        if tls_switched {
            config.server.tls = current.config.server.tls.clone();
        }
        let (next, mut ignored) = current.reconfigure(config)?;
        if tls_switched {
            ignored.push("server.tls");
        }
        let stack = next.build_stack();
        // Gateway first: a request that sees the new stack must find the new
        // gateway too (the admin API reads it).
        let tenants = Arc::clone(&next.tenants);
        let alerts = next.credits.alerts().cloned();
        self.gateway.store(Arc::new(next));
        self.stack.store(Arc::new(stack));
        // A changed budget or threshold is looked at now, not at the next charge.
        if let Some(alerts) = alerts {
            alerts.watch(tenants);
        }
        Ok(ignored)
    }

    /// Re-reads the source file and applies it; an invalid file changes nothing.
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.source else {
            return Err("this gateway was not started from a file".into());
        };
        let metrics = Arc::clone(&self.gateway().metrics);
        let result = Config::load(path)
            .map_err(|e| format!("invalid configuration, keeping the one in force:\n{e}"))
            .and_then(|config| self.apply(config));
        match &result {
            Ok(ignored) => {
                let gateway = self.gateway();
                tracing::info!(
                    config = %path.display(),
                    tenants = gateway.config.tenants.len(),
                    needs_restart = ignored.join(","),
                    "configuration reloaded"
                );
                crate::logging::set_level(gateway.config.log_level.as_deref());
                gateway.config.log_warnings();
            }
            Err(reason) => {
                tracing::error!(config = %path.display(), reason = reason.as_str(), "reload failed")
            }
        }
        metrics.reload(result.is_ok());
        result.map(|_| ())
    }

    /// Re-reads the listener's certificate and key from the files the
    /// configuration in force names; a bad pair keeps the old one (logged).
    pub fn reload_certificate(&self) -> Result<(), String> {
        let (Some(tls), Some(files)) = (&self.tls, self.gateway().config.server.tls.clone()) else {
            return Ok(());
        };
        tls.reload(&files).map_err(|e| e.reason)
    }

    /// Re-reads the certificate whenever its files change (see
    /// [`ServerTls::reload_on_change`]), until the process ends.
    pub async fn reload_certificate_on_change(self: Arc<Self>, every: Duration) {
        let Some(tls) = self.tls.clone() else {
            return;
        };
        tls.reload_on_change(|| self.gateway().config.server.tls.clone(), every)
            .await
    }

    /// Reloads on every SIGHUP, until the process ends.
    pub async fn reload_on_sighup(self: Arc<Self>) {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            tracing::warn!("cannot listen for SIGHUP: reload on signal is off");
            return;
        };
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            let _ = self.reload();
            // After the configuration, so a reload that moved the files reads the new ones.
            let _ = self.reload_certificate();
        }
    }

    /// Polls the source file every `every` and reloads once a change has
    /// settled (two polls that agree), so an editor's half-written file or a
    /// Kubernetes ConfigMap's symlink swap is read once, whole. Polling reads
    /// the path afresh each time, so renames and symlink swaps are seen.
    pub async fn reload_on_change(self: Arc<Self>, every: Duration) {
        let Some(path) = self.source.clone() else {
            return;
        };
        let mut applied = std::fs::read(&path).ok();
        let mut seen = applied.clone();
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = std::fs::read(&path).ok();
            if now.is_some() && now == seen && now != applied {
                tracing::info!(config = %path.display(), "configuration file changed: reloading");
                // Applied or not, this content has been handled: an invalid
                // file is reported once, not every second.
                let _ = self.reload();
                applied = now.clone();
            }
            seen = now;
        }
    }
}
