//! Eager dispatch, against a real PostgreSQL: a decision leases the
//! activities it schedules to an activity worker of its runtime that has
//! free slots, and recorded results lease the workflow tasks they make
//! ready to a workflow worker of its runtime, which run them without a
//! claim; tasks beyond the free slots are claimed as usual, and a wake-up
//! declined while handed-over tasks fill a worker is not lost.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{Runtime, RuntimeConfig, RuntimeHandle, TaskKind};

const WAIT: Duration = Duration::from_secs(20);
const QUEUE: &str = "default";

/// A workflow of `n` activities, one after the other.
fn counting() -> Workflows {
    Workflows::new().register("count", |ctx: WorkflowContext, n: u64| async move {
        let mut total = 0;
        for _ in 0..n {
            total = ctx.activity::<u64>("inc", &total).await?;
        }
        Ok::<_, WorkflowError>(total)
    })
}

fn inc() -> Activities {
    Activities::new().register("inc", |_: ActivityContext, n: u64| async move {
        Ok::<_, ActivityError>(n + 1)
    })
}

async fn start(
    url: &str,
    eager: bool,
    workflows: Workflows,
    activities: Activities,
    concurrency: usize,
) -> RuntimeHandle {
    let mut config = RuntimeConfig::new(url);
    config.eager_dispatch = eager;
    // Only wake-ups (and eager dispatch) find the work in time.
    config.fallback_while_listening = support::NEVER;
    Runtime::builder(config)
        // Two slots: with one, the process's own NOTIFY for the start,
        // coming back, may be declined while the first task runs and then
        // owed a claim, which holds the only slot when a result wants to
        // hand its task over (that task is claimed instead: correct, but not
        // what this test counts).
        .workflow_worker(workflows.worker([QUEUE]).concurrency(2))
        .activity_worker(activities.worker([QUEUE]).concurrency(concurrency))
        .start()
        .await
        .unwrap()
}

