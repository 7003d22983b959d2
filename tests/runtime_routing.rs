//! The runtime's routing and timing end to end, against a real PostgreSQL:
//! due-time timers with no wake-up, per-queue routing, debounced NOTIFYs
//! across processes, the in-process wake-up, many workers sharing a queue,
//! shutdown releasing leases, handler errors, and poll-only mode.

mod support;

use support::{
    insert_by_plain_sql, notify_only, receive_within, reporting_activities, reporting_workflows,
};

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pgwake::testing::fresh_database;
use pgwake::{
    ActivityTask, ActivityWorker, EventType, InstanceState, NewInstance, Queue, Runtime,
    RuntimeConfig, RuntimeHandle, TaskKind, WorkflowCompletion, WorkflowOutcome, WorkflowTask,
    WorkflowWorker,
};
use serde_json::json;
use tokio::sync::mpsc;

/// Receives exactly `count` reports, failing after `limit`.
async fn receive_all(
    receiver: &mut mpsc::UnboundedReceiver<String>,
    count: usize,
    limit: Duration,
    what: &str,
) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::with_capacity(count);
    while received.len() < count {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(id)) => received.push(id),
            Ok(None) => panic!("handler channel closed"),
            Err(_) => panic!(
                "only {} of {count} {what} handled within {limit:?}",
                received.len()
            ),
        }
    }
    received
}

