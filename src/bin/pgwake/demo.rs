//! The demo workload of `pgwake work` and `pgwake start`: `echo` activities
//! and `fanout` workflows, also what the chaos test and the benchmarks run.
//! Both are written with the typed workflow layer ([`pgwake::workflow`]).

use std::sync::Arc;
use std::time::Duration;

use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, WorkflowContext, WorkflowError, Workflows,
};
use pgwake::{ActivityWorker, Store, WorkflowTask, WorkflowWorker};
use serde_json::{json, Value};

/// The most `echo` activities one `fanout` instance schedules: they are
/// scheduled in one decision, held in memory and written in one
/// transaction, so an unbounded count aborts every worker that claims it.
pub(crate) const MAX_ACTIVITIES: u64 = 10_000;
/// The longest timer a `fanout` instance waits on, in milliseconds: 10 years.
pub(crate) const MAX_TIMER_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// The workflow's registered name, and the one an instance without a
/// workflow name in its metadata runs (see [`fanout_worker`]).
const FANOUT: &str = "fanout";
/// The activity's registered name.
const ECHO: &str = "echo";

/// `echo`: returns `{"echo": input}`, after sleeping `activity_ms` if asked.
pub(crate) fn echo_worker(
    queues: &[String],
    concurrency: usize,
    activity_ms: u64,
    lease: Duration,
) -> ActivityWorker {
    Activities::new()
        .register(ECHO, move |_: ActivityContext, input: Value| async move {
            if activity_ms > 0 {
                tokio::time::sleep(Duration::from_millis(activity_ms)).await;
            }
            Ok::<_, ActivityError>(json!({ "echo": input }))
        })
        .worker(queues.iter().cloned())
        .concurrency(concurrency)
        .lease(lease)
}

/// The start input of a `fanout` instance.
pub(crate) fn fanout_input(activities: u64, timer_ms: u64) -> Value {
    json!({ "activities": activities, "timer_ms": timer_ms })
}

/// `fanout`: waits `timer_ms` if asked, then schedules K `echo` activities
/// at once (`{"index": i}`, on the instance's queue, in one decision), and
/// finishes with `{"completed": K}` once all K have answered. A canceled
/// instance ends as canceled.
///
/// Any writer can start an instance: its input is checked here, and a bad
/// one fails the instance (kind `"bad_input"`) instead of the worker.
async fn fanout(ctx: WorkflowContext, input: Value) -> Result<Value, WorkflowError> {
    let (count, timer_ms) = match (
        bounded(&input, "activities", MAX_ACTIVITIES),
        bounded(&input, "timer_ms", MAX_TIMER_MS),
    ) {
        (Ok(count), Ok(timer_ms)) => (count, timer_ms),
        (Err(reason), _) | (_, Err(reason)) => {
            return Err(WorkflowError::new("bad_input", reason).non_retryable());
        }
    };
    if timer_ms > 0 {
        ctx.sleep(Duration::from_millis(timer_ms)).await?;
    }
    // Every activity is created before the first is awaited, so all K are
    // commands of the same decision. Awaiting them one by one rather than
    // with `join_all` matters: the executor polls with a no-op waker, and
    // `join_all` of more than 30 futures re-polls only those that woke it.
    let echoes: Vec<_> = (0..count)
        .map(|index| ctx.activity::<Value>(ECHO, &json!({ "index": index })))
        .collect();
    for echo in echoes {
        match echo.await {
            // Canceled meanwhile: the execution ends as canceled.
            Err(err) if err.is_canceled() => return Err(err.into()),
            // A failed echo counts as answered, as it always has: the
            // instance reports how many it scheduled, not how many succeeded.
            Ok(_) | Err(_) => {}
        }
    }
    Ok(json!({ "completed": count }))
}

/// The `fanout` workflow's worker. Instances whose metadata names no
/// workflow run `fanout`: `pgwake start` and the tests create them with a
/// bare [`NewInstance`](pgwake::NewInstance), as any writer may.
///
/// `_history_reader` is no longer read (the typed layer replays the history
/// each task carries); `pgwake work` still opens it for the hand-written
/// decider this replaced.
pub(crate) fn fanout_worker(
    queues: &[String],
    concurrency: usize,
    lease: Duration,
    _history_reader: Store,
) -> WorkflowWorker {
    let workflows = Arc::new(Workflows::new().register(FANOUT, fanout));
    WorkflowWorker::new(queues.to_vec(), move |mut task: WorkflowTask| {
        let workflows = workflows.clone();
        // Run inside the future, where the worker catches a panic of the
        // workflow's code.
        async move {
            name_fanout_if_unnamed(&mut task);
            workflows.execute(&task).map_err(|err| {
                tracing::error!(instance_id = %task.instance.instance_id, error = %err, "workflow task does not replay");
                err
            })
        }
    })
    .concurrency(concurrency)
    .lease(lease)
}

/// Gives `task` the metadata `{"workflow": "fanout"}` when it names no
/// workflow, keeping the other keys of an object.
fn name_fanout_if_unnamed(task: &mut WorkflowTask) {
    let named = task
        .metadata
        .as_ref()
        .and_then(|m| m.get("workflow"))
        .is_some_and(Value::is_string);
    if named {
        return;
    }
    match &mut task.metadata {
        Some(Value::Object(fields)) => {
            fields.insert("workflow".into(), json!(FANOUT));
        }
        other => *other = Some(json!({ "workflow": FANOUT })),
    }
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
