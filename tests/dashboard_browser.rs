//! The web dashboard (issue #15) end to end in headless Chromium: a real
//! PostgreSQL seeded through the store as workers would write it, the
//! dashboard served on a free loopback port (once as operators use it, once
//! read-only), and `tests/browser/dashboard.mjs` driving Debian's `chromium`
//! through `playwright-core`: the overview, a filtered list, a timeline, a
//! cancel through the form, and markup in an id and a payload shown as text.
//!
//! Needs `node`, `chromium` and `tests/browser/node_modules`, which
//! `scripts/test` installs. Without them the test is skipped with the reason
//! printed, except in CI (`CI` set), where it fails.
//!
//! `PGWAKE_SCREENSHOTS=<dir>` makes the script save a full-page PNG of each
//! page into `<dir>`: that is how `docs/screenshots/` is made.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use actix_web::{App, HttpServer};
use pgwake::dashboard::{scope, DashboardOptions};
use pgwake::testing::fresh_database;
use pgwake::{
    EventType, InstanceState, NewInstance, Queue, Store, StoreOptions, WorkerId,
    WorkflowCompletion, WorkflowOutcome,
};
use serde_json::{json, Value};

const LEASE: Duration = Duration::from_secs(600);

/// How long the script may take: a cold Chromium start on a busy CI runner
/// takes seconds, the pages themselves milliseconds.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// The instance whose id is markup, and the markup its signal carries.
const SCRIPT_ID: &str = "<script>alert(1)</script>";
const IMG_PAYLOAD: &str = "<img src=x onerror=alert(2)>";

/// The instance the browser cancels through the form: on a queue of its
/// own, which a decider in the test serves, so that the cancellation is
/// carried out while the browser watches.
const CANCELED: &str = "return-3001";
const CANCELED_QUEUE: &str = "returns";

/// What the browser needs: `node`, a Chromium and `playwright-core`.
struct Browser {
    node: PathBuf,
    chromium: PathBuf,
    script: PathBuf,
}

/// The first of `names` found as given (when a path) or on `PATH`.
fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        let name = Path::new(name);
        if name.is_absolute() {
            return name.is_file().then(|| name.to_path_buf());
        }
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// The browser and its driver; `None`, with the reason printed, when one is
/// missing outside CI. In CI a missing one fails the test.
fn browser_or_skip() -> Option<Browser> {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium_names: Vec<String> = match std::env::var("PGWAKE_CHROMIUM") {
        Ok(path) if !path.is_empty() => vec![path],
        _ => ["chromium", "chromium-browser", "/usr/bin/chromium"]
            .map(String::from)
            .to_vec(),
    };
    let chromium_names: Vec<&str> = chromium_names.iter().map(String::as_str).collect();
    let missing = match (
        find_program(&["node"]),
        find_program(&chromium_names),
        browser_dir.join("node_modules/playwright-core").is_dir(),
    ) {
        (Some(node), Some(chromium), true) => {
            return Some(Browser {
                node,
                chromium,
                script: browser_dir.join("dashboard.mjs"),
            })
        }
        (None, _, _) => "node (Node.js 20 or later) was not found on PATH".to_string(),
        (_, None, _) => format!("no Chromium was found (looked for {chromium_names:?})"),
        (_, _, false) => format!(
            "{} has no playwright-core (npm ci --prefix tests/browser)",
            browser_dir.display()
        ),
    };
    let message = format!(
        "the browser test needs node, chromium and tests/browser/node_modules: {missing}; \
         scripts/test installs them"
    );
    assert!(!support::in_ci(), "{message}");
    eprintln!("skipped: {message}");
    None
}

/// Runs `command` to its end or for [`SCRIPT_TIMEOUT`], whichever comes
/// first: its exit status (`None` when it was killed) and its output.
fn run(mut command: std::process::Command) -> (Option<ExitStatus>, String, String) {
    let mut child = command.spawn().expect("node starts");
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for node") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, stdout.join().unwrap(), stderr.join().unwrap())
}

fn queue(name: &str) -> Queue {
    Queue::new(name).unwrap()
}

/// Starts `instance_id` of `workflow` on `queue_name` with `input`, as the
/// workflow client does.
async fn start(store: &Store, instance_id: &str, workflow: &str, queue_name: &str, input: Value) {
    store
        .create_instance(
            NewInstance::new(instance_id, queue(queue_name))
                .with_metadata(json!({ "workflow": workflow }))
                .with_input(input),
        )
        .await
        .unwrap();
}

