//! The upstream repository over HTTP: one shared client, conditional GETs,
//! bounded concurrency, timeouts, and retries with backoff and jitter.

pub mod release;
mod retry;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED, RETRY_AFTER};
use tokio::sync::Semaphore;

use crate::config::{Pacing, UpstreamConfig};
pub use crate::plan::Validators;

impl UpstreamError {
    /// A body over its limit is a size failure; anything else, transport.
    pub fn kind(&self) -> crate::plan::FailureKind {
        match self {
            Self::TooLarge { .. } => crate::plan::FailureKind::Size,
            _ => crate::plan::FailureKind::Transport,
        }
    }
}
pub use retry::Backoff;

/// Why an upstream request failed for good (after any retries).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Connection, TLS or timeout error on the last attempt.
    #[error("GET {url}: {source} (after {attempts} attempts)")]
    Transport {
        /// The full URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The client's error.
        source: reqwest::Error,
    },
    /// A status we do not retry, or the last retry's status.
    #[error("GET {url}: HTTP {status} (after {attempts} attempts)")]
    Status {
        /// The full URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The response status.
        status: u16,
    },
    /// The body is larger than the caller allows.
    #[error("GET {url}: body is larger than {limit} bytes")]
    TooLarge {
        /// The full URL.
        url: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The upstream was too slow: no headers in time, or a body trickling
    /// below the minimum rate ([upstream] header_timeout_secs,
    /// min_bytes_per_sec, rate_window_secs).
    #[error("GET {url}: {why} (after {attempts} attempts)")]
    TooSlow {
        /// The full URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// What was too slow.
        why: Slowness,
    },
    /// A redirect went too far: a loop, too many hops, or another host.
    #[error(
        "GET {url}: {}; set [upstream] url to where the repository really is, or list the host in [upstream] redirect_hosts",
        innermost(source)
    )]
    Redirect {
        /// The full URL.
        url: String,
        /// The client's error.
        source: reqwest::Error,
    },
}

/// The outcome of a GET.
#[derive(Debug)]
pub enum Fetched {
    /// 200 with the body and its validators.
    Body {
        /// The response body.
        body: Vec<u8>,
        /// Validators to send next time.
        validators: Validators,
    },
    /// 304: what we have is current.
    NotModified,
    /// 404 or 410: the upstream does not have it.
    NotFound,
}

/// Counters of upstream traffic, for the sync summary.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Requests sent, retries included.
    pub requests: AtomicU64,
    /// Body bytes received on 200 answers.
    pub bytes: AtomicU64,
}

/// A handle on the upstream repository; cheap to clone.
#[derive(Debug, Clone)]
pub struct Upstream {
    client: reqwest::Client,
    pacing: Arc<Pacing>,
    base: Arc<str>,
    permits: Arc<Semaphore>,
    backoff: Backoff,
    retries: u32,
    traffic: Arc<Traffic>,
}

impl Upstream {
    /// Builds the client for `config`, allowing `concurrency` requests in flight.
    pub fn new(config: &UpstreamConfig, concurrency: usize) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("hexmirror/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(30).min(config.timeout))
            .timeout(config.timeout)
            .redirect(redirect_policy(&config.url, &config.pacing.redirect_hosts))
            // Registry files are gzip *bodies*; never let the client decode them.
            .no_gzip()
            .build()?;
        Ok(Self {
            client,
            pacing: Arc::new(config.pacing.clone()),
            base: config.url.as_str().into(),
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            backoff: Backoff::default(),
            retries: config.retries,
            traffic: Arc::new(Traffic::default()),
        })
    }

