//! The listener under faults: a killed backend, a restarted server, a
//! half-open socket. Each test has its own server (or its own database when
//! it only kills its own backends), and fallbacks of ten minutes, so only
//! the listener's reconnect-and-resync can find the work in time.

mod support;

use support::{notify_only, receive_within, reporting_activities};

use std::time::{Duration, Instant};

use pgwake::testing::{fresh_database, FaultProxy, TestPostgres};
use pgwake::{ListenerState, Runtime, RuntimeHandle, TaskKind};

async fn insert_activity(url: &str, id: &str, queue: &str) {
    let client = support::connect(url).await;
    client
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ($1, 'i', 'e', 11, $2, now())",
            &[&id, &queue],
        )
        .await
        .unwrap();
}

fn activity_listener(runtime: &RuntimeHandle) -> pgwake::runtime::ListenerHealth {
    runtime
        .health()
        .listeners
        .into_iter()
        .find(|l| l.kind == TaskKind::Activity)
        .expect("an activity listener")
}

async fn wait_listening(runtime: &RuntimeHandle, reconnects: u64, within: Duration) {
    support::eventually(
        within,
        &format!("the activity listener to listen after {reconnects} reconnects"),
        || async {
            let listener = activity_listener(runtime);
            listener.state == ListenerState::Listening && listener.reconnects >= reconnects
        },
    )
    .await;
}

#[actix_rt::test]
async fn activity_inserted_while_listener_down_is_claimed_after_reconnect() {
    let database = fresh_database().await.unwrap();
    let (worker, mut started) = reporting_activities("acts");
    let mut config = notify_only(database.url());
    // Long enough that the insert below surely lands while it is down.
    config.reconnect_backoff_min = Duration::from_secs(1);
    config.reconnect_backoff_max = Duration::from_secs(1);
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime, 0, Duration::from_secs(10)).await;

    let admin = support::connect(database.url()).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE application_name = 'pgwake-listener:activity_tasks' AND datname = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "exactly one activity listener connection");
    support::eventually(Duration::from_secs(5), "the loss to be noticed", || async {
        activity_listener(&runtime).state != ListenerState::Listening
    })
    .await;
    insert_activity(database.url(), "while-down", "acts").await;

    wait_listening(&runtime, 1, Duration::from_secs(10)).await;
    let reconnected_at = Instant::now();
    assert_eq!(
        receive_within(&mut started, Duration::from_secs(2), "the task").await,
        "while-down"
    );
    assert!(reconnected_at.elapsed() < Duration::from_secs(2));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn after_a_server_restart_listeners_reconnect_and_workers_recover() {
    let mut server = TestPostgres::new().unwrap();
    let database = server.create_database().await.unwrap();
    let (worker, mut started) = reporting_activities("acts");
    let runtime = Runtime::builder(notify_only(database.url()))
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime, 0, Duration::from_secs(10)).await;
    insert_activity(database.url(), "before", "acts").await;
    assert_eq!(
        receive_within(&mut started, Duration::from_secs(2), "the task").await,
        "before"
    );

    // Restart off the actors' thread: they must keep running meanwhile.
    let server = tokio::task::spawn_blocking(move || {
        server.restart().unwrap();
        server
    })
    .await
    .unwrap();

    wait_listening(&runtime, 1, Duration::from_secs(30)).await;
    insert_activity(database.url(), "after", "acts").await;
    assert_eq!(
        receive_within(&mut started, Duration::from_secs(5), "the task").await,
        "after"
    );
    // The pool recovered too: the result was recorded.
    let client = support::connect(database.url()).await;
    support::eventually(
        Duration::from_secs(5),
        "the activity to be completed",
        || async {
            let left: i64 = client
                .query_one("SELECT count(*) FROM activities", &[])
                .await
                .unwrap()
                .get(0);
            left == 0
        },
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
    drop(server);
}

#[actix_rt::test]
async fn a_blackholed_listener_is_detected_by_its_ping_and_reconnects() {
    let server = TestPostgres::new().unwrap();
    let database = server.create_database().await.unwrap();
    let upstream = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let (worker, mut started) = reporting_activities("acts");
    let mut config = notify_only(database.url());
    // Only the listeners go through the proxy; the pool talks to the server.
    config.listener_url = Some(format!(
        "{}?connect_timeout=2",
        proxy.proxied_url(database.url())
    ));
    config.listener_ping_after = Duration::from_millis(500);
    config.listener_ping_timeout = Duration::from_millis(500);
    config.reconnect_backoff_min = Duration::from_millis(100);
    config.reconnect_backoff_max = Duration::from_millis(400);
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    wait_listening(&runtime, 0, Duration::from_secs(10)).await;

    proxy.set_blackhole(true);
    let blackholed_at = Instant::now();
    support::eventually(
        Duration::from_secs(5),
        "the ping to find the half-open socket",
        || async { activity_listener(&runtime).state != ListenerState::Listening },
    )
    .await;
    let detected_after = blackholed_at.elapsed();
    // Idle ping after 0.5 s (checked every 0.25 s), answered within 0.5 s.
    assert!(
        detected_after < Duration::from_millis(2500),
        "detected after {detected_after:?}"
    );

    proxy.set_blackhole(false);
    let lifted_at = Instant::now();
    wait_listening(&runtime, 1, Duration::from_secs(10)).await;
    let reconnected_after = lifted_at.elapsed();
    // At most one backoff (0.4 s) plus a connect attempt begun while still
    // blackholed (up to its 2 s timeout).
    assert!(
        reconnected_after < Duration::from_secs(4),
        "reconnected after {reconnected_after:?}"
    );

    insert_activity(database.url(), "after-blackhole", "acts").await;
    assert_eq!(
        receive_within(&mut started, Duration::from_secs(2), "the task").await,
        "after-blackhole"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn an_unreachable_server_at_start_is_retried_with_backoff_not_fatal() {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://app:hunter2@127.0.0.1:{closed_port}/x?connect_timeout=1");
    let (worker, _started) = reporting_activities("acts");
    let mut config = notify_only(&url);
    config.reconnect_backoff_min = Duration::from_millis(50);
    config.reconnect_backoff_max = Duration::from_millis(200);
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    support::eventually(Duration::from_secs(5), "the listener to back off repeatedly", || async {
        matches!(activity_listener(&runtime).state, ListenerState::Backoff { attempt, .. } if attempt >= 3)
    })
    .await;
    let ListenerState::Backoff { retry_in, .. } = activity_listener(&runtime).state else {
        unreachable!()
    };
    assert!(
        retry_in <= Duration::from_millis(200),
        "the backoff is capped: {retry_in:?}"
    );
    // Workers keep retrying too, without spinning: their polls are paced.
    let polls = runtime.health().counters(TaskKind::Activity, "acts").polls;
    assert!(polls < 50, "workers spin: {polls} polls");
    runtime.shutdown(Duration::from_secs(5)).await;
}
