//! Behaviour beyond go-workflows' conformance suite: expired and stolen
//! leases, fencing, concurrent claimers, timers, removal, stats, sub-workflows,
//! signals, input validation, releases and continue-as-new. Each test on a
//! fresh database; raw SQL only to build fixtures or to look at the tables.

mod support;

use support::{q, setup, setup_with, until_some, wait_until_expired, worker};

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use pgwake::store::{SendSignal, QUEUE_NAME_RULE};
use pgwake::{
    queues, Event, EventType, InstanceState, NewInstance, Queue, QueueStats, Store, StoreError,
    StoreOptions, WorkerId, WorkflowCompletion, WorkflowOutcome,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);
const SHORT_LEASE: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(10);

fn types(events: &[Event]) -> Vec<EventType> {
    events.iter().map(|e| e.event_type).collect()
}

async fn count(sql: &tokio_postgres::Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

/// Rows of `instance_id` in each of the five tables.
async fn rows_of(sql: &tokio_postgres::Client, instance_id: &str) -> [i64; 5] {
    let mut counts = [0; 5];
    for (i, table) in [
        "instances",
        "pending_events",
        "history",
        "activities",
        "attributes",
    ]
    .iter()
    .enumerate()
    {
        counts[i] = sql
            .query_one(
                &format!("SELECT count(*) FROM {table} WHERE instance_id = $1"),
                &[&instance_id],
            )
            .await
            .unwrap()
            .get(0);
    }
    counts
}

/// Creates `instance_id`, claims its first task and completes it with `decision`.
async fn start_with(store: &Store, instance_id: &str, queue: &str, decision: WorkflowCompletion) {
    store
        .create_instance(NewInstance::new(instance_id, q(queue)))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&worker("setup"), &[q(queue)], LEASE)
        .await
        .unwrap()
        .expect("the new instance's task");
    assert_eq!(
        task.instance.instance_id, instance_id,
        "claimed another instance"
    );
    store.complete_workflow_task(&task, decision).await.unwrap();
}

// 1
#[actix_rt::test]
async fn an_expired_workflow_lease_is_reclaimed_and_the_late_completion_is_refused() {
    let (store, sql, _db) = setup().await;
    let queue = [q("default")];
    store
        .create_instance(NewInstance::new("other", q("elsewhere")))
        .await
        .unwrap();
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let (w1, w2) = (worker("w1"), worker("w2"));
    let mut task1 = store
        .claim_workflow_task(&w1, &queue, SHORT_LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .claim_workflow_task(&w2, &queue, LEASE)
        .await
        .unwrap()
        .is_none());

    let task2 = {
        let (store, w2, queue) = (&store, &w2, &queue);
        until_some(
            DEADLINE,
            "worker 2 to re-claim the expired task",
            move || async move { store.claim_workflow_task(w2, queue, LEASE).await.unwrap() },
        )
        .await
    };
    assert_eq!(task2.instance, task1.instance);
    assert_eq!(
        types(&task2.new_events),
        [EventType::WorkflowExecutionStarted]
    );
    assert_ne!(task2.lease.locked_until(), task1.lease.locked_until());

    let late = WorkflowCompletion::default()
        .start_sub_workflow(NewInstance::new("child", q("default")))
        .signal("other", "s", json!(1))
        .schedule_activity("a", json!(null), None)
        .start_timer(Duration::from_secs(5), json!(null))
        .finish(WorkflowOutcome::Completed(json!("late")));
    let err = store
        .complete_workflow_task(&task1, late)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert!(err.to_string().contains("w1"), "{err}");
    let err = store
        .extend_workflow_task(&mut task1, LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert!(!store.release_workflow_task(&task1).await.unwrap());

    // Nothing changed: still held by worker 2 with its token, no history,
    // nothing scheduled, no child, no signal.
    let row = sql
        .query_one(
            "SELECT worker, locked_until, state FROM instances WHERE instance_id = 'i1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "w2");
    assert_eq!(row.get::<_, SystemTime>(1), task2.lease.locked_until());
    assert_eq!(row.get::<_, i32>(2), 0);
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert!(snapshot.history.is_empty(), "{:?}", snapshot.history);
    assert_eq!(
        types(&snapshot.pending),
        [EventType::WorkflowExecutionStarted]
    );
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
    assert!(store.instance("child").await.unwrap().is_none());
    let other = store.instance("other").await.unwrap().unwrap();
    assert_eq!(types(&other.pending), [EventType::WorkflowExecutionStarted]);

    // Worker 2 completes normally.
    store
        .complete_workflow_task(&task2, WorkflowCompletion::default())
        .await
        .unwrap();
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(
        types(&snapshot.history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted
        ]
    );
    assert!(snapshot.pending.is_empty());
}

// 2
#[actix_rt::test]
async fn an_expired_activity_lease_is_reclaimed_and_the_old_holder_can_neither_complete_nor_extend()
{
    let (store, sql, _db) = setup().await;
    let queue = [q("acts")];
    start_with(
        &store,
        "i1",
        "default",
        WorkflowCompletion::default().schedule_activity("act", json!({"n": 1}), Some(q("acts"))),
    )
    .await;
    let (w1, w2) = (worker("w1"), worker("w2"));
    let mut claimed = store
        .claim_activity_tasks(&w1, &queue, 10, SHORT_LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let mut task1 = claimed.pop().unwrap();
    assert_eq!(task1.name, "act");
    assert_eq!(task1.input, json!({"n": 1}));

    let task2 = {
        let (store, w2, queue) = (&store, &w2, &queue);
        until_some(
            DEADLINE,
            "worker 2 to re-claim the expired activity",
            move || async move {
                store
                    .claim_activity_tasks(w2, queue, 10, LEASE)
                    .await
                    .unwrap()
                    .pop()
            },
        )
        .await
    };
    assert_eq!(task2.activity_id, task1.activity_id);
    assert_eq!(task2.schedule_event_id, task1.schedule_event_id);

    let err = store
        .complete_activity_task(&task1, Ok(json!("from w1")))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    let before = task1.lease.locked_until();
    let err = store
        .extend_activity_task(&mut task1, LEASE)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    assert_eq!(
        task1.lease.locked_until(),
        before,
        "a failed extend changed the deadline"
    );
    assert!(!store.release_activity_task(&task1).await.unwrap());

    // Still worker 2's, and the workflow heard nothing.
    let row = sql
        .query_one("SELECT worker, locked_until FROM activities", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "w2");
    assert_eq!(row.get::<_, SystemTime>(1), task2.lease.locked_until());
    assert!(store
        .instance("i1")
        .await
        .unwrap()
        .unwrap()
        .pending
        .is_empty());

    store
        .complete_activity_task(&task2, Ok(json!("from w2")))
        .await
        .unwrap();
    let pending = store.instance("i1").await.unwrap().unwrap().pending;
    assert_eq!(types(&pending), [EventType::ActivityCompleted]);
    assert_eq!(pending[0].attributes, json!({"result": "from w2"}));
    assert_eq!(pending[0].schedule_event_id, task2.schedule_event_id);
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
}

// 3
#[actix_rt::test]
async fn a_holder_whose_lease_expired_without_being_reclaimed_still_completes() {
    let (store, sql, _db) = setup().await;
    let w1 = worker("w1");

    // Workflow task.
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&w1, &[q("default")], SHORT_LEASE)
        .await
        .unwrap()
        .unwrap();
    wait_until_expired(&sql, "instances", "instance_id = 'i1'").await;
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default()
                .schedule_activity("a1", json!(1), None)
                .schedule_activity("a2", json!(2), None),
        )
        .await
        .unwrap();
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert_eq!(
        types(&snapshot.history),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted,
            EventType::ActivityScheduled,
            EventType::ActivityScheduled
        ]
    );

    // Activity tasks: one completed after expiry, one extended after expiry.
    let tasks = store
        .claim_activity_tasks(&w1, &[q("default")], 10, SHORT_LEASE)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 2);
    wait_until_expired(&sql, "activities", "true").await;
    store
        .complete_activity_task(&tasks[0], Ok(json!("late but fine")))
        .await
        .unwrap();
    let mut second = tasks[1].clone();
    store
        .extend_activity_task(&mut second, LEASE)
        .await
        .unwrap();
    assert!(second.lease.locked_until() > tasks[1].lease.locked_until());
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM activities WHERE locked_until > now()"
        )
        .await,
        1
    );
    // An extension keeps the claim: the copy from before it completes
    // (as after a lost reply), and then no copy holds the task any more.
    store
        .complete_activity_task(&tasks[1], Ok(json!("extended")))
        .await
        .unwrap();
    assert!(matches!(
        store.complete_activity_task(&second, Ok(json!(0))).await,
        Err(StoreError::LeaseLost { .. })
    ));
    let pending = store.instance("i1").await.unwrap().unwrap().pending;
    assert_eq!(
        types(&pending),
        [EventType::ActivityCompleted, EventType::ActivityCompleted]
    );
    assert_eq!(pending[0].attributes, json!({"result": "late but fine"}));
    assert_eq!(pending[1].attributes, json!({"result": "extended"}));
}

