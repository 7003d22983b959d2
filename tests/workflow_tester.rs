//! Workflows unit-tested with `WorkflowTester`, without a database: mocked
//! activities, signals at virtual times, a virtual clock, and the errors a
//! run reports (an activity's typed error, a missing mock, non-determinism).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwake::workflow::{
    ActivityError, ActivityOptions, ReplayError, RetryPolicy, TesterError, WorkflowContext,
    WorkflowError, WorkflowTester, Workflows,
};
use pgwake::EventType;

async fn three_steps(ctx: WorkflowContext, order: String) -> Result<String, WorkflowError> {
    let reserved: String = ctx.activity("reserve", &order).await?;
    let charged: u64 = ctx.activity("charge", &order).await?;
    let shipped: String = ctx.activity("ship", &(reserved.clone(), charged)).await?;
    Ok(format!("{reserved}/{charged}/{shipped}"))
}

async fn signup(ctx: WorkflowContext, email: String) -> Result<bool, WorkflowError> {
    let user: String = ctx.activity("create_user", &email).await?;
    let mut confirmed = ctx.signal_channel::<bool>("confirmed");
    let mut expiry = ctx.timer(Duration::from_secs(5));
    let confirmed = futures::select_biased! {
        yes = confirmed.recv() => yes?,
        _ = expiry => false,
    };
    expiry.cancel();
    let _: () = ctx.activity("send_welcome", &(user, confirmed)).await?;
    Ok(confirmed)
}

fn signup_tester() -> WorkflowTester {
    let workflows = Workflows::new().register("signup", signup);
    WorkflowTester::new(&workflows, "signup")
        .on_activity("create_user", |email: String| {
            Ok::<_, ActivityError>(format!("user:{email}"))
        })
        .on_activity("send_welcome", |_: (String, bool)| {
            Ok::<_, ActivityError>(())
        })
}

fn types(tester: &WorkflowTester) -> Vec<EventType> {
    tester.history().iter().map(|e| e.event_type).collect()
}

#[test]
fn three_mocked_activities_give_the_combined_result() {
    let workflows = Workflows::new().register("order", three_steps);
    let mut tester = WorkflowTester::new(&workflows, "order")
        .on_activity("reserve", |order: String| {
            Ok::<_, ActivityError>(format!("R-{order}"))
        })
        .on_activity("charge", |_: String| Ok::<_, ActivityError>(500_u64))
        .on_activity("ship", |(reserved, cents): (String, u64)| {
            Ok::<_, ActivityError>(format!("S-{reserved}-{cents}"))
        });
    let result: String = tester.run(&"o1").unwrap();
    assert_eq!(result, "R-o1/500/S-R-o1-500");
    assert_eq!(tester.tasks(), 4);
    assert_eq!(tester.elapsed(), Duration::ZERO);
    use EventType as T;
    assert_eq!(
        types(&tester),
        [
            T::WorkflowTaskStarted,
            T::WorkflowExecutionStarted,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityCompleted,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityCompleted,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityCompleted,
            T::WorkflowExecutionFinished,
        ]
    );
    // Numbered as the store numbers them; each answer names its scheduling event.
    let history = tester.history();
    for (index, event) in history.iter().enumerate() {
        assert_eq!(event.sequence_id, index as i64 + 1);
    }
    for (answer, schedule) in [(4, 3), (7, 6), (10, 9)] {
        assert_eq!(history[answer].schedule_event_id, schedule);
    }
    assert_eq!(history[2].attributes["name"], "reserve");
    assert_eq!(history[11].attributes["result"], "R-o1/500/S-R-o1-500");
}

#[test]
fn signup_takes_the_signal_branch_when_confirmed_at_one_second() {
    let mut tester = signup_tester().signal_at(Duration::from_secs(1), "confirmed", &true);
    let confirmed: bool = tester.run(&"ada@example.com").unwrap();
    assert!(confirmed);
    assert_eq!(tester.elapsed(), Duration::from_secs(1));
    use EventType as T;
    assert_eq!(
        types(&tester),
        [
            T::WorkflowTaskStarted,
            T::WorkflowExecutionStarted,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityCompleted,
            T::TimerScheduled,
            T::WorkflowTaskStarted,
            T::SignalReceived,
            T::ActivityScheduled,
            T::TimerCanceled,
            T::WorkflowTaskStarted,
            T::ActivityCompleted,
            T::WorkflowExecutionFinished,
        ]
    );
    // The cancellation names the timer's TimerScheduled (#6).
    assert_eq!(tester.history()[9].schedule_event_id, 6);
}

