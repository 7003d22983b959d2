//! The SQL functions of migration 7 (docs/sql.md): they write the rows the
//! Rust store writes, inside the caller's transaction, so a workflow started
//! by SQL that commits runs and one that rolls back leaves nothing; the
//! triggers announce their rows at commit, which alone wakes a runtime;
//! signals, cancels and standalone activities reach workers; bad arguments
//! are refused with clear errors; and they work on tables in another
//! schema. The sqlx example (examples/sqlx_order.rs) runs here too.

#[allow(dead_code)] // its `main`
#[path = "../examples/sqlx_order.rs"]
mod sqlx_order;

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, ClientError, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{
    migrate, EventType, InstanceRef, Queue, Runtime, RuntimeConfig, RuntimeHandle, Store,
    StoreError, StoreOptions,
};
use serde_json::{json, Value};
use support::{connect, drain_until_sentinel, eventually, listen, notify_only};
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;

const WAIT: Duration = Duration::from_secs(30);
const QUEUE: &str = "sql-q";

/// A runtime on `QUEUE` that only a notification can wake (fallbacks of
/// 600 s), once its listeners listen.
async fn runtime(
    config: RuntimeConfig,
    workflows: &Workflows,
    activities: &Activities,
) -> RuntimeHandle {
    let runtime = Runtime::builder(config)
        .workflow_worker(workflows.worker([QUEUE]))
        .activity_worker(activities.worker([QUEUE]))
        .start()
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
    runtime
}

/// `echo` returns its input and counts its runs; `await_signal` returns the
/// signal `go`'s value; `await_cancel` waits to be canceled and then
/// completes, saying what `is_cancelled` says.
fn workflows(echo_runs: Arc<AtomicUsize>) -> Workflows {
    Workflows::new()
        .register("echo", move |_: WorkflowContext, input: Value| {
            echo_runs.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, WorkflowError>(input) }
        })
        .register("await_signal", |ctx: WorkflowContext, _: ()| async move {
            let mut go = ctx.signal_channel::<String>("go");
            let value = go.recv().await?;
            Ok::<_, WorkflowError>(format!("got {value}"))
        })
        .register("await_cancel", |ctx: WorkflowContext, _: ()| async move {
            ctx.cancelled().await;
            Ok::<_, WorkflowError>(format!("cleaned up, cancelled: {}", ctx.is_cancelled()))
        })
}

/// `record` reports its id, owner and input.
fn recording_activities() -> (
    Activities,
    mpsc::UnboundedReceiver<(String, InstanceRef, Value)>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let activities =
        Activities::new().register("record", move |ctx: ActivityContext, input: Value| {
            let sender = sender.clone();
            async move {
                let _ = sender.send((ctx.activity_id().to_string(), ctx.instance().clone(), input));
                Ok::<_, ActivityError>(())
            }
        });
    (activities, receiver)
}

/// The rows of `instance_id`'s active execution without what differs by
/// nature between two of them (ids, and times, given as "now" or not): its
/// instances row, and its pending events with their attributes' JSON.
async fn active_rows(client: &tokio_postgres::Client, instance_id: &str) -> Value {
    let row = client
        .query_one(
            "SELECT jsonb_build_object(
               'instance', (to_jsonb(i) - 'id' - 'instance_id' - 'execution_id' - 'created_at')
                           || jsonb_build_object('metadata', convert_from(i.metadata, 'UTF8')::jsonb),
               'events', (SELECT jsonb_agg((to_jsonb(e) - 'id' - 'event_id' - 'sequence_id'
                                            - 'instance_id' - 'execution_id' - 'timestamp')
                                           || jsonb_build_object(
                                                'data', convert_from(a.data, 'UTF8')::jsonb,
                                                'with_instance', e.timestamp = i.created_at,
                                                'sequenced', e.sequence_id > 0)
                                           ORDER BY e.id)
                            FROM pending_events e
                            JOIN attributes a ON a.instance_id = e.instance_id
                             AND a.execution_id = e.execution_id AND a.event_id = e.event_id
                           WHERE e.instance_id = i.instance_id AND e.execution_id = i.execution_id))::text
               FROM instances i WHERE i.instance_id = $1 AND i.state = 0",
            &[&instance_id],
        )
        .await
        .unwrap();
    serde_json::from_str(row.get(0)).unwrap()
}

