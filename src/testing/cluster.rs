//! A private PostgreSQL cluster: initdb into a temp dir, a server on a free
//! port, and a watchdog that takes the server down with its owner.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::databases::TestDatabases;
use super::TestPostgresError;

/// How long a server may take to accept connections after `postgres` starts,
/// and how long a standby may take to replay its primary's WAL or to leave
/// recovery when promoted.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How many names a promoted standby tries for a new database: more than
/// a test process creates on its primary.
const MAX_NAME_ATTEMPTS: u32 = 10_000;

/// Runs the postmaster and waits for one line on stdin: `fast` or `immediate`
/// stops it and keeps the data; end of file (the owner dropped us, or its
/// process died, however it died) stops it and deletes the directory. This is
/// what guarantees no server outlives its test process.
const WATCHDOG_SCRIPT: &str = r#"
"$1" -D "$2" -p "$3" -k "$4" \
  -c listen_addresses=127.0.0.1 -c fsync=$7 -c synchronous_commit=$7 \
  -c full_page_writes=$7 -c max_connections=300 -c shared_buffers=64MB \
  </dev/null >>"$5" 2>&1 &
pm=$!
IFS= read -r how || how=gone
case "$how" in
  fast) kill -INT "$pm" 2>/dev/null ;;
  *) kill -QUIT "$pm" 2>/dev/null ;;
esac
wait "$pm"
if [ "$how" = gone ]; then rm -rf "$6"; fi
"#;

/// A throwaway PostgreSQL cluster, owned by this value.
///
/// `fsync`, `synchronous_commit` and `full_page_writes` are off: data
/// survives [`restart`](Self::restart) but not a machine crash, which is all
/// a test needs and makes commits cheap. When the process runs as root the
/// cluster belongs to the `postgres` user, since PostgreSQL refuses root.
///
/// ```no_run
/// # fn f() -> Result<(), pgwake::testing::TestPostgresError> {
/// let mut server = pgwake::testing::TestPostgres::new()?;
/// println!("connect to {}", server.url());
/// server.stop()?;
/// server.start()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TestPostgres {
    bin_dir: PathBuf,
    root_dir: PathBuf,
    port: u16,
    durable: bool,
    owner: Option<(u32, u32)>,
    /// The primary's port, for a cluster made by [`TestPostgres::new_standby_of`].
    primary_port: Option<u16>,
    watchdog: Option<Watchdog>,
    databases: TestDatabases,
}

#[derive(Debug)]
struct Watchdog {
    process: Child,
    commands: Option<ChildStdin>,
}

impl TestPostgres {
    /// Creates a cluster in a new temporary directory and starts it.
    ///
    /// # Errors
    /// [`TestPostgresError::BinariesNotFound`] names the package to install;
    /// other variants carry the failing command's output or the server log.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// assert!(server.is_running());
    /// # Ok(()) }
    /// ```
    pub fn new() -> Result<Self, TestPostgresError> {
        Self::create(false)
    }

    /// Like [`new`](Self::new), with `fsync`, `synchronous_commit` and
    /// `full_page_writes` on: every commit waits for its WAL flush, as on a
    /// production server. For benchmarks of what commits cost.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new_durable()?;
    /// println!("every commit waits for its WAL flush on {}", server.url());
    /// # Ok(()) }
    /// ```
    pub fn new_durable() -> Result<Self, TestPostgresError> {
        Self::create(true)
    }

    fn create(durable: bool) -> Result<Self, TestPostgresError> {
        let bin_dir = find_server_binaries()?;
        let owner = if running_as_root()? {
            Some(postgres_user_ids()?)
        } else {
            None
        };
        let root_dir = super::scratch::private_dir("pgwake-pg", owner)
            .map_err(|(context, source)| TestPostgresError::Io { context, source })?;
        let mut server = TestPostgres {
            bin_dir,
            root_dir,
            port: 0,
            durable,
            owner,
            primary_port: None,
            watchdog: None,
            databases: TestDatabases::new(String::new()),
        };
        server.init_cluster()?;
        server.start_on_a_free_port()?;
        Ok(server)
    }

