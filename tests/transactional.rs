//! Writes in the caller's own transaction (`*_in` methods and their wake
//! tokens), and the runtime's store used before the runtime starts, against
//! a real PostgreSQL: a rolled-back write leaves nothing and runs nothing, a
//! committed one runs, a dropped token still runs it through the commit's
//! NOTIFY, and a token's in-process wake-up finds the work only after the
//! commit.

mod support;

use std::time::Duration;

use pgwake::runtime::actors::QueuesTouched;
use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, ClientError, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{
    CancelOutcome, ConnectionConfig, EventType, InstanceRef, InstanceState, NewInstance, Runtime,
    RuntimeConfig, RuntimeHandle, TaskKind,
};
use serde_json::json;
use support::{eventually, notify_only, q, receive_within, NEVER};

/// How long a test waits for work it expects to run.
const WAIT: Duration = Duration::from_secs(30);

/// How long a test watches for work it expects not to run.
const QUIET: Duration = Duration::from_millis(500);

/// A pool of our own on `url`, as an application's (not pgwake's).
fn own_pool(url: &str) -> deadpool_postgres::Pool {
    let config = ConnectionConfig::from_url(url).unwrap();
    let manager =
        deadpool_postgres::Manager::new(config.postgres_config().clone(), tokio_postgres::NoTls);
    deadpool_postgres::Pool::builder(manager)
        .max_size(2)
        .build()
        .unwrap()
}

/// Rows of `table` whose `instance_id` is `id`.
async fn rows_of(sql: &tokio_postgres::Client, table: &str, id: &str) -> i64 {
    sql.query_one(
        &format!("SELECT count(*) FROM {table} WHERE instance_id = $1"),
        &[&id],
    )
    .await
    .unwrap()
    .get(0)
}

/// `greet` returns its input with a greeting; `await_signal` returns the
/// first value of its `go` signal.
fn workflows() -> Workflows {
    Workflows::new()
        .register("greet", |_: WorkflowContext, name: String| async move {
            Ok::<_, WorkflowError>(format!("hello {name}"))
        })
        .register("await_signal", |ctx: WorkflowContext, _: ()| async move {
            let mut go = ctx.signal_channel::<String>("go");
            let value = go.recv().await?;
            Ok::<_, WorkflowError>(value)
        })
}

async fn start_runtime(config: RuntimeConfig) -> RuntimeHandle {
    Runtime::builder(config)
        .workflow_worker(workflows().worker(["default"]))
        .start()
        .await
        .unwrap()
}

