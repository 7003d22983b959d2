//! The task backend: go-workflows' PostgreSQL schema, read and written with
//! its semantics and without its known defects.
//!
//! A [`Store`] is a cheap handle on a connection pool. Everything that
//! creates, claims, extends and completes work is a method on it, each in
//! one transaction, each timed by the database clock (`now()`), never the
//! application's.
//!
//! ```no_run
//! use pgwake::{NewInstance, Queue, Store, StoreOptions, WorkerId, WorkflowCompletion};
//! use serde_json::json;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), pgwake::StoreError> {
//! let store = Store::connect("postgres://postgres@localhost/app", StoreOptions::default()).await?;
//! let orders = Queue::new("orders")?;
//! store.create_instance(NewInstance::new("order-1", orders.clone()).with_input(json!({"sku": 7}))).await?;
//!
//! let worker = WorkerId::unique("example");
//! if let Some(task) = store.claim_workflow_task(&worker, &[orders.clone()], Duration::from_secs(60)).await? {
//!     let decision = WorkflowCompletion::default().schedule_activity("charge", json!(500), None);
//!     store.complete_workflow_task(&task, decision).await?;
//! }
//! for task in store.claim_activity_tasks(&worker, &[orders], 10, Duration::from_secs(120)).await? {
//!     store.complete_activity_task(&task, Ok(json!("charged"))).await?;
//! }
//! # Ok(()) }
//! ```
//!
//! ## Locking
//! Claims lock with `FOR UPDATE SKIP LOCKED` and never wait. Every
//! transaction that waits for row locks takes its `instances` rows first, in
//! ascending `id` order, before any `pending_events` or `activities` row; so
//! no two transactions can wait for each other in a cycle.

mod activity_tasks;
mod events;
mod instances;
mod model;
mod names;
mod stats;
mod workflow_tasks;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::NoTls;

pub use model::{
    ActivityTask, CancelOutcome, Event, EventType, InstanceRef, InstanceSnapshot, InstanceState,
    Lease, NewInstance, QueueStats, ScheduleActivity, SendSignal, StartSubWorkflow, StartTimer,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask,
};
pub use names::{queues, Queue, WorkerId, MAX_QUEUE_NAME_LEN, QUEUE_NAME_RULE};

use crate::connection::ConnectionConfig;
use crate::error::StoreError;

/// Settings of a [`Store`].
///
/// ```
/// use std::time::Duration;
/// let options = pgwake::StoreOptions { pool_size: 4, ..Default::default() };
/// assert_eq!(options.max_payload_bytes, 1024 * 1024);
/// assert_eq!(options.pool_wait_timeout, Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The largest JSON payload (input, result, metadata, signal) accepted,
    /// in bytes. Default 1 MiB: rows this large already slow every claim.
    pub max_payload_bytes: usize,
    /// After a workflow task completes, its instance is reserved for the
    /// same worker this long (go-workflows' stickiness, for workers that
    /// cache state). Default zero: pgwake's workers keep no cache. Claims
    /// always honour `sticky_until` set by any worker.
    pub sticky_timeout: Duration,
    /// Connections in the pool built by [`Store::connect`]. Default 16.
    pub pool_size: usize,
    /// How long an operation waits for a pooled connection. Default 10 s.
    pub pool_wait_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            sticky_timeout: Duration::ZERO,
            pool_size: 16,
            pool_wait_timeout: Duration::from_secs(10),
        }
    }
}

/// The longest lease accepted: a task reserved longer than a day is a bug.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The queues a committed write put work on: what the commit hook receives.
///
/// ```
/// use pgwake::{store::TouchedQueues, Queue};
/// let touched = TouchedQueues { activity: vec![Queue::new("emails")?], ..Default::default() };
/// let woken: Vec<&str> = touched.workflow.iter().chain(&touched.activity).map(Queue::as_str).collect();
/// assert_eq!(woken, ["emails"]);
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TouchedQueues {
    /// Queues whose instances got pending events (workflow tasks), timers included.
    pub workflow: Vec<Queue>,
    /// Queues that got activities.
    pub activity: Vec<Queue>,
}

impl TouchedQueues {
    fn add_workflow(&mut self, queue: &Queue) {
        if !self.workflow.contains(queue) {
            self.workflow.push(queue.clone());
        }
    }

    fn add_activity(&mut self, queue: &Queue) {
        if !self.activity.contains(queue) {
            self.activity.push(queue.clone());
        }
    }

    fn is_empty(&self) -> bool {
        self.workflow.is_empty() && self.activity.is_empty()
    }
}

/// Called after each committed write with the queues it touched.
///
/// ```no_run
/// # fn f(store: pgwake::Store) -> pgwake::Store {
/// use pgwake::store::{CommitHook, TouchedQueues};
/// let hook: CommitHook = std::sync::Arc::new(|touched: TouchedQueues| {
///     println!("wake workflow workers of {:?}", touched.workflow);
/// });
/// store.with_commit_hook(hook)
/// # }
/// ```
pub type CommitHook = Arc<dyn Fn(TouchedQueues) + Send + Sync>;

/// The task backend. Cloning is cheap and shares the pool.
///
/// ```no_run
/// # async fn f() -> Result<(), pgwake::StoreError> {
/// let store = pgwake::Store::connect("postgres://postgres@localhost/app", pgwake::StoreOptions::default()).await?;
/// let shared = store.clone(); // same pool
/// tokio::spawn(async move { shared.stats().await });
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    options: StoreOptions,
    commit_hook: Option<CommitHook>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .field("options", &self.options)
            .field("commit_hook", &self.commit_hook.is_some())
            .finish()
    }
}

