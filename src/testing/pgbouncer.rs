//! A throwaway PgBouncer in front of a PostgreSQL server, for tests of what
//! a connection pooler changes: in transaction mode a client gets a server
//! backend per transaction, so session state, prepared statements and
//! backend pids are shared between clients.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_postgres::config::Host;

use crate::connection::{with_dbname, ConnectionConfig};
use crate::ConnectError;

/// How long PgBouncer may take to listen after it starts.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts PgBouncer, prints its pid, and waits for one line on stdin or its
/// end (the owner dropped us, or its process died, however it died): then
/// stops PgBouncer at once and deletes the directory, so that no PgBouncer
/// outlives its test process.
///
/// Since PgBouncer 1.23 a first SIGTERM waits for every client to
/// disconnect, and the clients of a test often live on the very thread that
/// is dropping us (a single-threaded runtime): it would wait forever. A
/// second SIGTERM means "exit now" there. PgBouncer 1.18 exits on the first,
/// and the second then reaches a zombie (not yet reaped by `wait`, so its
/// pid cannot have been reused), which is harmless. SIGQUIT would be
/// simpler, but 1.18 does not handle it. The pause lets PgBouncer take the
/// first signal before the second arrives, which it could otherwise merge
/// into one.
const WATCHDOG_SCRIPT: &str = r#"
"$1" "$2" </dev/null >>"$3" 2>&1 &
pgbouncer=$!
echo "$pgbouncer"
IFS= read -r how || true
kill -TERM "$pgbouncer" 2>/dev/null
sleep 0.1
kill -TERM "$pgbouncer" 2>/dev/null
wait "$pgbouncer"
rm -rf "$4"
"#;

/// PgBouncer's `pool_mode`: when a client's server connection goes back to
/// the pool.
///
/// ```
/// use pgwake::testing::PoolMode;
/// assert_eq!(PoolMode::Transaction.to_string(), "transaction");
/// assert_eq!(PoolMode::default(), PoolMode::Transaction);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolMode {
    /// When the client disconnects: a client keeps one backend throughout.
    Session,
    /// After each transaction (or statement outside one): clients share
    /// backends, and `LISTEN`, session settings and, before PgBouncer 1.21,
    /// prepared statements do not carry from one transaction to the next.
    #[default]
    Transaction,
    /// After each statement; multi-statement transactions are refused.
    Statement,
}

impl std::fmt::Display for PoolMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        })
    }
}

/// Why a throwaway PgBouncer could not be had.
///
/// ```
/// let err = pgwake::testing::PgBouncerError::NotFound { searched: "PATH".into() };
/// assert!(err.to_string().contains("apt-get install pgbouncer"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgBouncerError {
    /// No `pgbouncer` binary was found.
    #[error(
        "pgbouncer was not found in {searched}; install it (Debian/Ubuntu: \
         `apt-get install pgbouncer`, Fedora: `dnf install pgbouncer`, macOS: \
         `brew install pgbouncer`) or set PGWAKE_PGBOUNCER to the binary's path"
    )]
    NotFound {
        /// The places looked in.
        searched: String,
    },
    /// The URL of the server to stand in front of is not valid.
    #[error("the server URL for PgBouncer: {0}")]
    Target(#[source] ConnectError),
    /// A builder setting is out of range or cannot be written to the ini file.
    #[error("PgBouncer setting {name}: {reason}")]
    Setting {
        /// The setting.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Running as root, which PgBouncer refuses, and there is no `postgres`
    /// user to run it as.
    #[error(
        "running as root, and PgBouncer refuses to run as root, but there is no 'postgres' \
         user to run it as: create one (`useradd --system postgres`) or run as another user"
    )]
    NoPostgresUser,
    /// PgBouncer did not start listening.
    #[error("PgBouncer did not start: {reason}; its log ({log}) ends with:\n{log_tail}")]
    StartFailed {
        /// What went wrong.
        reason: String,
        /// PgBouncer's log file, deleted with its directory by the time
        /// this is returned: `log_tail` keeps its end.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },
    /// A filesystem or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The settings of a [`PgBouncer`] to start; see [`PgBouncer::builder`].
///
/// ```
/// use pgwake::testing::{PgBouncer, PoolMode};
/// let builder = PgBouncer::builder("postgres://postgres@127.0.0.1:5432/app")
///     .pool_mode(PoolMode::Session)
///     .default_pool_size(4);
/// ```
#[derive(Clone)]
pub struct PgBouncerBuilder {
    target_url: String,
    pool_mode: PoolMode,
    default_pool_size: u32,
    users: Vec<(String, String)>,
    settings: Vec<(String, String)>,
}

impl std::fmt::Debug for PgBouncerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(user, _)| user.as_str()).collect();
        f.debug_struct("PgBouncerBuilder")
            .field("server", &redacted(&self.target_url))
            .field("pool_mode", &self.pool_mode)
            .field("default_pool_size", &self.default_pool_size)
            .field("users", &users)
            .field("settings", &self.settings)
            .finish()
    }
}