/// Waits until every listener listens: a NOTIFY committed from now on
/// reaches the workers.
async fn until_listening(runtime: &RuntimeHandle) {
    eventually(WAIT, "the listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
}

/// Waits until the workers of `queue` have polled and found nothing more
/// than `before` times.
async fn until_empty_polls(runtime: &RuntimeHandle, kind: TaskKind, queue: &str, before: u64) {
    eventually(WAIT, "an empty poll", || async {
        runtime.health().counters(kind, queue).empty_polls > before
    })
    .await;
}

/// Waits until the workers of `queue` have completed `tasks` tasks and no
/// claim is under way: the look a worker takes after a task's end is over,
/// so a wake-up from now on is the only thing that makes it claim.
async fn until_settled_after(runtime: &RuntimeHandle, kind: TaskKind, queue: &str, tasks: u64) {
    eventually(WAIT, "the look after the last task", || async {
        let health = runtime.health();
        health.counters(kind, queue).completed >= tasks
            && health
                .workers
                .iter()
                .filter(|worker| worker.kind == kind && worker.queues.iter().any(|q| q == queue))
                .all(|worker| worker.claiming_for.is_none() && worker.slots_used == 0)
    })
    .await;
}

#[actix_rt::test]
async fn writes_in_a_rolled_back_transaction_leave_no_rows_and_run_nothing() {
    let database = fresh_database().await.unwrap();
    let (activities, mut ran) = support::reporting_activities("jobs");
    let runtime = Runtime::builder(notify_only(database.url()))
        .workflow_worker(workflows().worker(["default"]))
        .activity_worker(activities)
        .start()
        .await
        .unwrap();
    let client = Client::new(runtime.store().clone());
    let sql = support::connect(database.url()).await;
    let pool = own_pool(database.url());
    until_listening(&runtime).await;

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let (_, started) = client
        .start_in(&tx, "greet", "ghost", &"nobody", StartOptions::default())
        .await
        .unwrap();
    let owner = InstanceRef {
        instance_id: "ghost-owner".into(),
        execution_id: "e".into(),
    };
    let (_, enqueued) = runtime
        .store()
        .enqueue_activity_in(&tx, &owner, &q("jobs"), "job", json!(1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    // Woken for nothing: what a caller that ignores the rollback does.
    runtime.wake(started.merge(enqueued));

    for table in ["instances", "pending_events", "attributes"] {
        assert_eq!(rows_of(&sql, table, "ghost").await, 0, "{table}");
    }
    for table in ["activities", "attributes"] {
        assert_eq!(rows_of(&sql, table, "ghost-owner").await, 0, "{table}");
    }
    // A workflow committed after it runs; the rolled-back one never existed.
    client
        .start("greet", "real", &"ada", StartOptions::default())
        .await
        .unwrap();
    let greeting: String = client.result("real", WAIT).await.unwrap();
    assert_eq!(greeting, "hello ada");
    assert!(client.describe("ghost").await.unwrap().is_none());
    assert!(
        tokio::time::timeout(QUIET, ran.recv()).await.is_err(),
        "a rolled-back activity ran"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_workflow_started_in_a_committed_transaction_runs_once_woken() {
    let database = fresh_database().await.unwrap();
    let runtime = start_runtime(notify_only(database.url())).await;
    let client = Client::new(runtime.store().clone());
    let pool = own_pool(database.url());

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    tx.batch_execute("CREATE TABLE signups (email text PRIMARY KEY)")
        .await
        .unwrap();
    tx.execute("INSERT INTO signups VALUES ($1)", &[&"ada@example.com"])
        .await
        .unwrap();
    let (started, token) = client
        .start_in(
            &tx,
            "greet",
            "greet-1",
            &"ada",
            StartOptions::default().queue(q("default")),
        )
        .await
        .unwrap();
    assert_eq!(token.queues().workflow, vec![q("default")]);
    tx.commit().await.unwrap();
    client.wake(token);

    let greeting: String = client.result("greet-1", WAIT).await.unwrap();
    assert_eq!(greeting, "hello ada");
    let about = client.describe("greet-1").await.unwrap().unwrap();
    assert_eq!(about.instance, started);
    assert_eq!(about.workflow.as_deref(), Some("greet"));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_dropped_token_still_runs_the_work_through_the_commits_notify() {
    let database = fresh_database().await.unwrap();
    // Fallbacks of 600 s: only a notification can wake the workers.
    let (activities, mut ran) = support::reporting_activities("jobs");
    let runtime = Runtime::builder(notify_only(database.url()))
        .workflow_worker(workflows().worker(["default"]))
        .activity_worker(activities)
        .start()
        .await
        .unwrap();
    let client = Client::new(runtime.store().clone());
    let pool = own_pool(database.url());
    until_listening(&runtime).await;

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let (_, started) = client
        .start_in(&tx, "greet", "greet-1", &"ada", StartOptions::default())
        .await
        .unwrap();
    let owner = InstanceRef {
        instance_id: "owner".into(),
        execution_id: "e".into(),
    };
    let (id, enqueued) = runtime
        .store()
        .enqueue_activity_in(&tx, &owner, &q("jobs"), "job", json!(1))
        .await
        .unwrap();
    drop((started, enqueued));
    tx.commit().await.unwrap();

    let greeting: String = client.result("greet-1", WAIT).await.unwrap();
    assert_eq!(greeting, "hello ada");
    assert_eq!(receive_within(&mut ran, WAIT, "the job").await, id);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_token_used_before_the_commit_wakes_for_nothing_and_the_commit_still_announces_the_work()
{
    let database = fresh_database().await.unwrap();
    let runtime = start_runtime(notify_only(database.url())).await;
    let client = Client::new(runtime.store().clone());
    let pool = own_pool(database.url());
    until_listening(&runtime).await;
    let empty_polls = runtime
        .health()
        .counters(TaskKind::Workflow, "default")
        .empty_polls;

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let (_, token) = client
        .start_in(&tx, "greet", "greet-1", &"ada", StartOptions::default())
        .await
        .unwrap();
    client.wake(token);
    // The worker woke, found no committed row, and went back to sleep.
    until_empty_polls(&runtime, TaskKind::Workflow, "default", empty_polls).await;
    tx.commit().await.unwrap();

    let greeting: String = client.result("greet-1", WAIT).await.unwrap();
    assert_eq!(greeting, "hello ada");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn in_poll_only_mode_only_a_wake_after_the_commit_runs_the_work() {
    let database = fresh_database().await.unwrap();
    let mut config = RuntimeConfig::new(database.url());
    config.notifications = false;
    config.fallback_while_degraded = NEVER;
    config.fallback_while_listening = NEVER;
    let (workflows, mut ran) = support::reporting_workflows("orders");
    let runtime = Runtime::builder(config)
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    let store = runtime.store().clone();
    let pool = own_pool(database.url());
    // Past its first poll, the worker sleeps until woken.
    until_empty_polls(&runtime, TaskKind::Workflow, "orders", 0).await;

    // Committed but not woken: nothing runs.
    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let (_, token) = store
        .create_instance_in(&tx, NewInstance::new("order-1", q("orders")))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, ran.recv()).await.is_err(),
        "order-1 ran before its wake-up"
    );
    // Woken after the commit: it runs at once.
    runtime.wake(token);
    let id = receive_within(&mut ran, WAIT, "order-1").await;
    assert_eq!(id, "order-1");
    // Its end makes the worker look once more; a wake-up during that look
    // would be owed a claim of its own (which could see order-2 committed).
    until_settled_after(&runtime, TaskKind::Workflow, "orders", 1).await;

    // Woken before the commit: the worker finds nothing then, and nothing
    // runs after the commit until the next wake-up.
    let empty_polls = runtime
        .health()
        .counters(TaskKind::Workflow, "orders")
        .empty_polls;
    let tx = connection.transaction().await.unwrap();
    let (_, token) = store
        .create_instance_in(&tx, NewInstance::new("order-2", q("orders")))
        .await
        .unwrap();
    runtime.wake(token);
    until_empty_polls(&runtime, TaskKind::Workflow, "orders", empty_polls).await;
    tx.commit().await.unwrap();
    assert!(
        tokio::time::timeout(QUIET, ran.recv()).await.is_err(),
        "order-2 ran, woken before its commit"
    );
    runtime.notifier().do_send(QueuesTouched {
        workflow: vec![q("orders")],
        ..Default::default()
    });
    let id = receive_within(&mut ran, WAIT, "order-2").await;
    assert_eq!(id, "order-2");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_signal_sent_in_a_transaction_arrives_only_if_it_commits() {
    let database = fresh_database().await.unwrap();
    let runtime = start_runtime(notify_only(database.url())).await;
    let client = Client::new(runtime.store().clone());
    let pool = own_pool(database.url());
    client
        .start("await_signal", "waiter", &(), StartOptions::default())
        .await
        .unwrap();

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let token = client
        .signal_in(&tx, "waiter", "go", &"rolled back")
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    drop(token);
    let snapshot = runtime.store().instance("waiter").await.unwrap().unwrap();
    assert!(snapshot
        .pending
        .iter()
        .chain(&snapshot.history)
        .all(|e| e.event_type != EventType::SignalReceived));

    let tx = connection.transaction().await.unwrap();
    let token = client
        .signal_in(&tx, "waiter", "go", &"committed")
        .await
        .unwrap();
    tx.commit().await.unwrap();
    client.wake(token);
    let value: String = client.result("waiter", WAIT).await.unwrap();
    assert_eq!(value, "committed");

    // No active execution: refused, and the transaction goes on.
    let tx = connection.transaction().await.unwrap();
    let err = runtime
        .store()
        .signal_instance_in(&tx, "waiter", "go", json!("late"))
        .await
        .unwrap_err();
    assert!(matches!(err, pgwake::StoreError::NotFound { .. }), "{err}");
    tx.execute("SELECT 1", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_cancel_requested_in_a_transaction_takes_effect_only_if_it_commits() {
    let database = fresh_database().await.unwrap();
    let runtime = start_runtime(notify_only(database.url())).await;
    let client = Client::new(runtime.store().clone());
    let pool = own_pool(database.url());
    client
        .start("await_signal", "waiter", &(), StartOptions::default())
        .await
        .unwrap();

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let (outcome, token) = client.cancel_in(&tx, "waiter").await.unwrap();
    assert_eq!(outcome, CancelOutcome::Requested);
    tx.rollback().await.unwrap();
    drop(token);
    let about = client.describe("waiter").await.unwrap().unwrap();
    assert_eq!(about.state, InstanceState::Active);
    let snapshot = runtime.store().instance("waiter").await.unwrap().unwrap();
    assert!(snapshot
        .pending
        .iter()
        .all(|e| e.event_type != EventType::WorkflowExecutionCanceled));

    let tx = connection.transaction().await.unwrap();
    let (outcome, token) = client.cancel_in(&tx, "waiter").await.unwrap();
    assert_eq!(outcome, CancelOutcome::Requested);
    tx.commit().await.unwrap();
    runtime.wake(token);
    let err = client.result::<String>("waiter", WAIT).await.unwrap_err();
    assert!(matches!(err, ClientError::Canceled { .. }), "{err}");

    // A finished instance: nothing to cancel, nothing to wake.
    let tx = connection.transaction().await.unwrap();
    let (outcome, token) = client.cancel_in(&tx, "waiter").await.unwrap();
    assert_eq!(outcome, CancelOutcome::AlreadyFinished);
    assert!(token.is_empty());
    tx.commit().await.unwrap();
    runtime.wake(token);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn an_activity_enqueued_in_a_committed_transaction_runs_once_woken() {
    let database = fresh_database().await.unwrap();
    let (activities, mut ran) = support::reporting_activities("jobs");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(activities)
        .start()
        .await
        .unwrap();
    let pool = own_pool(database.url());
    let owner = InstanceRef {
        instance_id: "owner".into(),
        execution_id: "e".into(),
    };

    let mut connection = pool.get().await.unwrap();
    let tx = connection.transaction().await.unwrap();
    let (id, token) = runtime
        .store()
        .enqueue_activity_in(&tx, &owner, &q("jobs"), "job", json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(token.queues().activity, vec![q("jobs")]);
    tx.commit().await.unwrap();
    runtime.wake(token);
    assert_eq!(receive_within(&mut ran, WAIT, "the job").await, id);

    // Refused before anything is written: the transaction goes on.
    let tx = connection.transaction().await.unwrap();
    let too_large = json!("x".repeat(runtime.store().options().max_payload_bytes));
    let err = runtime
        .store()
        .enqueue_activity_in(&tx, &owner, &q("jobs"), "job", too_large)
        .await
        .unwrap_err();
    assert!(
        matches!(err, pgwake::StoreError::PayloadTooLarge { .. }),
        "{err}"
    );
    tx.execute("SELECT 1", &[]).await.unwrap();
    tx.rollback().await.unwrap();
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_handler_starts_work_through_the_store_taken_before_the_runtime_started() {
    let database = fresh_database().await.unwrap();
    // Poll-only with fallbacks of 600 s: only the runtime's commit hook,
    // reached through the store taken before the start, can wake workers.
    let mut config = RuntimeConfig::new(database.url());
    config.notifications = false;
    config.fallback_while_degraded = NEVER;
    config.fallback_while_listening = NEVER;
    let mut builder = Runtime::builder(config);
    let client = Client::new(builder.store().unwrap());
    let for_handler = client.clone();
    let activities =
        Activities::new().register("spawn", move |_: ActivityContext, name: String| {
            let client = for_handler.clone();
            async move {
                client
                    .start(
                        "greet",
                        &format!("child-{name}"),
                        &name,
                        StartOptions::default(),
                    )
                    .await
                    .map_err(|err| ActivityError::new("start_failed", err.to_string()))?;
                Ok::<_, ActivityError>(())
            }
        });
    let workflows =
        workflows().register("parent", |ctx: WorkflowContext, name: String| async move {
            let _: () = ctx.activity("spawn", &name).await?;
            Ok::<_, WorkflowError>(())
        });
    let runtime = builder
        .workflow_worker(workflows.worker(["default"]))
        .activity_worker(activities.worker(["default"]))
        .start()
        .await
        .unwrap();

    client
        .start("parent", "parent-1", &"ada", StartOptions::default())
        .await
        .unwrap();
    client.result::<()>("parent-1", WAIT).await.unwrap();
    let greeting: String = client.result("child-ada", WAIT).await.unwrap();
    assert_eq!(greeting, "hello ada");
    runtime.shutdown(Duration::from_secs(5)).await;
}
