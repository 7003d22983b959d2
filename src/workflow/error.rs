//! Typed errors of the workflow layer: what activities and workflows fail
//! with (and how those travel through the history), what replay detects,
//! and what the client reports.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::StoreError;

/// The kind of the errors that tell of a cancellation.
pub(crate) const CANCELED: &str = "canceled";

fn default_retryable() -> bool {
    true
}

/// The text a failure was stored as in an event's `"error"` attribute (a
/// JSON string, or, from other writers, any JSON).
pub(crate) fn stored_text(stored: &Value) -> String {
    match stored {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Turns the text stored for a failure back into its kind, message,
/// retryable flag and details: the JSON an error of this module wrote, or,
/// for any other text (a panic, a plain handler of the decider layer), kind
/// `"error"` with that text as its message.
fn parse_stored(stored: &str) -> (String, String, bool, Value) {
    match serde_json::from_str::<Stored>(stored) {
        Ok(parsed) => (
            parsed.kind,
            parsed.message,
            parsed.retryable,
            parsed.details,
        ),
        Err(_) => ("error".into(), stored.into(), true, Value::Null),
    }
}

/// The wire form both errors share.
#[derive(Serialize, Deserialize)]
struct Stored {
    kind: String,
    message: String,
    #[serde(default = "default_retryable")]
    retryable: bool,
    #[serde(default)]
    details: Value,
}

macro_rules! typed_error {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
        #[error("{kind}: {message}")]
        pub struct $name {
            kind: String,
            message: String,
            #[serde(default = "default_retryable")]
            retryable: bool,
            #[serde(default)]
            details: Value,
        }

        impl $name {
            #[doc = concat!("A retryable ", $what, " of `kind` (what callers match on) with `message`.")]
            ///
            /// ```
            #[doc = concat!("let err = pgwake::workflow::", stringify!($name), "::new(\"declined\", \"card declined\");")]
            /// assert_eq!(err.kind(), "declined");
            /// assert_eq!(err.message(), "card declined");
            /// assert!(err.retryable() && err.details().is_null());
            /// ```
            pub fn new(kind: impl Into<String>, message: impl Into<String>) -> Self {
                Self {
                    kind: kind.into(),
                    message: message.into(),
                    retryable: true,
                    details: Value::Null,
                }
            }

            /// Marks it as not worth retrying.
            ///
            /// ```
            #[doc = concat!("let err = pgwake::workflow::", stringify!($name), "::new(\"invalid\", \"no such card\").non_retryable();")]
            /// assert!(!err.retryable());
            /// ```
            pub fn non_retryable(mut self) -> Self {
                self.retryable = false;
                self
            }

            /// Attaches details (any JSON).
            ///
            /// ```
            #[doc = concat!("let err = pgwake::workflow::", stringify!($name), "::new(\"declined\", \"card declined\")")]
            ///     .with_details(serde_json::json!({"code": 51}));
            /// assert_eq!(err.details()["code"], 51);
            /// ```
            pub fn with_details(mut self, details: Value) -> Self {
                self.details = details;
                self
            }

            /// What kind of failure it is: the string code matches on.
            ///
            /// ```
            #[doc = concat!("let err = pgwake::workflow::", stringify!($name), "::new(\"timeout\", \"gateway slow\");")]
            /// match err.kind() {
            ///     "timeout" => {}
            ///     other => panic!("unexpected {other}"),
            /// }
            /// ```
            pub fn kind(&self) -> &str {
                &self.kind
            }

            /// The human-readable message.
            ///
            /// ```
            #[doc = concat!("let err = pgwake::workflow::", stringify!($name), "::new(\"timeout\", \"gateway slow\");")]
            /// assert_eq!(err.to_string(), "timeout: gateway slow");
            /// assert_eq!(err.message(), "gateway slow");
            /// ```
            pub fn message(&self) -> &str {
                &self.message
            }

            /// Whether retrying may help.
            ///
            /// ```
            #[doc = concat!("assert!(pgwake::workflow::", stringify!($name), "::new(\"timeout\", \"slow\").retryable());")]
            /// ```
            pub fn retryable(&self) -> bool {
                self.retryable
            }

            /// Whether it tells of a cancellation (kind `"canceled"`): what
            /// the futures of a canceled workflow give, and what a workflow
            /// returns to end as canceled.
            ///
            /// ```
            #[doc = concat!("assert!(pgwake::workflow::", stringify!($name), "::new(\"canceled\", \"the workflow was canceled\").is_canceled());")]
            #[doc = concat!("assert!(!pgwake::workflow::", stringify!($name), "::new(\"timeout\", \"slow\").is_canceled());")]
            /// ```
            pub fn is_canceled(&self) -> bool {
                self.kind == CANCELED
            }

            /// A cancellation's error (kind `"canceled"`, not retryable).
            pub(crate) fn canceled(message: impl Into<String>) -> Self {
                Self::new(CANCELED, message).non_retryable()
            }

            /// The details (`null` when none were attached).
            ///
            /// ```
            #[doc = concat!("assert!(pgwake::workflow::", stringify!($name), "::new(\"timeout\", \"slow\").details().is_null());")]
            /// ```
            pub fn details(&self) -> &Value {
                &self.details
            }

            /// The JSON text stored in the history for this error.
            ///
            /// ```
            #[doc = concat!("use pgwake::workflow::", stringify!($name), ";")]
            #[doc = concat!("let err = ", stringify!($name), "::new(\"declined\", \"card declined\").non_retryable();")]
            #[doc = concat!("assert_eq!(", stringify!($name), "::from_stored(&err.to_stored()), err);")]
            /// ```
            pub fn to_stored(&self) -> String {
                serde_json::to_string(self).unwrap_or_else(|_| self.message.clone())
            }

            /// Reads the text stored in the history back: the JSON
            /// [`to_stored`](Self::to_stored) wrote, or any other text as
            /// kind `"error"` with that text as its message.
            ///
            /// ```
            #[doc = concat!("let err = pgwake::workflow::", stringify!($name), "::from_stored(\"handler panicked: boom\");")]
            /// assert_eq!(err.kind(), "error");
            /// assert_eq!(err.message(), "handler panicked: boom");
            /// ```
            pub fn from_stored(stored: &str) -> Self {
                let (kind, message, retryable, details) = parse_stored(stored);
                Self {
                    kind,
                    message,
                    retryable,
                    details,
                }
            }
        }
    };
}

typed_error!(
    /// How an activity failed. It reaches the workflow that scheduled the
    /// activity with its kind intact: the `ActivityFailed` event's
    /// `{"error": String}` holds its JSON ([`to_stored`](Self::to_stored)).
    ///
    /// ```
    /// use pgwake::workflow::ActivityError;
    /// let err = ActivityError::new("declined", "card declined")
    ///     .non_retryable()
    ///     .with_details(serde_json::json!({"code": 51}));
    /// let back: ActivityError = serde_json::from_str(&serde_json::to_string(&err)?)?;
    /// assert_eq!(back, err);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    ActivityError,
    "activity failure"
);

typed_error!(
    /// How a workflow failed. A failed execution's outcome
    /// (`WorkflowOutcome::Failed`) holds its JSON, which
    /// [`Client::result`](super::Client::result) reads back. An
    /// [`ActivityError`] converts into one with `?`, keeping its kind.
    ///
    /// ```
    /// use pgwake::workflow::{ActivityError, WorkflowError};
    /// let from_activity: WorkflowError = ActivityError::new("declined", "card declined").into();
    /// assert_eq!(from_activity.kind(), "declined");
    /// let back: WorkflowError = serde_json::from_str(&serde_json::to_string(&from_activity)?)?;
    /// assert_eq!(back, from_activity);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    WorkflowError,
    "workflow failure"
);

/// An invalid name or value refused while the workflow's code built a
/// command (`Queue::new("")?` in workflow code, say): a bug in the code,
/// not worth retrying, of kind `"invalid"`.
///
/// ```
/// use pgwake::workflow::{ActivityOptions, WorkflowContext, WorkflowError};
/// async fn wf(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
///     let options = ActivityOptions::default().queue(pgwake::Queue::new("payments")?);
///     let _: () = ctx.activity_with("charge", &500, options).await?;
///     Ok(())
/// }
/// let err: WorkflowError = pgwake::Queue::new("").unwrap_err().into();
/// assert_eq!(err.kind(), "invalid");
/// ```
impl From<StoreError> for WorkflowError {
    fn from(err: StoreError) -> Self {
        Self::new("invalid", err.to_string()).non_retryable()
    }
}

impl From<ActivityError> for WorkflowError {
    fn from(err: ActivityError) -> Self {
        Self {
            kind: err.kind,
            message: err.message,
            retryable: err.retryable,
            details: err.details,
        }
    }
}

/// An error whose `Display` is its stored JSON, for handing typed errors to
/// the decider layer's workers, which record `error.to_string()`.
#[derive(Debug)]
pub(crate) struct StoredText(pub(crate) String);

impl std::fmt::Display for StoredText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoredText {}

/// Why a workflow task could not be run from its history. The task fails
/// (it is not applied) and is retried; the instance does not advance.
///
/// ```
/// use pgwake::workflow::ReplayError;
/// let err = ReplayError::NonDeterminism {
///     sequence_id: 4,
///     recorded: "ActivityScheduled 'charge'".into(),
///     scheduled: "'refund'".into(),
/// };
/// assert_eq!(
///     err.to_string(),
///     "non-determinism: history has ActivityScheduled 'charge' at #4, the code scheduled 'refund'"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The code did not do what the history records it did.
    #[error(
        "non-determinism: history has {recorded} at #{sequence_id}, the code scheduled {scheduled}"
    )]
    NonDeterminism {
        /// The sequence id of the recorded event.
        sequence_id: i64,
        /// The recorded event, as `Type 'name'`.
        recorded: String,
        /// What the code did instead (`'name'`, or `nothing`).
        scheduled: String,
    },
    /// The workflow's code returned while the history goes on.
    #[error("non-determinism: the workflow returned, but history goes on with {recorded} at #{sequence_id}")]
    ReturnedEarly {
        /// The sequence id of the first event left.
        sequence_id: i64,
        /// That event, as `Type`.
        recorded: String,
    },
    /// The history contradicts itself (an answer to nothing, no start).
    #[error("the history cannot be replayed: {0}")]
    Inconsistent(String),
}

/// What [`Client`](super::Client) calls fail with.
///
/// ```
/// use pgwake::workflow::{ClientError, WorkflowError};
/// let err = ClientError::Failed(WorkflowError::new("declined", "card declined"));
/// assert_eq!(err.to_string(), "the workflow failed: declined: card declined");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No instance of that id exists.
    #[error("no instance {instance_id:?}")]
    NotFound {
        /// The id asked for.
        instance_id: String,
    },
    /// The instance did not finish in time.
    #[error("instance {instance_id:?} did not finish within {waited:?}")]
    Timeout {
        /// The id asked for.
        instance_id: String,
        /// How long the call waited.
        waited: Duration,
    },
    /// The workflow failed with this error.
    #[error("the workflow failed: {0}")]
    Failed(WorkflowError),
    /// The workflow was canceled.
    #[error("instance {instance_id:?} was canceled")]
    Canceled {
        /// The id asked for.
        instance_id: String,
    },
    /// An input did not serialize, or a result did not deserialize.
    #[error("(de)serializing {what}: {source}")]
    Serde {
        /// What was being (de)serialized.
        what: &'static str,
        /// Serde's error.
        #[source]
        source: serde_json::Error,
    },
}
