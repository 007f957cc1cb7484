//! Connections of `serve`: the accept loop with a cap on open connections,
//! a header timeout that ends slow, silent and idle clients, Nagle off, and
//! a graceful drain on shutdown.
//!
//! `axum::serve` has neither a cap nor timeouts; without them one client
//! that opens connections and sends nothing holds file descriptors forever.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

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
}

impl From<&crate::config::ServerConfig> for Limits {
    fn from(c: &crate::config::ServerConfig) -> Self {
        Self {
            max_connections: c.max_connections,
            header_timeout: c.header_timeout,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then drains
/// open connections (for at most [`DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper starts this timer whenever it waits for a request head, so it
    // also closes keep-alive connections that stay idle.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
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
        let watcher = graceful.watcher();
        let (builder, router) = (Arc::clone(&builder), router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if !first_bytes_in_time(&stream, limits.header_timeout).await {
                return;
            }
            // The peer address feeds the API's failed-authentication limiter.
            let service =
                router.map_request(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    req
                });
            let conn = builder.serve_connection_with_upgrades(
                TokioIo::new(stream),
                TowerToHyperService::new(service),
            );
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(DRAIN) => {
            tracing::warn!(secs = DRAIN.as_secs(), "connections still open after the drain period; closing them");
        }
    }
    Ok(())
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
    use std::net::SocketAddr;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route(
            "/",
            axum::routing::get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                peer.ip().to_string()
            }),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, async {
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

    #[tokio::test]
    async fn shutdown_stops_accepting_and_finishes() {
        let limits = Limits {
            max_connections: 8,
            header_timeout: Duration::from_secs(5),
        };
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router, limits, async {
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
