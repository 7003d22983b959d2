//! Validated names: queues, workers and instance ids, checked once at the
//! API boundary so that nothing unchecked reaches SQL or a NOTIFY payload.

use std::fmt;

use crate::error::StoreError;

/// The longest queue name: `instances.queue` and `activities.queue` are
/// `varchar(128)`.
///
/// ```
/// use pgwake::{store::MAX_QUEUE_NAME_LEN, Queue};
/// assert!(Queue::new("q".repeat(MAX_QUEUE_NAME_LEN)).is_ok());
/// assert!(Queue::new("q".repeat(MAX_QUEUE_NAME_LEN + 1)).is_err());
/// ```
pub const MAX_QUEUE_NAME_LEN: usize = 128;

/// The rule every queue name follows, quoted in errors.
///
/// ```
/// let err = pgwake::Queue::new("no spaces").unwrap_err();
/// assert!(err.to_string().contains(pgwake::store::QUEUE_NAME_RULE));
/// ```
pub const QUEUE_NAME_RULE: &str =
    "1 to 128 characters, each an ASCII letter, digit, '_', '-', '.' or ':'";

/// A queue's name: `1..=128` characters from `[A-Za-z0-9_.:-]`.
///
/// The name is also the payload of the notification that wakes workers, so
/// it is kept to characters that need no quoting or escaping anywhere.
///
/// ```
/// use pgwake::Queue;
/// assert_eq!(Queue::new("orders.eu-1")?.as_str(), "orders.eu-1");
/// assert!(Queue::new("").is_err());
/// assert!(Queue::new("has space").is_err());
/// assert_eq!(Queue::default().as_str(), "default");
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Queue(String);

impl Queue {
    /// Validates `name`.
    ///
    /// ```
    /// let queue = pgwake::Queue::new("emails")?;
    /// assert_eq!(queue.to_string(), "emails");
    /// assert!(pgwake::Queue::new("emails; DROP TABLE").is_err());
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    ///
    /// # Errors
    /// [`StoreError::InvalidQueueName`] quoting [`QUEUE_NAME_RULE`].
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        let valid = !name.is_empty()
            && name.len() <= MAX_QUEUE_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'));
        if valid {
            Ok(Self(name))
        } else {
            Err(StoreError::InvalidQueueName {
                name: shorten(&name),
                rule: QUEUE_NAME_RULE,
            })
        }
    }

    /// The name.
    ///
    /// ```
    /// assert_eq!(pgwake::Queue::new("emails")?.as_str(), "emails");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Queue {
    /// The queue `default`.
    fn default() -> Self {
        Self("default".to_string())
    }
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Queue({:?})", self.0)
    }
}

impl fmt::Display for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for Queue {
    type Error = StoreError;
    fn try_from(name: &str) -> Result<Self, StoreError> {
        Queue::new(name)
    }
}

/// Validates a list of queue names.
///
/// ```
/// let list = pgwake::queues(["orders", "emails"])?;
/// assert_eq!(list[1].as_str(), "emails");
/// assert!(matches!(pgwake::queues(Vec::<String>::new()), Err(pgwake::StoreError::NoQueues)));
/// # Ok::<(), pgwake::StoreError>(())
/// ```
///
/// # Errors
/// The first invalid name's error, or [`StoreError::NoQueues`] for an empty list.
pub fn queues<I, S>(names: I) -> Result<Vec<Queue>, StoreError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let queues = names
        .into_iter()
        .map(Queue::new)
        .collect::<Result<Vec<_>, _>>()?;
    if queues.is_empty() {
        return Err(StoreError::NoQueues);
    }
    Ok(queues)
}

/// Who holds a lease: written to `worker` (`varchar(64)`) on claim.
///
/// ```
/// let worker = pgwake::WorkerId::new("web-1:activity-3")?;
/// assert_eq!(worker.as_str(), "web-1:activity-3");
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct WorkerId(String);

impl WorkerId {
    /// Validates `name`: 1 to 64 bytes, no control characters.
    ///
    /// ```
    /// use pgwake::WorkerId;
    /// assert!(WorkerId::new("web-1").is_ok());
    /// assert!(WorkerId::new("").is_err());
    /// assert!(WorkerId::new("w".repeat(65)).is_err());
    /// ```
    ///
    /// # Errors
    /// [`StoreError::InvalidId`].
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        check_id("worker id", &name, 64)?;
        Ok(Self(name))
    }

    /// A name unique to this process and call: `prefix:host:pid:random`,
    /// with `prefix:host` shortened (on a character boundary) to fit
    /// `varchar(64)`, never the part that makes it unique.
    ///
    /// ```
    /// let id = pgwake::WorkerId::unique("web");
    /// assert!(id.as_str().starts_with("web:") && id.as_str().len() <= 64);
    /// assert_ne!(id, pgwake::WorkerId::unique("web"));
    /// ```
    pub fn unique(prefix: &str) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_string());
        let random = uuid::Uuid::new_v4().simple().to_string();
        let tail = format!(":{}:{}", std::process::id(), &random[..12]);
        let mut head: String = format!("{prefix}:{host}")
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        while head.len() + tail.len() > 64 {
            head.pop();
        }
        Self(format!("{head}{tail}"))
    }

    /// The name.
    ///
    /// ```
    /// assert_eq!(pgwake::WorkerId::new("web-1")?.as_str(), "web-1");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({:?})", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks an identifier stored in a `varchar(max)` column.
pub(crate) fn check_id(what: &'static str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(StoreError::InvalidId {
            what,
            value: shorten(value),
            max,
        });
    }
    Ok(())
}

/// Long garbage stays out of error messages and logs.
fn shorten(value: &str) -> String {
    const SHOWN: usize = 40;
    if value.chars().count() <= SHOWN {
        value.to_string()
    } else {
        let head: String = value.chars().take(SHOWN).collect();
        format!("{head}... ({} bytes)", value.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_follow_the_rule() {
        for good in [
            "default",
            "a",
            "orders.eu-1",
            "_system_",
            "x:y",
            &"q".repeat(128),
        ] {
            assert!(Queue::new(good).is_ok(), "{good}");
        }
        for bad in ["", " ", "a b", "é", "q'; DROP", "a\nb", &"q".repeat(129)] {
            let err = Queue::new(bad).unwrap_err();
            assert!(err.to_string().contains(QUEUE_NAME_RULE), "{err}");
        }
    }

    #[test]
    fn an_empty_queue_list_is_refused() {
        assert!(matches!(
            queues(Vec::<String>::new()),
            Err(StoreError::NoQueues)
        ));
    }

    #[test]
    fn unique_worker_ids_fit_the_column() {
        let id = WorkerId::unique(&"p".repeat(100));
        assert!(id.as_str().len() <= 64);
        assert_ne!(WorkerId::unique("w"), WorkerId::unique("w"));
    }

    #[test]
    fn long_values_are_shortened_in_errors() {
        let err = WorkerId::new("w".repeat(5000)).unwrap_err().to_string();
        assert!(err.len() < 300, "{err}");
    }
}
