//! Liveness of the store (issue #10): a lost reply does not cost a lease, a
//! row locked by someone else holds up only its own work and is noticed by
//! the claims that skip it, concurrent completions cannot deadlock on the
//! instances they create, and requests that can never succeed are refused
//! up front as permanent. Each test on a fresh database; raw SQL only to
//! build fixtures, to hold locks from outside, or to look at the tables.

mod support;

use support::{q, setup, setup_with, until_some, wait_until_expired, worker};

use std::time::{Duration, Instant};

use pgwake::store::{
    SendSignal, StartSubWorkflow, StartTimer, MAX_COMMANDS_PER_DECISION, MAX_TIMER_DELAY,
};
use pgwake::{
    ActivityTask, EventType, NewInstance, Queue, Store, StoreError, StoreOptions,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask,
};
use serde_json::json;

const LEASE: Duration = Duration::from_secs(60);
const SHORT_LEASE: Duration = Duration::from_millis(200);
const DEADLINE: Duration = Duration::from_secs(10);

async fn count(sql: &tokio_postgres::Client, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

/// The pending events of `instance_id`'s newest execution, by type.
async fn pending_types(store: &Store, instance_id: &str) -> Vec<EventType> {
    let snapshot = store.instance(instance_id).await.unwrap().unwrap();
    snapshot.pending.iter().map(|e| e.event_type).collect()
}

/// The workflow queue of `instance_id` in these tests: one per instance, so
/// that a claim on it takes that instance and no other.
fn own_queue(instance_id: &str) -> Queue {
    q(&format!("wf-{instance_id}"))
}

/// Creates `instance_id` on its [`own_queue`] and completes its first task
/// with `decision`.
async fn start_with(store: &Store, instance_id: &str, decision: WorkflowCompletion) {
    store
        .create_instance(NewInstance::new(instance_id, own_queue(instance_id)))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&worker("setup"), &[own_queue(instance_id)], LEASE)
        .await
        .unwrap()
        .expect("the new instance's task");
    assert_eq!(task.instance.instance_id, instance_id);
    store.complete_workflow_task(&task, decision).await.unwrap();
}

/// Creates each of `instance_ids` with one activity `act` on queue `acts`,
/// and claims those activities, in that order.
async fn claimed_activities(store: &Store, instance_ids: &[&str]) -> Vec<ActivityTask> {
    for id in instance_ids {
        start_with(
            store,
            id,
            WorkflowCompletion::default().schedule_activity("act", json!(id), Some(q("acts"))),
        )
        .await;
    }
    let mut tasks = store
        .claim_activity_tasks(&worker("w"), &[q("acts")], 100, LEASE)
        .await
        .unwrap();
    assert_eq!(tasks.len(), instance_ids.len());
    tasks.sort_by_key(|t| {
        instance_ids
            .iter()
            .position(|id| *id == t.instance.instance_id)
    });
    tasks
}

/// Creates `instance_id` and claims its workflow task.
async fn claimed_workflow(store: &Store, instance_id: &str, queue: &str) -> WorkflowTask {
    store
        .create_instance(NewInstance::new(instance_id, q(queue)))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&worker("w"), &[q(queue)], LEASE)
        .await
        .unwrap()
        .expect("the new instance's task");
    assert_eq!(task.instance.instance_id, instance_id);
    task
}