// 4
#[actix_rt::test]
async fn eight_concurrent_claimers_claim_each_of_2000_activities_exactly_once() {
    const ACTIVITIES: usize = 2000;
    let (store, sql, _db) = setup().await;
    let mut decision = WorkflowCompletion::default();
    for n in 0..ACTIVITIES {
        decision = decision.schedule_activity("work", json!(n), Some(q("work")));
    }
    start_with(&store, "fan-out", "default", decision).await;
    assert_eq!(
        count(&sql, "SELECT count(*) FROM activities").await,
        ACTIVITIES as i64
    );

    let claimers = (0..8).map(|n| {
        let store = store.clone();
        async move {
            let me = worker(&format!("claimer-{n}"));
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim_activity_tasks(&me, &[q("work")], 25, LEASE)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return mine;
                }
                assert!(batch.len() <= 25);
                for task in batch {
                    store
                        .complete_activity_task(&task, Ok(task.input.clone()))
                        .await
                        .unwrap();
                    mine.push(task.activity_id);
                }
            }
        }
    });
    let results = futures::future::join_all(claimers).await;
    let all: Vec<String> = results.iter().flatten().cloned().collect();
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(
        all.len(),
        ACTIVITIES,
        "some activity was claimed twice or never"
    );
    assert_eq!(distinct.len(), ACTIVITIES);
    assert!(
        results.iter().filter(|r| !r.is_empty()).count() > 1,
        "one claimer took everything: no concurrency was exercised"
    );

    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
    let snapshot = store.instance("fan-out").await.unwrap().unwrap();
    let completed: Vec<&Event> = snapshot
        .pending
        .iter()
        .filter(|e| e.event_type == EventType::ActivityCompleted)
        .collect();
    assert_eq!(completed.len(), ACTIVITIES);
    assert_eq!(snapshot.pending.len(), ACTIVITIES);
    let scheduled: HashSet<(String, i64)> = snapshot
        .history
        .iter()
        .filter(|e| e.event_type == EventType::ActivityScheduled)
        .map(|e| (e.event_id.clone(), e.sequence_id))
        .collect();
    assert_eq!(scheduled.len(), ACTIVITIES);
    let scheduled_ids: HashSet<&String> = scheduled.iter().map(|(id, _)| id).collect();
    assert_eq!(scheduled_ids, distinct);
    let answered: HashSet<i64> = completed.iter().map(|e| e.schedule_event_id).collect();
    let scheduled_seqs: HashSet<i64> = scheduled.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(answered, scheduled_seqs);
    // Each result is the activity's own input.
    for event in &completed {
        let n = event.attributes["result"].as_i64().unwrap();
        assert!((0..ACTIVITIES as i64).contains(&n));
    }
}

