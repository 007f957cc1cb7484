//! The web UI: server-rendered HTML under `[server] ui_prefix` (`/ui` by
//! default): the package list with search and sorts, a package page, a
//! release page, the status page, and sign-in with an API key.
//!
//! Every page reads through the read API in-process (the same router a
//! client calls, with the session's key as its `authorization`), so the UI
//! shows exactly what a client with that key may read: the read gate,
//! version-limited keys and private repositories are the API's, not a copy.
//! Templates ([`minijinja`], embedded) escape every value; no page carries
//! script, and the `Content-Security-Policy` forbids any.

mod session;
mod view;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Form, Path, Query, Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::clock::unix_now;
pub use session::Sessions;
use session::{COOKIE, SESSION_TTL};

/// Reads the server's status (`/health` and more) for the status page.
pub type StatusFn = Arc<dyn Fn() -> Value + Send + Sync>;

/// Largest API body a page reads (a page of 100 packages is well under).
const MAX_API_BODY: usize = 16 * 1024 * 1024;

/// Where the UI is and what it shows first.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The path prefix (`/ui`).
    pub prefix: String,
    /// The repository pages show when the URL names none: the upstream's
    /// mirror, which everyone may read.
    pub mirror: String,
}

/// What every page handler shares.
struct Ui {
    prefix: String,
    mirror: String,
    /// The server's router without the UI: the API and the tree.
    app: Router,
    status: StatusFn,
    sessions: Sessions,
    templates: minijinja::Environment<'static>,
}

/// Why a page could not be made.
#[derive(Debug, thiserror::Error)]
enum UiError {
    /// The API answered with an error for `path`.
    #[error("{message}")]
    Api {
        /// What the API answered.
        status: StatusCode,
        /// Its message.
        message: String,
    },
    /// The API's body was not JSON, or too large (a bug).
    #[error("reading {path} from the API: {why}")]
    Body {
        /// The API path.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// A template failed (a bug).
    #[error("rendering {template}: {source}")]
    Template {
        /// The template.
        template: &'static str,
        /// minijinja's error.
        source: minijinja::Error,
    },
    /// The status page's read died (a bug).
    #[error("status read failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Api { status, .. } => *status,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The templates, embedded in the binary.
const TEMPLATES: &[(&str, &str)] = &[
    ("base.html", include_str!("templates/base.html")),
    ("list.html", include_str!("templates/list.html")),
    ("package.html", include_str!("templates/package.html")),
    ("release.html", include_str!("templates/release.html")),
    (
        "requirements.html",
        include_str!("templates/requirements.html"),
    ),
    ("status.html", include_str!("templates/status.html")),
    ("login.html", include_str!("templates/login.html")),
    ("device.html", include_str!("templates/device.html")),
    ("error.html", include_str!("templates/error.html")),
];
const STYLE: &str = include_str!("templates/style.css");

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, source) in TEMPLATES {
        // The templates are part of the binary; a broken one fails the
        // `templates_compile` test, so this cannot fail in a build.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, "UI template does not compile: {e}");
        }
    }
    env
}

/// The UI's routes under `prefix`, reading through `app` (the server's
/// router without them); also `/`, which sends browsers to the UI.
pub fn router(settings: &Settings, app: Router, status: StatusFn) -> Router {
    let prefix = settings.prefix.as_str();
    let ui = Arc::new(Ui {
        prefix: prefix.to_owned(),
        mirror: settings.mirror.clone(),
        app,
        status,
        sessions: Sessions::default(),
        templates: environment(),
    });
    let at = |p: &str| format!("{prefix}{p}");
    Router::new()
        .route("/", get(root))
        .route(prefix, get(to_index))
        .route(&at("/"), get(list))
        .route(&at("/style.css"), get(style))
        .route(&at("/packages/{name}"), get(package))
        .route(&at("/packages/{name}/{version}"), get(release))
        .route(&at("/status"), get(status_page))
        .route(&at("/login"), get(login_form).post(login))
        .route(&at("/logout"), post(logout))
        .route(&at("/device"), get(device_form).post(device_decide))
        .with_state(ui)
}