/// Opens a transaction on `sql` that locks the rows of `table` matched by
/// `condition` `FOR UPDATE`, as a session outside pgwake might; it lasts
/// until `COMMIT` is sent on `sql`.
async fn lock_from_outside(sql: &tokio_postgres::Client, table: &str, condition: &str) {
    sql.batch_execute("BEGIN").await.unwrap();
    let locked = sql
        .query(
            &format!("SELECT 1 FROM {table} WHERE {condition} FOR UPDATE"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(locked.len(), 1, "the outside lock found no row");
}

// 1. Fencing by an immutable per-claim token.

#[actix_rt::test]
async fn a_lease_from_before_an_extension_whose_reply_was_lost_still_extends_and_completes() {
    let (store, sql, _db) = setup().await;

    // An activity: the extension's reply is "lost" by extending a copy.
    let mut task = claimed_activities(&store, &["a"]).await.remove(0);
    let mut extended = task.clone();
    store
        .extend_activity_task(&mut extended, LEASE)
        .await
        .unwrap();
    assert!(extended.lease.locked_until() > task.lease.locked_until());
    store.extend_activity_task(&mut task, LEASE).await.unwrap();
    store
        .complete_activity_task(&task, Ok(json!("done")))
        .await
        .unwrap();
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
    assert_eq!(
        pending_types(&store, "a").await,
        [EventType::ActivityCompleted]
    );

    // The same in a batch completion.
    let task = claimed_activities(&store, &["b"]).await.remove(0);
    store
        .extend_activity_task(&mut task.clone(), LEASE)
        .await
        .unwrap();
    let outcomes = store
        .complete_activity_tasks(&[(&task, Ok(json!("done")))])
        .await
        .unwrap();
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert_eq!(
        pending_types(&store, "b").await,
        [EventType::ActivityCompleted]
    );
    // And a release by a copy from before an extension.
    let task = claimed_activities(&store, &["c"]).await.remove(0);
    store
        .extend_activity_task(&mut task.clone(), LEASE)
        .await
        .unwrap();
    assert!(store.release_activity_task(&task).await.unwrap());
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM activities WHERE locked_until IS NULL AND lease_id IS NULL"
        )
        .await,
        1
    );

    // A workflow task: extend a copy, then extend and complete the original.
    let mut task = claimed_workflow(&store, "wf", "orders").await;
    let mut extended = task.clone();
    store
        .extend_workflow_task(&mut extended, LEASE)
        .await
        .unwrap();
    store.extend_workflow_task(&mut task, LEASE).await.unwrap();
    store
        .extend_workflow_task(&mut extended, LEASE)
        .await
        .unwrap();
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!("ok"))),
        )
        .await
        .unwrap();
    let row = sql
        .query_one(
            "SELECT state, locked_until IS NULL, lease_id IS NULL FROM instances WHERE instance_id = 'wf'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get(1), row.get(2)),
        (2, true, true),
        "finished, and the lease cleared"
    );
}

