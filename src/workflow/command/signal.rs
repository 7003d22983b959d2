//! Signaling another instance from a workflow, and learning whether the
//! signal reached an execution.

use serde_json::Value;

use super::{invalid, InvalidTransition, State};
use crate::workflow::error::WorkflowError;

/// A signal the code sent to another instance.
#[derive(Debug)]
pub(crate) struct SignalCommand {
    pub(crate) instance_id: String,
    pub(crate) name: String,
    pub(crate) payload: Value,
    state: State,
    result: Option<Result<(), WorkflowError>>,
}

impl SignalCommand {
    pub(crate) fn new(instance_id: String, name: String, payload: Value) -> Self {
        Self {
            instance_id,
            name,
            payload,
            state: State::Pending,
            result: None,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// Its `SignalSent` (delivered) or `SignalNotDelivered` arrived.
    pub(crate) fn resolve(
        &mut self,
        delivered: bool,
        reason: &str,
    ) -> Result<(), InvalidTransition> {
        if self.state != State::Pending {
            return Err(invalid("signal", "a signal report", self.state));
        }
        self.state = State::Done;
        self.result = Some(if delivered {
            Ok(())
        } else {
            Err(WorkflowError::new(
                "not_found",
                format!(
                    "signal {:?} to instance {:?} was not delivered: {reason}",
                    self.name, self.instance_id
                ),
            )
            .non_retryable())
        });
        Ok(())
    }

    pub(crate) fn result(&self) -> Option<&Result<(), WorkflowError>> {
        self.result.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn signal() -> SignalCommand {
        SignalCommand::new("order-1".into(), "approved".into(), json!(true))
    }

    #[test]
    fn a_delivered_signal_resolves_ok_once() {
        let mut s = signal();
        assert!(s.result().is_none());
        s.resolve(true, "").unwrap();
        assert_eq!(s.result(), Some(&Ok(())));
        assert!(s.resolve(true, "").is_err());
    }

    #[test]
    fn an_undelivered_signal_resolves_not_found_with_the_reason() {
        let mut s = signal();
        s.resolve(false, "it has finished").unwrap();
        let err = s.result().unwrap().as_ref().unwrap_err();
        assert_eq!(err.kind(), "not_found");
        assert!(err.message().contains("\"order-1\"") && err.message().contains("it has finished"));
    }
}
