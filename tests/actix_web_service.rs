//! examples/actix_web_service.rs over real HTTP, against a throwaway
//! PostgreSQL: orders through every step, retries, expediting, cancellation
//! with a refund, errors, health, metrics; and its order workflow alone,
//! without a database.

#[allow(dead_code)] // its `main` and what only `main` uses
#[path = "../examples/actix_web_service.rs"]
mod service;

use std::time::{Duration, Instant};

use pgwake::testing::{fresh_database, FaultProxy, TestPostgres};
use pgwake::workflow::{ActivityError, WorkflowError, WorkflowTester};
use serde_json::{json, Value};

/// An HTTP client for the service at `base`.
struct Http {
    client: awc::Client,
    base: String,
}

impl Http {
    fn new(service: &service::Service) -> Self {
        Self {
            client: awc::Client::builder()
                .timeout(Duration::from_secs(10))
                .finish(),
            base: format!("http://{}", service.addr),
        }
    }

    /// The status and body (JSON, or `Value::String` when it is not JSON).
    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(format!("{}{path}", self.base)).send();
        read(response.await.unwrap()).await
    }

    async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let request = self.client.post(format!("{}{path}", self.base));
        read(request.send_json(body).await.unwrap()).await
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .insert_header(("content-type", "application/json"));
        read(request.send_body(body).await.unwrap()).await
    }

    /// Polls `GET path` until `done` holds for its JSON body; returns it.
    async fn get_until(&self, path: &str, what: &str, done: impl Fn(u16, &Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self.get(path).await;
            if done(status, &body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last answer {status}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn read<S>(mut response: awc::ClientResponse<S>) -> (u16, Value)
where
    S: futures::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    let status = response.status().as_u16();
    let bytes = response.body().limit(10 << 20).await.unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, body)
}

fn event_types(order: &Value) -> Vec<&str> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect()
}

fn count(types: &[&str], wanted: &str) -> usize {
    types.iter().filter(|t| **t == wanted).count()
}

fn finished(status: u16, body: &Value) -> bool {
    status == 200 && body["state"] == "finished"
}