#[actix_rt::test]
async fn a_task_claimed_again_after_expiry_refuses_its_previous_holder_even_the_same_worker() {
    let (store, sql, _db) = setup().await;
    start_with(
        &store,
        "i1",
        WorkflowCompletion::default().schedule_activity("act", json!(1), Some(q("acts"))),
    )
    .await;
    let (w1, w2) = (worker("w1"), worker("w2"));
    let acts = [q("acts")];

    // Another worker takes the expired activity over.
    let mut old = store
        .claim_activity_tasks(&w1, &acts, 10, SHORT_LEASE)
        .await
        .unwrap()
        .remove(0);
    wait_until_expired(&sql, "activities", "true").await;
    let new = store
        .claim_activity_tasks(&w2, &acts, 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    let lost = |err: StoreError| assert!(matches!(err, StoreError::LeaseLost { .. }), "{err:?}");
    lost(
        store
            .extend_activity_task(&mut old, LEASE)
            .await
            .unwrap_err(),
    );
    lost(
        store
            .complete_activity_task(&old, Ok(json!("late")))
            .await
            .unwrap_err(),
    );
    let outcomes = store
        .complete_activity_tasks(&[(&old, Ok(json!("late")))])
        .await
        .unwrap();
    assert!(
        matches!(outcomes[0], Err(StoreError::LeaseLost { .. })),
        "{outcomes:?}"
    );
    assert!(!store.release_activity_task(&old).await.unwrap());

    // The same worker claims it again after expiry: its copy of the first
    // claim holds nothing either.
    assert!(store.release_activity_task(&new).await.unwrap());
    let mut first = store
        .claim_activity_tasks(&w1, &acts, 10, SHORT_LEASE)
        .await
        .unwrap()
        .remove(0);
    wait_until_expired(&sql, "activities", "true").await;
    let second = store
        .claim_activity_tasks(&w1, &acts, 10, LEASE)
        .await
        .unwrap()
        .remove(0);
    lost(
        store
            .extend_activity_task(&mut first, LEASE)
            .await
            .unwrap_err(),
    );
    lost(
        store
            .complete_activity_task(&first, Ok(json!("late")))
            .await
            .unwrap_err(),
    );
    assert!(pending_types(&store, "i1").await.is_empty());
    store
        .complete_activity_task(&second, Ok(json!("on time")))
        .await
        .unwrap();
    assert_eq!(
        pending_types(&store, "i1").await,
        [EventType::ActivityCompleted]
    );

    // A workflow task, claimed again by the same worker after expiry.
    let mut first = store
        .claim_workflow_task(&w1, &[own_queue("i1")], SHORT_LEASE)
        .await
        .unwrap()
        .expect("the activity's result is a workflow task");
    wait_until_expired(&sql, "instances", "true").await;
    let second = {
        let (store, w1) = (&store, &w1);
        until_some(
            DEADLINE,
            "the same worker to claim again",
            move || async move {
                store
                    .claim_workflow_task(w1, &[own_queue("i1")], LEASE)
                    .await
                    .unwrap()
            },
        )
        .await
    };
    lost(
        store
            .extend_workflow_task(&mut first, LEASE)
            .await
            .unwrap_err(),
    );
    lost(
        store
            .complete_workflow_task(&first, WorkflowCompletion::default())
            .await
            .unwrap_err(),
    );
    assert!(!store.release_workflow_task(&first).await.unwrap());
    store
        .complete_workflow_task(&second, WorkflowCompletion::default())
        .await
        .unwrap();
}

// 2. One locked instance row must not stop every worker.

#[actix_rt::test]
async fn a_locked_activity_holds_up_only_its_own_result() {
    let (store, sql, database) = setup().await;
    let tasks = claimed_activities(&store, &["A", "B"]).await;
    let (a, b) = (&tasks[0], &tasks[1]);

    let outside = support::connect(database.url()).await;
    lock_from_outside(&outside, "activities", "instance_id = 'A'").await;
    let outcomes = tokio::time::timeout(
        Duration::from_secs(1),
        store.complete_activity_tasks(&[(a, Ok(json!("a"))), (b, Ok(json!("b")))]),
    )
    .await
    .expect("the batch waited for the locked activity")
    .unwrap();
    match &outcomes[0] {
        Err(err @ StoreError::ActivityBusy { instance_id, .. }) => {
            assert_eq!(instance_id, "A");
            assert!(err.is_transient());
            assert!(
                err.to_string().contains("locked by another transaction"),
                "{err}"
            );
        }
        other => panic!("expected ActivityBusy for A, got {other:?}"),
    }
    assert!(outcomes[1].is_ok(), "{outcomes:?}");
    // B recorded; A neither recorded nor deleted, and still leased.
    assert_eq!(
        pending_types(&store, "B").await,
        [EventType::ActivityCompleted]
    );
    assert!(pending_types(&store, "A").await.is_empty());
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM activities WHERE instance_id = 'A' AND locked_until > now()"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM activities WHERE instance_id = 'B'"
        )
        .await,
        0
    );
    // One at a time, the same: refused at once, not waited for.
    let single = tokio::time::timeout(
        Duration::from_secs(1),
        store.complete_activity_task(a, Ok(json!("a"))),
    )
    .await
    .expect("the single completion waited for the locked activity");
    assert!(
        matches!(single, Err(StoreError::ActivityBusy { .. })),
        "{single:?}"
    );

    outside.batch_execute("COMMIT").await.unwrap();
    let outcomes = store
        .complete_activity_tasks(&[(a, Ok(json!("a")))])
        .await
        .unwrap();
    assert!(outcomes[0].is_ok(), "{outcomes:?}");
    assert_eq!(
        pending_types(&store, "A").await,
        [EventType::ActivityCompleted]
    );
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
}

