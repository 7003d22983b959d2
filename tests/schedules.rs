//! Schedules against a real PostgreSQL: fired by the maintainer exactly
//! once per fire time (across a maintainer killed with -9), the overlap
//! policy, pause and resume, and the `pgwake schedule` command.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use pgwake::runtime::MaintainerConfig;
use pgwake::schedule::{OverlapPolicy, Schedule, ScheduleFiring, ScheduleSpec, Schedules};
use pgwake::testing::fresh_database;
use pgwake::{Queue, Runtime, RuntimeConfig, RuntimeHandle, Store, StoreOptions};
use support::{connect, eventually, WorkProcess};

const BINARY: &str = env!("CARGO_BIN_EXE_pgwake");

/// A fast election and tick, so that the tests take seconds.
fn quick_election() -> MaintainerConfig {
    let mut config = MaintainerConfig::default();
    config.retry_interval = Duration::from_millis(300);
    config.operation_timeout = Duration::from_secs(2);
    config
}

fn quick_firing() -> ScheduleFiring {
    let mut firing = ScheduleFiring::default();
    firing.tick = Duration::from_millis(200);
    firing
}

/// A runtime that fires schedules and runs no worker for their queue, so
/// that the instances it starts stay active.
async fn firing_runtime(url: &str) -> RuntimeHandle {
    let (idle, _) = support::reporting_activities("unused");
    Runtime::builder(RuntimeConfig::new(url))
        .maintainer(quick_election())
        .schedules(quick_firing())
        .activity_worker(idle)
        .start()
        .await
        .unwrap()
}

