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

use crate::config::UpstreamConfig;
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
            // Registry files are gzip *bodies*; never let the client decode them.
            .no_gzip()
            .build()?;
        Ok(Self {
            client,
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
        let mut resp = match req.send().await {
            Ok(r) => r,
            Err(source) => return transport(url, source),
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
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > limit {
                        return Attempt::Fatal(UpstreamError::TooLarge {
                            url: url.into(),
                            limit,
                        });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(source) => return transport(url, source),
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
            Self::Transport { attempts, .. } | Self::Status { attempts, .. } => *attempts = n,
            Self::TooLarge { .. } => {}
        }
        self
    }
}
