//! Scheduling an activity and receiving its result.

use std::time::Duration;

use serde_json::Value;

use super::{invalid, InvalidTransition, State};
use crate::store::Queue;
use crate::workflow::error::ActivityError;
use crate::workflow::retry::RetryPolicy;

/// What follows a failed attempt that is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// The backoff timer (its index among the timers) is running.
    Waiting(usize),
    /// The next attempt (its index among the activities) is scheduled.
    Attempted(usize),
}

/// An activity the code scheduled.
#[derive(Debug)]
pub(crate) struct ActivityCommand {
    pub(crate) name: String,
    pub(crate) input: Value,
    pub(crate) queue: Option<Queue>,
    pub(crate) retry: RetryPolicy,
    /// How long each attempt may run once started.
    pub(crate) timeout: Option<Duration>,
    /// Which attempt this is (1, 2, ...).
    pub(crate) attempt: u32,
    /// Set when this attempt failed and is retried: the workflow reads the
    /// result at the end of the chain instead.
    pub(crate) retried: Option<Retry>,
    state: State,
    schedule_event_id: Option<i64>,
    result: Option<Result<Value, ActivityError>>,
}

impl ActivityCommand {
    pub(crate) fn new(name: String, input: Value, queue: Option<Queue>) -> Self {
        Self {
            name,
            input,
            queue,
            retry: RetryPolicy::default(),
            timeout: None,
            attempt: 1,
            retried: None,
            state: State::Pending,
            schedule_event_id: None,
            result: None,
        }
    }

    /// The same command with `retry` as its policy.
    pub(crate) fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The same command with a start-to-close timeout for each attempt.
    pub(crate) fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command of the attempt after this one: same name, input,
    /// queue and policy.
    pub(crate) fn next_attempt(&self) -> Self {
        let mut next = Self::new(self.name.clone(), self.input.clone(), self.queue.clone())
            .with_retry(self.retry.clone())
            .with_timeout(self.timeout);
        next.attempt = self.attempt + 1;
        next
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn schedule_event_id(&self) -> Option<i64> {
        self.schedule_event_id
    }

    /// Its `ActivityScheduled` event is at `sequence_id`.
    pub(crate) fn commit(&mut self, sequence_id: i64) -> Result<(), InvalidTransition> {
        if self.state != State::Pending {
            return Err(invalid("activity", "ActivityScheduled", self.state));
        }
        self.state = State::Committed;
        self.schedule_event_id = Some(sequence_id);
        Ok(())
    }

    /// Its `ActivityCompleted` or `ActivityFailed` arrived. One the
    /// workflow stopped waiting for (canceled) keeps its canceled result.
    pub(crate) fn resolve(
        &mut self,
        result: Result<Value, ActivityError>,
    ) -> Result<(), InvalidTransition> {
        if self.state != State::Committed {
            return Err(invalid("activity", "an activity result", self.state));
        }
        self.state = State::Done;
        self.result.get_or_insert(result);
        Ok(())
    }

    /// The workflow was canceled: its future gives a canceled error now.
    /// One never scheduled is dropped; a scheduled one runs on (an activity
    /// cannot be called back), and its answer, when it comes, is ignored.
    pub(crate) fn cancel(&mut self) {
        let canceled = || Err(ActivityError::canceled("the workflow was canceled"));
        match self.state {
            State::Pending => {
                self.state = State::Canceled;
                self.result = Some(canceled());
            }
            State::Committed if self.result.is_none() => self.result = Some(canceled()),
            _ => {}
        }
    }

    pub(crate) fn result(&self) -> Option<&Result<Value, ActivityError>> {
        self.result.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn charge() -> ActivityCommand {
        ActivityCommand::new("charge".into(), json!(500), None)
    }

    #[test]
    fn a_new_activity_is_pending_without_result() {
        let command = charge();
        assert_eq!(command.state(), State::Pending);
        assert_eq!(command.schedule_event_id(), None);
        assert!(command.result().is_none());
    }

    #[test]
    fn commit_then_result_makes_it_done() {
        let mut command = charge();
        command.commit(4).unwrap();
        assert_eq!(command.state(), State::Committed);
        assert_eq!(command.schedule_event_id(), Some(4));
        command.resolve(Ok(json!("ok"))).unwrap();
        assert_eq!(command.state(), State::Done);
        assert_eq!(command.result(), Some(&Ok(json!("ok"))));
    }

    #[test]
    fn a_failure_keeps_its_kind() {
        let mut command = charge();
        command.commit(4).unwrap();
        command
            .resolve(Err(ActivityError::new("declined", "no")))
            .unwrap();
        assert_eq!(
            command.result().unwrap().as_ref().unwrap_err().kind(),
            "declined"
        );
    }

    #[test]
    fn a_result_before_the_commit_is_refused() {
        let mut command = charge();
        let err = command.resolve(Ok(json!(1))).unwrap_err();
        assert_eq!(err.state, State::Pending);
    }

    #[test]
    fn canceling_drops_an_unscheduled_one_and_outlives_a_scheduled_ones_answer() {
        let mut dropped = charge();
        dropped.cancel();
        assert_eq!(dropped.state(), State::Canceled);
        assert!(dropped
            .result()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .is_canceled());
        assert!(dropped.commit(4).is_err());

        let mut running = charge();
        running.commit(4).unwrap();
        running.cancel();
        assert!(running
            .result()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .is_canceled());
        running.resolve(Ok(json!("late"))).unwrap();
        assert_eq!(running.state(), State::Done);
        assert!(running
            .result()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .is_canceled());

        let mut done = charge();
        done.commit(4).unwrap();
        done.resolve(Ok(json!(1))).unwrap();
        done.cancel();
        assert_eq!(done.result(), Some(&Ok(json!(1))));
    }

    #[test]
    fn committing_twice_or_resolving_twice_is_refused() {
        let mut command = charge();
        command.commit(4).unwrap();
        assert!(command.commit(5).is_err());
        command.resolve(Ok(json!(1))).unwrap();
        assert!(command.resolve(Ok(json!(2))).is_err());
        assert_eq!(command.result(), Some(&Ok(json!(1))));
    }
}
