//! go-workflows' backend conformance suite, ported: one test per behaviour,
//! each on a fresh database.

mod support;

use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::{
    queues, CancelOutcome, EventType, InstanceState, NewInstance, Queue, Store, StoreError,
    StoreOptions, WorkerId, WorkflowCompletion, WorkflowOutcome,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);

async fn store() -> Store {
    let database = fresh_database().await.unwrap();
    Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap()
}

fn q(name: &str) -> Queue {
    Queue::new(name).unwrap()
}

fn worker(name: &str) -> WorkerId {
    WorkerId::new(name).unwrap()
}

fn types(events: &[pgwake::Event]) -> Vec<EventType> {
    events.iter().map(|e| e.event_type).collect()
}

#[actix_rt::test]
async fn create_instance() {
    let store = store().await;
    let created = store
        .create_instance(NewInstance::new("i1", q("default")).with_input(json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(created.instance_id, "i1");
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(snapshot.state, InstanceState::Active);
    assert_eq!(snapshot.instance, created);
    assert_eq!(
        types(&snapshot.pending),
        [EventType::WorkflowExecutionStarted]
    );
    assert_eq!(snapshot.pending[0].attributes, json!({"n": 1}));
}

#[actix_rt::test]
async fn creating_the_same_instance_id_twice_errors() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let err = store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err:?}");
}

#[actix_rt::test]
async fn metadata_round_trips() {
    let store = store().await;
    let metadata = json!({"tenant": "acme", "trace": [1, 2, 3]});
    store
        .create_instance(NewInstance::new("i1", q("default")).with_metadata(metadata.clone()))
        .await
        .unwrap();
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(snapshot.metadata, Some(metadata.clone()));
    let task = store
        .claim_workflow_task(&worker("w"), &queues(["default"]).unwrap(), LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.metadata, Some(metadata));
}

/// Claims the only workflow task of `queue` (panics if there is none).
async fn claim(store: &Store, by: &str, queue: &str) -> pgwake::WorkflowTask {
    store
        .claim_workflow_task(&worker(by), &queues([queue]).unwrap(), LEASE)
        .await
        .unwrap()
        .expect("a workflow task to claim")
}

#[actix_rt::test]
async fn removing_an_instance_in_progress_errors() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let err = store.remove_instance("i1").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFinished { .. }), "{err:?}");
    assert!(store.instance("i1").await.unwrap().is_some());
}

#[actix_rt::test]
async fn removing_an_unknown_instance_errors() {
    let store = store().await;
    let err = store.remove_instance("nobody").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[actix_rt::test]
async fn claim_returns_nothing_when_there_is_no_work() {
    let store = store().await;
    let task = store
        .claim_workflow_task(&worker("w"), &queues(["default"]).unwrap(), LEASE)
        .await
        .unwrap();
    assert!(task.is_none());
}

#[actix_rt::test]
async fn claim_returns_a_task() {
    let store = store().await;
    let created = store
        .create_instance(NewInstance::new("i1", q("default")).with_input(json!("go")))
        .await
        .unwrap();
    let task = claim(&store, "w", "default").await;
    assert_eq!(task.instance, created);
    assert_eq!(task.last_sequence_id, 0);
    assert_eq!(
        types(&task.new_events),
        [EventType::WorkflowExecutionStarted]
    );
    assert_eq!(task.new_events[0].attributes, json!("go"));
    assert_eq!(task.lease.worker(), &worker("w"));
}

#[actix_rt::test]
async fn claim_takes_only_from_the_given_queues_and_the_task_carries_its_queue() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("in-a", q("a")))
        .await
        .unwrap();
    store
        .create_instance(NewInstance::new("in-b", q("b")))
        .await
        .unwrap();
    let w = worker("w");
    assert!(store
        .claim_workflow_task(&w, &queues(["c"]).unwrap(), LEASE)
        .await
        .unwrap()
        .is_none());
    let task = claim(&store, "w", "b").await;
    assert_eq!(task.instance.instance_id, "in-b");
    assert_eq!(task.queue, q("b"));
    let task = store
        .claim_workflow_task(&w, &queues(["c", "a"]).unwrap(), LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (task.instance.instance_id.as_str(), task.queue.as_str()),
        ("in-a", "a")
    );
}

