//! A side effect: a value computed once, live, and read back from the
//! history on every replay.

use serde_json::Value;

use super::{invalid, InvalidTransition, State};

/// Computes a side effect's value (once, live).
pub(crate) type Compute = Box<dyn FnOnce() -> Value>;

/// A side effect the code asked for.
pub(crate) struct SideEffectCommand {
    state: State,
    /// Until computed or read from the history.
    compute: Option<Compute>,
    value: Option<Value>,
}

impl std::fmt::Debug for SideEffectCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SideEffectCommand")
            .field("state", &self.state)
            .field("value", &self.value)
            .finish_non_exhaustive()
    }
}

impl SideEffectCommand {
    pub(crate) fn new(compute: Compute) -> Self {
        Self {
            state: State::Pending,
            compute: Some(compute),
            value: None,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Runs the computation (live: no recorded value exists). Stays
    /// `Pending` until the store records it; the value is usable at once.
    pub(crate) fn compute(&mut self) -> Result<(), InvalidTransition> {
        match (self.state, self.compute.take()) {
            (State::Pending, Some(compute)) => {
                self.value = Some(compute());
                Ok(())
            }
            (state, _) => Err(invalid("side effect", "computing", state)),
        }
    }

    /// Whether it still waits for its value (replaying, not matched yet).
    pub(crate) fn awaits_value(&self) -> bool {
        self.value.is_none()
    }

    /// Its `SideEffectResult` is in the history: that value wins, and the
    /// computation never runs.
    pub(crate) fn commit(&mut self, recorded: Value) -> Result<(), InvalidTransition> {
        if self.state != State::Pending {
            return Err(invalid("side effect", "SideEffectResult", self.state));
        }
        // Computed live by a run kept in memory, whose decision another
        // run's replaced: the code saw a value the history does not hold.
        if self.value.as_ref().is_some_and(|value| *value != recorded) {
            return Err(invalid(
                "side effect",
                "a different SideEffectResult",
                self.state,
            ));
        }
        self.compute = None;
        self.value = Some(recorded);
        self.state = State::Done;
        Ok(())
    }

    pub(crate) fn value(&self) -> Option<&Value> {
        self.value.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn live_the_value_is_computed_and_awaits_recording() {
        let mut command = SideEffectCommand::new(Box::new(|| json!(7)));
        assert!(command.awaits_value());
        command.compute().unwrap();
        assert_eq!(command.value(), Some(&json!(7)));
        assert_eq!(command.state(), State::Pending);
    }

    #[test]
    fn on_replay_the_recorded_value_wins_and_nothing_runs() {
        let mut command = SideEffectCommand::new(Box::new(|| panic!("must not run on replay")));
        command.commit(json!(42)).unwrap();
        assert_eq!(command.value(), Some(&json!(42)));
        assert_eq!(command.state(), State::Done);
        assert!(command.compute().is_err());
    }

    #[test]
    fn recording_twice_is_refused() {
        let mut command = SideEffectCommand::new(Box::new(|| json!(1)));
        command.commit(json!(1)).unwrap();
        assert!(command.commit(json!(2)).is_err());
    }
}