/// The instance rows of `schedule`'s firings: (instance id, executions).
async fn firings(sql: &tokio_postgres::Client, schedule: &str) -> BTreeMap<String, i64> {
    sql.query(
        "SELECT instance_id, count(*) FROM instances WHERE instance_id LIKE $1 GROUP BY 1",
        &[&format!("schedule:{schedule}:%")],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

fn fire_time(instance_id: &str) -> DateTime<Utc> {
    // `schedule:<name>:<RFC 3339>`; the names of these tests have no `:`.
    let at = instance_id.splitn(3, ':').nth(2).expect("a fire time");
    DateTime::parse_from_rfc3339(at)
        .unwrap()
        .with_timezone(&Utc)
}

async fn db_now(sql: &tokio_postgres::Client) -> DateTime<Utc> {
    DateTime::<Utc>::from(
        sql.query_one("SELECT now()", &[])
            .await
            .unwrap()
            .get::<_, SystemTime>(0),
    )
}

/// The process id in the `application_name` of the session holding the
/// maintainer lock (`pgwake-maintainer:<pid>`).
async fn maintainer_pid(sql: &tokio_postgres::Client) -> Option<u32> {
    let rows = sql
        .query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted
                AND l.classid = 1885828961 AND l.objid = 1801781249 AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap();
    rows.first()
        .and_then(|row| row.get::<_, String>(0).rsplit(':').next()?.parse().ok())
}

/// As `support::eventually`, printing the `pgwake work` logs on a timeout.
async fn within<F, Fut>(processes: &[WorkProcess], timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        if Instant::now() >= deadline {
            let logs: Vec<String> = processes.iter().map(WorkProcess::log).collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; logs:\n{}",
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cli(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BINARY)
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("PGWAKE_LISTENER_URL")
        .output()
        .unwrap()
}

#[actix_rt::test]
async fn three_processes_fire_each_second_exactly_once_across_a_maintainer_killed_with_sigkill() {
    let database = fresh_database().await.unwrap();
    let url = database.url();
    let sql = connect(url).await;
    let added = cli(
        url,
        &[
            "schedule",
            "add",
            "--name",
            "tick",
            "--every",
            "1s",
            "--workflow",
            "fanout",
            "--input",
            r#"{"activities": 0, "timer_ms": 0}"#,
            "--queue",
            "sched",
            "--overlap",
            "allow",
            "--catch-up",
            "last",
        ],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let work = [
        "work",
        "--queue",
        "sched",
        "--maintainer-retry-ms",
        "300",
        "--schedule-tick-ms",
        "200",
        // Short leases: the killed process may hold a firing's workflow
        // task, which another process may claim only once its lease ends.
        "--workflow-lease",
        "2",
        "--activity-lease",
        "2",
    ];
    let mut processes: Vec<WorkProcess> = (0..3)
        .map(|_| WorkProcess::start(BINARY, &work, &[("DATABASE_URL", url)]))
        .collect();
    let logs = |processes: &[WorkProcess]| {
        processes
            .iter()
            .map(WorkProcess::log)
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    within(
        &processes,
        Duration::from_secs(60),
        "the first firings",
        || async { firings(&sql, "tick").await.len() >= 8 },
    )
    .await;
    let first_pid = maintainer_pid(&sql).await.expect("a maintainer fires");
    let killed_at = db_now(&sql).await;
    let index = processes
        .iter()
        .position(|p| p.child.id() == first_pid)
        .unwrap_or_else(|| {
            panic!(
                "the maintainer {first_pid} is one of ours:\n{}",
                logs(&processes)
            )
        });
    // SIGKILL: no shutdown, its session ends when the kernel closes the socket.
    drop(processes.remove(index));
    within(
        &processes,
        Duration::from_secs(40),
        "another maintainer",
        || async { matches!(maintainer_pid(&sql).await, Some(pid) if pid != first_pid) },
    )
    .await;
    let taken_over_at = db_now(&sql).await;
    let before = firings(&sql, "tick").await.len();
    within(
        &processes,
        Duration::from_secs(40),
        "firings by the new maintainer",
        || async { firings(&sql, "tick").await.len() >= before + 10 },
    )
    .await;
    Schedules::new(Store::connect(url, StoreOptions::default()).await.unwrap())
        .pause("tick")
        .await
        .unwrap();
    // A firing under way when the pause committed still lands: read after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fired = firings(&sql, "tick").await;
    let twice: Vec<_> = fired.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "started twice: {twice:?}");
    let times: Vec<DateTime<Utc>> = fired.keys().map(|id| fire_time(id)).collect();
    let mut times = times;
    times.sort();
    // Catch-up `last`: a fire time is missing only when no maintainer ran
    // at that time and a later one was due when the next firing ran, so
    // only between the kill and the takeover; everywhere else, every
    // second has its instance.
    let mut missing = Vec::new();
    for pair in times.windows(2) {
        let mut at = pair[0] + chrono::Duration::seconds(1);
        while at < pair[1] {
            missing.push(at);
            at += chrono::Duration::seconds(1);
        }
    }
    for at in &missing {
        assert!(
            *at >= killed_at - chrono::Duration::seconds(1) && *at <= taken_over_at,
            "fire time {at} is missing outside the takeover ({killed_at} .. {taken_over_at}): \
             {times:?}\n{}",
            logs(&processes)
        );
    }
    assert!(times.len() >= 10, "{times:?}");
    // The workflow layer ran them: `pgwake work`'s fanout finishes each.
    within(
        &processes,
        Duration::from_secs(60),
        "every fired instance to finish",
        || async {
            sql.query_one(
            "SELECT count(*) FROM instances WHERE instance_id LIKE 'schedule:tick:%' AND state = 0",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 0
        },
    )
    .await;
    eprintln!(
        "{} fire times, {} missing during the takeover",
        times.len(),
        missing.len()
    );
}

#[actix_rt::test]
async fn overlap_skip_starts_nothing_while_the_previous_instance_is_active() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let runtime = firing_runtime(database.url()).await;
    let schedules = Schedules::new(runtime.store().clone());
    let every_second = ScheduleSpec::every(Duration::from_secs(1)).unwrap();
    let schedule = Schedule::new("busy", every_second, "nobody-runs-this")
        .unwrap()
        .queue(Queue::new("unserved").unwrap())
        .overlap(OverlapPolicy::Skip);
    assert!(schedules.upsert(&schedule).await.unwrap());
    eventually(Duration::from_secs(20), "the first firing", || async {
        !firings(&sql, "busy").await.is_empty()
    })
    .await;
    let first = firings(&sql, "busy").await;
    let first_fire = schedules.list().await.unwrap()[0].last_fire_at.unwrap();
    eventually(
        Duration::from_secs(20),
        "later fire times to pass",
        || async {
            let info = &schedules.list().await.unwrap()[0];
            info.last_fire_at.unwrap() >= first_fire + Duration::from_secs(3)
        },
    )
    .await;
    assert_eq!(firings(&sql, "busy").await, first, "skipped while active");
    let info = &schedules.list().await.unwrap()[0];
    assert_eq!(
        info.last_instance_id.as_deref(),
        first.keys().next().map(String::as_str)
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn overlap_cancel_cancels_the_previous_instance_and_starts_the_next() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let runtime = firing_runtime(database.url()).await;
    let schedules = Schedules::new(runtime.store().clone());
    let schedule = Schedule::new(
        "replace",
        ScheduleSpec::every(Duration::from_secs(1)).unwrap(),
        "nobody-runs-this",
    )
    .unwrap()
    .queue(Queue::new("unserved").unwrap())
    .overlap(OverlapPolicy::Cancel);
    schedules.upsert(&schedule).await.unwrap();
    eventually(Duration::from_secs(20), "two firings", || async {
        firings(&sql, "replace").await.len() >= 2
    })
    .await;
    let first = firings(&sql, "replace").await.into_keys().next().unwrap();
    // The cancel request (WorkflowExecutionCanceled, event type 5) waits
    // for the first instance's workflow task.
    let canceled: i64 = sql
        .query_one(
            "SELECT count(*) FROM pending_events WHERE instance_id = $1 AND event_type = 5",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert!(canceled >= 1, "{first} got its cancel request");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_paused_schedule_does_not_fire_until_resumed() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let runtime = firing_runtime(database.url()).await;
    let schedules = Schedules::new(runtime.store().clone());
    let schedule = Schedule::new(
        "pausable",
        ScheduleSpec::cron("* * * * * *", "Europe/Paris").unwrap(),
        "nobody-runs-this",
    )
    .unwrap()
    .queue(Queue::new("unserved").unwrap())
    .overlap(OverlapPolicy::Allow);
    schedules.upsert(&schedule).await.unwrap();
    eventually(Duration::from_secs(20), "a firing", || async {
        !firings(&sql, "pausable").await.is_empty()
    })
    .await;
    schedules.pause("pausable").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused = firings(&sql, "pausable").await;
    let waited = Instant::now();
    // Not a bare sleep-then-assert on a condition that could come true:
    // this proves an absence over 2.5 s, 12 ticks.
    while waited.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            firings(&sql, "pausable").await,
            paused,
            "fired while paused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(schedules.list().await.unwrap()[0].paused);
    schedules.resume("pausable").await.unwrap();
    let resumed_at = db_now(&sql).await;
    eventually(
        Duration::from_secs(20),
        "firings after the resume",
        || async { firings(&sql, "pausable").await.len() > paused.len() },
    )
    .await;
    // The paused time is not caught up: the new fire times are after the resume.
    let new: Vec<_> = firings(&sql, "pausable")
        .await
        .into_keys()
        .filter(|id| !paused.contains_key(id))
        .collect();
    for id in &new {
        assert!(
            fire_time(id) > resumed_at - chrono::Duration::seconds(1),
            "{id}"
        );
    }
    assert!(matches!(
        schedules.pause("no-such").await,
        Err(pgwake::schedule::ScheduleError::NotFound { .. })
    ));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn the_schedule_command_adds_lists_pauses_resumes_and_removes_with_clear_errors() {
    let database = fresh_database().await.unwrap();
    let url = database.url();
    let run = |args: &[&str]| {
        let out = cli(url, args);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let add = [
        "schedule",
        "add",
        "--name",
        "nightly",
        "--workflow",
        "fanout",
    ];
    let (ok, _, err) = run(&[&add[..], &["--cron", "0 3 * *"]].concat());
    assert!(!ok && err.contains("invalid cron expression"), "{err}");
    let (ok, _, err) = run(&[
        &add[..],
        &["--cron", "0 3 * * *", "--time-zone", "Mars/Base"],
    ]
    .concat());
    assert!(
        !ok && err.contains("unknown time zone \"Mars/Base\""),
        "{err}"
    );
    let (ok, _, err) = run(&[&add[..], &["--every", "1s", "--overlap", "sometimes"]].concat());
    assert!(!ok && err.contains("invalid overlap policy"), "{err}");
    let (ok, _, err) = run(&[&add[..], &["--every", "1s", "--input", "{nope"]].concat());
    assert!(!ok && err.contains("--input is not JSON"), "{err}");
    let (ok, out, err) = run(&[
        &add[..],
        &[
            "--cron",
            "0 3 * * *",
            "--time-zone",
            "Europe/Paris",
            "--input",
            r#"{"activities":1}"#,
        ],
    ]
    .concat());
    assert!(ok, "{err}");
    assert!(out.contains("added schedule nightly"), "{out}");
    let (ok, out, _) = run(&[&add[..], &["--every", "1h", "--catch-up", "skip"]].concat());
    assert!(ok && out.contains("replaced schedule nightly"), "{out}");
    let (ok, out, err) = run(&["schedule", "list"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("nightly\tevery 3600s")
            && out.contains("catch-up=skip")
            && out.contains("active"),
        "{out}"
    );
    let (ok, out, _) = run(&["schedule", "pause", "nightly"]);
    assert!(ok && out.contains("paused schedule nightly"), "{out}");
    let (_, out, _) = run(&["schedule", "list"]);
    assert!(out.contains("\tpaused\t"), "{out}");
    let (ok, _, _) = run(&["schedule", "resume", "nightly"]);
    assert!(ok);
    let (_, out, _) = run(&["schedule", "list"]);
    assert!(out.contains("\tactive\t"), "{out}");
    let (ok, out, _) = run(&["schedule", "remove", "nightly"]);
    assert!(ok && out.contains("removed schedule nightly"), "{out}");
    let (ok, _, err) = run(&["schedule", "remove", "nightly"]);
    assert!(
        !ok && err.contains("no schedule named \"nightly\""),
        "{err}"
    );
    let (_, out, _) = run(&["schedule", "list"]);
    assert!(out.contains("no schedules"), "{out}");
}

#[actix_rt::test]
async fn a_schedule_that_cannot_fire_is_paused_and_does_not_hold_up_the_others() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    // Written by hand: the API refuses this queue name, and no firing can
    // start an instance on it.
    sql.execute(
        "INSERT INTO schedules (name, interval_seconds, workflow, queue, next_fire_at)
         VALUES ('broken', 1, 'w', 'bad queue', now() - interval '1 hour')",
        &[],
    )
    .await
    .unwrap();
    let runtime = firing_runtime(database.url()).await;
    let schedules = Schedules::new(runtime.store().clone());
    let healthy = Schedule::new(
        "healthy",
        ScheduleSpec::every(Duration::from_secs(1)).unwrap(),
        "nobody-runs-this",
    )
    .unwrap()
    .queue(Queue::new("unserved").unwrap())
    .overlap(OverlapPolicy::Allow);
    schedules.upsert(&healthy).await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the healthy schedule to fire twice",
        || async { firings(&sql, "healthy").await.len() >= 2 },
    )
    .await;
    assert!(firings(&sql, "broken").await.is_empty());
    let all = schedules.list().await.unwrap();
    assert_eq!(
        (all[0].name.as_str(), all[0].paused),
        ("broken", true),
        "paused, not retried"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn after_downtime_catch_up_last_starts_the_latest_missed_fire_time_once_and_skip_none() {
    use chrono::Timelike;
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    // Hourly, half an hour away from now: the latest missed fire time is
    // about 30 minutes old, far beyond the skip policy's 5 s grace.
    let minute = (db_now(&sql).await.minute() + 30) % 60;
    let cron = format!("{minute} * * * *");
    for (name, catch_up) in [("late-last", "last"), ("late-skip", "skip")] {
        sql.execute(
            "INSERT INTO schedules (name, cron, workflow, queue, catch_up, next_fire_at)
             VALUES ($1, $2, 'w', 'unserved', $3, now() - interval '2 days')",
            &[&name, &cron, &catch_up],
        )
        .await
        .unwrap();
    }
    let runtime = firing_runtime(database.url()).await;
    let schedules = Schedules::new(runtime.store().clone());
    eventually(
        Duration::from_secs(20),
        "both schedules handled",
        || async {
            let now = SystemTime::now() - Duration::from_secs(60);
            schedules
                .list()
                .await
                .unwrap()
                .iter()
                .all(|s| s.next_fire_at > now)
        },
    )
    .await;
    let now = db_now(&sql).await;
    let last = firings(&sql, "late-last").await;
    assert_eq!(
        last.len(),
        1,
        "one instance for ~48 missed fire times: {last:?}"
    );
    let fired_for = fire_time(last.keys().next().unwrap());
    assert_eq!(fired_for.minute(), minute);
    assert!(
        now - fired_for < chrono::Duration::hours(1) && fired_for < now,
        "the latest missed one: {fired_for}"
    );
    assert!(firings(&sql, "late-skip").await.is_empty());
    for schedule in schedules.list().await.unwrap() {
        let next = DateTime::<Utc>::from(schedule.next_fire_at);
        assert!(
            next > now && next - now <= chrono::Duration::hours(1),
            "{schedule:?}"
        );
    }
    runtime.shutdown(Duration::from_secs(5)).await;
}