#[test]
fn signup_takes_the_timer_branch_without_a_signal() {
    let mut tester = signup_tester();
    let confirmed: bool = tester.run(&"ada@example.com").unwrap();
    assert!(!confirmed);
    assert_eq!(tester.elapsed(), Duration::from_secs(5));
    let fired = tester
        .history()
        .iter()
        .find(|e| e.event_type == EventType::TimerFired)
        .unwrap();
    assert_eq!(fired.schedule_event_id, 6);
    assert!(!types(&tester).contains(&EventType::TimerCanceled));
}

#[test]
fn signup_takes_the_timer_branch_when_the_signal_comes_after_it() {
    let mut tester = signup_tester().signal_at(Duration::from_secs(6), "confirmed", &true);
    let confirmed: bool = tester.run(&"ada@example.com").unwrap();
    assert!(!confirmed);
    assert_eq!(tester.elapsed(), Duration::from_secs(5));
    assert!(!types(&tester).contains(&EventType::SignalReceived));
}

#[test]
fn a_signal_after_a_number_of_tasks_arrives_at_that_virtual_time() {
    // Delivered once the second task (the one that starts the timer) is
    // done, before the clock moves.
    let mut tester = signup_tester().signal_after_tasks(2, "confirmed", &true);
    let confirmed: bool = tester.run(&"ada@example.com").unwrap();
    assert!(confirmed);
    assert_eq!(tester.elapsed(), Duration::ZERO);
}

#[test]
fn a_declined_activity_error_reaches_the_workflows_match() {
    let workflows =
        Workflows::new().register("checkout", |ctx: WorkflowContext, cents: u64| async move {
            match ctx.activity::<String>("charge", &cents).await {
                Ok(receipt) => Ok(receipt),
                Err(err) if err.kind() == "declined" => Ok(format!("declined: {}", err.message())),
                Err(err) => Err(err.into()),
            }
        });
    let mut tester = WorkflowTester::new(&workflows, "checkout").on_activity(
        "charge",
        |_: u64| -> Result<String, ActivityError> {
            Err(ActivityError::new("declined", "card declined").non_retryable())
        },
    );
    let outcome: String = tester.run(&500_u64).unwrap();
    assert_eq!(outcome, "declined: card declined");
    assert_eq!(tester.history()[4].event_type, EventType::ActivityFailed);
}

#[test]
fn a_workflow_error_is_returned_with_its_kind() {
    let workflows = Workflows::new().register("order", three_steps);
    let mut tester = WorkflowTester::new(&workflows, "order")
        .on_activity("reserve", |_: String| {
            Err::<String, _>(ActivityError::new("out_of_stock", "none left"))
        });
    let err = tester.run::<String>(&"o1").unwrap_err();
    assert!(
        matches!(&err, TesterError::Failed(e) if e.kind() == "out_of_stock" && e.message() == "none left"),
        "{err}"
    );
}