/// Waits until the runtime listens and its workers' first claims (at
/// their start, and the resync after LISTEN) are over, then returns how
/// many claims each kind made: (activity, workflow).
async fn settled_polls(runtime: &RuntimeHandle) -> (u64, u64) {
    let deadline = Instant::now() + WAIT;
    while !runtime.health().all_listening() {
        assert!(Instant::now() < deadline, "the listeners never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut last = (u64::MAX, u64::MAX);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let polls = polls(runtime);
        if polls == last {
            return polls;
        }
        last = polls;
    }
}

fn polls(runtime: &RuntimeHandle) -> (u64, u64) {
    let health = runtime.health();
    (
        health.counters(TaskKind::Activity, QUEUE).polls,
        health.counters(TaskKind::Workflow, QUEUE).polls,
    )
}

/// Waits until `count_sql` counts exactly one row.
async fn until_one(url: &str, what: &str, count_sql: &str) {
    let db = support::connect(url).await;
    support::eventually(WAIT, what, || async {
        db.query_one(count_sql, &[]).await.unwrap().get::<_, i64>(0) == 1
    })
    .await;
}

async fn count_to(runtime: &RuntimeHandle, id: &str, n: u64) -> u64 {
    let client = Client::new(runtime.store().clone());
    client
        .start("count", id, &n, StartOptions::default())
        .await
        .unwrap();
    client.result(id, WAIT).await.unwrap()
}

#[actix_rt::test]
async fn activities_and_the_workflow_tasks_their_results_make_ready_run_without_a_claim() {
    let database = fresh_database().await.unwrap();
    let runtime = start(database.url(), true, counting(), inc(), 4).await;
    let (activities_before, workflows_before) = settled_polls(&runtime).await;
    assert_eq!(count_to(&runtime, "eager", 10).await, 10);
    let (activities_after, workflows_after) = polls(&runtime);
    // Claimed one by one, ten activities take ten claims at least (and an
    // empty one after each: its slot freed); leased by their decisions,
    // none. A resync may still add one.
    assert!(
        activities_after - activities_before <= 1,
        "{} claims for 10 activities leased by their decisions",
        activities_after - activities_before
    );
    // Eleven workflow tasks: the first is claimed (woken by the start, then
    // a look for more, and the start's NOTIFY coming back may add one),
    // the ten after each activity are handed over with its result.
    assert!(
        workflows_after - workflows_before <= 4,
        "{} claims for 11 workflow tasks, 10 of them handed over",
        workflows_after - workflows_before
    );
    let counters = runtime.health().counters(TaskKind::Activity, QUEUE);
    assert_eq!(counters.completed, 10);
    // Nothing is left leased or unrecorded.
    let client = support::connect(database.url()).await;
    let left: i64 = client
        .query_one("SELECT count(*) FROM activities", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn with_eager_dispatch_off_every_task_is_claimed() {
    let database = fresh_database().await.unwrap();
    let runtime = start(database.url(), false, counting(), inc(), 4).await;
    let (activities_before, workflows_before) = settled_polls(&runtime).await;
    assert_eq!(count_to(&runtime, "claimed", 10).await, 10);
    let (activities_after, workflows_after) = polls(&runtime);
    let (activities, workflows) = (
        activities_after - activities_before,
        workflows_after - workflows_before,
    );
    assert!(activities >= 10, "{activities} claims for 10 activities");
    assert!(workflows >= 11, "{workflows} claims for 11 workflow tasks");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn activities_beyond_the_free_slots_are_claimed_and_never_overfill_the_worker() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new().register("fan", |ctx: WorkflowContext, n: u64| async move {
        let calls = (0..n).map(|i| ctx.activity::<u64>("slow", &i));
        let results = futures::future::try_join_all(calls).await?;
        Ok::<_, WorkflowError>(results.iter().sum::<u64>())
    });
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let activities = {
        let (running, most) = (running.clone(), most.clone());
        Activities::new().register("slow", move |_: ActivityContext, i: u64| {
            let (running, most) = (running.clone(), most.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, ActivityError>(i)
            }
        })
    };
    let runtime = start(database.url(), true, workflows, activities, 2).await;
    let client = Client::new(runtime.store().clone());
    for id in ["fan-1", "fan-2"] {
        client
            .start("fan", id, &6u64, StartOptions::default())
            .await
            .unwrap();
    }
    for id in ["fan-1", "fan-2"] {
        let sum: u64 = client.result(id, WAIT).await.unwrap();
        assert_eq!(sum, 15);
    }
    assert!(
        most.load(Ordering::SeqCst) <= 2,
        "{} activities ran at once on a worker of 2 slots",
        most.load(Ordering::SeqCst)
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_wake_up_declined_while_leased_activities_fill_the_worker_is_not_lost() {
    let database = fresh_database().await.unwrap();
    // The gate holds the only slot with an activity its decision leased.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    let activities = {
        let (gate, started) = (gate.clone(), started.clone());
        inc().register("hold", move |_: ActivityContext, (): ()| {
            let (gate, started) = (gate.clone(), started.clone());
            async move {
                started.notify_one();
                let _permit = gate.acquire().await.expect("never closed");
                Ok::<_, ActivityError>(())
            }
        })
    };
    let workflows = counting().register("hold", |ctx: WorkflowContext, (): ()| async move {
        ctx.activity::<()>("hold", &()).await?;
        Ok::<_, WorkflowError>(())
    });
    let runtime = start(database.url(), true, workflows, activities, 1).await;
    settled_polls(&runtime).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("hold", "hold", &(), StartOptions::default())
        .await
        .unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the held activity started");
    // Its activity finds the worker full: written unleased, and the
    // wake-up for it declined.
    client
        .start("count", "behind", &1u64, StartOptions::default())
        .await
        .unwrap();
    let sql = "SELECT count(*) FROM activities WHERE instance_id = 'behind' AND worker IS NULL";
    until_one(database.url(), "the second activity, unleased", sql).await;
    // Give the declined offer time to be made.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let freed_at = Instant::now();
    gate.add_permits(1);
    // The freed slot claims it now: without that it would wait for the
    // worker's fallback poll (NEVER), far past this deadline.
    let counted: u64 = client.result("behind", WAIT).await.unwrap();
    assert_eq!(counted, 1);
    let _: () = client.result("hold", WAIT).await.unwrap();
    assert!(freed_at.elapsed() < WAIT);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_claim_that_took_the_only_ready_task_still_wakes_the_worker_for_a_later_timer() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new()
        .register("nap", |ctx: WorkflowContext, ms: u64| async move {
            ctx.sleep(Duration::from_millis(ms)).await?;
            Ok::<_, WorkflowError>(ms)
        })
        .register("quick", |_: WorkflowContext, n: u64| async move {
            Ok::<_, WorkflowError>(n)
        });
    let runtime = start(database.url(), true, workflows, inc(), 1).await;
    settled_polls(&runtime).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("nap", "nap", &1_500u64, StartOptions::default())
        .await
        .unwrap();
    let sql =
        "SELECT count(*) FROM pending_events WHERE instance_id = 'nap' AND visible_at IS NOT NULL";
    until_one(database.url(), "the nap's timer, scheduled", sql).await;
    // The only ready task: its claim sees nothing else waiting, and its
    // worker, idle after it, must still wake when the timer is due (this
    // runtime never polls while listening). Started by another process's
    // client: its one NOTIFY is the only wake-up.
    let elsewhere = Client::connect(database.url()).await.unwrap();
    elsewhere
        .start("quick", "quick", &1u64, StartOptions::default())
        .await
        .unwrap();
    let quick: u64 = client.result("quick", WAIT).await.unwrap();
    assert_eq!(quick, 1);
    let napped: u64 = client.result("nap", WAIT).await.unwrap();
    assert_eq!(napped, 1_500);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn results_hand_their_workflow_tasks_to_the_workflow_worker_of_their_queue() {
    let database = fresh_database().await.unwrap();
    let mut config = RuntimeConfig::new(database.url());
    config.fallback_while_listening = support::NEVER;
    // Two workflow workers on queues of their own; the activity worker
    // serves both. The workflow runs on the second worker's queue.
    let runtime = Runtime::builder(config)
        .workflow_worker(counting().worker(["first"]).concurrency(2))
        .workflow_worker(counting().worker(["second"]).concurrency(2))
        .activity_worker(inc().worker(["first", "second"]).concurrency(4))
        .start()
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !runtime.health().all_listening() {
        assert!(Instant::now() < deadline, "the listeners never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let claims = || {
        runtime
            .health()
            .counters(TaskKind::Workflow, "second")
            .polls
    };
    let before = claims();
    let client = Client::new(runtime.store().clone());
    let options = StartOptions::default().queue(pgwake::Queue::new("second").unwrap());
    client
        .start("count", "routed", &10u64, options)
        .await
        .unwrap();
    let total: u64 = client.result("routed", WAIT).await.unwrap();
    assert_eq!(total, 10);
    // Handed to the first workflow worker, whose queue is not theirs, the
    // ten tasks after each activity would be claimed by the second, one
    // claim each at least (21 claims, measured). Handed over, 2 to 4 on a
    // quiet machine; a wake-up meeting a hand-over adds a claim or two
    // while the whole suite runs.
    assert!(
        claims() - before < 10,
        "{} claims for 11 workflow tasks, 10 of them handed over",
        claims() - before
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
