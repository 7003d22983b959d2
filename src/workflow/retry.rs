//! Retry policies of activities, and how an attempt's number travels to the
//! activity worker.
//!
//! A retry is carried out by the replay itself: when an attempt fails with
//! a retryable error and attempts remain, the replay starts a durable timer
//! for the backoff delay and, when it fires, schedules the activity again.
//! Both are ordinary commands matched against the history, so a retried
//! activity replays exactly as it ran.

use std::time::Duration;

use serde_json::{json, Map, Value};

use super::error::ActivityError;

/// The key under which the input of an attempt after the first carries its
/// number (`{"pgwake_attempt": 2, "input": <the input>}`). The first
/// attempt's input is stored as it is (unless it has a timeout), so
/// histories written before retries existed, and activities scheduled
/// through the decider layer, read as attempt 1.
const ATTEMPT_KEY: &str = "pgwake_attempt";
/// The key under which an attempt carries its start-to-close timeout, in
/// milliseconds (`{"pgwake_timeout_ms": 30000, "input": ...}`).
const TIMEOUT_KEY: &str = "pgwake_timeout_ms";

/// How an activity is retried ([`ActivityOptions::retry`](super::ActivityOptions::retry)).
///
/// The default makes one attempt (no retry), as go-workflows does. Attempt
/// `n` that fails is followed, while attempts remain, by a durable timer of
/// `first_interval × backoff_coefficient^(n-1)` capped at `max_interval`,
/// then attempt `n + 1`. An error that is not
/// [`retryable`](ActivityError::retryable), or whose kind is listed in
/// `non_retryable`, reaches the workflow at once.
///
/// ```
/// use std::time::Duration;
/// use pgwake::workflow::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .first_interval(Duration::from_secs(1))
///     .backoff_coefficient(2.0)
///     .max_interval(Duration::from_secs(10))
///     .non_retryable(["declined"]);
/// assert_eq!(policy.delay_after(1), Duration::from_secs(1));
/// assert_eq!(policy.delay_after(3), Duration::from_secs(4));
/// assert_eq!(policy.delay_after(4), Duration::from_secs(8));
/// assert_eq!(policy.delay_after(5), Duration::from_secs(10));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// How many attempts in all (1: no retry). 0 is read as 1.
    pub max_attempts: u32,
    /// The delay after the first failed attempt.
    pub first_interval: Duration,
    /// What each further delay is multiplied by.
    pub backoff_coefficient: f64,
    /// The longest delay between two attempts.
    pub max_interval: Duration,
    /// Error kinds never retried.
    pub non_retryable: Vec<String>,
}

impl Default for RetryPolicy {
    /// One attempt; were more set, 1 s doubling up to 5 min.
    ///
    /// ```
    /// let policy = pgwake::workflow::RetryPolicy::default();
    /// assert_eq!(policy.max_attempts, 1);
    /// assert_eq!(policy.first_interval, std::time::Duration::from_secs(1));
    /// ```
    fn default() -> Self {
        Self {
            max_attempts: 1,
            first_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            max_interval: Duration::from_secs(300),
            non_retryable: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Sets how many attempts in all (1: no retry).
    ///
    /// ```
    /// assert_eq!(pgwake::workflow::RetryPolicy::default().max_attempts(3).max_attempts, 3);
    /// ```
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the delay after the first failed attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::workflow::RetryPolicy::default().first_interval(Duration::from_millis(200));
    /// assert_eq!(policy.delay_after(1), Duration::from_millis(200));
    /// ```
    pub fn first_interval(mut self, interval: Duration) -> Self {
        self.first_interval = interval;
        self
    }

    /// Sets what each further delay is multiplied by.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::workflow::RetryPolicy::default().backoff_coefficient(3.0);
    /// assert_eq!(policy.delay_after(2), Duration::from_secs(3));
    /// ```
    pub fn backoff_coefficient(mut self, coefficient: f64) -> Self {
        self.backoff_coefficient = coefficient;
        self
    }

    /// Sets the longest delay between two attempts.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::workflow::RetryPolicy::default().max_interval(Duration::from_secs(2));
    /// assert_eq!(policy.delay_after(10), Duration::from_secs(2));
    /// ```
    pub fn max_interval(mut self, interval: Duration) -> Self {
        self.max_interval = interval;
        self
    }

    /// Sets the error kinds never retried.
    ///
    /// ```
    /// let policy = pgwake::workflow::RetryPolicy::default().non_retryable(["declined", "invalid"]);
    /// assert_eq!(policy.non_retryable, ["declined", "invalid"]);
    /// ```
    pub fn non_retryable<K: Into<String>>(mut self, kinds: impl IntoIterator<Item = K>) -> Self {
        self.non_retryable = kinds.into_iter().map(Into::into).collect();
        self
    }

    /// The delay between failed attempt `attempt` (1, 2, ...) and the next:
    /// `first_interval × backoff_coefficient^(attempt-1)`, at most
    /// `max_interval`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::workflow::RetryPolicy::default();
    /// assert_eq!(policy.delay_after(2), Duration::from_secs(2));
    /// ```
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.first_interval.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(self.max_interval)
            .min(self.max_interval)
    }

    /// Whether `error`, from attempt `attempt`, is followed by another.
    pub(crate) fn retries(&self, error: &ActivityError, attempt: u32) -> bool {
        error.retryable()
            && attempt < self.max_attempts
            && !self.non_retryable.iter().any(|kind| kind == error.kind())
    }
}

/// What an attempt of an activity is scheduled with: its input, its
/// number, and the start-to-close timeout of each attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    pub(crate) input: Value,
    pub(crate) number: u32,
    pub(crate) timeout: Option<Duration>,
}

