//! Starting a sub-workflow, asking it to cancel, and receiving its result.

use serde_json::Value;

use super::{invalid, InvalidTransition, State};
use crate::store::Queue;
use crate::workflow::error::WorkflowError;

/// Where the parent's request to cancel a sub-workflow stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelRequest {
    /// Not asked for.
    None,
    /// Asked for by the code; not in the history yet.
    Owed,
    /// Recorded (`SubWorkflowCancellationRequested`).
    Recorded,
}

/// A sub-workflow the code started.
#[derive(Debug)]
pub(crate) struct SubWorkflowCommand {
    /// The registered name of the child's workflow.
    pub(crate) workflow: String,
    pub(crate) instance_id: String,
    pub(crate) input: Value,
    pub(crate) queue: Option<Queue>,
    state: State,
    schedule_event_id: Option<i64>,
    cancel: CancelRequest,
    result: Option<Result<Value, WorkflowError>>,
}

impl SubWorkflowCommand {
    pub(crate) fn new(
        workflow: String,
        instance_id: String,
        input: Value,
        queue: Option<Queue>,
    ) -> Self {
        Self {
            workflow,
            instance_id,
            input,
            queue,
            state: State::Pending,
            schedule_event_id: None,
            cancel: CancelRequest::None,
            result: None,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn schedule_event_id(&self) -> Option<i64> {
        self.schedule_event_id
    }

    /// Its `SubWorkflowScheduled` event is at `sequence_id`.
    pub(crate) fn commit(&mut self, sequence_id: i64) -> Result<(), InvalidTransition> {
        if self.state != State::Pending {
            return Err(invalid("sub-workflow", "SubWorkflowScheduled", self.state));
        }
        self.state = State::Committed;
        self.schedule_event_id = Some(sequence_id);
        Ok(())
    }

    /// Its `SubWorkflowCompleted` or `SubWorkflowFailed` arrived.
    pub(crate) fn resolve(
        &mut self,
        result: Result<Value, WorkflowError>,
    ) -> Result<(), InvalidTransition> {
        if self.state != State::Committed {
            return Err(invalid("sub-workflow", "a sub-workflow result", self.state));
        }
        self.state = State::Done;
        self.result = Some(result);
        Ok(())
    }

    /// The code asks it to cancel. One never started is dropped (its
    /// future gives a canceled error); a running one is owed a cancel
    /// request, and its future still waits for the child's end, which the
    /// child decides (it may clean up, or even complete).
    /// Returns whether a cancel request is now owed.
    pub(crate) fn cancel(&mut self) -> bool {
        match self.state {
            State::Pending => {
                self.state = State::Canceled;
                self.result = Some(Err(WorkflowError::canceled(
                    "the sub-workflow was canceled before it started",
                )));
                false
            }
            State::Committed if self.cancel == CancelRequest::None => {
                self.cancel = CancelRequest::Owed;
                true
            }
            _ => false,
        }
    }

    /// Whether a cancel request is owed: asked for, not recorded, and the
    /// child not known to have ended.
    pub(crate) fn owes_cancel(&self) -> bool {
        self.cancel == CancelRequest::Owed && self.state == State::Committed
    }

    /// Its `SubWorkflowCancellationRequested` event arrived.
    pub(crate) fn commit_cancel(&mut self) -> Result<(), InvalidTransition> {
        if self.cancel != CancelRequest::Owed {
            return Err(invalid(
                "sub-workflow",
                "SubWorkflowCancellationRequested",
                self.state,
            ));
        }
        self.cancel = CancelRequest::Recorded;
        Ok(())
    }

    pub(crate) fn result(&self) -> Option<&Result<Value, WorkflowError>> {
        self.result.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn child() -> SubWorkflowCommand {
        SubWorkflowCommand::new("ship".into(), "order-1-ship".into(), json!(1), None)
    }

    #[test]
    fn commit_then_result_makes_it_done() {
        let mut c = child();
        c.commit(5).unwrap();
        assert_eq!(c.schedule_event_id(), Some(5));
        c.resolve(Ok(json!(2))).unwrap();
        assert_eq!(c.state(), State::Done);
        assert_eq!(c.result(), Some(&Ok(json!(2))));
    }

    #[test]
    fn a_result_before_the_commit_or_twice_is_refused() {
        let mut c = child();
        assert!(c.resolve(Ok(json!(1))).is_err());
        c.commit(5).unwrap();
        assert!(c.commit(6).is_err());
        c.resolve(Ok(json!(1))).unwrap();
        assert!(c.resolve(Ok(json!(2))).is_err());
    }

    #[test]
    fn canceling_one_never_started_drops_it_with_a_canceled_result() {
        let mut c = child();
        c.cancel();
        assert_eq!(c.state(), State::Canceled);
        assert!(!c.owes_cancel());
        assert!(c.result().unwrap().as_ref().unwrap_err().is_canceled());
        assert!(c.commit(5).is_err());
    }

    #[test]
    fn canceling_a_running_one_owes_a_request_and_waits_for_its_end() {
        let mut c = child();
        c.commit(5).unwrap();
        c.cancel();
        c.cancel();
        assert!(c.owes_cancel());
        assert!(c.result().is_none());
        c.commit_cancel().unwrap();
        assert!(!c.owes_cancel());
        assert!(c.commit_cancel().is_err());
        c.resolve(Ok(json!(3))).unwrap();
        assert_eq!(c.result(), Some(&Ok(json!(3))));
    }

    #[test]
    fn a_request_recorded_that_the_code_never_made_is_refused() {
        let mut c = child();
        c.commit(5).unwrap();
        assert!(c.commit_cancel().is_err());
    }

    #[test]
    fn canceling_one_that_ended_owes_nothing() {
        let mut c = child();
        c.commit(5).unwrap();
        c.resolve(Ok(json!(3))).unwrap();
        c.cancel();
        assert!(!c.owes_cancel());
    }
}
