//! An actix-web service and the pgwake runtime in one actix `System`: an
//! HTTP API that starts order workflows (validate -> charge -> wait -> ship,
//! written with [`pgwake::workflow`]), reads them, expedites them (a signal),
//! cancels them (the workflow refunds, then ends as canceled), awaits their
//! results, and reports health and Prometheus metrics.
//!
//! ```sh
//! cargo run --example actix_web_service            # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example actix_web_service
//!
//! curl -si localhost:8080/orders -H 'content-type: application/json' -d '{"item": "book", "cents": 500}'
//! curl -s  localhost:8080/orders/ID
//! curl -si -X POST localhost:8080/orders/ID/expedite
//! curl -si -X POST localhost:8080/orders/ID/cancel
//! curl -s  'localhost:8080/orders/ID/result?wait_ms=5000'
//! curl -s  localhost:8080/health
//! curl -s  localhost:8080/metrics
//! ```
//!
//! Settings (environment): `BIND_ADDR` (default `127.0.0.1:8080`),
//! `SHIP_DELAY_MS` (the wait between charge and ship, default 500),
//! `CHARGE_FAILURES` (how many attempts of each charge the stand-in payment
//! gateway refuses before it accepts, default 0: set 2 to watch the retries
//! in an order's history), `HEALTH_GRACE_MS` (how long a listener may be
//! down before `/health` answers 503, default 10000; a stuck worker makes it
//! 503 at once), `RUST_LOG` (default `info`).
//!
//! SIGTERM or SIGINT stops the HTTP server first (requests in flight finish),
//! then the runtime (running activities finish or give their leases back).
//!
//! The service is built by [`serve`], which `tests/actix_web_service.rs`
//! calls too; `main` only adds the database, the logs and the signals.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::http::header::LOCATION;
use actix_web::http::StatusCode;
use actix_web::{error::JsonPayloadError, middleware, web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, ActivityOptions, Client, ClientError, RetryPolicy,
    StartOptions, WorkflowContext, WorkflowError, Workflows,
};
use pgwake::{
    CancelOutcome, Event, InstanceState, ListenerState, Queue, Runtime, RuntimeConfig,
    RuntimeHandle, ShutdownReport, StoreError,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::Instrument;

/// Where order workflows run.
pub const ORDER_QUEUE: &str = "orders";
/// Where their activities run.
pub const ACTIVITY_QUEUE: &str = "order-activities";
/// The name the order workflow is registered and started as.
pub const ORDER_WORKFLOW: &str = "order";
/// The most `GET /orders/{id}/result` waits.
const MAX_RESULT_WAIT: Duration = Duration::from_secs(30);

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP address (port 0: any free port; [`Service::addr`] says which).
    pub bind: String,
    /// The runtime's settings, database URL included.
    pub runtime: RuntimeConfig,
    /// The wait between charge and ship.
    pub ship_delay: Duration,
    /// How many attempts of each charge the stand-in gateway refuses.
    pub charge_failures: u32,
    /// How long a listener may be out of `Listening` before `/health` says 503.
    pub health_grace: Duration,
    /// How long shutdown waits for requests, then for activities, to finish.
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Defaults for `database_url`.
    pub fn new(database_url: &str) -> Self {
        Self {
            bind: "127.0.0.1:8080".to_string(),
            runtime: RuntimeConfig::new(database_url),
            ship_delay: Duration::from_millis(500),
            charge_failures: 0,
            health_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Defaults, overridden by `BIND_ADDR`, `SHIP_DELAY_MS`, `CHARGE_FAILURES`
    /// and `HEALTH_GRACE_MS`.
    pub fn from_env(database_url: &str) -> Result<Self, String> {
        let number = |name: &str| match std::env::var(name) {
            Ok(value) => value
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("{name} must be a whole number, not {value:?}")),
            Err(_) => Ok(None),
        };
        let mut config = Self::new(database_url);
        if let Ok(bind) = std::env::var("BIND_ADDR") {
            config.bind = bind;
        }
        if let Some(ms) = number("SHIP_DELAY_MS")? {
            config.ship_delay = Duration::from_millis(ms.into());
        }
        if let Some(failures) = number("CHARGE_FAILURES")? {
            config.charge_failures = failures;
        }
        if let Some(ms) = number("HEALTH_GRACE_MS")? {
            config.health_grace = Duration::from_millis(ms.into());
        }
        Ok(config)
    }
}

/// A running service: the HTTP server (already accepting) and the runtime.
pub struct Service {
    /// The address the server listens on.
    pub addr: SocketAddr,
    /// The runtime (its store, health, shutdown).
    pub runtime: RuntimeHandle,
    server: ServerHandle,
    running: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    shutdown_timeout: Duration,
}

impl Service {
    /// Stops accepting, lets requests in flight finish, then shuts the
    /// runtime down (activities finish or give their leases back).
    pub async fn stop(self) -> ShutdownReport {
        tracing::info!("stopping the HTTP server");
        self.server.stop(true).await;
        let _ = self.running.await;
        tracing::info!("HTTP server stopped; stopping the pgwake runtime");
        self.runtime.shutdown(self.shutdown_timeout).await
    }
}

/// Starts the runtime with the order workers, then the HTTP server, in the
/// current actix `System`. The database must be migrated.
pub async fn serve(config: Config) -> Result<Service, Box<dyn std::error::Error>> {
    // Both before the runtime starts: a port in use fails at once, and none
    // of the runtime's metrics is lost.
    let listener = std::net::TcpListener::bind(&config.bind)
        .map_err(|err| format!("cannot listen on {}: {err}", config.bind))?;
    let addr = listener.local_addr()?;
    let metrics = prometheus()?;
    let runtime = Runtime::builder(config.runtime.clone())
        .workflow_worker(workflows().worker([ORDER_QUEUE]).concurrency(4))
        .activity_worker(
            activities(config.charge_failures)
                .worker([ACTIVITY_QUEUE])
                .concurrency(8),
        )
        .start()
        .await?;

    let state = web::Data::new(AppState {
        client: Client::new(runtime.store().clone()),
        runtime: runtime.clone(),
        ship_delay: config.ship_delay,
        health_grace: config.health_grace,
        metrics,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().error_handler(json_error))
            .wrap(middleware::Logger::default())
            .wrap_fn(trace_request)
            .route("/orders", web::post().to(create_order))
            .route("/orders/{id}", web::get().to(get_order))
            .route("/orders/{id}/expedite", web::post().to(expedite_order))
            .route("/orders/{id}/cancel", web::post().to(cancel_order))
            .route("/orders/{id}/result", web::get().to(order_result))
            .route("/health", web::get().to(health))
            .route("/metrics", web::get().to(metrics_text))
    })
    // main handles the signals: the runtime must stop after the server.
    .disable_signals()
    .shutdown_timeout(config.shutdown_timeout.as_secs().max(1))
    .listen(listener)?;
    let server: Server = server.run();
    let handle = server.handle();
    Ok(Service {
        addr,
        runtime,
        server: handle,
        running: actix_web::rt::spawn(server),
        shutdown_timeout: config.shutdown_timeout,
    })
}

