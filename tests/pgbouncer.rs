//! pgwake behind a real PgBouncer in transaction mode, where clients share
//! server backends, and so backend pids.
//!
//! These tests need the `pgbouncer` binary (scripts/test installs it). On a
//! machine without it they are skipped with the reason printed, except in
//! CI (`CI` set), where a missing PgBouncer fails them.
//!
//! The metrics recorder is global; only one test here runs a runtime.
//! Workflows run to the end behind PgBouncer in tests/pgbouncer_workflows.rs,
//! a binary without a recorder.
#![cfg(feature = "metrics")]

mod support;

use support::{eventually, insert_by_plain_sql, reporting_activities};

use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pgwake::testing::{fresh_database, PgBouncer, PgBouncerError, PoolMode};
use pgwake::{NewInstance, Queue, Runtime, RuntimeConfig, TaskKind};

/// The one recorder of this test binary, installed on first use.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder is installed in this binary");
        snapshotter
    })
}

/// Received notifications on the activity channel dropped, by reason.
fn activity_notifications_dropped() -> Vec<(String, u64)> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let (_, key) = key.into_parts();
            let labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            let on_activities = labels
                .iter()
                .any(|(k, v)| k == "channel" && v == "activity_tasks");
            let reason = labels.iter().find(|(k, _)| k == "reason")?.1.clone();
            match value {
                DebugValue::Counter(n)
                    if key.name() == pgwake::metrics::NOTIFICATIONS_DROPPED && on_activities =>
                {
                    Some((reason, n))
                }
                _ => None,
            }
        })
        .collect()
}

#[actix_rt::test]
async fn clients_of_a_one_backend_pool_share_its_backend_pid() {
    let database = fresh_database().await.unwrap();
    let Some(bouncer) = support::start_or_skip(
        PgBouncer::builder(database.url())
            .pool_mode(PoolMode::Transaction)
            .default_pool_size(1),
    ) else {
        return;
    };
    assert_eq!(bouncer.pool_mode(), PoolMode::Transaction);
    let first = support::connect(&bouncer.url()).await;
    let second = support::connect(&bouncer.url_for(database.name())).await;
    let direct = support::connect(database.url()).await;
    // Simple queries: nothing prepared, which transaction mode would not carry.
    let answer = |messages: Vec<tokio_postgres::SimpleQueryMessage>| {
        messages
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0).unwrap().to_string(),
                    row.get(1).unwrap().to_string(),
                )),
                _ => None,
            })
            .expect("one row")
    };
    let sql = "SELECT current_database(), pg_backend_pid()";
    let (db_first, pid_first) = answer(first.simple_query(sql).await.unwrap());
    let (db_second, pid_second) = answer(second.simple_query(sql).await.unwrap());
    let (_, pid_direct) = answer(direct.simple_query(sql).await.unwrap());
    assert_eq!(db_first, database.name());
    assert_eq!(db_second, database.name());
    assert_eq!(
        pid_first, pid_second,
        "one server backend serves both clients"
    );
    assert_ne!(
        pid_first, pid_direct,
        "a direct connection has its own backend"
    );
}

/// Issue #10, item 5: behind PgBouncer in transaction mode the notifier's
/// backend also runs other clients' transactions, so a notification sent
/// by another writer's trigger carries the notifier's backend pid. It must
/// still wake the worker.
#[actix_rt::test]
async fn a_foreign_write_on_the_notifiers_shared_backend_wakes_the_worker() {
    let database = fresh_database().await.unwrap();
    let Some(bouncer) = support::start_or_skip(
        PgBouncer::builder(database.url())
            .pool_mode(PoolMode::Transaction)
            // The notifier, the pool and the foreign writer: one backend.
            .default_pool_size(1),
    ) else {
        return;
    };
    snapshotter();
    let mut config = RuntimeConfig::new(bouncer.url());
    // LISTEN needs a session: the listeners go to PostgreSQL itself.
    config.listener_url = Some(database.url().to_string());
    // Only a notification can wake the idle worker within the test.
    config.fallback_while_listening = Duration::from_secs(3600);
    let (worker, mut started) = reporting_activities("q");
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "listening, and the first poll empty",
        || async {
            runtime.health().all_listening()
                && runtime
                    .health()
                    .counters(TaskKind::Activity, "q")
                    .empty_polls
                    >= 1
        },
    )
    .await;

    // The notifier connects (through PgBouncer) at the first write through
    // the runtime's store, and sends one NOTIFY for it.
    runtime
        .store()
        .create_instance(NewInstance::new(
            "notifier-warm-up",
            Queue::new("elsewhere").unwrap(),
        ))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the notifier's first NOTIFY",
        || async { runtime.notifications_sent() >= 1 },
    )
    .await;

    // A writer outside the runtime, through PgBouncer: its insert trigger
    // NOTIFYs from the one server backend.
    insert_by_plain_sql(&bouncer.url(), "foreign", "flows", "q", "activity-owner").await;
    let woke = tokio::time::timeout(Duration::from_secs(10), started.recv()).await;
    let dropped = activity_notifications_dropped();
    let counters = runtime.health().counters(TaskKind::Activity, "q");
    runtime.shutdown(Duration::from_secs(5)).await;
    match woke {
        Ok(Some(activity)) => assert_eq!(activity, "foreign"),
        _ => panic!(
            "the foreign writer's activity did not start within 10 s; activity \
             notifications dropped, by reason: {dropped:?}; worker counters: {counters:?}"
        ),
    }
}

/// A setting the machine's PgBouncer does not know (1.18 refuses
/// `max_prepared_statements`, for one) fails the start with PgBouncer's own
/// complaint, not with an error about the files of a retry.
#[actix_rt::test]
async fn an_unknown_setting_fails_the_start_with_pgbouncers_log_naming_it() {
    let database = fresh_database().await.unwrap();
    let builder = PgBouncer::builder(database.url()).setting("pgwake_no_such_setting", "1");
    match builder.start() {
        Err(PgBouncerError::StartFailed { log_tail, .. }) => {
            assert!(
                log_tail.contains("pgwake_no_such_setting"),
                "the log names the setting: {log_tail}"
            );
        }
        Err(err @ PgBouncerError::NotFound { .. }) if !support::in_ci() => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: {err}");
        }
        Err(err) => panic!("expected StartFailed, got: {err}"),
        Ok(bouncer) => panic!("PgBouncer started with an unknown setting: {bouncer:?}"),
    }
}
