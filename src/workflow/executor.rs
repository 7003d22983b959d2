//! The replay executor: runs a workflow's code over its history, one event
//! at a time, then over the task's new events, and turns the commands the
//! code created that the history does not hold yet into the task's
//! [`WorkflowCompletion`].
//!
//! The workflow future is polled after every single event, with a no-op
//! waker (everything it can wait for is answered by an event), so of two
//! things it waits for at once, the one whose event comes first in the
//! history wins, live and on every replay alike.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::future::LocalBoxFuture;
use futures::task::noop_waker_ref;
use serde_json::{json, Value};

use super::context::WorkflowContext;
use super::error::{ReplayError, WorkflowError};
use super::retry::Attempt;
use super::state::{Applied, ReplayState};
use crate::store::{EventType, NewInstance, WorkflowCompletion, WorkflowOutcome, WorkflowTask};

/// A registered workflow, typed input and output erased to JSON.
pub(crate) type WorkflowFn = std::sync::Arc<
    dyn Fn(WorkflowContext, Value) -> LocalBoxFuture<'static, Result<Value, WorkflowError>>
        + Send
        + Sync,
>;

type Running = LocalBoxFuture<'static, Result<Value, WorkflowError>>;

/// The decision that fails the execution with `error`.
pub(crate) fn failing(error: &WorkflowError) -> WorkflowCompletion {
    WorkflowCompletion::default().finish(WorkflowOutcome::Failed(error.to_stored()))
}

/// Polls the workflow once, after waking every future that waits inside
/// it: whatever the last event answered is then polled by the combinators
/// that hold it (the top-level future is polled regardless).
fn poll_once(
    state: &RefCell<ReplayState>,
    running: &mut Running,
) -> Poll<Result<Value, WorkflowError>> {
    let parked = std::mem::take(&mut state.borrow_mut().wakers);
    for waker in parked {
        waker.wake();
    }
    let mut cx = Context::from_waker(noop_waker_ref());
    Pin::new(running).as_mut().poll(&mut cx)
}

/// How the code's return ends the execution: a canceled error after a
/// cancellation ends it as canceled; a result after
/// [`continue_as_new`](WorkflowContext::continue_as_new) continues it.
/// Also returns the result a continued execution records.
fn outcome_of(
    result: Result<Value, WorkflowError>,
    state: &ReplayState,
) -> (WorkflowOutcome, Option<Value>) {
    match result {
        Ok(value) => match &state.continue_as_new {
            Some(input) => (WorkflowOutcome::ContinueAsNew(input.clone()), Some(value)),
            None => (WorkflowOutcome::Completed(value), None),
        },
        Err(err) if state.canceled && err.is_canceled() => (WorkflowOutcome::Canceled, None),
        Err(err) => (WorkflowOutcome::Failed(err.to_stored()), None),
    }
}

/// Runs `workflow` for `task` from the beginning of its history: its
/// decision, or why the history cannot be replayed (the task must then
/// fail without being applied).
pub(crate) fn execute(
    workflow: &WorkflowFn,
    task: &WorkflowTask,
) -> Result<WorkflowCompletion, ReplayError> {
    execute_cached(workflow, task, None).map(|(decision, _)| decision)
}

/// A workflow kept running between its tasks: its state, its future, and
/// what it has seen, so that its next task applies only what is new.
pub(crate) struct Execution {
    state: Rc<RefCell<ReplayState>>,
    ctx: WorkflowContext,
    future: Running,
    /// The length of the history of the task it last ran.
    history_len: usize,
    /// The ids of that task's new events, in order.
    applied_new: Vec<String>,
}

impl Execution {
    /// Where `task`'s events pick up from this execution's last task, if
    /// they do: the history must be the one it saw, then that task's events
    /// (after the store's `WorkflowTaskStarted`), then what its decision
    /// recorded. Anything else (its decision was not applied, another
    /// worker ran the instance meanwhile) means a full replay.
    fn resume_at(&self, task: &WorkflowTask) -> Option<usize> {
        if task.instance != self.state.borrow().instance {
            return None;
        }
        let mut index = self.history_len;
        for id in &self.applied_new {
            while task.history.get(index)?.event_type == EventType::WorkflowTaskStarted {
                index += 1;
            }
            if task.history.get(index)?.event_id != *id {
                return None;
            }
            index += 1;
        }
        Some(index)
    }
}

