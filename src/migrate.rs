//! Schema versions, compatible with golang-migrate (and so with go-workflows).
//!
//! The migrations under `migrations/` are embedded in the binary. The
//! bookkeeping is golang-migrate's: a table `schema_migrations (version bigint
//! NOT NULL PRIMARY KEY, dirty boolean NOT NULL)` holding at most one row, so
//! a database that go-workflows migrated can be taken over, and the reverse.
//!
//! Each run holds a session-level `pg_advisory_lock` with golang-migrate's
//! key for this database and table, so concurrent runs (ours or theirs)
//! queue up instead of racing. Each step is marked dirty (committed) before
//! it starts, then its SQL and the clean mark commit together in one
//! transaction. A step whose SQL fails is rolled back and the version reset
//! to where it was; only a process that dies mid-step leaves the database
//! dirty, and that is refused until someone checks it and runs `force`.
//!
//! ```no_run
//! # async fn run() -> Result<(), pgwake::MigrateError> {
//! let config = pgwake::ConnectionConfig::from_url("postgres://postgres@localhost/app")?;
//! let mut client = config.connect().await?;
//! let report = pgwake::migrate::up(&mut client, None).await?;
//! println!("now at {:?}, applied {:?}", report.to, report.applied);
//! # Ok(()) }
//! ```

use tokio_postgres::Client;

use crate::error::MigrateError;

/// One schema version: its SQL both ways.
///
/// ```
/// let first = &pgwake::migrate::MIGRATIONS[0];
/// assert_eq!((first.version, first.name), (1, "initial"));
/// assert!(first.up_sql.contains("CREATE TABLE"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migration {
    /// golang-migrate's version number (the file name's prefix).
    pub version: i64,
    /// The rest of the file name, e.g. `initial`.
    pub name: &'static str,
    /// SQL applied by `up`.
    pub up_sql: &'static str,
    /// SQL applied by `down`.
    pub down_sql: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $name,
            up_sql: include_str!(concat!("../migrations/", $file, ".up.sql")),
            down_sql: include_str!(concat!("../migrations/", $file, ".down.sql")),
        }
    };
}

/// Every migration this binary carries, oldest first.
///
/// Version 7 (`sql_functions`) installs `pgwake_start_workflow`,
/// `pgwake_signal_workflow`, `pgwake_cancel_workflow` and
/// `pgwake_enqueue_activity` next to the tables: SQL that writes what the
/// store writes, inside the caller's transaction (see `docs/sql.md`).
///
/// ```
/// use pgwake::migrate::MIGRATIONS;
///
/// assert!(MIGRATIONS.windows(2).all(|pair| pair[0].version < pair[1].version));
/// for migration in MIGRATIONS {
///     println!("{:06}_{}", migration.version, migration.name);
/// }
/// ```
pub static MIGRATIONS: &[Migration] = &[
    migration!(1, "initial", "000001_initial"),
    migration!(2, "add_notify_triggers", "000002_add_notify_triggers"),
    migration!(3, "add_due_time_indexes", "000003_add_due_time_indexes"),
    migration!(4, "statement_level_notify", "000004_statement_level_notify"),
    migration!(5, "lease_ids", "000005_lease_ids"),
    migration!(6, "workflow_task_attempts", "000006_workflow_task_attempts"),
    migration!(7, "sql_functions", "000007_sql_functions"),
    migration!(8, "claim_indexes", "000008_claim_indexes"),
    migration!(9, "dashboard_indexes", "000009_dashboard_indexes"),
    migration!(10, "schedules", "000010_schedules"),
    migration!(11, "pipelined_checks", "000011_pipelined_checks"),
    migration!(12, "activity_lease_index", "000012_activity_lease_index"),
    migration!(13, "pending_event_queues", "000013_pending_event_queues"),
];

/// The newest version this binary carries: what [`up`] goes to by default
/// and what the runtime requires.
///
/// ```
/// use pgwake::migrate::{newest_version, MIGRATIONS};
///
/// assert_eq!(newest_version(), MIGRATIONS.last().unwrap().version);
/// ```
pub fn newest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Where a database stands.
///
/// ```
/// use pgwake::migrate::{MigrationStatus, MIGRATIONS};
///
/// let fresh = MigrationStatus::new(None, false);
/// assert_eq!(fresh.pending().len(), MIGRATIONS.len());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationStatus {
    /// The applied version; `None` when nothing is applied.
    pub version: Option<i64>,
    /// Whether a step started and did not finish.
    pub dirty: bool,
    /// The newest version this binary carries.
    pub newest: i64,
}