/// Runs each request in a `request` span. A workflow started while it is
/// current remembers its trace context (with pgwake's `opentelemetry`
/// feature and a tracing-opentelemetry layer installed), so the workflow's
/// task and activity spans, wherever they run, join the request's trace.
/// Without such a layer the span only labels the request's log lines.
fn trace_request<S, B>(
    request: ServiceRequest,
    service: &S,
) -> impl std::future::Future<Output = Result<ServiceResponse<B>, actix_web::Error>>
where
    S: actix_web::dev::Service<
        ServiceRequest,
        Response = ServiceResponse<B>,
        Error = actix_web::Error,
    >,
{
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.path(),
    );
    service.call(request).instrument(span)
}

/// One Prometheus recorder per process (the `metrics` facade has one global
/// recorder), shared by every [`serve`] of the process.
fn prometheus() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .install_recorder()
                .map_err(|err| format!("cannot install the Prometheus recorder: {err}"))?;
            // HELP lines and units for pgwake's metrics (feature `metrics`).
            pgwake::metrics::describe();
            Ok(handle)
        })
        .clone()
}

// ---------------------------------------------------------------------------
// The workflow and its activities
// ---------------------------------------------------------------------------

/// An order, as `POST /orders` takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// What was ordered.
    pub item: String,
    /// Its price in cents.
    pub cents: u64,
}

