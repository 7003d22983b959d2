//! Fresh databases for tests: cloned from a migrated template, on
//! `DATABASE_URL`'s server or on one throwaway cluster per test process.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use super::{TestPostgres, TestPostgresError};
use crate::connection::{with_dbname, ConnectionConfig};
use crate::migrate;

/// One test's own database.
///
/// ```
/// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
/// let database = pgwake::testing::fresh_database().await?;
/// println!("{} at {}", database.name(), database.config().redacted());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TestDatabase {
    url: String,
    name: String,
}

impl TestDatabase {
    /// A URL for this database (with the server's credentials).
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let database = pgwake::testing::fresh_database().await?;
    /// let config = pgwake::ConnectionConfig::from_url(database.url())?;
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let database = pgwake::testing::fresh_database().await?;
    /// assert!(database.name().starts_with("pgwake_test_"));
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parsed connection settings.
    ///
    /// # Panics
    /// Never: the URL was parsed when the database was created.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let database = pgwake::testing::fresh_database().await?;
    /// assert_eq!(database.config().dbname(), Some(database.name()));
    /// let client = database.config().connect().await?;
    /// # Ok(()) }
    /// ```
    pub fn config(&self) -> ConnectionConfig {
        ConnectionConfig::from_url(&self.url).expect("validated when the database was created")
    }
}

impl fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Makes databases on one server: migrated ones are cloned from a template
/// built once per set of migrations (its name carries their checksum, so an
/// edited migration gets a new template instead of a stale one).
///
/// ```
/// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
/// let databases = pgwake::testing::TestDatabases::new("postgres://postgres@localhost/postgres".into());
/// let first = databases.create_database().await?;
/// let second = databases.create_database().await?;
/// assert_ne!(first.name(), second.name());
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestDatabases {
    admin_url: String,
    template_ready: tokio::sync::OnceCell<()>,
    created: AtomicU64,
}

impl TestDatabases {
    /// Databases on the server of `admin_url`, whose role may `CREATE DATABASE`.
    ///
    /// ```
    /// use pgwake::testing::TestDatabases;
    ///
    /// // Nothing connects until a database is asked for.
    /// let databases = TestDatabases::new("postgres://postgres@localhost/postgres".to_string());
    /// ```
    pub fn new(admin_url: String) -> Self {
        Self {
            admin_url,
            template_ready: tokio::sync::OnceCell::new(),
            created: AtomicU64::new(0),
        }
    }

    /// A new database at the newest schema version.
    ///
    /// # Errors
    /// When the server is unreachable, or the template cannot be built.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let databases = pgwake::testing::TestDatabases::new("postgres://postgres@localhost/postgres".into());
    /// let client = databases.create_database().await?.config().connect().await?;
    /// pgwake::migrate::check(&client).await?; // at the newest version
    /// # Ok(()) }
    /// ```
    pub async fn create_database(&self) -> Result<TestDatabase, TestPostgresError> {
        let template = template_name();
        self.template_ready
            .get_or_try_init(|| self.build_template(&template))
            .await?;
        self.create(Some(&template)).await
    }

    /// A new database with no tables at all.
    ///
    /// # Errors
    /// When the server is unreachable or refuses `CREATE DATABASE`.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let databases = pgwake::testing::TestDatabases::new("postgres://postgres@localhost/postgres".into());
    /// let client = databases.create_empty_database().await?.config().connect().await?;
    /// assert_eq!(pgwake::migrate::status(&client).await?.version, None);
    /// # Ok(()) }
    /// ```
    pub async fn create_empty_database(&self) -> Result<TestDatabase, TestPostgresError> {
        self.create(None).await
    }