    /// A streaming standby of the running `primary`: a base backup of it
    /// (`pg_basebackup -R -X stream`, as the cluster's owner) in a new
    /// temporary directory, started on a free port of its own, as a hot
    /// standby that replays the primary's WAL as it is written. It belongs
    /// to this value the way [`new`](Self::new)'s cluster does: dropped, or
    /// its process dead, it is stopped and deleted.
    ///
    /// Replication is asynchronous, as the primary's `synchronous_commit`
    /// is off: a commit the primary acknowledged reaches the standby a
    /// moment later, so a test that needs it there calls
    /// [`wait_until_replayed`](Self::wait_until_replayed) before crashing
    /// the primary. Its [`url`](Self::url) points at the standby's own
    /// `postgres` database, read-only until [`promote`](Self::promote)
    /// (pgwake's connections ask for a writable session, so add
    /// `?target_session_attrs=any` to read a standby); the databases of the
    /// primary appear on it under their own names, so a test reaches one
    /// through either server by its name. A standby creates no database
    /// (see [`create_database`](Self::create_database)).
    ///
    /// # Errors
    /// [`TestPostgresError::Command`] with `pg_basebackup`'s output (the
    /// primary is stopped, say), or [`TestPostgresError::StartFailed`].
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// use pgwake::testing::TestPostgres;
    ///
    /// let mut primary = TestPostgres::new()?;
    /// let standby = TestPostgres::new_standby_of(&primary)?;
    /// let database = primary.create_database().await?;
    /// standby.wait_until_replayed(&primary).await?; // the database is on the standby too
    /// let failover_url = format!(
    ///     "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
    ///     primary.port(),
    ///     standby.port(),
    ///     database.name(),
    /// );
    /// primary.crash()?;
    /// standby.promote().await?; // failover_url now reaches the standby
    /// # Ok(()) }
    /// ```
    pub fn new_standby_of(primary: &TestPostgres) -> Result<Self, TestPostgresError> {
        let root_dir = super::scratch::private_dir("pgwake-pg", primary.owner)
            .map_err(|(context, source)| TestPostgresError::Io { context, source })?;
        let mut standby = TestPostgres {
            bin_dir: primary.bin_dir.clone(),
            root_dir,
            port: 0,
            durable: primary.durable,
            owner: primary.owner,
            primary_port: Some(primary.port),
            watchdog: None,
            databases: TestDatabases::new(String::new()),
        };
        let mut command = Command::new(standby.server_tool("pg_basebackup"));
        command
            .arg("-D")
            .arg(standby.data_dir())
            // -R writes standby.signal and the primary's address into
            // postgresql.auto.conf; -X stream copies the WAL written during
            // the backup; a fast checkpoint starts it at once instead of
            // after a spread one.
            .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres"])
            .current_dir(&standby.root_dir);
        standby.run_as_owner(&mut command);
        run_checked(&mut command, "pg_basebackup")?;
        // The copied configuration holds no port (the primary's is on its
        // command line): the standby's own comes from the watchdog's `-p`.
        standby.start_on_a_free_port()?;
        Ok(standby)
    }

