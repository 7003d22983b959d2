//! The web dashboard (issue #15) over real HTTP against a real PostgreSQL:
//! an actix-web server on a free loopback port with the dashboard mounted
//! under `/pgwake`, talked to with `awc`. Each test on a fresh database;
//! instances are written through the store, as workers would.

use std::time::Duration;

use actix_web::{App, HttpServer};
use pgwake::dashboard::{scope, DashboardOptions};
use pgwake::testing::{fresh_database, TestDatabase};
use pgwake::{
    InstanceState, NewInstance, Queue, Runtime, RuntimeConfig, Store, StoreOptions, WorkerId,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask, WorkflowWorker,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

/// A dashboard served over HTTP, with its store and database.
struct Served {
    base: String,
    client: awc::Client,
    store: Store,
    server: actix_web::dev::ServerHandle,
    _database: TestDatabase,
}

impl Served {
    async fn start(options: DashboardOptions) -> Self {
        Self::start_at("/pgwake", options).await
    }

    /// Mounted at `path` instead of `/pgwake`.
    async fn start_at(path: &'static str, options: DashboardOptions) -> Self {
        Self::serve(fresh_database().await.unwrap(), path, options).await
    }

    /// Mounted at `path`, on `database`.
    async fn serve(database: TestDatabase, path: &'static str, options: DashboardOptions) -> Self {
        let store = Store::connect(database.url(), StoreOptions::default())
            .await
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let served_store = store.clone();
        let server = HttpServer::new(move || {
            App::new().service(scope(path, served_store.clone(), options.clone()))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        Self {
            base: format!("http://{address}{}", path.trim_end_matches('/')),
            client: awc::Client::builder()
                .timeout(Duration::from_secs(30))
                // The tests look at the redirects the actions answer with.
                .disable_redirects()
                .finish(),
            store,
            server: handle,
            _database: database,
        }
    }

    /// `GET base + path` with the extra headers: the status and the body.
    async fn get_with(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        for header in headers {
            request = request.insert_header(*header);
        }
        let mut response = request.send().await.unwrap();
        let body = response.body().limit(10 << 20).await.unwrap();
        (
            response.status().as_u16(),
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.get_with(path, &[]).await
    }

    /// `POST base + path` with a form: the status and the `Location` header.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (u16, Option<String>) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .send_form(&form)
            .await
            .unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|value| value.to_str().unwrap().to_string());
        (response.status().as_u16(), location)
    }

    async fn stop(self) {
        self.server.stop(true).await;
    }
}

fn queue(name: &str) -> Queue {
    Queue::new(name).unwrap()
}

/// Starts `instance_id` of `workflow` on `queue`, as the workflow client does.
async fn start(store: &Store, instance_id: &str, workflow: &str, queue_name: &str) {
    store
        .create_instance(
            NewInstance::new(instance_id, queue(queue_name))
                .with_metadata(json!({ "workflow": workflow }))
                .with_input(json!({ "sku": 7 })),
        )
        .await
        .unwrap();
}

/// Claims the next workflow task of `queue_name` and completes it with `decision`.
async fn decide(store: &Store, queue_name: &str, decision: WorkflowCompletion) -> String {
    let task = store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[queue(queue_name)], LEASE)
        .await
        .unwrap()
        .expect("a workflow task");
    let instance_id = task.instance.instance_id.clone();
    store.complete_workflow_task(&task, decision).await.unwrap();
    instance_id
}

/// The HTML of the row of `queue_name` in the overview's queue table.
fn row_of<'a>(body: &'a str, queue_name: &str) -> &'a str {
    let start = body
        .find(&format!(">{queue_name}</a></td>"))
        .unwrap_or_else(|| panic!("no row for queue {queue_name} in {body}"));
    let end = body[start..].find("</tr>").unwrap() + start;
    &body[start..end]
}

/// The numbers of a queue's row on the overview, in column order.
fn numbers(row: &str) -> Vec<i64> {
    row.split("<td class=\"num\">")
        .skip(1)
        .map(|cell| {
            let cell = cell.split("</td>").next().unwrap();
            // A count may be a link to the matching instances.
            let text = cell
                .rsplit_once("\">")
                .map(|(_, text)| text.trim_end_matches("</a>"))
                .unwrap_or(cell);
            text.parse().unwrap()
        })
        .collect()
}