impl PgBouncerBuilder {
    /// When a client's server connection goes back to the pool; default
    /// [`PoolMode::Transaction`].
    ///
    /// ```
    /// use pgwake::testing::{PgBouncer, PoolMode};
    /// let builder = PgBouncer::builder("postgres://postgres@127.0.0.1:5432/app")
    ///     .pool_mode(PoolMode::Session);
    /// ```
    pub fn pool_mode(mut self, pool_mode: PoolMode) -> Self {
        self.pool_mode = pool_mode;
        self
    }

    /// Server connections per user and database (PgBouncer's
    /// `default_pool_size`), 1 to 10,000; default 20. With 1, every client
    /// of a database shares one server backend (and its pid).
    ///
    /// ```
    /// use pgwake::testing::PgBouncer;
    /// let builder = PgBouncer::builder("postgres://postgres@127.0.0.1:5432/app")
    ///     .default_pool_size(1);
    /// ```
    pub fn default_pool_size(mut self, size: u32) -> Self {
        self.default_pool_size = size;
        self
    }

    /// Lets `user` in besides the server URL's own user. PgBouncer trusts
    /// its clients (`auth_type = trust`) but knows only the users of its
    /// `auth_file`; `password` is what it then sends to the server, when
    /// the server asks for one.
    ///
    /// ```
    /// use pgwake::testing::PgBouncer;
    /// let builder = PgBouncer::builder("postgres://postgres@127.0.0.1:5432/app")
    ///     .user("app", Some("s3cret"));
    /// ```
    pub fn user(mut self, user: &str, password: Option<&str>) -> Self {
        self.users
            .push((user.to_string(), password.unwrap_or("").to_string()));
        self
    }

    /// Any other line of the `[pgbouncer]` section, e.g.
    /// `max_prepared_statements` on PgBouncer 1.21 or newer; written after
    /// the builder's own settings, so it overrides them.
    ///
    /// ```
    /// use pgwake::testing::PgBouncer;
    /// let builder = PgBouncer::builder("postgres://postgres@127.0.0.1:5432/app")
    ///     .setting("server_idle_timeout", "5");
    /// ```
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Checks the settings, writes the ini and auth files into a new
    /// temporary directory, starts PgBouncer on a free port of `127.0.0.1`
    /// and waits until it listens.
    ///
    /// # Errors
    /// [`PgBouncerError::NotFound`] names the package to install;
    /// [`PgBouncerError::Setting`] and [`PgBouncerError::Target`] a bad
    /// setting; [`PgBouncerError::StartFailed`] carries PgBouncer's log.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// let bouncer = pgwake::testing::PgBouncer::builder("postgres://postgres@127.0.0.1:5432/app")
    ///     .default_pool_size(1)
    ///     .start()?;
    /// println!("connect to {}", bouncer.url());
    /// # Ok(()) }
    /// ```
    pub fn start(self) -> Result<PgBouncer, PgBouncerError> {
        let config =
            ConnectionConfig::from_url(&self.target_url).map_err(PgBouncerError::Target)?;
        let settings = self.validated_settings()?;
        let users = self.users_of(config.postgres_config())?;
        let database = database_line(config.postgres_config());
        let binary = find_pgbouncer()?;
        let owner = if running_as_root()? {
            Some(postgres_user_ids()?)
        } else {
            None
        };
        // A port found free can be taken before PgBouncer binds it: then,
        // and only then, try again with another. Any other failure (a
        // setting this PgBouncer does not know ...) is returned at once,
        // with its log. Each attempt has a directory of its own: a failed
        // one is deleted with its PgBouncer.
        let mut attempts_left = 3;
        loop {
            attempts_left -= 1;
            match self.start_once(&binary, owner, &users, &database, &settings) {
                Err(err) if attempts_left > 0 && lost_its_port(&err) => {
                    tracing::debug!(%err, "test PgBouncer lost its port; trying another");
                }
                result => return result,
            }
        }
    }

