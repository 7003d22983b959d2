//! The demo workload of `pgwake work` and `pgwake start`: `echo` activities
//! and `fanout` workflows, also what the chaos test and the benchmarks run.

use std::time::Duration;

use pgwake::{
    ActivityTask, ActivityWorker, EventType, Store, WorkflowCompletion, WorkflowOutcome,
    WorkflowTask, WorkflowWorker,
};
use serde_json::{json, Value};

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
                let count = event.attributes["activities"].as_u64().unwrap_or(0);
                let timer_ms = event.attributes["timer_ms"].as_u64().unwrap_or(0);
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
                let count = event.attributes["activities"].as_u64().unwrap_or(0);
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
