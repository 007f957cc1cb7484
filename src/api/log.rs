//! One log line per API request, written by a middleware around every API
//! route: method, the route as declared (never the raw path, which may carry
//! names a client mistyped, nor the query), status, duration and the name of
//! the token that was presented. Writes are logged at info, reads at debug.
//!
//! Handlers never log how an error became a response: what the operator
//! needs and the client must not see (an internal error's cause) travels to
//! this middleware in the response's extensions ([`Detail`]) and is logged
//! here, on the same line's terms.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

tokio::task_local! {
    /// The name of the token the request authenticated with, set by
    /// [`super::ApiState::authenticate`] while the handler runs inside
    /// [`log_request`] (a handler future runs on the middleware's task).
    static TOKEN_NAME: RefCell<Option<String>>;
}

/// Records the authenticated token's name for this request's log line. A
/// call outside [`log_request`] (the private-repository gate, which reads
/// files, not the API) has nowhere to record it and is ignored.
pub(super) fn note_token(name: &str) {
    let _ = TOKEN_NAME.try_with(|slot| *slot.borrow_mut() = Some(name.to_owned()));
}

/// The cause of a failure the client only sees as "internal error", carried
/// from the handler to [`log_request`] in the response extensions.
#[derive(Debug, Clone)]
pub struct Detail(pub String);

/// The middleware, layered on each route with the route's template as its
/// state (the template is known where the route is declared; axum's
/// `MatchedPath` would need a feature this crate does not build with).
pub(super) async fn log_request(
    State(route): State<Arc<str>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = &*route;
    let (response, token) = TOKEN_NAME
        .scope(RefCell::new(None), async move {
            let response = next.run(request).await;
            let token = TOKEN_NAME.with(|slot| slot.borrow_mut().take());
            (response, token)
        })
        .await;
    let status = response.status().as_u16();
    let millis = format!("{:.3}", started.elapsed().as_secs_f64() * 1000.0);
    let token = token.as_deref().unwrap_or("-");
    let detail = response.extensions().get::<Detail>().map(|d| d.0.as_str());
    if let Some(detail) = detail {
        tracing::error!(%method, route, status, duration_ms = %millis, token, error = detail, "API request failed");
    } else if method == Method::GET || method == Method::HEAD {
        tracing::debug!(%method, route, status, duration_ms = %millis, token, "API request");
    } else {
        tracing::info!(%method, route, status, duration_ms = %millis, token, "API request");
    }
    response
}
