//! Liveness under real faults, end to end against a real PostgreSQL: no
//! worker wedges on a silent connection or a held lock, no wake-up is lost
//! (to a full worker, a lost commit reply, a skipped trailing NOTIFY, a lock
//! that ends unannounced, a shutdown), and bad decisions fail visibly.
//!
//! Each test would fail on the runtime before these fixes; deadlines are
//! generous, and each fallback is [`support::NEVER`] where the test proves a
//! wake-up, so that only the mechanism under test can make it pass.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwake::testing::{fresh_database, FaultProxy};
use pgwake::{
    ActivityTask, ActivityWorker, InstanceRef, InstanceState, NewInstance, Queue, Runtime,
    RuntimeConfig, RuntimeHandle, WorkflowCompletion, WorkflowTask, WorkflowWorker,
};
use serde_json::json;
use support::{connect, eventually, notify_only, receive_within, reporting_activities};
use tokio::sync::mpsc;

async fn wait_listening(runtime: &RuntimeHandle) {
    eventually(Duration::from_secs(10), "listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
}

/// A proxy in front of `url`'s server.
async fn proxy_for(database: &pgwake::testing::TestDatabase) -> FaultProxy {
    let port = database.config().postgres_config().get_ports()[0];
    FaultProxy::start(([127, 0, 0, 1], port).into())
        .await
        .unwrap()
}

/// Short deadlines, so that faults end within a test's patience. The
/// server-side idle timeout bounds how long a transaction cut off by a
/// silent connection keeps its row locks on the server.
fn short_deadlines(config: &mut RuntimeConfig) {
    config.store.operation_timeout = Duration::from_secs(2);
    config.store.statement_timeout = Duration::from_secs(1);
    config.store.lock_timeout = Duration::from_millis(500);
    config.store.idle_in_transaction_timeout = Duration::from_secs(2);
}

/// An instance `id` on `queue` created through a plain store, and its ref.
async fn instance(url: &str, id: &str, queue: &str) -> InstanceRef {
    let store = pgwake::Store::connect(url, Default::default())
        .await
        .unwrap();
    store
        .create_instance(NewInstance::new(id, Queue::new(queue).unwrap()))
        .await
        .unwrap()
}

/// Activities by plain SQL (the triggers announce them), owned by `owner`.
async fn insert_activities(url: &str, queue: &str, owner: &InstanceRef, ids: &[String]) {
    let client = connect(url).await;
    client
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             SELECT id, $2, $3, 11, $1, now() FROM unnest($4::text[]) AS id",
            &[&queue, &owner.instance_id, &owner.execution_id, &ids],
        )
        .await
        .unwrap();
}

async fn count(url: &str, sql: &str) -> i64 {
    connect(url).await.query_one(sql, &[]).await.unwrap().get(0)
}