    /// Replaces the retry timing (tests use short delays).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of a repository path such as `packages/foo`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base, path)
    }

    /// Traffic counters since this handle was built.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// GETs `path`, conditionally when `validators` has any, reading at most
    /// `limit` body bytes. Retries connection errors, 5xx and 429.
    pub async fn get(
        &self,
        path: &str,
        validators: &Validators,
        limit: u64,
    ) -> Result<Fetched, UpstreamError> {
        let url = self.url(path);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.attempt(&url, validators, limit).await {
                Attempt::Done(fetched) => return Ok(fetched),
                Attempt::Fatal(error) => return Err(error.with_attempts(attempt)),
                Attempt::Retry { error, .. } if attempt > self.retries => {
                    return Err(error.with_attempts(attempt));
                }
                Attempt::Retry { error, retry_after } => {
                    let delay = self.backoff.delay(attempt, retry_after);
                    tracing::warn!(%url, attempt, ?delay, "retrying: {error}");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn attempt(&self, url: &str, validators: &Validators, limit: u64) -> Attempt {
        // The semaphore is closed never; an error here cannot happen.
        let Ok(_permit) = self.permits.acquire().await else {
            return Attempt::Fatal(UpstreamError::Status {
                url: url.into(),
                attempts: 0,
                status: 0,
            });
        };
        self.traffic.requests.fetch_add(1, Ordering::Relaxed);
        let mut req = self.client.get(url);
        if let Some(etag) = &validators.etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &validators.last_modified {
            req = req.header(IF_MODIFIED_SINCE, lm);
        }
        let mut resp = match tokio::time::timeout(self.pacing.header_timeout, req.send()).await {
            Ok(Ok(r)) => r,
            Ok(Err(source)) if source.is_redirect() => {
                return Attempt::Fatal(UpstreamError::Redirect {
                    url: url.into(),
                    source,
                });
            }
            Ok(Err(source)) => return transport(url, source),
            Err(_) => {
                let secs = self.pacing.header_timeout.as_secs();
                return too_slow(url, Slowness::NoHeaders(secs));
            }
        };
        let status = resp.status();
        match status {
            StatusCode::OK => {}
            StatusCode::NOT_MODIFIED => return Attempt::Done(Fetched::NotModified),
            StatusCode::NOT_FOUND | StatusCode::GONE => return Attempt::Done(Fetched::NotFound),
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                let retry_after = resp
                    .headers()
                    .get(RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(retry::parse_retry_after);
                return Attempt::Retry {
                    error: status_error(url, s),
                    retry_after,
                };
            }
            s => return Attempt::Fatal(status_error(url, s)),
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_owned)
        };
        let validators = Validators {
            etag: header(ETAG),
            last_modified: header(LAST_MODIFIED),
        };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Attempt::Fatal(UpstreamError::TooLarge {
                url: url.into(),
                limit,
            });
        }
        let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0).min(limit) as usize);
        let mut rate = RateWindow::new(&self.pacing, tokio::time::Instant::now());
        loop {
            // Wait for the next chunk no longer than the window has left;
            // `chunk` is cancel-safe (nothing is lost when it is dropped).
            let next = tokio::time::timeout_at(rate.ends(), resp.chunk()).await;
            let now = tokio::time::Instant::now();
            match next {
                Ok(Ok(Some(chunk))) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Attempt::Fatal(UpstreamError::TooLarge {
                            url: url.into(),
                            limit,
                        });
                    }
                    body.extend_from_slice(&chunk);
                    rate.received(chunk.len() as u64);
                }
                Ok(Ok(None)) => break,
                Ok(Err(source)) => return transport(url, source),
                Err(_) => {}
            }
            if let Err(why) = rate.check(now) {
                return too_slow(url, why);
            }
        }
        self.traffic
            .bytes
            .fetch_add(body.len() as u64, Ordering::Relaxed);
        Attempt::Done(Fetched::Body { body, validators })
    }
}

enum Attempt {
    Done(Fetched),
    Retry {
        error: UpstreamError,
        retry_after: Option<Duration>,
    },
    Fatal(UpstreamError),
}

