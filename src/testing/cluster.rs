//! A private PostgreSQL cluster: initdb into a temp dir, a server on a free
//! port, and a watchdog that takes the server down with its owner.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::databases::TestDatabases;
use super::TestPostgresError;

/// How long a server may take to accept connections after `postgres` starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

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
            watchdog: None,
            databases: TestDatabases::new(String::new()),
        };
        server.init_cluster()?;
        // A port found free can be taken before the server binds it: retry.
        let mut last_error = None;
        for _ in 0..3 {
            server.port = super::scratch::free_port().map_err(|source| TestPostgresError::Io {
                context: "finding a free port".into(),
                source,
            })?;
            server.databases = TestDatabases::new(server.url());
            match server.start() {
                Ok(()) => return Ok(server),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("three attempts were made"))
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
    /// When the template cannot be built or the clone fails.
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
        self.databases.create_database().await
    }

    /// A new database with no schema at all (for migration tests).
    ///
    /// # Errors
    /// When `CREATE DATABASE` fails.
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
        self.databases.create_empty_database().await
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
            let server_fatal = new_log
                .lines()
                .any(|line| line.contains("FATAL") && !line.contains("the database system is"));
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