/// Every row of any table that names `id` as an instance or activity.
async fn rows_naming(client: &tokio_postgres::Client, id: &str) -> i64 {
    client
        .query_one(
            "SELECT (SELECT count(*) FROM instances WHERE instance_id = $1)
                  + (SELECT count(*) FROM pending_events WHERE instance_id = $1)
                  + (SELECT count(*) FROM history WHERE instance_id = $1)
                  + (SELECT count(*) FROM activities WHERE instance_id = $1 OR activity_id = $1)
                  + (SELECT count(*) FROM attributes WHERE instance_id = $1)",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn sql_error(client: &tokio_postgres::Client, sql: &str) -> (SqlState, String) {
    let err = client.batch_execute(sql).await.expect_err(sql);
    let db = err.as_db_error().unwrap_or_else(|| panic!("{sql}: {err}"));
    (db.code().clone(), db.message().to_string())
}

#[actix_rt::test]
async fn a_rolled_back_start_leaves_nothing_and_a_committed_one_runs_with_its_input() {
    let database = fresh_database().await.unwrap();
    let echo_runs = Arc::new(AtomicUsize::new(0));
    let runtime = runtime(
        notify_only(database.url()),
        &workflows(echo_runs.clone()),
        &recording_activities().0,
    )
    .await;
    let mut client = connect(database.url()).await;

    let rolled_back = client.transaction().await.unwrap();
    let execution: String = rolled_back
        .query_one(
            "SELECT pgwake_start_workflow('rolled-back', 'echo', '{\"n\": 1}', $1)",
            &[&QUEUE],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!execution.is_empty());
    rolled_back.rollback().await.unwrap();
    assert_eq!(rows_naming(&client, "rolled-back").await, 0);

    let committed = client.transaction().await.unwrap();
    committed
        .execute(
            "SELECT pgwake_start_workflow('committed', 'echo', '{\"n\": 2, \"tags\": [\"a\", \"é\"]}', $1)",
            &[&QUEUE],
        )
        .await
        .unwrap();
    committed.commit().await.unwrap();
    // Only the trigger's NOTIFY at commit can have woken the runtime.
    let client_api = Client::new(runtime.store().clone());
    let result: Value = client_api.result("committed", WAIT).await.unwrap();
    assert_eq!(result, json!({"n": 2, "tags": ["a", "é"]}));
    assert_eq!(
        echo_runs.load(Ordering::SeqCst),
        1,
        "the rolled-back start ran"
    );
    assert_eq!(rows_naming(&client, "rolled-back").await, 0);
    let about = client_api.describe("committed").await.unwrap().unwrap();
    assert_eq!(about.workflow.as_deref(), Some("echo"));
    assert_eq!(about.queue.as_str(), QUEUE);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn the_triggers_announce_at_commit_and_not_before() {
    let database = fresh_database().await.unwrap();
    let (probe, mut received) = listen(
        database.url(),
        &["workflow_tasks", "activity_tasks", "probe"],
    )
    .await;
    let mut client = connect(database.url()).await;

    let tx = client.transaction().await.unwrap();
    tx.batch_execute(
        "SELECT pgwake_start_workflow('announced', 'echo', 'null', 'wq');
         SELECT pgwake_enqueue_activity('record', 'null', 'aq');",
    )
    .await
    .unwrap();
    let before = drain_until_sentinel(&probe, &mut received, "probe").await;
    assert!(before.is_empty(), "announced before the commit: {before:?}");
    tx.commit().await.unwrap();
    let after: Vec<(String, String)> = drain_until_sentinel(&probe, &mut received, "probe")
        .await
        .into_iter()
        .map(|r| (r.channel, r.payload))
        .collect();
    assert_eq!(
        after,
        [("workflow_tasks", "wq"), ("activity_tasks", "aq")]
            .map(|(c, p)| (c.to_string(), p.to_string()))
    );

    // Each in its own transaction: PostgreSQL folds equal notifications of
    // one transaction into one.
    for sql in [
        "SELECT pgwake_signal_workflow('announced', 's', '1')",
        "SELECT pgwake_cancel_workflow('announced')",
    ] {
        client.batch_execute(sql).await.unwrap();
        let seen: Vec<(String, String)> = drain_until_sentinel(&probe, &mut received, "probe")
            .await
            .into_iter()
            .map(|r| (r.channel, r.payload))
            .collect();
        assert_eq!(
            seen,
            [("workflow_tasks".to_string(), "wq".to_string())],
            "{sql}"
        );
    }
}

#[actix_rt::test]
async fn the_rows_are_those_the_rust_client_and_store_write() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let rust = Client::new(store.clone());
    let client = connect(database.url()).await;
    let input =
        json!({"sku": 7, "lines": [{"qty": 2, "note": "fragile \"glass\" ☂"}], "gift": null});

    rust.start(
        "echo",
        "by-rust",
        &input,
        StartOptions::default().queue(Queue::new(QUEUE).unwrap()),
    )
    .await
    .unwrap();
    client
        .execute(
            "SELECT pgwake_start_workflow('by-sql', 'echo', $1::text::jsonb, $2)",
            &[&input.to_string(), &QUEUE],
        )
        .await
        .unwrap();
    let started = active_rows(&client, "by-rust").await;
    assert_eq!(
        started["events"][0]["event_type"],
        json!(EventType::WorkflowExecutionStarted.code())
    );
    assert_eq!(started["events"][0]["data"], input);
    assert_eq!(started["instance"]["metadata"], json!({"workflow": "echo"}));
    assert_eq!(active_rows(&client, "by-sql").await, started);

    rust.signal("by-rust", "go", &json!({"why": "ready"}))
        .await
        .unwrap();
    let delivered: bool = client
        .query_one(
            "SELECT pgwake_signal_workflow('by-sql', 'go', '{\"why\": \"ready\"}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(delivered);
    rust.cancel("by-rust").await.unwrap();
    let requested: bool = client
        .query_one("SELECT pgwake_cancel_workflow('by-sql')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(requested);
    let events = active_rows(&client, "by-rust").await;
    assert_eq!(events["events"].as_array().unwrap().len(), 3);
    assert_eq!(
        events["events"][1]["data"],
        json!({"name": "go", "payload": {"why": "ready"}})
    );
    assert_eq!(
        events["events"][2]["event_type"],
        json!(EventType::WorkflowExecutionCanceled.code())
    );
    assert_eq!(active_rows(&client, "by-sql").await, events);

    // Read back through the store, as a worker would.
    let snapshot = store.instance("by-sql").await.unwrap().unwrap();
    assert_eq!(snapshot.queue.as_str(), QUEUE);
    assert_eq!(snapshot.metadata, Some(json!({"workflow": "echo"})));
    assert_eq!(
        snapshot
            .pending
            .iter()
            .map(|e| e.event_type)
            .collect::<Vec<_>>(),
        [
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived,
            EventType::WorkflowExecutionCanceled
        ]
    );
    assert_eq!(snapshot.pending[0].attributes, input);

    // A standalone activity: the same row and attributes but for its owner,
    // which the SQL function makes the activity itself.
    let owner = InstanceRef {
        instance_id: "owner".into(),
        execution_id: "e".into(),
    };
    let by_rust = store
        .enqueue_activity(&owner, &Queue::new(QUEUE).unwrap(), "record", input.clone())
        .await
        .unwrap();
    let by_sql: String = client
        .query_one(
            "SELECT pgwake_enqueue_activity('record', $1::text::jsonb, $2)",
            &[&input.to_string(), &QUEUE],
        )
        .await
        .unwrap()
        .get(0);
    let activity_row = |id: String| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT ((to_jsonb(a) - 'id' - 'activity_id' - 'instance_id' - 'execution_id' - 'timestamp')
                            || jsonb_build_object('data', convert_from(t.data, 'UTF8')::jsonb))::text
                       FROM activities a JOIN attributes t ON t.event_id = a.activity_id
                        AND t.instance_id = a.instance_id AND t.execution_id = a.execution_id
                      WHERE a.activity_id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            serde_json::from_str::<Value>(row.get(0)).unwrap()
        }
    };
    let rust_row = activity_row(by_rust).await;
    assert_eq!(
        rust_row["data"],
        json!({"name": "record", "input": input, "queue": QUEUE})
    );
    assert_eq!(rust_row["schedule_event_id"], json!(0));
    assert_eq!(activity_row(by_sql.clone()).await, rust_row);
    let owner_of_sql: (String, String) = {
        let row = client
            .query_one(
                "SELECT instance_id, execution_id FROM activities WHERE activity_id = $1",
                &[&by_sql],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(owner_of_sql, (by_sql.clone(), by_sql));
}

#[actix_rt::test]
async fn signal_and_cancel_through_sql_reach_running_workflows() {
    let database = fresh_database().await.unwrap();
    let runtime = runtime(
        notify_only(database.url()),
        &workflows(Arc::default()),
        &recording_activities().0,
    )
    .await;
    let client = connect(database.url()).await;
    let store = runtime.store().clone();
    client
        .batch_execute(&format!(
            "SELECT pgwake_start_workflow('signalled', 'await_signal', 'null', '{QUEUE}');
             SELECT pgwake_start_workflow('cancelled', 'await_cancel', 'null', '{QUEUE}');"
        ))
        .await
        .unwrap();
    // Running: each has had its first workflow task, and waits.
    for id in ["signalled", "cancelled"] {
        eventually(WAIT, "the first workflow task", || {
            let store = store.clone();
            async move {
                let snapshot = store.instance(id).await.unwrap().unwrap();
                !snapshot.history.is_empty() && snapshot.pending.is_empty()
            }
        })
        .await;
    }
    let sent: bool = client
        .query_one(
            "SELECT pgwake_signal_workflow('signalled', 'go', to_jsonb('now'::text))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sent);
    let requested: bool = client
        .query_one("SELECT pgwake_cancel_workflow('cancelled')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(requested);

    let api = Client::new(store.clone());
    let signalled: String = api.result("signalled", WAIT).await.unwrap();
    assert_eq!(signalled, "got now");
    let cancelled: String = api.result("cancelled", WAIT).await.unwrap();
    assert_eq!(cancelled, "cleaned up, cancelled: true");

    // Finished, or never there: nothing to signal or cancel, nothing written.
    for (sql, what) in [
        (
            "SELECT pgwake_signal_workflow('signalled', 'go', '1')",
            "a finished instance",
        ),
        (
            "SELECT pgwake_signal_workflow('nobody', 'go', '1')",
            "an unknown instance",
        ),
        (
            "SELECT pgwake_cancel_workflow('cancelled')",
            "a finished instance",
        ),
        (
            "SELECT pgwake_cancel_workflow('nobody')",
            "an unknown instance",
        ),
    ] {
        let answer: bool = client.query_one(sql, &[]).await.unwrap().get(0);
        assert!(!answer, "{sql}: {what}");
    }
    assert_eq!(rows_naming(&client, "nobody").await, 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn an_activity_enqueued_through_sql_runs_on_its_registered_handler() {
    let database = fresh_database().await.unwrap();
    let (activities, mut ran) = recording_activities();
    let runtime = runtime(
        notify_only(database.url()),
        &workflows(Arc::default()),
        &activities,
    )
    .await;
    let client = connect(database.url()).await;

    let id: String = client
        .query_one(
            "SELECT pgwake_enqueue_activity('record', '{\"image\": \"cat.jpg\"}', $1)",
            &[&QUEUE],
        )
        .await
        .unwrap()
        .get(0);
    let (ran_id, owner, input) = tokio::time::timeout(WAIT, ran.recv())
        .await
        .expect("the activity did not run")
        .unwrap();
    assert_eq!(ran_id, id);
    assert_eq!(owner.instance_id, id, "owned by no instance");
    assert_eq!(input, json!({"image": "cat.jpg"}));
    // Its result is recorded for no one: the activity's row goes (its
    // attributes stay, as for one enqueued by Store::enqueue_activity).
    eventually(WAIT, "the activity's row to go", || async {
        client
            .query_one(
                "SELECT count(*) FROM activities WHERE activity_id = $1",
                &[&id],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn bad_arguments_are_refused_with_errors_naming_them() {
    let database = fresh_database().await.unwrap();
    let client = connect(database.url()).await;
    let invalid = SqlState::INVALID_PARAMETER_VALUE;
    let cases: &[(&str, &str)] = &[
        (
            "SELECT pgwake_start_workflow('w-1', 'echo', 'null', 'has space')",
            "invalid queue name \"has space\"",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', 'echo', 'null', 'é')",
            "invalid queue name \"é\"",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', 'echo', 'null', '')",
            "invalid queue name \"\"",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', 'echo', 'null', NULL)",
            "invalid queue name NULL",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', 'echo', 'null', repeat('q', 129))",
            "(129 bytes)",
        ),
        (
            "SELECT pgwake_enqueue_activity('record', 'null', 'no;way')",
            "invalid queue name \"no;way\"",
        ),
        (
            "SELECT pgwake_start_workflow('', 'echo', 'null')",
            "invalid instance_id \"\"",
        ),
        (
            "SELECT pgwake_start_workflow(NULL, 'echo', 'null')",
            "invalid instance_id NULL",
        ),
        (
            "SELECT pgwake_start_workflow(repeat('é', 65), 'echo', 'null')",
            "(130 bytes)",
        ),
        (
            "SELECT pgwake_start_workflow(E'a\\nb', 'echo', 'null')",
            "invalid instance_id \"a\\nb\"",
        ),
        (
            "SELECT pgwake_signal_workflow('', 'go', 'null')",
            "pgwake_signal_workflow: invalid instance_id",
        ),
        (
            "SELECT pgwake_cancel_workflow(repeat('x', 129))",
            "pgwake_cancel_workflow: invalid instance_id",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', '', 'null')",
            "workflow must name",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', NULL, 'null')",
            "workflow must name",
        ),
        (
            "SELECT pgwake_signal_workflow('w-1', '', 'null')",
            "signal must name",
        ),
        (
            "SELECT pgwake_enqueue_activity('', 'null')",
            "activity must name",
        ),
        (
            "SELECT pgwake_start_workflow('w-1', 'echo', to_jsonb(repeat('x', 1048575)))",
            "input is 1048577 bytes as stored JSON, more than the 1048576 bytes",
        ),
        (
            "SELECT pgwake_signal_workflow('w-1', 'go', to_jsonb(repeat('x', 1048576)))",
            "payload makes the signal",
        ),
        (
            "SELECT pgwake_enqueue_activity('record', to_jsonb(repeat('x', 1048576)))",
            "input makes the activity",
        ),
    ];
    for (sql, expected) in cases {
        let (code, message) = sql_error(&client, sql).await;
        assert_eq!(code, invalid, "{sql}: {message}");
        assert!(
            message.contains(expected),
            "{sql}: {message:?} lacks {expected:?}"
        );
    }
    assert_eq!(
        client
            .query_one("SELECT count(*) FROM instances", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    // The limits themselves are accepted: 1 MiB of JSON, 128-byte ids and queues.
    client
        .batch_execute(
            "SELECT pgwake_start_workflow(repeat('i', 128), 'echo', to_jsonb(repeat('x', 1048574)), repeat('q', 128));
             SELECT pgwake_start_workflow('w-2', 'echo', NULL, 'orders.eu-1:A_b');",
        )
        .await
        .unwrap();

    // One active execution per id: a second start is a unique violation
    // naming the id; once the first has finished, the id may start again.
    client
        .batch_execute("SELECT pgwake_start_workflow('twice', 'echo', 'null')")
        .await
        .unwrap();
    let (code, message) = sql_error(
        &client,
        "SELECT pgwake_start_workflow('twice', 'echo', 'null')",
    )
    .await;
    assert_eq!(code, SqlState::UNIQUE_VIOLATION, "{message}");
    assert!(
        message.contains("\"twice\" already has an active execution"),
        "{message}"
    );
    client
        .batch_execute(
            "UPDATE instances SET state = 2, completed_at = now() WHERE instance_id = 'twice'",
        )
        .await
        .unwrap();
    client
        .batch_execute("SELECT pgwake_start_workflow('twice', 'echo', 'null')")
        .await
        .unwrap();

    // Under an older snapshot than the statement's, a concurrent start of
    // the id could go unseen: refused.
    for isolation in ["REPEATABLE READ", "SERIALIZABLE"] {
        let (code, message) = sql_error(
            &client,
            &format!(
                "BEGIN ISOLATION LEVEL {isolation};
                 SELECT pgwake_start_workflow('isolated', 'echo', 'null');"
            ),
        )
        .await;
        client.batch_execute("ROLLBACK").await.unwrap();
        assert_eq!(code, SqlState::INVALID_TRANSACTION_STATE, "{message}");
        assert!(
            message.contains(&format!(
                "must run in a READ COMMITTED transaction, not {isolation}"
            )),
            "{message}"
        );
    }
    assert_eq!(rows_naming(&client, "isolated").await, 0);
}

#[actix_rt::test]
async fn a_start_through_sql_and_one_through_rust_of_one_id_exclude_each_other() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let mut client = connect(database.url()).await;
    let observer = connect(database.url()).await;

    let tx = client.transaction().await.unwrap();
    tx.execute(
        "SELECT pgwake_start_workflow('contended', 'echo', 'null')",
        &[],
    )
    .await
    .unwrap();
    // The Rust start waits for the id's advisory lock, which the open
    // transaction holds ...
    let rust = actix_rt::spawn({
        let client = Client::new(store.clone());
        async move {
            client
                .start("echo", "contended", &(), StartOptions::default())
                .await
        }
    });
    eventually(WAIT, "the Rust start to wait for the lock", || async {
        observer
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    // ... and finds the execution that the commit made visible.
    tx.commit().await.unwrap();
    match rust.await.unwrap() {
        Err(ClientError::Store(StoreError::AlreadyExists { instance_id })) => {
            assert_eq!(instance_id, "contended")
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(
        observer
            .query_one(
                "SELECT count(*) FROM instances WHERE instance_id = 'contended'",
                &[]
            )
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
}

#[actix_rt::test]
async fn the_functions_write_to_the_tables_of_their_own_schema() {
    let database = fresh_database().await.unwrap();
    // pgwake's tables in public (the template) and in billing as well.
    let mut migrator = connect(database.url()).await;
    migrator
        .batch_execute("CREATE SCHEMA billing; SET search_path = billing")
        .await
        .unwrap();
    migrate::up(&mut migrator, None).await.unwrap();
    let separator = if database.url().contains('?') {
        '&'
    } else {
        '?'
    };
    let billing_url = format!(
        "{}{separator}options=-c%20search_path%3Dbilling",
        database.url()
    );
    let mut config = notify_only(&billing_url);
    config.schema = Some("billing".to_string());
    let runtime = runtime(
        config,
        &workflows(Arc::default()),
        &recording_activities().0,
    )
    .await;

    // A writer whose search_path is public's calls billing's function by its
    // full name; it writes billing's tables, whatever the caller's path.
    let client = connect(database.url()).await;
    client
        .batch_execute(&format!(
            "SELECT billing.pgwake_start_workflow('invoice-1', 'echo', '\"billed\"', '{QUEUE}')"
        ))
        .await
        .unwrap();
    let result: String = Client::new(runtime.store().clone())
        .result("invoice-1", WAIT)
        .await
        .unwrap();
    assert_eq!(result, "billed");
    let counts: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM public.instances WHERE instance_id = 'invoice-1'),
                        (SELECT count(*) FROM billing.instances WHERE instance_id = 'invoice-1')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(counts, (0, 1));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn the_sqlx_example_commits_an_order_and_its_workflow_together() {
    let database = fresh_database().await.unwrap();
    let result = sqlx_order::run(database.url()).await.unwrap();
    assert!(
        result.starts_with("sku-7 shipped, 1250 cents charged for order-"),
        "{result}"
    );

    // When the workflow cannot start (its id is running already), the
    // order's row goes with it.
    let pool = sqlx::PgPool::connect(database.url()).await.unwrap();
    let client = connect(database.url()).await;
    client
        .batch_execute("SELECT pgwake_start_workflow('order-busy', 'fulfil', 'null', 'orders')")
        .await
        .unwrap();
    let order = |id: &str| sqlx_order::Order {
        id: id.to_string(),
        sku: "sku-1".to_string(),
        cents: 100,
    };
    let err = sqlx_order::place_order(&pool, &order("order-busy"))
        .await
        .unwrap_err();
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .unwrap_or_default();
    assert_eq!(code, "23505", "{err}");
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM orders WHERE id = 'order-busy'),
                    (SELECT count(*) FROM instances WHERE instance_id = 'order-busy')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 1));
    pool.close().await;
}