impl MigrationStatus {
    /// A database at `version` (`None`: nothing applied), as this binary
    /// sees it: `newest` is [`newest_version`].
    ///
    /// ```
    /// use pgwake::migrate::{newest_version, MigrationStatus};
    ///
    /// let status = MigrationStatus::new(Some(3), false);
    /// assert_eq!(status.newest, newest_version());
    /// ```
    pub fn new(version: Option<i64>, dirty: bool) -> Self {
        Self {
            version,
            dirty,
            newest: newest_version(),
        }
    }

    /// The versions [`up`] would apply.
    ///
    /// ```
    /// use pgwake::migrate::{newest_version, MigrationStatus};
    ///
    /// let status = MigrationStatus::new(Some(1), false);
    /// assert_eq!(status.pending(), (2..=newest_version()).collect::<Vec<_>>());
    /// ```
    pub fn pending(&self) -> Vec<i64> {
        let current = self.version.unwrap_or(0);
        MIGRATIONS
            .iter()
            .map(|m| m.version)
            .filter(|v| *v > current)
            .collect()
    }
}

/// What a run changed.
///
/// ```
/// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// let report = pgwake::migrate::up(client, None).await?;
/// println!("{:?} -> {:?}, applied {:?}", report.from, report.to, report.applied);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// The version before the run.
    pub from: Option<i64>,
    /// The version after it.
    pub to: Option<i64>,
    /// The versions applied (up) or reverted (down), in order.
    pub applied: Vec<i64>,
}

/// How far [`down`] goes.
///
/// ```
/// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// use pgwake::migrate::{down, DownSteps};
///
/// let report = down(client, DownSteps::Steps(1)).await?;
/// assert!(report.applied.len() <= 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownSteps {
    /// Revert this many versions (fewer if fewer are applied).
    Steps(u32),
    /// Revert everything, dropping pgwake's tables.
    All,
}

const VERSION_TABLE: &str = "schema_migrations";

/// Reads the database's version without changing anything (no lock taken).
///
/// # Errors
/// [`MigrateError::Database`] when the query fails.
///
/// ```
/// # async fn example(client: &tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// let status = pgwake::migrate::status(client).await?;
/// println!("at {:?}, dirty: {}, pending: {:?}", status.version, status.dirty, status.pending());
/// # Ok(()) }
/// ```
pub async fn status(client: &Client) -> Result<MigrationStatus, MigrateError> {
    let (version, dirty) = read_version(client).await?;
    Ok(MigrationStatus {
        version,
        dirty,
        newest: newest_version(),
    })
}

/// Refuses a database whose schema is not exactly what this binary needs:
/// what the store and runtime call before they start.
///
/// # Errors
/// [`MigrateError::Dirty`], [`MigrateError::NewerThanKnown`] or
/// [`MigrateError::NotMigrated`], each saying which command fixes it.
///
/// ```
/// # async fn example(client: &tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// // Err(MigrateError::NotMigrated { .. }) until `migrate::up` has run.
/// pgwake::migrate::check(client).await?;
/// # Ok(()) }
/// ```
pub async fn check(client: &Client) -> Result<(), MigrateError> {
    let status = status(client).await?;
    refuse_unusable(&status)?;
    if status.version != Some(status.newest) {
        return Err(MigrateError::NotMigrated {
            found: status.version,
            required: status.newest,
        });
    }
    Ok(())
}

/// Applies every migration above the current version, up to `to` (default:
/// the newest). Safe to call from many processes at once.
///
/// # Errors
/// A dirty or too new database, an unknown target, a target below the
/// current version, or a failed step (rolled back).
///
/// ```
/// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// let report = pgwake::migrate::up(client, Some(2)).await?;
/// assert_eq!(report.to, Some(2));
/// # Ok(()) }
/// ```
pub async fn up(client: &mut Client, to: Option<i64>) -> Result<MigrationReport, MigrateError> {
    let target = to.unwrap_or_else(newest_version);
    require_known(target)?;
    with_lock(client, |client| Box::pin(up_locked(client, target))).await
}

/// Reverts applied migrations, newest first.
///
/// # Errors
/// A dirty or too new database, or a failed step (rolled back).
///
/// ```
/// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// use pgwake::migrate::DownSteps;
///
/// let report = pgwake::migrate::down(client, DownSteps::All).await?;
/// assert_eq!(report.to, None);
/// # Ok(()) }
/// ```
pub async fn down(client: &mut Client, steps: DownSteps) -> Result<MigrationReport, MigrateError> {
    with_lock(client, |client| Box::pin(down_locked(client, steps))).await
}