#[actix_rt::test]
async fn a_batch_claim_takes_one_task_per_instance_oldest_event_first_and_says_what_is_left() {
    let store = store().await;
    let (w, default) = (worker("w"), queues(["default"]).unwrap());
    for id in ["i1", "i2", "i3"] {
        store
            .create_instance(NewInstance::new(id, q("default")))
            .await
            .unwrap();
    }
    // i1's events fill the head of the line: counted once.
    for n in 0..3 {
        store.signal_instance("i1", "poke", json!(n)).await.unwrap();
    }
    let poll = store
        .poll_workflow_tasks(&w, &default, 2, LEASE)
        .await
        .unwrap();
    let mut taken: Vec<&str> = poll
        .tasks
        .iter()
        .map(|t| t.instance.instance_id.as_str())
        .collect();
    taken.sort_unstable();
    assert_eq!(
        taken,
        ["i1", "i2"],
        "the two instances with the oldest events"
    );
    let i1 = poll
        .tasks
        .iter()
        .find(|t| t.instance.instance_id == "i1")
        .unwrap();
    assert_eq!(
        types(&i1.new_events),
        [
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived,
            EventType::SignalReceived,
            EventType::SignalReceived
        ],
        "every event of the instance, in order"
    );
    assert!(poll.more, "i3 still waits");
    assert!(!poll.skipped_locked);
    for task in &poll.tasks {
        assert_eq!(task.lease.worker(), &w);
    }
    // Asking for more than is left takes what is left, and says so.
    let poll = store
        .poll_workflow_tasks(&w, &default, 5, LEASE)
        .await
        .unwrap();
    assert_eq!(poll.tasks.len(), 1);
    assert_eq!(poll.tasks[0].instance.instance_id, "i3");
    assert!(!poll.more);
    // Each task completes on its own lease.
    for task in poll.tasks {
        store
            .complete_workflow_task(&task, WorkflowCompletion::default())
            .await
            .unwrap();
    }
    let poll = store
        .poll_workflow_tasks(&w, &default, 5, LEASE)
        .await
        .unwrap();
    assert!(poll.tasks.is_empty() && !poll.more && !poll.skipped_locked);
    let nothing = store
        .poll_workflow_tasks(&w, &default, 0, LEASE)
        .await
        .unwrap();
    assert!(nothing.tasks.is_empty());
}

#[actix_rt::test]
async fn a_claimed_task_is_locked() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let _held = claim(&store, "w1", "default").await;
    let second = store
        .claim_workflow_task(&worker("w2"), &queues(["default"]).unwrap(), LEASE)
        .await
        .unwrap();
    assert!(second.is_none(), "claimed twice: {second:?}");
}

#[actix_rt::test]
async fn completing_a_task_twice_fails() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let task = claim(&store, "w", "default").await;
    store
        .complete_workflow_task(&task, WorkflowCompletion::default())
        .await
        .unwrap();
    let err = store
        .complete_workflow_task(&task, WorkflowCompletion::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let history = store.instance("i1").await.unwrap().unwrap().history;
    assert_eq!(
        types(&history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted
        ],
        "the second completion changed nothing"
    );
}