#[actix_rt::test]
async fn overview_counts_each_queues_instances_and_recent_finishes() {
    let served = Served::start(DashboardOptions::new()).await;
    for n in 0..3 {
        start(&served.store, &format!("order-{n}"), "order", "orders").await;
    }
    start(&served.store, "mail-1", "mail", "mails").await;
    // One order completes, one fails; one stays active and claimable.
    decide(
        &served.store,
        "orders",
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!("ok"))),
    )
    .await;
    decide(
        &served.store,
        "orders",
        WorkflowCompletion::default().finish(WorkflowOutcome::Failed("boom".into())),
    )
    .await;

    let (status, body) = served.get("/").await;
    assert_eq!(status, 200, "{body}");
    // active, claimable, running, failing, ready, activities running, later,
    // finished (1 h), failed (1 h)
    assert_eq!(
        numbers(row_of(&body, "orders")),
        [1, 1, 0, 0, 0, 0, 0, 2, 1],
        "{body}"
    );
    assert_eq!(numbers(row_of(&body, "mails")), [1, 1, 0, 0, 0, 0, 0, 0, 0]);
    assert!(body.contains("Notification queue usage"), "{body}");
    // The chart of the last minutes counts both ends.
    assert!(body.contains("<svg"), "{body}");
    assert!(body.contains("2 finished in the last 30 minutes"), "{body}");
    // Without the trailing slash too.
    let (status, _) = served.get("").await;
    assert_eq!(status, 200);
    served.stop().await;
}

#[actix_rt::test]
async fn instances_filter_by_state_queue_prefix_and_workflow_and_page_by_key() {
    let served = Served::start(DashboardOptions::new()).await;
    for n in 0..60 {
        start(&served.store, &format!("bulk-{n:03}"), "bulk", "bulk").await;
    }
    start(&served.store, "other-1", "other", "others").await;
    start(&served.store, "done-1", "other", "others").await;
    let finished = decide(
        &served.store,
        "others",
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
    )
    .await;

    let (status, body) = served.get("/instances?queue=others").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(">other-1</a>") && body.contains(">done-1</a>"));
    assert!(!body.contains("bulk-"), "queue filter let other queues in");

    let (_, body) = served.get("/instances?queue=others&state=finished").await;
    assert!(body.contains(&format!(">{finished}</a>")), "{body}");
    let still_active = if finished == "other-1" {
        "done-1"
    } else {
        "other-1"
    };
    assert!(!body.contains(&format!(">{still_active}</a>")));

    let (_, body) = served.get("/instances?prefix=bulk-05").await;
    let listed = body.matches("href=\"/pgwake/instances/bulk-").count();
    assert_eq!(listed, 10, "bulk-050 to bulk-059: {body}");

    let (_, body) = served.get("/instances?workflow=other").await;
    assert_eq!(
        body.matches("href=\"/pgwake/instances/").count(),
        2,
        "{body}"
    );

    // 60 in the queue: a page of 50, newest first, and a next page of 10.
    let (_, first) = served.get("/instances?queue=bulk").await;
    assert_eq!(first.matches("href=\"/pgwake/instances/bulk-").count(), 50);
    assert!(first.contains(">bulk-059</a>") && !first.contains(">bulk-009</a>"));
    let next = first
        .split("rel=\"next\" href=\"")
        .nth(1)
        .expect("a link to the next page")
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let next = next.strip_prefix("/pgwake").unwrap();
    assert!(
        next.contains("queue=bulk") && next.contains("before="),
        "{next}"
    );
    let (status, second) = served.get(next).await;
    assert_eq!(status, 200);
    assert_eq!(second.matches("href=\"/pgwake/instances/bulk-").count(), 10);
    assert!(second.contains(">bulk-009</a>") && second.contains(">bulk-000</a>"));
    assert!(!second.contains(">bulk-010</a>"), "a row on both pages");
    assert!(
        !second.contains("rel=\"next\""),
        "a next link after the last page"
    );

    let (_, body) = served.get("/instances?finished_after=2000-01-01").await;
    assert_eq!(
        body.matches("href=\"/pgwake/instances/").count(),
        1,
        "{body}"
    );
    assert!(body.contains(&format!(">{finished}</a>")), "{body}");
    let (_, body) = served.get("/instances?finished_before=2000-01-01").await;
    assert_eq!(
        body.matches("href=\"/pgwake/instances/").count(),
        0,
        "{body}"
    );

    let (status, _) = served.get("/instances?created_after=not-a-time").await;
    assert_eq!(status, 400);
    let (status, _) = served.get("/instances?state=sleeping").await;
    assert_eq!(status, 400);
    served.stop().await;
}

