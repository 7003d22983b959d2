//! Signals and cancellations (issue #11): those a decision sends to the
//! sub-workflows it starts reach them in the same transaction, and a signal
//! that reaches no execution is visible to its sender: a typed error from
//! `Store::signal_instance`, a `SignalNotDelivered` event for the sending
//! workflow (pending while it goes on, in its history when the decision
//! ends it), as every delivered one gets it a `SignalSent`. Each test on a fresh database; raw SQL only to look
//! at the tables.

mod support;

use std::time::Duration;

use pgwake::testing::{fresh_database, TestDatabase};
use pgwake::{
    Event, EventType, InstanceState, NewInstance, Queue, Store, StoreError, StoreOptions, WorkerId,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

/// A store on a fresh database, with a raw client on the same database.
async fn setup() -> (Store, tokio_postgres::Client, TestDatabase) {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let sql = support::connect(database.url()).await;
    (store, sql, database)
}

fn q(name: &str) -> Queue {
    Queue::new(name).unwrap()
}

fn types(events: &[Event]) -> Vec<EventType> {
    events.iter().map(|e| e.event_type).collect()
}

/// Creates `instance_id` on `queue` and claims its first task.
async fn create_and_claim(store: &Store, instance_id: &str, queue: &str) -> WorkflowTask {
    store
        .create_instance(NewInstance::new(instance_id, q(queue)))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[q(queue)], LEASE)
        .await
        .unwrap()
        .expect("the new instance's task");
    assert_eq!(
        task.instance.instance_id, instance_id,
        "claimed another instance"
    );
    task
}

/// Creates `instance_id` and completes its first task with `decision`.
async fn start_with(store: &Store, instance_id: &str, queue: &str, decision: WorkflowCompletion) {
    let task = create_and_claim(store, instance_id, queue).await;
    store.complete_workflow_task(&task, decision).await.unwrap();
}

async fn count(sql: &tokio_postgres::Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

#[actix_rt::test]
async fn a_signal_and_a_cancellation_reach_sub_workflows_started_by_the_same_decision() {
    let (store, sql, _db) = setup().await;
    let parent = create_and_claim(&store, "parent", "default").await;
    // The signal and the cancellation come first in the decision, before
    // the children are started: they must still reach them.
    let decision = WorkflowCompletion::default()
        .signal("child-1", "greet", json!({"hello": "child-1"}))
        .cancel("child-2")
        .start_sub_workflow(NewInstance::new("child-1", q("children")).with_input(json!(1)))
        .start_sub_workflow(NewInstance::new("child-2", q("children")).with_input(json!(2)));
    store
        .complete_workflow_task(&parent, decision)
        .await
        .unwrap();

    let child_1 = store.instance("child-1").await.unwrap().unwrap();
    assert_eq!(child_1.state, InstanceState::Active);
    assert_eq!(
        types(&child_1.pending),
        [
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived
        ],
        "the signal follows the child's start"
    );
    assert_eq!(child_1.pending[0].attributes, json!(1));
    assert_eq!(
        child_1.pending[1].attributes,
        json!({"name": "greet", "payload": {"hello": "child-1"}})
    );
    let child_2 = store.instance("child-2").await.unwrap().unwrap();
    assert_eq!(
        types(&child_2.pending),
        [
            EventType::WorkflowExecutionStarted,
            EventType::WorkflowExecutionCanceled
        ],
        "the cancellation follows the child's start"
    );

    // Both children's first tasks see the events in that order, and the
    // parent recorded nothing undelivered.
    let w = WorkerId::new("children-worker").unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let task = store
            .claim_workflow_task(&w, &[q("children")], LEASE)
            .await
            .unwrap()
            .expect("a child's first task");
        assert_eq!(task.parent.as_ref().unwrap().0.instance_id, "parent");
        seen.push((task.instance.instance_id.clone(), types(&task.new_events)));
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            (
                "child-1".to_string(),
                vec![
                    EventType::WorkflowExecutionStarted,
                    EventType::SignalReceived
                ]
            ),
            (
                "child-2".to_string(),
                vec![
                    EventType::WorkflowExecutionStarted,
                    EventType::WorkflowExecutionCanceled
                ]
            ),
        ]
    );
    let parent = store.instance("parent").await.unwrap().unwrap();
    assert_eq!(
        types(&parent.history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted,
            EventType::SubWorkflowScheduled,
            EventType::SubWorkflowScheduled
        ]
    );
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM pending_events WHERE event_type = 17"
        )
        .await,
        1,
        "one signal, delivered once"
    );
}