    async fn create(&self, template: Option<&str>) -> Result<TestDatabase, TestPostgresError> {
        let admin = ConnectionConfig::from_url(&self.admin_url)?
            .connect()
            .await?;
        let name = format!(
            "pgwake_test_{}_{}",
            std::process::id(),
            self.created.fetch_add(1, Ordering::Relaxed)
        );
        // Names are made here from numbers; quoting is for form's sake.
        let sql = match template {
            Some(template) => format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\""),
            None => format!("CREATE DATABASE \"{name}\" TEMPLATE template0"),
        };
        admin
            .batch_execute(&sql)
            .await
            .map_err(|source| TestPostgresError::Database {
                context: "creating a test database",
                source,
            })?;
        Ok(TestDatabase {
            url: with_dbname(&self.admin_url, &name),
            name,
        })
    }

    /// Builds the template under an advisory lock, so test processes sharing
    /// a server build it once, and renames it into place only when migrated,
    /// so nobody clones a half-built one.
    async fn build_template(&self, template: &str) -> Result<(), TestPostgresError> {
        let db_error = |context| move |source| TestPostgresError::Database { context, source };
        let admin = ConnectionConfig::from_url(&self.admin_url)?
            .connect()
            .await?;
        admin
            .execute("SELECT pg_advisory_lock(7271000001)", &[])
            .await
            .map_err(db_error("locking the template build"))?;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
            .await
            .map_err(db_error("looking for the template"))?
            .is_some();
        if !exists {
            let building = format!("{template}_building");
            // Left over by a process that died mid-build; we hold the lock.
            for sql in [
                format!("DROP DATABASE IF EXISTS \"{building}\""),
                format!("CREATE DATABASE \"{building}\" TEMPLATE template0"),
            ] {
                admin
                    .batch_execute(&sql)
                    .await
                    .map_err(db_error("creating the template"))?;
            }
            {
                let mut client =
                    ConnectionConfig::from_url(&with_dbname(&self.admin_url, &building))?
                        .connect()
                        .await?;
                migrate::up(&mut client, None).await?;
            }
            // The migrating session may still be exiting; RENAME waits for
            // nobody, but it fails if anyone is connected, so retry briefly.
            let rename = format!("ALTER DATABASE \"{building}\" RENAME TO \"{template}\"");
            let mut attempts = 0;
            loop {
                match admin.batch_execute(&rename).await {
                    Ok(()) => break,
                    Err(_) if attempts < 100 => {
                        attempts += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    Err(source) => {
                        return Err(TestPostgresError::Database {
                            context: "renaming the template into place",
                            source,
                        })
                    }
                }
            }
        }
        admin
            .execute("SELECT pg_advisory_unlock(7271000001)", &[])
            .await
            .map_err(db_error("unlocking the template build"))?;
        Ok(())
    }
}

fn template_name() -> String {
    let mut all_sql = String::new();
    for migration in migrate::MIGRATIONS {
        all_sql.push_str(migration.up_sql);
        all_sql.push_str(migration.down_sql);
    }
    format!(
        "pgwake_template_{:08x}",
        crate::migrate::checksum(all_sql.as_bytes())
    )
}

/// The server shared by every test of this process, started on first use.
/// It is never dropped: its watchdog sees the process exit and removes it.
fn shared_databases() -> Result<&'static TestDatabases, TestPostgresError> {
    static SHARED: OnceLock<Result<(Option<TestPostgres>, TestDatabases), String>> =
        OnceLock::new();
    let shared = SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Ok((None, TestDatabases::new(url))),
        _ => TestPostgres::new()
            .map(|server| {
                let databases = TestDatabases::new(server.url());
                (Some(server), databases)
            })
            .map_err(|err| err.to_string()),
    });
    match shared {
        Ok((_, databases)) => Ok(databases),
        Err(message) => Err(TestPostgresError::Command {
            command: "starting the shared test server".into(),
            detail: message.clone(),
        }),
    }
}

/// A new database at the newest schema, for one test: on `DATABASE_URL`'s
/// server when set (its role needs `CREATEDB`; databases are named
/// `pgwake_test_*` and left behind for inspection), otherwise on a throwaway
/// cluster shared by this test process.
///
/// # Errors
/// When no server can be had (see [`TestPostgres::new`]) or creation fails.
///
/// ```
/// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
/// let database = pgwake::testing::fresh_database().await?;
/// let client = database.config().connect().await?;
/// pgwake::migrate::check(&client).await?; // at the newest version
/// # Ok(()) }
/// ```
pub async fn fresh_database() -> Result<TestDatabase, TestPostgresError> {
    shared_databases()?.create_database().await
}

/// Like [`fresh_database`], with no schema at all.
///
/// # Errors
/// As [`fresh_database`].
///
/// ```
/// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
/// let database = pgwake::testing::fresh_empty_database().await?;
/// let mut client = database.config().connect().await?;
/// let report = pgwake::migrate::up(&mut client, Some(1)).await?;
/// assert_eq!(report.applied, [1]);
/// # Ok(()) }
/// ```
pub async fn fresh_empty_database() -> Result<TestDatabase, TestPostgresError> {
    shared_databases()?.create_empty_database().await
}
