//! One small state machine per command kind, as go-workflows'
//! `internal/command`: the code creates a command (`Pending`), replay or
//! the store's numbering commits it to its scheduling event
//! (`Committed`), and its answer from the history finishes it (`Done`).
//! A timer, an activity or a sub-workflow may also be canceled. Each machine refuses a transition its
//! state does not allow, which the executor reports as a broken history.

mod activity;
mod side_effect;
mod signal;
mod sub_workflow;
mod timer;

pub(crate) use activity::{ActivityCommand, Retry};
pub(crate) use side_effect::SideEffectCommand;
pub(crate) use signal::SignalCommand;
pub(crate) use sub_workflow::SubWorkflowCommand;
pub(crate) use timer::TimerCommand;

/// Where a command stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Created by the code; not in the history yet.
    Pending,
    /// Matched to its scheduling event.
    Committed,
    /// Its cancellation was asked for; not in the history yet.
    CancelPending,
    /// Canceled (never scheduled, or its cancellation is recorded).
    Canceled,
    /// Answered.
    Done,
}

/// A transition the command's state does not allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InvalidTransition {
    pub(crate) command: &'static str,
    pub(crate) event: &'static str,
    pub(crate) state: State,
}

impl std::fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} for a {} command in state {:?}",
            self.event, self.command, self.state
        )
    }
}

pub(crate) fn invalid(
    command: &'static str,
    event: &'static str,
    state: State,
) -> InvalidTransition {
    InvalidTransition {
        command,
        event,
        state,
    }
}