#[actix_rt::test]
async fn a_signal_to_a_sub_workflow_id_already_running_reaches_that_execution() {
    let (store, _sql, _db) = setup().await;
    // An execution that waits (a first decision that does nothing).
    start_with(&store, "busy", "default", WorkflowCompletion::default()).await;
    let running = store.instance("busy").await.unwrap().unwrap().instance;
    let parent = create_and_claim(&store, "parent", "default").await;
    let decision = WorkflowCompletion::default()
        .start_sub_workflow(NewInstance::new("busy", q("default")))
        .signal("busy", "s", json!("for whoever runs busy"));
    store
        .complete_workflow_task(&parent, decision)
        .await
        .unwrap();

    // No second execution: the child was refused (the parent hears so),
    // and the signal went to the one that runs.
    let busy = store.instance("busy").await.unwrap().unwrap();
    assert_eq!(busy.instance, running);
    assert_eq!(types(&busy.pending), [EventType::SignalReceived]);
    let parent = store.instance("parent").await.unwrap().unwrap();
    assert_eq!(
        types(&parent.pending),
        [EventType::SubWorkflowFailed, EventType::SignalSent]
    );
    assert_eq!(
        parent.pending[1].attributes,
        json!({"instance_id": "busy", "execution_id": running.execution_id, "name": "s"})
    );
}

#[actix_rt::test]
async fn a_signal_to_itself_reaches_the_sender_or_its_next_execution() {
    let (store, _sql, _db) = setup().await;
    let task = create_and_claim(&store, "looper", "default").await;
    let decision = WorkflowCompletion::default().signal("looper", "again", json!(1));
    store.complete_workflow_task(&task, decision).await.unwrap();
    let looper = store.instance("looper").await.unwrap().unwrap();
    assert_eq!(
        types(&looper.pending),
        [EventType::SignalReceived, EventType::SignalSent]
    );
    assert_eq!(
        types(&looper.history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted
        ]
    );

    // Continuing as new: the signal is the next execution's, after its start.
    let task = store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[q("default")], LEASE)
        .await
        .unwrap()
        .expect("the signal's task");
    let first_execution = task.instance.execution_id.clone();
    let decision = WorkflowCompletion::default()
        .signal("looper", "again", json!(2))
        .finish(WorkflowOutcome::ContinueAsNew(json!("next")));
    store.complete_workflow_task(&task, decision).await.unwrap();
    let looper = store.instance("looper").await.unwrap().unwrap();
    assert_ne!(looper.instance.execution_id, first_execution);
    assert_eq!(
        types(&looper.pending),
        [
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived
        ]
    );
    assert_eq!(
        looper.pending[1].attributes,
        json!({"name": "again", "payload": 2})
    );
}