/// What an order workflow starts with. The wait before shipping travels
/// with the order rather than being read from the configuration by the
/// workflow: a running order replays with the wait it started with, whatever
/// `SHIP_DELAY_MS` says after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OrderInput {
    /// The order.
    pub order: Order,
    /// The wait between charge and ship.
    pub ship_delay_ms: u64,
}

/// What a shipped order completes with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shipped {
    /// The parcel's tracking number.
    pub tracking: String,
}

/// What the payment activities take.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payment {
    /// The order paid for: the payment service's idempotency key.
    pub order_id: String,
    /// How much.
    pub cents: u64,
}

/// The largest charge the stand-in payment gateway accepts.
pub const CHARGE_LIMIT_CENTS: u64 = 1_000_000;

/// The order workflows, registered for a worker.
pub fn workflows() -> Workflows {
    Workflows::new().register(ORDER_WORKFLOW, order_workflow)
}

/// The order workflow. It runs again from the top over the order's history
/// at every step, so everything it learns from outside comes through `ctx`.
pub async fn order_workflow(
    ctx: WorkflowContext,
    input: OrderInput,
) -> Result<Shipped, WorkflowError> {
    let _: () = ctx
        .activity_with("validate", &input.order, on_activity_queue())
        .await?;
    match charge_and_ship(&ctx, &input).await {
        // Canceled while charging, waiting or shipping: what the order
        // waited for ended with a "canceled" error, and this code goes on.
        // An abandoned activity runs on, so the charge may yet go through:
        // refund what this order was charged (the refund is keyed by the
        // order, so it refunds at most once, and nothing if nothing was
        // charged), then end as canceled.
        Err(err) if err.is_canceled() => {
            let order_id = ctx.instance().instance_id;
            let _: () = ctx
                .activity_with("refund", &order_id, on_activity_queue())
                .await?;
            Err(err)
        }
        other => other,
    }
}

async fn charge_and_ship(
    ctx: &WorkflowContext,
    input: &OrderInput,
) -> Result<Shipped, WorkflowError> {
    let payment = Payment {
        order_id: ctx.instance().instance_id,
        cents: input.order.cents,
    };
    let _charged: u64 = ctx
        .activity_with("charge", &payment, charge_options())
        .await?;
    // Charged: wait before shipping, unless the customer expedites the
    // order. The timer is a row in the database: it fires even if this
    // process restarts meanwhile.
    let mut expedite = ctx.signal_channel::<()>("expedite");
    let mut wait = ctx.timer(Duration::from_millis(input.ship_delay_ms));
    futures::select_biased! {
        expedited = expedite.recv() => expedited?,
        fired = wait => fired?,
    }
    // Expedited: the timer's row goes (nothing happens if it fired).
    wait.cancel();
    let tracking: String = ctx
        .activity_with("ship", &input.order, on_activity_queue())
        .await?;
    Ok(Shipped { tracking })
}

/// Every order activity runs on [`ACTIVITY_QUEUE`].
fn on_activity_queue() -> ActivityOptions {
    ActivityOptions::default().queue(Queue::new(ACTIVITY_QUEUE).expect("a valid queue name"))
}

