//! Connections of `serve`: the accept loop with a cap on open connections,
//! a header timeout that ends slow, silent and idle clients, Nagle off, and
//! a graceful drain on shutdown.
//!
//! `axum::serve` has neither a cap nor timeouts; without them one client
//! that opens connections and sends nothing holds file descriptors forever.
//!
//! Accepted connections are handed to connection workers: one thread each,
//! running its own single-threaded tokio runtime, like nginx's worker
//! processes. On tokio's multi-threaded scheduler a worker's local run queue
//! holds 256 tasks and the rest overflow to a global queue it checks only
//! now and then, so with hundreds of busy connections per core some were
//! answered again and again while others waited: p99 at 512 connections was
//! 4-5x nginx's. A single-threaded runtime's queue has no such limit and
//! serves its connections in turn.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tower::ServiceExt;

use super::App;
use super::sendfile::{Lane, LaneStream};

/// How long open connections get to finish after shutdown is asked for.
const DRAIN: Duration = Duration::from_secs(30);

/// Connection limits (see [`crate::config::ServerConfig`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time allowed for a complete request header, from the connection's
    /// start or the end of its previous response.
    pub header_timeout: Duration,
    /// Connection worker threads (at least one).
    pub workers: usize,
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Self {
            max_connections: c.max_connections,
            header_timeout: c.header_timeout,
            workers: c.workers_or_cores(),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains
/// open connections (for at most [`DRAIN`]) and joins the workers.
pub async fn serve(
    listener: TcpListener,
    app: App,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let count = limits.workers.max(1);
    let workers = (0..count)
        .map(|i| Worker::start(i, count, app.clone(), limits.header_timeout))
        .collect::<io::Result<Vec<_>>>()?;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        // At the cap, stop accepting: new connections wait in the backlog.
        let permit = match Arc::clone(&permits).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "connection limit reached; new connections wait until one closes"
                );
                tokio::select! {
                    p = Arc::clone(&permits).acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a
                    // little instead of spinning on the error.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // The stream leaves this runtime's reactor for the worker's.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot hand the connection to a worker: {e}");
                continue;
            }
        };
        let mut accepted = Accepted {
            stream,
            peer,
            permit,
        };
        // A worker whose thread died refuses; the next least busy takes it.
        for _ in 0..workers.len() {
            next = least_busy(&workers, next);
            match workers[next].hand(accepted) {
                Ok(()) => break,
                Err(back) => accepted = back,
            }
        }
    }
    drop(listener);
    // Closing the hand-over channels starts each worker's drain.
    let done: Vec<_> = workers.into_iter().map(Worker::stop).collect();
    for d in done {
        let _ = d.await;
    }
    Ok(())
}

/// The worker with the fewest open connections, searching from the one
/// after `last` so that ties rotate.
fn least_busy(workers: &[Worker], last: usize) -> usize {
    let n = workers.len();
    (1..=n)
        .map(|k| (last + k) % n)
        .min_by_key(|&i| workers[i].open.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// A connection on its way from the accept loop to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
}

/// A connection worker: a thread with a single-threaded runtime that serves
/// the connections handed to it.
struct Worker {
    handoff: mpsc::UnboundedSender<Accepted>,
    open: Arc<AtomicUsize>,
    done: oneshot::Receiver<()>,
}

impl Worker {
    fn start(index: usize, workers: usize, app: App, header_timeout: Duration) -> io::Result<Self> {
        let (handoff, inbox) = mpsc::unbounded_channel();
        let (finished, done) = oneshot::channel();
        let (built_tx, built) = std::sync::mpsc::sync_channel(1);
        let open = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&open);
        // The runtime is built on its own thread: one dropped on the
        // accepting runtime's thread (a failed spawn) would panic there.
        std::thread::Builder::new()
            .name(format!("hexmirror-conn-{index}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    // Every worker has its own blocking pool: together they
                    // keep to tokio's default of 512 threads.
                    .max_blocking_threads((512 / workers).max(16))
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                let _ = built_tx.send(Ok(()));
                runtime.block_on(run_worker(inbox, app, header_timeout, counted));
                // Dropping the runtime waits for its blocking tasks (a
                // publish in progress, say) to return.
                drop(runtime);
                let _ = finished.send(());
            })?;
        built
            .recv()
            .map_err(|_| io::Error::other("a connection worker ended before it started"))??;
        Ok(Self {
            handoff,
            open,
            done,
        })
    }

    /// Gives `accepted` to this worker; back when its thread is gone (it
    /// panicked), and the worker is then never the least busy again.
    fn hand(&self, accepted: Accepted) -> Result<(), Accepted> {
        self.open.fetch_add(1, Ordering::Relaxed);
        self.handoff.send(accepted).map_err(|lost| {
            self.open.store(usize::MAX / 2, Ordering::Relaxed);
            tracing::error!(peer = %lost.0.peer, "connection worker gone; handing the connection to another");
            lost.0
        })
    }

    fn stop(self) -> oneshot::Receiver<()> {
        self.done
    }
}