/// `/`: browsers go to the UI; any other client gets what the tree
/// answers there.
async fn root(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if wants_html && req.method() == Method::GET {
        return redirect(&format!("{}/", ui.prefix));
    }
    match ui.app.clone().oneshot(req).await {
        Ok(res) => res,
        Err(never) => match never {},
    }
}

async fn to_index(State(ui): State<Arc<Ui>>) -> Response {
    redirect(&format!("{}/", ui.prefix))
}

async fn style() -> Response {
    let mut res = STYLE.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/css; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}

fn redirect(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

/// The request facts a page needs: the session's key, and what the API
/// needs to answer as it would answer the browser.
struct Caller {
    session: Option<String>,
    token: Option<String>,
    host: Option<HeaderValue>,
    peer: Option<ConnectInfo<SocketAddr>>,
}

impl Ui {
    fn caller(&self, headers: &HeaderMap, peer: Option<ConnectInfo<SocketAddr>>) -> Caller {
        let session = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(session::from_cookie_header)
            .map(str::to_owned);
        let token = session
            .as_deref()
            .and_then(|id| self.sessions.token(id, unix_now()));
        Caller {
            session,
            token,
            host: headers.get(header::HOST).cloned(),
            peer,
        }
    }

    /// `GET path` on the API in-process, as `caller`; the JSON body.
    async fn api(&self, caller: &Caller, path: &str) -> Result<Value, UiError> {
        self.api_with(caller, path, caller.token.as_deref()).await
    }

    async fn api_with(
        &self,
        caller: &Caller,
        path: &str,
        token: Option<&str>,
    ) -> Result<Value, UiError> {
        self.api_request(caller, axum::http::Method::GET, path, token, None)
            .await
    }

    /// `POST path` with a JSON body on the API in-process, as `caller`.
    async fn api_post(&self, caller: &Caller, path: &str, body: Value) -> Result<Value, UiError> {
        let token = caller.token.clone();
        self.api_request(
            caller,
            axum::http::Method::POST,
            path,
            token.as_deref(),
            Some(body),
        )
        .await
    }

    async fn api_request(
        &self,
        caller: &Caller,
        method: axum::http::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, UiError> {
        let body_error = |why: String| UiError::Body {
            path: path.to_owned(),
            why,
        };
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json")
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .map_err(|e| body_error(e.to_string()))?;
        let h = req.headers_mut();
        if let Some(host) = &caller.host {
            h.insert(header::HOST, host.clone());
        }
        if let Some(t) = token.and_then(|t| HeaderValue::from_str(t).ok()) {
            h.insert(header::AUTHORIZATION, t);
        }
        // The API's failed-authentication limiter counts by client address.
        if let Some(peer) = caller.peer {
            req.extensions_mut().insert(peer);
        }
        let res = match self.app.clone().oneshot(req).await {
            Ok(res) => res,
            Err(never) => match never {},
        };
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), MAX_API_BODY)
            .await
            .map_err(|e| body_error(e.to_string()))?;
        if status == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| body_error(e.to_string()))?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(UiError::Api {
                status,
                message: value
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the API refused")
                    .to_owned(),
            })
        }
    }

    /// The repositories this caller may see, for the repository picker.
    async fn repos(&self, caller: &Caller) -> Vec<Value> {
        match self.api(caller, "/api/repos").await {
            Ok(Value::Array(repos)) => repos,
            _ => Vec::new(),
        }
    }

    fn render(&self, template: &'static str, caller: &Caller, page: Value) -> Response {
        let ctx = json!({
            "prefix": self.prefix,
            "signed_in": caller.token.is_some(),
            "page": page,
        });
        let html = self
            .templates
            .get_template(template)
            .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
            .map_err(|source| UiError::Template { template, source });
        match html {
            Ok(html) => html_response(StatusCode::OK, html),
            Err(e) => self.error_page(caller, &e),
        }
    }

    /// The page `template` shows `made`, or the error page.
    fn page(
        &self,
        template: &'static str,
        caller: &Caller,
        made: Result<Value, UiError>,
    ) -> Response {
        match made {
            Ok(p) => self.render(template, caller, p),
            Err(e) => self.error_page(caller, &e),
        }
    }

    fn error_page(&self, caller: &Caller, e: &UiError) -> Response {
        let status = e.status();
        if status.is_server_error() {
            tracing::error!(route = "ui", "{e}");
        }
        let ctx = json!({
            "prefix": self.prefix,
            "signed_in": caller.token.is_some(),
            "page": {"status": status.as_u16(), "message": e.to_string(),
                     "hint_sign_in": caller.token.is_none() && matches!(status.as_u16(), 401 | 403 | 404)},
        });
        let html = self
            .templates
            .get_template("error.html")
            .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
            .unwrap_or_else(|_| "error".to_owned());
        html_response(status, html)
    }
}