#[actix_rt::test]
async fn silent_pooled_connections_never_wedge_workers() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    let mut config = notify_only(&proxy.proxied_url(database.url()));
    config.listener_url = Some(database.url().to_string());
    short_deadlines(&mut config);
    let (sender, mut handled) = mpsc::unbounded_channel();
    // A claim whose reply the partition swallows leaves its tasks leased
    // until their lease runs out: keep that short.
    let worker = ActivityWorker::new(["silent"], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.activity_id);
            Ok::<_, String>(json!("done"))
        }
    })
    .concurrency(4)
    .lease(Duration::from_secs(5));
    let runtime = Runtime::builder(config)
        .activity_worker(worker.clone())
        .activity_worker(worker.clone())
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;

    // Every worker has pooled connections open through the proxy.
    let warm: Vec<String> = (0..30).map(|i| format!("warm-{i}")).collect();
    insert_activities(database.url(), "silent", &owner, &warm).await;
    for _ in &warm {
        receive_within(&mut handled, Duration::from_secs(10), "a warm-up activity").await;
    }

    // A partition: every open connection through the proxy goes silent for
    // good, new ones get through. Only a client-side deadline notices.
    proxy.silence_open_connections();
    let after: Vec<String> = (0..60).map(|i| format!("after-{i}")).collect();
    insert_activities(database.url(), "silent", &owner, &after).await;
    for _ in &after {
        receive_within(
            &mut handled,
            Duration::from_secs(30),
            "an activity written after the partition",
        )
        .await;
    }
    eventually(Duration::from_secs(30), "every result recorded", || async {
        count(database.url(), "SELECT count(*) FROM activities").await == 0
    })
    .await;
    assert!(
        runtime.health().stuck_workers().next().is_none(),
        "{:?}",
        runtime.health().workers
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_locked_activity_row_holds_up_only_its_own_result() {
    let database = fresh_database().await.unwrap();
    let mut config = notify_only(database.url());
    short_deadlines(&mut config);
    // The handler of "of-locked" waits for the gate, so that its row can be
    // locked from outside between its claim and its result.
    let (sender, mut handled) = mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let worker = {
        let gate = gate.clone();
        ActivityWorker::new(["locked"], move |task: ActivityTask| {
            let (sender, gate) = (sender.clone(), gate.clone());
            async move {
                let _ = sender.send(task.activity_id.clone());
                if task.activity_id == "of-locked" {
                    gate.acquire().await.expect("the gate stays open").forget();
                }
                Ok::<_, String>(json!("done"))
            }
        })
    };
    let runtime = Runtime::builder(config)
        .activity_worker(worker.clone().concurrency(8))
        .activity_worker(worker.concurrency(8))
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;

    let locked = instance(database.url(), "locked-owner", "flows").await;
    let mut free = Vec::new();
    for i in 0..10 {
        free.push(instance(database.url(), &format!("free-{i}"), "flows").await);
    }
    insert_activities(
        database.url(),
        "locked",
        &locked,
        &["of-locked".to_string()],
    )
    .await;
    assert_eq!(
        receive_within(&mut handled, Duration::from_secs(10), "of-locked").await,
        "of-locked"
    );
    // An outside session holds the running activity's row, as an orphaned
    // session idle in a transaction would; then its handler returns.
    let mut holder = connect(database.url()).await;
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM activities WHERE activity_id = 'of-locked' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    gate.add_permits(1);

    for (i, owner) in free.iter().enumerate() {
        insert_activities(database.url(), "locked", owner, &[format!("of-free-{i}")]).await;
    }
    for _ in &free {
        receive_within(&mut handled, Duration::from_secs(10), "an activity").await;
    }
    // Every other instance's result is recorded while the lock is held.
    eventually(Duration::from_secs(15), "the free instances' results", || async {
        count(
            database.url(),
            "SELECT count(*) FROM pending_events WHERE event_type = 12 AND instance_id LIKE 'free-%'",
        )
        .await
            == 10
    })
    .await;
    assert_eq!(
        count(
            database.url(),
            "SELECT count(*) FROM activities WHERE activity_id = 'of-locked'"
        )
        .await,
        1,
        "the locked activity's result waits, neither recorded nor dropped"
    );
    hold.rollback().await.unwrap();
    eventually(Duration::from_secs(15), "the locked activity's result", || async {
        count(
            database.url(),
            "SELECT count(*) FROM pending_events WHERE event_type = 12 AND instance_id = 'locked-owner'",
        )
        .await
            == 1
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_wake_up_offered_to_a_worker_that_filled_its_slots_goes_to_an_idle_one() {
    // Per queue, two workers of concurrency 1. A task due in a moment fills
    // one of them from its own timer (no wake-up involved), so a router that
    // tracked "busy" only by its own wake-ups would still think it idle and,
    // half the time, hand it the next notification, which it could not take.
    let database = fresh_database().await.unwrap();
    const QUEUES: usize = 8;
    let (started, mut started_rx) = mpsc::unbounded_channel::<String>();
    let release = Arc::new(tokio::sync::Notify::new());
    let mut builder = Runtime::builder(notify_only(database.url()));
    for q in 0..QUEUES {
        let (started, release) = (started.clone(), release.clone());
        let worker = ActivityWorker::new([format!("full-{q}")], move |task: ActivityTask| {
            let (started, release) = (started.clone(), release.clone());
            async move {
                let _ = started.send(task.activity_id.clone());
                if task.activity_id.starts_with("blocker") {
                    release.notified().await;
                }
                Ok::<_, String>(json!("done"))
            }
        });
        builder = builder
            .activity_worker(worker.clone())
            .activity_worker(worker);
    }
    let runtime = builder.start().await.unwrap();
    wait_listening(&runtime).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;

    let client = connect(database.url()).await;
    for q in 0..QUEUES {
        client
            .execute(
                "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, visible_at)
                 VALUES ($1, $2, $3, 11, $4, now(), now() + interval '1 second')",
                &[&format!("blocker-{q}"), &owner.instance_id, &owner.execution_id, &format!("full-{q}")],
            )
            .await
            .unwrap();
    }
    // Rows due later are not announced by the triggers: wake one worker
    // per queue, which learns the due time and claims the blocker then,
    // from its own timer.
    for q in 0..QUEUES {
        client
            .execute(
                "SELECT pg_notify('activity_tasks', $1)",
                &[&format!("full-{q}")],
            )
            .await
            .unwrap();
    }
    for _ in 0..QUEUES {
        receive_within(&mut started_rx, Duration::from_secs(10), "a blocker").await;
    }
    for q in 0..QUEUES {
        insert_activities(
            database.url(),
            &format!("full-{q}"),
            &owner,
            &[format!("next-{q}")],
        )
        .await;
    }
    for _ in 0..QUEUES {
        let next = receive_within(
            &mut started_rx,
            Duration::from_secs(10),
            "the task announced while one worker of its queue was full",
        )
        .await;
        assert!(next.starts_with("next-"), "{next}");
    }
    release.notify_waiters();
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_commit_whose_reply_is_lost_still_wakes_the_workers() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    // The commit of instance 'slow' takes 1.5 s on the server; the reply is
    // cut meanwhile, after which the commit completes anyway.
    connect(database.url())
        .await
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.instance_id = 'slow' THEN PERFORM pg_sleep(1.5); END IF; RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON instances
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        )
        .await
        .unwrap();
    let mut config = notify_only(&proxy.proxied_url(database.url()));
    config.listener_url = Some(database.url().to_string());
    config.store.operation_timeout = Duration::from_secs(6);
    config.store.statement_timeout = Duration::from_secs(3);
    let (workflows, mut started) = support::reporting_workflows("lost-reply");
    let runtime = Runtime::builder(config)
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;

    let store = runtime.store().clone();
    let write = actix_rt::spawn(async move {
        store
            .create_instance(NewInstance::new("slow", Queue::new("lost-reply").unwrap()))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.drop_connections();
    assert!(
        write.await.unwrap().is_err(),
        "the reply was cut: the writer cannot know it committed"
    );
    assert_eq!(
        receive_within(
            &mut started,
            Duration::from_secs(15),
            "the committed workflow"
        )
        .await,
        "slow"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn the_trailing_notify_is_sent_even_when_another_writers_notify_arrives_after_our_commit() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    // The writer: no workers; its listener is behind a proxy that will
    // delay what it hears until after its second commit.
    let mut writer_config = RuntimeConfig::new(database.url());
    writer_config.listener_url = Some(proxy.proxied_url(database.url()));
    writer_config.notify_debounce = Duration::from_millis(800);
    let writer = Runtime::builder(writer_config).start().await.unwrap();
    wait_listening(&writer).await;
    // Another process's worker, woken only by notifications.
    let (worker, mut handled) = reporting_activities("trailing");
    let other = Runtime::builder(notify_only(database.url()))
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&other).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;
    let queue = Queue::new("trailing").unwrap();
    let other_is_idle = || async {
        let health = other.health();
        let worker = &health.workers[0];
        worker.slots_used == 0 && worker.claiming_for.is_none()
    };

    writer
        .store()
        .enqueue_activity(&owner, &queue, "first", json!(1))
        .await
        .unwrap();
    receive_within(&mut handled, Duration::from_secs(5), "the first activity").await;
    eventually(
        Duration::from_secs(5),
        "the other worker to be idle",
        other_is_idle,
    )
    .await;
    assert_eq!(writer.notifications_sent(), 1, "the leading NOTIFY");

    // A third writer's NOTIFY for the queue, sent before our second commit
    // (it wakes the other worker, which finds nothing), reaches our own
    // listener only after that commit: "received after our commit" is not
    // "sent after our commit".
    proxy.set_blackhole(true);
    let polls_before = other
        .health()
        .counters(pgwake::TaskKind::Activity, "trailing")
        .polls;
    connect(database.url())
        .await
        .batch_execute("NOTIFY activity_tasks, 'trailing'")
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the other worker's claim",
        || async {
            other
                .health()
                .counters(pgwake::TaskKind::Activity, "trailing")
                .polls
                > polls_before
        },
    )
    .await;
    eventually(
        Duration::from_secs(5),
        "the other worker to be idle",
        other_is_idle,
    )
    .await;
    // Within the debounce window: only the trailing NOTIFY can announce it.
    writer
        .store()
        .enqueue_activity(&owner, &queue, "second", json!(2))
        .await
        .unwrap();
    proxy.set_blackhole(false);
    receive_within(&mut handled, Duration::from_secs(10), "the second activity").await;
    eventually(
        Duration::from_secs(5),
        "a leading and a trailing NOTIFY",
        || async { writer.notifications_sent() == 2 },
    )
    .await;
    writer.shutdown(Duration::from_secs(5)).await;
    other.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_row_skipped_while_locked_is_claimed_when_the_lock_ends() {
    let database = fresh_database().await.unwrap();
    let (worker, mut handled) = reporting_activities("skipped");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;
    let client = connect(database.url()).await;
    // Written unannounced (as pgwake's own deferred writes are), then held
    // by another session, then announced: the claim the NOTIFY causes skips
    // it, and nothing announces the end of the lock.
    client
        .batch_execute("SET pgwake.defer_notify = on")
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ('held', $1, $2, 11, 'skipped', now())",
            &[&owner.instance_id, &owner.execution_id],
        )
        .await
        .unwrap();
    let mut holder = connect(database.url()).await;
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM activities WHERE activity_id = 'held' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    client
        .batch_execute("NOTIFY activity_tasks, 'skipped'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(handled.try_recv().is_err(), "claimed while locked");
    hold.commit().await.unwrap();
    assert_eq!(
        receive_within(
            &mut handled,
            Duration::from_secs(10),
            "the once-locked activity"
        )
        .await,
        "held"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_decision_the_store_refuses_fails_the_instance_visibly_once() {
    let database = fresh_database().await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let counted = attempts.clone();
    let worker = WorkflowWorker::new(["refused"], move |_: WorkflowTask| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            // A timer no timestamp can hold.
            Ok::<_, String>(WorkflowCompletion::default().start_timer(Duration::MAX, json!(null)))
        }
    });
    let runtime = Runtime::builder(notify_only(database.url()))
        .workflow_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    runtime
        .store()
        .create_instance(NewInstance::new(
            "refused-1",
            Queue::new("refused").unwrap(),
        ))
        .await
        .unwrap();
    let store = runtime.store().clone();
    eventually(Duration::from_secs(10), "the instance to fail", || async {
        store
            .instance("refused-1")
            .await
            .unwrap()
            .is_some_and(|i| i.state == InstanceState::Finished)
    })
    .await;
    let snapshot = store.instance("refused-1").await.unwrap().unwrap();
    let finished = snapshot.history.last().unwrap();
    let error = finished.attributes["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("could not be recorded") && error.contains("timer"),
        "{error}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        1,
        "refused once, not retried"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn shutdown_sends_the_trailing_notify_it_still_owes() {
    let database = fresh_database().await.unwrap();
    let mut config = RuntimeConfig::new(database.url());
    config.notify_debounce = Duration::from_secs(30);
    let writer = Runtime::builder(config).start().await.unwrap();
    wait_listening(&writer).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;
    let queue = Queue::new("owed").unwrap();
    writer
        .store()
        .enqueue_activity(&owner, &queue, "first", json!(null))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the leading NOTIFY", || async {
        writer.notifications_sent() == 1
    })
    .await;
    // Within the 30 s window: owed to its trailing edge.
    writer
        .store()
        .enqueue_activity(&owner, &queue, "second", json!(null))
        .await
        .unwrap();
    let report = writer.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    assert_eq!(
        writer.notifications_sent(),
        2,
        "the trailing NOTIFY was flushed"
    );
    // Writes after shutdown are announced by the triggers.
    let (_listener, mut received) = support::listen(database.url(), &["activity_tasks"]).await;
    writer
        .store()
        .enqueue_activity(&owner, &queue, "after", json!(null))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("a write after shutdown was not announced")
        .unwrap();
    assert_eq!(heard.payload, "owed");
}

#[actix_rt::test]
async fn a_slow_lease_extension_does_not_pause_the_handler() {
    let database = fresh_database().await.unwrap();
    let (done, mut done_rx) = mpsc::unbounded_channel::<Instant>();
    let (started, mut started_rx) = mpsc::unbounded_channel::<()>();
    // Lease 1.5 s: an extension every 0.5 s, which the held row lock makes
    // wait (up to the lock timeout); the handler needs 1 s of its own.
    let worker = ActivityWorker::new(["heartbeat"], move |_: ActivityTask| {
        let (done, started) = (done.clone(), started.clone());
        async move {
            let _ = started.send(());
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = done.send(Instant::now());
            Ok::<_, String>(json!("done"))
        }
    })
    .lease(Duration::from_millis(1500));
    let mut config = notify_only(database.url());
    config.store.lock_timeout = Duration::from_secs(8);
    config.store.statement_timeout = Duration::from_secs(9);
    config.store.operation_timeout = Duration::from_secs(10);
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;
    insert_activities(database.url(), "heartbeat", &owner, &["slow-extend".into()]).await;
    receive_within(&mut started_rx, Duration::from_secs(5), "the handler").await;
    let mut holder = connect(database.url()).await;
    let hold = holder.transaction().await.unwrap();
    hold.execute(
        "SELECT 1 FROM activities WHERE activity_id = 'slow-extend' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let locked_at = Instant::now();
    let finished = receive_within(&mut done_rx, Duration::from_secs(15), "the handler's end").await;
    assert!(
        finished.duration_since(locked_at) < Duration::from_secs(5),
        "the handler was paused while its lease extension waited: it ended {:?} after the lock",
        finished.duration_since(locked_at)
    );
    hold.rollback().await.unwrap();
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_blocking_handler_runs_off_the_arbiter_and_other_work_goes_on() {
    let database = fresh_database().await.unwrap();
    let (spinning, mut spinning_rx) = mpsc::unbounded_channel::<()>();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_spin = stop.clone();
    let cpu = ActivityWorker::blocking(["cpu"], move |_: ActivityTask| {
        let _ = spinning.send(());
        // CPU-bound until told to stop (at most 20 s).
        let start = Instant::now();
        while !stop_spin.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(20) {
            std::hint::spin_loop();
        }
        Ok::<_, String>(json!("spun"))
    });
    let (io, mut io_done) = reporting_activities("io");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(cpu)
        .activity_worker(io)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;
    insert_activities(database.url(), "cpu", &owner, &["spin".into()]).await;
    receive_within(
        &mut spinning_rx,
        Duration::from_secs(5),
        "the CPU-bound handler",
    )
    .await;
    insert_activities(database.url(), "io", &owner, &["meanwhile".into()]).await;
    assert_eq!(
        receive_within(
            &mut io_done,
            Duration::from_secs(10),
            "the other queue's task"
        )
        .await,
        "meanwhile"
    );
    assert!(!stop.load(Ordering::SeqCst));
    stop.store(true, Ordering::SeqCst);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_listener_killed_after_each_listen_backs_off_instead_of_reconnecting_at_once() {
    let database = fresh_database().await.unwrap();
    let mut config = RuntimeConfig::new(database.url());
    config.reconnect_backoff_min = Duration::from_millis(100);
    config.reconnect_backoff_max = Duration::from_secs(30);
    let runtime = Runtime::builder(config).start().await.unwrap();
    wait_listening(&runtime).await;
    let killer = connect(database.url()).await;
    let watch_for = Duration::from_secs(4);
    let started = Instant::now();
    while started.elapsed() < watch_for {
        // Kill the listeners as soon as they are listening again.
        killer
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name LIKE 'pgwake-listener:%' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reconnects: u64 = runtime
        .health()
        .listeners
        .iter()
        .map(|l| l.reconnects)
        .max()
        .unwrap();
    // Backoff doubling from 100 ms fits about 5 reconnects into 4 s; one
    // that starts over at every LISTEN makes dozens.
    assert!(
        (1..=8).contains(&reconnects),
        "{reconnects} reconnects in {watch_for:?}"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn shutdown_returns_in_bounded_time_when_the_database_falls_silent() {
    let database = fresh_database().await.unwrap();
    let proxy = proxy_for(&database).await;
    let mut config = RuntimeConfig::new(proxy.proxied_url(database.url()));
    short_deadlines(&mut config);
    let (started, mut started_rx) = mpsc::unbounded_channel::<()>();
    let stuck = ActivityWorker::new(["stuck"], move |_: ActivityTask| {
        let started = started.clone();
        async move {
            let _ = started.send(());
            std::future::pending::<()>().await;
            Ok::<_, String>(json!("never"))
        }
    });
    let runtime = Runtime::builder(config)
        .activity_worker(stuck)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime).await;
    let owner = instance(database.url(), "owner", "elsewhere").await;
    runtime
        .store()
        .enqueue_activity(&owner, &Queue::new("stuck").unwrap(), "hang", json!(null))
        .await
        .unwrap();
    receive_within(&mut started_rx, Duration::from_secs(5), "the handler").await;

    // The database stops answering: releasing the lease and flushing the
    // notifier cannot succeed, and must not hold the shutdown.
    proxy.set_blackhole(true);
    let asked = Instant::now();
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        runtime.shutdown(Duration::from_millis(500)),
    )
    .await
    .expect("shutdown did not return within 30 s");
    assert!(!report.drained);
    assert_eq!(report.released_leases, 0, "nothing could be released");
    assert!(asked.elapsed() < Duration::from_secs(30));
    proxy.set_blackhole(false);
}
