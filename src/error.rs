//! Errors, one small enum per concern. Each variant says what happened and
//! what to do about it; none of them ever contains a password.

use std::fmt;
use std::time::Duration;

/// Renders a `tokio_postgres::Error` with its causes, because its own
/// `Display` stops at the kind ("db error") and hides the server's message.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(err) = cause {
            write!(f, ": {err}")?;
            cause = err.source();
        }
        Ok(())
    }
}

/// Why a connection could not be opened.
///
/// ```
/// let err = pgwake::ConnectionConfig::from_url("postgres://host:notaport/db").unwrap_err();
/// assert!(matches!(err, pgwake::ConnectError::InvalidUrl { .. }));
/// assert!(err.to_string().starts_with("the database URL is not valid"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The connection string could not be parsed.
    #[error(
        "the database URL is not valid ({reason}); expected \
         postgres://USER:PASSWORD@HOST:PORT/DATABASE or key=value pairs such as \
         'host=HOST user=USER dbname=DATABASE'"
    )]
    InvalidUrl {
        /// What the parser objected to (never the URL itself).
        reason: String,
    },
    /// The URL's TLS settings cannot be honoured: an `sslmode` pgwake does
    /// not support, a combination libpq refuses too, or a certificate or key
    /// file that cannot be read. Refused before connecting, never downgraded.
    #[error("the database URL's TLS settings cannot be used: {reason}")]
    Tls {
        /// What is wrong, and what to set instead.
        reason: String,
    },
    /// The server did not complete the connection in time.
    #[error(
        "could not connect to {server} within {timeout:?}: check that the server is running \
         and reachable from here, or raise connect_timeout in the URL"
    )]
    Timeout {
        /// The server, as a redacted URL.
        server: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The server refused the connection or the login.
    #[error("could not connect to {server}: {}", ErrorChain(.source))]
    Refused {
        /// The server, as a redacted URL.
        server: String,
        /// What the driver reported (authentication failure, connection refused ...).
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Whether trying again later may succeed: the server is down, starting,
    /// or unreachable, as opposed to refusing these credentials or this
    /// database, or the URL being wrong.
    ///
    /// ```
    /// let err = pgwake::ConnectionConfig::from_url("postgres://host:notaport/db").unwrap_err();
    /// assert!(!err.is_transient()); // retrying will not fix the URL
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::InvalidUrl { .. } | ConnectError::Tls { .. } => false,
            ConnectError::Timeout { .. } => true,
            ConnectError::Refused { source, .. } => is_transient_postgres_error(source),
        }
    }
}

/// Whether the TLS handshake failed over the certificates (the server's not
/// trusted or not for this host, ours refused): a setting to fix, which
/// retrying will not, although the driver reports it as I/O.
fn is_certificate_rejection(error: &tokio_postgres::Error) -> bool {
    let mut cause = std::error::Error::source(error);
    while let Some(err) = cause {
        let tls = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .or_else(|| err.downcast_ref::<rustls::Error>());
        if let Some(tls) = tls {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::AlertReceived(
                        rustls::AlertDescription::BadCertificate
                            | rustls::AlertDescription::CertificateRequired
                            | rustls::AlertDescription::CertificateUnknown
                            | rustls::AlertDescription::UnknownCA
                            | rustls::AlertDescription::AccessDenied
                    )
            );
        }
        cause = err.source();
    }
    false
}

/// Whether a driver error may go away if the same request is tried again
/// later. Transient: the connection closed or failed (I/O, connecting, a
/// timeout waiting for the server, a garbled reply), and these SQLSTATEs of
/// the server: class 08 (connection exception), 53 (insufficient
/// resources), 57 (operator intervention: a server shutting down or
/// starting up, `57014` query_canceled by `statement_timeout`), 40
/// (transaction rollback: serialization failure, deadlock) and `55P03`
/// lock_not_available (`lock_timeout`). Everything else is permanent: the
/// same request fails the same way, e.g. class 22 (data exception: a value
/// out of range, invalid input), 23 (a constraint), 28 (authentication), 3D
/// (no such database), 42 (bad SQL or privileges), the driver's own
/// refusals (a value it cannot convert, an unexpected number of rows), and a
/// TLS handshake that failed over a certificate.
pub(crate) fn is_transient_postgres_error(error: &tokio_postgres::Error) -> bool {
    if is_certificate_rejection(error) {
        return false;
    }
    if error.is_closed() {
        return true;
    }
    if let Some(code) = error.code() {
        return is_transient_sqlstate(code);
    }
    // No server error: the driver's. Its kind is private; I/O failures
    // (reading, writing, connecting) carry the io::Error as their source,
    // and the two source-less transient kinds are told by their message.
    let io_failure =
        std::error::Error::source(error).is_some_and(|source| source.is::<std::io::Error>());
    io_failure || {
        let message = error.to_string();
        message == "timeout waiting for server" || message == "unexpected message from server"
    }
}