/// The payment gateway may be briefly unavailable: try four times, 200 ms
/// then 400 ms, 800 ms apart. A declined card is final.
fn charge_options() -> ActivityOptions {
    on_activity_queue().retry(
        RetryPolicy::default()
            .max_attempts(4)
            .first_interval(Duration::from_millis(200))
            .max_interval(Duration::from_secs(5))
            .non_retryable(["declined"]),
    )
}

/// The activities: stand-ins for calls to a payment and a shipping service,
/// whose gateway refuses the first `charge_failures` attempts of each charge.
pub fn activities(charge_failures: u32) -> Activities {
    Activities::new()
        .register("validate", validate)
        .register("charge", move |ctx: ActivityContext, payment: Payment| {
            charge(ctx, payment, charge_failures)
        })
        .register("refund", refund)
        .register("ship", ship)
}

async fn validate(_: ActivityContext, order: Order) -> Result<(), ActivityError> {
    let refused = if order.item.trim().is_empty() {
        "the order has no item"
    } else if order.cents == 0 {
        "the order costs nothing"
    } else {
        return Ok(());
    };
    Err(ActivityError::new("invalid_order", refused).non_retryable())
}

async fn charge(
    ctx: ActivityContext,
    payment: Payment,
    failures: u32,
) -> Result<u64, ActivityError> {
    if ctx.attempt() <= failures {
        return Err(ActivityError::new(
            "gateway_unavailable",
            format!(
                "the payment gateway did not answer (attempt {})",
                ctx.attempt()
            ),
        ));
    }
    if payment.cents > CHARGE_LIMIT_CENTS {
        return Err(ActivityError::new("declined", "the card was declined")
            .with_details(json!({ "limit_cents": CHARGE_LIMIT_CENTS })));
    }
    tracing::info!(order = %payment.order_id, cents = payment.cents, attempt = ctx.attempt(), "charged");
    Ok(payment.cents)
}

async fn refund(_: ActivityContext, order_id: String) -> Result<(), ActivityError> {
    tracing::info!(order = %order_id, "refunded what the order was charged, if anything");
    Ok(())
}

async fn ship(ctx: ActivityContext, order: Order) -> Result<String, ActivityError> {
    tracing::info!(order = %ctx.instance().instance_id, item = %order.item, "shipped");
    Ok(format!("TRK-{}", ctx.activity_id()))
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

struct AppState {
    client: Client,
    runtime: RuntimeHandle,
    ship_delay: Duration,
    health_grace: Duration,
    metrics: PrometheusHandle,
}

/// `POST /orders`: starts an order workflow; 201 with its id.
async fn create_order(
    state: web::Data<AppState>,
    order: web::Json<Order>,
) -> Result<HttpResponse, ApiError> {
    let id = format!("order-{}", uuid::Uuid::new_v4());
    let input = OrderInput {
        order: order.into_inner(),
        ship_delay_ms: u64::try_from(state.ship_delay.as_millis()).unwrap_or(u64::MAX),
    };
    let options = StartOptions::default().queue(Queue::new(ORDER_QUEUE)?);
    state
        .client
        .start(ORDER_WORKFLOW, &id, &input, options)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/orders/{id}")))
        .json(json!({ "id": id })))
}

/// `GET /orders/{id}`: state, outcome, failing workflow tasks, history and
/// pending events; 404 if unknown.
async fn get_order(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, format!("no order {:?}", id.as_str()));
    let about = state.client.describe(&id).await?.ok_or_else(not_found)?;
    // Read after the description, so the history is at least as new.
    let snapshot = state
        .runtime
        .store()
        .instance(&id)
        .await?
        .ok_or_else(not_found)?;
    let events = |events: &[Event]| -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                json!({
                    "sequence_id": e.sequence_id,
                    "type": format!("{:?}", e.event_type),
                    "attributes": e.attributes,
                })
            })
            .collect()
    };
    Ok(HttpResponse::Ok().json(json!({
        "id": about.instance.instance_id,
        "workflow": about.workflow,
        "state": state_name(about.state),
        "outcome": about.outcome,
        "task_attempts": about.task_attempts,
        "last_task_error": about.last_task_error,
        "history": events(&snapshot.history),
        "pending": events(&snapshot.pending),
    })))
}

