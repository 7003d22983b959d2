//! Starting a timer, its firing, and its cancellation.

use std::time::Duration;

use super::{invalid, InvalidTransition, State};

/// A timer the code started.
#[derive(Debug)]
pub(crate) struct TimerCommand {
    pub(crate) delay: Duration,
    state: State,
    schedule_event_id: Option<i64>,
    /// Whether the code asked for the cancellation (and so is owed the
    /// `TimerCanceled` command until the history records it).
    cancel_requested: bool,
}

impl TimerCommand {
    pub(crate) fn new(delay: Duration) -> Self {
        Self {
            delay,
            state: State::Pending,
            schedule_event_id: None,
            cancel_requested: false,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    pub(crate) fn schedule_event_id(&self) -> Option<i64> {
        self.schedule_event_id
    }

    /// Its `TimerScheduled` event is at `sequence_id`.
    pub(crate) fn commit(&mut self, sequence_id: i64) -> Result<(), InvalidTransition> {
        if self.state != State::Pending {
            return Err(invalid("timer", "TimerScheduled", self.state));
        }
        self.state = State::Committed;
        self.schedule_event_id = Some(sequence_id);
        Ok(())
    }

    /// Its `TimerFired` arrived. A timer whose cancellation is asked for
    /// or recorded stays canceled: the firing raced the cancellation.
    pub(crate) fn fire(&mut self) -> Result<(), InvalidTransition> {
        match self.state {
            State::Committed => {
                self.state = State::Done;
                Ok(())
            }
            State::CancelPending | State::Canceled => Ok(()),
            state => Err(invalid("timer", "TimerFired", state)),
        }
    }

    /// The code cancels it. Returns whether a `TimerCanceled` command is
    /// now owed: not for a timer never scheduled (it is simply dropped),
    /// nor for one that fired or was canceled already.
    pub(crate) fn cancel(&mut self) -> bool {
        match self.state {
            State::Pending => {
                self.state = State::Canceled;
                false
            }
            State::Committed => {
                self.state = State::CancelPending;
                self.cancel_requested = true;
                true
            }
            _ => false,
        }
    }

    /// Its `TimerCanceled` event arrived.
    pub(crate) fn commit_cancel(&mut self) -> Result<(), InvalidTransition> {
        match self.state {
            State::CancelPending => {
                self.state = State::Canceled;
                Ok(())
            }
            state => Err(invalid("timer", "TimerCanceled", state)),
        }
    }

    /// Whether its cancellation is asked for and not yet recorded.
    pub(crate) fn owes_cancel(&self) -> bool {
        self.cancel_requested && self.state == State::CancelPending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer() -> TimerCommand {
        TimerCommand::new(Duration::from_secs(5))
    }

    #[test]
    fn commit_then_fire_makes_it_done() {
        let mut t = timer();
        t.commit(3).unwrap();
        assert_eq!(t.schedule_event_id(), Some(3));
        t.fire().unwrap();
        assert_eq!(t.state(), State::Done);
    }

    #[test]
    fn firing_before_the_commit_is_refused() {
        assert!(timer().fire().is_err());
    }

    #[test]
    fn canceling_an_unscheduled_timer_drops_it_without_a_command() {
        let mut t = timer();
        assert!(!t.cancel());
        assert_eq!(t.state(), State::Canceled);
        assert!(!t.owes_cancel());
    }

    #[test]
    fn canceling_a_scheduled_timer_owes_a_command_until_recorded() {
        let mut t = timer();
        t.commit(3).unwrap();
        assert!(t.cancel());
        assert!(t.owes_cancel());
        t.commit_cancel().unwrap();
        assert_eq!(t.state(), State::Canceled);
        assert!(!t.owes_cancel());
    }

    #[test]
    fn a_firing_that_races_the_cancellation_leaves_it_canceled() {
        let mut t = timer();
        t.commit(3).unwrap();
        t.cancel();
        t.fire().unwrap();
        assert_eq!(t.state(), State::CancelPending);
    }

    #[test]
    fn canceling_a_fired_timer_does_nothing() {
        let mut t = timer();
        t.commit(3).unwrap();
        t.fire().unwrap();
        assert!(!t.cancel());
        assert_eq!(t.state(), State::Done);
        assert!(t.commit_cancel().is_err());
    }
}
