//! Every number the `pgwake` command takes has a range, refused at parse
//! time with the bound named (issue #10, item 10); and the demo workflow
//! fails an instance whose input is out of range instead of its worker.

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::{EventType, InstanceState, NewInstance, Queue, Store, StoreOptions};
use serde_json::json;

/// clap's exit code for a usage error.
const USAGE_ERROR: i32 = 2;

fn pgwake(args: &[&str], database_url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgwake"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "pgwake=info")
        .output()
        .expect("run pgwake")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A port nothing listens on: a command that gets past parsing fails to
/// connect, quickly.
fn closed_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("postgres://postgres@127.0.0.1:{port}/x?connect_timeout=2")
}

/// Asserts that `args` is refused as a usage error naming `argument` and
/// saying `message`, before anything connects.
#[track_caller]
fn assert_refused(args: &[&str], argument: &str, message: &str) {
    let output = pgwake(args, &closed_url());
    let text = text(&output);
    assert_eq!(output.status.code(), Some(USAGE_ERROR), "{args:?}: {text}");
    assert!(
        text.contains(&format!("for '{argument}")),
        "{args:?} names {argument}: {text}"
    );
    assert!(text.contains(message), "{args:?} says {message:?}: {text}");
    assert!(
        !text.contains("could not connect") && !text.contains("error connecting"),
        "{args:?} was refused before connecting: {text}"
    );
    assert!(!text.contains("panicked"), "{args:?}: {text}");
}

#[test]
fn a_shutdown_timeout_beyond_an_hour_is_refused_instead_of_overflowing() {
    assert_refused(
        &[
            "work",
            "--queue",
            "q",
            "--shutdown-timeout",
            "18446744073709551615",
        ],
        "--shutdown-timeout",
        "must be at most 3600 seconds (1 hour)",
    );
    // Even digits beyond u64 say the bound, not "number too large".
    assert_refused(
        &[
            "work",
            "--queue",
            "q",
            "--shutdown-timeout",
            "99999999999999999999999",
        ],
        "--shutdown-timeout",
        "must be at most 3600 seconds (1 hour)",
    );
}

#[test]
fn start_refuses_more_activities_than_the_demo_schedules_and_timers_beyond_ten_years() {
    assert_refused(
        &["start", "--queue", "q", "--activities", "300000000"],
        "--activities",
        "must be at most 10000 activities",
    );
    assert_refused(
        &["start", "--queue", "q", "--timer-ms", "315360000001"],
        "--timer-ms",
        "must be at most 315360000000 milliseconds (10 years)",
    );
    assert_refused(
        &["start", "--queue", "q", "--count", "0"],
        "--count",
        "must be at least 1",
    );
}

#[test]
fn every_other_number_is_refused_out_of_range_with_its_bound() {
    let cases: &[(&[&str], &str, &str)] = &[
        (
            &["work", "--queue", "q", "--concurrency", "0"],
            "--concurrency",
            "must be at least 1",
        ),
        (
            &["work", "--queue", "q", "--concurrency", "10001"],
            "--concurrency",
            "must be at most 10000 tasks at once",
        ),
        (
            &["work", "--queue", "q", "--activity-ms", "3600001"],
            "--activity-ms",
            "must be at most 3600000 milliseconds (1 hour)",
        ),
        (
            &["work", "--queue", "q", "--activity-lease", "0"],
            "--activity-lease",
            "must be at least 1",
        ),
        (
            &["work", "--queue", "q", "--workflow-lease", "86401"],
            "--workflow-lease",
            "must be at most 86400 seconds (24 hours)",
        ),
        (
            &["work", "--queue", "q", "--concurrency", "eight"],
            "--concurrency",
            "must be a whole number from 1 to 10000",
        ),
        (
            &["bench", "latency", "--samples", "0"],
            "--samples",
            "must be at least 1",
        ),
        (
            &["bench", "latency", "--warmup", "1000001"],
            "--warmup",
            "must be at most 1000000 activities",
        ),
        (
            &["bench", "latency", "--poll-samples", "10001"],
            "--poll-samples",
            "must be at most 10000 activities",
        ),
        (
            &["bench", "latency", "--rate", "NaN"],
            "--rate",
            "must be a number from 0.1 to 100000 activities per second",
        ),
        (
            &["bench", "latency", "--rate", "1e9"],
            "--rate",
            "must be at most 100000 activities per second",
        ),
        (
            &["bench", "latency", "--steady-samples", "0"],
            "--steady-samples",
            "must be at least 1",
        ),
        (
            &["bench", "throughput", "--tasks", "10000001"],
            "--tasks",
            "must be at most 10000000 activities",
        ),
        (
            &["bench", "throughput", "--workers", "1001"],
            "--workers",
            "must be at most 1000 workers",
        ),
        (
            &["bench", "throughput", "--batch", "10001"],
            "--batch",
            "must be at most 10000 activities at once",
        ),
        (
            &["bench", "throughput", "--producers", "257"],
            "--producers",
            "must be at most 256 connections",
        ),
        (
            &["bench", "throughput", "--mixed-seconds", "3601"],
            "--mixed-seconds",
            "must be at most 3600 seconds (1 hour)",
        ),
        (
            &["bench", "idle", "--workers", "10001"],
            "--workers",
            "must be at most 10000 workers",
        ),
        (
            &["bench", "idle", "--seconds", "0"],
            "--seconds",
            "must be at least 1",
        ),
        (
            &["bench", "idle", "--settle", "3601"],
            "--settle",
            "must be at most 3600 seconds (1 hour)",
        ),
        (
            &["bench", "notify-cost", "--producers", "1,4,0"],
            "--producers",
            "must be at least 1",
        ),
        (
            &["bench", "notify-cost", "--seconds", "inf"],
            "--seconds",
            "must be a number from 0.1 to 3600 seconds (1 hour)",
        ),
        (
            &["bench", "notify-cost", "--rounds", "0"],
            "--rounds",
            "must be at least 1",
        ),
        (
            &["bench", "recovery", "--repeats", "0"],
            "--repeats",
            "must be at least 1",
        ),
        (
            &["bench", "recovery", "--repeats", "1001"],
            "--repeats",
            "must be at most 1000 outages",
        ),
    ];
    for (args, argument, message) in cases {
        assert_refused(args, argument, message);
    }
}