/// The headers of every page: pages may hold a private repository's
/// packages (never cached), and carry no script (none may run).
const PAGE_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::CONTENT_TYPE, "text/html; charset=utf-8"),
    (header::CACHE_CONTROL, "no-store"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "same-origin"),
];

fn html_response(status: StatusCode, html: String) -> Response {
    let mut res = (status, html).into_response();
    for (name, value) in PAGE_HEADERS {
        res.headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    res
}

/// The connection's address, when the server recorded it.
struct Peer(Option<ConnectInfo<SocketAddr>>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts.extensions.get::<ConnectInfo<SocketAddr>>().copied(),
        ))
    }
}
type Params = Query<BTreeMap<String, String>>;

impl Ui {
    /// A redirect to the list that sets the session cookie to `id` for
    /// `max_age` seconds (0 removes it).
    fn home_setting_cookie(&self, id: &str, max_age: u64) -> Response {
        let mut res = redirect(&format!("{}/", self.prefix));
        let cookie = format!(
            "{COOKIE}={id}; Path={}; HttpOnly; SameSite=Strict; Max-Age={max_age}",
            self.prefix
        );
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            res.headers_mut().insert(header::SET_COOKIE, v);
        }
        res
    }

    /// The API prefix for repository `repo` (the mirror's when `None`).
    fn api_base(&self, repo: Option<&str>) -> String {
        format!("/api/repos/{}", repo.unwrap_or(&self.mirror))
    }

    /// The `repo` query parameter, checked; `None` for the mirror's.
    fn repo_param<'a>(&self, q: &'a BTreeMap<String, String>) -> Result<Option<&'a str>, UiError> {
        q.get("repo")
            .map(String::as_str)
            .filter(|r| !r.is_empty() && *r != self.mirror)
            .map(|r| checked("repository", r, view::valid_name(r)))
            .transpose()
    }
}

/// A name from the URL, checked before it goes into an API path.
fn checked<'a>(what: &str, value: &'a str, ok: bool) -> Result<&'a str, UiError> {
    if ok {
        Ok(value)
    } else {
        Err(UiError::Api {
            status: StatusCode::NOT_FOUND,
            message: format!("no {what} {value:?} here"),
        })
    }
}

async fn list(
    State(ui): State<Arc<Ui>>,
    Peer(peer): Peer,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    let caller = ui.caller(&headers, peer);
    let page = async {
        let repo = ui.repo_param(&q)?;
        let search = q.get("q").map(String::as_str).unwrap_or("").trim();
        let sort = view::Sort::parse(q.get("sort").map(String::as_str));
        let number = q
            .get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| (1..=10_000).contains(p))
            .unwrap_or(1);
        let path = format!(
            "{}/packages?search={}&sort={}&page={number}",
            ui.api_base(repo),
            view::encode(search),
            sort.api()
        );
        let found = ui.api(&caller, &path).await?;
        let repos = ui.repos(&caller).await;
        Ok::<_, UiError>(view::list(
            &ui.prefix,
            &ui.mirror,
            repo,
            view::Listing {
                search,
                sort,
                page: number,
            },
            &found,
            &repos,
        ))
    };
    ui.page("list.html", &caller, page.await)
}