    /// One attempt: a new directory with the auth and ini files, and
    /// PgBouncer on a port that was free a moment ago.
    fn start_once(
        &self,
        binary: &Path,
        owner: Option<(u32, u32)>,
        users: &str,
        database: &str,
        settings: &str,
    ) -> Result<PgBouncer, PgBouncerError> {
        let root_dir = super::scratch::private_dir("pgwake-pgbouncer", owner)
            .map_err(|(context, source)| PgBouncerError::Io { context, source })?;
        // From here on, dropping `bouncer` deletes the directory.
        let mut bouncer = PgBouncer {
            target_url: self.target_url.clone(),
            root_dir,
            port: 0,
            pool_mode: self.pool_mode,
            watchdog: None,
        };
        bouncer.port = super::scratch::free_port().map_err(|source| PgBouncerError::Io {
            context: "finding a free port".into(),
            source,
        })?;
        let auth_file = bouncer.root_dir.join("userlist.txt");
        bouncer.write_owned(&auth_file, users, owner)?;
        let ini = format!(
            "[databases]\n\
             ; Any database name: the same database on the server.\n\
             * = {database}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth_file}\n\
             pool_mode = {pool_mode}\n\
             default_pool_size = {pool_size}\n\
             max_client_conn = 500\n\
             ; A test that restarts the server wants PgBouncer back at once.\n\
             server_login_retry = 1\n\
             {settings}",
            port = bouncer.port,
            auth_file = auth_file.display(),
            pool_mode = self.pool_mode,
            pool_size = self.default_pool_size,
        );
        bouncer.write_owned(&bouncer.ini_file(), &ini, owner)?;
        bouncer.spawn(binary, owner)?;
        Ok(bouncer)
    }

    fn validated_settings(&self) -> Result<String, PgBouncerError> {
        let fail = |name: &str, reason: &str| PgBouncerError::Setting {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        if !(1..=10_000).contains(&self.default_pool_size) {
            return Err(fail("default_pool_size", "must be from 1 to 10000"));
        }
        let mut lines = String::new();
        for (name, value) in &self.settings {
            let valid_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid_name {
                return Err(fail(name, "a setting's name is letters, digits and '_'"));
            }
            if value.contains(['\n', '\r']) {
                return Err(fail(name, "a value must fit on one line"));
            }
            lines.push_str(&format!("{name} = {value}\n"));
        }
        Ok(lines)
    }

    /// The auth file: `"user" "password"` lines, a `"` doubled.
    fn users_of(&self, target: &tokio_postgres::Config) -> Result<String, PgBouncerError> {
        let own = target.get_user().map(|user| {
            let password = target
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default();
            (user.to_string(), password)
        });
        let mut lines = String::new();
        for (user, password) in own.iter().chain(&self.users) {
            if user.is_empty() || format!("{user}{password}").contains(['\n', '\r']) {
                return Err(PgBouncerError::Setting {
                    name: format!("user {user:?}"),
                    reason: "a user name must be non-empty and on one line".into(),
                });
            }
            let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
            lines.push_str(&format!("{} {}\n", quote(user), quote(password)));
        }
        Ok(lines)
    }
}

/// A PgBouncer process in front of one PostgreSQL server, owned by this
/// value: stopped, and its directory removed, when it is dropped (or when
/// the test process dies).
///
/// It listens on a free port of `127.0.0.1`, trusts its clients, and
/// forwards any database name to the same database on the server, as the
/// server URL's first host. Pool mode is transaction unless set otherwise.
/// When the process runs as root, PgBouncer runs as the `postgres` user,
/// since it refuses root.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use pgwake::testing::{fresh_database, PgBouncer, PoolMode};
///
/// let database = fresh_database().await?;
/// let bouncer = PgBouncer::builder(database.url())
///     .pool_mode(PoolMode::Transaction)
///     .default_pool_size(1) // every client shares one server backend
///     .start()?;
/// let client = pgwake::ConnectionConfig::from_url(&bouncer.url())?.connect().await?;
/// client.simple_query("SELECT 1").await?;
/// # Ok(()) }
/// ```
pub struct PgBouncer {
    target_url: String,
    root_dir: PathBuf,
    port: u16,
    pool_mode: PoolMode,
    watchdog: Option<Watchdog>,
}

#[derive(Debug)]
struct Watchdog {
    process: Child,
    commands: Option<ChildStdin>,
    /// PgBouncer's own pid, as the watchdog printed it.
    pgbouncer: Option<u32>,
}

impl std::fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBouncer")
            .field("server", &redacted(&self.target_url))
            .field("port", &self.port)
            .field("pool_mode", &self.pool_mode)
            .field("running", &self.watchdog.is_some())
            .finish_non_exhaustive()
    }
}