impl Attempt {
    /// The input stored in `ActivityScheduled`: the activity's own input
    /// for a first attempt without a timeout, else wrapped with what the
    /// worker needs to know.
    pub(crate) fn scheduled_input(&self) -> Value {
        if self.number <= 1 && self.timeout.is_none() {
            return self.input.clone();
        }
        let mut fields = Map::new();
        if self.number > 1 {
            fields.insert(ATTEMPT_KEY.into(), json!(self.number));
        }
        if let Some(timeout) = self.timeout {
            let ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
            fields.insert(TIMEOUT_KEY.into(), json!(ms));
        }
        fields.insert("input".into(), self.input.clone());
        Value::Object(fields)
    }

    /// Reads a scheduled input back ([`scheduled_input`](Self::scheduled_input));
    /// a plain input is attempt 1 without a timeout.
    pub(crate) fn from_scheduled(scheduled: Value) -> Self {
        match scheduled {
            Value::Object(mut fields) if is_wrapper(&fields) => {
                let number = fields
                    .get(ATTEMPT_KEY)
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(1);
                let timeout = fields
                    .get(TIMEOUT_KEY)
                    .and_then(Value::as_u64)
                    .map(Duration::from_millis);
                Self {
                    input: fields.remove("input").unwrap_or(Value::Null),
                    number,
                    timeout,
                }
            }
            input => Self {
                input,
                number: 1,
                timeout: None,
            },
        }
    }
}

/// Whether `fields` is a wrapper [`Attempt::scheduled_input`] wrote: the
/// input and at least one of pgwake's keys, each of the right type, and
/// nothing else.
fn is_wrapper(fields: &Map<String, Value>) -> bool {
    let known = fields
        .keys()
        .all(|key| key == "input" || key == ATTEMPT_KEY || key == TIMEOUT_KEY);
    known
        && fields.len() >= 2
        && fields.contains_key("input")
        && fields.get(ATTEMPT_KEY).is_none_or(Value::is_u64)
        && fields.get(TIMEOUT_KEY).is_none_or(Value::is_u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_makes_one_attempt() {
        let policy = RetryPolicy::default();
        assert!(!policy.retries(&ActivityError::new("timeout", "slow"), 1));
    }

    #[test]
    fn only_retryable_errors_of_allowed_kinds_are_retried_while_attempts_remain() {
        let policy = RetryPolicy::default()
            .max_attempts(3)
            .non_retryable(["declined"]);
        let timeout = ActivityError::new("timeout", "slow");
        assert!(policy.retries(&timeout, 1));
        assert!(policy.retries(&timeout, 2));
        assert!(!policy.retries(&timeout, 3));
        assert!(!policy.retries(&ActivityError::new("declined", "no"), 1));
        assert!(!policy.retries(&timeout.non_retryable(), 1));
    }

    #[test]
    fn an_absurd_delay_is_capped() {
        let policy = RetryPolicy::default().backoff_coefficient(f64::INFINITY);
        assert_eq!(policy.delay_after(3), Duration::from_secs(300));
    }

    #[test]
    fn the_attempt_round_trips_through_the_input_and_a_plain_input_is_attempt_one() {
        let input = json!({"cents": 500});
        let attempt = |number, timeout| Attempt {
            input: input.clone(),
            number,
            timeout,
        };
        assert_eq!(attempt(1, None).scheduled_input(), input);
        for sent in [
            attempt(3, None),
            attempt(1, Some(Duration::from_secs(30))),
            attempt(2, Some(Duration::from_millis(1500))),
        ] {
            assert_eq!(Attempt::from_scheduled(sent.scheduled_input()), sent);
        }
        assert_eq!(Attempt::from_scheduled(input.clone()), attempt(1, None));
        for lookalike in [
            json!({"pgwake_attempt": "x", "input": 1}),
            json!({"pgwake_timeout_ms": 5, "input": 1, "other": 2}),
            json!({"input": 1}),
        ] {
            assert_eq!(Attempt::from_scheduled(lookalike.clone()).input, lookalike);
        }
    }
}