#[test]
fn an_activity_without_a_mock_fails_the_run_naming_it() {
    let workflows = Workflows::new().register("order", three_steps);
    let mut tester = WorkflowTester::new(&workflows, "order")
        .on_activity("reserve", |_: String| {
            Ok::<_, ActivityError>("R".to_string())
        });
    let err = tester.run::<String>(&"o1").unwrap_err();
    assert!(
        matches!(&err, TesterError::UnmockedActivity { name } if name == "charge"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the workflow scheduled activity \"charge\", which has no mock: \
         register one with WorkflowTester::on_activity"
    );
}

#[test]
fn a_non_deterministic_workflow_is_reported_as_such() {
    // The code schedules 'charge' live, and 'refund' when replayed.
    let runs = Arc::new(AtomicUsize::new(0));
    let workflows = Workflows::new().register("fickle", move |ctx: WorkflowContext, _: ()| {
        let run = runs.fetch_add(1, Ordering::SeqCst);
        async move {
            let name = if run == 0 { "charge" } else { "refund" };
            let _: () = ctx.activity(name, &()).await?;
            Ok::<_, WorkflowError>(())
        }
    });
    let mut tester = WorkflowTester::new(&workflows, "fickle")
        .on_activity("charge", |_: ()| Ok::<_, ActivityError>(()))
        .on_activity("refund", |_: ()| Ok::<_, ActivityError>(()));
    let err = tester.run::<()>(&()).unwrap_err();
    assert!(
        matches!(
            &err,
            TesterError::Replay(ReplayError::NonDeterminism { .. })
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "non-determinism: history has ActivityScheduled 'charge' at #3, the code scheduled 'refund'"
    );
}

#[test]
fn a_workflow_waiting_for_a_signal_that_never_comes_is_stuck() {
    let workflows = Workflows::new().register("wait", |ctx: WorkflowContext, _: ()| async move {
        let go: bool = ctx.signal_channel("go").recv().await?;
        Ok::<_, WorkflowError>(go)
    });
    let mut tester = WorkflowTester::new(&workflows, "wait").signal_after_tasks(5, "go", &true);
    let err = tester.run::<bool>(&()).unwrap_err();
    assert!(matches!(&err, TesterError::Stuck { tasks: 1, .. }), "{err}");
    assert!(
        err.to_string().contains("undelivered signals: \"go\""),
        "{err}"
    );
}

#[test]
fn days_of_timers_take_no_real_time() {
    let workflows =
        Workflows::new().register("reminders", |ctx: WorkflowContext, days: u64| async move {
            let started = ctx.now();
            for _ in 0..days {
                ctx.sleep(Duration::from_secs(24 * 3600)).await?;
            }
            Ok::<_, WorkflowError>(ctx.now().duration_since(started).unwrap().as_secs())
        });
    let mut tester = WorkflowTester::new(&workflows, "reminders");
    let waited: u64 = tester.run(&30_u64).unwrap();
    assert_eq!(waited, 30 * 24 * 3600);
}

#[test]
fn a_workflow_that_never_ends_hits_the_task_limit() {
    let workflows =
        Workflows::new().register("forever", |ctx: WorkflowContext, _: ()| async move {
            loop {
                ctx.sleep(Duration::from_secs(60)).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), WorkflowError>(())
        });
    let mut tester = WorkflowTester::new(&workflows, "forever").max_tasks(20);
    let err = tester.run::<()>(&()).unwrap_err();
    assert!(matches!(err, TesterError::TaskLimit(20)), "{err}");
    assert_eq!(tester.tasks(), 20);
    // The first task starts the first timer; each later one fires one.
    assert_eq!(tester.elapsed(), Duration::from_secs(19 * 60));
}

/// Charges with up to 3 attempts, 1 s then 2 s apart; `declined` is final.
async fn charge_with_retries(ctx: WorkflowContext, cents: u64) -> Result<String, WorkflowError> {
    let retry = RetryPolicy::default()
        .max_attempts(3)
        .first_interval(Duration::from_secs(1))
        .backoff_coefficient(2.0)
        .max_interval(Duration::from_secs(60))
        .non_retryable(["declined"]);
    let options = ActivityOptions::default().retry(retry);
    match ctx.activity_with::<String>("charge", &cents, options).await {
        Ok(receipt) => Ok(receipt),
        Err(err) => Ok(format!("failed: {err}")),
    }
}

fn charge_tester(
    answer: impl Fn(u64, u32) -> Result<String, ActivityError> + 'static,
) -> (WorkflowTester, Arc<std::sync::Mutex<Vec<u32>>>) {
    let workflows = Workflows::new().register("charge", charge_with_retries);
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = attempts.clone();
    let tester = WorkflowTester::new(&workflows, "charge").on_activity_attempt(
        "charge",
        move |cents, attempt| {
            seen.lock().unwrap().push(attempt);
            answer(cents, attempt)
        },
    );
    (tester, attempts)
}

fn timer_delays_ms(tester: &WorkflowTester) -> Vec<u64> {
    tester
        .history()
        .iter()
        .filter(|e| e.event_type == EventType::TimerScheduled)
        .map(|e| e.attributes["delay_ms"].as_u64().unwrap())
        .collect()
}

#[test]
fn an_activity_failing_twice_then_succeeding_is_retried_with_backoff_timers() {
    let (mut tester, attempts) = charge_tester(|cents, attempt| {
        if attempt < 3 {
            Err(ActivityError::new("timeout", format!("attempt {attempt}")))
        } else {
            Ok(format!("receipt-{cents}"))
        }
    });
    let result: String = tester.run(&500_u64).unwrap();
    assert_eq!(result, "receipt-500");
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    use EventType as T;
    assert_eq!(
        types(&tester),
        [
            T::WorkflowTaskStarted,
            T::WorkflowExecutionStarted,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityFailed,
            T::TimerScheduled,
            T::WorkflowTaskStarted,
            T::TimerFired,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityFailed,
            T::TimerScheduled,
            T::WorkflowTaskStarted,
            T::TimerFired,
            T::ActivityScheduled,
            T::WorkflowTaskStarted,
            T::ActivityCompleted,
            T::WorkflowExecutionFinished,
        ]
    );
    assert_eq!(timer_delays_ms(&tester), [1_000, 2_000]);
    assert_eq!(tester.elapsed(), Duration::from_secs(1 + 2));
    // Every attempt runs the same activity on the same queue; the input of a
    // retry carries its attempt's number.
    let scheduled: Vec<_> = tester
        .history()
        .iter()
        .filter(|e| e.event_type == T::ActivityScheduled)
        .map(|e| e.attributes.clone())
        .collect();
    assert_eq!(scheduled[0]["input"], 500);
    for (attributes, attempt) in scheduled.iter().zip(1..) {
        assert_eq!(attributes["name"], "charge");
        assert_eq!(attributes["queue"], scheduled[0]["queue"]);
        if attempt > 1 {
            assert_eq!(attributes["input"]["input"], 500);
            assert_eq!(attributes["input"]["pgwake_attempt"], attempt);
        }
    }
}

#[test]
fn a_retried_activity_replays_from_its_full_history() {
    let (mut tester, _) = charge_tester(|_, attempt| {
        if attempt < 3 {
            Err(ActivityError::new("timeout", "slow"))
        } else {
            Ok("ok".into())
        }
    });
    let _: String = tester.run(&1_u64).unwrap();
    // The last task replayed the whole history (both timers, all three
    // attempts) before finishing: running it again gives the same history.
    let first = tester.history().to_vec();
    let _: String = tester.run(&1_u64).unwrap();
    assert_eq!(tester.history(), first.as_slice());
    assert_eq!(tester.tasks(), 6);
}

#[test]
fn a_non_retryable_kind_fails_at_once() {
    let (mut tester, attempts) =
        charge_tester(|_, _| Err(ActivityError::new("declined", "card declined")));
    let result: String = tester.run(&500_u64).unwrap();
    assert_eq!(result, "failed: declined: card declined");
    assert_eq!(*attempts.lock().unwrap(), [1]);
    assert!(timer_delays_ms(&tester).is_empty());
    assert_eq!(tester.elapsed(), Duration::ZERO);
}

#[test]
fn a_non_retryable_error_fails_at_once() {
    let (mut tester, attempts) =
        charge_tester(|_, _| Err(ActivityError::new("timeout", "slow").non_retryable()));
    let result: String = tester.run(&500_u64).unwrap();
    assert_eq!(result, "failed: timeout: slow");
    assert_eq!(*attempts.lock().unwrap(), [1]);
}

#[test]
fn exhausted_attempts_return_the_last_error_to_the_workflow() {
    let (mut tester, attempts) = charge_tester(|_, attempt| {
        Err(ActivityError::new("timeout", format!("attempt {attempt}")))
    });
    let result: String = tester.run(&500_u64).unwrap();
    assert_eq!(result, "failed: timeout: attempt 3");
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3]);
    assert_eq!(timer_delays_ms(&tester), [1_000, 2_000]);
    assert_eq!(tester.elapsed(), Duration::from_secs(3));
}

