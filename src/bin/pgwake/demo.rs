//! The demo workload of `pgwake work` and `pgwake start`: `echo` activities
//! and `fanout` workflows, also what the chaos test and the benchmarks run.

use std::time::Duration;

use pgwake::{
    ActivityTask, ActivityWorker, EventType, Store, WorkflowCompletion, WorkflowOutcome,
    WorkflowTask, WorkflowWorker,
};
use serde_json::{json, Value};

/// The most `echo` activities one `fanout` instance schedules: they are
/// scheduled in one decision, held in memory and written in one
/// transaction, so an unbounded count aborts every worker that claims it.
pub(crate) const MAX_ACTIVITIES: u64 = 10_000;
/// The longest timer a `fanout` instance waits on, in milliseconds: 10 years.
pub(crate) const MAX_TIMER_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// `echo`: returns its input, after sleeping `activity_ms` if asked.
pub(crate) fn echo_worker(
    queues: &[String],
    concurrency: usize,
    activity_ms: u64,
    lease: Duration,
) -> ActivityWorker {
    ActivityWorker::new(queues.to_vec(), move |task: ActivityTask| async move {
        if activity_ms > 0 {
            tokio::time::sleep(Duration::from_millis(activity_ms)).await;
        }
        Ok::<_, String>(json!({ "echo": task.input }))
    })
    .concurrency(concurrency)
    .lease(lease)
}

/// The start input of a `fanout` instance.
pub(crate) fn fanout_input(activities: u64, timer_ms: u64) -> Value {
    json!({ "activities": activities, "timer_ms": timer_ms })
}

/// `fanout`: on start, waits `timer_ms` if asked, then schedules K `echo`
/// activities on its own queue, and finishes once all K have completed.
pub(crate) fn fanout_worker(
    queues: &[String],
    concurrency: usize,
    lease: Duration,
    store: Store,
) -> WorkflowWorker {
    WorkflowWorker::new(queues.to_vec(), move |task: WorkflowTask| {
        let store = store.clone();
        async move { decide(&store, &task).await }
    })
    .concurrency(concurrency)
    .lease(lease)
}

async fn decide(
    store: &Store,
    task: &WorkflowTask,
) -> Result<WorkflowCompletion, pgwake::StoreError> {
    let schedule = |decision: WorkflowCompletion, count: u64| {
        (0..count).fold(decision, |d, i| {
            d.schedule_activity("echo", json!({ "index": i }), None)
        })
    };
    let mut decision = WorkflowCompletion::default();
    let mut finished_now = 0;
    for event in &task.new_events {
        match event.event_type {
            EventType::WorkflowExecutionStarted => {
                // Any writer can start an instance: its input is checked
                // here, and a bad one fails the instance instead of the
                // worker.
                let (count, timer_ms) = match (
                    bounded(&event.attributes, "activities", MAX_ACTIVITIES),
                    bounded(&event.attributes, "timer_ms", MAX_TIMER_MS),
                ) {
                    (Ok(count), Ok(timer_ms)) => (count, timer_ms),
                    (Err(reason), _) | (_, Err(reason)) => {
                        return Ok(decision.finish(WorkflowOutcome::Failed(reason)));
                    }
                };
                decision = if timer_ms > 0 {
                    decision.start_timer(
                        Duration::from_millis(timer_ms),
                        json!({ "activities": count }),
                    )
                } else if count == 0 {
                    decision.finish(WorkflowOutcome::Completed(json!({ "completed": 0 })))
                } else {
                    schedule(decision, count)
                };
            }
            EventType::TimerFired => {
                let count = match bounded(&event.attributes, "activities", MAX_ACTIVITIES) {
                    Ok(count) => count,
                    Err(reason) => return Ok(decision.finish(WorkflowOutcome::Failed(reason))),
                };
                decision = if count == 0 {
                    decision.finish(WorkflowOutcome::Completed(json!({ "completed": 0 })))
                } else {
                    schedule(decision, count)
                };
            }
            EventType::ActivityCompleted | EventType::ActivityFailed => finished_now += 1,
            _ => {}
        }
    }
    if finished_now == 0 {
        return Ok(decision);
    }
    // How many are expected, and how many finished before this task: from
    // the history, which the workflow task does not carry.
    let snapshot = store.instance(&task.instance.instance_id).await?;
    let history = snapshot.map(|s| s.history).unwrap_or_default();
    let expected = history
        .iter()
        .filter(|e| e.event_type == EventType::ActivityScheduled)
        .count();
    let finished_before = history
        .iter()
        .filter(|e| {
            matches!(
                e.event_type,
                EventType::ActivityCompleted | EventType::ActivityFailed
            )
        })
        .count();
    if expected > 0 && finished_before + finished_now >= expected {
        decision = decision.finish(WorkflowOutcome::Completed(json!({ "completed": expected })));
    }
    Ok(decision)
}

/// `attributes[field]`: absent is 0; otherwise a whole number up to `max`,
/// or why not.
fn bounded(attributes: &Value, field: &str, max: u64) -> Result<u64, String> {
    match &attributes[field] {
        Value::Null => Ok(0),
        value => match value.as_u64() {
            Some(n) if n <= max => Ok(n),
            _ => {
                // The value as given, cut short: it may be a long string.
                let mut shown: String = value.to_string().chars().take(40).collect();
                if shown.len() < value.to_string().len() {
                    shown.push_str("...");
                }
                Err(format!(
                    "fanout input {field} = {shown} is out of range: it must be a whole \
                     number from 0 to {max}"
                ))
            }
        },
    }
}
