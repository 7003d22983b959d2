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

/// Why a schema migration was refused or failed.
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