#[actix_rt::test]
async fn failing_instances_are_highlighted_and_retried_now() {
    let served = Served::start(DashboardOptions::new()).await;
    start(&served.store, "fails", "order", "orders").await;
    start(&served.store, "fine", "order", "orders").await;
    let task = served
        .store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[queue("orders")], LEASE)
        .await
        .unwrap()
        .unwrap();
    let failing = task.instance.instance_id.clone();
    served
        .store
        .fail_workflow_task(&task, "panicked: <b>no</b>")
        .await
        .unwrap();

    let (_, body) = served.get("/instances?state=stuck").await;
    assert!(
        body.contains(&format!(
            "<tr class=\"stuck\"><td><a href=\"/pgwake/instances/{failing}\">"
        )),
        "{body}"
    );
    assert!(body.contains("panicked: &lt;b&gt;no&lt;/b&gt;"), "{body}");
    assert_eq!(body.matches("href=\"/pgwake/instances/f").count(), 1);

    let (status, location) = served
        .post(
            &format!("/instances/{failing}/retry"),
            &[("confirm", "yes")],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some(format!("/pgwake/instances/{failing}?done=retry").as_str())
    );
    // Claimable at once, not after the backoff.
    let again = served
        .store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[queue("orders")], LEASE)
        .await
        .unwrap()
        .expect("claimable after the retry");
    let other = served
        .store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[queue("orders")], LEASE)
        .await
        .unwrap()
        .expect("both claimable");
    let mut claimed = [again.instance.instance_id, other.instance.instance_id];
    claimed.sort();
    assert_eq!(claimed, ["fails", "fine"]);
    served.stop().await;
}

#[actix_rt::test]
async fn instance_page_shows_the_history_in_order_with_pending_and_activities() {
    let served = Served::start(DashboardOptions::new()).await;
    start(&served.store, "order-1", "order", "orders").await;
    decide(
        &served.store,
        "orders",
        WorkflowCompletion::default()
            .schedule_activity("charge", json!({ "cents": 500 }), None)
            .start_timer(Duration::from_secs(3600), json!("reminder")),
    )
    .await;
    served
        .store
        .signal_instance("order-1", "address", json!({ "zip": "1010" }))
        .await
        .unwrap();

    let (status, body) = served.get("/instances/order-1").await;
    assert_eq!(status, 200, "{body}");
    let history: Vec<usize> = [
        "<td>WorkflowTaskStarted</td>",
        "<td>WorkflowExecutionStarted</td>",
        "<td>ActivityScheduled</td>",
        "<td>TimerScheduled</td>",
    ]
    .iter()
    .map(|event| {
        body.find(event)
            .unwrap_or_else(|| panic!("{event} missing from {body}"))
    })
    .collect();
    assert!(
        history.windows(2).all(|pair| pair[0] < pair[1]),
        "out of order: {history:?}"
    );
    // Attributes pretty-printed; the input of the start event among them.
    assert!(body.contains("&quot;sku&quot;: 7"), "{body}");
    assert!(body.contains("Pending events and timers"), "{body}");
    assert!(body.contains("<td>SignalReceived</td>"), "{body}");
    assert!(body.contains("Activities in flight (1)"), "{body}");
    assert!(body.contains("<td>charge</td>"), "{body}");
    assert!(
        body.contains("<td>order</td>"),
        "the workflow's name: {body}"
    );

    let (status, _) = served.get("/instances/nobody").await;
    assert_eq!(status, 404);
    served.stop().await;
}