// 5
#[actix_rt::test]
async fn a_pending_event_with_a_future_visible_at_is_not_claimable_until_due() {
    let (store, _sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    let started = Instant::now();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default()
                .start_timer(Duration::from_millis(800), json!({"wake": "up"})),
        )
        .await
        .unwrap();
    assert!(store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .is_none());
    let history = store.instance("i1").await.unwrap().unwrap().history;
    let scheduled = history
        .iter()
        .find(|e| e.event_type == EventType::TimerScheduled)
        .expect("TimerScheduled in the history");
    assert_eq!(scheduled.attributes["payload"], json!({"wake": "up"}));

    let fired_task = {
        let (store, w, queue) = (&store, &w, &queue);
        until_some(DEADLINE, "the timer to fire", move || async move {
            store.claim_workflow_task(w, queue, LEASE).await.unwrap()
        })
        .await
    };
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(750),
        "the timer fired after {elapsed:?}, before its 800 ms"
    );
    assert_eq!(types(&fired_task.new_events), [EventType::TimerFired]);
    let fired = &fired_task.new_events[0];
    assert_eq!(fired.schedule_event_id, scheduled.sequence_id);
    assert_eq!(fired.attributes, json!({"wake": "up"}));
    assert!(fired.visible_at.is_some());
    assert_eq!(fired_task.last_sequence_id, scheduled.sequence_id);
}

// 6
#[actix_rt::test]
async fn cancelling_a_timer_removes_its_pending_event_and_records_timer_canceled() {
    let (store, sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    start_with(
        &store,
        "i1",
        "default",
        WorkflowCompletion::default().start_timer(Duration::from_secs(3600), json!("t")),
    )
    .await;
    let snapshot = store.instance("i1").await.unwrap().unwrap();
    let timer_seq = snapshot
        .history
        .iter()
        .find(|e| e.event_type == EventType::TimerScheduled)
        .unwrap()
        .sequence_id;
    assert_eq!(types(&snapshot.pending), [EventType::TimerFired]);
    assert!(store.next_due_in(&queue).await.unwrap().is_some());

    // Wake the workflow so it can decide to cancel.
    store
        .signal_instance("i1", "cancel-it", json!(null))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(types(&task.new_events), [EventType::SignalReceived]);
    store
        .complete_workflow_task(&task, {
            let mut decision = WorkflowCompletion::default();
            decision.canceled_timers.push(timer_seq);
            decision
        })
        .await
        .unwrap();

    let snapshot = store.instance("i1").await.unwrap().unwrap();
    assert!(snapshot.pending.is_empty(), "{:?}", snapshot.pending);
    assert_eq!(count(&sql, "SELECT count(*) FROM pending_events").await, 0);
    let canceled = snapshot
        .history
        .iter()
        .find(|e| e.event_type == EventType::TimerCanceled)
        .expect("TimerCanceled in the history");
    assert_eq!(canceled.schedule_event_id, timer_seq);
    assert_eq!(
        *types(&snapshot.history).last().unwrap(),
        EventType::TimerCanceled
    );
    assert_eq!(store.next_due_in(&queue).await.unwrap(), None);
}

// 7
#[actix_rt::test]
async fn workflow_and_activity_claims_are_oldest_first() {
    let (store, _sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    for id in ["i1", "i2", "i3"] {
        store
            .create_instance(NewInstance::new(id, q("default")))
            .await
            .unwrap();
    }
    let mut order = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let task = store
            .claim_workflow_task(&w, &queue, LEASE)
            .await
            .unwrap()
            .unwrap();
        order.push(task.instance.instance_id.clone());
        tasks.push(task);
    }
    assert_eq!(order, ["i1", "i2", "i3"]);
    assert!(store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .is_none());

    // Activities: two completions, scheduled in order act0..act5.
    let mut decision = WorkflowCompletion::default();
    for n in 0..3 {
        decision = decision.schedule_activity(&format!("act{n}"), json!(n), Some(q("acts")));
    }
    store
        .complete_workflow_task(&tasks[0], decision)
        .await
        .unwrap();
    let mut decision = WorkflowCompletion::default();
    for n in 3..6 {
        decision = decision.schedule_activity(&format!("act{n}"), json!(n), Some(q("acts")));
    }
    store
        .complete_workflow_task(&tasks[1], decision)
        .await
        .unwrap();
    let mut names = Vec::new();
    for _ in 0..6 {
        let batch = store
            .claim_activity_tasks(&w, &[q("acts")], 1, LEASE)
            .await
            .unwrap();
        assert_eq!(batch.len(), 1);
        names.push(batch[0].name.clone());
    }
    assert_eq!(names, ["act0", "act1", "act2", "act3", "act4", "act5"]);
}

// 8
#[actix_rt::test]
async fn removal_leaves_no_rows_in_any_table() {
    let (store, sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    store
        .create_instance(
            NewInstance::new("r", q("default"))
                .with_input(json!({"in": 1}))
                .with_metadata(json!({"m": 1})),
        )
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default()
                .schedule_activity("a1", json!(1), None)
                .schedule_activity("a2", json!(2), None)
                .start_timer(Duration::from_secs(3600), json!("t")),
        )
        .await
        .unwrap();
    let activities = store
        .claim_activity_tasks(&w, &queue, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(activities.len(), 2);
    store
        .complete_activity_task(&activities[0], Ok(json!("one")))
        .await
        .unwrap();
    // The workflow finishes while a2 is still outstanding.
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!("done"))),
        )
        .await
        .unwrap();
    let [instances, pending, history, acts, attributes] = rows_of(&sql, "r").await;
    assert_eq!((instances, pending, acts), (1, 0, 0));
    assert!(history > 0 && attributes > 0, "{history} {attributes}");
    // The late result of a2 is dropped, not an error, and writes nothing.
    store
        .complete_activity_task(&activities[1], Ok(json!("two")))
        .await
        .unwrap();
    assert_eq!(rows_of(&sql, "r").await[1], 0);
    assert_eq!(rows_of(&sql, "r").await[3], 0);

    // Leftovers as go-workflows would leave them: a pending event, an
    // activity and their attributes for the finished execution.
    let execution = task.instance.execution_id.clone();
    sql.execute(
        "INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
         VALUES ('stray-pe', 'r', $1, 17, now())",
        &[&execution],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
         VALUES ('stray-act', 'r', $1, 11, 'default', now())",
        &[&execution],
    )
    .await
    .unwrap();
    sql.execute(
        "INSERT INTO attributes (event_id, instance_id, execution_id, data)
         VALUES ('stray-pe', 'r', $1, 'null'), ('stray-act', 'r', $1, 'null')",
        &[&execution],
    )
    .await
    .unwrap();
    // An unrelated instance's rows must survive.
    store
        .create_instance(NewInstance::new("keep", q("default")))
        .await
        .unwrap();
    let keep_before = rows_of(&sql, "keep").await;

    store.remove_instance("r").await.unwrap();
    assert_eq!(rows_of(&sql, "r").await, [0; 5]);
    assert!(store.instance("r").await.unwrap().is_none());
    assert!(matches!(
        store.remove_instance("r").await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(rows_of(&sql, "keep").await, keep_before);
    assert!(matches!(
        store.remove_instance("keep").await,
        Err(StoreError::NotFinished { .. })
    ));

    // Batch removal: five finished executions (one of them continued as
    // new), two active instances with history and pending work.
    for id in ["f1", "f2", "f3", "f4"] {
        start_with(
            &store,
            id,
            "batch",
            WorkflowCompletion::default()
                .schedule_activity("x", json!(null), None)
                .finish(WorkflowOutcome::Failed("boom".into())),
        )
        .await;
    }
    start_with(
        &store,
        "f5",
        "batch",
        WorkflowCompletion::default().finish(WorkflowOutcome::ContinueAsNew(json!(2))),
    )
    .await;
    start_with(
        &store,
        "a1",
        "active",
        WorkflowCompletion::default().schedule_activity("x", json!(null), None),
    )
    .await;
    let a1_before = rows_of(&sql, "a1").await;
    assert_eq!(a1_before[3], 1);
    let removed = store
        .remove_finished_instances(Duration::ZERO, 2)
        .await
        .unwrap();
    assert_eq!(removed, 5);
    for id in ["f1", "f2", "f3", "f4"] {
        assert_eq!(rows_of(&sql, id).await, [0; 5], "{id}");
    }
    // f5's new execution is active and stays, with its own rows only.
    let f5 = store.instance("f5").await.unwrap().unwrap();
    assert_eq!(f5.state, InstanceState::Active);
    assert_eq!(rows_of(&sql, "f5").await[0], 1);
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM instances WHERE instance_id = 'f5' AND state <> 0"
        )
        .await,
        0
    );
    assert_eq!(rows_of(&sql, "a1").await, a1_before);
    assert_eq!(rows_of(&sql, "keep").await, keep_before);
    assert_eq!(
        store
            .remove_finished_instances(Duration::ZERO, 2)
            .await
            .unwrap(),
        0
    );
}

