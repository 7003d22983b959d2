//! `pgwake bench workflow`: typed workflows of three sequential activities
//! drained by one runtime (instances per second, and the latency between
//! one step's handler and the next's), and what replaying a workflow task's
//! history costs, measured in-process without a database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use clap::Args;
use futures::StreamExt;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{
    Event, EventType, NewInstance, Queue, Runtime, RuntimeConfig, Store, StoreOptions, WorkerId,
    WorkflowTask,
};
use serde_json::{json, Value};

use super::{connect, Latencies, Progress, Server};
use crate::bounds::{decimal, whole, MAX_BENCH_SECONDS, MAX_CONCURRENCY};

/// The most instances one run starts.
const MAX_WORKFLOWS: u64 = 1_000_000;
/// The longest the drain may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Activities each drained instance runs, one after the other.
const STEPS: u32 = 3;
/// The workflow (of `steps` sequential activities) and its activity.
const WORKFLOW: &str = "steps";
const STEP: &str = "step";
const QUEUE: &str = "bench-workflow";
/// The queue of the instance whose claimed task is the replay template: no
/// worker serves it.
const REPLAY_QUEUE: &str = "bench-replay";
/// The queue of the latency phase's instances, run one at a time.
const LATENCY_QUEUE: &str = "bench-workflow-latency";
/// Completed steps in the replayed histories: 1 + 2 x steps events, so 11
/// and 1,001.
const SMALL_HISTORY_STEPS: u32 = 5;
const LARGE_HISTORY_STEPS: u32 = 500;

#[derive(Debug, Args)]
pub(crate) struct WorkflowArgs {
    /// Instances started and drained (1 to 1000000).
    #[arg(long, default_value_t = 2_000, value_parser = whole(1, MAX_WORKFLOWS, "workflows"))]
    workflows: u64,
    /// Workflow tasks the workflow worker runs at once (1 to 10000).
    #[arg(long, default_value_t = 8,
          value_parser = whole(1, MAX_CONCURRENCY, "tasks at once (the runtime's limit)"))]
    concurrency: usize,
    /// Activities the activity worker runs at once (1 to 10000).
    #[arg(long, default_value_t = 8,
          value_parser = whole(1, MAX_CONCURRENCY, "activities at once (the runtime's limit)"))]
    activity_concurrency: usize,
    /// Instances run one after the other, after the drain, for the step
    /// latency (1 to 1000000).
    #[arg(long, default_value_t = 200, value_parser = whole(1, MAX_WORKFLOWS, "workflows"))]
    latency_workflows: u64,
    /// How long each replay measurement repeats its task, in seconds (0.01
    /// to 3600).
    #[arg(long, default_value_t = 2.0,
          value_parser = decimal(0.01, MAX_BENCH_SECONDS as f64, "seconds (1 hour)"))]
    replay_seconds: f64,
}

/// `steps`: runs `step` `steps` times, one after the other.
async fn steps(ctx: WorkflowContext, steps: u32) -> Result<u32, WorkflowError> {
    for step in 1..=steps {
        let _: u32 = ctx.activity(STEP, &step).await?;
    }
    Ok(steps)
}

/// When each step's handler ended, until the next step's handler starts,
/// and the gaps between the two.
struct StepClock {
    ended: HashMap<(String, u32), Instant>,
    gaps: Latencies,
}

impl StepClock {
    fn started(&mut self, instance: &str, step: u32, at: Instant) {
        if step > 1 {
            if let Some(ended) = self.ended.remove(&(instance.to_string(), step - 1)) {
                self.gaps.record(at.saturating_duration_since(ended));
            }
        }
    }

    fn ended(&mut self, instance: String, step: u32, at: Instant) {
        if step < STEPS {
            self.ended.insert((instance, step), at);
        }
    }
}

fn activities(clock: Arc<Mutex<StepClock>>) -> Activities {
    Activities::new().register(STEP, move |ctx: ActivityContext, step: u32| {
        let clock = clock.clone();
        async move {
            let instance = ctx.instance().instance_id.clone();
            let mut clock = clock.lock().expect("the step clock is never poisoned");
            clock.started(&instance, step, Instant::now());
            // The timestamp just before the handler returns.
            clock.ended(instance, step, Instant::now());
            Ok::<_, ActivityError>(step)
        }
    })
}