#[actix_rt::test]
async fn completion_appends_the_executed_events_to_history_in_order() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    store.signal_instance("i1", "s1", json!(1)).await.unwrap();
    store.signal_instance("i1", "s2", json!(2)).await.unwrap();
    let task = claim(&store, "w", "default").await;
    assert_eq!(
        types(&task.new_events),
        [
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived,
            EventType::SignalReceived
        ]
    );
    let decision = WorkflowCompletion::default()
        .schedule_activity("a", json!(null), None)
        .start_timer(Duration::from_secs(3600), json!("t"));
    store.complete_workflow_task(&task, decision).await.unwrap();

    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(
        types(&snapshot.history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived,
            EventType::SignalReceived,
            EventType::ActivityScheduled,
            EventType::TimerScheduled,
        ]
    );
    let sequence: Vec<i64> = snapshot.history.iter().map(|e| e.sequence_id).collect();
    assert_eq!(sequence, [1, 2, 3, 4, 5, 6]);
    assert_eq!(
        snapshot.history[2].attributes,
        json!({"name": "s1", "payload": 1})
    );
    assert_eq!(
        snapshot.history[3].attributes,
        json!({"name": "s2", "payload": 2})
    );
    assert_eq!(
        types(&snapshot.pending),
        [EventType::TimerFired],
        "only the future timer is left"
    );
    assert_eq!(snapshot.pending[0].schedule_event_id, 6);

    // The next task continues the numbering.
    store.signal_instance("i1", "s3", json!(3)).await.unwrap();
    let next = claim(&store, "w", "default").await;
    assert_eq!(next.last_sequence_id, 6);
}

#[actix_rt::test]
async fn finishing_sets_the_state_and_completed_time() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let task = claim(&store, "w", "default").await;
    let before = store.instance("i1").await.unwrap().unwrap();
    assert!(before.completed_at.is_none());
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!("done"))),
        )
        .await
        .unwrap();
    let after = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(after.state, InstanceState::Finished);
    let completed_at = after.completed_at.expect("completed_at is set");
    assert!(completed_at >= after.created_at);
    let last = after.history.last().unwrap();
    assert_eq!(last.event_type, EventType::WorkflowExecutionFinished);
    assert_eq!(last.attributes, json!({"result": "done"}));
    // A finished instance has no workflow task any more.
    store
        .signal_instance("i1", "late", json!(null))
        .await
        .unwrap_err();
}

#[actix_rt::test]
async fn completion_delivers_events_to_other_instances() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("parent", q("default")))
        .await
        .unwrap();
    let task = claim(&store, "w", "default").await;
    let decision = WorkflowCompletion::default()
        .start_sub_workflow(NewInstance::new("child", q("default")).with_input(json!("hi")));
    store.complete_workflow_task(&task, decision).await.unwrap();

    // The parent's next task cancels the child before the child ran at all.
    store
        .signal_instance("parent", "stop", json!(null))
        .await
        .unwrap();
    let parent_task = store
        .claim_workflow_task(&worker("w"), &queues(["default"]).unwrap(), LEASE)
        .await
        .unwrap()
        .unwrap();
    let parent_task = if parent_task.instance.instance_id == "parent" {
        parent_task
    } else {
        // The child's start may come first: set it aside, still leased.
        let other = claim(&store, "w", "default").await;
        store.release_workflow_task(&parent_task).await.unwrap();
        other
    };
    assert_eq!(parent_task.instance.instance_id, "parent");
    let decision = WorkflowCompletion::default().cancel("child");
    store
        .complete_workflow_task(&parent_task, decision)
        .await
        .unwrap();

    let child_task = claim(&store, "w", "default").await;
    assert_eq!(child_task.instance.instance_id, "child");
    assert_eq!(
        types(&child_task.new_events),
        [
            EventType::WorkflowExecutionStarted,
            EventType::WorkflowExecutionCanceled
        ],
        "the cancel is the last event of the child's task"
    );
    assert_eq!(child_task.parent.as_ref().unwrap().0.instance_id, "parent");
}

#[actix_rt::test]
async fn signalling_an_unknown_instance_errors() {
    let store = store().await;
    let err = store
        .signal_instance("nobody", "s", json!(null))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[actix_rt::test]
async fn cancelling_an_unknown_instance_errors() {
    let store = store().await;
    let err = store.cancel_instance("nobody").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
}

#[actix_rt::test]
async fn cancel_adds_a_cancel_event_and_leaves_finished_instances_alone() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    assert_eq!(
        store.cancel_instance("i1").await.unwrap(),
        CancelOutcome::Requested
    );
    let task = claim(&store, "w", "default").await;
    assert_eq!(
        types(&task.new_events),
        [
            EventType::WorkflowExecutionStarted,
            EventType::WorkflowExecutionCanceled
        ]
    );
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().finish(WorkflowOutcome::Canceled),
        )
        .await
        .unwrap();
    assert_eq!(
        store.cancel_instance("i1").await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(snapshot.state, InstanceState::Finished, "not re-opened");
    assert!(snapshot.pending.is_empty());
}