/// The SQLSTATEs [`is_transient_postgres_error`] retries.
fn is_transient_sqlstate(code: &tokio_postgres::error::SqlState) -> bool {
    use tokio_postgres::error::SqlState;
    *code == SqlState::LOCK_NOT_AVAILABLE || matches!(&code.code()[..2], "08" | "53" | "57" | "40")
}

/// Why a schema migration was refused or failed.
///
/// ```
/// let err = pgwake::MigrateError::Dirty { version: 3 };
/// assert!(err.to_string().contains("pgwake migrate force VERSION"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Connecting to the database failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A migration started and never finished; the schema is in an unknown state.
    #[error(
        "the database is dirty at version {version}: a migration to it started and did not \
         finish (the process died, or a step failed outside a transaction). Check the schema \
         by hand, then run `pgwake migrate force VERSION` with the version it really is at, \
         and `pgwake migrate up` again"
    )]
    Dirty {
        /// The version recorded as dirty (`-1`: going down to no version).
        version: i64,
    },
    /// The database was migrated by a newer pgwake (or another tool) than this one.
    #[error(
        "the database is at version {version}, newer than this pgwake knows (newest {newest}): \
         upgrade pgwake, or roll back with the binary that applied it"
    )]
    NewerThanKnown {
        /// The database's version.
        version: i64,
        /// The newest version this binary carries.
        newest: i64,
    },
    /// A version was asked for that no migration has.
    #[error("there is no migration {version}; known versions: 0 (none), {known}")]
    UnknownVersion {
        /// The version asked for.
        version: i64,
        /// The versions this binary carries, comma separated.
        known: String,
    },
    /// `up` was asked for a version below the current one.
    #[error(
        "the database is already at version {current}, past {target}: \
         use `pgwake migrate down` to go back"
    )]
    TargetBelowCurrent {
        /// The database's version.
        current: i64,
        /// The version asked for.
        target: i64,
    },
    /// The schema is older than this pgwake needs (or was never migrated).
    #[error(
        "the database schema is at version {}, this pgwake needs {required}: \
         run `pgwake migrate up` against it first",
        found.map_or_else(|| "none".to_string(), |v| v.to_string())
    )]
    NotMigrated {
        /// The version found, if any.
        found: Option<i64>,
        /// The version required.
        required: i64,
    },
    /// A migration's SQL failed; its transaction was rolled back.
    #[error(
        "migration {version}_{name} ({direction}) failed and was rolled back, \
         the database stays at its previous version: {}",
        ErrorChain(.source)
    )]
    StepFailed {
        /// The migration's version.
        version: i64,
        /// The migration's name.
        name: &'static str,
        /// `up` or `down`.
        direction: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Reading or writing the migration bookkeeping failed.
    #[error("{context}: {}", ErrorChain(.source))]
    Database {
        /// What we were doing.
        context: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

/// Why a store operation was refused or failed.
///
/// What a worker does with one, in this order:
/// - [`LeaseLost`](Self::LeaseLost): stop working on the task and record
///   nothing; another worker has it (or it is done).
/// - [`is_transient`](Self::is_transient) (a connection failure, a lock or
///   statement timeout, a deadlock, [`ActivityBusy`](Self::ActivityBusy)
///   ...): try the same call again later; the lease still holds the task.
/// - anything else is permanent for this task: the same call fails the
///   same way every time (a payload too large, a value PostgreSQL rejects,
///   a decision over a bound), so retrying only burns leases. Record a
///   failure instead (an activity's error, a workflow's failed outcome).
///
/// ```
/// let err = pgwake::StoreError::NoQueues;
/// assert_eq!(err.to_string(), "no queues given: name at least one queue");
/// assert!(!err.is_transient()); // a wrong request stays wrong
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A queue name breaks the rule.
    #[error("invalid queue name {name:?}: a queue name is {rule}")]
    InvalidQueueName {
        /// The name (shortened if long).
        name: String,
        /// The rule.
        rule: &'static str,
    },
    /// A list of queues was empty.
    #[error("no queues given: name at least one queue")]
    NoQueues,
    /// An id is empty, too long for its column, or holds control characters.
    #[error("invalid {what} {value:?}: it must be 1 to {max} bytes with no control characters")]
    InvalidId {
        /// Which id.
        what: &'static str,
        /// The value (shortened if long).
        value: String,
        /// The column's limit.
        max: usize,
    },
    /// A payload (input, result, metadata) is larger than the store accepts.
    #[error(
        "payload of {size} bytes is larger than the {limit} bytes this store accepts: \
         store large data elsewhere and pass a reference, or raise StoreOptions::max_payload_bytes"
    )]
    PayloadTooLarge {
        /// The payload's size as JSON.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A lease or interval is zero, negative or absurdly long.
    #[error("invalid {what}: {reason}")]
    InvalidDuration {
        /// Which setting.
        what: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// An active execution of this instance id exists already.
    #[error("workflow instance {instance_id:?} already has an active execution")]
    AlreadyExists {
        /// The instance id.
        instance_id: String,
    },
    /// No such instance (or no active execution, where one is needed, as
    /// by [`Store::signal_instance`](crate::Store::signal_instance)).
    ///
    /// A signal that a workflow decision sends to such an instance is not
    /// refused this way, since the rest of the decision must still apply:
    /// the sender's history records it as
    /// [`EventType::SignalNotDelivered`](crate::EventType::SignalNotDelivered)
    /// (see [`WorkflowCompletion::signal`](crate::WorkflowCompletion::signal)).
    ///
    /// ```
    /// let err = pgwake::StoreError::NotFound { instance_id: "order-7".into(), needs_active: true };
    /// assert!(err.to_string().contains("create the instance (Store::create_instance) before"), "{err}");
    /// ```
    #[error(
        "workflow instance {instance_id:?} {}",
        if *.needs_active {
            "has no active execution (it was never created, has finished, or was removed): only \
             a running execution receives signals. Check the instance id, or create the \
             instance (Store::create_instance) before signalling it"
        } else {
            "not found: check the instance id (a removed instance is gone for good)"
        }
    )]
    NotFound {
        /// The instance id.
        instance_id: String,
        /// Whether an active execution was required.
        needs_active: bool,
    },
    /// The instance is still running and cannot be removed.
    #[error("workflow instance {instance_id:?} is still active: cancel it and wait for it to finish first")]
    NotFinished {
        /// The instance id.
        instance_id: String,
    },
    /// The caller's lease is gone: the task expired and was claimed by
    /// another worker, or was already completed. Nothing was changed.
    #[error(
        "the lease on {task} is no longer held by worker {worker}: it expired and another worker \
         claimed the task, or it was completed already; nothing was changed"
    )]
    LeaseLost {
        /// Which task.
        task: String,
        /// The caller.
        worker: String,
    },
    /// The activity's row is locked by another transaction (its workflow
    /// ending, a heartbeat, a session outside pgwake), so
    /// [`Store::complete_activity_tasks`](crate::Store::complete_activity_tasks)
    /// neither recorded nor dropped this result rather than wait for it.
    /// Transient: the activity keeps its lease; complete it again shortly.
    #[error(
        "activity {activity_id} of workflow instance {instance_id:?} is locked by another \
         transaction: its result was not recorded and will be retried (the activity keeps its \
         lease)"
    )]
    ActivityBusy {
        /// The activity's id.
        activity_id: String,
        /// The owning instance.
        instance_id: String,
    },
    /// A workflow decision holds more commands of one kind than one
    /// transaction should apply ([`MAX_COMMANDS_PER_DECISION`](crate::store::MAX_COMMANDS_PER_DECISION)).
    /// Nothing was written.
    #[error(
        "a workflow decision with {count} {kind} is refused: one decision holds at most {limit} \
         of each kind; spread them over several workflow tasks (schedule {limit}, and the rest \
         as those complete)"
    )]
    TooManyCommands {
        /// Which kind: `activities`, `timers`, `sub-workflows` ...
        kind: &'static str,
        /// How many the decision held.
        count: usize,
        /// The bound.
        limit: usize,
    },
    /// A payload could not be (de)serialized.
    #[error("payload is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The schema is missing, old, dirty or too new.
    #[error(transparent)]
    Schema(#[from] MigrateError),
    /// The URL was bad or the server unreachable.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// No connection could be had from the pool in time.
    #[error("no database connection available: {0}")]
    Pool(String),
    /// An operation ran past its deadline ([`StoreOptions::operation_timeout`](crate::StoreOptions::operation_timeout)):
    /// the server or the network did not answer in time. Its connection was
    /// discarded. Transient; a write's outcome is unknown (it may have
    /// committed), which its fencing and idempotence make safe to retry.
    #[error(
        "{context}: no answer within {after:?} (StoreOptions::operation_timeout); the connection \
         was discarded. Check the server and the network; raise the timeout if the database is \
         just slow"
    )]
    Timeout {
        /// What we were doing.
        context: &'static str,
        /// The deadline.
        after: std::time::Duration,
    },
    /// The store's options are out of range.
    #[error("invalid store options: {reason}")]
    InvalidOptions {
        /// Which setting, and what is wrong.
        reason: String,
    },
    /// A query failed. When the server says a prepared statement does not
    /// exist (SQLSTATE 26000), the message adds what causes that: a
    /// connection pooler in transaction mode.
    #[error("{context}: {}{}", ErrorChain(.source), pooler_hint(.source.code()))]
    Database {
        /// What we were doing.
        context: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl StoreError {
    /// Whether retrying later may succeed: the server or network failed, a
    /// lock or statement timeout or a deadlock ended the attempt, or the
    /// instance was busy, as opposed to the request being wrong. A value
    /// PostgreSQL refuses (SQLSTATE class 22: out of range, invalid input)
    /// is not transient: it would be refused again. [`LeaseLost`](Self::LeaseLost)
    /// is not either: see the enum's documentation.
    ///
    /// ```
    /// assert!(pgwake::StoreError::Pool("timed out".into()).is_transient());
    /// let busy = pgwake::StoreError::ActivityBusy {
    ///     activity_id: "a-1".into(),
    ///     instance_id: "order-7".into(),
    /// };
    /// assert!(busy.is_transient());
    /// assert!(!pgwake::StoreError::NoQueues.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Pool(_) | StoreError::ActivityBusy { .. } | StoreError::Timeout { .. } => {
                true
            }
            StoreError::Connect(err) => err.is_transient(),
            StoreError::Database { source, .. } => is_transient_postgres_error(source),
            _ => false,
        }
    }
}

