//! A workflow task that fails (its code panics, its history does not
//! replay) backs off, 1 s doubling to 5 min, with its attempts and last
//! error visible until a task completes; and every completed task opens
//! its part of the history with `WorkflowTaskStarted`, as go-workflows'
//! histories do. Against a real PostgreSQL.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use pgwake::testing::fresh_database;
use pgwake::workflow::{Client, StartOptions, WorkflowContext, WorkflowError, Workflows};
use pgwake::{
    EventType, NewInstance, Runtime, RuntimeConfig, RuntimeHandle, StoreError, WorkflowCompletion,
    WorkflowOutcome,
};
use support::{q, setup, worker};

const WAIT: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(60);

async fn start(url: &str, workflows: &Workflows) -> RuntimeHandle {
    Runtime::builder(RuntimeConfig::new(url))
        .workflow_worker(workflows.worker(["default"]))
        .start()
        .await
        .unwrap()
}

/// The instance row's `locked_until` and `created_at` while its task has
/// failed exactly `attempts` times in a row; `None` once that count moved on.
async fn backoff_row(
    sql: &tokio_postgres::Client,
    instance_id: &str,
    attempts: i32,
) -> Option<(SystemTime, SystemTime)> {
    sql.query_opt(
        "SELECT locked_until, created_at FROM instances
          WHERE instance_id = $1 AND state = 0 AND task_attempts = $2",
        &[&instance_id, &attempts],
    )
    .await
    .unwrap()
    .map(|row| (row.get(0), row.get(1)))
}

/// Waits until `describe` shows `attempts` failed tasks in a row.
async fn until_attempts(client: &Client, instance_id: &str, attempts: u32) -> Option<String> {
    support::until_some(WAIT, &format!("{attempts} failed attempts"), || async {
        let about = client.describe(instance_id).await.unwrap()?;
        (about.task_attempts == attempts).then_some(about.last_task_error)
    })
    .await
}

