//! The runtime end to end, against a real PostgreSQL: wake-ups, fallback
//! polling, routing, handlers, shutdown.

mod support;

use support::{
    insert_by_plain_sql, notify_only, receive_within, reporting_activities, reporting_workflows,
};

use std::time::{Duration, Instant};

use pgwake::testing::fresh_database;
use pgwake::{
    ActivityTask, ActivityWorker, BuildError, NewInstance, Queue, Runtime, RuntimeConfig,
    RuntimeError, RuntimeHandle, TaskKind,
};
use serde_json::json;
use tokio::sync::mpsc;

async fn wait_listening(runtime: &RuntimeHandle) {
    support::eventually(Duration::from_secs(10), "listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
}

#[actix_rt::test]
async fn tasks_written_by_another_connection_start_through_notifications() {
    let database = fresh_database().await.unwrap();
    let (activities, mut activity_started) = reporting_activities("acts");
    let (workflows, mut workflow_started) = reporting_workflows("flows");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(activities)
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;

    insert_by_plain_sql(database.url(), "by-sql", "flows", "acts", "activity-owner").await;
    assert_eq!(
        receive_within(
            &mut activity_started,
            Duration::from_secs(2),
            "the activity"
        )
        .await,
        "by-sql"
    );
    assert_eq!(
        receive_within(
            &mut workflow_started,
            Duration::from_secs(2),
            "the workflow task"
        )
        .await,
        "by-sql"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn with_notifications_off_tasks_are_found_by_polling() {
    let database = fresh_database().await.unwrap();
    let (activities, mut activity_started) = reporting_activities("acts");
    let (workflows, mut workflow_started) = reporting_workflows("flows");
    let mut config = RuntimeConfig::new(database.url());
    config.notifications = false;
    config.fallback_while_degraded = Duration::from_millis(200);
    let runtime = Runtime::builder(config)
        .activity_worker(activities)
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    assert!(runtime
        .health()
        .listeners
        .iter()
        .all(|l| l.state == pgwake::ListenerState::Disabled));

    insert_by_plain_sql(database.url(), "polled", "flows", "acts", "activity-owner").await;
    assert_eq!(
        receive_within(
            &mut activity_started,
            Duration::from_secs(5),
            "the activity"
        )
        .await,
        "polled"
    );
    assert_eq!(
        receive_within(
            &mut workflow_started,
            Duration::from_secs(5),
            "the workflow task"
        )
        .await,
        "polled"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_task_written_through_the_store_starts_without_a_notification() {
    let database = fresh_database().await.unwrap();
    let (workflows, mut workflow_started) = reporting_workflows("flows");
    let mut config = notify_only(database.url());
    config.notifications = false; // no listener, no NOTIFY: only the in-process wake-up
    let runtime = Runtime::builder(config)
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    // Let the worker's first poll find nothing and go to sleep for ten minutes.
    support::eventually(Duration::from_secs(5), "the first empty poll", || async {
        runtime
            .health()
            .counters(TaskKind::Workflow, "flows")
            .empty_polls
            >= 1
    })
    .await;

    runtime
        .store()
        .create_instance(NewInstance::new("local", Queue::new("flows").unwrap()))
        .await
        .unwrap();
    assert_eq!(
        receive_within(
            &mut workflow_started,
            Duration::from_secs(2),
            "the workflow task"
        )
        .await,
        "local"
    );
    assert_eq!(runtime.notifications_sent(), 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_panicking_handler_records_a_failure_and_its_worker_takes_the_next_task() {
    let database = fresh_database().await.unwrap();
    let (sender, mut handled) = mpsc::unbounded_channel();
    let worker = ActivityWorker::new(["acts"], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            if task.activity_id == "first" {
                panic!("the handler blew up");
            }
            let _ = sender.send(task.activity_id.clone());
            Ok::<_, String>(json!(null))
        }
    });
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    insert_by_plain_sql(database.url(), "first", "flows", "acts", "first").await;
    support::eventually(
        Duration::from_secs(5),
        "the panic to be counted",
        || async {
            runtime
                .health()
                .counters(TaskKind::Activity, "acts")
                .panicked
                == 1
        },
    )
    .await;
    insert_by_plain_sql(database.url(), "second", "flows", "acts", "second").await;
    assert_eq!(
        receive_within(&mut handled, Duration::from_secs(5), "the next activity").await,
        "second"
    );

    // The panic was recorded as the activity's failure, for its workflow to see.
    let failure = runtime.store().instance("first").await.unwrap().unwrap();
    let failed = failure
        .pending
        .iter()
        .find(|e| e.event_type == pgwake::EventType::ActivityFailed)
        .unwrap();
    assert!(failed.attributes["error"]
        .as_str()
        .unwrap()
        .contains("the handler blew up"));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn invalid_configuration_is_refused_before_anything_connects() {
    // The URL points nowhere: a refusal must come from validation, not a connection.
    let url = "postgres://u:secret@127.0.0.1:1/x";
    let noop = |_: ActivityTask| async { Ok::<_, String>(json!(null)) };
    let cases: Vec<(&str, pgwake::RuntimeBuilder)> = vec![
        (
            "empty queue list",
            Runtime::builder(RuntimeConfig::new(url))
                .activity_worker(ActivityWorker::new(Vec::<String>::new(), noop)),
        ),
        (
            "zero concurrency",
            Runtime::builder(RuntimeConfig::new(url))
                .activity_worker(ActivityWorker::new(["a"], noop).concurrency(0)),
        ),
        (
            "bad queue name",
            Runtime::builder(RuntimeConfig::new(url))
                .activity_worker(ActivityWorker::new(["a b"], noop)),
        ),
        (
            "malformed URL",
            Runtime::builder(RuntimeConfig::new("postgres://u:secret@h:port/x"))
                .activity_worker(ActivityWorker::new(["a"], noop)),
        ),
    ];
    for (what, builder) in cases {
        let started = Instant::now();
        let err = builder.start().await.expect_err(what);
        assert!(matches!(err, RuntimeError::Build(_)), "{what}: {err:?}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: refused without connecting"
        );
        assert!(!err.to_string().contains("secret"), "{what}: {err}");
    }
    let mut config = RuntimeConfig::new(url);
    config.fallback_while_listening = Duration::ZERO;
    assert!(matches!(
        config.validate(),
        Err(BuildError::Setting {
            name: "fallback_while_listening",
            ..
        })
    ));
}

#[actix_rt::test]
async fn a_task_whose_worker_died_is_taken_over_when_its_lease_expires_not_at_the_fallback() {
    let database = fresh_database().await.unwrap();
    let (activities, mut activity_started) = reporting_activities("acts");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(activities)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    // What a worker that claimed the activity and died leaves behind: a
    // lease of 2 s that runs out unannounced (its insert does notify, but
    // the lease still holds then).
    let client = support::connect(database.url()).await;
    client
        .batch_execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp,
                                     locked_until, worker)
             VALUES ('orphan', 'owner', 'e', 11, 'acts', now(), now() + interval '2 seconds', 'dead-worker')",
        )
        .await
        .unwrap();
    let inserted = Instant::now();
    let id = receive_within(
        &mut activity_started,
        Duration::from_secs(5),
        "the orphaned activity",
    )
    .await;
    assert_eq!(id, "orphan");
    assert!(
        inserted.elapsed() >= Duration::from_millis(1500),
        "not before the lease expired: {:?}",
        inserted.elapsed()
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
