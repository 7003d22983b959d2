//! Throwaway PostgreSQL for tests: ours, and our users'.
//!
//! [`TestPostgres`] runs a private cluster (`initdb` + `postgres` from the
//! machine's server binaries) in a temporary directory on a free port, with
//! durability off, and removes it when dropped, even when a test panics or
//! the test process is killed. [`fresh_database`] hands each test its own
//! database, cloned from a migrated template so it costs milliseconds, on
//! `DATABASE_URL`'s server when that is set and on one shared throwaway
//! cluster per test process otherwise.
//!
//! ```no_run
//! # #[actix_rt::test] async fn my_test() {
//! let database = pgwake::testing::fresh_database().await.unwrap();
//! let client = pgwake::ConnectionConfig::from_url(database.url()).unwrap().connect().await.unwrap();
//! client.batch_execute("INSERT INTO instances (instance_id, execution_id, state) VALUES ('a', 'b', 0)").await.unwrap();
//! # }
//! ```
//!
//! Tests that stop, restart or cut the server get a cluster of their own:
//!
//! ```no_run
//! # fn f() -> Result<(), pgwake::testing::TestPostgresError> {
//! let mut server = pgwake::testing::TestPostgres::new()?;
//! let url = server.url();
//! server.restart()?; // same port, same data
//! # Ok(()) }
//! ```
//!
//! Failover tests pair a cluster with a streaming standby
//! ([`TestPostgres::new_standby_of`]), crash the first and promote the
//! second:
//!
//! ```no_run
//! # async fn f() -> Result<(), pgwake::testing::TestPostgresError> {
//! use pgwake::testing::TestPostgres;
//!
//! let mut primary = TestPostgres::new()?;
//! let standby = TestPostgres::new_standby_of(&primary)?;
//! let database = primary.create_database().await?;
//! standby.wait_until_replayed(&primary).await?; // nothing acknowledged is lost below
//! let url = format!(
//!     "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
//!     primary.port(), standby.port(), database.name(),
//! );
//! primary.crash()?;
//! standby.promote().await?;
//! # Ok(()) }
//! ```
//!
//! Tests of what a connection pooler changes put a throwaway [`PgBouncer`]
//! (the machine's `pgbouncer` binary) in front of a server:
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let database = pgwake::testing::fresh_database().await?;
//! let bouncer = pgwake::testing::PgBouncer::builder(database.url())
//!     .default_pool_size(1) // transaction mode, one server backend for all
//!     .start()?;
//! let through_bouncer = bouncer.url();
//! # Ok(()) }
//! ```

mod cluster;
mod databases;
mod fault_proxy;
mod pgbouncer;
mod scratch;
mod tls;

pub use cluster::TestPostgres;
pub use databases::{fresh_database, fresh_empty_database, TestDatabase, TestDatabases};
pub use fault_proxy::FaultProxy;
pub use pgbouncer::{PgBouncer, PgBouncerBuilder, PgBouncerError, PoolMode};
pub use tls::{TestTls, CERT_USER, TLS_ONLY_USER};

use std::path::PathBuf;

/// Why a throwaway cluster or database could not be had.
///
/// ```
/// let err = pgwake::testing::TestPostgresError::NoPostgresUser;
/// assert!(err.to_string().contains("useradd --system postgres"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestPostgresError {
    /// No `initdb` and `postgres` binaries were found.
    #[error(
        "PostgreSQL's server binaries (initdb and postgres) were not found in {searched}; \
         install the server package (Debian/Ubuntu: `apt-get install postgresql`, \
         Fedora: `dnf install postgresql-server`, macOS: `brew install postgresql`), \
         set PGWAKE_PG_BINDIR to their directory, or set DATABASE_URL to use a running server"
    )]
    BinariesNotFound {
        /// The places looked in.
        searched: String,
    },
    /// Running as root, but there is no `postgres` user to run the server as
    /// (PostgreSQL refuses to run as root).
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no 'postgres' \
         user to run it as: create one (`useradd --system postgres`) or run as another user"
    )]
    NoPostgresUser,
    /// A command (initdb, chown ...) failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Its output or error.
        detail: String,
    },
    /// The server did not become ready.
    #[error("the test server did not start: {reason}; its log ({log}) ends with:\n{log_tail}")]
    StartFailed {
        /// What went wrong.
        reason: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the test server failed.
    #[error(transparent)]
    Connect(#[from] crate::ConnectError),
    /// Migrating the template database failed.
    #[error(transparent)]
    Migrate(#[from] crate::MigrateError),
    /// A database was asked of a standby that is still replaying its
    /// primary: it is read-only, and has every database of the primary.
    #[error(
        "the test server on port {port} is a standby of the one on port {primary_port}, \
         read-only until promoted: create databases on the primary, then wait until \
         the standby has replayed them (TestPostgres::wait_until_replayed)"
    )]
    StandbyIsReadOnly {
        /// The standby's port.
        port: u16,
        /// Its primary's port.
        primary_port: u16,
    },
    /// A standby did not replay its primary's WAL in time.
    #[error("the standby replayed WAL up to {replayed} only, after {after:?}; its primary was at {primary_at}")]
    ReplayTimedOut {
        /// The primary's WAL position waited for.
        primary_at: String,
        /// How far the standby had replayed.
        replayed: String,
        /// How long was waited.
        after: std::time::Duration,
    },
    /// A query against the test server failed.
    #[error("{context}: {}", crate::error::ErrorChain(.source))]
    Database {
        /// What we were doing.
        context: &'static str,
        /// The server's error.
        #[source]
        source: tokio_postgres::Error,
    },
}