/// A worker's loop: serves each handed connection until the accept loop
/// closes the channel, then drains its connections for at most [`DRAIN`].
async fn run_worker(
    mut inbox: mpsc::UnboundedReceiver<Accepted>,
    app: App,
    header_timeout: Duration,
    open: Arc<AtomicUsize>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts this timer whenever it waits for a request head, so it
    // also closes keep-alive connections that stay idle.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // Queued, not flattened: body bytes reach the stream uncopied, so
        // the sendfile lane can recognise them.
        .writev(true);
    let builder = Arc::new(builder);
    while let Some(Accepted {
        stream,
        peer,
        permit,
    }) = inbox.recv().await
    {
        let open = OpenGuard(Arc::clone(&open));
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%peer, "cannot take over the connection: {e}");
                continue;
            }
        };
        let watcher = graceful.watcher();
        let (builder, app) = (Arc::clone(&builder), app.clone());
        tokio::spawn(async move {
            let (_permit, _open) = (permit, open);
            if !first_bytes_in_time(&stream, header_timeout).await {
                return;
            }
            let lane = Arc::new(Lane::default());
            let service = hyper::service::service_fn({
                let lane = Arc::clone(&lane);
                move |req: hyper::Request<hyper::body::Incoming>| {
                    let (app, lane) = (app.clone(), Arc::clone(&lane));
                    // The tree's files skip the router, whose fallback they
                    // would reach anyway. Their request is detached here,
                    // before the future exists, so hyper's read-ahead finds
                    // its buffer free (see `Head`).
                    let route = match app
                        .tree
                        .clone()
                        .filter(|_| super::Tree::takes(req.method(), req.uri().path()))
                    {
                        Some(tree) => Ok((tree, super::Head::detach(req))),
                        None => Err(req),
                    };
                    async move {
                        let mut req = match route {
                            Ok((tree, head)) => {
                                return Ok(tree.answer(head, Some(peer.ip()), Some(&lane)).await);
                            }
                            Err(req) => req,
                        };
                        // The peer address feeds the API's failed-authentication
                        // limiter; the lane lets file responses use sendfile.
                        req.extensions_mut().insert(ConnectInfo(peer));
                        req.extensions_mut().insert(lane);
                        app.router.oneshot(req).await
                    }
                }
            });
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(LaneStream::new(stream, lane)),
                service,
            );
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!(secs = DRAIN.as_secs(), "connections still open after the drain period; closing them");
        }
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does: the usual soft default (1024) is below the connection cap, and
/// the response cache keeps a handle open per file it sends with
/// `sendfile`. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> io::Result<u64> {
    let limit = nofile()?;
    // The kernel's default ceiling (`fs.nr_open`); an unlimited hard limit
    // is not a value the soft one may take.
    let target = limit.rlim_max.min(1 << 20);
    if limit.rlim_cur >= target {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(target)
}

/// The process's soft limit on open files (0 when unknown).
pub(super) fn open_file_limit() -> usize {
    nofile().map_or(0, |l| usize::try_from(l.rlim_cur).unwrap_or(usize::MAX))
}