    /// Picks a free port and starts there. A port found free can be taken
    /// before the server binds it: up to three attempts.
    fn start_on_a_free_port(&mut self) -> Result<(), TestPostgresError> {
        let mut last_error = None;
        for _ in 0..3 {
            self.port = super::scratch::free_port().map_err(|source| TestPostgresError::Io {
                context: "finding a free port".into(),
                source,
            })?;
            self.databases = TestDatabases::new(self.url());
            match self.start() {
                Ok(()) => return Ok(()),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("three attempts were made"))
    }

    /// Ends recovery on a standby made by [`new_standby_of`](Self::new_standby_of)
    /// (`pg_promote`), and returns once it accepts writes: a new timeline
    /// starts, and connections asking for `target_session_attrs=read-write`
    /// are accepted from then on. Its primary is left alone; crash or stop
    /// it first, as a failover manager would.
    ///
    /// # Errors
    /// [`TestPostgresError::Database`] when the server is not in recovery
    /// (`pg_promote` refuses), [`TestPostgresError::StartFailed`] when it
    /// still is a minute later, [`TestPostgresError::Connect`] when it is
    /// not running.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// use pgwake::testing::TestPostgres;
    ///
    /// let mut primary = TestPostgres::new()?;
    /// let standby = TestPostgres::new_standby_of(&primary)?;
    /// primary.stop()?;
    /// standby.promote().await?;
    /// let database = standby.create_database().await?; // it takes writes now
    /// # Ok(()) }
    /// ```
    pub async fn promote(&self) -> Result<(), TestPostgresError> {
        let client = crate::ConnectionConfig::from_url(&self.any_session_url())?
            .connect()
            .await?;
        let seconds = i32::try_from(READY_TIMEOUT.as_secs()).unwrap_or(i32::MAX);
        let promoted: bool = client
            .query_one("SELECT pg_promote(true, $1)", &[&seconds])
            .await
            .map_err(|source| TestPostgresError::Database {
                context: "promoting the standby",
                source,
            })?
            .get(0);
        if !promoted {
            return Err(TestPostgresError::StartFailed {
                reason: format!(
                    "the standby was still in recovery {READY_TIMEOUT:?} after pg_promote"
                ),
                log: self.log_file(),
                log_tail: last_lines(&read_log_from(&self.log_file(), 0), 20),
            });
        }
        tracing::debug!(port = self.port, "test standby promoted");
        Ok(())
    }

    /// Waits until this standby has replayed every WAL record `primary`
    /// had inserted when called: every commit the primary acknowledged
    /// before this call (databases created, migrations, rows) is then on
    /// the standby, and survives a crash of the primary followed by
    /// [`promote`](Self::promote). It compares the primary's
    /// `pg_current_wal_insert_lsn()`, not its write position: with
    /// `synchronous_commit` off, an acknowledged commit may not be written
    /// yet. On a server that never was a standby it times out.
    ///
    /// # Errors
    /// [`TestPostgresError::ReplayTimedOut`] after a minute;
    /// [`TestPostgresError::Connect`] when either server is unreachable.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// use pgwake::testing::TestPostgres;
    ///
    /// let primary = TestPostgres::new()?;
    /// let standby = TestPostgres::new_standby_of(&primary)?;
    /// let database = primary.create_database().await?;
    /// standby.wait_until_replayed(&primary).await?;
    /// let on_standby = format!(
    ///     "postgres://postgres@127.0.0.1:{}/{}?target_session_attrs=any", // a read-only session
    ///     standby.port(),
    ///     database.name(),
    /// );
    /// let client = pgwake::ConnectionConfig::from_url(&on_standby)?.connect().await?;
    /// pgwake::migrate::check(&client).await?; // migrated, by replication
    /// # Ok(()) }
    /// ```
    pub async fn wait_until_replayed(
        &self,
        primary: &TestPostgres,
    ) -> Result<(), TestPostgresError> {
        let db_error = |context| move |source| TestPostgresError::Database { context, source };
        let on_primary = crate::ConnectionConfig::from_url(&primary.url())?
            .connect()
            .await?;
        let target: String = on_primary
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .map_err(db_error("reading the primary's WAL position"))?
            .get(0);
        let on_standby = crate::ConnectionConfig::from_url(&self.any_session_url())?
            .connect()
            .await?;
        let started = Instant::now();
        loop {
            let row = on_standby
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false),
                            coalesce(pg_last_wal_replay_lsn()::text, 'nothing')",
                    &[&target],
                )
                .await
                .map_err(db_error("reading the standby's replay position"))?;
            if row.get::<_, bool>(0) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                return Err(TestPostgresError::ReplayTimedOut {
                    primary_at: target,
                    replayed: row.get(1),
                    after: READY_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres`: the superuser, trusted.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// let expected = format!("postgres://postgres@127.0.0.1:{}/postgres", server.port());
    /// assert_eq!(server.url(), expected);
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// [`url`](Self::url), accepting a read-only session: pgwake's
    /// connections ask for a writable one by default, which a standby in
    /// recovery refuses.
    fn any_session_url(&self) -> String {
        format!("{}?target_session_attrs=any", self.url())
    }

    /// The TCP port the server listens on (kept across restarts).
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// let port = server.port();
    /// server.restart()?;
    /// assert_eq!(server.port(), port);
    /// # Ok(()) }
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// assert!(server.data_dir().join("PG_VERSION").is_file());
    /// # Ok(()) }
    /// ```
    pub fn data_dir(&self) -> PathBuf {
        self.root_dir.join("data")
    }

    /// The server's log file (its stderr).
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// println!("server log: {}", server.log_file().display());
    /// # Ok(()) }
    /// ```
    pub fn log_file(&self) -> PathBuf {
        self.root_dir.join("server.log")
    }

    /// The postmaster's process id while it runs.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// assert!(server.postmaster_pid().is_some());
    /// server.stop()?;
    /// assert_eq!(server.postmaster_pid(), None);
    /// # Ok(()) }
    /// ```
    pub fn postmaster_pid(&self) -> Option<u32> {
        let contents = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        contents.lines().next()?.trim().parse().ok()
    }

    /// Whether the server is running (started and not stopped).
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// assert!(server.is_running());
    /// server.stop()?;
    /// assert!(!server.is_running());
    /// # Ok(()) }
    /// ```
    pub fn is_running(&self) -> bool {
        self.watchdog.is_some()
    }

    /// A new database migrated to the newest schema, cloned from a template.
    ///
    /// # Errors
    /// When the template cannot be built or the clone fails;
    /// [`TestPostgresError::StandbyIsReadOnly`] on a standby not promoted
    /// (create the database on its primary: it is replicated).
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// let database = server.create_database().await?;
    /// let client = database.config().connect().await?;
    /// pgwake::migrate::check(&client).await?; // at the newest version
    /// # Ok(()) }
    /// ```
    pub async fn create_database(&self) -> Result<super::TestDatabase, TestPostgresError> {
        self.refuse_while_in_recovery().await?;
        self.skipping_replicated_names(|| self.databases.create_database())
            .await
    }

    /// A new database with no schema at all (for migration tests).
    ///
    /// # Errors
    /// When `CREATE DATABASE` fails;
    /// [`TestPostgresError::StandbyIsReadOnly`] on a standby not promoted.
    ///
    /// ```
    /// # async fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let server = pgwake::testing::TestPostgres::new()?;
    /// let database = server.create_empty_database().await?;
    /// let client = database.config().connect().await?;
    /// assert_eq!(pgwake::migrate::status(&client).await?.version, None);
    /// # Ok(()) }
    /// ```
    pub async fn create_empty_database(&self) -> Result<super::TestDatabase, TestPostgresError> {
        self.refuse_while_in_recovery().await?;
        self.skipping_replicated_names(|| self.databases.create_empty_database())
            .await
    }

    /// Runs `create` until it picks a free name. A promoted standby holds
    /// its primary's databases, named by the same per-process scheme, so
    /// its own first names may be taken; each attempt takes the next name.
    async fn skipping_replicated_names<F, Fut>(
        &self,
        create: F,
    ) -> Result<super::TestDatabase, TestPostgresError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<super::TestDatabase, TestPostgresError>>,
    {
        let mut attempts = 0;
        loop {
            let result = create().await;
            let name_taken = matches!(
                &result,
                Err(TestPostgresError::Database { source, .. })
                    if source.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
            );
            attempts += 1;
            if !name_taken || self.primary_port.is_none() || attempts >= MAX_NAME_ATTEMPTS {
                return result;
            }
        }
    }

    /// [`TestPostgresError::StandbyIsReadOnly`] for a standby not yet
    /// promoted, whose databases all come from its primary; a clearer
    /// refusal than the server's to `CREATE DATABASE`.
    async fn refuse_while_in_recovery(&self) -> Result<(), TestPostgresError> {
        let Some(primary_port) = self.primary_port else {
            return Ok(());
        };
        let client = crate::ConnectionConfig::from_url(&self.any_session_url())?
            .connect()
            .await?;
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|source| TestPostgresError::Database {
                context: "asking the standby whether it is in recovery",
                source,
            })?
            .get(0);
        if in_recovery {
            return Err(TestPostgresError::StandbyIsReadOnly {
                port: self.port,
                primary_port,
            });
        }
        Ok(())
    }

    /// Starts the server again on the same port and data (no-op if running).
    ///
    /// # Errors
    /// [`TestPostgresError::StartFailed`] with the end of the server log.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// server.stop()?;
    /// server.start()?;
    /// assert!(server.is_running());
    /// # Ok(()) }
    /// ```
    pub fn start(&mut self) -> Result<(), TestPostgresError> {
        if self.watchdog.is_some() {
            return Ok(());
        }
        // The previous postmaster has exited (stop waits for it), so a pid
        // file left behind is stale and would make us think it is ready.
        let _ = std::fs::remove_file(self.data_dir().join("postmaster.pid"));
        let log_len = std::fs::metadata(self.log_file())
            .map(|m| m.len())
            .unwrap_or(0);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgwake-test-postgres")
            .arg(self.bin_dir.join("postgres"))
            .arg(self.data_dir())
            .arg(self.port.to_string())
            .arg(&self.root_dir)
            .arg(self.log_file())
            .arg(&self.root_dir)
            .arg(if self.durable { "on" } else { "off" })
            .current_dir(&self.root_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.run_as_owner(&mut command);
        let mut process = command.spawn().map_err(|source| TestPostgresError::Io {
            context: "spawning the server's watchdog shell".into(),
            source,
        })?;
        let commands = process.stdin.take();
        self.watchdog = Some(Watchdog { process, commands });
        if let Err(err) = self.wait_until_ready(log_len) {
            self.shut_down("immediate");
            return Err(err);
        }
        tracing::debug!(port = self.port, "test server ready");
        Ok(())
    }

    /// Stops the server (fast shutdown: sessions are disconnected, data is
    /// kept) and waits for it to exit.
    ///
    /// # Errors
    /// Never in practice; reserved for a server that will not exit.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// server.stop()?; // connecting to server.url() now fails
    /// assert!(!server.is_running());
    /// # Ok(()) }
    /// ```
    pub fn stop(&mut self) -> Result<(), TestPostgresError> {
        self.shut_down("fast");
        Ok(())
    }

    /// Stops the server the way a crash would (immediate shutdown, no
    /// checkpoint); the next start runs crash recovery. As on any server with
    /// `synchronous_commit=off`, commits from the last fraction of a second
    /// whose WAL was not yet written are lost; [`stop`](Self::stop) loses
    /// nothing.
    ///
    /// # Errors
    /// Never in practice; reserved for a server that will not exit.
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// server.crash()?;
    /// server.start()?; // runs crash recovery
    /// # Ok(()) }
    /// ```
    pub fn crash(&mut self) -> Result<(), TestPostgresError> {
        self.shut_down("immediate");
        Ok(())
    }

    /// [`stop`](Self::stop) then [`start`](Self::start): same port, same data.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    ///
    /// ```
    /// # fn example() -> Result<(), pgwake::testing::TestPostgresError> {
    /// let mut server = pgwake::testing::TestPostgres::new()?;
    /// let url = server.url();
    /// server.restart()?;
    /// assert_eq!(server.url(), url);
    /// # Ok(()) }
    /// ```
    pub fn restart(&mut self) -> Result<(), TestPostgresError> {
        self.stop()?;
        self.start()
    }

    fn shut_down(&mut self, how: &str) {
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        if let Some(mut commands) = watchdog.commands.take() {
            let _ = writeln!(commands, "{how}");
        }
        wait_or_kill(&mut watchdog.process, Duration::from_secs(30));
    }

    fn init_cluster(&self) -> Result<(), TestPostgresError> {
        let mut command = Command::new(self.bin_dir.join("initdb"));
        command
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "-D",
            ])
            .arg(self.data_dir())
            .current_dir(&self.root_dir)
            .env("LC_ALL", "C");
        self.run_as_owner(&mut command);
        run_checked(&mut command, "initdb")
    }

    /// A client tool of the same installation as `postgres`: next to it,
    /// or next to what it links to (a `PATH` directory may hold links to
    /// `initdb` and `postgres` only), or else found on `PATH`.
    fn server_tool(&self, name: &str) -> PathBuf {
        let beside = self.bin_dir.join(name);
        if beside.is_file() {
            return beside;
        }
        std::fs::canonicalize(self.bin_dir.join("postgres"))
            .ok()
            .and_then(|postgres| Some(postgres.parent()?.join(name)))
            .filter(|linked| linked.is_file())
            .unwrap_or_else(|| PathBuf::from(name))
    }

    fn run_as_owner(&self, command: &mut Command) {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
    }

    fn wait_until_ready(&mut self, log_offset: u64) -> Result<(), TestPostgresError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid_file = self.data_dir().join("postmaster.pid");
        let mut postmaster: Option<u32> = None;
        loop {
            // Line 1 of postmaster.pid is the postmaster's pid, line 8 its status.
            if let Ok(contents) = std::fs::read_to_string(&pid_file) {
                postmaster = postmaster.or_else(|| contents.lines().next()?.trim().parse().ok());
                if contents
                    .lines()
                    .nth(7)
                    .is_some_and(|status| status.trim() == "ready")
                {
                    return Ok(());
                }
            }
            let new_log = read_log_from(&self.log_file(), log_offset);
            // A client connecting too early makes the server log "FATAL: the
            // database system is starting up": that is the client's failure,
            // not the server's, and must not count.
            // Nor does a standby's WAL receiver failing to reach a primary
            // that is down: the standby starts, and keeps retrying.
            let server_fatal = new_log.lines().any(|line| {
                line.contains("FATAL")
                    && !line.contains("the database system is")
                    && !line.contains("could not connect to the primary server")
            });
            let exited = postmaster.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            let timed_out = Instant::now() > deadline;
            if server_fatal || exited || timed_out {
                let reason = if timed_out {
                    format!("not ready after {READY_TIMEOUT:?}")
                } else {
                    "the server exited during startup".to_string()
                };
                return Err(TestPostgresError::StartFailed {
                    reason,
                    log: self.log_file(),
                    log_tail: last_lines(&new_log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        match self.watchdog.take() {
            Some(mut watchdog) => {
                // End of file: the watchdog stops the server and deletes the directory.
                drop(watchdog.commands.take());
                wait_or_kill(&mut watchdog.process, Duration::from_secs(30));
            }
            None => {
                let _ = std::fs::remove_dir_all(&self.root_dir);
            }
        }
    }
}

fn wait_or_kill(process: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = process.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("test server did not stop in {timeout:?}; killing its watchdog");
    let _ = process.kill();
    let _ = process.wait();
}

/// `initdb` and `postgres` side by side: `PGWAKE_PG_BINDIR`, then `PATH`,
/// then `pg_config --bindir`, then the newest `/usr/lib/postgresql/*/bin`
/// (Debian keeps the server off `PATH`).
fn find_server_binaries() -> Result<PathBuf, TestPostgresError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("PGWAKE_PG_BINDIR") {
        candidates.push(dir.into());
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            candidates.push(String::from_utf8_lossy(&output.stdout).trim().into());
        }
    }
    candidates.extend(newest_first_debian_bindirs());
    let found = candidates
        .iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file());
    match found {
        Some(dir) => Ok(dir.clone()),
        None => Err(TestPostgresError::BinariesNotFound {
            searched: "PGWAKE_PG_BINDIR, PATH, `pg_config --bindir` and /usr/lib/postgresql/*/bin"
                .into(),
        }),
    }
}

fn newest_first_debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn running_as_root() -> Result<bool, TestPostgresError> {
    Ok(id_output(&["-u"])? == 0)
}

fn postgres_user_ids() -> Result<(u32, u32), TestPostgresError> {
    let uid = id_output(&["-u", "postgres"]).map_err(|_| TestPostgresError::NoPostgresUser)?;
    let gid = id_output(&["-g", "postgres"]).map_err(|_| TestPostgresError::NoPostgresUser)?;
    Ok((uid, gid))
}

fn id_output(args: &[&str]) -> Result<u32, TestPostgresError> {
    let mut command = Command::new("id");
    command.args(args);
    let output = command.output().map_err(|source| TestPostgresError::Io {
        context: "running `id`".into(),
        source,
    })?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| TestPostgresError::Command {
            command: format!("id {}", args.join(" ")),
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
}

fn run_checked(command: &mut Command, name: &str) -> Result<(), TestPostgresError> {
    let output = command.output().map_err(|source| TestPostgresError::Io {
        context: format!("running {name}"),
        source,
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(TestPostgresError::Command {
        command: name.to_string(),
        detail: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

fn read_log_from(log: &Path, offset: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}
