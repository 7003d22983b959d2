//! The listeners' delivery self-check (issue #12, item 4): after every
//! `LISTEN` a listener sends a probe `NOTIFY` from a second connection and
//! counts as listening only once it comes back; where notifications are lost
//! (a transaction-mode PgBouncer in front of it) it says so, once, and its
//! workers poll as if it were down.
//!
//! The PgBouncer test needs the `pgbouncer` binary (scripts/test installs
//! it). On a machine without it that test is skipped with the reason
//! printed, except in CI (`CI` set), where a missing PgBouncer fails it.

mod support;

use support::{eventually, insert_by_plain_sql, receive_within, reporting_activities, NEVER};

use std::time::Duration;

use pgwake::testing::{fresh_database, PgBouncer, PoolMode};
use pgwake::{ListenerState, Runtime, RuntimeConfig, RuntimeHandle, TaskKind};

/// The text of the one warning a listener gives when its probe does not
/// come back.
const NOT_DELIVERED_WARNING: &str = "notifications are not delivered to this listener";

/// Every listener's state, by kind.
fn listener_states(runtime: &RuntimeHandle) -> Vec<(TaskKind, ListenerState)> {
    runtime
        .health()
        .listeners
        .into_iter()
        .map(|l| (l.kind, l.state))
        .collect()
}

/// Lines of `logs` that are the not-delivered warning for `channel`.
fn warnings_for(logs: &str, channel: &str) -> usize {
    logs.lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains(NOT_DELIVERED_WARNING)
                && l.contains(&format!("channel={channel}"))
        })
        .count()
}

/// Open connections of this database whose application_name is like `pattern`.
async fn connections_named(client: &tokio_postgres::Client, pattern: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE $1",
            &[&pattern],
        )
        .await
        .unwrap()
        .get(0)
}

#[actix_rt::test]
async fn listeners_reach_listening_through_the_probe_and_a_notified_task_runs() {
    let database = fresh_database().await.unwrap();
    let logs = support::CapturedLogs::default();
    let _guard = logs.install("pgwake=debug");
    // Neither fallback fires within the test: only the notification can
    // start the task inserted once the listeners listen.
    let (worker, mut started) = reporting_activities("q");
    let runtime = Runtime::builder(support::notify_only(database.url()))
        .activity_worker(worker)
        .start()
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "both listeners listening, and the first poll empty",
        || async {
            let health = runtime.health();
            health.listeners.len() == 2
                && health
                    .listeners
                    .iter()
                    .all(|l| l.state == ListenerState::Listening)
                && health.counters(TaskKind::Activity, "q").empty_polls >= 1
        },
    )
    .await;
    let text = logs.text();
    for channel in ["activity_tasks", "workflow_tasks"] {
        assert!(
            text.lines()
                .any(|l| l.contains("checking delivery")
                    && l.contains(&format!("channel={channel}"))),
            "{channel}: listening without a delivery check; logs:\n{text}"
        );
        assert_eq!(warnings_for(&text, channel), 0, "logs:\n{text}");
    }
    // The probe's own connection is closed once it has served.
    let sql = support::connect(database.url()).await;
    eventually(
        Duration::from_secs(10),
        "no probe connection left",
        || async { connections_named(&sql, "pgwake-probe:%").await == 0 },
    )
    .await;

    insert_by_plain_sql(database.url(), "notified", "flows", "q", "owner").await;
    let activity = receive_within(
        &mut started,
        Duration::from_secs(10),
        "the notified activity",
    )
    .await;
    assert_eq!(activity, "notified");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn the_probe_reaches_no_other_listener_of_the_task_channels() {
    let database = fresh_database().await.unwrap();
    let (_other, mut received) = support::listen(
        database.url(),
        &["activity_tasks", "workflow_tasks", "sentinel"],
    )
    .await;
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .start()
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "listening", || async {
        let states = listener_states(&runtime);
        states.len() == 2 && states.iter().all(|(_, s)| *s == ListenerState::Listening)
    })
    .await;
    let notifier = support::connect(database.url()).await;
    let before = support::drain_until_sentinel(&notifier, &mut received, "sentinel").await;
    runtime.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        before,
        Vec::new(),
        "another process's listener of the task channels received the probes"
    );
}

/// Issue #12, item 4: behind PgBouncer in transaction mode, `LISTEN`
/// succeeds on a server backend that goes back to the pool, and
/// notifications are lost. The listeners must say so (health and one
/// warning each), and workers must find work by the degraded polling.
#[actix_rt::test]
async fn a_listener_behind_a_transaction_pooler_is_not_delivering_warns_once_and_work_runs_by_polling(
) {
    let database = fresh_database().await.unwrap();
    let Some(bouncer) =
        support::start_or_skip(PgBouncer::builder(database.url()).pool_mode(PoolMode::Transaction))
    else {
        return;
    };
    let logs = support::CapturedLogs::default();
    let _guard = logs.install("pgwake=debug");
    let mut config = RuntimeConfig::new(database.url());
    // The mistake the check is for: the listeners behind the pooler.
    config.listener_url = Some(bouncer.url());
    // Were the listeners believed, idle workers would not poll again
    // within the test: work found proves the degraded interval.
    config.fallback_while_listening = NEVER;
    config.fallback_while_degraded = Duration::from_millis(200);
    config.listener_probe_timeout = Duration::from_millis(500);
    // Re-probes, and pings, every 500 ms: several failed probes in a row.
    config.listener_ping_after = Duration::from_millis(500);
    let (worker, mut started) = reporting_activities("q");
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .unwrap();

    eventually(
        Duration::from_secs(30),
        "both listeners reported not delivering",
        || async {
            let states = listener_states(&runtime);
            states.len() == 2
                && states
                    .iter()
                    .all(|(_, s)| *s == ListenerState::NotDelivering)
        },
    )
    .await;
    let health = runtime.health();
    assert!(!health.all_listening(), "{:?}", health.listeners);
    assert!(
        health
            .listeners
            .iter()
            .all(|l| l.not_listening_for.is_some()),
        "{:?}",
        health.listeners
    );

    // Work written directly to PostgreSQL still runs, by polling.
    insert_by_plain_sql(database.url(), "polled", "flows", "q", "owner").await;
    let activity =
        receive_within(&mut started, Duration::from_secs(20), "the polled activity").await;
    assert_eq!(activity, "polled");
    // And the workers keep polling: the degraded interval, not the 600 s one.
    let polls = runtime.health().counters(TaskKind::Activity, "q").polls;
    eventually(
        Duration::from_secs(20),
        "more polls while degraded",
        || async { runtime.health().counters(TaskKind::Activity, "q").polls >= polls + 3 },
    )
    .await;

    // The listeners keep probing and keep failing, and warn only once each.
    eventually(Duration::from_secs(30), "probes failing again", || async {
        logs.text()
            .lines()
            .filter(|l| {
                l.contains("delivery probe failed again") && l.contains("channel=activity_tasks")
            })
            .count()
            >= 2
    })
    .await;
    let states = listener_states(&runtime);
    let text = logs.text();
    runtime.shutdown(Duration::from_secs(5)).await;
    assert!(
        states
            .iter()
            .all(|(_, s)| *s == ListenerState::NotDelivering),
        "{states:?}"
    );
    for channel in ["activity_tasks", "workflow_tasks"] {
        assert_eq!(
            warnings_for(&text, channel),
            1,
            "{channel}: one warning expected; logs:\n{text}"
        );
    }
    assert!(
        text.contains("point listener_url at PostgreSQL itself"),
        "the warning names the fix; logs:\n{text}"
    );
}