#[actix_rt::test]
async fn a_signal_to_an_instance_without_an_active_execution_is_reported_to_the_sender() {
    let (store, sql, _db) = setup().await;
    start_with(
        &store,
        "finished",
        "other",
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
    )
    .await;
    let sender = create_and_claim(&store, "sender", "default").await;
    let logs = support::CapturedLogs::default();
    let guard = logs.install("pgwake=warn");
    let decision = WorkflowCompletion::default()
        .schedule_activity("charge", json!(500), None)
        .signal("nobody", "hello", json!({"from": "sender"}))
        .signal("finished", "bye", json!([1, 2]));
    store
        .complete_workflow_task(&sender, decision)
        .await
        .unwrap();
    drop(guard);

    // The decision applied as a whole: its activity is scheduled.
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM activities WHERE instance_id = 'sender'"
        )
        .await,
        1
    );
    // The sender, which goes on, is told which signals reached nobody by
    // pending events (its next task); no instance received them.
    let snapshot = store.instance("sender").await.unwrap().unwrap();
    assert_eq!(
        *types(&snapshot.history).last().unwrap(),
        EventType::ActivityScheduled
    );
    assert!(!types(&snapshot.history).contains(&EventType::SignalNotDelivered));
    assert_eq!(
        types(&snapshot.pending),
        [EventType::SignalNotDelivered, EventType::SignalNotDelivered]
    );
    let undelivered = &snapshot.pending[..];
    assert_eq!(undelivered[0].attributes["instance_id"], "nobody");
    assert_eq!(undelivered[0].attributes["name"], "hello");
    assert_eq!(
        undelivered[0].attributes["payload"],
        json!({"from": "sender"})
    );
    assert_eq!(undelivered[1].attributes["instance_id"], "finished");
    assert_eq!(undelivered[1].attributes["name"], "bye");
    assert_eq!(undelivered[1].attributes["payload"], json!([1, 2]));
    for event in undelivered {
        assert_eq!(event.schedule_event_id, 0);
        let reason = event.attributes["reason"].as_str().unwrap();
        assert!(reason.contains("no active execution"), "{reason}");
    }
    // The reports wake the sender: its next task holds them, in order.
    let next = store
        .claim_workflow_task(&WorkerId::new("w").unwrap(), &[q("default")], LEASE)
        .await
        .unwrap()
        .expect("the sender's task for its reports");
    assert_eq!(next.instance.instance_id, "sender");
    assert_eq!(
        types(&next.new_events),
        [EventType::SignalNotDelivered, EventType::SignalNotDelivered]
    );
    assert!(store.instance("nobody").await.unwrap().is_none());
    assert!(store
        .instance("finished")
        .await
        .unwrap()
        .unwrap()
        .pending
        .is_empty());
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM pending_events WHERE event_type = 17"
        )
        .await,
        0
    );
    let logs = logs.text();
    assert!(logs.contains("WARN"), "{logs}");
    for needle in [
        "signal not delivered",
        "sender=sender",
        "target=nobody",
        "signal=hello",
    ] {
        assert!(logs.contains(needle), "{needle:?} missing from: {logs}");
    }
    assert!(logs.contains("target=finished"), "{logs}");
}

#[actix_rt::test]
async fn an_undelivered_signal_comes_before_the_outcome_of_a_finishing_decision() {
    let (store, _sql, _db) = setup().await;
    let sender = create_and_claim(&store, "sender", "default").await;
    let decision = WorkflowCompletion::default()
        .signal("nobody", "done", json!(null))
        .finish(WorkflowOutcome::Completed(json!("ok")));
    store
        .complete_workflow_task(&sender, decision)
        .await
        .unwrap();

    let snapshot = store.instance("sender").await.unwrap().unwrap();
    assert_eq!(snapshot.state, InstanceState::Finished);
    assert_eq!(
        types(&snapshot.history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted,
            EventType::SignalNotDelivered,
            EventType::WorkflowExecutionFinished
        ],
        "the outcome stays the last event"
    );
    assert_eq!(snapshot.history[3].attributes, json!({"result": "ok"}));
}

#[actix_rt::test]
async fn signal_instance_refuses_a_missing_or_finished_instance_saying_what_to_do() {
    let (store, _sql, _db) = setup().await;
    start_with(
        &store,
        "finished",
        "default",
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
    )
    .await;
    for target in ["nobody", "finished"] {
        let err = store
            .signal_instance(target, "s", json!(null))
            .await
            .unwrap_err();
        match &err {
            StoreError::NotFound {
                instance_id,
                needs_active,
            } => {
                assert_eq!(instance_id, target);
                assert!(needs_active);
            }
            other => panic!("expected NotFound for {target}, got {other:?}"),
        }
        assert!(!err.is_transient(), "retrying the same signal cannot help");
        let message = err.to_string();
        assert!(message.contains(&format!("{target:?}")), "{message}");
        assert!(message.contains("no active execution"), "{message}");
        assert!(
            message.contains("create the instance (Store::create_instance) before signalling it"),
            "{message}"
        );
    }
    // Nothing was written for either.
    let finished = store.instance("finished").await.unwrap().unwrap();
    assert!(finished.pending.is_empty());
    assert!(store.instance("nobody").await.unwrap().is_none());
}