/// `POST /orders/{id}/expedite`: ships without waiting out the delay; 202,
/// 404 unless the order is running.
async fn expedite_order(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    state.client.signal(&id, "expedite", &()).await?;
    Ok(HttpResponse::Accepted().json(json!({ "id": *id, "expedite": "requested" })))
}

/// `POST /orders/{id}/cancel`: 202 when requested, 200 when already finished.
async fn cancel_order(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(match state.client.cancel(&id).await? {
        CancelOutcome::Requested => {
            HttpResponse::Accepted().json(json!({ "id": *id, "cancel": "requested" }))
        }
        CancelOutcome::AlreadyFinished => {
            HttpResponse::Ok().json(json!({ "id": *id, "cancel": "already finished" }))
        }
        // An outcome added by a later pgwake.
        _ => HttpResponse::Accepted().json(json!({ "id": *id, "cancel": "unknown" })),
    })
}

/// How long `GET /orders/{id}/result` waits.
#[derive(Debug, Deserialize)]
struct ResultWait {
    /// Milliseconds, at most [`MAX_RESULT_WAIT`]; 0 (the default) answers at once.
    #[serde(default)]
    wait_ms: u64,
}

/// `GET /orders/{id}/result?wait_ms=N`: waits up to N ms for the order to
/// end; 200 with `"state"` `completed` (and its result), `failed` (and its
/// error's kind, message and details) or `canceled`; 202 while it runs; 404
/// if unknown.
async fn order_result(
    state: web::Data<AppState>,
    id: web::Path<String>,
    wait: web::Query<ResultWait>,
) -> Result<HttpResponse, ApiError> {
    let wait = Duration::from_millis(wait.wait_ms).min(MAX_RESULT_WAIT);
    Ok(match state.client.result::<Shipped>(&id, wait).await {
        Ok(shipped) => HttpResponse::Ok().json(json!({
            "id": *id, "state": "completed", "result": shipped,
        })),
        Err(ClientError::Failed(err)) => HttpResponse::Ok().json(json!({
            "id": *id,
            "state": "failed",
            "error": { "kind": err.kind(), "message": err.message(), "details": err.details() },
        })),
        Err(ClientError::Canceled { .. }) => {
            HttpResponse::Ok().json(json!({ "id": *id, "state": "canceled" }))
        }
        Err(ClientError::Timeout { .. }) => {
            HttpResponse::Accepted().json(json!({ "id": *id, "state": "active" }))
        }
        Err(err) => return Err(err.into()),
    })
}