/// The names of the activities the order scheduled, in order.
fn activities_scheduled(order: &Value) -> Vec<&str> {
    order["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "ActivityScheduled")
        .map(|e| e["attributes"]["name"].as_str().unwrap())
        .collect()
}

/// The `WorkflowExecutionFinished` event's attributes.
fn outcome(order: &Value) -> &Value {
    let last = order["history"].as_array().unwrap().last().unwrap();
    assert_eq!(last["type"], "WorkflowExecutionFinished", "{order}");
    &last["attributes"]
}

async fn start(config: service::Config) -> (service::Service, Http) {
    let mut config = config;
    config.bind = "127.0.0.1:0".to_string();
    let service = service::serve(config).await.unwrap();
    let http = Http::new(&service);
    (service, http)
}

async fn wait_healthy(http: &Http) -> Value {
    http.get_until("/health", "both listeners to listen", |status, body| {
        status == 200
            && body["listeners"].as_array().unwrap().len() == 2
            && body["listeners"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l["state"] == "Listening")
    })
    .await
}

#[actix_rt::test]
async fn orders_go_through_every_step_and_bad_requests_are_refused() {
    let database = fresh_database().await.unwrap();
    let mut config = service::Config::new(database.url());
    config.ship_delay = Duration::from_millis(200);
    let (service, http) = start(config).await;

    let health = wait_healthy(&http).await;
    assert_eq!(health["status"], "ok");
    let channels: Vec<&str> = health["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["channel"].as_str().unwrap())
        .collect();
    assert!(channels.contains(&"workflow_tasks") && channels.contains(&"activity_tasks"));

    // An order through validate -> charge -> timer -> ship.
    let (status, created) = http
        .post_json("/orders", &json!({"item": "book", "cents": 500}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let order = http
        .get_until(&format!("/orders/{id}"), "the order to finish", finished)
        .await;
    assert_eq!(order["id"], id.as_str());
    let types = event_types(&order);
    assert_eq!(count(&types, "ActivityCompleted"), 3, "{order}");
    assert_eq!(count(&types, "TimerFired"), 1, "{order}");
    assert!(outcome(&order)["result"]["tracking"].is_string(), "{order}");
    assert_eq!(order["pending"], json!([]));
    assert_eq!(
        activities_scheduled(&order),
        ["validate", "charge", "ship"],
        "{order}"
    );
    assert_eq!(order["workflow"], "order", "{order}");
    assert_eq!(order["task_attempts"], 0, "{order}");
    let (status, result) = http.get(&format!("/orders/{id}/result")).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "completed", "{result}");
    assert_eq!(
        result["result"]["tracking"],
        outcome(&order)["result"]["tracking"]
    );

    // An order the validation refuses fails.
    let (status, created) = http
        .post_json("/orders", &json!({"item": "free lunch", "cents": 0}))
        .await;
    assert_eq!(status, 201, "{created}");
    let failed = http
        .get_until(
            &format!("/orders/{}", created["id"].as_str().unwrap()),
            "the free order to fail",
            finished,
        )
        .await;
    // The history holds the workflow's typed error; `/result` reads it back.
    let error = WorkflowError::from_stored(outcome(&failed)["error"].as_str().unwrap());
    assert_eq!(error.kind(), "invalid_order", "{failed}");
    assert_eq!(error.message(), "the order costs nothing", "{failed}");
    assert_eq!(activities_scheduled(&failed), ["validate"], "{failed}");
    let (status, result) = http
        .get(&format!(
            "/orders/{}/result",
            created["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(result["error"]["kind"], "invalid_order", "{result}");
    assert_eq!(
        result["error"]["message"], "the order costs nothing",
        "{result}"
    );

    // Unknown and invalid ids.
    let (status, body) = http.get("/orders/no-such-order").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], r#"no order "no-such-order""#);
    let (status, body) = http
        .post_json("/orders/no-such-order/cancel", &json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http.get("/orders/no-such-order/result").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = http
        .post_json("/orders/no-such-order/expedite", &json!({}))
        .await;
    assert_eq!(status, 404, "{body}");
    let too_long = "x".repeat(200);
    let (status, body) = http.get(&format!("/orders/{too_long}")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("instance id"),
        "{body}"
    );

    // Bad bodies.
    let (status, body) = http.post_raw("/orders", "{not json").await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, body) = http.post_json("/orders", &json!({"item": "book"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("cents"), "{body}");

    // Canceling a finished order changes nothing.
    let (status, body) = http
        .post_json(&format!("/orders/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");

    // Metrics: pgwake's own, in Prometheus' text format.
    let mut response = http
        .client
        .get(format!("{}/metrics", http.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = String::from_utf8(response.body().limit(10 << 20).await.unwrap().to_vec()).unwrap();
    assert!(text.contains("pgwake_"), "{text}");

    let report = service.stop().await;
    assert!(report.drained);
}

#[actix_rt::test]
async fn a_canceled_order_finishes_as_canceled() {
    let database = fresh_database().await.unwrap();
    let mut config = service::Config::new(database.url());
    config.ship_delay = Duration::from_secs(600);
    let (service, http) = start(config).await;

    let (status, created) = http
        .post_json("/orders", &json!({"item": "lamp", "cents": 2500}))
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/orders/{}", created["id"].as_str().unwrap());
    // Charged, and waiting ten minutes to ship.
    http.get_until(&path, "the order to wait to ship", |_, order| {
        event_types(order).contains(&"TimerScheduled")
    })
    .await;

    let (status, body) = http.post_json(&format!("{path}/cancel"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    let order = http
        .get_until(&path, "the canceled order to finish", finished)
        .await;
    let types = event_types(&order);
    assert!(types.contains(&"WorkflowExecutionCanceled"), "{order}");
    // The workflow's cleanup: never shipped, refunded, then canceled.
    assert_eq!(
        activities_scheduled(&order),
        ["validate", "charge", "refund"],
        "never shipped, refunded: {order}"
    );
    assert_eq!(count(&types, "ActivityCompleted"), 3, "{order}");
    assert_eq!(count(&types, "TimerFired"), 0, "{order}");
    assert_eq!(count(&types, "TimerCanceled"), 1, "{order}");
    assert_eq!(outcome(&order)["canceled"], true, "{order}");
    // The timer went with it.
    assert_eq!(order["pending"], json!([]), "{order}");
    let (status, result) = http.get(&format!("{path}/result")).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "canceled", "{result}");

    let (status, body) = http.post_json(&format!("{path}/cancel"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    service.stop().await;
}

#[actix_rt::test]
async fn an_expedited_order_ships_without_waiting_out_the_delay() {
    let database = fresh_database().await.unwrap();
    let mut config = service::Config::new(database.url());
    config.ship_delay = Duration::from_secs(600);
    let (service, http) = start(config).await;

    let (status, created) = http
        .post_json("/orders", &json!({"item": "kite", "cents": 900}))
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/orders/{}", created["id"].as_str().unwrap());
    // Still running: the result is not there yet.
    let (status, result) = http.get(&format!("{path}/result?wait_ms=50")).await;
    assert_eq!(status, 202, "{result}");
    assert_eq!(result["state"], "active", "{result}");
    http.get_until(&path, "the order to wait to ship", |_, order| {
        event_types(order).contains(&"TimerScheduled")
    })
    .await;

    let (status, body) = http
        .post_json(&format!("{path}/expedite"), &json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    let (status, result) = http.get(&format!("{path}/result?wait_ms=15000")).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "completed", "{result}");
    assert!(result["result"]["tracking"].is_string(), "{result}");
    let order = http.get_until(&path, "the order to finish", finished).await;
    let types = event_types(&order);
    assert!(types.contains(&"SignalReceived"), "{order}");
    assert_eq!(count(&types, "TimerFired"), 0, "{order}");
    assert_eq!(count(&types, "TimerCanceled"), 1, "{order}");
    assert_eq!(order["pending"], json!([]), "{order}");
    service.stop().await;
}

#[actix_rt::test]
async fn a_charge_the_gateway_refuses_twice_is_retried_and_the_order_ships() {
    let database = fresh_database().await.unwrap();
    let mut config = service::Config::new(database.url());
    config.ship_delay = Duration::from_millis(50);
    config.charge_failures = 2;
    let (service, http) = start(config).await;

    let (status, created) = http
        .post_json("/orders", &json!({"item": "tent", "cents": 12_000}))
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/orders/{}", created["id"].as_str().unwrap());
    let order = http.get_until(&path, "the order to finish", finished).await;
    assert!(outcome(&order)["result"]["tracking"].is_string(), "{order}");
    assert_eq!(
        activities_scheduled(&order),
        ["validate", "charge", "charge", "charge", "ship"],
        "{order}"
    );
    let types = event_types(&order);
    assert_eq!(count(&types, "ActivityFailed"), 2, "{order}");
    // Two backoff timers, then the wait before shipping.
    assert_eq!(count(&types, "TimerFired"), 3, "{order}");

    // A declined card is not retried: the order fails with the gateway's kind.
    let (status, created) = http
        .post_json("/orders", &json!({"item": "yacht", "cents": 90_000_000}))
        .await;
    assert_eq!(status, 201, "{created}");
    let path = format!("/orders/{}", created["id"].as_str().unwrap());
    let (status, result) = http.get(&format!("{path}/result?wait_ms=15000")).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["state"], "failed", "{result}");
    assert_eq!(result["error"]["kind"], "declined", "{result}");
    assert_eq!(
        result["error"]["details"]["limit_cents"],
        service::CHARGE_LIMIT_CENTS
    );
    let (_, order) = http.get(&path).await;
    assert_eq!(
        activities_scheduled(&order),
        ["validate", "charge", "charge", "charge"],
        "the gateway's refusals are retried, the decline is not: {order}"
    );
    service.stop().await;
}

#[test]
fn the_order_workflow_ships_at_once_when_expedited_and_fails_on_a_declined_card() {
    let workflows = service::workflows();
    let input = service::OrderInput {
        order: service::Order {
            item: "book".into(),
            cents: 500,
        },
        ship_delay_ms: 3_600_000,
    };
    let mut tester = WorkflowTester::new(&workflows, service::ORDER_WORKFLOW)
        .on_activity("validate", |_: service::Order| Ok::<_, ActivityError>(()))
        .on_activity("charge", |payment: service::Payment| {
            Ok::<_, ActivityError>(payment.cents)
        })
        .on_activity("ship", |_: service::Order| Ok::<_, ActivityError>("TRK-1"))
        .signal_at(Duration::from_secs(60), "expedite", &());
    let shipped: service::Shipped = tester.run(&input).unwrap();
    assert_eq!(shipped.tracking, "TRK-1");
    assert_eq!(tester.elapsed(), Duration::from_secs(60), "not an hour");

    let mut tester = WorkflowTester::new(&workflows, service::ORDER_WORKFLOW)
        .on_activity("validate", |_: service::Order| Ok::<_, ActivityError>(()))
        .on_activity_attempt("charge", |_: service::Payment, attempt| {
            assert_eq!(attempt, 1, "a declined card is not retried");
            Err::<u64, _>(ActivityError::new("declined", "the card was declined"))
        });
    match tester.run::<service::Shipped>(&input) {
        Err(pgwake::workflow::TesterError::Failed(err)) => assert_eq!(err.kind(), "declined"),
        other => panic!("expected a declined order, got {other:?}"),
    }
}

#[actix_rt::test]
async fn health_says_503_once_a_listener_is_down_past_the_grace_period() {
    // The listeners reach the server through a proxy that can cut them off;
    // the pool talks to the server directly.
    let server = TestPostgres::new().unwrap();
    let database = server.create_database().await.unwrap();
    let upstream = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut config = service::Config::new(database.url());
    config.runtime.listener_url = Some(proxy.proxied_url(database.url()));
    config.runtime.reconnect_backoff_min = Duration::from_millis(50);
    config.runtime.reconnect_backoff_max = Duration::from_millis(200);
    config.health_grace = Duration::from_millis(300);
    let (service, http) = start(config).await;
    wait_healthy(&http).await;

    proxy.set_refuse_new(true);
    proxy.drop_connections();
    let cut_at = Instant::now();
    let degraded = http
        .get_until("/health", "503", |status, _| status == 503)
        .await;
    assert!(
        cut_at.elapsed() >= Duration::from_millis(300),
        "503 before the grace period was over"
    );
    assert_eq!(degraded["status"], "degraded");
    assert!(degraded["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["state"] != "Listening" && l["seconds_not_listening"].as_f64().unwrap() > 0.3));

    proxy.set_refuse_new(false);
    let health = wait_healthy(&http).await;
    assert!(health["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["reconnects"].as_u64().unwrap() >= 1));
    service.stop().await;
    drop(server);
}

#[actix_rt::test]
async fn health_says_503_while_a_worker_cannot_reach_the_database() {
    // The pool goes through a proxy that falls silent; the listeners do not.
    let server = TestPostgres::new().unwrap();
    let database = server.create_database().await.unwrap();
    let upstream = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut config = service::Config::new(&proxy.proxied_url(database.url()));
    config.runtime.listener_url = Some(database.url().to_string());
    config.runtime.fallback_while_listening = Duration::from_millis(200);
    config.runtime.store.operation_timeout = Duration::from_millis(500);
    config.runtime.store.statement_timeout = Duration::from_millis(400);
    config.runtime.store.lock_timeout = Duration::from_millis(300);
    let (service, http) = start(config).await;
    wait_healthy(&http).await;

    proxy.set_blackhole(true);
    let stuck = http
        .get_until("/health", "503", |status, _| status == 503)
        .await;
    assert_eq!(stuck["status"], "degraded");
    assert!(stuck["workers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w["stuck"] == true));

    proxy.set_blackhole(false);
    let health = wait_healthy(&http).await;
    assert!(health["workers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|w| w["stuck"] == false));
    service.stop().await;
    drop(server);
}

/// The finished spans of the binary's global subscriber: a
/// tracing-opentelemetry layer over an in-memory exporter, installed by the
/// first call (the runtime's actors run on threads of their own, out of
/// reach of a thread's default subscriber).
fn exported_spans() -> Vec<opentelemetry_sdk::trace::SpanData> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tracing_subscriber::layer::SubscriberExt;
    static EXPORTER: std::sync::OnceLock<(SdkTracerProvider, InMemorySpanExporter)> =
        std::sync::OnceLock::new();
    let (provider, exporter) = EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("service-tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber of this test binary");
        (provider, exporter)
    });
    provider.force_flush().unwrap();
    exporter.get_finished_spans().unwrap()
}

fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[actix_rt::test]
async fn a_trace_around_the_http_request_holds_the_orders_workflow_and_activity_spans() {
    exported_spans();
    let database = fresh_database().await.unwrap();
    let mut config = service::Config::new(database.url());
    config.ship_delay = Duration::from_millis(50);
    let (service, http) = start(config).await;

    let (status, created) = http
        .post_json("/orders", &json!({"item": "atlas", "cents": 700}))
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    http.get_until(&format!("/orders/{id}"), "the order to finish", finished)
        .await;

    let spans = exported_spans();
    let of_order = |name: &str| -> Vec<&opentelemetry_sdk::trace::SpanData> {
        spans
            .iter()
            .filter(|s| s.name == name && attribute(s, "instance_id").as_deref() == Some(&id))
            .collect()
    };
    let (tasks, activities) = (of_order("workflow_task"), of_order("activity"));
    assert!(!tasks.is_empty(), "no workflow_task span for {id}");
    let trace_id = tasks[0].span_context.trace_id();
    // The POST that started the order is the parent of all of them.
    let request = spans
        .iter()
        .find(|s| s.name == "request" && s.span_context.trace_id() == trace_id)
        .unwrap_or_else(|| panic!("no request span in the order's trace: {tasks:#?}"));
    assert_eq!(attribute(request, "method").as_deref(), Some("POST"));
    assert_eq!(attribute(request, "path").as_deref(), Some("/orders"));
    let mut names: Vec<String> = activities
        .iter()
        .map(|s| attribute(s, "name").unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["charge", "ship", "validate"]);
    for span in tasks.iter().chain(&activities) {
        assert_eq!(span.span_context.trace_id(), trace_id, "{span:#?}");
        assert_eq!(
            span.parent_span_id,
            request.span_context.span_id(),
            "{span:#?}"
        );
    }
    service.stop().await;
}