fn transport(url: &str, source: reqwest::Error) -> Attempt {
    Attempt::Retry {
        error: UpstreamError::Transport {
            url: url.into(),
            attempts: 0,
            source,
        },
        retry_after: None,
    }
}

/// How an upstream was too slow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Slowness {
    /// No response headers within the header timeout.
    #[error("no response headers within {0}s")]
    NoHeaders(u64),
    /// The body arrived below the minimum rate over a window.
    #[error("body arrived at {bytes} bytes in {secs}s, below the minimum of {min} bytes/s")]
    Trickle {
        /// Bytes received in the window.
        bytes: u64,
        /// The window, in seconds.
        secs: u64,
        /// The minimum rate, in bytes per second.
        min: u64,
    },
}

/// The deepest cause of `e`: for a redirect refused by our policy, its
/// reason, which the client wraps in a generic message.
fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn too_slow(url: &str, why: Slowness) -> Attempt {
    Attempt::Retry {
        error: UpstreamError::TooSlow {
            url: url.into(),
            attempts: 0,
            why,
        },
        retry_after: None,
    }
}

/// The transfer rate of one body, measured over consecutive windows: a
/// window that ends with fewer than `min_bytes_per_sec * window` bytes ends
/// the request. A trickle of a few bytes a second would otherwise hold a
/// sync worker for as long as the whole-request timeout allows.
struct RateWindow {
    window: Duration,
    needed: u64,
    started: tokio::time::Instant,
    bytes: u64,
}

impl RateWindow {
    fn new(pacing: &Pacing, now: tokio::time::Instant) -> Self {
        Self {
            window: pacing.rate_window,
            needed: pacing
                .min_bytes_per_sec
                .saturating_mul(pacing.rate_window.as_secs().max(1)),
            started: now,
            bytes: 0,
        }
    }

    /// When the current window ends.
    fn ends(&self) -> tokio::time::Instant {
        self.started + self.window
    }

    fn received(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_add(n);
    }

    /// At `now`: fine, or (once a window is over) too slow. A window that
    /// met the rate starts the next one.
    fn check(&mut self, now: tokio::time::Instant) -> Result<(), Slowness> {
        if now < self.ends() {
            return Ok(());
        }
        if self.bytes < self.needed {
            let secs = self.window.as_secs().max(1);
            return Err(Slowness::Trickle {
                bytes: self.bytes,
                secs,
                min: self.needed / secs,
            });
        }
        self.started = now;
        self.bytes = 0;
        Ok(())
    }
}

/// Follows at most [`MAX_REDIRECTS`] hops, never in a loop, and only to the
/// upstream's own host or one listed in `[upstream] redirect_hosts`.
fn redirect_policy(base: &str, allowed: &[String]) -> reqwest::redirect::Policy {
    let own = reqwest::Url::parse(base)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned));
    let mut hosts: Vec<String> = allowed.to_vec();
    hosts.extend(own);
    reqwest::redirect::Policy::custom(move |attempt| {
        let host = attempt.url().host_str().unwrap_or_default().to_owned();
        if attempt.previous().contains(attempt.url()) {
            let url = attempt.url().to_string();
            attempt.error(format!("redirect loop back to {url}"))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if !hosts.contains(&host) {
            attempt.error(format!("redirect to another host, {host}"))
        } else {
            attempt.follow()
        }
    })
}

/// Redirect hops followed at most.
const MAX_REDIRECTS: usize = 3;

fn status_error(url: &str, status: StatusCode) -> UpstreamError {
    UpstreamError::Status {
        url: url.into(),
        attempts: 0,
        status: status.as_u16(),
    }
}