async fn wait_listening(runtime: &RuntimeHandle) {
    support::eventually(Duration::from_secs(10), "listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
}

/// Waits until every worker of `queues` has made its first, empty poll.
async fn wait_first_empty_poll(runtime: &RuntimeHandle, kind: TaskKind, queues: &[&str]) {
    support::eventually(Duration::from_secs(10), "the first empty polls", || async {
        let health = runtime.health();
        queues
            .iter()
            .all(|q| health.counters(kind, q).empty_polls >= 1)
    })
    .await;
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

// 1 -------------------------------------------------------------------------

#[actix_rt::test]
async fn a_two_second_timer_fires_on_time_with_nothing_written_at_its_due_time() {
    let database = fresh_database().await.unwrap();
    let (sender, mut seen) = mpsc::unbounded_channel::<(EventType, Instant)>();
    let worker = WorkflowWorker::new(["timers"], move |task: WorkflowTask| {
        let sender = sender.clone();
        async move {
            let now = Instant::now();
            let first = task.new_events.first().map(|e| e.event_type);
            match first {
                Some(EventType::WorkflowExecutionStarted) => {
                    let _ = sender.send((EventType::WorkflowExecutionStarted, now));
                    Ok::<_, String>(
                        WorkflowCompletion::default()
                            .start_timer(Duration::from_secs(2), json!("t")),
                    )
                }
                Some(EventType::TimerFired) => {
                    let _ = sender.send((EventType::TimerFired, now));
                    Ok(WorkflowCompletion::default()
                        .finish(WorkflowOutcome::Completed(json!("fired"))))
                }
                other => Err(format!("unexpected events: {other:?}")),
            }
        }
    });
    let runtime = Runtime::builder(notify_only(database.url()))
        .workflow_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    wait_first_empty_poll(&runtime, TaskKind::Workflow, &["timers"]).await;

    runtime
        .store()
        .create_instance(NewInstance::new("sleeper", Queue::new("timers").unwrap()))
        .await
        .unwrap();
    let (kind, scheduled_at) =
        receive_within(&mut seen, Duration::from_secs(2), "the start task").await;
    assert_eq!(kind, EventType::WorkflowExecutionStarted);
    let (kind, fired_at) = receive_within(&mut seen, Duration::from_secs(5), "the timer").await;
    assert_eq!(kind, EventType::TimerFired);
    let gap = fired_at - scheduled_at;
    println!("timer due in 2 s fired after {gap:?}");
    assert!(
        gap >= Duration::from_millis(1500) && gap <= Duration::from_secs(4),
        "a 2 s timer fired after {gap:?}"
    );

    support::eventually(Duration::from_secs(5), "the instance to finish", || async {
        let snapshot = runtime.store().instance("sleeper").await.unwrap().unwrap();
        snapshot.state == InstanceState::Finished
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
}

// 2 -------------------------------------------------------------------------

#[actix_rt::test]
async fn a_notification_for_one_queue_makes_no_worker_of_another_queue_poll() {
    let database = fresh_database().await.unwrap();
    let (worker_a, mut handled_a) = reporting_activities("a");
    let (worker_b, _handled_b) = reporting_activities("b");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(worker_a)
        .activity_worker(worker_b)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    wait_first_empty_poll(&runtime, TaskKind::Activity, &["a", "b"]).await;
    // A deliberate sleep: "nothing more happens" cannot be awaited. The
    // start-up polls and the listener's resync poll may still be on their
    // way; wait until both queues' counters hold still for 300 ms.
    let polls = |runtime: &RuntimeHandle| {
        let health = runtime.health();
        (
            health.counters(TaskKind::Activity, "a").polls,
            health.counters(TaskKind::Activity, "b").polls,
        )
    };
    support::eventually(
        Duration::from_secs(10),
        "the counters to settle",
        || async {
            let before = polls(&runtime);
            tokio::time::sleep(Duration::from_millis(300)).await;
            polls(&runtime) == before
        },
    )
    .await;
    let (a_before, b_before) = polls(&runtime);

    let client = support::connect(database.url()).await;
    for i in 0..20 {
        // One statement, one transaction, one notification each.
        client
            .execute(
                "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
                 VALUES ($1, 'owner', 'e', 11, 'a', now())",
                &[&format!("a-{i}")],
            )
            .await
            .unwrap();
    }
    let handled = receive_all(&mut handled_a, 20, Duration::from_secs(10), "activities").await;
    assert_eq!(handled.iter().collect::<HashSet<_>>().len(), 20);
    support::eventually(Duration::from_secs(5), "20 completions on a", || async {
        runtime.health().counters(TaskKind::Activity, "a").completed == 20
    })
    .await;

    let (a_after, b_after) = polls(&runtime);
    let b = runtime.health().counters(TaskKind::Activity, "b");
    println!("polls on a: {a_before} -> {a_after}; on b: {b_before} -> {b_after}; b: {b:?}");
    assert!(
        a_after > a_before,
        "a's worker polled: {a_before} -> {a_after}"
    );
    assert_eq!(
        b_after, b_before,
        "notifications for queue a made b's worker poll"
    );
    assert_eq!(b.claimed, 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}

// 3 -------------------------------------------------------------------------

#[actix_rt::test]
async fn a_burst_from_another_runtime_is_handled_once_each_with_few_notifications() {
    const INSTANCES: usize = 500;
    let database = fresh_database().await.unwrap();
    let producer = Runtime::builder(notify_only(database.url()))
        .start()
        .await
        .unwrap();
    let (workflows, mut handled) = reporting_workflows("burst");
    let consumer = Runtime::builder(notify_only(database.url()))
        .workflow_worker(workflows.concurrency(8))
        .start()
        .await
        .unwrap();
    wait_listening(&producer).await;
    wait_listening(&consumer).await;
    wait_first_empty_poll(&consumer, TaskKind::Workflow, &["burst"]).await;

    let burst = Queue::new("burst").unwrap();
    let started = Instant::now();
    let created: Vec<_> = futures::stream::iter(0..INSTANCES)
        .map(|i| {
            producer
                .store()
                .create_instance(NewInstance::new(format!("burst-{i}"), burst.clone()))
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let produced_in = started.elapsed();
    assert!(created.iter().all(Result::is_ok), "every create commits");

    let ids = receive_all(
        &mut handled,
        INSTANCES,
        Duration::from_secs(20),
        "instances",
    )
    .await;
    let handled_in = started.elapsed();
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), INSTANCES, "an instance was handled twice");
    for i in 0..INSTANCES {
        assert!(
            distinct.contains(&format!("burst-{i}")),
            "burst-{i} not handled"
        );
    }
    let client = support::connect(database.url()).await;
    support::eventually(
        Duration::from_secs(10),
        "every instance finished",
        || async {
            count(
                &client,
                "SELECT count(*) FROM instances WHERE queue = 'burst' AND state = 2",
            )
            .await
                == INSTANCES as i64
        },
    )
    .await;
    // The counter moves just after the completion's commit: wait for it too.
    support::eventually(
        Duration::from_secs(5),
        "500 completions counted",
        || async {
            consumer
                .health()
                .counters(TaskKind::Workflow, "burst")
                .completed
                >= INSTANCES as u64
        },
    )
    .await;
    let counters = consumer.health().counters(TaskKind::Workflow, "burst");
    assert_eq!(counters.claimed, INSTANCES as u64, "{counters:?}");
    assert_eq!(counters.completed, INSTANCES as u64, "{counters:?}");
    assert_eq!(
        count(&client, "SELECT count(*) FROM pending_events").await,
        0
    );

    let sent = producer.notifications_sent();
    println!(
        "{INSTANCES} commits in {produced_in:?}, all handled after {handled_in:?}, \
         with {sent} NOTIFYs from the producer; consumer {counters:?}"
    );
    assert!(sent > 0, "the producer sent no NOTIFY at all");
    assert!(
        sent < 100,
        "{sent} NOTIFYs for a burst of {INSTANCES} commits"
    );
    producer.shutdown(Duration::from_secs(5)).await;
    consumer.shutdown(Duration::from_secs(5)).await;
}

// 4 -------------------------------------------------------------------------

#[actix_rt::test]
async fn with_notifications_on_a_write_through_the_store_wakes_this_process_at_once() {
    let database = fresh_database().await.unwrap();
    let (workflows, mut started) = reporting_workflows("flows");
    let runtime = Runtime::builder(notify_only(database.url()))
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    wait_first_empty_poll(&runtime, TaskKind::Workflow, &["flows"]).await;
    assert_eq!(runtime.notifications_sent(), 0);

    let written = Instant::now();
    runtime
        .store()
        .create_instance(NewInstance::new("local", Queue::new("flows").unwrap()))
        .await
        .unwrap();
    assert_eq!(
        receive_within(&mut started, Duration::from_secs(2), "the workflow task").await,
        "local"
    );
    let latency = written.elapsed();
    let sent_at_start = runtime.notifications_sent();
    println!("started {latency:?} after the write; NOTIFYs sent by then: {sent_at_start}");
    assert!(sent_at_start <= 1);
    // The other processes still get their one NOTIFY; the instance's
    // completion (which finishes it) touches no queue, so it stays one.
    support::eventually(Duration::from_secs(5), "the NOTIFY for others", || async {
        runtime.notifications_sent() == 1
    })
    .await;
    support::eventually(Duration::from_secs(5), "the completion", || async {
        runtime
            .health()
            .counters(TaskKind::Workflow, "flows")
            .completed
            == 1
    })
    .await;
    assert_eq!(runtime.notifications_sent(), 1);
    runtime.shutdown(Duration::from_secs(5)).await;
}

// 5 -------------------------------------------------------------------------

#[actix_rt::test]
async fn two_thousand_activities_over_eight_workers_are_each_handled_once() {
    const ACTIVITIES: usize = 2_000;
    let database = fresh_database().await.unwrap();
    let (sender, mut handled) = mpsc::unbounded_channel();
    let mut builder = Runtime::builder(notify_only(database.url()));
    for _ in 0..8 {
        let sender = sender.clone();
        builder = builder.activity_worker(
            ActivityWorker::new(["bulk"], move |task: ActivityTask| {
                let sender = sender.clone();
                async move {
                    let _ = sender.send(task.activity_id.clone());
                    Ok::<_, String>(json!({ "done": task.activity_id }))
                }
            })
            .concurrency(4),
        );
    }
    drop(sender);
    let runtime = builder.start().await.unwrap();
    wait_listening(&runtime).await;
    wait_first_empty_poll(&runtime, TaskKind::Activity, &["bulk"]).await;

    let client = support::connect(database.url()).await;
    client
        .batch_execute(
            "INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ('bulk', 'e', 0, 'wf');
             INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             SELECT 'act-' || g, 'bulk', 'e', 11, 'bulk', now() FROM generate_series(1, 2000) g;",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let ids = receive_all(
        &mut handled,
        ACTIVITIES,
        Duration::from_secs(20),
        "activities",
    )
    .await;
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), ACTIVITIES, "an activity was handled twice");
    support::eventually(Duration::from_secs(10), "2000 completions", || async {
        runtime
            .health()
            .counters(TaskKind::Activity, "bulk")
            .completed
            == ACTIVITIES as u64
    })
    .await;
    println!(
        "{ACTIVITIES} activities handled in {:?}; {:?}",
        started.elapsed(),
        runtime.health().counters(TaskKind::Activity, "bulk")
    );
    assert_eq!(count(&client, "SELECT count(*) FROM activities").await, 0);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM pending_events
              WHERE instance_id = 'bulk' AND execution_id = 'e' AND event_type = 12",
        )
        .await,
        ACTIVITIES as i64
    );
    let counters = runtime.health().counters(TaskKind::Activity, "bulk");
    assert_eq!(counters.claimed, ACTIVITIES as u64, "{counters:?}");
    assert_eq!(
        counters.failed + counters.panicked + counters.leases_lost,
        0
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

// 6 -------------------------------------------------------------------------

#[actix_rt::test]
async fn shutdown_releases_a_running_handlers_lease_and_another_runtime_claims_it_at_once() {
    let database = fresh_database().await.unwrap();
    let (sender, mut running) = mpsc::unbounded_channel();
    let stuck = ActivityWorker::new(["stuck"], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.activity_id.clone());
            futures::future::pending::<()>().await;
            Ok::<_, String>(json!("never"))
        }
    })
    .lease(Duration::from_secs(120));
    let first = Runtime::builder(notify_only(database.url()))
        .activity_worker(stuck)
        .start()
        .await
        .unwrap();
    wait_listening(&first).await;
    insert_by_plain_sql(database.url(), "held", "flows", "stuck", "held").await;
    assert_eq!(
        receive_within(&mut running, Duration::from_secs(5), "the stuck handler").await,
        "held"
    );

    let client = support::connect(database.url()).await;
    let leased: bool = client
        .query_one(
            "SELECT locked_until > now() + interval '60 seconds' FROM activities WHERE activity_id = 'held'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        leased,
        "the activity is under its 120 s lease while it runs"
    );

    let report = first.shutdown(Duration::from_millis(200)).await;
    assert_eq!(report.released_leases, 1, "{report:?}");
    assert!(!report.drained, "{report:?}");
    let released: bool = client
        .query_one(
            "SELECT locked_until IS NULL FROM activities WHERE activity_id = 'held'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(released, "locked_until is NULL right after shutdown");

    let (normal, mut handled) = reporting_activities("stuck");
    let restarted = Instant::now();
    let second = Runtime::builder(notify_only(database.url()))
        .activity_worker(normal)
        .start()
        .await
        .unwrap();
    assert_eq!(
        receive_within(
            &mut handled,
            Duration::from_secs(2),
            "the released activity"
        )
        .await,
        "held"
    );
    println!(
        "released activity handled {:?} after the second runtime started",
        restarted.elapsed()
    );
    support::eventually(
        Duration::from_secs(5),
        "the activity's completion",
        || async { count(&client, "SELECT count(*) FROM activities").await == 0 },
    )
    .await;
    let snapshot = second.store().instance("held").await.unwrap().unwrap();
    assert!(snapshot
        .pending
        .iter()
        .any(|e| e.event_type == EventType::ActivityCompleted));
    second.shutdown(Duration::from_secs(5)).await;
}

// 7 -------------------------------------------------------------------------

#[actix_rt::test]
async fn a_handler_error_is_recorded_as_activity_failed_with_its_text() {
    let database = fresh_database().await.unwrap();
    let (sender, mut ran) = mpsc::unbounded_channel();
    let failing = ActivityWorker::new(["acts"], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.activity_id.clone());
            Err::<serde_json::Value, _>(format!("card declined for {}", task.activity_id))
        }
    });
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(failing)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    insert_by_plain_sql(database.url(), "charge", "flows", "acts", "charge").await;
    assert_eq!(
        receive_within(&mut ran, Duration::from_secs(5), "the failing handler").await,
        "charge"
    );
    support::eventually(
        Duration::from_secs(5),
        "the failure to be counted",
        || async { runtime.health().counters(TaskKind::Activity, "acts").failed == 1 },
    )
    .await;
    let counters = runtime.health().counters(TaskKind::Activity, "acts");
    assert_eq!(counters.failed, 1, "{counters:?}");
    assert_eq!(counters.completed, 0, "{counters:?}");
    assert_eq!(counters.panicked, 0, "{counters:?}");

    let snapshot = runtime.store().instance("charge").await.unwrap().unwrap();
    let failed: Vec<_> = snapshot
        .pending
        .iter()
        .filter(|e| e.event_type == EventType::ActivityFailed)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", snapshot.pending);
    assert_eq!(
        failed[0].attributes["error"],
        json!("card declined for charge")
    );
    assert!(!snapshot
        .pending
        .iter()
        .any(|e| e.event_type == EventType::ActivityCompleted));
    let client = support::connect(database.url()).await;
    assert_eq!(count(&client, "SELECT count(*) FROM activities").await, 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}

