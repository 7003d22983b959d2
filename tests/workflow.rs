//! Workflows as async Rust (`pgwake::workflow`) end to end, against a real
//! PostgreSQL: activities, typed errors, timers, signals and select, side
//! effects, long replays, non-determinism, and failures that are recorded
//! instead of retried.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, ClientError, ReplayError, StartOptions,
    WorkflowContext, WorkflowError, Workflows,
};
use pgwake::{EventType, InstanceState, Runtime, RuntimeConfig, RuntimeHandle, TaskKind, WorkerId};

const WAIT: Duration = Duration::from_secs(30);

async fn start(url: &str, workflows: &Workflows, activities: &Activities) -> RuntimeHandle {
    Runtime::builder(RuntimeConfig::new(url))
        .workflow_worker(workflows.worker(["default"]))
        .activity_worker(activities.worker(["default"]).concurrency(4))
        .start()
        .await
        .unwrap()
}

fn letters() -> Activities {
    Activities::new()
        .register(
            "append",
            |_: ActivityContext, (so_far, letter): (String, String)| async move {
                Ok::<_, ActivityError>(so_far + &letter)
            },
        )
        .register("inc", |_: ActivityContext, n: u64| async move {
            Ok::<_, ActivityError>(n + 1)
        })
        .register("charge", |_: ActivityContext, cents: u64| async move {
            if cents > 1000 {
                Err(ActivityError::new("declined", "over the limit")
                    .non_retryable()
                    .with_details(serde_json::json!({ "limit": 1000 })))
            } else {
                Ok(format!("charged {cents}"))
            }
        })
}

async fn history_types(runtime: &RuntimeHandle, id: &str) -> Vec<EventType> {
    let snapshot = runtime.store().instance(id).await.unwrap().unwrap();
    snapshot.history.iter().map(|e| e.event_type).collect()
}