#[actix_rt::test]
async fn a_locked_instance_holds_up_no_activity_result() {
    let (store, sql, database) = setup().await;
    let tasks = claimed_activities(&store, &["A", "B"]).await;

    // Results lock no instance: one held by a session outside pgwake (or a
    // decision under way) does not keep its results waiting.
    let outside = support::connect(database.url()).await;
    lock_from_outside(&outside, "instances", "instance_id = 'A'").await;
    let outcomes = tokio::time::timeout(
        Duration::from_secs(1),
        store.complete_activity_tasks(&[(&tasks[0], Ok(json!("a"))), (&tasks[1], Ok(json!("b")))]),
    )
    .await
    .expect("the batch waited for the locked instance")
    .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    outside.batch_execute("COMMIT").await.unwrap();
    for id in ["A", "B"] {
        assert_eq!(
            pending_types(&store, id).await,
            [EventType::ActivityCompleted]
        );
    }
    assert_eq!(count(&sql, "SELECT count(*) FROM activities").await, 0);
    // Nor writes it: the instance rows carry no lock of the results.
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM instances WHERE instance_id = 'B' AND xmax::text <> '0'"
        )
        .await,
        0
    );
}

#[actix_rt::test]
async fn a_result_for_an_execution_ending_meanwhile_is_dropped_once_the_end_commits() {
    let (store, sql, database) = setup().await;
    let tasks = claimed_activities(&store, &["A"]).await;

    // An ending execution deletes its activities (here by hand, as a
    // decision that finishes it does): the result waits for no lock, and
    // is refused as busy until the end commits...
    let outside = support::connect(database.url()).await;
    outside
        .batch_execute(
            "BEGIN; UPDATE instances SET state = 2, completed_at = now() WHERE instance_id = 'A';
             DELETE FROM activities WHERE instance_id = 'A'",
        )
        .await
        .unwrap();
    let busy = tokio::time::timeout(
        Duration::from_secs(1),
        store.complete_activity_tasks(&[(&tasks[0], Ok(json!("a")))]),
    )
    .await
    .expect("the result waited for the ending execution")
    .unwrap();
    assert!(
        matches!(busy[0], Err(StoreError::ActivityBusy { .. })),
        "{busy:?}"
    );
    outside.batch_execute("COMMIT").await.unwrap();
    // ...and then dropped: nobody is left to read it, and nothing is left
    // behind.
    let dropped = store
        .complete_activity_tasks(&[(&tasks[0], Ok(json!("a")))])
        .await
        .unwrap();
    assert!(dropped[0].is_ok(), "{dropped:?}");
    assert_eq!(count(&sql, "SELECT count(*) FROM pending_events").await, 0);
    let orphans = "SELECT count(*) FROM attributes a
                    WHERE NOT EXISTS (SELECT 1 FROM history h WHERE h.event_id = a.event_id)";
    assert_eq!(count(&sql, orphans).await, 0);
}