async fn package(
    State(ui): State<Arc<Ui>>,
    Peer(peer): Peer,
    Path(name): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    let caller = ui.caller(&headers, peer);
    let page = async {
        let repo = ui.repo_param(&q)?;
        let name = checked("package", &name, view::valid_name(&name))?;
        let base = ui.api_base(repo);
        let pkg = ui.api(&caller, &format!("{base}/packages/{name}")).await?;
        let shown = pkg
            .get("latest_stable_version")
            .and_then(Value::as_str)
            .or_else(|| pkg.get("latest_version").and_then(Value::as_str))
            .filter(|v| crate::registry::is_valid_version(v))
            .map(str::to_owned);
        let release = match &shown {
            Some(v) => Some(
                ui.api(&caller, &format!("{base}/packages/{name}/releases/{v}"))
                    .await?,
            ),
            None => None,
        };
        // Hosted packages have no dependents in the mirror: none to list.
        let dependents = ui
            .api(
                &caller,
                &format!("{base}/packages/{name}/dependents?limit=100"),
            )
            .await
            .unwrap_or(Value::Null);
        let repo_name = pkg.get("repository").and_then(Value::as_str).unwrap_or("");
        let repo_info = if view::valid_name(repo_name) {
            ui.api(&caller, &format!("/api/repos/{repo_name}"))
                .await
                .unwrap_or(Value::Null)
        } else {
            Value::Null
        };
        Ok::<_, UiError>(view::package(
            &ui.prefix,
            repo,
            &pkg,
            release.as_ref(),
            &dependents,
            &repo_info,
            &base_url(&caller),
        ))
    };
    ui.page("package.html", &caller, page.await)
}

async fn release(
    State(ui): State<Arc<Ui>>,
    Peer(peer): Peer,
    Path((name, version)): Path<(String, String)>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    let caller = ui.caller(&headers, peer);
    let page = async {
        let repo = ui.repo_param(&q)?;
        let name = checked("package", &name, view::valid_name(&name))?;
        let version = checked(
            "version",
            &version,
            crate::registry::is_valid_version(&version),
        )?;
        let base = ui.api_base(repo);
        let rel = ui
            .api(
                &caller,
                &format!("{base}/packages/{name}/releases/{version}"),
            )
            .await?;
        let pkg = ui.api(&caller, &format!("{base}/packages/{name}")).await?;
        Ok::<_, UiError>(view::release(&ui.prefix, repo, name, &pkg, &rel))
    };
    ui.page("release.html", &caller, page.await)
}

async fn status_page(State(ui): State<Arc<Ui>>, Peer(peer): Peer, headers: HeaderMap) -> Response {
    let caller = ui.caller(&headers, peer);
    let page = async {
        let read = Arc::clone(&ui.status);
        let status = tokio::task::spawn_blocking(move || read()).await?;
        let stats = ui
            .api(&caller, &format!("{}/stats", ui.api_base(None)))
            .await
            .unwrap_or(Value::Null);
        Ok::<_, UiError>(view::status(&status, &stats))
    };
    ui.page("status.html", &caller, page.await)
}

async fn login_form(State(ui): State<Arc<Ui>>, Peer(peer): Peer, headers: HeaderMap) -> Response {
    let caller = ui.caller(&headers, peer);
    ui.render("login.html", &caller, json!({}))
}

/// The sign-in form's body: an API key, or a user name and password.
#[derive(serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Whether a form post comes from this site: a browser sends `Origin` on
/// every POST, and SameSite cookies alone do not cover the sign-in itself.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest == host)
}