impl Store {
    /// A store on an existing pool. The schema is not checked; call
    /// [`check_schema`](Self::check_schema) if the pool's database may not be migrated.
    ///
    /// ```no_run
    /// # fn f(store: pgwake::Store) {
    /// // A second store on the same pool, with a smaller payload limit.
    /// let options = pgwake::StoreOptions { max_payload_bytes: 64 * 1024, ..store.options().clone() };
    /// let strict = pgwake::Store::new(store.pool().clone(), options);
    /// # }
    /// ```
    pub fn new(pool: Pool, options: StoreOptions) -> Self {
        Self {
            pool,
            options,
            commit_hook: None,
        }
    }

    /// The same store, reporting every committed write's queues to `hook`
    /// instead of letting the database triggers notify: its transactions
    /// set `pgwake.defer_notify`, which the triggers of migration 4 honour,
    /// so writers never queue on NOTIFY's commit lock. The runtime installs
    /// a hook that wakes this process's workers at once and sends one
    /// debounced NOTIFY for the other processes.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) {
    /// let store = store.with_commit_hook(std::sync::Arc::new(|touched: pgwake::store::TouchedQueues| {
    ///     println!("work on {:?}", touched.activity);
    /// }));
    /// # }
    /// ```
    pub fn with_commit_hook(mut self, hook: CommitHook) -> Self {
        self.commit_hook = Some(hook);
        self
    }

    /// Starts a write transaction: with a commit hook, one that the
    /// notification triggers skip.
    pub(crate) async fn begin_write<'a>(
        &self,
        client: &'a mut deadpool_postgres::Object,
    ) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a transaction"))?;
        if self.commit_hook.is_some() {
            tx.batch_execute("SET LOCAL pgwake.defer_notify = on")
                .await
                .map_err(db("deferring notifications"))?;
        }
        Ok(tx)
    }

    /// Commits a write transaction and reports what it touched.
    pub(crate) async fn commit_write(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        touched: TouchedQueues,
        context: &'static str,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(db(context))?;
        self.report_commit(touched);
        Ok(())
    }

    /// Whether writes skip the triggers (a commit hook notifies instead).
    pub(crate) fn defers_notifications(&self) -> bool {
        self.commit_hook.is_some()
    }

    /// Hands a committed write's queues to the hook, if any.
    pub(crate) fn report_commit(&self, touched: TouchedQueues) {
        if let Some(hook) = &self.commit_hook {
            if !touched.is_empty() {
                hook(touched);
            }
        }
    }

    /// Builds a pool for `url` and checks that the schema is at the version
    /// this pgwake needs.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), pgwake::StoreError> {
    /// use pgwake::{Store, StoreOptions};
    /// let options = StoreOptions { pool_size: 4, ..Default::default() };
    /// let store = Store::connect("postgres://app@db.internal/app", options).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A bad URL, an unreachable server, or [`StoreError::Schema`] saying to
    /// run `pgwake migrate up`.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let config = ConnectionConfig::from_url(url)?.with_application_name("pgwake-store");
        let store = Self::new(build_pool(&config, &options)?, options);
        store.check_schema().await?;
        Ok(store)
    }

    /// Refuses a database whose schema is missing, old, dirty or too new.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) {
    /// if let Err(err) = store.check_schema().await {
    ///     eprintln!("database not ready: {err}");
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::Schema`] saying which `pgwake migrate` command fixes it.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        crate::migrate::check(&client).await?;
        Ok(())
    }

    /// The pool (shared with anything else that needs a connection).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), Box<dyn std::error::Error>> {
    /// let client = store.pool().get().await?;
    /// let row = client.query_one("SELECT count(*) FROM instances", &[]).await?;
    /// println!("{} instances", row.get::<_, i64>(0));
    /// # Ok(()) }
    /// ```
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The settings.
    ///
    /// ```no_run
    /// # fn f(store: pgwake::Store) {
    /// let limit = store.options().max_payload_bytes;
    /// println!("payloads up to {limit} bytes");
    /// # }
    /// ```
    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|err| match err {
            deadpool_postgres::PoolError::Backend(source) => StoreError::Database {
                context: "opening a pooled connection",
                source,
            },
            other => StoreError::Pool(other.to_string()),
        })
    }

    /// JSON bytes for a payload, refused above the size limit.
    pub(crate) fn encode(&self, value: &Value) -> Result<Vec<u8>, StoreError> {
        let bytes = serde_json::to_vec(value)?;
        if bytes.len() > self.options.max_payload_bytes {
            return Err(StoreError::PayloadTooLarge {
                size: bytes.len(),
                limit: self.options.max_payload_bytes,
            });
        }
        Ok(bytes)
    }
}

/// A pool on `config` with pgwake's settings: connections checked only by
/// `is_closed` on reuse (a dead one fails its first query and is dropped).
pub(crate) fn build_pool(
    config: &ConnectionConfig,
    options: &StoreOptions,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.postgres_config().clone(),
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(options.pool_size.max(1))
        .wait_timeout(Some(options.pool_wait_timeout))
        .create_timeout(Some(config.connect_timeout()))
        .recycle_timeout(Some(config.connect_timeout()))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|err| StoreError::Pool(err.to_string()))
}

/// Seconds for `make_interval`, refusing zero and absurd leases.
pub(crate) fn lease_seconds(lease: Duration) -> Result<f64, StoreError> {
    if lease.is_zero() {
        return Err(StoreError::InvalidDuration {
            what: "lease",
            reason: "it must be longer than zero",
        });
    }
    if lease > MAX_LEASE {
        return Err(StoreError::InvalidDuration {
            what: "lease",
            reason: "it must be at most 24 hours; extend it while working instead",
        });
    }
    Ok(lease.as_secs_f64())
}

pub(crate) fn db(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |source| StoreError::Database { context, source }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