/// An execution that ends while a result for one of its activities is
/// being recorded (the result holding the activity's row, uncommitted)
/// waits for that result, and its end then deletes the result's event too:
/// nothing is left pending for an execution that is over. Checked for the
/// one-round-trip decision (a plain finish) and the general one
/// (continue-as-new, which creates an execution).
#[actix_rt::test]
async fn an_execution_ending_while_a_result_is_recorded_leaves_no_pending_event() {
    for (instance_id, outcome) in [
        ("A", WorkflowOutcome::Completed(json!("done"))),
        ("B", WorkflowOutcome::ContinueAsNew(json!("again"))),
    ] {
        let (store, sql, database) = setup().await;
        let tasks = claimed_activities(&store, &[instance_id]).await;
        store
            .signal_instance(instance_id, "stop", json!(null))
            .await
            .unwrap();
        let decision = store
            .claim_workflow_task(&worker("w"), &[own_queue(instance_id)], LEASE)
            .await
            .unwrap()
            .expect("the signal's workflow task");

        // A result being recorded, as the store records one: its activity
        // row locked and deleted, its event queued, not yet committed.
        let result = support::connect(database.url()).await;
        result
            .batch_execute(&format!(
                "BEGIN;
                 DELETE FROM activities WHERE id = {row};
                 INSERT INTO pending_events (event_id, instance_id, execution_id, event_type,
                                             timestamp, schedule_event_id)
                 VALUES ('result-event', '{instance_id}', '{execution}', {completed}, now(), {schedule});",
                row = sql
                    .query_one("SELECT id FROM activities", &[])
                    .await
                    .unwrap()
                    .get::<_, i64>(0),
                execution = tasks[0].instance.execution_id,
                completed = EventType::ActivityCompleted.code(),
                schedule = tasks[0].schedule_event_id,
            ))
            .await
            .unwrap();

        let ending = {
            let store = store.clone();
            actix_rt::spawn(async move {
                store
                    .complete_workflow_task(
                        &decision,
                        WorkflowCompletion::default().finish(outcome),
                    )
                    .await
            })
        };
        // The end waits for the result's row (having deleted, in the wrong
        // order, the execution's pending events already)...
        let waiting = "SELECT count(*) FROM pg_stat_activity
                        WHERE wait_event_type = 'Lock' AND datname = current_database()";
        let started = Instant::now();
        while count(&sql, waiting).await == 0 {
            assert!(
                started.elapsed() < DEADLINE,
                "the end never waited for the result"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!ending.is_finished(), "{instance_id}");
        result.batch_execute("COMMIT").await.unwrap();
        // ...and then deletes its event with the execution's others.
        tokio::time::timeout(DEADLINE, ending)
            .await
            .expect("the end finished")
            .unwrap()
            .unwrap();
        assert_eq!(
            count(
                &sql,
                &format!(
                    "SELECT count(*) FROM pending_events
                      WHERE instance_id = '{instance_id}' AND execution_id = '{}'",
                    tasks[0].instance.execution_id
                )
            )
            .await,
            0,
            "a pending event outlived its execution ({instance_id})"
        );
    }
}

#[actix_rt::test]
async fn a_result_too_large_is_recorded_as_a_failure_and_the_rest_of_the_batch_normally() {
    let mut options = StoreOptions::default();
    options.max_payload_bytes = 1024;
    let (store, _sql, _db) = setup_with(options).await;
    let tasks = claimed_activities(&store, &["big", "small"]).await;
    let huge = json!("x".repeat(4096));
    let outcomes = store
        .complete_activity_tasks(&[(&tasks[0], Ok(huge)), (&tasks[1], Ok(json!("fine")))])
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");

    let big = store.instance("big").await.unwrap().unwrap();
    assert_eq!(big.pending.len(), 1);
    assert_eq!(big.pending[0].event_type, EventType::ActivityFailed);
    let error = big.pending[0].attributes["error"].as_str().unwrap();
    assert!(
        error.contains("4109 bytes") && error.contains("1024 bytes"),
        "the error names both sizes: {error}"
    );
    let small = store.instance("small").await.unwrap().unwrap();
    assert_eq!(small.pending[0].event_type, EventType::ActivityCompleted);
    assert_eq!(small.pending[0].attributes, json!({"result": "fine"}));
}

// 3. Sub-workflows' advisory locks in one order.

#[actix_rt::test]
async fn completions_creating_the_same_sub_workflows_in_opposite_orders_do_not_deadlock() {
    let (store, sql, _db) = setup().await;
    for round in 0..10 {
        let children: Vec<String> = (0..4).map(|i| format!("child-{round}-{i}")).collect();
        let decision = |ids: Vec<&String>| {
            ids.into_iter()
                .fold(WorkflowCompletion::default(), |d, id| {
                    d.start_sub_workflow(NewInstance::new(id.as_str(), q("children")))
                })
        };
        let forward = decision(children.iter().collect());
        let backward = decision(children.iter().rev().collect());
        // A queue per round: a parent told SubWorkflowFailed has a task again.
        let parents = format!("parents-{round}");
        let first = claimed_workflow(&store, &format!("parent-{round}-1"), &parents).await;
        let second = claimed_workflow(&store, &format!("parent-{round}-2"), &parents).await;
        let (one, two) = futures::join!(
            store.complete_workflow_task(&first, forward),
            store.complete_workflow_task(&second, backward)
        );
        for result in [one, two] {
            if let Err(err) = result {
                panic!("round {round}: a completion failed: {err}");
            }
        }
        // Each child started once; the later parent heard SubWorkflowFailed.
        for child in &children {
            assert_eq!(
                count(
                    &sql,
                    &format!(
                        "SELECT count(*) FROM instances WHERE instance_id = '{child}' AND state = 0"
                    )
                )
                .await,
                1,
                "round {round}: {child}"
            );
        }
    }
}

// 4. A row skipped while locked gets a wake-up.

#[actix_rt::test]
async fn a_poll_that_skips_a_locked_activity_says_so_and_claims_it_once_unlocked() {
    let (store, sql, database) = setup().await;
    let w = worker("w");
    let acts = [q("acts")];
    // Nothing at all: no skipped rows.
    let idle = store
        .poll_activity_tasks_detailed(&w, &acts, 10, LEASE)
        .await
        .unwrap();
    assert!(idle.tasks.is_empty() && !idle.skipped_locked);

    start_with(
        &store,
        "i1",
        WorkflowCompletion::default()
            .schedule_activity("first", json!(1), Some(q("acts")))
            .schedule_activity("second", json!(2), Some(q("acts"))),
    )
    .await;
    let outside = support::connect(database.url()).await;
    // The first one scheduled, which the claim (oldest first) would take first.
    let first = "id = (SELECT min(id) FROM activities)";
    lock_from_outside(&outside, "activities", first).await;
    let poll = store
        .poll_activity_tasks_detailed(&w, &acts, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(
        poll.tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["second"]
    );
    assert!(poll.skipped_locked, "a short batch past a locked row");
    let poll = store
        .poll_activity_tasks_detailed(&w, &acts, 10, LEASE)
        .await
        .unwrap();
    assert!(poll.tasks.is_empty());
    assert!(poll.skipped_locked, "only the locked row is left");

    outside.batch_execute("COMMIT").await.unwrap();
    let poll = store
        .poll_activity_tasks_detailed(&w, &acts, 10, LEASE)
        .await
        .unwrap();
    assert_eq!(
        poll.tasks
            .iter()
            .map(|t| t.name.as_str())
            .collect::<Vec<_>>(),
        ["first"]
    );
    assert!(!poll.skipped_locked);
    // Both leased now: leased rows are not "skipped".
    let poll = store
        .poll_activity_tasks_detailed(&w, &acts, 10, LEASE)
        .await
        .unwrap();
    assert!(poll.tasks.is_empty() && !poll.skipped_locked);
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM activities WHERE lease_id IS NOT NULL"
        )
        .await,
        2
    );
}

