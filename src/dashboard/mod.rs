//! A web dashboard: queues, instances and their histories, and operator
//! actions, as server-rendered HTML (no JavaScript, nothing fetched from
//! the network; one inline style sheet).
//!
//! [`scope`](crate::dashboard::scope) returns an actix-web
//! [`Scope`](actix_web::Scope) to mount in your own
//! [`App`](actix_web::App), under the path of your choice: your app's
//! middleware (its authentication first) wraps it like any other route.
//! `pgwake dashboard --bind 127.0.0.1:9090` serves it alone.
//!
//! ```no_run
//! use actix_web::{App, HttpServer};
//! use pgwake::dashboard::{self, DashboardOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = pgwake::Store::connect("postgres://app@db.internal/app", Default::default()).await?;
//! HttpServer::new(move || {
//!     App::new().service(dashboard::scope(
//!         "/pgwake",
//!         store.clone(),
//!         DashboardOptions::new().read_only(true),
//!     ))
//! })
//! .bind(("127.0.0.1", 8080))?
//! .run()
//! .await?;
//! # Ok(()) }
//! ```
//!
//! The pages:
//! - `/` the overview: for each queue with active work or executions
//!   finished in the last hour, active instances, claimable and running
//!   workflow tasks, ready and running activities, what is scheduled later,
//!   failing workflow tasks, executions finished and failed in the last
//!   hour; a chart of the executions finished per minute over the last 30
//!   minutes and their mean time from start to end; the listener
//!   connections PostgreSQL sees and how full its notification queue is.
//! - `/instances` the executions, newest first, filtered by state, queue,
//!   workflow, id prefix and creation or finish time, paged by key; those
//!   whose workflow task keeps failing are highlighted.
//! - `/instances/{id}` one instance: its history as a timeline, its pending
//!   events and timers, its activities in flight, its parent and children,
//!   its result or error, and the actions.
//!
//! The actions (cancel, signal, retry a failing workflow task now, remove a
//! finished instance) are `POST` forms, each with a confirmation box to
//! tick; each is logged (`tracing`, at info, naming the action and the
//! instance, never a payload). With
//! [`DashboardOptions::read_only`](crate::dashboard::DashboardOptions::read_only())
//! they are neither shown nor accepted (403).
//!
//! With an
//! [`access_token`](crate::dashboard::DashboardOptions::access_token()),
//! every request must carry it: as `Authorization: Bearer <token>`, or once as
//! `?token=<token>`, which sets a cookie (`HttpOnly`, `SameSite=Strict`,
//! scoped to the dashboard's path) that carries it from then on. Any other
//! request gets 401. A form posted from another site (an `Origin` header
//! naming another host) is refused with 403 whatever the token.

mod actions;
mod html;
mod pages;
mod queries;

use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse, ResponseError};

use crate::error::StoreError;
use crate::{RuntimeHandle, Store};

/// Settings of the dashboard.
///
/// Non-exhaustive: build one with [`DashboardOptions::new`] (or
/// `default()`) and its setters.
///
/// ```
/// use pgwake::dashboard::DashboardOptions;
/// let options = DashboardOptions::new().read_only(true).access_token("s3cret");
/// assert!(options.read_only);
/// assert_eq!(options.access_token.as_deref(), Some("s3cret"));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct DashboardOptions {
    /// Show no actions and refuse them (403). Default `false`.
    pub read_only: bool,
    /// When set, every request must carry this token (see the
    /// [module's guide](self)). Default `None`: the dashboard relies on the
    /// app that mounts it, or on listening on loopback only.
    pub access_token: Option<String>,
    /// The runtime of the process serving the dashboard, if it runs one:
    /// the overview then shows its listeners' states and its workers'
    /// health, which the database cannot tell. Default `None`.
    pub runtime: Option<RuntimeHandle>,
}

// By hand, so that the token never reaches a log line.
impl std::fmt::Debug for DashboardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardOptions")
            .field("read_only", &self.read_only)
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<redacted>"),
            )
            .field("runtime", &self.runtime.is_some())
            .finish()
    }
}