/// [`execute`], resuming `cached` when it ran this execution's previous
/// task; also returns the execution to keep for the next task (`None` once
/// the workflow ended). A resumption that fails for any reason falls back
/// to a full replay, whose verdict stands.
pub(crate) fn execute_cached(
    workflow: &WorkflowFn,
    task: &WorkflowTask,
    cached: Option<Execution>,
) -> Result<(WorkflowCompletion, Option<Execution>), ReplayError> {
    if let Some(execution) = cached {
        if let Some(from) = execution.resume_at(task) {
            let Execution {
                state, ctx, future, ..
            } = execution;
            match run(workflow, task, state, ctx, Some(future), from) {
                Ok(done) => return Ok(done),
                Err(err) => {
                    tracing::debug!(instance_id = %task.instance.instance_id, error = %err, "cached execution does not resume; replaying the whole history");
                }
            }
        }
    }
    let state = Rc::new(RefCell::new(
        ReplayState::new(task.instance.clone()).with_recorded_patches(&task.history),
    ));
    let ctx = WorkflowContext::new(state.clone());
    run(workflow, task, state, ctx, None, 0)
}

/// Applies the events of `task` from position `from` (counting the history,
/// then the new events), polling the code after each.
fn run(
    workflow: &WorkflowFn,
    task: &WorkflowTask,
    state: Rc<RefCell<ReplayState>>,
    ctx: WorkflowContext,
    mut running: Option<Running>,
    from: usize,
) -> Result<(WorkflowCompletion, Option<Execution>), ReplayError> {
    let recorded = task.history.len();
    let mut result = None;
    let events = task.history.iter().chain(&task.new_events).enumerate();
    for (index, event) in events.skip(from) {
        // Replaying while a recorded event is left to apply after this one.
        state.borrow_mut().replaying = index + 1 < recorded;
        let applied = state.borrow_mut().apply(event)?;
        if let Applied::Started(input) = applied {
            if running.is_none() {
                running = Some(workflow(ctx.clone(), input));
            }
        }
        let Some(future) = running.as_mut() else {
            continue;
        };
        let polled = poll_once(&state, future);
        if let Some(err) = state.borrow_mut().error.take() {
            return Err(err);
        }
        if let Poll::Ready(returned) = polled {
            if let Some(next) = task.history.get(index + 1) {
                return Err(ReplayError::ReturnedEarly {
                    sequence_id: next.sequence_id,
                    recorded: format!("{:?}", next.event_type),
                });
            }
            result = Some(returned);
            break;
        }
    }
    let Some(mut future) = running else {
        return Err(ReplayError::Inconsistent(
            "no WorkflowExecutionStarted event: the workflow never started".into(),
        ));
    };
    state.borrow_mut().replaying = false;
    // Side effects the history does not hold (the code changed, or they
    // were reached right at its end) are computed now that replay is over.
    while result.is_none() && state.borrow_mut().compute_unmatched_side_effects() {
        let polled = poll_once(&state, &mut future);
        if let Some(err) = state.borrow_mut().error.take() {
            return Err(err);
        }
        if let Poll::Ready(returned) = polled {
            result = Some(returned);
        }
    }
    let decision = {
        let state = state.borrow();
        state.check_all_matched()?;
        let mut decision = completion(&state, task, result.is_some());
        if let Some(returned) = result {
            let (outcome, continued_result) = outcome_of(returned, &state);
            decision.outcome = Some(outcome);
            decision.continued_result = continued_result;
        }
        decision
    };
    let execution = decision.outcome.is_none().then(|| Execution {
        state,
        ctx,
        future,
        history_len: task.history.len(),
        applied_new: task.new_events.iter().map(|e| e.event_id.clone()).collect(),
    });
    Ok((decision, execution))
}

/// A bounded, least-recently-used set of running executions by instance
/// id: what a worker keeps between the tasks of the same workflows.
pub(crate) struct ExecutionCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, (u64, Execution)>,
}