#[actix_rt::test]
async fn three_activities_in_sequence_return_their_combined_result() {
    let database = fresh_database().await.unwrap();
    let workflows =
        Workflows::new().register("abc", |ctx: WorkflowContext, start: String| async move {
            let a: String = ctx.activity("append", &(start, "a")).await?;
            let b: String = ctx.activity("append", &(a, "b")).await?;
            let c: String = ctx.activity("append", &(b, "c")).await?;
            Ok::<_, WorkflowError>(c)
        });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("abc", "abc-1", &">", StartOptions::default())
        .await
        .unwrap();
    let result: String = client.result("abc-1", WAIT).await.unwrap();
    assert_eq!(result, ">abc");
    let types = history_types(&runtime, "abc-1").await;
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == EventType::ActivityCompleted)
            .count(),
        3
    );
    assert_eq!(types.last(), Some(&EventType::WorkflowExecutionFinished));
    let about = client.describe("abc-1").await.unwrap().unwrap();
    assert_eq!(about.workflow.as_deref(), Some("abc"));
    assert_eq!(about.state, InstanceState::Finished);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn an_activity_error_reaches_the_workflow_with_its_kind() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new()
        .register("handles", |ctx: WorkflowContext, cents: u64| async move {
            match ctx.activity::<String>("charge", &cents).await {
                Ok(receipt) => Ok(receipt),
                Err(err) if err.kind() == "declined" => {
                    Ok(format!("declined, limit {}", err.details()["limit"]))
                }
                Err(err) => Err(err.into()),
            }
        })
        .register(
            "propagates",
            |ctx: WorkflowContext, cents: u64| async move {
                let receipt: String = ctx.activity("charge", &cents).await?;
                Ok::<_, WorkflowError>(receipt)
            },
        );
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("handles", "handles-1", &5000u64, StartOptions::default())
        .await
        .unwrap();
    client
        .start(
            "propagates",
            "propagates-1",
            &5000u64,
            StartOptions::default(),
        )
        .await
        .unwrap();
    let handled: String = client.result("handles-1", WAIT).await.unwrap();
    assert_eq!(handled, "declined, limit 1000");
    match client.result::<String>("propagates-1", WAIT).await {
        Err(ClientError::Failed(err)) => {
            assert_eq!(err.kind(), "declined");
            assert_eq!(err.message(), "over the limit");
            assert!(!err.retryable());
            assert_eq!(err.details()["limit"], 1000);
        }
        other => panic!("expected the typed failure, got {other:?}"),
    }
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_sleep_fires_after_its_delay() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new().register("nap", |ctx: WorkflowContext, ms: u64| async move {
        let before = ctx.now();
        ctx.sleep(Duration::from_millis(ms)).await?;
        let slept = ctx.now().duration_since(before).unwrap_or_default();
        Ok::<_, WorkflowError>(slept.as_millis() as u64)
    });
    let runtime = start(database.url(), &workflows, &Activities::new()).await;
    let client = Client::new(runtime.store().clone());
    let started = Instant::now();
    client
        .start("nap", "nap-1", &500u64, StartOptions::default())
        .await
        .unwrap();
    let slept_by_history: u64 = client.result("nap-1", WAIT).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        slept_by_history >= 500,
        "ctx.now() advanced by {slept_by_history} ms only"
    );
    let types = history_types(&runtime, "nap-1").await;
    assert!(types.contains(&EventType::TimerScheduled));
    assert!(types.contains(&EventType::TimerFired));
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// The example: an activity, then the signal `confirmed` or a
/// timer, whichever comes first, then a second activity.
fn signup() -> Workflows {
    Workflows::new().register(
        "signup",
        |ctx: WorkflowContext, timeout_ms: u64| async move {
            let user: String = ctx.activity("append", &("user:", "ada")).await?;
            let mut confirmed = ctx.signal_channel::<String>("confirmed");
            let mut expiry = ctx.timer(Duration::from_millis(timeout_ms));
            let how = futures::select_biased! {
                by = confirmed.recv() => format!(" confirmed by {}", by?),
                _ = expiry => " timed out".to_string(),
            };
            expiry.cancel();
            let done: String = ctx.activity("append", &(user, how)).await?;
            Ok::<_, WorkflowError>(done)
        },
    )
}