// 8 -------------------------------------------------------------------------

async fn connections_named(client: &tokio_postgres::Client, pattern: &str) -> Vec<String> {
    let mut names: Vec<String> = client
        .query(
            "SELECT application_name FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    names.sort();
    names
}

#[actix_rt::test]
async fn poll_only_mode_opens_no_listener_connection_and_notifications_open_two() {
    let database = fresh_database().await.unwrap();
    let client = support::connect(database.url()).await;

    let (activities, mut polled) = reporting_activities("acts");
    let mut config = RuntimeConfig::new(database.url());
    config.notifications = false;
    config.fallback_while_degraded = Duration::from_millis(200);
    let poll_only = Runtime::builder(config)
        .activity_worker(activities)
        .start()
        .await
        .unwrap();
    // Work is found, by polling: the runtime is up and connected.
    insert_by_plain_sql(database.url(), "polled", "flows", "acts", "polled").await;
    assert_eq!(
        receive_within(&mut polled, Duration::from_secs(5), "the polled activity").await,
        "polled"
    );
    assert!(
        !connections_named(&client, "pgwake-worker%")
            .await
            .is_empty(),
        "the workers' pool is visible in pg_stat_activity"
    );
    assert_eq!(
        connections_named(&client, "pgwake-listener:%").await,
        Vec::<String>::new()
    );
    assert_eq!(
        connections_named(&client, "pgwake-notifier%").await,
        Vec::<String>::new()
    );
    poll_only.shutdown(Duration::from_secs(5)).await;

    let (activities, _started) = reporting_activities("acts");
    let listening = Runtime::builder(notify_only(database.url()))
        .activity_worker(activities)
        .start()
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(10),
        "two listener connections",
        || async {
            connections_named(&client, "pgwake-listener:%").await
                == [
                    "pgwake-listener:activity_tasks",
                    "pgwake-listener:workflow_tasks",
                ]
        },
    )
    .await;
    wait_listening(&listening).await;
    listening.shutdown(Duration::from_secs(5)).await;
    support::eventually(
        Duration::from_secs(5),
        "listener connections to close",
        || async {
            connections_named(&client, "pgwake-listener:%")
                .await
                .is_empty()
        },
    )
    .await;
}