#[test]
fn without_a_retry_policy_a_failure_is_not_retried() {
    let workflows = Workflows::new().register("once", |ctx: WorkflowContext, _: ()| async move {
        let err = ctx.activity::<()>("flaky", &()).await.unwrap_err();
        Ok::<_, WorkflowError>(err.kind().to_string())
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let mut tester = WorkflowTester::new(&workflows, "once").on_activity("flaky", move |_: ()| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err::<(), _>(ActivityError::new("timeout", "slow"))
    });
    let kind: String = tester.run(&()).unwrap();
    assert_eq!(kind, "timeout");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn backoff_delays_are_capped_at_the_max_interval() {
    let workflows = Workflows::new().register("capped", |ctx: WorkflowContext, _: ()| async move {
        let retry = RetryPolicy::default()
            .max_attempts(5)
            .first_interval(Duration::from_secs(10))
            .backoff_coefficient(3.0)
            .max_interval(Duration::from_secs(60));
        let result = ctx
            .activity_with::<()>("flaky", &(), ActivityOptions::default().retry(retry))
            .await;
        Ok::<_, WorkflowError>(result.is_ok())
    });
    let mut tester = WorkflowTester::new(&workflows, "capped").on_activity("flaky", |_: ()| {
        Err::<(), _>(ActivityError::new("timeout", "slow"))
    });
    let succeeded: bool = tester.run(&()).unwrap();
    assert!(!succeeded);
    assert_eq!(timer_delays_ms(&tester), [10_000, 30_000, 60_000, 60_000]);
    assert_eq!(tester.elapsed(), Duration::from_secs(160));
}

#[test]
fn a_cancellation_at_a_virtual_time_lets_the_cleanup_run_then_ends_canceled() {
    let workflows =
        Workflows::new().register("hold", |ctx: WorkflowContext, seat: u32| async move {
            let _: () = ctx.activity("reserve", &seat).await?;
            if let Err(err) = ctx.sleep(Duration::from_secs(900)).await {
                let _: () = ctx.activity("release", &seat).await?;
                return Err(err);
            }
            Ok::<_, WorkflowError>(())
        });
    let released = Arc::new(AtomicUsize::new(0));
    let counted = released.clone();
    let mut tester = WorkflowTester::new(&workflows, "hold")
        .on_activity("reserve", |_: u32| Ok::<_, ActivityError>(()))
        .on_activity("release", move |_: u32| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ActivityError>(())
        })
        .cancel_at(Duration::from_secs(60));
    assert!(matches!(tester.run::<()>(&7), Err(TesterError::Canceled)));
    assert_eq!(released.load(Ordering::SeqCst), 1);
    assert_eq!(tester.elapsed(), Duration::from_secs(60));
    let types: Vec<EventType> = tester.history().iter().map(|e| e.event_type).collect();
    assert!(types.contains(&EventType::TimerCanceled), "{types:?}");
}

#[test]
fn sub_workflows_are_mocked_and_signals_to_others_recorded() {
    let workflows =
        Workflows::new().register("order", |ctx: WorkflowContext, id: String| async move {
            let tracking: String = ctx.sub_workflow("ship", &id).await?;
            ctx.signal_workflow(&id, "shipped", &tracking).await?;
            match ctx.sub_workflow::<()>("invoice", &id).await {
                Err(err) if err.kind() == "no_invoice" => Ok::<_, WorkflowError>(tracking),
                other => other.map(|()| "invoiced".to_string()),
            }
        });
    let mut tester = WorkflowTester::new(&workflows, "order")
        .on_sub_workflow("ship", |id: String| {
            Ok::<_, WorkflowError>(format!("parcel-{id}"))
        })
        .on_sub_workflow("invoice", |_: String| {
            Err::<(), _>(WorkflowError::new("no_invoice", "not billable"))
        });
    let result: String = tester.run(&"o-7".to_string()).unwrap();
    assert_eq!(result, "parcel-o-7");
    assert_eq!(
        tester.sent_signals(),
        [(
            "o-7".to_string(),
            "shipped".to_string(),
            serde_json::json!("parcel-o-7")
        )]
    );
    let unmocked = Workflows::new().register("lonely", |ctx: WorkflowContext, _: ()| async move {
        ctx.sub_workflow::<()>("missing", &()).await
    });
    let err = WorkflowTester::new(&unmocked, "lonely")
        .run::<()>(&())
        .unwrap_err();
    assert!(
        matches!(&err, TesterError::UnmockedSubWorkflow { name } if name == "missing"),
        "{err}"
    );
}
