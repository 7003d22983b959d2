//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use pgwake::{
    ActivityTask, ActivityWorker, ConnectionConfig, RuntimeConfig, WorkflowCompletion,
    WorkflowOutcome, WorkflowTask, WorkflowWorker,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

/// A notification as a raw listener sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub channel: String,
    pub payload: String,
}

/// A plain connection LISTENing on `channels`, its notifications forwarded
/// to the returned receiver. The client must be kept alive.
pub async fn listen(
    url: &str,
    channels: &[&str],
) -> (tokio_postgres::Client, mpsc::UnboundedReceiver<Received>) {
    let config = ConnectionConfig::from_url(url).unwrap();
    let (client, mut connection) = config.postgres_config().connect(NoTls).await.unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = sender.send(Received {
                    channel: n.channel().to_string(),
                    payload: n.payload().to_string(),
                });
            }
        }
    });
    for channel in channels {
        client
            .batch_execute(&format!("LISTEN {channel}"))
            .await
            .unwrap();
    }
    (client, receiver)
}

/// Every notification that arrives before `sentinel` is sent on
/// `probe_channel` (which `listener` must LISTEN on). NOTIFYs are delivered
/// in commit order, so once the sentinel arrives nothing committed before it
/// can still be on its way: no sleep-and-hope.
pub async fn drain_until_sentinel(
    notifier: &tokio_postgres::Client,
    receiver: &mut mpsc::UnboundedReceiver<Received>,
    probe_channel: &str,
) -> Vec<Received> {
    notifier
        .batch_execute(&format!("NOTIFY {probe_channel}, 'sentinel'"))
        .await
        .unwrap();
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let next = tokio::time::timeout_at(deadline, receiver.recv())
            .await
            .expect("the sentinel notification never arrived")
            .expect("the listener stopped");
        if next.channel == probe_channel && next.payload == "sentinel" {
            return before;
        }
        before.push(next);
    }
}

/// Polls `condition` until it holds, failing the test after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A connected client for `url`.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    ConnectionConfig::from_url(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A fallback so long that a test finishing in time proves a wake-up (or a
/// due time) found the work.
pub const NEVER: Duration = Duration::from_secs(600);

/// A config whose fallbacks are [`NEVER`].
pub fn notify_only(url: &str) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(url);
    config.fallback_while_listening = NEVER;
    config.fallback_while_degraded = NEVER;
    config
}

/// An activity worker on `queue` that reports each task's activity id.
pub fn reporting_activities(queue: &str) -> (ActivityWorker, mpsc::UnboundedReceiver<String>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let worker = ActivityWorker::new([queue], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.activity_id.clone());
            Ok::<_, String>(json!("done"))
        }
    });
    (worker, receiver)
}

/// A workflow worker on `queue` that reports each task's instance id and
/// finishes the instance.
pub fn reporting_workflows(queue: &str) -> (WorkflowWorker, mpsc::UnboundedReceiver<String>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    let worker = WorkflowWorker::new([queue], move |task: WorkflowTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.instance.instance_id.clone());
            Ok::<_, String>(
                WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
            )
        }
    });
    (worker, receiver)
}

/// The next report, failing the test after `limit` with `what` in the message.
pub async fn receive_within<T>(
    receiver: &mut mpsc::UnboundedReceiver<T>,
    limit: Duration,
    what: &str,
) -> T {
    tokio::time::timeout(limit, receiver.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} did not start within {limit:?}"))
        .expect("handler channel closed")
}

/// Inserts, by plain SQL with no setting, an instance with a start event on
/// `workflow_queue` and an activity on `activity_queue`. The activity belongs
/// to `activity_owner`: where the workflow handler finishes its instance at
/// once, it must be another execution, since an ending execution deletes its
/// outstanding activities.
pub async fn insert_by_plain_sql(
    url: &str,
    id: &str,
    workflow_queue: &str,
    activity_queue: &str,
    activity_owner: &str,
) {
    let client = connect(url).await;
    client
        .execute(
            "INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ($1, 'e', 0, $2)",
            &[&id, &workflow_queue],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
             VALUES ($1, $1, 'e', 1, now())",
            &[&id],
        )
        .await
        .unwrap();
    client
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ($1, $3, 'e', 11, $2, now())",
            &[&id, &activity_queue, &activity_owner],
        )
        .await
        .unwrap();
}