#[test]
fn values_at_the_bounds_are_accepted() {
    // Past parsing, each fails to connect to the closed port: exit code 1.
    for args in [
        &[
            "work",
            "--queue",
            "q",
            "--shutdown-timeout",
            "3600",
            "--concurrency",
            "10000",
            "--activity-lease",
            "86400",
            "--activity-ms",
            "3600000",
        ][..],
        &[
            "start",
            "--queue",
            "q",
            "--activities",
            "10000",
            "--timer-ms",
            "315360000000",
        ],
        &["bench", "latency", "--rate", "0.1", "--warmup", "0"],
        &[
            "bench",
            "notify-cost",
            "--producers",
            "1,256",
            "--seconds",
            "0.1",
        ],
    ] {
        let output = pgwake(args, &closed_url());
        let text = text(&output);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {text}");
        assert!(!text.contains("invalid value"), "{args:?}: {text}");
        assert!(
            text.contains("could not connect") || text.contains("error connecting"),
            "{args:?} got as far as connecting: {text}"
        );
    }
}

#[actix_rt::test]
async fn the_demo_fails_an_instance_whose_input_is_out_of_range_and_keeps_working() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let queue = Queue::new("demo-bounds").unwrap();
    let mut worker = support::WorkProcess::start(
        env!("CARGO_BIN_EXE_pgwake"),
        &["work", "--queue", queue.as_str()],
        &[("DATABASE_URL", database.url())],
    );
    let bad = [
        (
            "huge",
            json!({ "activities": 300_000_000u64, "timer_ms": 0 }),
        ),
        ("negative", json!({ "activities": -1 })),
        ("words", json!({ "activities": "many" })),
        ("forever", json!({ "activities": 1, "timer_ms": u64::MAX })),
    ];
    for (id, input) in &bad {
        store
            .create_instance(NewInstance::new(*id, queue.clone()).with_input(input.clone()))
            .await
            .unwrap();
    }
    // A good one after them: the worker still runs them.
    store
        .create_instance(
            NewInstance::new("good", queue.clone())
                .with_input(json!({ "activities": 2, "timer_ms": 0 })),
        )
        .await
        .unwrap();

    let finished = |id: &'static str| {
        let store = store.clone();
        async move {
            let snapshot = store.instance(id).await.unwrap().unwrap();
            (snapshot.state == InstanceState::Finished).then(|| {
                snapshot
                    .history
                    .iter()
                    .rev()
                    .find(|e| e.event_type == EventType::WorkflowExecutionFinished)
                    .map(|e| e.attributes.clone())
                    .expect("a finished instance has its finish event")
            })
        }
    };
    for id in ["huge", "negative", "words", "forever", "good"] {
        support::eventually(Duration::from_secs(20), id, || async {
            finished(id).await.is_some()
        })
        .await;
    }
    for (id, field, max) in [
        ("huge", "activities", "10000"),
        ("negative", "activities", "10000"),
        ("words", "activities", "10000"),
        ("forever", "timer_ms", "315360000000"),
    ] {
        let attributes = finished(id).await.unwrap();
        let error = attributes["error"].as_str().unwrap_or_else(|| {
            panic!(
                "{id} failed, with an error: {attributes} (worker log: {})",
                worker.log()
            )
        });
        assert!(
            error.contains(&format!("fanout input {field} = "))
                && error.contains(&format!("from 0 to {max}")),
            "{id}: {error}"
        );
        let history = store.instance(id).await.unwrap().unwrap().history;
        assert!(
            history
                .iter()
                .all(|e| e.event_type != EventType::ActivityScheduled),
            "{id} scheduled nothing"
        );
    }
    assert_eq!(
        finished("good").await.unwrap()["result"],
        json!({ "completed": 2 })
    );
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker is still running: {}",
        worker.log()
    );
}
