//! Bad input, one test each, with the error a user sees (the README's
//! table of bad inputs lists the same cases, in the same words).

mod support;

use std::time::Duration;

use pgwake::testing::{fresh_database, fresh_empty_database, TestPostgres};
use pgwake::{
    ActivityTask, ActivityWorker, ListenerState, NewInstance, Queue, Runtime, RuntimeConfig,
    RuntimeError, Store, StoreError, StoreOptions, TaskKind, WorkflowCompletion, WorkflowTask,
    WorkflowWorker,
};
use serde_json::json;

fn noop_activities(queue: &str) -> ActivityWorker {
    ActivityWorker::new([queue], |_: ActivityTask| async {
        Ok::<_, String>(json!(null))
    })
}

#[actix_rt::test]
async fn a_wrong_password_is_a_clear_auth_error_and_never_printed() {
    let server = TestPostgres::new().unwrap();
    let database = server.create_database().await.unwrap();
    let admin = support::connect(database.url()).await;
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'correct-horse-battery'; GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        .await
        .unwrap();
    // Password authentication for this role only (the cluster trusts everyone else).
    let hba = server.data_dir().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all app 127.0.0.1/32 scram-sha-256\n{rules}"),
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();

    let logs = support::CapturedLogs::default();
    let _guard = logs.install("pgwake=trace");
    let wrong = format!(
        "postgres://app:wrong-staple-guess@127.0.0.1:{}/{}",
        server.port(),
        database.name()
    );
    let err = Store::connect(&wrong, StoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    assert!(!err.is_transient(), "retrying a wrong password cannot help");

    let err = Runtime::builder(RuntimeConfig::new(&wrong))
        .activity_worker(noop_activities("q"))
        .start()
        .await
        .expect_err("a wrong password stops the start");
    assert!(matches!(err, RuntimeError::Store(_)), "{err:?}");
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    for text in [err.to_string(), format!("{err:?}"), logs.text()] {
        assert!(
            !text.contains("wrong-staple-guess"),
            "password leaked: {text}"
        );
        assert!(
            !text.contains("correct-horse-battery"),
            "password leaked: {text}"
        );
    }

    // And the right one works, of course.
    let right = wrong.replace("wrong-staple-guess", "correct-horse-battery");
    Store::connect(&right, StoreOptions::default())
        .await
        .unwrap();
}

#[actix_rt::test]
async fn a_database_without_the_schema_says_to_run_migrate_up() {
    let database = fresh_empty_database().await.unwrap();
    let err = Runtime::builder(RuntimeConfig::new(database.url()))
        .activity_worker(noop_activities("q"))
        .start()
        .await
        .expect_err("no schema");
    assert!(err.to_string().contains("run `pgwake migrate up`"), "{err}");

    // An older schema (as go-workflows leaves it) says the same.
    let mut client = support::connect(database.url()).await;
    pgwake::migrate::up(&mut client, Some(1)).await.unwrap();
    let err = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is at version 1"), "{err}");
    assert!(err.to_string().contains("run `pgwake migrate up`"), "{err}");
}

#[actix_rt::test]
async fn odd_notification_payloads_are_dropped_or_wake_everyone_and_never_break_the_listener() {
    let database = fresh_database().await.unwrap();
    let mut config = RuntimeConfig::new(database.url());
    config.fallback_while_listening = Duration::from_secs(600);
    let runtime = Runtime::builder(config)
        .activity_worker(noop_activities("known"))
        .start()
        .await
        .unwrap();
    support::eventually(Duration::from_secs(10), "listening and idle", || async {
        runtime.health().all_listening()
            && runtime
                .health()
                .counters(TaskKind::Activity, "known")
                .empty_polls
                >= 1
    })
    .await;
    let polls = || runtime.health().counters(TaskKind::Activity, "known").polls;
    let notifier = support::connect(database.url()).await;
    let (_probe, mut received) =
        support::listen(database.url(), &["activity_tasks", "probe"]).await;

    // Unknown queue, and a 7,999-byte payload (PostgreSQL's limit is 8,000):
    // neither wakes the worker, and the listener stays up.
    let before = polls();
    notifier
        .batch_execute("NOTIFY activity_tasks, 'nobody-serves-this'")
        .await
        .unwrap();
    let long = "x".repeat(7999);
    notifier
        .execute("SELECT pg_notify('activity_tasks', $1)", &[&long])
        .await
        .unwrap();
    let seen = support::drain_until_sentinel(&notifier, &mut received, "probe").await;
    assert_eq!(
        seen.len(),
        2,
        "both notifications were delivered to listeners"
    );
    // Notifications reach our listener in order: once a valid one behind
    // them has made the worker poll, the two before it were handled, and
    // made no poll of their own.
    notifier
        .batch_execute("NOTIFY activity_tasks, 'known'")
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(5),
        "the poll for the valid notification",
        || async { polls() > before },
    )
    .await;
    assert_eq!(
        polls(),
        before + 1,
        "no poll for an unknown queue or an invalid payload"
    );
    assert!(runtime
        .health()
        .listeners
        .iter()
        .all(|l| l.state == ListenerState::Listening));
    let before = polls();

    // An empty payload means every queue: the worker polls.
    notifier
        .batch_execute("NOTIFY activity_tasks, ''")
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(5),
        "a poll after an empty payload",
        || async { polls() > before },
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_handler_that_never_returns_keeps_its_lease_until_shutdown_releases_it() {
    let database = fresh_database().await.unwrap();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let stuck = ActivityWorker::new(["stuck"], move |_: ActivityTask| {
        let started_tx = started_tx.clone();
        async move {
            let _ = started_tx.send(());
            futures::future::pending::<()>().await;
            Ok::<_, String>(json!(null))
        }
    })
    .lease(Duration::from_secs(1));
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .activity_worker(stuck)
        .start()
        .await
        .unwrap();
    let client = support::connect(database.url()).await;
    client
        .batch_execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ('forever', 'i', 'e', 11, 'stuck', now())",
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), started.recv())
        .await
        .unwrap();
    let locked_until = || async {
        client
            .query_one(
                "SELECT locked_until > now() FROM activities WHERE activity_id = 'forever'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, Option<bool>>(0)
    };
    // Three lease lengths later it is still held: the heartbeat extends it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(locked_until().await, Some(true));
    assert_eq!(
        runtime
            .health()
            .counters(TaskKind::Activity, "stuck")
            .leases_lost,
        0
    );

    let report = runtime.shutdown(Duration::from_millis(200)).await;
    assert_eq!((report.released_leases, report.drained), (1, false));
    assert_eq!(locked_until().await, None, "released: locked_until is NULL");
}