impl PgBouncer {
    /// The settings to start a PgBouncer in front of the server of
    /// `server_url` (a URL or `key=value` pairs), transaction mode and 20
    /// server connections per user and database unless changed.
    ///
    /// ```
    /// let builder = pgwake::testing::PgBouncer::builder("host=127.0.0.1 port=5432 user=postgres");
    /// ```
    pub fn builder(server_url: &str) -> PgBouncerBuilder {
        PgBouncerBuilder {
            target_url: server_url.to_string(),
            pool_mode: PoolMode::default(),
            default_pool_size: 20,
            users: Vec::new(),
            settings: Vec::new(),
        }
    }

    /// Starts one with the defaults: `PgBouncer::builder(server_url).start()`.
    ///
    /// # Errors
    /// As [`PgBouncerBuilder::start`].
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// let bouncer = pgwake::testing::PgBouncer::start("postgres://postgres@127.0.0.1:5432/app")?;
    /// # Ok(()) }
    /// ```
    pub fn start(server_url: &str) -> Result<Self, PgBouncerError> {
        Self::builder(server_url).start()
    }

    /// The server URL it was started with, pointed at PgBouncer: same user,
    /// password, database and options.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// let bouncer = pgwake::testing::PgBouncer::start("postgres://app:pw@127.0.0.1:5432/orders")?;
    /// assert_eq!(bouncer.url(), format!("postgres://app:pw@127.0.0.1:{}/orders", bouncer.port()));
    /// # Ok(()) }
    /// ```
    pub fn url(&self) -> String {
        point_at(&self.target_url, self.port)
    }

    /// [`url`](Self::url) with another database.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// let bouncer = pgwake::testing::PgBouncer::start("postgres://app@127.0.0.1:5432/postgres")?;
    /// assert_eq!(bouncer.url_for("orders"), format!("postgres://app@127.0.0.1:{}/orders", bouncer.port()));
    /// # Ok(()) }
    /// ```
    pub fn url_for(&self, dbname: &str) -> String {
        with_dbname(&self.url(), dbname)
    }

    /// The TCP port it listens on, on `127.0.0.1`.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// let bouncer = pgwake::testing::PgBouncer::start("postgres://postgres@127.0.0.1:5432/app")?;
    /// assert!(bouncer.port() > 0);
    /// # Ok(()) }
    /// ```
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its pool mode.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// use pgwake::testing::{PgBouncer, PoolMode};
    /// let bouncer = PgBouncer::start("postgres://postgres@127.0.0.1:5432/app")?;
    /// assert_eq!(bouncer.pool_mode(), PoolMode::Transaction);
    /// # Ok(()) }
    /// ```
    pub fn pool_mode(&self) -> PoolMode {
        self.pool_mode
    }

    /// PgBouncer's log (its stderr): connections, pool events, errors.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), pgwake::testing::PgBouncerError> {
    /// let bouncer = pgwake::testing::PgBouncer::start("postgres://postgres@127.0.0.1:5432/app")?;
    /// println!("{}", std::fs::read_to_string(bouncer.log_file()).unwrap_or_default());
    /// # Ok(()) }
    /// ```
    pub fn log_file(&self) -> PathBuf {
        self.root_dir.join("pgbouncer.log")
    }

    fn ini_file(&self) -> PathBuf {
        self.root_dir.join("pgbouncer.ini")
    }