/// What to do about a store error that a connection pooler causes, to
/// follow the server's message; empty for any other. A statement the
/// connection prepared is gone when PgBouncer in transaction mode hands the
/// client another server backend, unless PgBouncer (1.21 or newer) tracks
/// prepared statements itself.
fn pooler_hint(code: Option<&tokio_postgres::error::SqlState>) -> &'static str {
    if code == Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME) {
        " (a statement this connection prepared is gone: that is what PgBouncer in \
         transaction mode does before 1.21, or without max_prepared_statements. Use \
         PgBouncer >= 1.21 with max_prepared_statements > 0, or session mode)"
    } else {
        ""
    }
}

/// Why a runtime configuration was refused before anything connected.
///
/// ```
/// let err = pgwake::BuildError::Setting { name: "store.pool_size", reason: "must be at least 1".into() };
/// assert_eq!(err.to_string(), "invalid setting store.pool_size: must be at least 1");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A URL could not be parsed.
    #[error(transparent)]
    Url(#[from] ConnectError),
    /// A setting is out of range.
    #[error("invalid setting {name}: {reason}")]
    Setting {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A worker's queues, concurrency or lease are invalid.
    #[error("invalid worker #{index} ({kind}): {reason}")]
    Worker {
        /// Its position among the registered workers (0-based).
        index: usize,
        /// `activity` or `workflow`.
        kind: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why the runtime could not start.
///
/// ```
/// let err = pgwake::RuntimeError::from(pgwake::StoreError::NoQueues);
/// assert_eq!(err.to_string(), "no queues given: name at least one queue");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The configuration was refused (nothing connected).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// The database is reachable but its schema is not usable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::error::SqlState;

    #[test]
    fn data_exceptions_are_permanent() {
        for code in [
            SqlState::DATETIME_FIELD_OVERFLOW, // 22008: timestamp out of range
            SqlState::NUMERIC_VALUE_OUT_OF_RANGE,
            SqlState::INTERVAL_FIELD_OVERFLOW,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::DIVISION_BY_ZERO,
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
        ] {
            assert!(!is_transient_sqlstate(&code), "{code:?}");
        }
    }

    #[test]
    fn lock_statement_timeouts_and_rollbacks_are_transient() {
        for code in [
            SqlState::LOCK_NOT_AVAILABLE, // 55P03: lock_timeout
            SqlState::QUERY_CANCELED,     // 57014: statement_timeout
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_FAILURE,
        ] {
            assert!(is_transient_sqlstate(&code), "{code:?}");
        }
    }

    #[test]
    fn other_server_refusals_are_permanent() {
        for code in [
            SqlState::OBJECT_IN_USE, // 55006: class 55, but not a lock timeout
            SqlState::UNIQUE_VIOLATION,
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::UNDEFINED_TABLE,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ] {
            assert!(!is_transient_sqlstate(&code), "{code:?}");
        }
    }

    #[test]
    fn a_timeout_waiting_for_the_server_is_transient() {
        let error = tokio_postgres::Error::__private_api_timeout();
        assert!(is_transient_postgres_error(&error));
        let error = StoreError::Database {
            context: "claiming activity tasks",
            source: tokio_postgres::Error::__private_api_timeout(),
        };
        assert!(error.is_transient());
    }

    #[test]
    fn only_a_missing_prepared_statement_gets_the_pooler_hint() {
        let hint = pooler_hint(Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
        assert!(hint.contains("max_prepared_statements > 0"), "{hint}");
        assert!(hint.contains("session mode"), "{hint}");
        for code in [
            None,
            Some(&SqlState::UNDEFINED_TABLE),
            Some(&SqlState::DUPLICATE_PSTATEMENT),
        ] {
            assert_eq!(pooler_hint(code), "", "{code:?}");
        }
    }

    /// tokio-postgres cannot build a server error outside a connection:
    /// the server makes one.
    #[cfg(feature = "testing")]
    #[tokio::test]
    async fn a_missing_prepared_statement_is_shown_with_the_pooler_hint() {
        let database = crate::testing::fresh_database().await.unwrap();
        let client = database.config().connect().await.unwrap();
        let source = client.simple_query("EXECUTE s36").await.unwrap_err();
        assert_eq!(source.code(), Some(&SqlState::INVALID_SQL_STATEMENT_NAME));
        let error = StoreError::Database {
            context: "claiming activity tasks",
            source,
        };
        let text = error.to_string();
        assert!(
            text.starts_with("claiming activity tasks: db error: ERROR: prepared statement \"s36\" does not exist"),
            "{text}"
        );
        assert!(
            text.contains("PgBouncer >= 1.21 with max_prepared_statements > 0, or session mode"),
            "{text}"
        );
        assert!(!error.is_transient());
    }

    #[test]
    fn bounds_and_lost_leases_are_not_transient() {
        let too_many = StoreError::TooManyCommands {
            kind: "activities",
            count: 10_001,
            limit: 10_000,
        };
        assert!(!too_many.is_transient());
        let lost = StoreError::LeaseLost {
            task: "activity a of i".into(),
            worker: "w".into(),
        };
        assert!(!lost.is_transient());
        let busy = StoreError::ActivityBusy {
            activity_id: "a".into(),
            instance_id: "i".into(),
        };
        assert!(busy.is_transient());
        assert!(
            busy.to_string().contains("locked by another transaction"),
            "{busy}"
        );
        assert!(busy.to_string().contains("will be retried"), "{busy}");
    }
}