#[actix_rt::test]
async fn a_decision_with_no_activities_or_thousands_at_once_is_applied_whole() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let flows = Queue::new("flows").unwrap();
    store
        .create_instance(NewInstance::new("none", flows.clone()))
        .await
        .unwrap();
    store
        .create_instance(NewInstance::new("many", flows.clone()))
        .await
        .unwrap();
    let worker = pgwake::WorkerId::new("w").unwrap();
    for _ in 0..2 {
        let task: WorkflowTask = store
            .claim_workflow_task(
                &worker,
                std::slice::from_ref(&flows),
                Duration::from_secs(60),
            )
            .await
            .unwrap()
            .unwrap();
        let decision = if task.instance.instance_id == "many" {
            (0..5000).fold(WorkflowCompletion::default(), |d, i| {
                d.schedule_activity("fan", json!(i), Some(Queue::new("wide").unwrap()))
            })
        } else {
            WorkflowCompletion::default()
        };
        store.complete_workflow_task(&task, decision).await.unwrap();
    }
    let stats = store.stats().await.unwrap();
    let wide = stats.iter().find(|s| s.queue == "wide").unwrap();
    assert_eq!(wide.ready_activities, 5000);
    let many = store.instance("many").await.unwrap().unwrap();
    assert_eq!(
        many.history.len(),
        2 + 5000,
        "WorkflowTaskStarted, the start event and 5,000 ActivityScheduled"
    );
    let none = store.instance("none").await.unwrap().unwrap();
    assert_eq!(
        none.history.len(),
        2,
        "WorkflowTaskStarted and the start event"
    );
    assert!(none.pending.is_empty());
}

#[actix_rt::test]
async fn invalid_queue_names_are_refused_at_every_entry_point() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    for bad in ["", &"q".repeat(129), "has space", "naïve", "semi;colon"] {
        let err = Queue::new(bad).unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidQueueName { .. }),
            "{bad:?}: {err:?}"
        );
        assert!(err.to_string().contains("ASCII letter"), "{err}");
        // At the runtime's entry point too, before anything connects.
        let err = Runtime::builder(RuntimeConfig::new(database.url()))
            .activity_worker(noop_activities(bad))
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Build(_)), "{bad:?}: {err:?}");
        let err = Runtime::builder(RuntimeConfig::new(database.url()))
            .workflow_worker(WorkflowWorker::new([bad], |_: WorkflowTask| async {
                Ok::<_, String>(WorkflowCompletion::default())
            }))
            .start()
            .await
            .unwrap_err();
        assert!(matches!(err, RuntimeError::Build(_)), "{bad:?}: {err:?}");
    }
    let err = store
        .claim_activity_tasks(
            &pgwake::WorkerId::new("w").unwrap(),
            &[],
            1,
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NoQueues), "{err:?}");
}