async fn login(
    State(ui): State<Arc<Ui>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let caller = ui.caller(&headers, peer);
    if !same_origin(&headers) {
        let e = UiError::Api {
            status: StatusCode::FORBIDDEN,
            message: "sign-in refused: the form was posted from another site".into(),
        };
        return ui.error_page(&caller, &e);
    }
    // The API decides whether the key or password is good (and counts
    // failures by client address, as it does for every client). A
    // password gets a key for 12 hours, revoked when the user signs out.
    let (token, checked) = if form.username.trim().is_empty() {
        let token = form.token.trim().to_owned();
        let checked = ui.api_with(&caller, "/api/auth", Some(&token)).await;
        (token, checked)
    } else {
        let body = json!({"username": form.username.trim(), "password": form.password});
        match ui
            .api_request(
                &caller,
                axum::http::Method::POST,
                "/api/sessions",
                None,
                Some(body),
            )
            .await
        {
            Ok(key) => (
                key.get("secret")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                Ok(Value::Null),
            ),
            Err(e) => (String::new(), Err(e)),
        }
    };
    if let Err(e) = checked {
        let mut res = ui.render(
            "login.html",
            &caller,
            json!({"error": match &e {
                UiError::Api { status, .. } if *status == StatusCode::NOT_FOUND =>
                    "this server hosts no repository of its own: there is nothing to sign in to".to_owned(),
                _ => e.to_string(),
            }}),
        );
        *res.status_mut() = match &e {
            UiError::Api { status, .. } if status.is_client_error() => *status,
            _ => StatusCode::UNAUTHORIZED,
        };
        return res;
    }
    let id = ui.sessions.open(token, unix_now());
    tracing::info!(route = "ui login", "signed in");
    ui.home_setting_cookie(&id, SESSION_TTL)
}

async fn logout(State(ui): State<Arc<Ui>>, Peer(peer): Peer, headers: HeaderMap) -> Response {
    let caller = ui.caller(&headers, peer);
    if caller.token.is_some() {
        // A key made by a password sign-in ends with the session; the API
        // leaves any other key alone.
        let _ = ui
            .api_request(
                &caller,
                axum::http::Method::DELETE,
                "/api/sessions",
                caller.token.as_deref(),
                None,
            )
            .await;
    }
    if let Some(id) = &caller.session {
        ui.sessions.close(id);
    }
    ui.home_setting_cookie("", 0)
}

/// The device page: a signed-in user confirms the code `mix hex.user auth`
/// shows, and approves (the device gets this session key's rights for an
/// hour at a time, renewable) or denies.
async fn device_form(
    State(ui): State<Arc<Ui>>,
    Peer(peer): Peer,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    let caller = ui.caller(&headers, peer);
    let code = q.get("user_code").cloned().unwrap_or_default();
    if caller.token.is_none() {
        let mut res = ui.render(
            "device.html",
            &caller,
            json!({"user_code": code, "error": "sign in first, with your API key, then open this page again"}),
        );
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        return res;
    }
    if code.is_empty() {
        return ui.render("device.html", &caller, json!({"user_code": ""}));
    }
    let path = format!(
        "/api/oauth/device?user_code={}",
        percent_encoding::utf8_percent_encode(&code, percent_encoding::NON_ALPHANUMERIC)
    );
    match ui.api(&caller, &path).await {
        Ok(pending) => ui.render(
            "device.html",
            &caller,
            json!({"user_code": code, "pending": pending}),
        ),
        Err(e) => ui.error_page(&caller, &e),
    }
}

/// The device form's body.
#[derive(serde::Deserialize)]
struct DeviceForm {
    user_code: String,
    decision: String,
}

async fn device_decide(
    State(ui): State<Arc<Ui>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Form(form): Form<DeviceForm>,
) -> Response {
    let caller = ui.caller(&headers, peer);
    if !same_origin(&headers) || caller.token.is_none() {
        let e = UiError::Api {
            status: StatusCode::FORBIDDEN,
            message: "refused: sign in on this site, then decide here".into(),
        };
        return ui.error_page(&caller, &e);
    }
    let approve = form.decision == "approve";
    let body = json!({"user_code": form.user_code, "approve": approve});
    match ui.api_post(&caller, "/api/oauth/device", body).await {
        Ok(_) => ui.render(
            "device.html",
            &caller,
            json!({"done": if approve { "approved" } else { "denied" }}),
        ),
        Err(e) => ui.error_page(&caller, &e),
    }
}

/// `http://host` as the browser addressed us, for install lines.
fn base_url(caller: &Caller) -> String {
    let host = caller
        .host
        .as_ref()
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    format!("http://{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_compile() {
        let env = environment();
        for (name, _) in TEMPLATES {
            env.get_template(name).unwrap();
        }
    }

    #[test]
    fn a_post_from_another_site_is_not_same_origin() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("mirror:8080"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://mirror:8080"),
        );
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil"));
        assert!(!same_origin(&h));
    }
}