/// How long the store tests wait for a condition.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A store on a fresh database, with a raw client on the same database.
pub async fn setup_with(
    options: pgwake::StoreOptions,
) -> (
    pgwake::Store,
    tokio_postgres::Client,
    pgwake::testing::TestDatabase,
) {
    let database = pgwake::testing::fresh_database().await.unwrap();
    let store = pgwake::Store::connect(database.url(), options)
        .await
        .unwrap();
    let sql = connect(database.url()).await;
    (store, sql, database)
}

/// [`setup_with`] the default options.
pub async fn setup() -> (
    pgwake::Store,
    tokio_postgres::Client,
    pgwake::testing::TestDatabase,
) {
    setup_with(pgwake::StoreOptions::default()).await
}

/// A queue name known to be valid.
pub fn q(name: &str) -> pgwake::Queue {
    pgwake::Queue::new(name).unwrap()
}

/// A worker id known to be valid.
pub fn worker(name: &str) -> pgwake::WorkerId {
    pgwake::WorkerId::new(name).unwrap()
}

/// Polls `attempt` until it yields a value, failing the test after `timeout`.
pub async fn until_some<T, F, Fut>(timeout: Duration, what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (database clock) until `locked_until` of the rows of `table`
/// matched by `condition` has passed.
pub async fn wait_until_expired(sql: &tokio_postgres::Client, table: &str, condition: &str) {
    let query = format!("SELECT bool_and(locked_until < now()) FROM {table} WHERE {condition}");
    eventually(DEADLINE, "the lease to expire", || {
        let query = query.clone();
        async move {
            let row = sql.query_one(&query, &[]).await.unwrap();
            row.get::<_, Option<bool>>(0).unwrap_or(false)
        }
    })
    .await
}

/// Everything `tracing` writes on this thread while the guard of
/// [`install`](Self::install) lives, as text.
#[derive(Clone, Default)]
pub struct CapturedLogs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// Captures the events `filter` (an `EnvFilter` directive) lets through.
    pub fn install(&self, filter: &str) -> tracing::subscriber::DefaultGuard {
        let sink = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// What was captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether this runs in CI, where every test must run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The started PgBouncer; `None`, with the reason printed, when the machine
/// has none and this is not CI (where a missing PgBouncer fails the test).
pub fn started_or_skipped(
    result: Result<pgwake::testing::PgBouncer, pgwake::testing::PgBouncerError>,
) -> Option<pgwake::testing::PgBouncer> {
    match result {
        Ok(bouncer) => Some(bouncer),
        Err(err @ pgwake::testing::PgBouncerError::NotFound { .. }) if !in_ci() => {
            // Straight to stderr: the test harness captures `eprintln!`.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped: {err}");
            None
        }
        Err(err) => panic!("starting PgBouncer: {err}"),
    }
}

/// Starts `builder`'s PgBouncer, as [`started_or_skipped`].
pub fn start_or_skip(
    builder: pgwake::testing::PgBouncerBuilder,
) -> Option<pgwake::testing::PgBouncer> {
    started_or_skipped(builder.start())
}

/// A `pgwake` command (e.g. `pgwake work`) as a child process, its stderr in
/// a log file; killed, and its log removed, when dropped. `binary` is the
/// test's `env!("CARGO_BIN_EXE_pgwake")`, which only tests of the `cli`
/// feature can name. `PGWAKE_LISTENER_URL` is cleared, so only `args` set it.
pub struct WorkProcess {
    pub child: std::process::Child,
    log: std::path::PathBuf,
}

impl WorkProcess {
    pub fn start(binary: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "pgwake-work-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let child = std::process::Command::new(binary)
            .args(args)
            .envs(env.iter().copied())
            .env_remove("PGWAKE_LISTENER_URL")
            .env("RUST_LOG", "pgwake=info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("creating the process's log"))
            .spawn()
            .expect("starting pgwake");
        Self { child, log }
    }

    /// What it has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