impl DashboardOptions {
    /// Actions allowed, no token.
    ///
    /// ```
    /// let options = pgwake::dashboard::DashboardOptions::new();
    /// assert!(!options.read_only && options.access_token.is_none());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the actions are refused.
    ///
    /// ```
    /// assert!(pgwake::dashboard::DashboardOptions::new().read_only(true).read_only);
    /// ```
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The token every request must carry.
    ///
    /// ```
    /// let options = pgwake::dashboard::DashboardOptions::new().access_token("s3cret");
    /// assert!(options.access_token.is_some());
    /// ```
    pub fn access_token(mut self, token: impl Into<String>) -> Self {
        self.access_token = Some(token.into());
        self
    }

    /// Shows this process's listeners and workers on the overview.
    ///
    /// ```no_run
    /// # async fn f(config: pgwake::RuntimeConfig) -> Result<(), pgwake::RuntimeError> {
    /// let runtime = pgwake::Runtime::builder(config).start().await?;
    /// let options = pgwake::dashboard::DashboardOptions::new().runtime(runtime.clone());
    /// # Ok(()) }
    /// ```
    pub fn runtime(mut self, runtime: RuntimeHandle) -> Self {
        self.runtime = Some(runtime);
        self
    }
}

/// The dashboard as an actix-web scope mounted at `path` (`"/pgwake"`, or
/// `"/"` for the root), reading and acting through `store`.
///
/// ```no_run
/// # fn f(store: pgwake::Store) {
/// use pgwake::dashboard::{scope, DashboardOptions};
/// let dashboard = scope("/ops/workflows", store, DashboardOptions::new());
/// let app = actix_web::App::new().service(dashboard);
/// # }
/// ```
pub fn scope(path: &str, store: Store, options: DashboardOptions) -> actix_web::Scope {
    let base = path.trim_end_matches('/').to_string();
    let state = web::Data::new(Dashboard {
        store,
        options,
        base: base.clone(),
    });
    web::scope(&base)
        .app_data(state)
        .route("", web::get().to(pages::overview))
        .route("/", web::get().to(pages::overview))
        .route("/instances", web::get().to(pages::instances))
        .route("/instances/{id}", web::get().to(pages::instance))
        .route("/instances/{id}/cancel", web::post().to(actions::cancel))
        .route("/instances/{id}/signal", web::post().to(actions::signal))
        .route("/instances/{id}/retry", web::post().to(actions::retry))
        .route("/instances/{id}/remove", web::post().to(actions::remove))
}

/// What every handler shares.
pub(crate) struct Dashboard {
    pub(crate) store: Store,
    pub(crate) options: DashboardOptions,
    /// The mount path without its trailing slash (`""` at the root), the
    /// start of every link.
    pub(crate) base: String,
}

/// The name of the cookie that carries the access token.
const TOKEN_COOKIE: &str = "pgwake_dashboard_token";

/// Proof that a request may see the dashboard: extracting it checks the
/// access token. Every handler takes one, so none can forget the check.
pub(crate) struct Authorized {
    /// `Set-Cookie` to send back, when the token came in the query.
    pub(crate) set_cookie: Option<String>,
}

impl FromRequest for Authorized {
    type Error = DashboardError;
    type Future = Ready<Result<Self, DashboardError>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(authorize(request))
    }
}

