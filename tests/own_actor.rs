//! examples/own_actor.rs: a user-defined actor registered with the runtime's
//! router is woken for activities written by plain SQL and through the
//! store, handles each exactly once, and is no longer woken once stopped.

#[allow(dead_code)] // its `main`
#[path = "../examples/own_actor.rs"]
mod own_actor;

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use actix::prelude::*;
use own_actor::{Handled, Stop, Thumbnailer};
use pgwake::testing::fresh_database;
use pgwake::{InstanceRef, Queue, Runtime, RuntimeConfig, RuntimeHandle, TaskKind};
use serde_json::json;
use tokio::sync::mpsc;

/// Long enough that no poll timer, the runtime's or the actor's, fires
/// during a test: only a wake-up through the router can explain a start.
const NEVER: Duration = Duration::from_secs(600);
const QUEUE: &str = "thumbnails";

async fn runtime(url: &str) -> RuntimeHandle {
    let mut config = RuntimeConfig::new(url);
    config.fallback_while_listening = NEVER;
    config.fallback_while_degraded = NEVER;
    let runtime = Runtime::builder(config).start().await.unwrap();
    support::eventually(Duration::from_secs(10), "listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
    runtime
}

async fn insert_by_plain_sql(client: &tokio_postgres::Client, activity_id: &str) {
    client
        .execute(
            "WITH attrs AS (INSERT INTO attributes (event_id, instance_id, execution_id, data)
                            VALUES ($1, 'album', 'upload', convert_to($2, 'UTF8')))
             INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ($1, 'album', 'upload', 11, $3, now())",
            &[
                &activity_id,
                &json!({"name": "thumbnail", "input": {"image": activity_id}}).to_string(),
                &QUEUE,
            ],
        )
        .await
        .unwrap();
}

async fn next_handled(handled: &mut mpsc::UnboundedReceiver<Handled>, what: &str) -> Handled {
    tokio::time::timeout(Duration::from_secs(2), handled.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} was not handled within 2 s"))
        .expect("the actor stopped")
}

async fn activities_left(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM activities", &[])
        .await
        .unwrap()
        .get(0)
}

#[actix_rt::test]
async fn the_actor_handles_each_activity_once_on_wake_ups_alone_and_unregisters_when_it_stops() {
    let database = fresh_database().await.unwrap();
    let client = support::connect(database.url()).await;
    let runtime = runtime(database.url()).await;
    let queue = Queue::new(QUEUE).unwrap();
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let actor = Thumbnailer::new(runtime.clone(), vec![queue.clone()], NEVER, handled_tx).start();
    let owner = InstanceRef {
        instance_id: "album".to_string(),
        execution_id: "upload".to_string(),
    };
    // A first activity, which the actor's start-up poll may take: once it is
    // handled, that poll is over (one claim at a time), and from then on only
    // wake-ups make the actor claim.
    let warm_up = runtime
        .store()
        .enqueue_activity(&owner, &queue, "thumbnail", json!({ "image": "warm-up" }))
        .await
        .unwrap();
    assert_eq!(
        next_handled(&mut handled, "the first activity")
            .await
            .activity_id,
        warm_up
    );

    let mut seen: BTreeMap<String, Handled> = BTreeMap::new();
    for round in 0..3 {
        // Through another connection: the trigger's NOTIFY, the listener, the router.
        let by_sql = format!("by-sql-{round}");
        insert_by_plain_sql(&client, &by_sql).await;
        let done = next_handled(&mut handled, &by_sql).await;
        assert_eq!(done.activity_id, by_sql);
        assert_eq!(
            done.result,
            json!({ "thumbnail": format!("{by_sql}.200x200.jpg") })
        );
        assert!(seen.insert(done.activity_id.clone(), done).is_none());

        // Through the runtime's store: its commit hook wakes the router at once.
        let by_store = runtime
            .store()
            .enqueue_activity(&owner, &queue, "thumbnail", json!({ "image": "cat" }))
            .await
            .unwrap();
        let done = next_handled(&mut handled, "the store's activity").await;
        assert_eq!(done.activity_id, by_store);
        assert_eq!(done.name, "thumbnail");
        assert!(seen.insert(done.activity_id.clone(), done).is_none());
    }
    // A burst: each handled once, none twice.
    let mut burst = Vec::new();
    for _ in 0..20 {
        burst.push(
            runtime
                .store()
                .enqueue_activity(&owner, &queue, "thumbnail", json!({ "image": "dog" }))
                .await
                .unwrap(),
        );
    }
    for _ in &burst {
        let done = next_handled(&mut handled, "an activity of the burst").await;
        assert!(burst.contains(&done.activity_id));
        assert!(
            seen.insert(done.activity_id.clone(), done).is_none(),
            "handled twice"
        );
    }
    assert_eq!(seen.len(), 26); // and the warm-up
    assert_eq!(activities_left(&client).await, 0);
    let wakeups_while_running = runtime.health().counters(TaskKind::Activity, QUEUE).wakeups;
    assert!(wakeups_while_running >= 6);

    // Stopped: unregistered, so no wake-up reaches it and nothing claims.
    actor.send(Stop).await.unwrap();
    support::eventually(Duration::from_secs(5), "the actor to stop", || async {
        !actor.connected()
    })
    .await;
    let left_behind = runtime
        .store()
        .enqueue_activity(&owner, &queue, "thumbnail", json!({ "image": "owl" }))
        .await
        .unwrap();
    insert_by_plain_sql(&client, "after-stop").await;
    // A second actor for the same queue: its first poll takes both, and the
    // stopped one got nothing meanwhile.
    let (second_tx, mut second) = mpsc::unbounded_channel();
    let _second = Thumbnailer::new(runtime.clone(), vec![queue.clone()], NEVER, second_tx).start();
    let mut after: Vec<String> = Vec::new();
    for _ in 0..2 {
        after.push(
            next_handled(&mut second, "an activity left behind")
                .await
                .activity_id,
        );
    }
    let mut expected = vec!["after-stop".to_string(), left_behind];
    expected.sort();
    after.sort();
    assert_eq!(after, expected);
    assert!(
        handled.try_recv().is_err(),
        "the stopped actor handled something"
    );
    assert_eq!(activities_left(&client).await, 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}