    fn write_owned(
        &self,
        path: &Path,
        contents: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(), PgBouncerError> {
        let io = |context: &str| {
            let context = format!("{context} {}", path.display());
            move |source| PgBouncerError::Io { context, source }
        };
        std::fs::write(path, contents).map_err(io("writing"))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io("chown"))?;
        }
        Ok(())
    }

    fn spawn(&mut self, binary: &Path, owner: Option<(u32, u32)>) -> Result<(), PgBouncerError> {
        use std::os::unix::process::CommandExt;
        let log_len = std::fs::metadata(self.log_file())
            .map(|m| m.len())
            .unwrap_or(0);
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(WATCHDOG_SCRIPT)
            .arg("pgwake-test-pgbouncer")
            .arg(binary)
            .arg(self.ini_file())
            .arg(self.log_file())
            .arg(&self.root_dir)
            .current_dir(&self.root_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = owner {
            command.uid(uid).gid(gid);
        }
        let mut process = command.spawn().map_err(|source| PgBouncerError::Io {
            context: "spawning PgBouncer's watchdog shell".into(),
            source,
        })?;
        let commands = process.stdin.take();
        let mut first_line = String::new();
        if let Some(stdout) = process.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut first_line);
        }
        let pid: Option<u32> = first_line.trim().parse().ok();
        self.watchdog = Some(Watchdog {
            process,
            commands,
            pgbouncer: pid,
        });
        if let Err(err) = self.wait_until_listening(pid, log_len) {
            self.shut_down();
            return Err(err);
        }
        tracing::debug!(port = self.port, pool_mode = %self.pool_mode, "test PgBouncer ready");
        Ok(())
    }

    /// Ready once the log says it listens on our port, and it still runs:
    /// if another process took the port first, PgBouncer exits instead.
    fn wait_until_listening(
        &self,
        pid: Option<u32>,
        log_offset: u64,
    ) -> Result<(), PgBouncerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let listening = format!("listening on 127.0.0.1:{}", self.port);
        loop {
            let log = read_log_from(&self.log_file(), log_offset);
            let alive = pid.is_some_and(is_running);
            if alive && log.contains(&listening) {
                return Ok(());
            }
            let timed_out = Instant::now() > deadline;
            if !alive || timed_out {
                return Err(PgBouncerError::StartFailed {
                    reason: if timed_out {
                        format!("not listening after {READY_TIMEOUT:?}")
                    } else {
                        "PgBouncer exited during startup".to_string()
                    },
                    log: self.log_file(),
                    log_tail: last_lines(&log, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn shut_down(&mut self) {
        let Some(mut watchdog) = self.watchdog.take() else {
            return;
        };
        // End of file: the watchdog stops PgBouncer and deletes the directory.
        drop(watchdog.commands.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = watchdog.process.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Killed, PgBouncer lets the watchdog's `wait` return. The watchdog
        // still runs, so it has not reaped PgBouncer: the pid is still its.
        tracing::warn!("test PgBouncer did not stop in 10 s; killing it and its watchdog");
        if let Some(pid) = watchdog.pgbouncer {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = watchdog.process.kill();
        let _ = watchdog.process.wait();
        let _ = std::fs::remove_dir_all(&self.root_dir);
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if self.watchdog.is_some() {
            self.shut_down();
        } else {
            let _ = std::fs::remove_dir_all(&self.root_dir);
        }
    }
}

/// `url` without its password, for `Debug`: a test's output is often public.
fn redacted(url: &str) -> String {
    ConnectionConfig::from_url(url)
        .map(|config| config.redacted().to_string())
        .unwrap_or_else(|_| "<invalid URL>".to_string())
}

/// The `[databases]` entry: the URL's first host and port. No `dbname`, so
/// each client gets the database it names.
fn database_line(target: &tokio_postgres::Config) -> String {
    let host = match target.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        Some(Host::Unix(dir)) => dir.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = target.get_ports().first().copied().unwrap_or(5432);
    format!("host={host} port={port}")
}

/// `url` with its hosts and ports replaced by `127.0.0.1:port`; user,
/// password, database and options kept.
fn point_at(url: &str, port: u16) -> String {
    let Some(scheme_end) = url.find("://") else {
        // key=value form: a later key overrides an earlier one.
        return format!("{url} host=127.0.0.1 port={port}");
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(authority_end);
    // The last '@' ends the user part: a host cannot hold one, an unencoded
    // password might.
    let userinfo = authority
        .rfind('@')
        .map(|at| &authority[..=at])
        .unwrap_or("");
    format!("{scheme}{userinfo}127.0.0.1:{port}{after}")
}

/// `PGWAKE_PGBOUNCER`, then `pgbouncer` on `PATH`, then the sbin
/// directories where packages put it (Debian: `/usr/sbin`, off a normal
/// user's `PATH`).
fn find_pgbouncer() -> Result<PathBuf, PgBouncerError> {
    if let Some(path) = std::env::var_os("PGWAKE_PGBOUNCER") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(PgBouncerError::NotFound {
                searched: format!("PGWAKE_PGBOUNCER ({})", path.display()),
            })
        };
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/sbin",
            "/usr/local/sbin",
            "/usr/local/bin",
            "/opt/homebrew/bin",
        ]
        .map(PathBuf::from),
    );
    dirs.iter()
        .map(|dir| dir.join("pgbouncer"))
        .find(|path| path.is_file())
        .ok_or_else(|| PgBouncerError::NotFound {
            searched: "PATH, /usr/sbin, /usr/local/sbin, /usr/local/bin and /opt/homebrew/bin"
                .into(),
        })
}

fn running_as_root() -> Result<bool, PgBouncerError> {
    Ok(id_output(&["-u"])? == 0)
}

fn postgres_user_ids() -> Result<(u32, u32), PgBouncerError> {
    let uid = id_output(&["-u", "postgres"]).map_err(|_| PgBouncerError::NoPostgresUser)?;
    let gid = id_output(&["-g", "postgres"]).map_err(|_| PgBouncerError::NoPostgresUser)?;
    Ok((uid, gid))
}

fn id_output(args: &[&str]) -> Result<u32, PgBouncerError> {
    let output = Command::new("id")
        .args(args)
        .output()
        .map_err(|source| PgBouncerError::Io {
            context: "running `id`".into(),
            source,
        })?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| PgBouncerError::Io {
            context: format!("id {}", args.join(" ")),
            source: std::io::Error::other(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ),
        })
}

/// Whether the watchdog's start of PgBouncer failed only because another
/// process bound the port first.
fn lost_its_port(err: &PgBouncerError) -> bool {
    matches!(err, PgBouncerError::StartFailed { log_tail, .. }
        if log_tail.contains("Address already in use"))
}

/// Whether process `pid` runs: a PgBouncer that exited stays a zombie, its
/// `/proc` entry kept, until the watchdog's `wait` reaps it, which happens
/// only at shutdown.
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        // "pid (command) state ...": the command may hold spaces and ')'.
        let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
        !state.is_some_and(|rest| rest.starts_with(['Z', 'X']))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_everything_but_the_host_and_port() {
        assert_eq!(
            point_at(
                "postgres://app:p@ss@db-a:5432,db-b:5433/orders?sslmode=disable",
                6000
            ),
            "postgres://app:p@ss@127.0.0.1:6000/orders?sslmode=disable"
        );
        assert_eq!(
            point_at("host=db port=5432 user=app", 6000),
            "host=db port=5432 user=app host=127.0.0.1 port=6000"
        );
    }

    #[test]
    fn the_database_line_is_the_first_host_without_a_dbname() {
        let config = ConnectionConfig::from_url("postgres://app@db-a:5433,db-b/orders").unwrap();
        assert_eq!(
            database_line(config.postgres_config()),
            "host=db-a port=5433"
        );
    }

    #[test]
    fn bad_settings_are_refused_before_anything_starts() {
        let builder = PgBouncer::builder("postgres://app@127.0.0.1:5432/orders");
        let err = builder.clone().default_pool_size(0).start().unwrap_err();
        assert!(matches!(err, PgBouncerError::Setting { .. }), "{err}");
        let err = builder
            .clone()
            .setting("listen_port", "1\nauth_type = any")
            .start()
            .unwrap_err();
        assert!(err.to_string().contains("one line"), "{err}");
        let err = PgBouncer::builder("postgres://app@db:notaport/x")
            .start()
            .unwrap_err();
        assert!(matches!(err, PgBouncerError::Target(_)), "{err}");
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let builder = PgBouncer::builder("postgres://app:hunter2@127.0.0.1:5432/orders")
            .user("other", Some("tr0ub4dor"));
        let text = format!("{builder:?}");
        assert!(
            text.contains("postgres://app@127.0.0.1:5432/orders"),
            "{text}"
        );
        assert!(
            !text.contains("hunter2") && !text.contains("tr0ub4dor"),
            "{text}"
        );
    }

    #[test]
    fn the_auth_file_quotes_names_and_passwords() {
        let config = ConnectionConfig::from_url("postgres://app:pw@127.0.0.1:5432/orders").unwrap();
        let users = PgBouncer::builder("unused")
            .user("say \"hi\"", None)
            .users_of(config.postgres_config())
            .unwrap();
        assert_eq!(users, "\"app\" \"pw\"\n\"say \"\"hi\"\"\" \"\"\n");
    }
}