#[actix_rt::test]
async fn cancel_signal_and_remove_through_forms() {
    let served = Served::start(DashboardOptions::new()).await;
    start(&served.store, "order-1", "order", "orders").await;

    // Not confirmed: refused, nothing sent.
    let (status, _) = served.post("/instances/order-1/cancel", &[]).await;
    assert_eq!(status, 400);
    let snapshot = served.store.instance("order-1").await.unwrap().unwrap();
    assert_eq!(snapshot.pending.len(), 1, "only the start event");

    let (status, location) = served
        .post(
            "/instances/order-1/signal",
            &[
                ("confirm", "yes"),
                ("name", "paid"),
                ("payload", "{\"cents\": 5}"),
            ],
        )
        .await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some("/pgwake/instances/order-1?done=signal")
    );
    let (status, _) = served
        .post(
            "/instances/order-1/signal",
            &[
                ("confirm", "yes"),
                ("name", "paid"),
                ("payload", "{not json"),
            ],
        )
        .await;
    assert_eq!(status, 400);

    let (status, location) = served
        .post("/instances/order-1/cancel", &[("confirm", "yes")])
        .await;
    assert_eq!(status, 303);
    assert_eq!(
        location.as_deref(),
        Some("/pgwake/instances/order-1?done=cancel")
    );
    let snapshot = served.store.instance("order-1").await.unwrap().unwrap();
    let pending: Vec<_> = snapshot.pending.iter().map(|e| e.event_type).collect();
    assert_eq!(
        pending,
        [
            pgwake::EventType::WorkflowExecutionStarted,
            pgwake::EventType::SignalReceived,
            pgwake::EventType::WorkflowExecutionCanceled
        ]
    );

    // Active: removing is refused; once finished, it goes.
    let (status, _) = served
        .post("/instances/order-1/remove", &[("confirm", "yes")])
        .await;
    assert_eq!(status, 409);
    decide(
        &served.store,
        "orders",
        WorkflowCompletion::default().finish(WorkflowOutcome::Canceled),
    )
    .await;
    let snapshot = served.store.instance("order-1").await.unwrap().unwrap();
    assert_eq!(snapshot.state, InstanceState::Finished);
    let (_, body) = served.get("/instances/order-1").await;
    assert!(body.contains("Canceled."), "{body}");
    let (status, location) = served
        .post("/instances/order-1/remove", &[("confirm", "yes")])
        .await;
    assert_eq!(status, 303);
    assert_eq!(location.as_deref(), Some("/pgwake/instances?done=removed"));
    assert!(served.store.instance("order-1").await.unwrap().is_none());

    // A form posted by another site's page is refused.
    start(&served.store, "order-2", "order", "orders").await;
    let response = served
        .client
        .post(format!("{}/instances/order-2/cancel", served.base))
        .insert_header(("Origin", "https://evil.example"))
        .send_form(&[("confirm", "yes")])
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    served.stop().await;
}

#[actix_rt::test]
async fn read_only_dashboard_shows_no_actions_and_refuses_them() {
    let served = Served::start(DashboardOptions::new().read_only(true)).await;
    start(&served.store, "order-1", "order", "orders").await;
    let (status, body) = served.get("/instances/order-1").await;
    assert_eq!(status, 200);
    assert!(!body.contains("<form class=\"action\""), "{body}");
    for action in ["cancel", "signal", "retry", "remove"] {
        let (status, _) = served
            .post(
                &format!("/instances/order-1/{action}"),
                &[("confirm", "yes"), ("name", "x")],
            )
            .await;
        assert_eq!(status, 403, "{action}");
    }
    let snapshot = served.store.instance("order-1").await.unwrap().unwrap();
    assert_eq!(snapshot.pending.len(), 1, "an action ran in read-only mode");
    served.stop().await;
}