fn authorize(request: &HttpRequest) -> Result<Authorized, DashboardError> {
    let dashboard = dashboard_of(request)?;
    let Some(expected) = dashboard.options.access_token.as_deref() else {
        return Ok(Authorized { set_cookie: None });
    };
    let header = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if header.is_some_and(|given| same_secret(given, expected)) {
        return Ok(Authorized { set_cookie: None });
    }
    let cookie = request
        .headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value);
    if cookie.is_some_and(|given| same_secret(given, expected)) {
        return Ok(Authorized { set_cookie: None });
    }
    let query = web::Query::<TokenQuery>::from_query(request.query_string())
        .ok()
        .and_then(|query| query.into_inner().token);
    if query.is_some_and(|given| same_secret(&given, expected)) {
        // Only the URL-safe part of a token can be put in a cookie as it
        // is; a token with other bytes must come in the header.
        let cookie_safe = expected
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.~+/=".contains(&b));
        let path = if dashboard.base.is_empty() {
            "/"
        } else {
            &dashboard.base
        };
        return Ok(Authorized {
            set_cookie: cookie_safe.then(|| {
                format!("{TOKEN_COOKIE}={expected}; Path={path}; HttpOnly; SameSite=Strict")
            }),
        });
    }
    Err(DashboardError::Unauthorized)
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Compares a given secret with the expected one in time that depends on
/// their lengths only, so that response times do not reveal how much of a
/// guessed token was right.
fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |differences, (a, b)| differences | (a ^ b))
            == 0
}

/// The dashboard's shared state, from the request.
pub(crate) fn dashboard_of(request: &HttpRequest) -> Result<Arc<Dashboard>, DashboardError> {
    request
        .app_data::<web::Data<Dashboard>>()
        .map(|data| data.clone().into_inner())
        .ok_or(DashboardError::NotMounted)
}

/// Why a dashboard request failed; each is answered with an HTML page
/// saying so, with the matching status.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DashboardError {
    /// The access token is missing or wrong.
    #[error(
        "this dashboard needs its access token: send `Authorization: Bearer <token>` \
         or open it once with ?token=<token>"
    )]
    Unauthorized,
    /// An action in read-only mode, or a form posted from another site.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A filter or form field the dashboard cannot use.
    #[error("{0}")]
    BadRequest(String),
    /// No such instance.
    #[error("no instance {0:?}")]
    NotFound(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The handler ran outside [`scope`] (a bug of ours).
    #[error("the dashboard's state is missing: mount it with pgwake::dashboard::scope")]
    NotMounted,
}

impl DashboardError {
    /// A store error that is the operator's input rather than a failure:
    /// a malformed time in a filter (SQLSTATE class 22, data exception),
    /// an id the store refuses, an instance that is not there.
    fn classify(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) | Self::Store(StoreError::NotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Store(StoreError::Database { source, .. })
                if source
                    .code()
                    .is_some_and(|code| code.code().starts_with("22")) =>
            {
                StatusCode::BAD_REQUEST
            }
            Self::Store(
                StoreError::InvalidId { .. }
                | StoreError::PayloadTooLarge { .. }
                | StoreError::InvalidQueueName { .. },
            ) => StatusCode::BAD_REQUEST,
            Self::Store(StoreError::NotFinished { .. }) => StatusCode::CONFLICT,
            Self::Store(_) | Self::NotMounted => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ResponseError for DashboardError {
    fn status_code(&self) -> StatusCode {
        self.classify()
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        let body = html::error_page(
            status.canonical_reason().unwrap_or("Error"),
            &self.to_string(),
        );
        let mut response = HttpResponse::build(status);
        if status == StatusCode::UNAUTHORIZED {
            response.insert_header(("WWW-Authenticate", "Bearer"));
        }
        response
            .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
            .content_type("text/html; charset=utf-8")
            .body(body)
    }
}

/// What a page may load: nothing but its inline style, so that markup
/// that got past escaping still could not run a script, and forms post
/// only to the dashboard's own origin.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'";

/// An HTML page as a response, setting the token cookie when the request
/// brought the token in its query.
pub(crate) fn page(auth: &Authorized, body: String) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let Some(cookie) = &auth.set_cookie {
        response.insert_header((actix_web::http::header::SET_COOKIE, cookie.as_str()));
    }
    response
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .content_type("text/html; charset=utf-8")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let options = DashboardOptions::new().access_token("s3cret");
        assert!(!format!("{options:?}").contains("s3cret"));
    }
}
