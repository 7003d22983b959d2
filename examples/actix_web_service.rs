//! An actix-web service and the pgwake runtime in one actix `System`: an
//! HTTP API that starts order workflows (validate -> charge -> wait -> ship),
//! reads and cancels them, and reports health and Prometheus metrics.
//!
//! ```sh
//! cargo run --example actix_web_service            # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example actix_web_service
//!
//! curl -si localhost:8080/orders -H 'content-type: application/json' -d '{"item": "book", "cents": 500}'
//! curl -s  localhost:8080/orders/ID
//! curl -si -X POST localhost:8080/orders/ID/cancel
//! curl -s  localhost:8080/health
//! curl -s  localhost:8080/metrics
//! ```
//!
//! Settings (environment): `BIND_ADDR` (default `127.0.0.1:8080`),
//! `SHIP_DELAY_MS` (the wait between charge and ship, default 500),
//! `HEALTH_GRACE_MS` (how long a listener may be down before `/health`
//! answers 503, default 10000; a stuck worker makes it 503 at once),
//! `RUST_LOG` (default `info`).
//!
//! SIGTERM or SIGINT stops the HTTP server first (requests in flight finish),
//! then the runtime (running activities finish or give their leases back).
//!
//! The service is built by [`serve`], which `tests/actix_web_service.rs`
//! calls too; `main` only adds the database, the logs and the signals.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::http::header::LOCATION;
use actix_web::http::StatusCode;
use actix_web::{error::JsonPayloadError, middleware, web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pgwake::ShutdownReport;
use pgwake::{
    ActivityTask, ActivityWorker, CancelOutcome, Event, EventType, InstanceSnapshot, InstanceState,
    ListenerState, NewInstance, Queue, Runtime, RuntimeConfig, RuntimeHandle, StoreError,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask, WorkflowWorker,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Where order workflows run.
pub const ORDER_QUEUE: &str = "orders";
/// Where their activities run.
pub const ACTIVITY_QUEUE: &str = "order-activities";

/// What [`serve`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The HTTP address (port 0: any free port; [`Service::addr`] says which).
    pub bind: String,
    /// The runtime's settings, database URL included.
    pub runtime: RuntimeConfig,
    /// The wait between charge and ship.
    pub ship_delay: Duration,
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
            health_grace: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Defaults, overridden by `BIND_ADDR`, `SHIP_DELAY_MS` and `HEALTH_GRACE_MS`.
    pub fn from_env(database_url: &str) -> Result<Self, String> {
        let millis = |name: &str, default: Duration| match std::env::var(name) {
            Ok(value) => value.parse().map(Duration::from_millis).map_err(|_| {
                format!("{name} must be a whole number of milliseconds, not {value:?}")
            }),
            Err(_) => Ok(default),
        };
        let mut config = Self::new(database_url);
        if let Ok(bind) = std::env::var("BIND_ADDR") {
            config.bind = bind;
        }
        config.ship_delay = millis("SHIP_DELAY_MS", config.ship_delay)?;
        config.health_grace = millis("HEALTH_GRACE_MS", config.health_grace)?;
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
    let ship_delay = config.ship_delay;
    let runtime = Runtime::builder(config.runtime.clone())
        .activity_worker(ActivityWorker::new([ACTIVITY_QUEUE], run_activity).concurrency(8))
        .workflow_worker(
            WorkflowWorker::new([ORDER_QUEUE], move |task: WorkflowTask| async move {
                decide(&task, ship_delay)
            })
            .concurrency(4),
        )
        .start()
        .await?;

    let state = web::Data::new(AppState {
        runtime: runtime.clone(),
        health_grace: config.health_grace,
        metrics,
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::JsonConfig::default().error_handler(json_error))
            .wrap(middleware::Logger::default())
            .route("/orders", web::post().to(create_order))
            .route("/orders/{id}", web::get().to(get_order))
            .route("/orders/{id}/cancel", web::post().to(cancel_order))
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

/// The order workflow. Each workflow task brings the events that arrived
/// since the last decision; this answers with what to do next. It keeps no
/// state: the order travels with every task as the instance's metadata, and
/// each activity's result names its step.
pub fn decide(task: &WorkflowTask, ship_delay: Duration) -> Result<WorkflowCompletion, StoreError> {
    let activities = Some(Queue::new(ACTIVITY_QUEUE)?);
    let order = task.metadata.clone().unwrap_or(Value::Null);
    let mut next = WorkflowCompletion::default();
    // Canceled: end now, whatever else arrived. The store drops the order's
    // outstanding activities and timers with it.
    if task
        .new_events
        .iter()
        .any(|e| e.event_type == EventType::WorkflowExecutionCanceled)
    {
        return Ok(next.finish(WorkflowOutcome::Canceled));
    }
    for event in &task.new_events {
        let result = &event.attributes["result"];
        next = match (
            event.event_type,
            result["step"].as_str().unwrap_or_default(),
        ) {
            // 1. The order was placed: validate it.
            (EventType::WorkflowExecutionStarted, _) => {
                next.schedule_activity("validate", order.clone(), activities.clone())
            }
            // 2. It is valid: charge the customer.
            (EventType::ActivityCompleted, "validate") => {
                next.schedule_activity("charge", order.clone(), activities.clone())
            }
            // 3. Charged: wait before shipping. The timer is a row in the
            //    database: it fires even if this process restarts meanwhile.
            (EventType::ActivityCompleted, "charge") => {
                next.start_timer(ship_delay, json!({ "then": "ship" }))
            }
            // 4. The wait is over: ship.
            (EventType::TimerFired, _) => {
                next.schedule_activity("ship", order.clone(), activities.clone())
            }
            // 5. Shipped: the order is complete.
            (EventType::ActivityCompleted, "ship") => next.finish(WorkflowOutcome::Completed(
                json!({ "tracking": result["tracking"] }),
            )),
            // A step failed: so does the order.
            (EventType::ActivityFailed, _) => next.finish(WorkflowOutcome::Failed(
                event.attributes["error"]
                    .as_str()
                    .unwrap_or("failed")
                    .to_string(),
            )),
            _ => next,
        };
    }
    Ok(next)
}

/// The activities: stand-ins for calls to a payment and a shipping service.
/// Each result names its step, for [`decide`].
async fn run_activity(task: ActivityTask) -> Result<Value, String> {
    let order: Order = serde_json::from_value(task.input.clone()).map_err(|e| e.to_string())?;
    let result = match task.name.as_str() {
        "validate" if order.item.trim().is_empty() => return Err("the order has no item".into()),
        "validate" if order.cents == 0 => return Err("the order costs nothing".into()),
        "validate" => json!({ "step": "validate" }),
        "charge" => json!({ "step": "charge", "charged_cents": order.cents }),
        "ship" => json!({ "step": "ship", "tracking": format!("TRK-{}", task.activity_id) }),
        other => return Err(format!("unknown activity {other:?}")),
    };
    tracing::info!(order = %task.instance.instance_id, step = %task.name, "activity done");
    Ok(result)
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

struct AppState {
    runtime: RuntimeHandle,
    health_grace: Duration,
    metrics: PrometheusHandle,
}

/// `POST /orders`: starts an order workflow; 201 with its id.
async fn create_order(
    state: web::Data<AppState>,
    order: web::Json<Order>,
) -> Result<HttpResponse, ApiError> {
    let id = format!("order-{}", uuid::Uuid::new_v4());
    let order = serde_json::to_value(order.into_inner()).map_err(StoreError::from)?;
    let new = NewInstance::new(&id, Queue::new(ORDER_QUEUE)?)
        .with_input(order.clone())
        .with_metadata(order);
    state.runtime.store().create_instance(new).await?;
    Ok(HttpResponse::Created()
        .insert_header((LOCATION, format!("/orders/{id}")))
        .json(json!({ "id": id })))
}

/// `GET /orders/{id}`: state, history and pending events; 404 if unknown.
async fn get_order(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    match state.runtime.store().instance(&id).await? {
        Some(snapshot) => Ok(HttpResponse::Ok().json(order_json(&snapshot))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no order {:?}", id.as_str()),
        )),
    }
}

/// `POST /orders/{id}/cancel`: 202 when requested, 200 when already finished.
async fn cancel_order(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(match state.runtime.store().cancel_instance(&id).await? {
        CancelOutcome::Requested => {
            HttpResponse::Accepted().json(json!({ "id": *id, "cancel": "requested" }))
        }
        CancelOutcome::AlreadyFinished => {
            HttpResponse::Ok().json(json!({ "id": *id, "cancel": "already finished" }))
        }
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

fn order_json(snapshot: &InstanceSnapshot) -> Value {
    let state = match snapshot.state {
        InstanceState::Active => "active",
        InstanceState::Finished => "finished",
        InstanceState::ContinuedAsNew => "continued_as_new",
    };
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
    json!({
        "id": snapshot.instance.instance_id,
        "state": state,
        "history": events(&snapshot.history),
        "pending": events(&snapshot.pending),
    })
}

fn listener_state_name(state: &ListenerState) -> &'static str {
    match state {
        ListenerState::Connecting => "Connecting",
        ListenerState::Listening => "Listening",
        ListenerState::Backoff { .. } => "Backoff",
        ListenerState::Disabled => "Disabled",
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