#[actix_rt::test]
async fn a_panicking_workflow_task_is_retried_after_1_then_2_seconds_with_its_attempts_visible() {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    let workflows = Workflows::new().register("flaky", |_: WorkflowContext, _: ()| async move {
        let run = RUNS.fetch_add(1, Ordering::SeqCst) + 1;
        if run <= 2 {
            panic!("flaky workflow code, run {run}");
        }
        Ok::<_, WorkflowError>("done".to_string())
    });
    let runtime = start(database.url(), &workflows).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("flaky", "flaky-1", &(), StartOptions::default())
        .await
        .unwrap();

    let error = until_attempts(&client, "flaky-1", 1).await;
    let error = error.expect("the first failure's error");
    assert!(
        error.contains("flaky workflow code, run 1"),
        "last_task_error: {error}"
    );
    let (first_retry_at, created_at) = backoff_row(&sql, "flaky-1", 1)
        .await
        .expect("still backing off after the first failure");
    // Database clock throughout: the first failure came after the instance
    // was created, and its retry no earlier than 1 s after that failure.
    assert!(
        first_retry_at.duration_since(created_at).unwrap() >= Duration::from_secs(1),
        "retry at {first_retry_at:?}, created at {created_at:?}"
    );

    let error = until_attempts(&client, "flaky-1", 2).await;
    let error = error.expect("the second failure's error");
    assert!(
        error.contains("flaky workflow code, run 2"),
        "last_task_error: {error}"
    );
    let (second_retry_at, _) = backoff_row(&sql, "flaky-1", 2)
        .await
        .expect("still backing off after the second failure");
    // The second failure came no earlier than the first retry was due, and
    // puts the next retry 2 s after itself.
    assert!(
        second_retry_at.duration_since(first_retry_at).unwrap() >= Duration::from_secs(2),
        "first retry at {first_retry_at:?}, second at {second_retry_at:?}"
    );

    let result: String = client.result("flaky-1", WAIT).await.unwrap();
    assert_eq!(result, "done");
    assert_eq!(RUNS.load(Ordering::SeqCst), 3);
    let about = client.describe("flaky-1").await.unwrap().unwrap();
    assert_eq!((about.task_attempts, about.last_task_error), (0, None));
    // The task that completed started no earlier than its retry was due.
    let snapshot = runtime.store().instance("flaky-1").await.unwrap().unwrap();
    let started = snapshot
        .history
        .iter()
        .find(|e| e.event_type == EventType::WorkflowTaskStarted)
        .expect("the completed task's WorkflowTaskStarted");
    assert!(
        started.timestamp >= second_retry_at,
        "ran at {:?}, due at {second_retry_at:?}",
        started.timestamp
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_non_deterministic_workflow_shows_why_and_is_not_retried_within_a_second() {
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    let original = Workflows::new().register("flip", |ctx: WorkflowContext, _: ()| async move {
        let _: u64 = ctx.activity("A", &1u64).await?;
        Ok::<_, WorkflowError>(())
    });
    let changed = Workflows::new().register("flip", |ctx: WorkflowContext, _: ()| async move {
        let _: u64 = ctx.activity("B", &1u64).await?;
        Ok::<_, WorkflowError>(())
    });
    // The original code schedules A; no activity worker runs it.
    let first = start(database.url(), &original).await;
    let client = Client::new(first.store().clone());
    client
        .start("flip", "flip-1", &(), StartOptions::default())
        .await
        .unwrap();
    support::eventually(WAIT, "A to be scheduled", || async {
        let snapshot = first.store().instance("flip-1").await.unwrap().unwrap();
        snapshot
            .history
            .iter()
            .any(|e| e.event_type == EventType::ActivityScheduled)
    })
    .await;
    first.shutdown(Duration::from_secs(5)).await;
    // A completes; the changed code, which schedules B, replays the next task.
    let store = pgwake::Store::connect(database.url(), pgwake::StoreOptions::default())
        .await
        .unwrap();
    let activity = store
        .claim_activity_tasks(&worker("test"), &[q("default")], 1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("activity A");
    store
        .complete_activity_task(&activity, Ok(serde_json::json!(2)))
        .await
        .unwrap();
    let runtime = start(database.url(), &changed).await;
    let client = Client::new(runtime.store().clone());

    let error = until_attempts(&client, "flip-1", 1).await;
    let error = error.expect("the failure's error");
    assert!(
        error.contains("non-determinism"),
        "last_task_error: {error}"
    );
    let held_back: bool = sql
        .query_opt(
            "SELECT locked_until >= now() + interval '0.5 s' AND worker IS NULL
               FROM instances WHERE instance_id = 'flip-1' AND task_attempts = 1",
            &[],
        )
        .await
        .unwrap()
        .expect("still at one failed attempt")
        .get(0);
    assert!(held_back, "the retry is due a second after the failure");
    let about = client.describe("flip-1").await.unwrap().unwrap();
    assert_eq!(about.state, pgwake::InstanceState::Active);
    assert_eq!(
        about.task_attempts, 1,
        "not retried within the first second"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_simple_workflows_history_starts_with_workflow_task_started() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new().register("simple", |_: WorkflowContext, _: ()| async move {
        Ok::<_, WorkflowError>(1u32)
    });
    let runtime = start(database.url(), &workflows).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("simple", "simple-1", &(), StartOptions::default())
        .await
        .unwrap();
    let result: u32 = client.result("simple-1", WAIT).await.unwrap();
    assert_eq!(result, 1);
    let snapshot = runtime.store().instance("simple-1").await.unwrap().unwrap();
    let layout: Vec<(i64, EventType, i64)> = snapshot
        .history
        .iter()
        .map(|e| (e.sequence_id, e.event_type, e.schedule_event_id))
        .collect();
    // go-workflows' e2e test SimpleWorkflow_ExpectedHistory expects the same.
    assert_eq!(
        layout,
        [
            (1, EventType::WorkflowTaskStarted, 0),
            (2, EventType::WorkflowExecutionStarted, 0),
            (3, EventType::WorkflowExecutionFinished, 0),
        ]
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn each_completed_task_opens_its_part_of_the_history_with_workflow_task_started() {
    let (store, _sql, _database) = setup().await;
    let me = worker("wts");
    let queues = [q("wts")];
    store
        .create_instance(NewInstance::new("two-tasks", q("wts")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .expect("the first task");
    assert_eq!(task.last_sequence_id, 0);
    let decision = WorkflowCompletion::default().schedule_activity("a", serde_json::json!(1), None);
    store.complete_workflow_task(&task, decision).await.unwrap();
    let activity = store
        .claim_activity_tasks(&me, &queues, 1, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("the activity");
    store
        .complete_activity_task(&activity, Ok(serde_json::json!(2)))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .expect("the second task");
    assert_eq!(task.last_sequence_id, 3);
    let done =
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(serde_json::json!(3)));
    store.complete_workflow_task(&task, done).await.unwrap();

    let history = store.instance("two-tasks").await.unwrap().unwrap().history;
    let layout: Vec<(i64, EventType, i64)> = history
        .iter()
        .map(|e| (e.sequence_id, e.event_type, e.schedule_event_id))
        .collect();
    assert_eq!(
        layout,
        [
            (1, EventType::WorkflowTaskStarted, 0),
            (2, EventType::WorkflowExecutionStarted, 0),
            (3, EventType::ActivityScheduled, 0),
            (4, EventType::WorkflowTaskStarted, 0),
            // It answers the activity scheduled at #3.
            (5, EventType::ActivityCompleted, 3),
            (6, EventType::WorkflowExecutionFinished, 0),
        ]
    );
    assert!(history[0].attributes.is_null());
}

#[actix_rt::test]
async fn fail_workflow_task_counts_stores_the_error_and_holds_the_instance_back() {
    let (store, sql, _database) = setup().await;
    let (me, other) = (worker("failing"), worker("other"));
    let queues = [q("wf")];
    store
        .create_instance(NewInstance::new("fails", q("wf")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .unwrap();

    let retry_in = store.fail_workflow_task(&task, "boom").await.unwrap();
    assert_eq!(retry_in, Duration::from_secs(1));
    let snapshot = store.instance("fails").await.unwrap().unwrap();
    assert_eq!(snapshot.task_attempts, 1);
    assert_eq!(snapshot.last_task_error.as_deref(), Some("boom"));
    let row = sql
        .query_one(
            "SELECT worker, lease_id, sticky_until, locked_until <= now() + interval '1 s'
               FROM instances WHERE instance_id = 'fails'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    assert_eq!(row.get::<_, Option<i64>>(1), None);
    assert_eq!(row.get::<_, Option<SystemTime>>(2), None);
    assert!(
        row.get::<_, bool>(3),
        "due no later than 1 s after the failure"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats[0].failing_workflow_tasks, 1, "{stats:?}");

    // The task failed already: its lease is gone.
    let again = store.fail_workflow_task(&task, "boom").await;
    assert!(
        matches!(again, Err(StoreError::LeaseLost { .. })),
        "{again:?}"
    );

    // Due again (as if the delay had passed): claimed, failed once more,
    // the delay doubles.
    sql.batch_execute("UPDATE instances SET locked_until = now() - interval '1 ms'")
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&other, &queues, LEASE)
        .await
        .unwrap()
        .expect("claimable once due");
    let retry_in = store.fail_workflow_task(&task, "boom again").await.unwrap();
    assert_eq!(retry_in, Duration::from_secs(2));
    let snapshot = store.instance("fails").await.unwrap().unwrap();
    assert_eq!(snapshot.task_attempts, 2);
    assert_eq!(snapshot.last_task_error.as_deref(), Some("boom again"));

    // A completed task ends the run of failures.
    sql.batch_execute("UPDATE instances SET locked_until = now() - interval '1 ms'")
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .unwrap();
    store
        .complete_workflow_task(&task, WorkflowCompletion::default())
        .await
        .unwrap();
    let snapshot = store.instance("fails").await.unwrap().unwrap();
    assert_eq!(
        (snapshot.task_attempts, snapshot.last_task_error),
        (0, None)
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats[0].failing_workflow_tasks, 0, "{stats:?}");
}

#[actix_rt::test]
async fn a_stale_lease_cannot_fail_the_task_of_its_successor() {
    let (store, sql, _database) = setup().await;
    let (first, second) = (worker("first"), worker("second"));
    let queues = [q("wf")];
    store
        .create_instance(NewInstance::new("taken-over", q("wf")))
        .await
        .unwrap();
    let stale = store
        .claim_workflow_task(&first, &queues, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    support::wait_until_expired(&sql, "instances", "instance_id = 'taken-over'").await;
    let current = store
        .claim_workflow_task(&second, &queues, LEASE)
        .await
        .unwrap()
        .expect("taken over once the lease expired");

    let refused = store.fail_workflow_task(&stale, "late").await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "{refused:?}"
    );
    let snapshot = store.instance("taken-over").await.unwrap().unwrap();
    assert_eq!(
        (snapshot.task_attempts, snapshot.last_task_error),
        (0, None)
    );
    // The successor's lease is untouched: it still completes.
    store
        .complete_workflow_task(&current, WorkflowCompletion::default())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn the_retry_delay_is_capped_at_five_minutes() {
    let (store, sql, _database) = setup().await;
    let me = worker("capped");
    let queues = [q("wf")];
    store
        .create_instance(NewInstance::new("often", q("wf")))
        .await
        .unwrap();
    sql.batch_execute("UPDATE instances SET task_attempts = 40")
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .unwrap();
    let retry_in = store.fail_workflow_task(&task, "again").await.unwrap();
    assert_eq!(retry_in, Duration::from_secs(300));
    let row = sql
        .query_one(
            "SELECT task_attempts, locked_until - now() <= interval '300 s'
               FROM instances WHERE instance_id = 'often'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 41);
    assert!(row.get::<_, bool>(1));
}

#[actix_rt::test]
async fn a_failed_tasks_retry_is_a_due_time_the_claim_reports() {
    let (store, sql, _database) = setup().await;
    let (me, idle) = (worker("failing"), worker("idle"));
    let queues = [q("wf")];
    store
        .create_instance(NewInstance::new("later", q("wf")))
        .await
        .unwrap();
    // Four failures before: the next one waits 16 s.
    sql.batch_execute("UPDATE instances SET task_attempts = 4")
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .unwrap();
    let retry_in = store.fail_workflow_task(&task, "later").await.unwrap();
    assert_eq!(retry_in, Duration::from_secs(16));

    let poll = store
        .poll_workflow_task_detailed(&idle, &queues, LEASE)
        .await
        .unwrap();
    assert!(poll.task.is_none(), "not claimable while it backs off");
    assert!(!poll.skipped_locked);
    let due_in = poll.due_in.expect("the retry is due");
    assert!(
        due_in > Duration::ZERO && due_in <= retry_in,
        "due in {due_in:?}"
    );
    let next = store.next_due_in(&queues).await.unwrap().expect("due");
    assert!(next <= retry_in, "due in {next:?}");
    let stats = store.stats().await.unwrap();
    assert_eq!(stats[0].claimable_workflow_tasks, 0, "{stats:?}");
}

#[actix_rt::test]
async fn a_long_task_error_is_kept_cut_to_8_kib() {
    let (store, _sql, _database) = setup().await;
    let me = worker("long");
    let queues = [q("wf")];
    store
        .create_instance(NewInstance::new("long", q("wf")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, LEASE)
        .await
        .unwrap()
        .unwrap();
    let error = format!("{}\0tail", "é".repeat(6 * 1024));
    store.fail_workflow_task(&task, &error).await.unwrap();
    let stored = store
        .instance("long")
        .await
        .unwrap()
        .unwrap()
        .last_task_error
        .unwrap();
    assert_eq!(stored.len(), 8 * 1024);
    assert!(error.starts_with(&stored));
}