#[actix_rt::test]
async fn a_poll_that_skips_a_locked_instance_says_so_and_claims_it_once_unlocked() {
    let (store, _sql, database) = setup().await;
    let w = worker("w");
    let orders = [q("orders")];
    let idle = store
        .poll_workflow_task_detailed(&w, &orders, LEASE)
        .await
        .unwrap();
    assert!(idle.task.is_none() && !idle.skipped_locked);

    store
        .create_instance(NewInstance::new("i1", q("orders")))
        .await
        .unwrap();
    let outside = support::connect(database.url()).await;
    lock_from_outside(&outside, "instances", "instance_id = 'i1'").await;
    let poll = store
        .poll_workflow_task_detailed(&w, &orders, LEASE)
        .await
        .unwrap();
    assert!(poll.task.is_none());
    assert!(poll.skipped_locked);

    outside.batch_execute("COMMIT").await.unwrap();
    let poll = store
        .poll_workflow_task_detailed(&w, &orders, LEASE)
        .await
        .unwrap();
    let task = poll.task.expect("the instance, once unlocked");
    assert_eq!(task.instance.instance_id, "i1");
    assert!(!poll.skipped_locked);
    // Leased now: a leased instance is not "skipped".
    let poll = store
        .poll_workflow_task_detailed(&worker("other"), &orders, LEASE)
        .await
        .unwrap();
    assert!(poll.task.is_none() && !poll.skipped_locked);
}