#[actix_rt::test]
async fn signup_takes_the_signal_when_it_comes_first() {
    let database = fresh_database().await.unwrap();
    let runtime = start(database.url(), &signup(), &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start(
            "signup",
            "signup-signal",
            &60_000u64,
            StartOptions::default(),
        )
        .await
        .unwrap();
    // Sent once the timer runs, so that the signal wins and the timer is
    // canceled (sent earlier, the timer would never be started at all).
    support::eventually(WAIT, "the timer to start", || async {
        history_types(&runtime, "signup-signal")
            .await
            .contains(&EventType::TimerScheduled)
    })
    .await;
    client
        .signal("signup-signal", "confirmed", &"email")
        .await
        .unwrap();
    let result: String = client.result("signup-signal", WAIT).await.unwrap();
    assert_eq!(result, "user:ada confirmed by email");
    let types = history_types(&runtime, "signup-signal").await;
    assert!(types.contains(&EventType::TimerCanceled), "{types:?}");
    assert!(!types.contains(&EventType::TimerFired));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn signup_times_out_when_no_signal_comes() {
    let database = fresh_database().await.unwrap();
    let runtime = start(database.url(), &signup(), &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("signup", "signup-timeout", &300u64, StartOptions::default())
        .await
        .unwrap();
    let result: String = client.result("signup-timeout", WAIT).await.unwrap();
    assert_eq!(result, "user:ada timed out");
    let types = history_types(&runtime, "signup-timeout").await;
    assert!(types.contains(&EventType::TimerFired));
    assert!(!types.contains(&EventType::TimerCanceled));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_side_effect_runs_once_and_replays_with_the_same_value() {
    let database = fresh_database().await.unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let workflows = Workflows::new().register("effects", move |ctx: WorkflowContext, _: ()| {
        let runs = counted.clone();
        async move {
            let drawn: u64 = ctx
                .side_effect(move || {
                    runs.fetch_add(1, Ordering::SeqCst);
                    fastrand::u64(..)
                })
                .await?;
            let random = ctx.random_u64();
            // Two more tasks, each replaying the side effect.
            let _: u64 = ctx.activity("inc", &1u64).await?;
            let _: u64 = ctx.activity("inc", &2u64).await?;
            Ok::<_, WorkflowError>((drawn, random, ctx.random_u64()))
        }
    });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("effects", "effects-1", &(), StartOptions::default())
        .await
        .unwrap();
    let (drawn, random, next_random): (u64, u64, u64) =
        client.result("effects-1", WAIT).await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the side effect ran again on replay"
    );
    let snapshot = runtime
        .store()
        .instance("effects-1")
        .await
        .unwrap()
        .unwrap();
    let recorded: Vec<_> = snapshot
        .history
        .iter()
        .filter(|e| e.event_type == EventType::SideEffectResult)
        .collect();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].attributes, serde_json::json!(drawn));
    assert_ne!(random, next_random);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn fifty_sequential_activities_replay_to_the_right_result() {
    let database = fresh_database().await.unwrap();
    let workflows =
        Workflows::new().register("count", |ctx: WorkflowContext, to: u64| async move {
            let mut n = 0u64;
            for _ in 0..to {
                n = ctx.activity("inc", &n).await?;
            }
            Ok::<_, WorkflowError>(n)
        });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("count", "count-50", &50u64, StartOptions::default())
        .await
        .unwrap();
    let result: u64 = client
        .result("count-50", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(result, 50);
    let types = history_types(&runtime, "count-50").await;
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == EventType::ActivityScheduled)
            .count(),
        50
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn changed_code_is_detected_as_non_determinism_and_not_applied() {
    let database = fresh_database().await.unwrap();
    let original = Workflows::new().register("flip", |ctx: WorkflowContext, _: ()| async move {
        let _: u64 = ctx.activity("A", &1u64).await?;
        Ok::<_, WorkflowError>("done")
    });
    let changed = Workflows::new().register("flip", |ctx: WorkflowContext, _: ()| async move {
        let _: u64 = ctx.activity("B", &1u64).await?;
        Ok::<_, WorkflowError>("done")
    });
    // The original code schedules A; no activity worker runs it.
    let first = Runtime::builder(RuntimeConfig::new(database.url()))
        .workflow_worker(original.worker(["default"]))
        .start()
        .await
        .unwrap();
    let client = Client::new(first.store().clone());
    client
        .start("flip", "flip-1", &(), StartOptions::default())
        .await
        .unwrap();
    support::eventually(WAIT, "A to be scheduled", || async {
        history_types(&first, "flip-1")
            .await
            .contains(&EventType::ActivityScheduled)
    })
    .await;
    first.shutdown(Duration::from_secs(5)).await;

    // A completes; the next task replays with the changed code.
    let store = client_store(database.url()).await;
    let me = WorkerId::unique("test");
    let queues = pgwake::queues(["default"]).unwrap();
    let activity = store
        .claim_activity_tasks(&me, &queues, 1, Duration::from_secs(60))
        .await
        .unwrap()
        .pop()
        .expect("activity A");
    assert_eq!(activity.name, "A");
    store
        .complete_activity_task(&activity, Ok(serde_json::json!(2)))
        .await
        .unwrap();
    let task = store
        .claim_workflow_task(&me, &queues, Duration::from_secs(60))
        .await
        .unwrap()
        .expect("the workflow task");
    let before = task.history.len();
    match changed.execute(&task) {
        Err(err @ ReplayError::NonDeterminism { .. }) => assert_eq!(
            err.to_string(),
            "non-determinism: history has ActivityScheduled 'A' at #3, the code scheduled 'B'"
        ),
        other => panic!("expected non-determinism, got {other:?}"),
    }
    // The original code replays the same task fine.
    assert!(original.execute(&task).unwrap().outcome.is_some());
    store.release_workflow_task(&task).await.unwrap();

    // Run by a worker, the task fails and the instance does not advance.
    let second = Runtime::builder(RuntimeConfig::new(database.url()))
        .workflow_worker(changed.worker(["default"]))
        .start()
        .await
        .unwrap();
    support::eventually(WAIT, "the replay to fail", || async {
        second
            .health()
            .counters(TaskKind::Workflow, "default")
            .failed
            >= 1
    })
    .await;
    let snapshot = second.store().instance("flip-1").await.unwrap().unwrap();
    assert_eq!(snapshot.state, InstanceState::Active);
    assert_eq!(snapshot.history.len(), before);
    assert!(snapshot
        .pending
        .iter()
        .any(|e| e.event_type == EventType::ActivityCompleted));
    second.shutdown(Duration::from_secs(5)).await;
}

async fn client_store(url: &str) -> pgwake::Store {
    pgwake::Store::connect(url, pgwake::StoreOptions::default())
        .await
        .unwrap()
}

#[actix_rt::test]
async fn an_unregistered_workflow_or_activity_fails_visibly() {
    let database = fresh_database().await.unwrap();
    let workflows =
        Workflows::new().register("calls_missing", |ctx: WorkflowContext, _: ()| async move {
            let _: () = ctx.activity("missing", &()).await?;
            Ok::<_, WorkflowError>(())
        });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("nobody", "nobody-1", &(), StartOptions::default())
        .await
        .unwrap();
    client
        .start("calls_missing", "missing-1", &(), StartOptions::default())
        .await
        .unwrap();
    for (id, message) in [
        ("nobody-1", "no workflow named \"nobody\" is registered"),
        ("missing-1", "no activity named \"missing\" is registered"),
    ] {
        match client.result::<()>(id, WAIT).await {
            Err(ClientError::Failed(err)) => {
                assert_eq!(err.kind(), "unregistered");
                assert_eq!(err.message(), message);
            }
            other => panic!("{id}: expected a typed failure, got {other:?}"),
        }
    }
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_bad_input_fails_the_instance_visibly() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new()
        .register("wants_number", |_: WorkflowContext, n: u64| async move {
            Ok::<_, WorkflowError>(n)
        });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start(
            "wants_number",
            "bad-1",
            &"not a number",
            StartOptions::default(),
        )
        .await
        .unwrap();
    match client.result::<u64>("bad-1", WAIT).await {
        Err(ClientError::Failed(err)) => {
            assert_eq!(err.kind(), "bad_input");
            assert!(err.message().contains("wants_number"), "{}", err.message());
        }
        other => panic!("expected a typed failure, got {other:?}"),
    }
    let health = runtime.health().counters(TaskKind::Workflow, "default");
    assert_eq!(
        health.failed + health.panicked,
        0,
        "failed as a task, not as the instance"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_canceled_workflow_finishes_as_canceled() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new().register("waits", |ctx: WorkflowContext, _: ()| async move {
        let mut never = ctx.signal_channel::<()>("never");
        never.recv().await?;
        Ok::<_, WorkflowError>(())
    });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("waits", "waits-1", &(), StartOptions::default())
        .await
        .unwrap();
    client.cancel("waits-1").await.unwrap();
    match client.result::<()>("waits-1", WAIT).await {
        Err(ClientError::Canceled { instance_id }) => assert_eq!(instance_id, "waits-1"),
        other => panic!("expected canceled, got {other:?}"),
    }
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_claimed_task_carries_the_whole_history_in_order() {
    let database = fresh_database().await.unwrap();
    let store = client_store(database.url()).await;
    let me = WorkerId::unique("test");
    let queues = pgwake::queues(["default"]).unwrap();
    store
        .create_instance(pgwake::NewInstance::new("h-1", pgwake::Queue::default()))
        .await
        .unwrap();
    let first = store
        .claim_workflow_task(&me, &queues, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    assert!(first.history.is_empty());
    assert_eq!(first.last_sequence_id, 0);
    let decision = pgwake::WorkflowCompletion::default()
        .schedule_activity("a", serde_json::json!(1), None)
        .start_timer(Duration::from_secs(3600), serde_json::json!(null));
    store
        .complete_workflow_task(&first, decision)
        .await
        .unwrap();
    store
        .signal_instance("h-1", "go", serde_json::json!("now"))
        .await
        .unwrap();
    let second = store
        .claim_workflow_task(&me, &queues, Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
    let read = store.instance("h-1").await.unwrap().unwrap();
    assert_eq!(second.history, read.history);
    assert_eq!(
        second
            .history
            .iter()
            .map(|e| e.sequence_id)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!(
        second
            .history
            .iter()
            .map(|e| e.event_type)
            .collect::<Vec<_>>(),
        [
            EventType::WorkflowTaskStarted,
            EventType::WorkflowExecutionStarted,
            EventType::ActivityScheduled,
            EventType::TimerScheduled
        ]
    );
    assert_eq!(second.last_sequence_id, 4);
    assert_eq!(second.new_events.len(), 1);
    assert_eq!(second.new_events[0].event_type, EventType::SignalReceived);
}

#[actix_rt::test]
async fn a_failing_activity_is_retried_with_durable_timers_until_it_succeeds() {
    use pgwake::workflow::{ActivityOptions, RetryPolicy};
    let database = fresh_database().await.unwrap();
    let attempts_seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = attempts_seen.clone();
    let activities = Activities::new().register("flaky", move |ctx: ActivityContext, n: u64| {
        let seen = seen.clone();
        async move {
            seen.lock().unwrap().push(ctx.attempt());
            if ctx.attempt() < 3 {
                Err(ActivityError::new("unavailable", "try again"))
            } else {
                Ok::<_, ActivityError>(n * 2)
            }
        }
    });
    let workflows =
        Workflows::new().register("retrying", |ctx: WorkflowContext, n: u64| async move {
            let policy = RetryPolicy::default()
                .max_attempts(3)
                .first_interval(Duration::from_millis(100));
            let options = ActivityOptions::default().retry(policy);
            let doubled: u64 = ctx.activity_with("flaky", &n, options).await?;
            Ok::<_, WorkflowError>(doubled)
        });
    let runtime = start(database.url(), &workflows, &activities).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("retrying", "retry-1", &21u64, StartOptions::default())
        .await
        .unwrap();
    let result: u64 = client.result("retry-1", WAIT).await.unwrap();
    assert_eq!(result, 42);
    assert_eq!(*attempts_seen.lock().unwrap(), [1, 2, 3]);
    let types = history_types(&runtime, "retry-1").await;
    let count = |t: EventType| types.iter().filter(|e| **e == t).count();
    assert_eq!(count(EventType::ActivityScheduled), 3, "{types:?}");
    assert_eq!(count(EventType::ActivityFailed), 2, "{types:?}");
    assert_eq!(count(EventType::TimerFired), 2, "{types:?}");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_standalone_client_starts_and_awaits_a_workflow_run_by_another_runtime() {
    let database = fresh_database().await.unwrap();
    let workflows =
        Workflows::new().register("shout", |ctx: WorkflowContext, word: String| async move {
            let louder: String = ctx.activity("append", &(word, "!")).await?;
            Ok::<_, WorkflowError>(louder.to_uppercase())
        });
    let runtime = start(database.url(), &workflows, &letters()).await;
    // Its own pool: its writes wake the runtime through the triggers, and
    // it learns of the end by reading.
    let client = Client::connect(database.url()).await.unwrap();
    client
        .start("shout", "shout-1", &"hey", StartOptions::default())
        .await
        .unwrap();
    let result: String = client.result("shout-1", WAIT).await.unwrap();
    assert_eq!(result, "HEY!");
    assert!(matches!(
        Client::connect("postgres://nobody@127.0.0.1:1/none").await,
        Err(ClientError::Store(_))
    ));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn an_attempt_past_its_start_to_close_timeout_fails_as_timeout_and_is_retried() {
    let database = fresh_database().await.unwrap();
    let activities =
        Activities::new().register("slow_once", |ctx: ActivityContext, _: ()| async move {
            assert_eq!(
                ctx.start_to_close_timeout(),
                Some(Duration::from_millis(300))
            );
            if ctx.attempt() == 1 {
                // Far longer than the timeout: the worker stops waiting.
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            Ok::<_, ActivityError>(ctx.attempt())
        });
    let workflows = Workflows::new()
        .register("patient", |ctx: WorkflowContext, _: ()| async move {
            let options = pgwake::workflow::ActivityOptions::default()
                .start_to_close_timeout(Duration::from_millis(300))
                .retry(
                    pgwake::workflow::RetryPolicy::default()
                        .max_attempts(2)
                        .first_interval(Duration::from_millis(10)),
                );
            let attempt: u32 = ctx.activity_with("slow_once", &(), options).await?;
            Ok::<_, WorkflowError>(attempt)
        })
        .register("impatient", |ctx: WorkflowContext, _: ()| async move {
            let options = pgwake::workflow::ActivityOptions::default()
                .start_to_close_timeout(Duration::from_millis(300));
            match ctx.activity_with::<u32>("slow_once", &(), options).await {
                Err(err) => Ok::<_, WorkflowError>(format!("{}: {}", err.kind(), err.message())),
                Ok(attempt) => Ok(format!("finished on attempt {attempt}")),
            }
        });
    let runtime = start(database.url(), &workflows, &activities).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("patient", "patient-1", &(), StartOptions::default())
        .await
        .unwrap();
    client
        .start("impatient", "impatient-1", &(), StartOptions::default())
        .await
        .unwrap();
    assert_eq!(client.result::<u32>("patient-1", WAIT).await.unwrap(), 2);
    let failure: String = client.result("impatient-1", WAIT).await.unwrap();
    assert!(failure.starts_with("timeout: "), "{failure}");
    assert!(
        failure.contains("start-to-close timeout of 300ms"),
        "{failure}"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn describe_lists_the_activities_and_timers_a_workflow_waits_for() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new().register("waits", |ctx: WorkflowContext, _: ()| async move {
        // No worker serves "elsewhere": the activity stays pending.
        let options =
            pgwake::workflow::ActivityOptions::default().queue(pgwake::Queue::new("elsewhere")?);
        let reply = ctx.activity_with::<String>("far", &(), options);
        let reminder = ctx.timer(Duration::from_secs(3600));
        futures::pin_mut!(reply, reminder);
        futures::future::select(reply, reminder).await;
        Ok::<_, WorkflowError>(())
    });
    let runtime = start(database.url(), &workflows, &letters()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("waits", "waits-1", &(), StartOptions::default())
        .await
        .unwrap();
    let about = loop {
        let about = client.describe("waits-1").await.unwrap().unwrap();
        if !about.pending_activities.is_empty() {
            break about;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(about.pending_activities.len(), 1);
    let activity = &about.pending_activities[0];
    assert_eq!(
        (
            activity.name.as_str(),
            activity.attempt,
            activity.queue.as_str()
        ),
        ("far", 1, "elsewhere")
    );
    assert_eq!(about.pending_timers.len(), 1);
    let fires_at = about.pending_timers[0]
        .fires_at
        .expect("its firing is pending");
    let ahead = fires_at
        .duration_since(about.pending_timers[0].started_at)
        .unwrap();
    assert!(ahead >= Duration::from_secs(3590), "{ahead:?}");
    // Once it ended, nothing is pending.
    client.cancel("waits-1").await.unwrap();
    let _ = client.result::<()>("waits-1", WAIT).await;
    let about = client.describe("waits-1").await.unwrap().unwrap();
    assert!(about.pending_activities.is_empty() && about.pending_timers.is_empty());
    runtime.shutdown(Duration::from_secs(5)).await;
}
