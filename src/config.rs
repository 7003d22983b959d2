//! The runtime's settings, validated before anything connects.

use std::time::Duration;

use crate::connection::ConnectionConfig;
use crate::error::BuildError;
use crate::store::StoreOptions;

/// Everything the runtime needs to know besides its workers.
///
/// Non-exhaustive, so that a setting added later breaks no caller: start
/// from [`RuntimeConfig::new`] and assign the fields to change.
///
/// ```
/// use std::time::Duration;
/// let mut config = pgwake::RuntimeConfig::new("postgres://postgres@localhost/app");
/// config.fallback_while_listening = Duration::from_secs(30);
/// config.validate()?;
/// # Ok::<(), pgwake::BuildError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RuntimeConfig {
    /// The database (pool, notifier).
    pub database_url: String,
    /// Where listeners connect, when it differs from `database_url`: behind
    /// PgBouncer in transaction mode, point this at PostgreSQL itself
    /// (LISTEN needs a session of its own).
    pub listener_url: Option<String>,
    /// LISTEN/NOTIFY on (default) or off. Off is poll-only mode: no
    /// listener connections and no NOTIFY; workers poll every
    /// `fallback_while_degraded`.
    pub notifications: bool,
    /// How long an idle worker sleeps between polls while its channel's
    /// listener is listening, when no timer is due sooner. Only a safety
    /// net then (notifications and resyncs carry the work); default 60 s.
    pub fallback_while_listening: Duration,
    /// The same while the listener is not listening (connecting, backing
    /// off, or its notifications not delivered: see
    /// `listener_probe_timeout`) or notifications are off; default 500 ms.
    pub fallback_while_degraded: Duration,
    /// A listener pings its connection after this long without traffic,
    /// to find half-open sockets; default 5 s.
    pub listener_ping_after: Duration,
    /// A ping (or `LISTEN`) not answered within this is a lost connection;
    /// default 3 s.
    pub listener_ping_timeout: Duration,
    /// How long a listener's delivery probe may take to come back; default
    /// 2 s. After every `LISTEN` (first or after a reconnect) the listener
    /// sends a `NOTIFY` on a private channel from a short-lived second
    /// connection (to `listener_url`, like its own) and reports listening
    /// only once it arrives. When it does not arrive in time (a
    /// transaction-mode pooler such as PgBouncer, a replica, or a proxy that
    /// drops asynchronous messages between the listener and PostgreSQL),
    /// the listener reports [`ListenerState::NotDelivering`](crate::ListenerState::NotDelivering),
    /// its workers poll every `fallback_while_degraded`, and it probes again
    /// every `listener_ping_after`. Sending the probe is bounded by the
    /// connection's `connect_timeout` and then by this.
    pub listener_probe_timeout: Duration,
    /// The first reconnect delay; doubles per failed attempt, with jitter.
    /// Default 100 ms.
    pub reconnect_backoff_min: Duration,
    /// The longest reconnect delay; default 30 s.
    pub reconnect_backoff_max: Duration,
    /// The notifier sends at most one NOTIFY per queue per this window
    /// (the first at once, the last at the window's end); default 25 ms.
    pub notify_debounce: Duration,
    /// Settings of the store (pool size, payload limit ...).
    pub store: StoreOptions,
    /// The schema holding pgwake's tables, when not `public`: channel
    /// names are then `<schema>.workflow_tasks` and `<schema>.activity_tasks`.
    pub schema: Option<String>,
    /// Eager dispatch, on (default) or off: a workflow task's decision
    /// leases the activities it schedules to an activity worker of this
    /// runtime that serves their queue and has free slots, and an activity
    /// worker's recorded results lease the workflow tasks they make ready
    /// to a workflow worker of this runtime with free slots, each in the
    /// transaction that makes them ready; that worker runs them at once,
    /// without a claim or a wake-up (two round trips fewer per step). Tasks
    /// beyond its free slots are written unleased and claimed as usual.
    /// Off, every task is claimed, by whichever worker of any process
    /// claims first.
    pub eager_dispatch: bool,
}

impl std::fmt::Debug for RuntimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |url: &str| {
            ConnectionConfig::from_url(url)
                .map(|c| c.redacted().to_string())
                .unwrap_or_else(|_| "<invalid URL>".to_string())
        };
        f.debug_struct("RuntimeConfig")
            .field("database_url", &redacted(&self.database_url))
            .field("listener_url", &self.listener_url.as_deref().map(redacted))
            .field("notifications", &self.notifications)
            .field("fallback_while_listening", &self.fallback_while_listening)
            .field("fallback_while_degraded", &self.fallback_while_degraded)
            .field("listener_ping_after", &self.listener_ping_after)
            .field("listener_ping_timeout", &self.listener_ping_timeout)
            .field("listener_probe_timeout", &self.listener_probe_timeout)
            .field("reconnect_backoff_min", &self.reconnect_backoff_min)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("notify_debounce", &self.notify_debounce)
            .field("store", &self.store)
            .field("schema", &self.schema)
            .field("eager_dispatch", &self.eager_dispatch)
            .finish()
    }
}