/// Starts `args.workflows` instances on a running runtime and waits until
/// all have finished: instances per second from the first start to the
/// last finish (database clock), and the step gaps.
async fn drain(url: &str, args: &WorkflowArgs) -> Result<(f64, Latencies), String> {
    let clock = Arc::new(Mutex::new(StepClock {
        ended: HashMap::new(),
        gaps: Latencies::new(),
    }));
    let mut config = RuntimeConfig::new(url);
    config.store.pool_size = (args.concurrency + args.activity_concurrency + 4).min(64);
    let runtime = Runtime::builder(config)
        .workflow_worker(
            Workflows::new()
                .register(WORKFLOW, steps)
                .worker([QUEUE, LATENCY_QUEUE])
                .concurrency(args.concurrency),
        )
        .activity_worker(
            activities(clock.clone())
                .worker([QUEUE, LATENCY_QUEUE])
                .concurrency(args.activity_concurrency),
        )
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let admin = connect(url).await?;
    let client = Client::new(runtime.store().clone());
    let queue = Queue::new(QUEUE).map_err(|e| e.to_string())?;
    let starts = (0..args.workflows).map(|n| {
        let (client, queue) = (client.clone(), queue.clone());
        async move {
            let options = StartOptions::default().queue(queue);
            client
                .start(WORKFLOW, &format!("wf-{n}"), &STEPS, options)
                .await
        }
    });
    // A few at a time, while the workers already drain.
    let mut starting = futures::stream::iter(starts).buffer_unordered(8);
    while let Some(started) = starting.next().await {
        started.map_err(|e| e.to_string())?;
    }
    let expected = i64::try_from(args.workflows).unwrap_or(i64::MAX);
    let waiting = Instant::now();
    let mut progress = Progress::new("workflows", args.workflows);
    loop {
        let finished: i64 = admin
            .query_one(
                "SELECT count(*) FROM instances WHERE queue = $1 AND state = 2",
                &[&QUEUE],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        progress.tick(u64::try_from(finished).unwrap_or(0));
        if finished >= expected {
            break;
        }
        if waiting.elapsed() > DRAIN_TIMEOUT {
            return Err(format!(
                "only {finished} of {expected} workflows finished in {DRAIN_TIMEOUT:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The step latency, on the warm runtime: one instance at a time, so
    // no step waits behind another instance's tasks.
    clock.lock().expect("the step clock is never poisoned").gaps = Latencies::new();
    let latency_queue = Queue::new(LATENCY_QUEUE).map_err(|e| e.to_string())?;
    for n in 0..args.latency_workflows {
        let id = format!("lat-{n}");
        let options = StartOptions::default().queue(latency_queue.clone());
        client
            .start(WORKFLOW, &id, &STEPS, options)
            .await
            .map_err(|e| e.to_string())?;
        let _: u32 = client
            .result(&id, DRAIN_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    // Every instance ran its steps once and none failed. The replay
    // template, on another queue, is no part of the window.
    let row = admin
        .query_one(
            "SELECT extract(epoch FROM max(i.completed_at) - min(i.created_at))::float8,
                    count(h.*) FILTER (WHERE h.event_type = 12),
                    count(h.*) FILTER (WHERE h.event_type = 13)
               FROM instances i
               LEFT JOIN history h
                 ON h.instance_id = i.instance_id AND h.execution_id = i.execution_id
              WHERE i.queue = $1",
            &[&QUEUE],
        )
        .await
        .map_err(|e| e.to_string())?;
    let (window, completed, failed): (f64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    if completed != expected * i64::from(STEPS) || failed != 0 {
        return Err(format!(
            "{expected} workflows of {STEPS} steps recorded {completed} completed and \
             {failed} failed activities"
        ));
    }
    let gaps = std::mem::replace(
        &mut clock.lock().expect("the step clock is never poisoned").gaps,
        Latencies::new(),
    );
    Ok((args.workflows as f64 / window, gaps))
}

/// A claimed workflow task, to copy: its lease and row are the store's
/// alone to build. Its instance is on a queue nobody serves.
async fn claimed_task(url: &str) -> Result<(Store, WorkflowTask), String> {
    let store = Store::connect(url, StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let queue = Queue::new(REPLAY_QUEUE).map_err(|e| e.to_string())?;
    store
        .create_instance(
            NewInstance::new("replay-template", queue.clone())
                .with_metadata(json!({ "workflow": WORKFLOW })),
        )
        .await
        .map_err(|e| e.to_string())?;
    let task = store
        .claim_workflow_task(
            &WorkerId::unique("bench-replay"),
            &[queue],
            Duration::from_secs(600),
        )
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the replay template's workflow task was not claimable")?;
    Ok((store, task))
}

/// `template` with the history of a `steps` instance that completed
/// `completed` steps, the last completion being the new event.
fn with_history(template: &WorkflowTask, completed: u32) -> WorkflowTask {
    with_history_of(template, completed, completed + 1)
}

/// [`with_history`] of an instance of `total` steps.
fn with_history_of(template: &WorkflowTask, completed: u32, total: u32) -> WorkflowTask {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let event = |sequence_id: i64, event_type, schedule_event_id, attributes| {
        let mut event = Event::new(
            format!("replay-{sequence_id}"),
            sequence_id,
            event_type,
            attributes,
        );
        event.timestamp = at + Duration::from_millis(sequence_id as u64);
        event.schedule_event_id = schedule_event_id;
        event
    };
    // One more step than completed: the decision schedules the next one.
    let mut events = vec![event(
        1,
        EventType::WorkflowExecutionStarted,
        0,
        json!(total),
    )];
    for step in 1..=completed {
        let scheduled = events.len() as i64 + 1;
        events.push(event(
            scheduled,
            EventType::ActivityScheduled,
            0,
            json!({ "name": STEP, "input": step, "queue": REPLAY_QUEUE }),
        ));
        events.push(event(
            scheduled + 1,
            EventType::ActivityCompleted,
            scheduled,
            json!({ "result": step }),
        ));
    }
    let mut task = template.clone();
    task.new_events = events.split_off(events.len() - 1);
    task.last_sequence_id = events.last().map_or(0, |e| e.sequence_id);
    task.history = events;
    task
}

/// Milliseconds per [`Workflows::execute`] of `task`, repeated for `budget`
/// (at least 10 times), after checking that its decision schedules the
/// next step.
fn ms_per_task(
    workflows: &Workflows,
    task: &WorkflowTask,
    budget: Duration,
) -> Result<f64, String> {
    let decision = workflows.execute(task).map_err(|e| e.to_string())?;
    if decision.activities.len() != 1 || decision.outcome.is_some() {
        return Err(format!("the replayed task decided {decision:?}"));
    }
    let started = Instant::now();
    let mut iterations = 0u32;
    while iterations < 10 || started.elapsed() < budget {
        let decision = workflows.execute(std::hint::black_box(task));
        std::hint::black_box(decision).map_err(|e| e.to_string())?;
        iterations += 1;
    }
    Ok(started.elapsed().as_secs_f64() * 1000.0 / f64::from(iterations))
}

/// The task that follows `task` once its decision (one `step` scheduled)
/// is recorded as the store records it: its `WorkflowTaskStarted`, its new
/// events, the scheduled step; the step's completion is the new event.
fn next_task(task: &WorkflowTask) -> WorkflowTask {
    let mut next = task.clone();
    let mut sequence_id = task.last_sequence_id;
    let mut push = |history: &mut Vec<Event>, mut event: Event| {
        sequence_id += 1;
        event.sequence_id = sequence_id;
        history.push(event);
        sequence_id
    };
    let at = task
        .history
        .last()
        .map_or(SystemTime::UNIX_EPOCH, |e| e.timestamp);
    let fresh = |event_type, schedule_event_id, attributes| {
        let mut event = Event::new(
            format!("replay-next-{}-{event_type:?}", task.last_sequence_id),
            0,
            event_type,
            attributes,
        );
        event.timestamp = at;
        event.schedule_event_id = schedule_event_id;
        event
    };
    push(
        &mut next.history,
        fresh(EventType::WorkflowTaskStarted, 0, Value::Null),
    );
    for event in std::mem::take(&mut next.new_events) {
        push(&mut next.history, event);
    }
    let scheduled = push(
        &mut next.history,
        fresh(
            EventType::ActivityScheduled,
            0,
            json!({ "name": STEP, "queue": REPLAY_QUEUE }),
        ),
    );
    next.last_sequence_id = scheduled;
    let mut completed = fresh(
        EventType::ActivityCompleted,
        scheduled,
        json!({ "result": 0 }),
    );
    completed.sequence_id = scheduled + 1;
    next.new_events = vec![completed];
    next
}

/// Milliseconds per workflow task of an [`Executor`](pgwake::workflow::Executor)
/// that kept the execution from the task before: each round replays a
/// history of `completed` steps (untimed, as a worker's first task does),
/// then times the task that follows it, which applies only its new events.
fn cached_ms_per_task(
    workflows: &Workflows,
    template: &WorkflowTask,
    completed: u32,
    budget: Duration,
) -> Result<f64, String> {
    let first = with_history_of(template, completed, completed + 2);
    let second = next_task(&first);
    let mut executor = workflows.executor(1);
    let mut timed = Duration::ZERO;
    let mut iterations = 0u32;
    // The budget is wall time: most of it goes to the untimed replays.
    let started = Instant::now();
    while iterations < 10 || started.elapsed() < budget {
        executor.execute(&first).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let decision = executor.execute(std::hint::black_box(&second));
        timed += started.elapsed();
        let decision = decision.map_err(|e| e.to_string())?;
        if decision.activities.len() != 1 || decision.outcome.is_some() {
            return Err(format!("the resumed task decided {decision:?}"));
        }
        iterations += 1;
    }
    Ok(timed.as_secs_f64() * 1000.0 / f64::from(iterations))
}

pub(crate) async fn run(server: Server, args: WorkflowArgs) -> Result<(Value, Value), String> {
    println!("workflow on {}", server.description);
    let description = server.description.clone();

    // Replay first, on its own: nothing else runs on this thread meanwhile.
    let (store, template) = claimed_task(&server.url).await?;
    let workflows = Workflows::new().register(WORKFLOW, steps);
    let small = with_history(&template, SMALL_HISTORY_STEPS);
    let large = with_history(&template, LARGE_HISTORY_STEPS);
    let events = |task: &WorkflowTask| task.history.len() + task.new_events.len();
    let budget = Duration::from_secs_f64(args.replay_seconds);
    let uncached_small = ms_per_task(&workflows, &small, budget)?;
    let uncached_large = ms_per_task(&workflows, &large, budget)?;
    let cached_small = Some(cached_ms_per_task(
        &workflows,
        &template,
        SMALL_HISTORY_STEPS,
        budget,
    )?);
    let cached_large = Some(cached_ms_per_task(
        &workflows,
        &template,
        LARGE_HISTORY_STEPS,
        budget,
    )?);
    let _ = store.release_workflow_task(&template).await;

    let (workflows_per_sec, gaps) = drain(&server.url, &args).await?;
    server.close().await;

    let shown = |ms: Option<f64>| ms.map_or("-".to_string(), |ms| format!("{ms:.4}"));
    println!("{:<40} {:>12}", "figure", "value");
    println!(
        "{:<40} {:>12.0}",
        format!(
            "workflows/s ({} x {STEPS} steps, concurrency {})",
            args.workflows, args.concurrency
        ),
        workflows_per_sec
    );
    println!(
        "{:<40} {:>12.3}",
        format!("step p50 ms ({} gaps)", gaps.len()),
        gaps.quantile_ms(0.50)
    );
    println!("{:<40} {:>12.3}", "step p99 ms", gaps.quantile_ms(0.99));
    for (label, uncached, cached) in [
        (events(&small), Some(uncached_small), cached_small),
        (events(&large), Some(uncached_large), cached_large),
    ] {
        println!(
            "{:<40} {:>12}",
            format!("replay ms/task, {label} events, uncached"),
            shown(uncached)
        );
        println!(
            "{:<40} {:>12}",
            format!("replay ms/task, {label} events, cached"),
            shown(cached)
        );
    }
    let config = json!({
        "workflows": args.workflows,
        "steps": STEPS,
        "workflow_concurrency": args.concurrency,
        "activity_concurrency": args.activity_concurrency,
        "replay_events": [events(&small), events(&large)],
        "replay_seconds": args.replay_seconds,
        "server": description,
    });
    let results = json!({
        "workflows_per_sec": workflows_per_sec,
        "step": {
            "p50_ms": gaps.quantile_ms(0.50),
            "p99_ms": gaps.quantile_ms(0.99),
        },
        "replay": {
            "cached_ms_per_task_10": cached_small,
            "cached_ms_per_task_1000": cached_large,
            "uncached_ms_per_task_1000": uncached_large,
        },
    });
    Ok((config, results))
}
