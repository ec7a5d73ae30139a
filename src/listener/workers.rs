//! Serving threads: one single-threaded runtime per vCPU, each owning the
//! connections handed to it (nginx's worker processes, in threads).
//!
//! On tokio's work-stealing runtime a request hops threads: the worker
//! that reads the socket wakes another to steal the task, the upstream
//! connection's task runs where it was first spawned, and every hop is a
//! futex wake-up. Measured on the two-vCPU machine at one connection, a
//! cache miss cost six context switches. Here a connection lives on one
//! thread from accept to close: its requests, its upstream calls (each
//! thread has its own upstream pool, see `Upstream`) and its timers never
//! leave it, so a miss costs the two waits it cannot avoid (for the client
//! and for the upstream).
//!
//! The accept loop stays on the main runtime and hands each accepted socket
//! to the thread with the fewest open connections; accepting is rare next
//! to requests on kept-alive connections. State shared by all threads
//! (cache, ledger, limiters) is `Sync` and was already shared by tokio's
//! workers.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Work sent to a serving thread, run inside its runtime.
type Job = Box<dyn FnOnce() + Send>;

/// The serving threads. Dropping this ends them once the connections they
/// hold have ended (callers drain first) and joins them.
pub struct Workers {
    threads: Vec<Thread>,
}

struct Thread {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    /// Connections this thread holds now.
    open: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Workers {
    /// How many threads `server.workers` absent means: one per vCPU this
    /// process may run on (its affinity mask and cgroup quota count).
    pub fn auto() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    /// Starts `count` serving threads (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let mut threads = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
            let handle = std::thread::Builder::new()
                .name(format!("viewgate-w{i}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        // Each job spawns a connection's task here; they run
                        // while this loop waits for the next one.
                        while let Some(job) = queue.recv().await {
                            job();
                        }
                    });
                    // The sender is gone: the listener has drained. Tasks
                    // still running past its grace end with the runtime.
                })?;
            threads.push(Thread {
                jobs: Some(jobs),
                open: Arc::new(AtomicUsize::new(0)),
                handle: Some(handle),
            });
        }
        Ok(Self { threads })
    }

    /// Moves `stream` to the thread with the fewest open connections and
    /// runs there what `serve` makes of it, as a task of that thread.
    pub(super) fn hand<F, Fut>(&self, stream: TcpStream, serve: F) -> io::Result<()>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.open.load(Ordering::Relaxed))
            .expect("at least one serving thread");
        // The socket leaves this runtime's reactor and joins the thread's.
        let stream = stream.into_std()?;
        // Counted until the connection's task ends, however it ends (a
        // panic in it unwinds through the guard too).
        let open = Open::count(&thread.open);
        let job: Job = Box::new(move || {
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take an accepted connection");
                    return;
                }
            };
            let connection = serve(stream);
            tokio::spawn(async move {
                connection.await;
                drop(open);
            });
        });
        let sent = thread.jobs.as_ref().map(|jobs| jobs.send(job));
        match sent {
            Some(Ok(())) => Ok(()),
            // The thread died (it cannot, short of a panic in the runtime).
            _ => Err(io::Error::other("the serving thread has stopped")),
        }
    }
}

/// One open connection of a thread, counted while this lives.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn count(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(open))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for thread in &mut self.threads {
            thread.jobs.take();
        }
        for thread in &mut self.threads {
            if let Some(handle) = thread.handle.take() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn each_connection_runs_on_the_least_loaded_thread() {
        let workers = Workers::start(2).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let client = TcpStream::connect(addr).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            workers
                .hand(server, |mut s| async move {
                    // Echo the thread's name, then hold the connection open
                    // until the client closes it.
                    let name = std::thread::current().name().unwrap_or("").to_string();
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                    let mut rest = Vec::new();
                    let _ = s.read_to_end(&mut rest).await;
                })
                .unwrap();
            clients.push(client);
        }
        let mut names = Vec::new();
        for client in &mut clients {
            let mut buf = [0u8; 32];
            let n = client.read(&mut buf).await.unwrap();
            names.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
        }
        names.sort();
        assert_eq!(
            names,
            ["viewgate-w0", "viewgate-w0", "viewgate-w1", "viewgate-w1"]
        );
        drop(clients);
        // Each thread's count goes back to zero as its connections end.
        let counted = || {
            workers
                .threads
                .iter()
                .map(|t| t.open.load(Ordering::Relaxed))
                .sum::<usize>()
        };
        // Up to 20 s of 5 ms waits.
        for _ in 0..4_000 {
            if counted() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(counted(), 0, "connections still counted after they ended");
        // Dropping joins the threads once their connections have ended.
        tokio::task::spawn_blocking(move || drop(workers))
            .await
            .unwrap();
    }
}