impl ExecutionCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            entries: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes the execution of `instance_id` out (it is put back after its
    /// task, so a panic in the workflow's code leaves nothing half-run).
    pub(crate) fn take(&mut self, instance_id: &str) -> Option<Execution> {
        self.entries
            .remove(instance_id)
            .map(|(_, execution)| execution)
    }

    /// Keeps `execution` for the next task of `instance_id`, evicting the
    /// least recently used one when full.
    pub(crate) fn put(&mut self, instance_id: &str, execution: Execution) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(instance_id) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (used, _))| *used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.tick += 1;
        self.entries
            .insert(instance_id.to_string(), (self.tick, execution));
    }
}

/// The commands the history does not hold yet, in the order the code
/// created them within each kind (the order the store numbers them in).
/// When the execution ends, activities and timers the code started but did
/// not wait for are left out: nothing would ever read their answers.
/// Sub-workflows, signals and cancellation requests go out either way:
/// they concern other instances.
fn completion(state: &ReplayState, task: &WorkflowTask, ends: bool) -> WorkflowCompletion {
    // Only what the history does not hold yet is looked at: a step costs
    // the same with 10 commands behind it as with 10,000.
    let mut decision = WorkflowCompletion::default();
    if !ends {
        for activity in state.unrecorded_activities() {
            decision = decision.schedule_activity(
                &activity.name,
                Attempt {
                    input: activity.input.clone(),
                    number: activity.attempt,
                    timeout: activity.timeout,
                }
                .scheduled_input(),
                activity.queue.clone(),
            );
        }
        for timer in state.unrecorded_timers() {
            decision = decision.start_timer(timer.delay, json!(null));
        }
    }
    decision.canceled_timers = state
        .owed_timer_cancels()
        .filter_map(|t| t.schedule_event_id())
        .collect();
    for sub in state.unrecorded_sub_workflows() {
        let queue = sub.queue.clone().unwrap_or_else(|| task.queue.clone());
        // Runs inside the parent's `workflow_task` span (the worker's), so
        // the child's spans join the parent's trace.
        let mut metadata = json!({ "workflow": sub.workflow });
        crate::trace_context::inject_current(&mut metadata);
        let child = NewInstance::new(sub.instance_id.clone(), queue)
            .with_input(sub.input.clone())
            .with_metadata(metadata);
        decision = decision.start_sub_workflow(child);
    }
    decision.history_events = state
        .unrecorded_side_effects()
        .map(|value| (EventType::SideEffectResult, value.clone()))
        .collect();
    for sub in state.owed_sub_workflow_cancels() {
        decision = decision.cancel(&sub.instance_id);
        decision.history_events.push((
            EventType::SubWorkflowCancellationRequested,
            json!({
                "instance_id": sub.instance_id,
                "schedule_event_id": sub.schedule_event_id(),
            }),
        ));
    }
    for change_id in &state.new_patches {
        decision
            .history_events
            .push((EventType::Patched, json!({ "change_id": change_id })));
    }
    for signal in state.unreported_signals() {
        decision = decision.signal(&signal.instance_id, &signal.name, signal.payload.clone());
    }
    decision
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;
    use crate::store::{Event, InstanceRef, Lease, Queue, WorkerId};
    use crate::workflow::Workflows;

    /// The signup workflow's shape: a signal or a timer, whichever first.
    fn race() -> WorkflowFn {
        let workflows =
            Workflows::new().register("race", |ctx: WorkflowContext, _: ()| async move {
                let mut signal = ctx.signal_channel::<String>("go");
                let mut timer = ctx.timer(Duration::from_secs(5));
                let winner = futures::select_biased! {
                    by = signal.recv() => by?,
                    _ = timer => "timer".to_string(),
                };
                timer.cancel();
                Ok::<_, WorkflowError>(winner)
            });
        workflows.registered["race"].clone()
    }

    fn event(sequence_id: i64, event_type: EventType, schedule: i64, attributes: Value) -> Event {
        Event {
            event_id: format!("ev-{sequence_id}"),
            sequence_id,
            event_type,
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(sequence_id as u64),
            schedule_event_id: schedule,
            visible_at: None,
            attributes,
        }
    }

    fn task(history: Vec<Event>, new_events: Vec<Event>) -> WorkflowTask {
        WorkflowTask {
            row_id: 1,
            instance: InstanceRef {
                instance_id: "i".into(),
                execution_id: "e".into(),
            },
            queue: Queue::default(),
            metadata: Some(json!({"workflow": "race"})),
            parent: None,
            last_sequence_id: history.last().map_or(0, |e| e.sequence_id),
            new_events,
            history,
            lease: Lease::new(WorkerId::unique("test"), SystemTime::now(), 1),
        }
    }

    fn started() -> Vec<Event> {
        vec![
            event(1, EventType::WorkflowExecutionStarted, 0, json!(null)),
            event(2, EventType::TimerScheduled, 0, json!(null)),
        ]
    }

    #[test]
    fn the_first_task_starts_the_timer_and_waits() {
        let start = event(1, EventType::WorkflowExecutionStarted, 0, json!(null));
        let decision = execute(&race(), &task(vec![], vec![start])).unwrap();
        assert_eq!(decision.timers.len(), 1);
        assert!(decision.outcome.is_none());
    }

    #[test]
    fn whichever_event_comes_first_in_the_history_wins() {
        let signal = event(
            3,
            EventType::SignalReceived,
            0,
            json!({"name": "go", "payload": "signal"}),
        );
        let fired = event(4, EventType::TimerFired, 2, json!(null));
        // Both arrive in one task: the signal is first, so it wins and the
        // timer (fired meanwhile) is canceled.
        let decision = execute(
            &race(),
            &task(started(), vec![signal.clone(), fired.clone()]),
        )
        .unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::Completed(json!("signal")))
        );
        // The other order: the timer wins, though the signal is there too.
        let (mut fired, mut signal) = (fired, signal);
        fired.sequence_id = 3;
        signal.sequence_id = 4;
        let decision = execute(&race(), &task(started(), vec![fired, signal])).unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::Completed(json!("timer")))
        );
        assert!(decision.canceled_timers.is_empty());
    }

    #[test]
    fn a_won_signal_cancels_the_scheduled_timer() {
        let signal = event(
            3,
            EventType::SignalReceived,
            0,
            json!({"name": "go", "payload": "x"}),
        );
        let decision = execute(&race(), &task(started(), vec![signal])).unwrap();
        assert_eq!(decision.canceled_timers, [2]);
    }

    #[test]
    fn a_history_the_code_does_not_reach_is_non_determinism() {
        let mut history = started();
        history.push(event(
            3,
            EventType::ActivityScheduled,
            0,
            json!({"name": "charge"}),
        ));
        let signal = event(
            4,
            EventType::SignalReceived,
            0,
            json!({"name": "go", "payload": "x"}),
        );
        let err = execute(&race(), &task(history, vec![signal])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "non-determinism: history has ActivityScheduled 'charge' at #3, the code scheduled nothing"
        );
    }

    #[test]
    fn a_cancellation_ends_the_execution_without_new_commands() {
        let start = event(1, EventType::WorkflowExecutionStarted, 0, json!(null));
        let cancel = event(2, EventType::WorkflowExecutionCanceled, 0, json!(null));
        let decision = execute(&race(), &task(vec![], vec![start, cancel])).unwrap();
        assert_eq!(decision.outcome, Some(WorkflowOutcome::Canceled));
        assert!(decision.timers.is_empty());
    }

    #[test]
    fn no_start_event_is_an_inconsistent_history() {
        let signal = event(
            1,
            EventType::SignalReceived,
            0,
            json!({"name": "go", "payload": "x"}),
        );
        assert!(matches!(
            execute(&race(), &task(vec![], vec![signal])),
            Err(ReplayError::Inconsistent(_))
        ));
    }

    fn registered(name: &str, workflows: Workflows) -> WorkflowFn {
        workflows.registered[name].clone()
    }

    fn start() -> Event {
        event(1, EventType::WorkflowExecutionStarted, 0, json!(null))
    }

    /// A parent that waits for one child and returns its result doubled.
    fn parent() -> WorkflowFn {
        registered(
            "parent",
            Workflows::new().register("parent", |ctx: WorkflowContext, _: ()| async move {
                let child: u32 = ctx.sub_workflow("child", &21).await?;
                Ok::<_, WorkflowError>(child * 2)
            }),
        )
    }

    fn child_scheduled(sequence_id: i64, name: &str, instance_id: &str) -> Event {
        event(
            sequence_id,
            EventType::SubWorkflowScheduled,
            0,
            json!({"instance_id": instance_id, "queue": "default", "input": 21,
                   "metadata": {"workflow": name}}),
        )
    }

    #[test]
    fn a_sub_workflow_starts_with_its_name_and_a_derived_id_and_returns_its_result() {
        let decision = execute(&parent(), &task(vec![], vec![start()])).unwrap();
        assert_eq!(decision.sub_workflows.len(), 1);
        let child = &decision.sub_workflows[0].instance;
        assert_eq!(child.metadata, Some(json!({"workflow": "child"})));
        assert_eq!(child.input, json!(21));
        assert_eq!(child.instance_id.len(), 36);
        // The same id on every run of the same execution.
        let again = execute(&parent(), &task(vec![], vec![start()])).unwrap();
        assert_eq!(
            again.sub_workflows[0].instance.instance_id,
            child.instance_id
        );

        let history = vec![start(), child_scheduled(2, "child", &child.instance_id)];
        let done = event(3, EventType::SubWorkflowCompleted, 2, json!({"result": 21}));
        let decision = execute(&parent(), &task(history, vec![done])).unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::Completed(json!(42)))
        );
        assert!(decision.sub_workflows.is_empty());
    }

    #[test]
    fn a_different_child_is_non_determinism() {
        let history = vec![start(), child_scheduled(2, "other", "x")];
        let done = event(3, EventType::SubWorkflowCompleted, 2, json!({"result": 1}));
        let err = execute(&parent(), &task(history, vec![done])).unwrap_err();
        assert!(
            matches!(err, ReplayError::NonDeterminism { sequence_id: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_canceled_parent_asks_its_running_child_to_cancel_and_waits_for_its_end() {
        let first = execute(&parent(), &task(vec![], vec![start()])).unwrap();
        let id = first.sub_workflows[0].instance.instance_id.clone();
        let history = vec![start(), child_scheduled(2, "child", &id)];
        let cancel = event(3, EventType::WorkflowExecutionCanceled, 0, json!(null));
        let decision = execute(&parent(), &task(history.clone(), vec![cancel.clone()])).unwrap();
        assert_eq!(decision.cancellations, std::slice::from_ref(&id));
        assert_eq!(
            decision.history_events,
            [(
                EventType::SubWorkflowCancellationRequested,
                json!({"instance_id": id, "schedule_event_id": 2})
            )]
        );
        assert!(decision.outcome.is_none());

        // The request is recorded; the child ends canceled: so does the parent.
        let mut history = history;
        history.push(cancel);
        history.push(event(
            4,
            EventType::SubWorkflowCancellationRequested,
            0,
            json!({"instance_id": id, "schedule_event_id": 2}),
        ));
        let failed = event(
            5,
            EventType::SubWorkflowFailed,
            2,
            json!({"error": "canceled"}),
        );
        let decision = execute(&parent(), &task(history, vec![failed])).unwrap();
        assert!(decision.cancellations.is_empty());
        assert_eq!(decision.outcome, Some(WorkflowOutcome::Canceled));
    }

    #[test]
    fn a_canceled_workflow_runs_its_cleanup_and_cancels_its_timer() {
        let cleanup = registered(
            "booking",
            Workflows::new().register("booking", |ctx: WorkflowContext, _: ()| async move {
                if let Err(err) = ctx.sleep(Duration::from_secs(60)).await {
                    let _: () = ctx.activity("release", &()).await?;
                    return Err(err);
                }
                Ok::<_, WorkflowError>(())
            }),
        );
        let history = vec![start(), event(2, EventType::TimerScheduled, 0, json!(null))];
        let cancel = event(3, EventType::WorkflowExecutionCanceled, 0, json!(null));
        let decision = execute(&cleanup, &task(history.clone(), vec![cancel.clone()])).unwrap();
        assert_eq!(decision.canceled_timers, [2]);
        assert_eq!(decision.activities[0].name, "release");
        assert!(decision.outcome.is_none());

        let mut history = history;
        history.extend([
            cancel,
            event(
                4,
                EventType::ActivityScheduled,
                0,
                json!({"name": "release"}),
            ),
            event(5, EventType::TimerCanceled, 2, json!(null)),
        ]);
        let released = event(6, EventType::ActivityCompleted, 4, json!({"result": null}));
        let decision = execute(&cleanup, &task(history, vec![released])).unwrap();
        assert_eq!(decision.outcome, Some(WorkflowOutcome::Canceled));
        assert!(decision.canceled_timers.is_empty());
    }

    #[test]
    fn a_signal_to_another_instance_is_sent_once_and_reports_its_delivery() {
        let sender = registered(
            "sender",
            Workflows::new().register("sender", |ctx: WorkflowContext, _: ()| async move {
                match ctx.signal_workflow("other", "ping", &1).await {
                    Ok(()) => Ok::<_, WorkflowError>("sent".to_string()),
                    Err(err) => Ok(err.kind().to_string()),
                }
            }),
        );
        let decision = execute(&sender, &task(vec![], vec![start()])).unwrap();
        assert_eq!(decision.signals.len(), 1);
        assert_eq!(decision.signals[0].instance_id, "other");
        assert!(decision.outcome.is_none());

        for (report, expected) in [
            (EventType::SignalSent, "sent"),
            (EventType::SignalNotDelivered, "not_found"),
        ] {
            let attributes = json!({"instance_id": "other", "name": "ping", "reason": "gone"});
            let new = vec![event(2, report, 0, attributes)];
            let decision = execute(&sender, &task(vec![start()], new)).unwrap();
            assert!(decision.signals.is_empty(), "sent again on replay");
            assert_eq!(
                decision.outcome,
                Some(WorkflowOutcome::Completed(json!(expected)))
            );
        }
    }

    fn patched_workflow() -> WorkflowFn {
        registered(
            "order",
            Workflows::new().register("order", |ctx: WorkflowContext, _: ()| async move {
                let name = if ctx.patched("v2") { "new" } else { "old" };
                let _: () = ctx.activity(name, &()).await?;
                Ok::<_, WorkflowError>(name.to_string())
            }),
        )
    }

    #[test]
    fn patched_takes_the_new_branch_live_and_the_old_one_replaying_an_old_history() {
        let decision = execute(&patched_workflow(), &task(vec![], vec![start()])).unwrap();
        assert_eq!(decision.activities[0].name, "new");
        assert_eq!(
            decision.history_events,
            [(EventType::Patched, json!({"change_id": "v2"}))]
        );

        let old = vec![
            start(),
            event(2, EventType::ActivityScheduled, 0, json!({"name": "old"})),
        ];
        let done = event(3, EventType::ActivityCompleted, 2, json!({"result": null}));
        let decision = execute(&patched_workflow(), &task(old, vec![done.clone()])).unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::Completed(json!("old")))
        );
        assert!(decision.history_events.is_empty());

        let new = vec![
            start(),
            event(2, EventType::ActivityScheduled, 0, json!({"name": "new"})),
            event(3, EventType::Patched, 0, json!({"change_id": "v2"})),
        ];
        let mut done = done;
        done.sequence_id = 4;
        done.schedule_event_id = 2;
        let decision = execute(&patched_workflow(), &task(new, vec![done])).unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::Completed(json!("new")))
        );
        assert!(decision.history_events.is_empty());
    }

    #[test]
    fn continue_as_new_ends_with_the_next_input_and_records_the_result() {
        let counter = registered(
            "counter",
            Workflows::new().register("counter", |ctx: WorkflowContext, run: u32| async move {
                if run < 3 {
                    ctx.continue_as_new(&(run + 1))?;
                }
                Ok::<_, WorkflowError>(run)
            }),
        );
        let first = event(1, EventType::WorkflowExecutionStarted, 0, json!(1));
        let decision = execute(&counter, &task(vec![], vec![first])).unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::ContinueAsNew(json!(2)))
        );
        assert_eq!(decision.continued_result, Some(json!(1)));
        let last = event(1, EventType::WorkflowExecutionStarted, 0, json!(3));
        let decision = execute(&counter, &task(vec![], vec![last])).unwrap();
        assert_eq!(decision.outcome, Some(WorkflowOutcome::Completed(json!(3))));
    }

    #[test]
    fn uuids_are_version_4_and_repeat_on_replay() {
        let ids = registered(
            "ids",
            Workflows::new().register("ids", |ctx: WorkflowContext, _: ()| async move {
                Ok::<_, WorkflowError>((ctx.uuid(), ctx.uuid()))
            }),
        );
        let run = || match execute(&ids, &task(vec![], vec![start()])).unwrap().outcome {
            Some(WorkflowOutcome::Completed(value)) => value,
            other => panic!("{other:?}"),
        };
        let (a, b) = (run(), run());
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        let id = a[0].as_str().unwrap();
        assert_eq!(id.as_bytes()[14], b'4');
        assert!(matches!(id.as_bytes()[19], b'8' | b'9' | b'a' | b'b'));
    }

    #[test]
    fn a_kept_execution_resumes_its_next_task_and_replays_when_the_task_does_not_follow_it() {
        let starts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = starts.clone();
        let workflow: WorkflowFn = std::sync::Arc::new(move |ctx: WorkflowContext, _: Value| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                let a: u32 = ctx.activity("a", &()).await?;
                let b: u32 = ctx.activity("b", &()).await?;
                Ok(json!(a + b))
            }) as Running
        });
        // Task 1 runs the code, keeping the execution.
        let (first, kept) = execute_cached(&workflow, &task(vec![], vec![start()]), None).unwrap();
        assert_eq!(first.activities[0].name, "a");
        let kept = kept.expect("a running execution is kept");
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 1);

        // Task 2 follows it: the store moved task 1's event (after its own
        // WorkflowTaskStarted) and recorded the decision.
        let mut start_moved = start();
        start_moved.sequence_id = 2;
        let history = vec![
            event(1, EventType::WorkflowTaskStarted, 0, json!(null)),
            start_moved,
            event(3, EventType::ActivityScheduled, 0, json!({"name": "a"})),
        ];
        let answer = event(4, EventType::ActivityCompleted, 3, json!({"result": 1}));
        let second = task(history.clone(), vec![answer.clone()]);
        let (decision, kept) = execute_cached(&workflow, &second, Some(kept)).unwrap();
        assert_eq!(decision.activities[0].name, "b");
        assert_eq!(
            starts.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "resumed, not replayed"
        );

        // A task that does not follow the kept execution (its decision was
        // never recorded): the whole history is replayed instead.
        let (decision, _) = execute_cached(&workflow, &task(vec![], vec![start()]), kept).unwrap();
        assert_eq!(decision.activities[0].name, "a");
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 2);

        // The resumed decision is the one a full replay makes.
        let replayed = execute(&workflow, &second).unwrap();
        assert_eq!(replayed.activities[0].name, "b");
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_executions() {
        let workflow = race();
        let kept = || {
            execute_cached(&workflow, &task(vec![], vec![start()]), None)
                .unwrap()
                .1
                .unwrap()
        };
        let mut cache = ExecutionCache::new(2);
        cache.put("a", kept());
        cache.put("b", kept());
        assert!(cache.take("a").is_some());
        cache.put("a", kept());
        cache.put("c", kept());
        assert_eq!(cache.len(), 2);
        assert!(cache.take("b").is_none(), "the least recently used goes");
        assert!(cache.take("a").is_some() && cache.take("c").is_some());
        let mut none = ExecutionCache::new(0);
        none.put("a", kept());
        assert_eq!(none.len(), 0);
    }

    #[test]
    fn join_all_of_many_activities_sees_every_answer() {
        // join_all of more than 30 futures polls only the ones that woke it.
        let fan_out = registered(
            "fan",
            Workflows::new().register("fan", |ctx: WorkflowContext, n: u64| async move {
                let calls = (0..n).map(|i| ctx.activity::<u64>("a", &i));
                let results = futures::future::join_all(calls).await;
                let total = results.into_iter().sum::<Result<u64, _>>()?;
                Ok::<_, WorkflowError>(total)
            }),
        );
        let input = event(1, EventType::WorkflowExecutionStarted, 0, json!(100));
        let decision = execute(&fan_out, &task(vec![], vec![input.clone()])).unwrap();
        assert_eq!(decision.activities.len(), 100);
        let mut history = vec![input];
        history.extend(
            (0..100).map(|i| event(2 + i, EventType::ActivityScheduled, 0, json!({"name": "a"}))),
        );
        let answers = (0..100)
            .map(|i| {
                event(
                    102 + i,
                    EventType::ActivityCompleted,
                    2 + i,
                    json!({"result": i}),
                )
            })
            .collect();
        let decision = execute(&fan_out, &task(history, answers)).unwrap();
        assert_eq!(
            decision.outcome,
            Some(WorkflowOutcome::Completed(json!(4950)))
        );
    }
}