/// Records `version` as applied and clean without running any SQL: the way
/// out of a dirty database once a person has checked what state it is in.
/// `0` records that nothing is applied.
///
/// # Errors
/// [`MigrateError::UnknownVersion`] for a version this binary does not carry.
///
/// ```
/// # async fn example(client: &mut tokio_postgres::Client) -> Result<(), pgwake::MigrateError> {
/// // Checked by hand: the dirty step to version 3 did in fact complete.
/// pgwake::migrate::force(client, 3).await?;
/// pgwake::migrate::up(client, None).await?;
/// # Ok(()) }
/// ```
pub async fn force(client: &mut Client, version: i64) -> Result<(), MigrateError> {
    if version != 0 {
        require_known(version)?;
    }
    with_lock(client, |client| {
        Box::pin(async move {
            ensure_version_table(client).await?;
            let transaction = client
                .transaction()
                .await
                .map_err(db("starting the force"))?;
            write_version(&transaction, (version != 0).then_some(version), false).await?;
            transaction
                .commit()
                .await
                .map_err(db("committing the force"))?;
            tracing::info!(version, "migration version forced");
            Ok(())
        })
    })
    .await
}

type LockedFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, MigrateError>> + 'a>>;

/// Runs `work` holding the migration lock, and releases it whatever happens
/// (it is also released by the server if the connection drops).
async fn with_lock<T>(
    client: &mut Client,
    work: impl for<'a> FnOnce(&'a mut Client) -> LockedFuture<'a, T>,
) -> Result<T, MigrateError> {
    let key = lock_key(client).await?;
    tracing::debug!(key, "waiting for the migration lock");
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(db("taking the migration lock"))?;
    let outcome = work(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await
        .map_err(db("releasing the migration lock"));
    let value = outcome?;
    unlocked?;
    Ok(value)
}

/// golang-migrate's lock key for (database, schema, table), so that its runs
/// and ours exclude each other: CRC-32 (IEEE) of the names joined by NUL,
/// times its salt, as an unsigned 32-bit number.
async fn lock_key(client: &Client) -> Result<i64, MigrateError> {
    let row = client
        .query_one("SELECT current_database(), current_schema()", &[])
        .await
        .map_err(db("reading the database and schema name"))?;
    let database: String = row.get(0);
    let schema: Option<String> = row.get(1);
    let joined = format!(
        "{}\0{VERSION_TABLE}\0{database}",
        schema.unwrap_or_default()
    );
    const GOLANG_MIGRATE_SALT: u32 = 1_486_364_155;
    Ok(i64::from(
        checksum(joined.as_bytes()).wrapping_mul(GOLANG_MIGRATE_SALT),
    ))
}

/// CRC-32 (IEEE), as Go's `crc32.ChecksumIEEE`.
pub(crate) fn checksum(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

async fn up_locked(client: &mut Client, target: i64) -> Result<MigrationReport, MigrateError> {
    ensure_version_table(client).await?;
    let (from, dirty) = read_version(client).await?;
    refuse_unusable(&MigrationStatus {
        version: from,
        dirty,
        newest: newest_version(),
    })?;
    let current = from.unwrap_or(0);
    if target < current {
        return Err(MigrateError::TargetBelowCurrent { current, target });
    }
    let mut applied = Vec::new();
    let mut before = from;
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        run_step(
            client,
            migration,
            Direction::Up,
            before,
            Some(migration.version),
        )
        .await?;
        applied.push(migration.version);
        before = Some(migration.version);
    }
    Ok(MigrationReport {
        from,
        to: before,
        applied,
    })
}

async fn down_locked(
    client: &mut Client,
    steps: DownSteps,
) -> Result<MigrationReport, MigrateError> {
    ensure_version_table(client).await?;
    let (from, dirty) = read_version(client).await?;
    refuse_unusable(&MigrationStatus {
        version: from,
        dirty,
        newest: newest_version(),
    })?;
    let limit = match steps {
        DownSteps::Steps(n) => n as usize,
        DownSteps::All => usize::MAX,
    };
    let current = from.unwrap_or(0);
    let to_revert: Vec<&Migration> = MIGRATIONS
        .iter()
        .rev()
        .filter(|m| m.version <= current)
        .take(limit)
        .collect();
    let mut applied = Vec::new();
    let mut at = from;
    for migration in to_revert {
        let below = MIGRATIONS
            .iter()
            .rev()
            .find(|m| m.version < migration.version)
            .map(|m| m.version);
        run_step(client, migration, Direction::Down, at, below).await?;
        applied.push(migration.version);
        at = below;
    }
    Ok(MigrationReport {
        from,
        to: at,
        applied,
    })
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Up,
    Down,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// One step: dirty mark committed first (so a crash is visible), then the
/// SQL and the clean mark in one transaction.
async fn run_step(
    client: &mut Client,
    migration: &Migration,
    direction: Direction,
    before: Option<i64>,
    after: Option<i64>,
) -> Result<(), MigrateError> {
    let span = tracing::info_span!(
        "migration",
        version = migration.version,
        name = migration.name,
        direction = direction.as_str()
    );
    let _entered = span.enter();
    {
        let mark = client
            .transaction()
            .await
            .map_err(db("starting the dirty mark"))?;
        write_version(&mark, after, true).await?;
        mark.commit()
            .await
            .map_err(db("committing the dirty mark"))?;
    }
    let sql = match direction {
        Direction::Up => migration.up_sql,
        Direction::Down => migration.down_sql,
    };
    let step = client
        .transaction()
        .await
        .map_err(db("starting the migration"))?;
    if let Err(source) = step.batch_execute(sql).await {
        // Dropping the transaction rolls back the SQL; put the version back
        // so the database is usable again (it is unchanged).
        drop(step);
        let restore = client
            .transaction()
            .await
            .map_err(db("restoring the version"))?;
        write_version(&restore, before, false).await?;
        restore
            .commit()
            .await
            .map_err(db("restoring the version"))?;
        tracing::error!(error = %crate::error::ErrorChain(&source), "migration failed, rolled back");
        return Err(MigrateError::StepFailed {
            version: migration.version,
            name: migration.name,
            direction: direction.as_str(),
            source,
        });
    }
    write_version(&step, after, false).await?;
    step.commit()
        .await
        .map_err(db("committing the migration"))?;
    tracing::info!("migration applied");
    Ok(())
}

fn refuse_unusable(status: &MigrationStatus) -> Result<(), MigrateError> {
    if status.dirty {
        return Err(MigrateError::Dirty {
            version: status.version.unwrap_or(-1),
        });
    }
    match status.version {
        Some(version) if version > status.newest => Err(MigrateError::NewerThanKnown {
            version,
            newest: status.newest,
        }),
        _ => Ok(()),
    }
}

fn require_known(version: i64) -> Result<(), MigrateError> {
    if MIGRATIONS.iter().any(|m| m.version == version) {
        return Ok(());
    }
    let known: Vec<String> = MIGRATIONS.iter().map(|m| m.version.to_string()).collect();
    Err(MigrateError::UnknownVersion {
        version,
        known: known.join(", "),
    })
}

async fn ensure_version_table(client: &Client) -> Result<(), MigrateError> {
    // Checked first so that a role without CREATE can still migrate a
    // database whose table exists (as golang-migrate does).
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db("looking for schema_migrations"))?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)",
            )
            .await
            .map_err(db("creating schema_migrations"))?;
    }
    Ok(())
}