/// The process's `RLIMIT_NOFILE`.
fn nofile() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Counts a connection as open on its worker until it ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sets Nagle off and waits for the client's first bytes. hyper's own
/// header timer starts only once it knows the protocol, so a client that
/// connects and sends nothing is ended here. Nagle off: clients reuse a
/// connection for many small registry files, and with Nagle on each
/// response after the first waited about 40 ms for the client's delayed ACK.
async fn first_bytes_in_time(stream: &TcpStream, timeout: Duration) -> bool {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!("cannot set TCP_NODELAY: {e}");
    }
    // peek, not readable(): readiness may be reported before any byte came.
    let mut first = [0u8; 1];
    match tokio::time::timeout(timeout, stream.peek(&mut first)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(e)) => {
            tracing::debug!("connection failed before its first request: {e}");
            false
        }
        Err(_) => {
            tracing::debug!("connection sent nothing within the header timeout; closed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use std::net::SocketAddr;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let router = Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.ip().to_string()
            }),
        );
        start_with(limits, router).await
    }

    async fn start_with(
        limits: Limits,
        router: Router,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router.into(), limits, async {
            let _ = rx.await;
        }));
        (addr, tx)
    }

    /// Sends one request and reads until the server closes or `wait` passes.
    async fn get(stream: &mut TcpStream, wait: Duration) -> String {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(wait, stream.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// True when the server closed `stream` within `wait`.
    async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(wait, stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    #[tokio::test]
    async fn silent_and_idle_connections_are_closed_and_the_cap_holds() {
        let limits = Limits {
            max_connections: 2,
            header_timeout: Duration::from_millis(300),
            workers: 2,
        };
        let (addr, _stop) = start(limits).await;
        // A client that connects and sends nothing is closed.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        // Half a header, then nothing: closed too.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\nhost:").await.unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
        // A keep-alive connection left idle after a response is closed.
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).contains("127.0.0.1"));
        assert!(closed_within(&mut idle, Duration::from_secs(5)).await);

        // Two connections hold both permits; a third is served only once
        // one of them closes.
        let mut a = TcpStream::connect(addr).await.unwrap();
        let mut b = TcpStream::connect(addr).await.unwrap();
        a.write_all(b"GET").await.unwrap();
        b.write_all(b"GET").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut third = TcpStream::connect(addr).await.unwrap();
        let early = get(&mut third, Duration::from_millis(150)).await;
        assert_eq!(early, "", "served beyond the cap");
        let late = {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        assert!(late.starts_with("HTTP/1.1 200"), "{late}");
    }

    /// Regression: accepted connections had Nagle's algorithm on, so every
    /// response after the first on a reused connection stalled ~40 ms.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        client.write_all(b"G").await.unwrap();
        assert!(first_bytes_in_time(&accepted, Duration::from_secs(5)).await);
        assert!(accepted.nodelay().unwrap());
    }

    /// Regression: on tokio's multi-threaded scheduler, hundreds of busy
    /// connections per core overflowed the worker's local queue and some
    /// waited far longer than others (p99 at 512 connections 4-5x nginx's).
    /// Requests run on single-threaded worker runtimes, and connections
    /// go to the least busy worker.
    #[tokio::test]
    async fn connections_are_spread_over_single_threaded_workers() {
        let limits = Limits {
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
            workers: 2,
        };
        let router = Router::new().route(
            "/",
            axum::routing::get(|| async {
                let flavor = tokio::runtime::Handle::current().runtime_flavor();
                let thread = std::thread::current().name().unwrap_or("").to_owned();
                format!("{thread} {flavor:?}")
            }),
        );
        let (addr, _stop) = start_with(limits, router).await;
        let mut streams = Vec::new();
        let mut served_by = Vec::new();
        // Four connections open at once: two for each worker.
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 512];
            while !got.ends_with(b"Thread") {
                let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                    .await
                    .expect("response in time")
                    .unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8(got).unwrap();
            let body = text.rsplit("\r\n").next().unwrap().to_owned();
            served_by.push(body);
            streams.push(s);
        }
        served_by.sort();
        assert_eq!(
            served_by,
            [
                "hexmirror-conn-0 CurrentThread",
                "hexmirror-conn-0 CurrentThread",
                "hexmirror-conn-1 CurrentThread",
                "hexmirror-conn-1 CurrentThread",
            ]
        );
    }

    #[tokio::test]
    async fn shutdown_stops_accepting_and_finishes() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(5),
            workers: 2,
        };
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router.into(), limits, async {
            let _ = rx.await;
        }));
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert!(get(&mut s, Duration::from_secs(5)).await.ends_with("ok"));
        tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("serve returns after shutdown")
            .unwrap()
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }
}
