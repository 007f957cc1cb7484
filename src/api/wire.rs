//! The Hex API's wire conventions: request bodies in ETF or JSON, responses
//! in whichever the client accepts, and errors as `{status, message, errors}`.

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::etf;

/// The media type of Erlang External Term Format bodies.
pub const HEX_ERLANG: &str = "application/vnd.hex+erlang";

/// How the client wants its response bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/vnd.hex+erlang` (what hex_core asks for).
    Erlang,
    /// `application/json` (anything else).
    Json,
}

impl Format {
    /// Picks the format from the `Accept` header.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let accept = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if accept.contains(HEX_ERLANG) {
            Self::Erlang
        } else {
            Self::Json
        }
    }
}

/// A response body (or error) in the client's format.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The body; `None` for 204 and other empty answers.
    pub body: Option<Value>,
    /// Extra headers.
    pub headers: Vec<(header::HeaderName, String)>,
    /// For the server log only: why an internal error happened.
    pub detail: Option<String>,
}

impl Reply {
    /// A body with a status.
    pub fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body: Some(body),
            headers: Vec::new(),
            detail: None,
        }
    }

    /// 200 with a body.
    pub fn ok(body: Value) -> Self {
        Self::new(StatusCode::OK, body)
    }

    /// An empty answer (204, or 201 for docs).
    pub fn empty(status: StatusCode) -> Self {
        Self {
            status,
            body: None,
            headers: Vec::new(),
            detail: None,
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: header::HeaderName, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// An error as hex.pm shapes it.
    pub fn error(status: StatusCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut reply = Self::new(
            status,
            json!({"status": status.as_u16(), "message": message, "errors": {}}),
        );
        if status == StatusCode::UNAUTHORIZED {
            reply = reply.with_header(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"hexmirror\"".to_owned(),
            );
        }
        reply
    }

    /// A 500 whose cause, `detail`, goes to the server log (by the API's
    /// logging middleware), never to the client.
    pub fn internal(detail: impl Into<String>) -> Self {
        Self::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal error; nothing was changed; see the server log",
        )
        .with_detail(detail)
    }

    /// Carries `detail` (the cause, for the server log only) with the reply.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Renders the reply for a client that wants `format`.
    pub fn render(self, format: Format) -> Response {
        let mut res = match self.body {
            None => Response::new(Body::empty()),
            Some(body) => {
                let (bytes, ctype) = match format {
                    Format::Erlang => (etf::encode(&body), HEX_ERLANG),
                    Format::Json => (
                        serde_json::to_vec(&body).unwrap_or_default(),
                        "application/json; charset=utf-8",
                    ),
                };
                let mut res = Response::new(Body::from(bytes));
                res.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
                res
            }
        };
        *res.status_mut() = self.status;
        if let Some(detail) = self.detail {
            res.extensions_mut().insert(super::log::Detail(detail));
        }
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        res
    }
}

/// A reply ready to render: axum handlers return this.
pub struct Rendered(pub Reply, pub Format);

impl IntoResponse for Rendered {
    fn into_response(self) -> Response {
        self.0.render(self.1)
    }
}

/// Decodes a request body: ETF when the content type says so, JSON
/// otherwise; an empty body is an empty object.
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, Reply> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let parsed = if ctype.contains(HEX_ERLANG) {
        etf::decode(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(body).map_err(|e| format!("JSON body: {e}"))
    };
    parsed.map_err(|e| Reply::error(StatusCode::BAD_REQUEST, e))
}

/// ISO 8601 / RFC 3339 time as hex.pm prints it.
pub fn iso(secs: i64) -> String {
    crate::manifest::rfc3339(u64::try_from(secs).unwrap_or(0))
}

/// A numeric query parameter outside its range.
#[derive(Debug, thiserror::Error)]
#[error("{key}={value:?}: give a number from {min} to {max}")]
pub struct OutOfRange {
    /// The parameter.
    pub key: String,
    /// What was given.
    pub value: String,
    /// The smallest accepted.
    pub min: usize,
    /// The largest accepted.
    pub max: usize,
}

/// Numeric query parameter `key`: `default` when absent, else a number in
/// `range`.
pub fn bounded(
    q: &std::collections::BTreeMap<String, String>,
    key: &str,
    default: usize,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, OutOfRange> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| OutOfRange {
                key: key.to_owned(),
                value: v.clone(),
                min: *range.start(),
                max: *range.end(),
            }),
    }
}