#[actix_rt::test]
async fn access_token_is_required_by_header_query_or_cookie() {
    let served = Served::start(DashboardOptions::new().access_token("s3cret-token")).await;
    start(&served.store, "order-1", "order", "orders").await;

    for path in ["/", "/instances", "/instances/order-1"] {
        let (status, _) = served.get(path).await;
        assert_eq!(status, 401, "{path} without a token");
        let (status, _) = served
            .get_with(path, &[("Authorization", "Bearer wrong-token!")])
            .await;
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = served
            .get_with(path, &[("Authorization", "Bearer s3cret-token")])
            .await;
        assert_eq!(status, 200, "{path} with the token");
    }
    let (status, _) = served
        .post("/instances/order-1/cancel", &[("confirm", "yes")])
        .await;
    assert_eq!(status, 401, "an action without the token");

    let response = served
        .client
        .get(format!("{}/?token=s3cret-token", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("the token kept in a cookie")
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("Path=/pgwake"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let (status, _) = served.get_with("/instances", &[("Cookie", pair)]).await;
    assert_eq!(status, 200);
    let (status, _) = served
        .get_with("/instances", &[("Cookie", "pgwake_dashboard_token=nope")])
        .await;
    assert_eq!(status, 401);
    served.stop().await;
}

#[actix_rt::test]
async fn script_in_an_instance_id_and_a_payload_is_shown_as_text() {
    let served = Served::start(DashboardOptions::new()).await;
    let evil = "<script>alert(1)</script>";
    served
        .store
        .create_instance(
            NewInstance::new(evil, queue("orders"))
                .with_metadata(json!({ "workflow": evil }))
                .with_input(json!({ "note": evil })),
        )
        .await
        .unwrap();
    let (status, list) = served.get("/instances").await;
    assert_eq!(status, 200);
    let (status, page) = served
        .get("/instances/%3Cscript%3Ealert%281%29%3C%2Fscript%3E")
        .await;
    assert_eq!(status, 200, "{page}");
    let (_, filtered) = served
        .get("/instances?prefix=%3Cscript%3E&workflow=%3Cscript%3Ealert%281%29%3C%2Fscript%3E")
        .await;
    for body in [&list, &page, &filtered] {
        assert!(!body.contains("<script"), "unescaped markup in {body}");
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{body}"
        );
    }
    // Its link is percent-encoded.
    assert!(
        list.contains("/pgwake/instances/%3Cscript%3Ealert%281%29%3C%2Fscript%3E\""),
        "{list}"
    );
    // The payload, inside the start event's attributes.
    assert!(
        page.contains("&quot;note&quot;: &quot;&lt;script&gt;alert(1)&lt;/script&gt;&quot;"),
        "{page}"
    );
    served.stop().await;
}

#[actix_rt::test]
async fn mounted_at_the_root_it_links_from_the_root() {
    let served = Served::start_at("/", DashboardOptions::new()).await;
    start(&served.store, "order-1", "order", "orders").await;
    let (status, body) = served.get("/").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("<a href=\"/instances\">Instances</a>"),
        "{body}"
    );
    let (status, body) = served.get("/instances").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("href=\"/instances/order-1\""), "{body}");
    let (status, _) = served.get("/instances/order-1").await;
    assert_eq!(status, 200);
    served.stop().await;
}

#[actix_rt::test]
async fn instances_filtered_by_finish_time_page_in_finish_order() {
    let served = Served::start(DashboardOptions::new()).await;
    for n in 0..55 {
        start(&served.store, &format!("fin-{n:02}"), "order", "fin").await;
        decide(
            &served.store,
            "fin",
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(n))),
        )
        .await;
    }
    let (status, first) = served
        .get("/instances?finished_after=2000-01-01%2000:00:00%2B00")
        .await;
    assert_eq!(status, 200, "{first}");
    let next = first
        .split("rel=\"next\" href=\"/pgwake")
        .nth(1)
        .expect("a link to the next page")
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    let (status, second) = served.get(&next).await;
    assert_eq!(status, 200, "{second}");
    let ids = |body: &str| -> Vec<String> {
        body.split("href=\"/pgwake/instances/fin-")
            .skip(1)
            .map(|rest| rest[..2].to_string())
            .collect()
    };
    let (first, second) = (ids(&first), ids(&second));
    assert_eq!((first.len(), second.len()), (50, 5));
    let mut all: Vec<String> = first.into_iter().chain(second).collect();
    let in_page_order = all.clone();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 55, "a row on both pages or none");
    // Newest finish first: they finished in the order they were started.
    let mut descending = in_page_order.clone();
    descending.sort_by(|a, b| b.cmp(a));
    assert_eq!(in_page_order, descending);
    served.stop().await;
}

#[actix_rt::test]
async fn overview_shows_the_serving_processs_listeners_and_workers() {
    let database = fresh_database().await.unwrap();
    let worker = WorkflowWorker::new(["orders"], |_task: WorkflowTask| async move {
        Ok::<_, String>(WorkflowCompletion::default())
    });
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .workflow_worker(worker)
        .start()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !runtime.health().all_listening() {
        assert!(
            std::time::Instant::now() < deadline,
            "the runtime never listened: {:?}",
            runtime.health().listeners
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let served = Served::serve(
        database,
        "/pgwake",
        DashboardOptions::new().runtime(runtime.clone()),
    )
    .await;
    let (status, body) = served.get("/").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("<h2>This process</h2>"), "{body}");
    assert_eq!(body.matches("<td>Listening</td>").count(), 2, "{body}");
    assert!(
        body.contains("<td>orders</td>"),
        "the worker's queue: {body}"
    );
    // The same listeners, as PostgreSQL sees them.
    assert!(
        body.contains("<td>pgwake-listener:workflow_tasks</td>"),
        "{body}"
    );
    served.stop().await;
    runtime.shutdown(Duration::from_secs(10)).await;
}