/// `(None, false)` when the table is missing or empty; golang-migrate writes
/// `-1` for "no version" when a step down to nothing is dirty.
async fn read_version(client: &Client) -> Result<(Option<i64>, bool), MigrateError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db("looking for schema_migrations"))?
        .get(0);
    if !exists {
        return Ok((None, false));
    }
    let row = client
        .query_opt("SELECT version, dirty FROM schema_migrations LIMIT 1", &[])
        .await
        .map_err(db("reading schema_migrations"))?;
    Ok(match row {
        None => (None, false),
        Some(row) => {
            let version: i64 = row.get(0);
            ((version >= 0).then_some(version), row.get(1))
        }
    })
}

/// golang-migrate's `SetVersion`: the table holds one row, or none for "no
/// version" (a dirty "no version" is kept as `-1`).
async fn write_version(
    transaction: &tokio_postgres::Transaction<'_>,
    version: Option<i64>,
    dirty: bool,
) -> Result<(), MigrateError> {
    transaction
        .batch_execute("TRUNCATE schema_migrations")
        .await
        .map_err(db("clearing schema_migrations"))?;
    let stored = match (version, dirty) {
        (Some(version), _) => Some(version),
        (None, true) => Some(-1),
        (None, false) => None,
    };
    if let Some(stored) = stored {
        transaction
            .execute(
                "INSERT INTO schema_migrations (version, dirty) VALUES ($1, $2)",
                &[&stored, &dirty],
            )
            .await
            .map_err(db("writing schema_migrations"))?;
    }
    Ok(())
}

fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MigrateError {
    move |source| MigrateError::Database { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_the_crc32_ieee_check_value() {
        assert_eq!(checksum(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn versions_are_strictly_increasing() {
        assert!(MIGRATIONS.windows(2).all(|w| w[0].version < w[1].version));
    }

    #[test]
    fn pending_lists_versions_above_the_current_one() {
        let status = MigrationStatus {
            version: Some(1),
            dirty: false,
            newest: newest_version(),
        };
        assert_eq!(status.pending(), (2..=newest_version()).collect::<Vec<_>>());
    }
}
