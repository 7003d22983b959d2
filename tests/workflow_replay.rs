//! Long histories (issue #11): a workflow of 1,000 sequential activities
//! finishes; its worker is lost midway, taking the in-memory execution with
//! it, and workers that never saw it replay the history: code that changed
//! is caught as non-determinism and nothing of it is applied, the original
//! code finishes with the same result as an uninterrupted run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{EventType, Runtime, RuntimeConfig, RuntimeHandle};

const STEPS: u64 = 1_000;
const WAIT: Duration = Duration::from_secs(240);

/// Adds each step's number to the running total, so a step applied twice
/// or skipped changes the result.
fn summing(starts: Arc<AtomicUsize>) -> Workflows {
    Workflows::new().register("sum", move |ctx: WorkflowContext, steps: u64| {
        starts.fetch_add(1, Ordering::SeqCst);
        async move {
            let mut total = 0u64;
            for step in 1..=steps {
                total = ctx.activity("add", &(total, step)).await?;
            }
            Ok::<_, WorkflowError>(total)
        }
    })
}

/// Schedules another activity from step 10 on: not the code that wrote
/// the history.
fn changed() -> Workflows {
    Workflows::new().register("sum", |ctx: WorkflowContext, steps: u64| async move {
        let mut total = 0u64;
        for step in 1..=steps {
            let name = if step < 10 { "add" } else { "add_twice" };
            total = ctx.activity(name, &(total, step)).await?;
        }
        Ok::<_, WorkflowError>(total)
    })
}

fn adding(done: Arc<AtomicUsize>) -> Activities {
    let twice = done.clone();
    Activities::new()
        .register(
            "add",
            move |_: ActivityContext, (total, step): (u64, u64)| {
                done.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, ActivityError>(total + step) }
            },
        )
        .register(
            "add_twice",
            move |_: ActivityContext, (total, step): (u64, u64)| {
                twice.fetch_add(1, Ordering::SeqCst);
                async move { Ok::<_, ActivityError>(total + 2 * step) }
            },
        )
}

async fn runtime(url: &str, workflows: &Workflows, activities: &Activities) -> RuntimeHandle {
    Runtime::builder(RuntimeConfig::new(url))
        .workflow_worker(workflows.worker(["default"]))
        .activity_worker(activities.worker(["default"]).concurrency(4))
        .start()
        .await
        .unwrap()
}

async fn completed_activities(runtime: &RuntimeHandle, id: &str) -> usize {
    let snapshot = runtime.store().instance(id).await.unwrap().unwrap();
    snapshot
        .history
        .iter()
        .filter(|e| e.event_type == EventType::ActivityCompleted)
        .count()
}

#[actix_rt::test]
async fn a_thousand_step_workflow_survives_losing_its_worker_and_catches_changed_code() {
    let database = fresh_database().await.unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    let activities = adding(done.clone());
    let first_starts = Arc::new(AtomicUsize::new(0));

    // The first worker runs about a third of the steps, then is lost.
    let first = runtime(database.url(), &summing(first_starts.clone()), &activities).await;
    let client = Client::new(first.store().clone());
    client
        .start("sum", "sum-1000", &STEPS, StartOptions::default())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while completed_activities(&first, "sum-1000").await < 300 {
        assert!(std::time::Instant::now() < deadline, "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.shutdown(Duration::from_secs(10)).await;
    // It kept the execution in memory: its code started once for hundreds
    // of tasks.
    assert_eq!(first_starts.load(Ordering::SeqCst), 1);
    let reached = completed_activities(&first, "sum-1000").await;
    assert!(reached < STEPS as usize, "it finished before it was lost");

    // Changed code replays the history and stops at the first difference:
    // the task fails, nothing is applied, the instance shows why.
    let changed_runtime = runtime(database.url(), &changed(), &activities).await;
    let client = Client::new(changed_runtime.store().clone());
    let about = loop {
        let about = client.describe("sum-1000").await.unwrap().unwrap();
        if about.task_attempts > 0 {
            break about;
        }
        assert!(std::time::Instant::now() < deadline, "no failing task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = about.last_task_error.unwrap_or_default();
    assert!(error.contains("non-determinism"), "{error}");
    assert!(error.contains("'add_twice'"), "{error}");
    changed_runtime.shutdown(Duration::from_secs(10)).await;
    let after_changed = completed_activities(&changed_runtime, "sum-1000").await;
    assert!(after_changed >= reached);

    // The original code, on a worker that never saw the execution, replays
    // the whole history and finishes it.
    let second_starts = Arc::new(AtomicUsize::new(0));
    let second = runtime(database.url(), &summing(second_starts.clone()), &activities).await;
    // The failed task backs off (seconds); then this worker claims it.
    let client = Client::new(second.store().clone());
    let total: u64 = client.result("sum-1000", WAIT).await.unwrap();
    assert_eq!(total, STEPS * (STEPS + 1) / 2);
    assert!(second_starts.load(Ordering::SeqCst) >= 1);
    let about = client.describe("sum-1000").await.unwrap().unwrap();
    assert_eq!(about.task_attempts, 0);
    let snapshot = second.store().instance("sum-1000").await.unwrap().unwrap();
    let scheduled = snapshot
        .history
        .iter()
        .filter(|e| e.event_type == EventType::ActivityScheduled)
        .count();
    assert_eq!(scheduled, STEPS as usize, "each step scheduled once");
    second.shutdown(Duration::from_secs(10)).await;
}