/// `GET /health`: listeners and per-queue counters; 503 once a listener has
/// been without `LISTEN` for longer than the grace period.
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let health = state.runtime.health();
    let mut healthy = true;
    let listeners: Vec<Value> = health
        .listeners
        .iter()
        .map(|l| {
            // Across every attempt and backoff in a row, not just the current state.
            let down_for = l.not_listening_for;
            healthy &= down_for.is_none_or(|down_for| down_for <= state.health_grace);
            let mut entry = json!({
                "channel": l.channel,
                "state": listener_state_name(&l.state),
                "seconds_in_state": l.for_how_long.as_secs_f64(),
                "seconds_not_listening": down_for.map(|d| d.as_secs_f64()),
                "reconnects": l.reconnects,
            });
            if let ListenerState::Backoff { attempt, retry_in } = &l.state {
                entry["attempt"] = json!(attempt);
                entry["retry_in_ms"] = json!(retry_in.as_millis() as u64);
            }
            entry
        })
        .collect();
    let queues: serde_json::Map<String, Value> = health
        .queues
        .iter()
        .map(|(queue, c)| {
            let counters = json!({
                "wakeups": c.wakeups, "polls": c.polls, "empty_polls": c.empty_polls,
                "claimed": c.claimed, "completed": c.completed, "failed": c.failed,
                "panicked": c.panicked, "leases_lost": c.leases_lost,
            });
            (queue.clone(), counters)
        })
        .collect();
    // A worker whose claim or recording ran past its deadline makes no
    // progress: as unhealthy as a listener that stays down.
    let workers: Vec<Value> = health
        .workers
        .iter()
        .map(|w| {
            healthy &= !w.stuck;
            json!({
                "worker": w.worker, "queues": w.queues, "stuck": w.stuck,
                "slots_used": w.slots_used, "concurrency": w.concurrency,
                "seconds_claiming": w.claiming_for.map(|d| d.as_secs_f64()),
                "seconds_recording": w.recording_for.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    let body = json!({
        "status": if healthy { "ok" } else { "degraded" },
        "listeners": listeners,
        "queues": queues,
        "workers": workers,
    });
    if healthy {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics`: Prometheus' text format.
async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

fn state_name(state: InstanceState) -> &'static str {
    match state {
        InstanceState::Active => "active",
        InstanceState::Finished => "finished",
        InstanceState::ContinuedAsNew => "continued_as_new",
        // A state added by a later pgwake.
        _ => "unknown",
    }
}

fn listener_state_name(state: &ListenerState) -> &'static str {
    match state {
        ListenerState::Connecting => "Connecting",
        ListenerState::Listening => "Listening",
        ListenerState::Backoff { .. } => "Backoff",
        ListenerState::NotDelivering => "NotDelivering",
        ListenerState::Disabled => "Disabled",
        // A state added by a later pgwake.
        _ => "Unknown",
    }
}

/// An error answer: its status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl actix_web::ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status).json(json!({ "error": self.message }))
    }
}

impl From<StoreError> for ApiError {
    /// The caller's mistakes are 4xx; the rest 500. A `StoreError` never
    /// shows a password (servers are named by URLs rebuilt without it).
    fn from(err: StoreError) -> Self {
        let status = match &err {
            StoreError::NotFound { .. } => StatusCode::NOT_FOUND,
            StoreError::InvalidId { .. }
            | StoreError::InvalidQueueName { .. }
            | StoreError::PayloadTooLarge { .. }
            | StoreError::Json(_) => StatusCode::BAD_REQUEST,
            StoreError::AlreadyExists { .. } => StatusCode::CONFLICT,
            _ => {
                tracing::error!(error = %err, "store error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        Self::new(status, err.to_string())
    }
}

impl From<ClientError> for ApiError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Store(err) => err.into(),
            ClientError::NotFound { instance_id } => {
                Self::new(StatusCode::NOT_FOUND, format!("no order {instance_id:?}"))
            }
            err => {
                tracing::error!(error = %err, "client error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())
            }
        }
    }
}

/// Bad JSON bodies: 400 (413 when too large) with a JSON error.
fn json_error(err: JsonPayloadError, _: &actix_web::HttpRequest) -> actix_web::Error {
    let status = match err {
        JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, format!("invalid order: {err}")).into()
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    // Keep the throwaway server alive until the end of main.
    let (_server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            tracing::info!("DATABASE_URL is not set: starting a throwaway PostgreSQL");
            let server = pgwake::testing::TestPostgres::new()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let mut client = pgwake::ConnectionConfig::from_url(&url)?.connect().await?;
    pgwake::migrate::up(&mut client, None).await?;
    drop(client);

    let service = serve(Config::from_env(&url)?).await?;
    tracing::info!(addr = %service.addr, "listening");
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "shutting down");
    let report = service.stop().await;
    tracing::info!(
        drained = report.drained,
        released_leases = report.released_leases,
        "stopped"
    );
    Ok(())
}

#[cfg(unix)]
async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

#[cfg(not(unix))]
async fn shutdown_signal() -> std::io::Result<&'static str> {
    tokio::signal::ctrl_c().await?;
    Ok("Ctrl-C")
}
