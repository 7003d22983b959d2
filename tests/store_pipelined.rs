//! The decisions and results whose statements pgwake sends in one round
//! trip, BEGIN to COMMIT: a check that fails inside such a transaction rolls
//! back every statement of it, those sent before the failure included, and
//! the connection goes on serving.

mod support;

use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::{
    queues, NewInstance, Queue, Store, StoreError, StoreOptions, WorkerId, WorkflowCompletion,
    WorkflowOutcome, WorkflowTask,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

/// A fresh database holding instance `i1`, whose workflow task a store of
/// one connection has claimed (so that the operation after a failed
/// transaction runs on the very connection that carried it), and a plain
/// connection for looking behind the store's back.
async fn claimed_i1() -> (
    pgwake::testing::TestDatabase,
    Store,
    tokio_postgres::Client,
    WorkflowTask,
) {
    let database = fresh_database().await.unwrap();
    let mut options = StoreOptions::default();
    options.pool_size = 1;
    let store = Store::connect(database.url(), options).await.unwrap();
    let sql = support::connect(database.url()).await;
    store
        .create_instance(NewInstance::new("i1", Queue::new("default").unwrap()))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(
            &WorkerId::new("w1").unwrap(),
            &queues(["default"]).unwrap(),
            LEASE,
        )
        .await
        .unwrap()
        .expect("a workflow task to claim");
    (database, store, sql, task)
}

/// Everything a decision of `i1` could have written, and its lease.
async fn rows_of_i1(sql: &tokio_postgres::Client) -> (i64, i64, i64, i64, Option<i64>) {
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM history WHERE instance_id = 'i1'),
                    (SELECT count(*) FROM activities WHERE instance_id = 'i1'),
                    (SELECT count(*) FROM pending_events WHERE instance_id = 'i1'),
                    (SELECT count(*) FROM attributes WHERE instance_id = 'i1'),
                    (SELECT lease_id FROM instances WHERE instance_id = 'i1')",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

/// A decision that schedules an activity and a timer: sent in one round
/// trip, its lease statement first.
fn busy_decision() -> WorkflowCompletion {
    WorkflowCompletion::default()
        .schedule_activity("charge", json!({"cents": 500}), None)
        .start_timer(Duration::from_secs(30), json!("reminder"))
}

#[actix_rt::test]
async fn a_decision_whose_lease_was_taken_over_writes_nothing_of_its_statements() {
    let (_database, store, sql, task) = claimed_i1().await;
    // Another claim took the instance over (its lease ran out, say).
    sql.execute(
        "UPDATE instances SET lease_id = lease_id + 1, worker = 'w2' WHERE instance_id = 'i1'",
        &[],
    )
    .await
    .unwrap();
    let before = rows_of_i1(&sql).await;

    let err = store
        .complete_workflow_task(&task, busy_decision())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    // Not the activity, the timer, the history or their attributes, all
    // sent after the lease check in the same round trip.
    assert_eq!(rows_of_i1(&sql).await, before);

    // The connection that carried the aborted transaction serves on.
    let stats = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(stats.history.len(), 0);
}

#[actix_rt::test]
async fn a_decision_whose_events_changed_under_its_lease_is_refused_whole() {
    let (_database, store, sql, task) = claimed_i1().await;
    // Behind pgwake's back, the event the task was claimed for goes.
    sql.execute("DELETE FROM pending_events WHERE instance_id = 'i1'", &[])
        .await
        .unwrap();
    let before = rows_of_i1(&sql).await;

    let err = store
        .complete_workflow_task(&task, busy_decision())
        .await
        .unwrap_err();
    match &err {
        StoreError::Database { context, source } => {
            assert_eq!(*context, "opening the task's history", "{err}");
            let server = source.as_db_error().expect("the server's refusal");
            assert_eq!(server.code().code(), "PW002");
            assert!(
                server.message().contains("pending events changed"),
                "{server:?}"
            );
        }
        other => panic!("expected a database error, got {other:?}"),
    }
    // The lease release, sent first, is rolled back with the rest: the
    // task still holds its lease, and nothing else was written.
    assert_eq!(rows_of_i1(&sql).await, before);
    assert!(before.4.is_some(), "the task holds its lease");

    // Once the event is back, the same connection applies the task's
    // decision whole.
    sql.execute(
        "INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                     schedule_event_id)
         SELECT $1, instance_id, execution_id, $2, now(), 0 FROM instances WHERE instance_id = 'i1'",
        &[
            &task.new_events[0].event_id,
            &pgwake::EventType::WorkflowExecutionStarted.code(),
        ],
    )
    .await
    .unwrap();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!("done"))),
        )
        .await
        .unwrap();
    let finished = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(finished.state, pgwake::InstanceState::Finished);
}