// 5. Bounded decisions and permanent errors.

#[actix_rt::test]
async fn a_decision_over_a_bound_is_refused_up_front_and_changes_nothing() {
    let (store, sql, _db) = setup().await;
    let mut task = claimed_workflow(&store, "i1", "orders").await;
    let over = MAX_COMMANDS_PER_DECISION + 1;
    let too_many = |err: StoreError, expected_kind: &str| match err {
        StoreError::TooManyCommands { kind, count, limit } => {
            assert_eq!(
                (kind, count, limit),
                (expected_kind, over, MAX_COMMANDS_PER_DECISION)
            );
        }
        other => panic!("expected TooManyCommands for {expected_kind}, got {other:?}"),
    };

    let mut decision = WorkflowCompletion::default();
    for _ in 0..over {
        decision = decision.schedule_activity("a", json!(null), None);
    }
    let err = store
        .complete_workflow_task(&task, decision)
        .await
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("at most 10000"), "{err}");
    too_many(err, "activities");

    let mut decision = WorkflowCompletion::default();
    decision.timers = (0..over)
        .map(|_| StartTimer::new(Duration::from_secs(1), json!(null)))
        .collect();
    too_many(
        store
            .complete_workflow_task(&task, decision)
            .await
            .unwrap_err(),
        "timers",
    );
    let mut decision = WorkflowCompletion::default();
    decision.sub_workflows = (0..over)
        .map(|i| StartSubWorkflow::new(NewInstance::new(format!("child-{i}"), q("orders"))))
        .collect();
    too_many(
        store
            .complete_workflow_task(&task, decision)
            .await
            .unwrap_err(),
        "sub-workflows",
    );
    let mut decision = WorkflowCompletion::default();
    decision.signals = (0..over)
        .map(|_| SendSignal::new("i1", "s", json!(null)))
        .collect();
    too_many(
        store
            .complete_workflow_task(&task, decision)
            .await
            .unwrap_err(),
        "signals",
    );

    // A timer no timestamp can hold: refused, not "out of range" on every try.
    for delay in [
        Duration::from_secs(u64::MAX),
        MAX_TIMER_DELAY + Duration::from_secs(1),
    ] {
        let err = store
            .complete_workflow_task(
                &task,
                WorkflowCompletion::default().start_timer(delay, json!(null)),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::InvalidDuration {
                    what: "timer delay",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!err.is_transient());
        assert!(err.to_string().contains("at most 10 years"), "{err}");
    }

    // A lease over the maximum, to claim or to extend.
    let day_and_more = Duration::from_secs(25 * 3600);
    for err in [
        store
            .claim_activity_tasks(&worker("w"), &[q("acts")], 1, day_and_more)
            .await
            .unwrap_err(),
        store
            .extend_workflow_task(&mut task, day_and_more)
            .await
            .unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::InvalidDuration { what: "lease", .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("at most 24 hours"), "{err}");
    }

    // Nothing was written, and the lease still holds: exactly the bound,
    // and the longest timer, go through.
    assert_eq!(
        count(&sql, "SELECT count(*) FROM history").await,
        0,
        "a refused decision wrote history"
    );
    let mut decision = WorkflowCompletion::default().start_timer(MAX_TIMER_DELAY, json!(null));
    for _ in 0..MAX_COMMANDS_PER_DECISION {
        decision = decision.schedule_activity("a", json!(null), None);
    }
    store.complete_workflow_task(&task, decision).await.unwrap();
    assert_eq!(
        count(&sql, "SELECT count(*) FROM activities").await,
        MAX_COMMANDS_PER_DECISION as i64
    );
}