// 9
#[actix_rt::test]
async fn stats_are_exact_on_a_hand_built_fixture() {
    let (store, sql, _db) = setup().await;
    let a = [q("a")];
    let w = worker("w");
    let claim_a = {
        let (store, w, a) = (&store, &w, &a);
        move || async move {
            store
                .claim_workflow_task(w, a, LEASE)
                .await
                .unwrap()
                .unwrap()
        }
    };

    // L: active and leased (not claimable).
    store
        .create_instance(NewInstance::new("L", q("a")))
        .await
        .unwrap();
    let leased = claim_a().await;
    assert_eq!(leased.instance.instance_id, "L");
    // E: active, its lease expired (claimable again).
    store
        .create_instance(NewInstance::new("E", q("a")))
        .await
        .unwrap();
    assert_eq!(claim_a().await.instance.instance_id, "E");
    // T: active, only a future timer pending; schedules 5 activities on b.
    store
        .create_instance(NewInstance::new("T", q("a")))
        .await
        .unwrap();
    let t = claim_a().await;
    assert_eq!(t.instance.instance_id, "T");
    let mut decision =
        WorkflowCompletion::default().start_timer(Duration::from_secs(3600), json!(0));
    for n in 0..5 {
        decision = decision.schedule_activity("b-work", json!(n), Some(q("b")));
    }
    store.complete_workflow_task(&t, decision).await.unwrap();
    // F: finished.
    store
        .create_instance(NewInstance::new("F", q("a")))
        .await
        .unwrap();
    let f = claim_a().await;
    assert_eq!(f.instance.instance_id, "F");
    store
        .complete_workflow_task(
            &f,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
        )
        .await
        .unwrap();
    // A1 (four pending events) and A2 (one): claimable.
    store
        .create_instance(NewInstance::new("A1", q("a")))
        .await
        .unwrap();
    store
        .create_instance(NewInstance::new("A2", q("a")))
        .await
        .unwrap();
    for n in 0..3 {
        store.signal_instance("A1", "s", json!(n)).await.unwrap();
    }
    sql.execute(
        "UPDATE instances SET locked_until = now() - interval '1 second' WHERE instance_id = 'E'",
        &[],
    )
    .await
    .unwrap();
    // Queue b: 1 running, 1 not visible for an hour, 3 ready.
    let running = store
        .claim_activity_tasks(&w, &[q("b")], 1, LEASE)
        .await
        .unwrap();
    assert_eq!(running.len(), 1);
    let later = sql
        .execute(
            "UPDATE activities SET visible_at = now() + interval '1 hour'
              WHERE id = (SELECT min(id) FROM activities WHERE locked_until IS NULL)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(later, 1);

    let stats = store.stats().await.unwrap();
    assert_eq!(
        stats,
        vec![
            {
                let mut a = QueueStats::default();
                a.queue = "a".into();
                a.active_instances = 5; // L, E, T, A1, A2
                a.claimable_workflow_tasks = 3; // E, A1 (once), A2
                a.scheduled_later = 1; // T's timer
                a
            },
            {
                let mut b = QueueStats::default();
                b.queue = "b".into();
                b.ready_activities = 3;
                b.running_activities = 1;
                b.scheduled_later = 1;
                b
            },
        ]
    );
    // The figures agree with what claims can actually take.
    let mut claimable = HashSet::new();
    while let Some(task) = store
        .claim_workflow_task(&worker("w2"), &a, LEASE)
        .await
        .unwrap()
    {
        claimable.insert(task.instance.instance_id);
    }
    assert_eq!(
        claimable,
        HashSet::from(["E".to_string(), "A1".to_string(), "A2".to_string()])
    );
    let ready = store
        .claim_activity_tasks(&worker("w2"), &[q("b")], 100, LEASE)
        .await
        .unwrap();
    assert_eq!(ready.len(), 3);
}

// 10
#[actix_rt::test]
async fn next_due_in_returns_the_earliest_future_time_of_the_given_queues_only() {
    let (store, sql, _db) = setup().await;
    start_with(
        &store,
        "ta",
        "a",
        WorkflowCompletion::default()
            .start_timer(Duration::from_secs(30), json!("a"))
            .start_timer(Duration::from_secs(300), json!("a-later"))
            .schedule_activity("d-work", json!(null), Some(q("d"))),
    )
    .await;
    start_with(
        &store,
        "tb",
        "b",
        WorkflowCompletion::default().start_timer(Duration::from_secs(5), json!("b")),
    )
    .await;
    // An activity on d that becomes visible in 2 s.
    sql.execute(
        "UPDATE activities SET visible_at = now() + interval '2 seconds'",
        &[],
    )
    .await
    .unwrap();

    let due = |names: &'static [&'static str]| {
        let store = store.clone();
        async move {
            store
                .next_due_in(&queues(names.iter().copied()).unwrap())
                .await
                .unwrap()
        }
    };
    let in_a = due(&["a"]).await.expect("a timer on a");
    assert!(
        (Duration::from_secs(25)..=Duration::from_secs(31)).contains(&in_a),
        "{in_a:?}"
    );
    let in_b = due(&["b"]).await.expect("a timer on b");
    assert!(
        (Duration::from_secs(3)..=Duration::from_secs(6)).contains(&in_b),
        "{in_b:?}"
    );
    let in_d = due(&["d"]).await.expect("an activity on d");
    assert!(in_d <= Duration::from_secs(2), "{in_d:?}");
    let in_ab = due(&["a", "b"]).await.unwrap();
    assert!(in_ab <= Duration::from_secs(6), "{in_ab:?}");
    assert_eq!(due(&["c"]).await, None);
}