impl UpstreamError {
    fn with_attempts(mut self, n: u32) -> Self {
        match &mut self {
            Self::Transport { attempts, .. }
            | Self::Status { attempts, .. }
            | Self::TooSlow { attempts, .. } => *attempts = n,
            Self::TooLarge { .. } | Self::Redirect { .. } => {}
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// What a fake upstream does with one connection, after reading the
    /// request head.
    type Behaviour = fn(TcpStream, u16) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

    /// A loopback upstream that treats every connection with `behaviour`;
    /// returns its URL and a count of the requests it read.
    async fn fake(behaviour: Behaviour) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    behaviour(stream, port).await;
                });
            }
        });
        (format!("http://127.0.0.1:{port}"), count)
    }

    fn upstream(url: &str, pacing: Pacing) -> Upstream {
        let config = UpstreamConfig {
            url: url.to_owned(),
            public_key: crate::registry::PublicKey::hexpm(),
            repository: "hexpm".into(),
            timeout: Duration::from_secs(20),
            retries: 1,
            pacing,
            max_registry_bytes: crate::registry::MAX_DECODED_SIZE,
        };
        Upstream::new(&config, 4).unwrap().with_backoff(Backoff {
            base: Duration::from_millis(10),
            max: Duration::from_millis(20),
        })
    }

    fn quick() -> Pacing {
        Pacing {
            header_timeout: Duration::from_millis(300),
            min_bytes_per_sec: 1000,
            rate_window: Duration::from_secs(1),
            redirect_hosts: Vec::new(),
        }
    }

    #[tokio::test]
    async fn silent_and_trickling_upstreams_are_given_up_and_retried() {
        let (url, count) = fake(|stream, _| {
            Box::pin(async move {
                let _open = stream;
                tokio::time::sleep(Duration::from_secs(30)).await
            })
        })
        .await;
        let started = std::time::Instant::now();
        let err = upstream(&url, quick())
            .get("names", &Validators::default(), 1 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(err, UpstreamError::TooSlow { attempts: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("no response headers"), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 2, "retried once");
        assert!(started.elapsed() < Duration::from_secs(5));

        let (url, _) = fake(|mut stream, _| {
            Box::pin(async move {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n";
                let _ = stream.write_all(head).await;
                for _ in 0..300 {
                    if stream.write_all(&[b'x'; 10]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        })
        .await;
        let started = std::time::Instant::now();
        let err = upstream(&url, quick())
            .get("names", &Validators::default(), 1 << 20)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("below the minimum"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_cut_body_is_a_transport_error_and_is_retried() {
        let (url, count) = fake(|mut stream, _| {
            Box::pin(async move {
                let head = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
                let _ = stream.write_all(head).await;
                let _ = stream.write_all(&[b'x'; 50]).await;
            })
        })
        .await;
        let err = upstream(&url, quick())
            .get("names", &Validators::default(), 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Transport { .. }), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn redirects_stay_on_the_host_and_never_loop() {
        let (url, count) = fake(|mut stream, _| {
            Box::pin(async move {
                let head = b"HTTP/1.1 302 Found\r\nlocation: /names\r\ncontent-length: 0\r\n\r\n";
                let _ = stream.write_all(head).await;
            })
        })
        .await;
        let err = upstream(&url, quick())
            .get("names", &Validators::default(), 1 << 20)
            .await
            .unwrap_err();
        assert!(matches!(err, UpstreamError::Redirect { .. }), "{err}");
        assert!(err.to_string().contains("loop"), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "a loop is not retried");

        let (url, _) = fake(|mut stream, port| {
            Box::pin(async move {
                let head = format!(
                    "HTTP/1.1 302 Found\r\nlocation: http://localhost:{port}/elsewhere\r\ncontent-length: 0\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
            })
        })
        .await;
        let err = upstream(&url, quick())
            .get("names", &Validators::default(), 1 << 20)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("another host, localhost"), "{err}");
        // Unless that host is listed.
        let mut pacing = quick();
        pacing.redirect_hosts = vec!["localhost".into()];
        let err = upstream(&url, pacing)
            .get("names", &Validators::default(), 1 << 20)
            .await
            .unwrap_err();
        assert!(!err.to_string().contains("another host"), "{err}");
    }
}