#[actix_rt::test]
async fn postgres_errors_are_transient_only_when_a_retry_can_succeed() {
    let (_store, _sql, database) = setup().await;
    let client = support::connect(database.url()).await;
    let classify = |source: tokio_postgres::Error| {
        StoreError::Database {
            context: "testing",
            source,
        }
        .is_transient()
    };

    // Data exceptions (class 22): the same values fail the same way.
    for query in [
        "SELECT now() + make_interval(secs => 1e19)",
        "SELECT 'not a number'::int",
        "SELECT 1 / 0",
    ] {
        let err = client.query(query, &[]).await.unwrap_err();
        assert_eq!(&err.code().unwrap().code()[..2], "22", "{query}");
        assert!(!classify(err), "{query}");
    }
    // The driver's own refusals: a column of the wrong type, a missing row.
    let row = client.query_one("SELECT 'text'", &[]).await.unwrap();
    assert!(!classify(row.try_get::<_, i32>(0).unwrap_err()));
    let err = client
        .query_one("SELECT 1 WHERE false", &[])
        .await
        .unwrap_err();
    assert!(!classify(err));

    // lock_timeout (55P03): the lock may be free next time.
    let holder = support::connect(database.url()).await;
    client
        .batch_execute("CREATE TABLE probe (id int); INSERT INTO probe VALUES (1)")
        .await
        .unwrap();
    holder
        .batch_execute("BEGIN; SELECT * FROM probe FOR UPDATE")
        .await
        .unwrap();
    client
        .batch_execute("SET lock_timeout = '50ms'")
        .await
        .unwrap();
    let err = client
        .query("SELECT * FROM probe FOR UPDATE", &[])
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "55P03");
    assert!(classify(err));
    holder.batch_execute("COMMIT").await.unwrap();

    // statement_timeout (57014): the server may be less busy next time.
    client
        .batch_execute("SET statement_timeout = '50ms'")
        .await
        .unwrap();
    let err = client.query("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "57014");
    assert!(classify(err));
}

/// A decision (whose first writes are pipelined) and a batch of results,
/// through a store with a commit hook: nothing they write is announced by
/// the triggers, and the hook hears of the queues.
#[actix_rt::test]
async fn pipelined_decisions_and_results_still_leave_the_notify_to_the_commit_hook() {
    let database = pgwake::testing::fresh_database().await.unwrap();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hook_heard = heard.clone();
    let hook: pgwake::store::CommitHook = std::sync::Arc::new(move |touched| {
        hook_heard.lock().unwrap().push(format!("{touched:?}"));
    });
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap()
        .with_commit_hook(hook);
    let (listener, mut received) = support::listen(
        database.url(),
        &["workflow_tasks", "activity_tasks", "probe"],
    )
    .await;
    let queues = [q("piped")];
    let me = worker("piped");
    store
        .create_instance(NewInstance::new("piped-1", q("piped")))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    // A decision that schedules an activity (inserts into activities).
    store
        .complete_workflow_task(
            &task,
            WorkflowCompletion::default().schedule_activity("a", json!(1), None),
        )
        .await
        .unwrap();
    let activity = store
        .claim_activity_tasks(&me, &queues, 1, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .unwrap();
    // A result (inserts into pending_events).
    let outcomes = store
        .complete_activity_tasks(&[(&activity, Ok(json!(2)))])
        .await
        .unwrap();
    assert!(outcomes.iter().all(Result::is_ok));
    let notified = support::drain_until_sentinel(&listener, &mut received, "probe").await;
    assert!(
        notified.is_empty(),
        "the triggers announced pgwake's own writes: {notified:?}"
    );
    let heard = heard.lock().unwrap().join(" | ");
    assert!(heard.contains("piped"), "the hook heard: {heard}");
}