// 11
#[actix_rt::test]
async fn a_batch_claim_of_n_returns_at_most_n_distinct_tasks() {
    let (store, _sql, _db) = setup().await;
    let mut decision = WorkflowCompletion::default();
    for n in 0..10 {
        decision = decision.schedule_activity("x", json!(n), None);
    }
    start_with(&store, "i1", "default", decision).await;
    let w = worker("w");
    let mut seen = HashSet::new();
    let mut sizes = Vec::new();
    for _ in 0..4 {
        let batch = store
            .claim_activity_tasks(&w, &[q("default")], 4, LEASE)
            .await
            .unwrap();
        sizes.push(batch.len());
        for task in batch {
            assert!(seen.insert(task.activity_id), "claimed twice");
        }
    }
    assert_eq!(sizes, [4, 4, 2, 0]);
    assert_eq!(seen.len(), 10);
}

// 12
#[actix_rt::test]
async fn a_finished_sub_workflow_reports_its_result_to_its_parent() {
    let (store, _sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    store
        .create_instance(NewInstance::new("parent", q("default")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    let parent_ref = task.instance.clone();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().start_sub_workflow(
                NewInstance::new("child", q("default")).with_input(json!({"x": 1})),
            ),
        )
        .await
        .unwrap();
    let parent = store.instance("parent").await.unwrap().unwrap();
    let scheduled = parent
        .history
        .iter()
        .find(|e| e.event_type == EventType::SubWorkflowScheduled)
        .expect("SubWorkflowScheduled in the parent's history")
        .sequence_id;
    assert!(parent.pending.is_empty());

    let child = store
        .instance("child")
        .await
        .unwrap()
        .expect("the child exists");
    assert_eq!(child.state, InstanceState::Active);
    assert_eq!(types(&child.pending), [EventType::WorkflowExecutionStarted]);
    assert_eq!(child.pending[0].attributes, json!({"x": 1}));

    let child_task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(child_task.instance.instance_id, "child");
    assert_eq!(child_task.parent, Some((parent_ref, scheduled)));
    store
        .complete_workflow_task(
            &child_task,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(42))),
        )
        .await
        .unwrap();

    assert_eq!(
        store.instance("child").await.unwrap().unwrap().state,
        InstanceState::Finished
    );
    let parent = store.instance("parent").await.unwrap().unwrap();
    assert_eq!(types(&parent.pending), [EventType::SubWorkflowCompleted]);
    assert_eq!(parent.pending[0].schedule_event_id, scheduled);
    assert_eq!(parent.pending[0].attributes, json!({"result": 42}));
    let woken = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(woken.instance.instance_id, "parent");
    assert_eq!(types(&woken.new_events), [EventType::SubWorkflowCompleted]);
}

// 13
#[actix_rt::test]
async fn signals_between_instances_reach_the_active_execution_and_undelivered_ones_are_recorded() {
    let (store, sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    store
        .create_instance(NewInstance::new("sender", q("default")))
        .await
        .unwrap();
    store
        .create_instance(NewInstance::new("target", q("default")))
        .await
        .unwrap();
    start_with(
        &store,
        "finished",
        "other",
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
    )
    .await;
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(task.instance.instance_id, "sender");
    let signal = |to: &str| SendSignal::new(to, "hello", json!({"from": "sender"}));
    store
        .complete_workflow_task(&task, {
            let mut decision = WorkflowCompletion::default();
            decision.signals = vec![signal("target"), signal("nobody"), signal("finished")];
            decision
        })
        .await
        .unwrap();

    let target = store.instance("target").await.unwrap().unwrap();
    assert_eq!(
        types(&target.pending),
        [
            EventType::WorkflowExecutionStarted,
            EventType::SignalReceived
        ]
    );
    assert_eq!(
        target.pending[1].attributes,
        json!({"name": "hello", "payload": {"from": "sender"}})
    );
    assert!(store.instance("nobody").await.unwrap().is_none());
    let finished = store.instance("finished").await.unwrap().unwrap();
    assert!(finished.pending.is_empty());
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM pending_events WHERE event_type = 17"
        )
        .await,
        1
    );
    // The sender, which goes on, learns what became of each signal from
    // pending events of its own, in the decision's order
    // (tests/store_signals.rs has the details).
    let sender = store.instance("sender").await.unwrap().unwrap();
    assert_eq!(
        types(&sender.pending),
        [
            EventType::SignalSent,
            EventType::SignalNotDelivered,
            EventType::SignalNotDelivered
        ]
    );
    assert_eq!(sender.pending[0].attributes["instance_id"], "target");
    assert_eq!(sender.pending[1].attributes["instance_id"], "nobody");
    assert_eq!(sender.pending[2].attributes["instance_id"], "finished");
    assert!(!types(&sender.history).contains(&EventType::SignalNotDelivered));
}