/// Claims the next workflow task of `queue_name`, checks it is
/// `instance_id`'s, and completes it with `decision`.
async fn decide(store: &Store, queue_name: &str, instance_id: &str, decision: WorkflowCompletion) {
    let task = store
        .claim_workflow_task(
            &WorkerId::new("orders-worker-7f3a").unwrap(),
            &[queue(queue_name)],
            LEASE,
        )
        .await
        .unwrap()
        .expect("a workflow task");
    assert_eq!(
        task.instance.instance_id, instance_id,
        "seeded out of order"
    );
    store.complete_workflow_task(&task, decision).await.unwrap();
}

/// Claims the next activity of `queue_name` and, given a result, completes it.
async fn run_activity(store: &Store, queue_name: &str, result: Option<Result<Value, String>>) {
    let task = store
        .claim_activity_tasks(
            &WorkerId::new("orders-worker-7f3a").unwrap(),
            &[queue(queue_name)],
            1,
            LEASE,
        )
        .await
        .unwrap()
        .pop()
        .expect("an activity task");
    if let Some(result) = result {
        store.complete_activity_task(&task, result).await.unwrap();
    }
}

/// A few queues of plausible work: orders finished, failed, waiting on an
/// activity or a timer or not yet picked up; emails sent; a nightly report
/// whose workflow task keeps failing; and a support ticket whose id is a
/// script and whose signal carries an `<img onerror>`.
///
/// Each instance that gets a decision is started and decided before the
/// next one on its queue is started, so each claim takes the one meant.
async fn seed(store: &Store) {
    for (number, cents) in [(1041, 4_999), (1042, 12_950)] {
        let id = format!("order-{number}");
        start(
            store,
            &id,
            "order",
            "orders",
            json!({ "sku": "KB-87", "cents": cents }),
        )
        .await;
        decide(
            store,
            "orders",
            &id,
            WorkflowCompletion::default().schedule_activity(
                "charge_card",
                json!({ "cents": cents }),
                None,
            ),
        )
        .await;
        run_activity(
            store,
            "orders",
            Some(Ok(json!({ "charge": format!("ch_{number}") }))),
        )
        .await;
        decide(
            store,
            "orders",
            &id,
            WorkflowCompletion::default().schedule_activity(
                "ship",
                json!({ "carrier": "dhl" }),
                None,
            ),
        )
        .await;
        run_activity(
            store,
            "orders",
            Some(Ok(json!({ "tracking": "JD0146000" }))),
        )
        .await;
        decide(
            store,
            "orders",
            &id,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(
                json!({ "shipped": true, "charge": format!("ch_{number}") }),
            )),
        )
        .await;
    }
    start(
        store,
        "order-1043",
        "order",
        "orders",
        json!({ "sku": "MS-2", "cents": 899 }),
    )
    .await;
    decide(
        store,
        "orders",
        "order-1043",
        WorkflowCompletion::default().schedule_activity(
            "charge_card",
            json!({ "cents": 899 }),
            None,
        ),
    )
    .await;
    run_activity(
        store,
        "orders",
        Some(Err("card declined (insufficient_funds)".into())),
    )
    .await;
    decide(
        store,
        "orders",
        "order-1043",
        WorkflowCompletion::default().finish(WorkflowOutcome::Failed(
            "payment failed: card declined".into(),
        )),
    )
    .await;
    // A return waiting for the parcel (a timer): the one the browser
    // cancels.
    start(
        store,
        CANCELED,
        "return",
        CANCELED_QUEUE,
        json!({ "sku": "HD-4", "cents": 2_400 }),
    )
    .await;
    decide(
        store,
        CANCELED_QUEUE,
        CANCELED,
        WorkflowCompletion::default()
            .start_timer(Duration::from_secs(3600), json!("payment reminder")),
    )
    .await;
    // Its charge in flight, leased by a worker.
    start(
        store,
        "order-1045",
        "order",
        "orders",
        json!({ "sku": "KB-87", "cents": 4_999 }),
    )
    .await;
    decide(
        store,
        "orders",
        "order-1045",
        WorkflowCompletion::default().schedule_activity(
            "charge_card",
            json!({ "cents": 4_999 }),
            None,
        ),
    )
    .await;
    run_activity(store, "orders", None).await;
    for number in [1046, 1047] {
        let id = format!("order-{number}");
        start(
            store,
            &id,
            "order",
            "orders",
            json!({ "sku": "CB-1", "cents": 1_250 }),
        )
        .await;
    }

    for user in ["ada", "grace", "linus"] {
        let id = format!("welcome-{user}");
        start(
            store,
            &id,
            "welcome_email",
            "emails",
            json!({ "user": user }),
        )
        .await;
        decide(
            store,
            "emails",
            &id,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!("sent"))),
        )
        .await;
    }
    start(
        store,
        "welcome-barbara",
        "welcome_email",
        "emails",
        json!({ "user": "barbara" }),
    )
    .await;

    start(
        store,
        "report-2026-12-06",
        "nightly_report",
        "reports",
        json!({ "day": "2026-12-06" }),
    )
    .await;
    let task = store
        .claim_workflow_task(
            &WorkerId::new("reports-worker-1").unwrap(),
            &[queue("reports")],
            LEASE,
        )
        .await
        .unwrap()
        .expect("the report's workflow task");
    store
        .fail_workflow_task(
            &task,
            "panicked at src/report.rs:88: template \"daily.html\" not found",
        )
        .await
        .unwrap();

    start(
        store,
        SCRIPT_ID,
        "ticket",
        "support",
        json!({ "subject": SCRIPT_ID }),
    )
    .await;
    store
        .signal_instance(SCRIPT_ID, "comment", json!({ "text": IMG_PAYLOAD }))
        .await
        .unwrap();
}

