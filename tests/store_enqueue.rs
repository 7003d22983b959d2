//! Standalone activities: enqueued in one statement, announced by the
//! trigger, or, with a commit hook, by the hook instead.

mod support;

use std::sync::{Arc, Mutex};

use pgwake::store::TouchedQueues;
use pgwake::testing::fresh_database;
use pgwake::{queues, InstanceRef, Queue, Store, StoreOptions, WorkerId};
use serde_json::json;
use support::{drain_until_sentinel, listen};

fn owner() -> InstanceRef {
    InstanceRef {
        instance_id: "owner".into(),
        execution_id: "e".into(),
    }
}

#[actix_rt::test]
async fn an_enqueued_activity_is_announced_by_the_trigger_and_claimable() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let (probe, mut received) = listen(database.url(), &["activity_tasks", "probe"]).await;

    let id = store
        .enqueue_activity(
            &owner(),
            &Queue::new("jobs").unwrap(),
            "resize",
            json!({"w": 640}),
        )
        .await
        .unwrap();
    let seen = drain_until_sentinel(&probe, &mut received, "probe").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].channel.as_str(), seen[0].payload.as_str()),
        ("activity_tasks", "jobs")
    );

    let worker = WorkerId::new("w").unwrap();
    let tasks = store
        .claim_activity_tasks(
            &worker,
            &queues(["jobs"]).unwrap(),
            10,
            std::time::Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(
        (tasks[0].activity_id.as_str(), tasks[0].name.as_str()),
        (id.as_str(), "resize")
    );
    assert_eq!(tasks[0].input, json!({"w": 640}));
}

#[actix_rt::test]
async fn with_a_commit_hook_the_trigger_is_skipped_and_the_hook_is_told() {
    let database = fresh_database().await.unwrap();
    let reports: Arc<Mutex<Vec<TouchedQueues>>> = Arc::default();
    let sink = reports.clone();
    // One connection: the follow-up insert below runs in the same session.
    let mut options = StoreOptions::default();
    options.pool_size = 1;
    let store = Store::connect(database.url(), options)
        .await
        .unwrap()
        .with_commit_hook(Arc::new(move |touched| sink.lock().unwrap().push(touched)));
    let (probe, mut received) = listen(database.url(), &["activity_tasks", "probe"]).await;

    store
        .enqueue_activity(
            &owner(),
            &Queue::new("jobs").unwrap(),
            "resize",
            json!(null),
        )
        .await
        .unwrap();
    let seen = drain_until_sentinel(&probe, &mut received, "probe").await;
    assert!(seen.is_empty(), "the trigger notified: {seen:?}");
    let reports = reports.lock().unwrap().clone();
    assert_eq!(
        reports,
        [{
            let mut touched = TouchedQueues::default();
            touched.activity.push(Queue::new("jobs").unwrap());
            touched
        }]
    );

    // The setting lasted for that statement's transaction only: the same
    // session's next insert notifies again.
    let plain = store.pool().get().await.unwrap();
    plain
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ('plain', 'owner', 'e', 11, 'jobs', now())",
            &[],
        )
        .await
        .unwrap();
    let seen = drain_until_sentinel(&probe, &mut received, "probe").await;
    assert_eq!(seen.len(), 1, "{seen:?}");
}