// 14
#[actix_rt::test]
async fn invalid_input_is_refused_at_every_entry_point_with_the_rule() {
    let mut options = StoreOptions::default();
    options.max_payload_bytes = 1024;
    let (store, sql, _db) = setup_with(options).await;
    let w = worker("w");
    let big = json!("x".repeat(2000));
    let long_id = "i".repeat(129);

    // Queue names.
    for bad in ["", &"q".repeat(129), "a b", "é"] {
        for err in [
            Queue::new(bad).unwrap_err(),
            Queue::try_from(bad).unwrap_err(),
            queues(["ok", bad]).unwrap_err(),
        ] {
            assert!(
                matches!(err, StoreError::InvalidQueueName { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(err.to_string().contains(QUEUE_NAME_RULE), "{err}");
        }
    }
    assert!(Queue::new("q".repeat(128)).is_ok());

    // Empty queue lists.
    for err in [
        queues(Vec::<String>::new()).unwrap_err(),
        store.claim_workflow_task(&w, &[], LEASE).await.unwrap_err(),
        store
            .claim_activity_tasks(&w, &[], 10, LEASE)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::NoQueues), "{err:?}");
        assert!(err.to_string().contains("name at least one queue"), "{err}");
    }

    // Worker ids.
    let err = WorkerId::new("").unwrap_err();
    assert!(err.to_string().contains("1 to 64 bytes"), "{err}");
    let err = WorkerId::new("w".repeat(65)).unwrap_err();
    assert!(err.to_string().contains("1 to 64 bytes"), "{err}");

    // Instance ids of 129 characters.
    let check_id_err = |err: StoreError| {
        assert!(matches!(err, StoreError::InvalidId { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("instance id") && text.contains("1 to 128 bytes"),
            "{text}"
        );
    };
    check_id_err(
        store
            .create_instance(NewInstance::new(long_id.clone(), q("default")))
            .await
            .unwrap_err(),
    );
    check_id_err(
        store
            .signal_instance(&long_id, "s", json!(1))
            .await
            .unwrap_err(),
    );
    check_id_err(store.cancel_instance(&long_id).await.unwrap_err());
    check_id_err(store.instance(&long_id).await.unwrap_err());
    check_id_err(store.remove_instance(&long_id).await.unwrap_err());
    check_id_err(
        store
            .create_instance(NewInstance::new("", q("default")))
            .await
            .unwrap_err(),
    );
    assert_eq!(count(&sql, "SELECT count(*) FROM instances").await, 0);
    assert!(Queue::new("q".repeat(128)).is_ok());
    store
        .create_instance(NewInstance::new("i".repeat(128), q("default")))
        .await
        .unwrap();
    // 128 is accepted everywhere: this one is refused only for being active.
    assert!(matches!(
        store.remove_instance(&"i".repeat(128)).await,
        Err(StoreError::NotFinished { .. })
    ));
    sql.execute("DELETE FROM instances", &[]).await.unwrap();
    sql.execute("DELETE FROM pending_events", &[])
        .await
        .unwrap();
    sql.execute("DELETE FROM attributes", &[]).await.unwrap();

    // Payloads over 1024 bytes.
    let check_size_err = |err: StoreError| {
        assert!(matches!(err, StoreError::PayloadTooLarge { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("1024 bytes") && text.contains("max_payload_bytes"),
            "{text}"
        );
    };
    check_size_err(
        store
            .create_instance(NewInstance::new("i1", q("default")).with_input(big.clone()))
            .await
            .unwrap_err(),
    );
    check_size_err(
        store
            .create_instance(NewInstance::new("i1", q("default")).with_metadata(big.clone()))
            .await
            .unwrap_err(),
    );
    assert!(store.instance("i1").await.unwrap().is_none());
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    check_size_err(
        store
            .signal_instance("i1", "s", big.clone())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        types(&store.instance("i1").await.unwrap().unwrap().pending),
        [EventType::WorkflowExecutionStarted]
    );

    // Leases of zero.
    let zero = Duration::ZERO;
    let check_lease_err = |err: StoreError| {
        assert!(matches!(err, StoreError::InvalidDuration { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("lease") && text.contains("longer than zero"),
            "{text}"
        );
    };
    check_lease_err(
        store
            .claim_workflow_task(&w, &[q("default")], zero)
            .await
            .unwrap_err(),
    );
    let err = store
        .claim_workflow_task(&w, &[q("default")], Duration::from_secs(25 * 3600))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidDuration { .. }), "{err:?}");
    assert!(err.to_string().contains("at most 24 hours"), "{err}");
    let mut task = store
        .claim_workflow_task(&w, &[q("default")], LEASE)
        .await
        .unwrap()
        .unwrap();
    check_lease_err(
        store
            .extend_workflow_task(&mut task, zero)
            .await
            .unwrap_err(),
    );

    // Decisions that break a rule are refused whole, and the task is still held.
    for bad in [
        WorkflowCompletion::default().schedule_activity("a", big.clone(), None),
        WorkflowCompletion::default().start_timer(Duration::from_secs(1), big.clone()),
        WorkflowCompletion::default().signal("i1", "s", big.clone()),
        WorkflowCompletion::default().finish(WorkflowOutcome::Completed(big.clone())),
    ] {
        check_size_err(store.complete_workflow_task(&task, bad).await.unwrap_err());
    }
    for bad in [
        WorkflowCompletion::default()
            .start_sub_workflow(NewInstance::new(long_id.clone(), q("default"))),
        WorkflowCompletion::default().signal(&long_id, "s", json!(null)),
        WorkflowCompletion::default().cancel(&long_id),
    ] {
        check_id_err(store.complete_workflow_task(&task, bad).await.unwrap_err());
    }
    assert!(store
        .instance("i1")
        .await
        .unwrap()
        .unwrap()
        .history
        .is_empty());
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().schedule_activity("a", json!(1), None),
        )
        .await
        .unwrap();

    // Activity: zero lease on claim and extend, a result too large.
    check_lease_err(
        store
            .claim_activity_tasks(&w, &[q("default")], 10, zero)
            .await
            .unwrap_err(),
    );
    let mut activity = store
        .claim_activity_tasks(&w, &[q("default")], 10, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    check_lease_err(
        store
            .extend_activity_task(&mut activity, zero)
            .await
            .unwrap_err(),
    );
    check_size_err(
        store
            .complete_activity_task(&activity, Ok(big.clone()))
            .await
            .unwrap_err(),
    );
    check_size_err(
        store
            .complete_activity_task(&activity, Err("e".repeat(2000)))
            .await
            .unwrap_err(),
    );
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 1);
    store
        .complete_activity_task(&activity, Ok(json!("small")))
        .await
        .unwrap();
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
}

// 15
#[actix_rt::test]
async fn releasing_a_task_makes_it_claimable_at_once_and_reports_a_lost_lease() {
    let (store, _sql, _db) = setup().await;
    let queue = [q("default")];
    let (w1, w2) = (worker("w1"), worker("w2"));
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();

    // Workflow task.
    let task1 = store
        .claim_workflow_task(&w1, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(store
        .claim_workflow_task(&w2, &queue, LEASE)
        .await
        .unwrap()
        .is_none());
    assert!(store.release_workflow_task(&task1).await.unwrap());
    let task2 = store
        .claim_workflow_task(&w2, &queue, LEASE)
        .await
        .unwrap()
        .expect("claimable at once after the release");
    assert_eq!(task2.instance, task1.instance);
    assert_eq!(task2.new_events, task1.new_events);
    assert!(!store.release_workflow_task(&task1).await.unwrap());
    assert!(matches!(
        store
            .complete_workflow_task(&task1, WorkflowCompletion::default())
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .complete_workflow_task(
            &task2,
            WorkflowCompletion::default().schedule_activity("a", json!(1), None),
        )
        .await
        .unwrap();
    assert!(
        !store.release_workflow_task(&task2).await.unwrap(),
        "completed"
    );

    // Activity task.
    let act1 = store
        .claim_activity_tasks(&w1, &queue, 10, LEASE)
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert!(store
        .claim_activity_tasks(&w2, &queue, 10, LEASE)
        .await
        .unwrap()
        .is_empty());
    assert!(store.release_activity_task(&act1).await.unwrap());
    let act2 = store
        .claim_activity_tasks(&w2, &queue, 10, LEASE)
        .await
        .unwrap()
        .pop()
        .expect("claimable at once after the release");
    assert_eq!(act2.activity_id, act1.activity_id);
    assert!(!store.release_activity_task(&act1).await.unwrap());
    assert!(matches!(
        store.complete_activity_task(&act1, Ok(json!(0))).await,
        Err(StoreError::LeaseLost { .. })
    ));
    store
        .complete_activity_task(&act2, Ok(json!(1)))
        .await
        .unwrap();
    assert!(
        !store.release_activity_task(&act2).await.unwrap(),
        "completed"
    );
}

// 16
#[actix_rt::test]
async fn continue_as_new_ends_the_execution_and_starts_a_new_one_with_the_new_input() {
    let (store, sql, _db) = setup().await;
    let queue = [q("default")];
    let w = worker("w");
    store
        .create_instance(
            NewInstance::new("loop", q("default"))
                .with_input(json!({"round": 1}))
                .with_metadata(json!({"tenant": "acme"})),
        )
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    let old = task.instance.clone();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default()
                .start_timer(Duration::from_secs(3600), json!("dropped"))
                .finish(WorkflowOutcome::ContinueAsNew(json!({"round": 2}))),
        )
        .await
        .unwrap();

    let rows = sql
        .query(
            "SELECT execution_id, state, completed_at IS NOT NULL, locked_until
               FROM instances WHERE instance_id = 'loop' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<_, String>(0), old.execution_id);
    assert_eq!(
        rows[0].get::<_, i32>(1),
        InstanceState::ContinuedAsNew as i32
    );
    assert!(rows[0].get::<_, bool>(2));
    let new_execution: String = rows[1].get(0);
    assert_ne!(new_execution, old.execution_id);
    assert_eq!(rows[1].get::<_, i32>(1), InstanceState::Active as i32);
    assert!(!rows[1].get::<_, bool>(2));
    assert_eq!(rows[1].get::<_, Option<SystemTime>>(3), None);

    // The old execution: its history ends with ContinuedAsNew, nothing pending.
    let old_history: Vec<i32> = sql
        .query(
            "SELECT event_type FROM history WHERE execution_id = $1 ORDER BY sequence_id",
            &[&old.execution_id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        old_history.last(),
        Some(&EventType::WorkflowExecutionContinuedAsNew.code())
    );
    assert_eq!(
        sql.query_one(
            "SELECT count(*) FROM pending_events WHERE execution_id = $1",
            &[&old.execution_id],
        )
        .await
        .unwrap()
        .get::<_, i64>(0),
        0
    );

    let snapshot = store.instance("loop").await.unwrap().unwrap();
    assert_eq!(snapshot.instance.execution_id, new_execution);
    assert_eq!(snapshot.state, InstanceState::Active);
    assert!(snapshot.history.is_empty());
    assert_eq!(
        types(&snapshot.pending),
        [EventType::WorkflowExecutionStarted]
    );
    assert_eq!(snapshot.pending[0].attributes, json!({"round": 2}));

    let next = store
        .claim_workflow_task(&w, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.instance.execution_id, new_execution);
    assert_eq!(next.metadata, Some(json!({"tenant": "acme"})));
    assert_eq!(next.parent, None);
    assert_eq!(
        types(&next.new_events),
        [EventType::WorkflowExecutionStarted]
    );
    assert_eq!(next.new_events[0].attributes, json!({"round": 2}));
    assert_eq!(next.last_sequence_id, 0);
}

// 15b: the same under go-workflows' stickiness.
#[actix_rt::test]
async fn releasing_a_sticky_task_makes_it_claimable_by_another_worker_at_once() {
    let mut options = StoreOptions::default();
    options.sticky_timeout = Duration::from_secs(30);
    let (store, _sql, _db) = setup_with(options).await;
    let queue = [q("default")];
    let (w1, w2) = (worker("w1"), worker("w2"));
    store
        .create_instance(NewInstance::new("i1", q("default")))
        .await
        .unwrap();
    let first = store
        .claim_workflow_task(&w1, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    store
        .complete_workflow_task(&first, WorkflowCompletion::default())
        .await
        .unwrap();
    // New work: sticky to w1, which claims it and then gives it back.
    store.signal_instance("i1", "s", json!(1)).await.unwrap();
    assert!(store
        .claim_workflow_task(&w2, &queue, LEASE)
        .await
        .unwrap()
        .is_none());
    let task1 = store
        .claim_workflow_task(&w1, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    assert!(store.release_workflow_task(&task1).await.unwrap());
    // "so another worker can claim it at once instead of waiting"
    let task2 = store.claim_workflow_task(&w2, &queue, LEASE).await.unwrap();
    assert!(
        task2.is_some(),
        "a released task stays reserved to the releasing worker by sticky_until \
         (release_workflow_task does not clear it): nobody else can claim it for 30 s"
    );
}

// Worker ids, which fence every lease.
#[test]
fn unique_worker_ids_stay_unique_with_a_long_prefix() {
    for len in [56, 64, 100] {
        let prefix = "p".repeat(len);
        let (a, b) = (WorkerId::unique(&prefix), WorkerId::unique(&prefix));
        assert!(a.as_str().len() <= 64);
        assert_ne!(
            a, b,
            "WorkerId::unique with a {len}-byte prefix: the random part was cut away"
        );
    }
}

#[test]
fn unique_worker_ids_with_a_long_non_ascii_prefix_do_not_panic() {
    let prefix = "é".repeat(40);
    let made = std::panic::catch_unwind(|| WorkerId::unique(&prefix));
    let id = made.expect("WorkerId::unique panicked cutting a multi-byte prefix");
    assert!(id.as_str().len() <= 64);
}

// 1b: the mirror of test 1. The holder's lease expired and nobody has
// re-claimed yet, so its late completion rightly succeeds; a re-claim that
// is already running must then find nothing to do. It must never hand out a
// task whose events are gone.
#[actix_rt::test]
async fn a_reclaim_racing_a_late_completion_never_returns_a_task_without_events() {
    let (store, sql, database) = setup().await;
    let queue = [q("race")];
    let (w1, w2) = (worker("w1"), worker("w2"));
    // Blockers: older pending events whose instances an open transaction
    // holds locked, so a claim skips each of them (SKIP LOCKED) before it
    // reaches the instance under test. They make the claim slow enough
    // (~100 ms) for the completion to commit between its snapshot and its lock.
    sql.batch_execute(
        "INSERT INTO instances (instance_id, execution_id, state, queue)
           SELECT 'blocker-' || n, 'e', 0, 'race' FROM generate_series(1, 100000) n;
         INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
           SELECT 'ev-' || n, 'blocker-' || n, 'e', 17, now() FROM generate_series(1, 100000) n;
         ANALYZE instances; ANALYZE pending_events;",
    )
    .await
    .unwrap();
    let mut holder = support::connect(database.url()).await;
    let blockers = holder.transaction().await.unwrap();
    blockers
        .execute(
            "SELECT 1 FROM instances WHERE instance_id LIKE 'blocker-%' FOR UPDATE",
            &[],
        )
        .await
        .unwrap();

    store
        .create_instance(NewInstance::new("i1", q("race")))
        .await
        .unwrap();
    let timing = Instant::now();
    let first = store
        .claim_workflow_task(&w1, &queue, LEASE)
        .await
        .unwrap()
        .unwrap();
    let claim_time = timing.elapsed();
    store
        .complete_workflow_task(&first, WorkflowCompletion::default())
        .await
        .unwrap();

    let mut spurious = Vec::new();
    for round in 0..3 {
        store
            .signal_instance("i1", "again", json!(round))
            .await
            .unwrap();
        let held = store
            .claim_workflow_task(&w1, &queue, SHORT_LEASE)
            .await
            .unwrap()
            .unwrap();
        wait_until_expired(&sql, "instances", "instance_id = 'i1'").await;
        // The sleep only positions the completion inside the re-claim's
        // statement; the assertions do not depend on it.
        let late = async {
            tokio::time::sleep(claim_time / 3).await;
            store
                .complete_workflow_task(&held, WorkflowCompletion::default())
                .await
        };
        let reclaim = store.claim_workflow_task(&w2, &queue, LEASE);
        let (late, reclaimed) = futures::join!(late, reclaim);
        let Some(task) = reclaimed.unwrap() else {
            late.unwrap();
            continue;
        };
        if late.is_err() {
            // The re-claim won cleanly: the task has the events.
            assert!(!task.new_events.is_empty());
            store
                .complete_workflow_task(&task, WorkflowCompletion::default())
                .await
                .unwrap();
            continue;
        }
        // Both succeeded: the re-claim handed out a task whose events the
        // late completion had already moved to the history.
        let history: Vec<i64> = store
            .instance("i1")
            .await
            .unwrap()
            .unwrap()
            .history
            .iter()
            .map(|e| e.sequence_id)
            .collect();
        // What completing it does to the history's numbering.
        store
            .complete_workflow_task(
                &task,
                WorkflowCompletion::default().schedule_activity("x", json!(null), None),
            )
            .await
            .unwrap();
        let sequence_ids: Vec<i64> = store
            .instance("i1")
            .await
            .unwrap()
            .unwrap()
            .history
            .iter()
            .map(|e| e.sequence_id)
            .collect();
        let distinct: HashSet<&i64> = sequence_ids.iter().collect();
        spurious.push(format!(
            "round {round}: task with {} new events and last_sequence_id {}, while the history \
             held sequence ids {history:?}; after completing it with one activity the history's \
             sequence ids are {sequence_ids:?} ({} duplicated)",
            task.new_events.len(),
            task.last_sequence_id,
            sequence_ids.len() - distinct.len(),
        ));
        break;
    }
    drop(blockers);
    assert!(
        spurious.is_empty(),
        "a claim handed out a task whose pending events were gone:\n{}",
        spurious.join("\n")
    );
}
