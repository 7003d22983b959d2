//! What the operations guide (docs/operations.md) says, checked.

mod support;

use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig, TaskKind};
use serde_json::json;

#[actix_rt::test]
async fn a_multi_host_url_with_target_session_attrs_skips_an_unreachable_first_host() {
    let database = fresh_database().await.unwrap();
    let config = pgwake::ConnectionConfig::from_url(database.url()).unwrap();
    let port = config.postgres_config().get_ports()[0];
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The first host is down (as an old primary would be after a failover).
    let url = format!(
        "postgres://postgres@127.0.0.1:{dead},127.0.0.1:{port}/{}?target_session_attrs=read-write&connect_timeout=2",
        database.name()
    );
    let (sender, mut started) = tokio::sync::mpsc::unbounded_channel();
    let worker = ActivityWorker::new(["ops"], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.activity_id);
            Ok::<_, String>(json!(null))
        }
    });
    let mut runtime_config = RuntimeConfig::new(&url);
    runtime_config.fallback_while_listening = Duration::from_secs(600);
    let runtime = Runtime::builder(runtime_config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(10),
        "listeners on the second host",
        || async { runtime.health().all_listening() },
    )
    .await;
    let client = support::connect(database.url()).await;
    client
        .batch_execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ('via-second-host', 'i', 'e', 11, 'ops', now())",
        )
        .await
        .unwrap();
    let id = tokio::time::timeout(Duration::from_secs(2), started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, "via-second-host");
    assert!(
        runtime
            .health()
            .counters(TaskKind::Activity, "ops")
            .completed
            <= 1
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_runtime_opens_two_listener_connections_one_notifier_and_at_most_its_pool() {
    let database = fresh_database().await.unwrap();
    let mut config = RuntimeConfig::new(database.url());
    config.store.pool_size = 3;
    let worker = ActivityWorker::new(["ops"], |_: ActivityTask| async {
        Ok::<_, String>(json!(null))
    })
    .concurrency(8);
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    // Make the notifier connect: it does on the first write through the store.
    runtime
        .store()
        .enqueue_activity(
            &pgwake::InstanceRef {
                instance_id: "i".into(),
                execution_id: "e".into(),
            },
            &pgwake::Queue::new("ops").unwrap(),
            "x",
            json!(null),
        )
        .await
        .unwrap();
    let client = support::connect(database.url()).await;
    let count = |pattern: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE $1",
                    &[&pattern],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    support::eventually(
        Duration::from_secs(10),
        "the notifier and listeners to connect",
        || async { count("pgwake-listener:%").await == 2 && count("pgwake-notifier").await == 1 },
    )
    .await;
    assert!(
        count("pgwake-worker").await <= 3,
        "the pool never exceeds its size"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
