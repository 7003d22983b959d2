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
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::future::LocalBoxFuture;
use futures::task::noop_waker_ref;
use serde_json::{json, Value};

use super::context::WorkflowContext;
use super::error::{ReplayError, WorkflowError};
use super::retry::input_for_attempt;
use super::state::{Applied, ReplayState};
use crate::store::{EventType, WorkflowCompletion, WorkflowOutcome, WorkflowTask};

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

fn poll_once(running: &mut Running) -> Poll<Result<Value, WorkflowError>> {
    let mut cx = Context::from_waker(noop_waker_ref());
    Pin::new(running).as_mut().poll(&mut cx)
}

fn outcome_of(result: Result<Value, WorkflowError>) -> WorkflowOutcome {
    match result {
        Ok(value) => WorkflowOutcome::Completed(value),
        Err(err) => WorkflowOutcome::Failed(err.to_stored()),
    }
}

/// Runs `workflow` for `task`: its decision, or why the history cannot be
/// replayed (the task must then fail without being applied).
pub(crate) fn execute(
    workflow: &WorkflowFn,
    task: &WorkflowTask,
) -> Result<WorkflowCompletion, ReplayError> {
    let state = Rc::new(RefCell::new(ReplayState::new(task.instance.clone())));
    let ctx = WorkflowContext::new(state.clone());
    let recorded = task.history.len();
    let mut running: Option<Running> = None;
    let mut outcome = None;
    for (index, event) in task.history.iter().chain(&task.new_events).enumerate() {
        // Replaying while a recorded event is left to apply after this one.
        state.borrow_mut().replaying = index + 1 < recorded;
        let applied = state.borrow_mut().apply(event)?;
        match applied {
            Applied::Started(input) if running.is_none() => {
                running = Some(workflow(ctx.clone(), input));
            }
            Applied::Canceled => {
                outcome = Some(WorkflowOutcome::Canceled);
                break;
            }
            _ => {}
        }
        let Some(future) = running.as_mut() else {
            continue;
        };
        let polled = poll_once(future);
        if let Some(err) = state.borrow_mut().error.take() {
            return Err(err);
        }
        if let Poll::Ready(result) = polled {
            if let Some(next) = task.history.get(index + 1) {
                return Err(ReplayError::ReturnedEarly {
                    sequence_id: next.sequence_id,
                    recorded: format!("{:?}", next.event_type),
                });
            }
            outcome = Some(outcome_of(result));
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
    while outcome.is_none() && state.borrow_mut().compute_unmatched_side_effects() {
        let polled = poll_once(&mut future);
        if let Some(err) = state.borrow_mut().error.take() {
            return Err(err);
        }
        if let Poll::Ready(result) = polled {
            outcome = Some(outcome_of(result));
        }
    }
    drop(future);
    let state = state.borrow();
    state.check_all_matched()?;
    Ok(completion(&state, outcome))
}

/// The commands the history does not hold yet, in the order the code
/// created them within each kind (the order the store numbers them in).
/// When the execution ends, activities and timers the code started but did
/// not wait for are left out: nothing would ever read their answers.
fn completion(state: &ReplayState, outcome: Option<WorkflowOutcome>) -> WorkflowCompletion {
    use super::command::State;
    let mut decision = WorkflowCompletion::default();
    let goes_on = outcome.is_none();
    for activity in state
        .activities
        .iter()
        .filter(|a| goes_on && a.state() == State::Pending)
    {
        decision = decision.schedule_activity(
            &activity.name,
            input_for_attempt(activity.input.clone(), activity.attempt),
            activity.queue.clone(),
        );
    }
    for timer in state
        .timers
        .iter()
        .filter(|t| goes_on && t.state() == State::Pending)
    {
        decision = decision.start_timer(timer.delay, json!(null));
    }
    decision.canceled_timers = state
        .timers
        .iter()
        .filter(|t| t.owes_cancel())
        .filter_map(|t| t.schedule_event_id())
        .collect();
    decision.history_events = state
        .side_effects
        .iter()
        .filter(|s| s.state() == State::Pending)
        .filter_map(|s| s.value().cloned())
        .map(|value| (EventType::SideEffectResult, value))
        .collect();
    decision.outcome = outcome;
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
}