impl RuntimeConfig {
    /// Defaults for `database_url`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = pgwake::RuntimeConfig::new("postgres://postgres@localhost/app");
    /// assert!(config.notifications);
    /// assert_eq!(config.fallback_while_listening, Duration::from_secs(60));
    /// assert_eq!(config.fallback_while_degraded, Duration::from_millis(500));
    /// assert_eq!(config.listener_probe_timeout, Duration::from_secs(2));
    /// assert!(config.eager_dispatch);
    /// ```
    pub fn new(database_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            listener_url: None,
            notifications: true,
            fallback_while_listening: Duration::from_secs(60),
            fallback_while_degraded: Duration::from_millis(500),
            listener_ping_after: Duration::from_secs(5),
            listener_ping_timeout: Duration::from_secs(3),
            listener_probe_timeout: Duration::from_secs(2),
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(30),
            notify_debounce: Duration::from_millis(25),
            store: StoreOptions::default(),
            schema: None,
            eager_dispatch: true,
        }
    }

    /// Checks every setting; what [`Runtime::builder`](crate::Runtime::builder)'s
    /// `start` calls before connecting.
    ///
    /// # Errors
    /// The first [`BuildError`] found, naming the setting.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut config = pgwake::RuntimeConfig::new("postgres://postgres@localhost/app");
    /// config.reconnect_backoff_min = Duration::from_secs(60); // above the 30 s maximum
    /// let err = config.validate().unwrap_err();
    /// assert!(matches!(err, pgwake::BuildError::Setting { name: "reconnect_backoff_min", .. }));
    /// ```
    pub fn validate(&self) -> Result<(), BuildError> {
        ConnectionConfig::from_url(&self.database_url)?;
        if let Some(url) = &self.listener_url {
            ConnectionConfig::from_url(url)?;
        }
        let positive = [
            ("fallback_while_listening", self.fallback_while_listening),
            ("fallback_while_degraded", self.fallback_while_degraded),
            ("listener_ping_after", self.listener_ping_after),
            ("listener_ping_timeout", self.listener_ping_timeout),
            ("listener_probe_timeout", self.listener_probe_timeout),
            ("reconnect_backoff_min", self.reconnect_backoff_min),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return Err(BuildError::Setting {
                    name,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        if self.reconnect_backoff_min > self.reconnect_backoff_max {
            return Err(BuildError::Setting {
                name: "reconnect_backoff_min",
                reason: "must not exceed reconnect_backoff_max".into(),
            });
        }
        if self.store.pool_size == 0 {
            return Err(BuildError::Setting {
                name: "store.pool_size",
                reason: "must be at least 1".into(),
            });
        }
        if let Err(reason) = self.store.validate() {
            return Err(BuildError::Setting {
                name: "store",
                reason,
            });
        }
        if let Some(schema) = &self.schema {
            let valid = !schema.is_empty()
                && schema.len() + ".workflow_tasks".len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !valid {
                return Err(BuildError::Setting {
                    name: "schema",
                    reason: "must be 1 to 48 characters of a-z, 0-9 and '_' (channel names \
                             '<schema>.workflow_tasks' must fit PostgreSQL's 63 bytes)"
                        .into(),
                });
            }
        }
        Ok(())
    }

    /// The channel a kind of task is announced on.
    ///
    /// ```
    /// use pgwake::{RuntimeConfig, TaskKind};
    /// let mut config = RuntimeConfig::new("postgres://postgres@localhost/app");
    /// assert_eq!(config.channel(TaskKind::Activity), "activity_tasks");
    /// config.schema = Some("billing".to_string());
    /// assert_eq!(config.channel(TaskKind::Activity), "billing.activity_tasks");
    /// ```
    pub fn channel(&self, kind: crate::kinds::TaskKind) -> String {
        match &self.schema {
            Some(schema) if schema != "public" => format!("{schema}.{}", kind.base_channel()),
            _ => kind.base_channel().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_probe_timeout_is_rejected_by_name() {
        let mut config = RuntimeConfig::new("postgres://postgres@localhost/app");
        config.validate().unwrap();
        config.listener_probe_timeout = Duration::ZERO;
        let err = config.validate().unwrap_err();
        assert!(
            matches!(
                err,
                BuildError::Setting {
                    name: "listener_probe_timeout",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