/// Serves the dashboard of `store` under `/pgwake` on a free loopback port:
/// its base URL and the server's handle.
/// Serves the returns queue until aborted: a task whose new events hold
/// the cancellation ends the execution canceled; any other changes nothing.
async fn serve_returns(store: Store) {
    let worker = WorkerId::new("returns-worker-2c1d").unwrap();
    loop {
        let claimed = store
            .claim_workflow_task(&worker, &[queue(CANCELED_QUEUE)], LEASE)
            .await;
        match claimed {
            Ok(Some(task)) => {
                let canceled = task
                    .new_events
                    .iter()
                    .any(|event| event.event_type == EventType::WorkflowExecutionCanceled);
                let decision = if canceled {
                    WorkflowCompletion::default().finish(WorkflowOutcome::Canceled)
                } else {
                    WorkflowCompletion::default()
                };
                store.complete_workflow_task(&task, decision).await.unwrap();
            }
            Ok(None) | Err(_) => actix_web::rt::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn serve(store: &Store, options: DashboardOptions) -> (String, actix_web::dev::ServerHandle) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let store = store.clone();
    let server = HttpServer::new(move || {
        App::new().service(scope("/pgwake", store.clone(), options.clone()))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)
    .unwrap()
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (format!("http://{address}/pgwake"), handle)
}

#[actix_rt::test]
async fn browser_filters_reads_a_timeline_cancels_and_shows_markup_as_text() {
    let Some(browser) = browser_or_skip() else {
        return;
    };
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    seed(&store).await;
    let (base, server) = serve(&store, DashboardOptions::new());
    let (read_only_base, read_only_server) = serve(&store, DashboardOptions::new().read_only(true));

    // The returns queue's workflow worker: it ends a return on its
    // cancellation, as a workflow's code would.
    let decider = actix_web::rt::spawn(serve_returns(store.clone()));

    let started = Instant::now();
    let mut command = std::process::Command::new(&browser.node);
    command
        .arg(&browser.script)
        .arg(&base)
        .arg(&read_only_base)
        .env("PGWAKE_CHROMIUM", &browser.chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Off the runtime's thread: the dashboard the script talks to is served
    // by this test's runtime.
    let (status, stdout, stderr) = actix_web::rt::task::spawn_blocking(move || run(command))
        .await
        .unwrap();
    assert!(
        status.is_some_and(|status| status.success()),
        "the browser script {}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        match status {
            Some(status) => format!("failed ({status})"),
            None => format!("ran longer than {SCRIPT_TIMEOUT:?} and was killed"),
        }
    );
    eprintln!(
        "browser script passed in {:?}:\n{stdout}",
        started.elapsed()
    );

    decider.abort();
    // The cancel the browser submitted reached the database, and the
    // instance ended canceled.
    let canceled = store.instance(CANCELED).await.unwrap().unwrap();
    assert_eq!(canceled.state, InstanceState::Finished);
    assert!(
        canceled.history.iter().any(|event| {
            event.event_type == EventType::WorkflowExecutionFinished
                && event.attributes.get("canceled").is_some()
        }),
        "{CANCELED} did not end canceled: {:?}",
        canceled.history
    );
    // And nothing else was canceled.
    for other in ["order-1045", "order-1046", SCRIPT_ID] {
        let snapshot = store.instance(other).await.unwrap().unwrap();
        assert!(
            !snapshot
                .pending
                .iter()
                .any(|event| event.event_type == EventType::WorkflowExecutionCanceled),
            "{other} was canceled too"
        );
    }
    server.stop(true).await;
    read_only_server.stop(true).await;
}