#[actix_rt::test]
async fn activity_claim_returns_nothing_when_there_is_none() {
    let store = store().await;
    let tasks = store
        .claim_activity_tasks(&worker("w"), &queues(["default"]).unwrap(), 10, LEASE)
        .await
        .unwrap();
    assert!(tasks.is_empty());
}

#[actix_rt::test]
async fn activity_claim_takes_only_from_the_given_queues() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("wf")))
        .await
        .unwrap();
    let task = claim(&store, "w", "wf").await;
    let decision = WorkflowCompletion::default()
        .schedule_activity("on-a", json!(1), Some(q("a")))
        .schedule_activity("on-b", json!(2), Some(q("b")))
        .schedule_activity("on-wf", json!(3), None);
    store.complete_workflow_task(&task, decision).await.unwrap();

    let w = worker("w");
    let on_b = store
        .claim_activity_tasks(&w, &queues(["b"]).unwrap(), 10, LEASE)
        .await
        .unwrap();
    assert_eq!(on_b.len(), 1);
    assert_eq!(
        (on_b[0].name.as_str(), on_b[0].queue.as_str()),
        ("on-b", "b")
    );
    assert_eq!(on_b[0].input, json!(2));
    let on_wf = store
        .claim_activity_tasks(&w, &queues(["wf"]).unwrap(), 10, LEASE)
        .await
        .unwrap();
    assert_eq!(
        on_wf.len(),
        1,
        "an activity without a queue goes to the instance's"
    );
    assert_eq!(on_wf[0].name, "on-wf");
    assert!(store
        .claim_activity_tasks(&w, &queues(["c"]).unwrap(), 10, LEASE)
        .await
        .unwrap()
        .is_empty());
}

#[actix_rt::test]
async fn completing_an_activity_delivers_its_result_to_the_workflow_queue() {
    let store = store().await;
    store
        .create_instance(NewInstance::new("i1", q("wf")))
        .await
        .unwrap();
    let task = claim(&store, "w", "wf").await;
    let decision = WorkflowCompletion::default()
        .schedule_activity("ok", json!(1), Some(q("acts")))
        .schedule_activity("bad", json!(2), Some(q("acts")));
    store.complete_workflow_task(&task, decision).await.unwrap();
    let scheduled = store.instance("i1").await.unwrap().unwrap().history;
    let scheduled_ids: Vec<i64> = scheduled
        .iter()
        .filter(|e| e.event_type == EventType::ActivityScheduled)
        .map(|e| e.sequence_id)
        .collect();

    let activities = store
        .claim_activity_tasks(&worker("a"), &queues(["acts"]).unwrap(), 10, LEASE)
        .await
        .unwrap();
    assert_eq!(activities.len(), 2);
    assert_eq!(
        activities
            .iter()
            .map(|a| a.schedule_event_id)
            .collect::<Vec<_>>(),
        scheduled_ids
    );
    store
        .complete_activity_task(&activities[0], Ok(json!("fine")))
        .await
        .unwrap();
    store
        .complete_activity_task(&activities[1], Err("boom".into()))
        .await
        .unwrap();

    // The results wake the workflow on its own queue, not the activities'.
    assert!(store
        .claim_workflow_task(&worker("w"), &queues(["acts"]).unwrap(), LEASE)
        .await
        .unwrap()
        .is_none());
    let next = claim(&store, "w", "wf").await;
    assert_eq!(
        types(&next.new_events),
        [EventType::ActivityCompleted, EventType::ActivityFailed]
    );
    assert_eq!(next.new_events[0].attributes, json!({"result": "fine"}));
    assert_eq!(next.new_events[0].schedule_event_id, scheduled_ids[0]);
    assert_eq!(next.new_events[1].attributes, json!({"error": "boom"}));
    assert_eq!(next.new_events[1].schedule_event_id, scheduled_ids[1]);
}
