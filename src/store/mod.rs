//! The task backend: go-workflows' PostgreSQL schema, read and written with
//! its semantics and without its known defects.
//!
//! A [`Store`] is a cheap handle on a connection pool. Everything that
//! creates, claims, extends and completes work is a method on it, each in
//! one transaction, each timed by the database clock (`now()`), never the
//! application's.
//!
//! Creating an instance, signalling, cancelling and enqueueing a standalone
//! activity also come in a form that writes in the caller's transaction
//! (`create_instance_in` ...): the work exists if and only if the caller's
//! own writes commit, and the [`WakeToken`] it returns, handed to
//! [`Store::wake`] after the commit, starts it at once.
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
//! Claims lock with `FOR UPDATE SKIP LOCKED` and never wait. A batch of
//! activity results locks only its own activities rows, no `instances` row
//! (an execution that ends deletes its activities before its pending
//! events, which orders it against the results being recorded for it); it
//! waits for a row at most 200 ms, then records the batch without the rows
//! still held, whose results come back as [`StoreError::ActivityBusy`], to
//! be retried. Every other transaction that
//! waits for row locks takes its `instances` rows first, in ascending `id`
//! order, before any `pending_events` or `activities` row. The advisory
//! locks on instance ids that creating an instance takes come before any
//! row lock, all of a transaction's in one statement in ascending key
//! order; taking one again later in the same transaction never waits. So no
//! two transactions can wait for each other in a cycle.

mod activity_tasks;
mod events;
mod finishes;
mod instances;
mod model;
pub(crate) mod names;
pub(crate) mod retention;
pub(crate) mod stats;
mod workflow_tasks;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;

pub use model::{
    ActivityPoll, ActivityTask, CancelOutcome, Event, EventType, InstanceRef, InstanceSnapshot,
    InstanceState, Lease, NewInstance, QueueStats, ScheduleActivity, SendSignal, StartSubWorkflow,
    StartTimer, WorkflowCompletion, WorkflowOutcome, WorkflowPoll, WorkflowTask, WorkflowTasksPoll,
    MAX_COMMANDS_PER_DECISION, MAX_TIMER_DELAY,
};
pub use names::{queues, Queue, WorkerId, MAX_QUEUE_NAME_LEN, QUEUE_NAME_RULE};
pub(crate) use workflow_tasks::EagerSlots;

use crate::connection::ConnectionConfig;
use crate::error::StoreError;

/// Settings of a [`Store`].
///
/// Non-exhaustive, so that a setting added later breaks no caller: start
/// from [`StoreOptions::default`] and assign the fields to change.
///
/// ```
/// use std::time::Duration;
/// let mut options = pgwake::StoreOptions::default();
/// options.pool_size = 4;
/// assert_eq!(options.max_payload_bytes, 1024 * 1024);
/// assert_eq!(options.pool_wait_timeout, Duration::from_secs(10));
/// // Every operation has a deadline; the server's own timeouts end first.
/// assert_eq!(options.operation_timeout, Duration::from_secs(30));
/// assert!(options.statement_timeout < options.operation_timeout);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
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
    /// The client-side deadline of every store operation, from taking a
    /// pooled connection to the commit's reply. Past it the operation fails
    /// with [`StoreError::Timeout`] (transient) and its connection is
    /// discarded, not given back to the pool: a connection that stopped
    /// answering (a partition, a proxy holding a dead socket) never wedges
    /// a worker. Default 30 s.
    pub operation_timeout: Duration,
    /// The server-side `statement_timeout` of pooled connections: a
    /// statement running longer is cancelled by the server. Keep it below
    /// `operation_timeout`, so that the server's clean cancel comes first.
    /// Default 20 s.
    pub statement_timeout: Duration,
    /// The server-side `lock_timeout` of pooled connections: a statement
    /// waiting this long for a row lock (a row held `FOR UPDATE` by another
    /// session) fails, transiently, instead of waiting. Default 5 s.
    pub lock_timeout: Duration,
    /// The server-side `idle_in_transaction_session_timeout` of pooled
    /// connections: the server ends a session of ours left idle inside a
    /// transaction this long, releasing its locks. Default 60 s.
    pub idle_in_transaction_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            sticky_timeout: Duration::ZERO,
            pool_size: 16,
            pool_wait_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(30),
            statement_timeout: Duration::from_secs(20),
            lock_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(60),
        }
    }
}

impl StoreOptions {
    /// Checks the settings: every timeout longer than zero and at most a
    /// day, and `statement_timeout` and `lock_timeout` below
    /// `operation_timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut options = pgwake::StoreOptions::default();
    /// options.statement_timeout = Duration::from_secs(60);
    /// assert!(options.validate().unwrap_err().contains("operation_timeout"));
    /// assert!(pgwake::StoreOptions::default().validate().is_ok());
    /// ```
    ///
    /// # Errors
    /// The setting's name and what is wrong with it.
    pub fn validate(&self) -> Result<(), String> {
        let timeouts = [
            ("pool_wait_timeout", self.pool_wait_timeout),
            ("operation_timeout", self.operation_timeout),
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
            (
                "idle_in_transaction_timeout",
                self.idle_in_transaction_timeout,
            ),
        ];
        for (name, value) in timeouts {
            if value < Duration::from_millis(1) || value > MAX_LEASE {
                return Err(format!(
                    "store.{name} must be between 1 ms and 24 hours, not {value:?}"
                ));
            }
        }
        for (name, value) in [
            ("statement_timeout", self.statement_timeout),
            ("lock_timeout", self.lock_timeout),
        ] {
            if value >= self.operation_timeout {
                return Err(format!(
                    "store.{name} ({value:?}) must be shorter than store.operation_timeout ({:?}), \
                     so that the server cancels a slow statement before the client gives up on \
                     its connection",
                    self.operation_timeout
                ));
            }
        }
        if self.pool_size == 0 {
            return Err("store.pool_size must be at least 1".into());
        }
        Ok(())
    }

    /// The `SET` statements that give a new pooled connection its timeouts.
    fn session_settings(&self) -> String {
        format!(
            "SET statement_timeout = {}; SET lock_timeout = {}; \
             SET idle_in_transaction_session_timeout = {}",
            self.statement_timeout.as_millis(),
            self.lock_timeout.as_millis(),
            self.idle_in_transaction_timeout.as_millis()
        )
    }
}

/// The longest lease accepted: a task reserved longer than a day is a bug.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The queues a committed write put work on: what the commit hook receives.
///
/// Non-exhaustive: to build one (to test a hook), start from
/// [`TouchedQueues::default`] and push to its fields.
///
/// ```
/// use pgwake::{store::TouchedQueues, Queue};
/// let mut touched = TouchedQueues::default();
/// touched.activity.push(Queue::new("emails")?);
/// let woken: Vec<&str> = touched.workflow.iter().chain(&touched.activity).map(Queue::as_str).collect();
/// assert_eq!(woken, ["emails"]);
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
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

/// What a write made in the caller's own transaction touched, returned by
/// the `*_in` methods ([`Store::create_instance_in`],
/// [`Store::signal_instance_in`], [`Store::cancel_instance_in`],
/// [`Store::enqueue_activity_in`], and the workflow client's `start_in`,
/// `signal_in`, `cancel_in`).
///
/// Once the transaction has committed, hand it to [`Store::wake`] (or
/// [`RuntimeHandle::wake`](crate::RuntimeHandle::wake),
/// [`Client::wake`](crate::workflow::Client::wake)): this process's workers
/// of those queues are woken at once, and the runtime's notifier sends its
/// debounced NOTIFY. `wake` consumes the token, so each write is woken once.
///
/// A token that is dropped loses nothing: the `*_in` methods leave the
/// database's insert triggers on, so the caller's commit itself sends a
/// NOTIFY and listening workers of every process (this one included) find
/// the work, only a round trip later. A token used before the commit wakes
/// workers for nothing (they find no committed row and go back to sleep);
/// the work is still announced by the trigger when the commit happens.
/// A token of a transaction that rolled back wakes workers for nothing too.
///
/// ```
/// use pgwake::store::{TouchedQueues, WakeToken};
/// // Several writes in one transaction: one token for them all.
/// let token = WakeToken::default().merge(WakeToken::default());
/// assert!(token.is_empty());
/// assert_eq!(token.queues(), &TouchedQueues::default());
/// ```
#[must_use = "after the transaction commits, pass the token to `wake` to start the work at once \
              (dropped, the work still starts, when the commit's NOTIFY arrives)"]
#[derive(Debug, Default, PartialEq, Eq)]
pub struct WakeToken {
    touched: TouchedQueues,
}

impl WakeToken {
    pub(crate) fn new(touched: TouchedQueues) -> Self {
        Self { touched }
    }

    /// One token for the queues of both: what a transaction holding
    /// several writes wakes once it commits.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), pgwake::StoreError> {
    /// use pgwake::{NewInstance, Queue};
    /// let (_, first) = store.create_instance_in(tx, NewInstance::new("order-1", Queue::new("orders")?)).await?;
    /// let (_, second) = store.create_instance_in(tx, NewInstance::new("order-2", Queue::new("orders")?)).await?;
    /// let token = first.merge(second);
    /// # drop(token);
    /// # Ok(()) }
    /// ```
    pub fn merge(mut self, other: WakeToken) -> WakeToken {
        for queue in &other.touched.workflow {
            self.touched.add_workflow(queue);
        }
        for queue in &other.touched.activity {
            self.touched.add_activity(queue);
        }
        self
    }

    /// The queues it wakes.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), pgwake::StoreError> {
    /// let token = store.signal_instance_in(tx, "order-7", "paid", serde_json::json!(true)).await?;
    /// println!("wakes the workflow workers of {:?}", token.queues().workflow);
    /// # drop(token);
    /// # Ok(()) }
    /// ```
    pub fn queues(&self) -> &TouchedQueues {
        &self.touched
    }

    /// Whether it wakes nothing (a cancel of a finished instance, say).
    ///
    /// ```
    /// assert!(pgwake::store::WakeToken::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.touched.is_empty()
    }
}

/// How a store and its clones announce their committed writes.
#[derive(Default)]
struct Announcer {
    /// Called after each committed write. Settable after the store was
    /// built: a store made before the runtime starts gets the runtime's.
    hook: RwLock<Option<CommitHook>>,
    /// Whether writes skip the insert triggers' NOTIFY because the hook's
    /// notifier sends it (off once the runtime stopped).
    defer_notify: AtomicBool,
}

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
    /// The commit hook and whether writes defer to it (shared by clones).
    announcer: Arc<Announcer>,
    /// This process's waiters for ends of executions (shared by clones).
    finishes: Arc<finishes::Finishes>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .field("options", &self.options)
            .field("commit_hook", &self.commit_hook().is_some())
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
    /// let mut options = store.options().clone();
    /// options.max_payload_bytes = 64 * 1024;
    /// let strict = pgwake::Store::new(store.pool().clone(), options);
    /// # }
    /// ```
    pub fn new(pool: Pool, options: StoreOptions) -> Self {
        Self {
            pool,
            options,
            announcer: Arc::default(),
            finishes: Arc::default(),
        }
    }

    /// The same store, reporting every committed write's queues to `hook`
    /// instead of letting the database triggers notify: its transactions
    /// set `pgwake.defer_notify`, which the triggers of migration 4 honour,
    /// so writers never queue on NOTIFY's commit lock. The runtime installs
    /// a hook that wakes this process's workers at once and sends one
    /// debounced NOTIFY for the other processes. Clones made before keep
    /// what they had; clones made after share the hook.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) {
    /// let store = store.with_commit_hook(std::sync::Arc::new(|touched: pgwake::store::TouchedQueues| {
    ///     println!("work on {:?}", touched.activity);
    /// }));
    /// # }
    /// ```
    pub fn with_commit_hook(mut self, hook: CommitHook) -> Self {
        self.announcer = Arc::new(Announcer {
            hook: RwLock::new(Some(hook)),
            defer_notify: AtomicBool::new(true),
        });
        self
    }

    /// Gives this store and every clone of it, made before or after, the
    /// commit hook `hook` (replacing any) and makes their writes defer the
    /// NOTIFY to it: how a store built before the runtime started, and
    /// already handed to handlers, gets the runtime's wake-ups.
    pub(crate) fn attach_commit_hook(&self, hook: CommitHook) {
        *self
            .announcer
            .hook
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hook);
        self.announcer.defer_notify.store(true, Ordering::Relaxed);
    }

    /// From now on, writes through this store and its clones leave the
    /// NOTIFY to the insert triggers again (the commit hook still runs):
    /// what the runtime's shutdown does once its notifier has stopped, so
    /// no write is left unannounced.
    pub(crate) fn stop_deferring_notifications(&self) {
        self.announcer.defer_notify.store(false, Ordering::Relaxed);
    }

    /// The commit hook, if any.
    fn commit_hook(&self) -> Option<CommitHook> {
        self.announcer
            .hook
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Wakes the work of a write made in the caller's transaction, once
    /// that transaction has committed: this process's workers of its queues
    /// at once, and, through the runtime's notifier, one debounced NOTIFY
    /// for other processes. Nothing happens inside the caller's
    /// transaction, so its commit pays nothing for it. A store without a
    /// commit hook (not a runtime's) has nothing to wake: the insert
    /// triggers announced the write at its commit.
    ///
    /// Call it after the commit. Before, it only wakes workers early: they
    /// find no committed row and go back to sleep, and the trigger's NOTIFY
    /// still announces the work at the commit (in poll-only mode, with
    /// `notifications` off, it is then found at the next fallback poll).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// use pgwake::{NewInstance, Queue};
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&7_i64]).await?;
    /// let (_, token) = store.create_instance_in(&tx, NewInstance::new("order-7", Queue::new("orders")?)).await?;
    /// tx.commit().await?;
    /// store.wake(token);
    /// # Ok(()) }
    /// ```
    pub fn wake(&self, token: WakeToken) {
        self.report_commit(token.touched);
    }

    /// Runs one operation under the store's deadline
    /// ([`StoreOptions::operation_timeout`]). Past it the operation is
    /// dropped, and with it its pooled connection, which [`PooledClient`]
    /// then discards.
    pub(crate) async fn bounded<T>(
        &self,
        context: &'static str,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let after = self.options.operation_timeout;
        let mut operation = Box::pin(operation);
        match tokio::time::timeout(after, &mut operation).await {
            Ok(result) => result,
            Err(_) => {
                // Dropped here, so that the connection it holds knows it was
                // cut off mid-operation and is not given back to the pool.
                CUTTING_OFF.with(|cutting| cutting.set(true));
                drop(operation);
                CUTTING_OFF.with(|cutting| cutting.set(false));
                tracing::warn!(
                    context,
                    ?after,
                    "database operation ran past its deadline; its connection is discarded"
                );
                Err(StoreError::Timeout { context, after })
            }
        }
    }

    /// Starts a write transaction: with a commit hook, one that the
    /// notification triggers skip.
    pub(crate) async fn begin_write<'a>(
        &self,
        client: &'a mut PooledClient,
    ) -> Result<deadpool_postgres::Transaction<'a>, StoreError> {
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a transaction"))?;
        if self.defers_notifications() {
            tx.batch_execute(DEFER_NOTIFY)
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
        // A commit whose reply is lost (an error, or the deadline dropping
        // this future) may have committed: the guard reports the queues in
        // every case, at once and once more later. A wake-up for nothing
        // costs one empty claim; a missing one costs a fallback interval.
        let report = CommitReport::new(self, touched);
        let committed = tx.commit().await.map_err(db(context));
        report.settle(committed.is_ok());
        committed
    }

    /// Runs a write transaction whose statements are all sent at once, in
    /// one round trip: BEGIN (plans restricted to [`index_walks_only!`],
    /// the triggers deferred as by [`begin_write`](Self::begin_write)),
    /// `statements` in order, COMMIT.
    /// Only for statements whose results nothing in between depends on: a
    /// condition the others rely on is checked in SQL (`pgwake_require`,
    /// migration 11), which raises. A statement that fails aborts the
    /// transaction, every statement after it fails as well and the COMMIT
    /// rolls back; the first failure is the answer, with what its statement
    /// was doing. The touched queues are reported as by
    /// [`commit_write`](Self::commit_write): not at all when the server
    /// refused a statement (nothing committed), twice when the outcome is
    /// unknown.
    ///
    /// Each statement must be prepared before: a request then leaves when
    /// its future is first polled, so the requests leave in the order of
    /// `statements`.
    pub(crate) async fn write_pipelined(
        &self,
        client: &PooledClient,
        statements: Vec<Pipelined<'_>>,
        touched: TouchedQueues,
    ) -> Result<(), PipelineError> {
        let begin = Pipelined {
            context: "starting a transaction",
            request: Box::pin(client.batch_execute(self.begin_sql())),
        };
        client.in_transaction.store(true, Ordering::Relaxed);
        let mut contexts = Vec::new();
        let mut requests = Vec::new();
        for statement in std::iter::once(begin).chain(statements) {
            contexts.push(statement.context);
            requests.push(statement.request);
        }
        contexts.push("committing");
        requests.push(Box::pin(client.batch_execute("COMMIT")));
        let report = CommitReport::new(self, touched);
        // join_all polls its futures in order: each sends its request when
        // first polled, so they leave in this order, on one connection.
        let results = futures::future::join_all(requests).await;
        // Answered, COMMIT included: the transaction is over either way.
        client.in_transaction.store(false, Ordering::Relaxed);
        let failure = contexts
            .into_iter()
            .zip(results)
            .find_map(|(context, result)| {
                result.err().map(|source| PipelineError { context, source })
            });
        match failure {
            None => report.settle(true),
            // Refused by the server: the transaction was aborted there.
            Some(ref failure) if failure.source.as_db_error().is_some() => report.discard(),
            Some(_) => report.settle(false),
        }
        failure.map_or(Ok(()), Err)
    }

    /// What opens a pipelined write transaction: BEGIN, plans restricted to
    /// index walks, and the deferral of the notification triggers when a
    /// commit hook notifies instead.
    fn begin_sql(&self) -> &'static str {
        if self.defers_notifications() {
            BEGIN_DEFERRED_WRITE
        } else {
            BEGIN_INDEX_WALKS_ONLY
        }
    }

    /// Whether writes skip the triggers (a commit hook notifies instead).
    pub(crate) fn defers_notifications(&self) -> bool {
        self.announcer.defer_notify.load(Ordering::Relaxed) && self.commit_hook().is_some()
    }

    /// Hands a committed write's queues to the hook, if any.
    pub(crate) fn report_commit(&self, touched: TouchedQueues) {
        if let Some(hook) = self.commit_hook() {
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
    /// let mut options = StoreOptions::default();
    /// options.pool_size = 4;
    /// let store = Store::connect("postgres://app@db.internal/app", options).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A bad URL, an unreachable server, or [`StoreError::Schema`] saying to
    /// run `pgwake migrate up`.
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let config = ConnectionConfig::from_url(url)?.with_application_name("pgwake-store");
        options
            .validate()
            .map_err(|reason| StoreError::InvalidOptions { reason })?;
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
        self.bounded("checking the schema", self.check_schema_unbounded())
            .await
    }

    async fn check_schema_unbounded(&self) -> Result<(), StoreError> {
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

    /// Starts waiting for the end of an execution of `instance_id` that
    /// this store (or a clone) records.
    pub(crate) fn subscribe_to_end(&self, instance_id: &str) -> finishes::FinishSubscription {
        self.finishes.subscribe(instance_id)
    }

    pub(crate) async fn client(&self) -> Result<PooledClient, StoreError> {
        let object = self.pool.get().await.map_err(|err| match err {
            deadpool_postgres::PoolError::Backend(source) => StoreError::Database {
                context: "opening a pooled connection",
                source,
            },
            other => StoreError::Pool(other.to_string()),
        })?;
        Ok(PooledClient {
            object: Some(object),
            in_transaction: std::sync::atomic::AtomicBool::new(false),
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

thread_local! {
    /// Set while [`Store::bounded`] drops an operation it cut off at its
    /// deadline (drops run synchronously, on this thread).
    static CUTTING_OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The settings of a transaction whose plans are restricted to index walks
/// in index order: sorts, bitmap and sequential scans are costed out (still
/// used where nothing else can answer, like the sort of a claim's
/// candidates). The claims and the writes of every task run with them: the
/// tables' statistics lag behind a burst of work (a table analyzed empty
/// holds thousands of rows a second later), and with them the workflow
/// claim sorted every ready event or scanned every active instance (2-10 ms
/// at 1,000 instances), and the activity claim and the recording of its
/// result scanned the whole activities table, backlog included. The
/// penalty inflates a plan's cost past JIT's threshold, and compiling one
/// took 0.7 s: JIT is off. With no choice left to the statistics, one
/// generic plan serves every call: a statement is planned once per
/// connection (and after the tables' statistics change), not on each call
/// (planning the workflow claim took 1.5 ms, its execution 0.25 ms).
macro_rules! index_walks_only {
    () => {
        "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off; \
         SET LOCAL enable_seqscan = off; SET LOCAL jit = off; \
         SET LOCAL plan_cache_mode = force_generic_plan"
    };
}

/// BEGIN, and [`index_walks_only!`]: a claim's transaction.
pub(crate) const BEGIN_INDEX_WALKS_ONLY: &str = concat!("BEGIN; ", index_walks_only!());

/// Makes the notification triggers skip the transaction's writes (migration
/// 4): a commit hook announces them instead, after the commit.
macro_rules! defer_notify {
    () => {
        "SET LOCAL pgwake.defer_notify = on"
    };
}

/// [`defer_notify!`], for a transaction begun through deadpool.
const DEFER_NOTIFY: &str = defer_notify!();

/// BEGIN, [`index_walks_only!`], and the triggers' deferral: a pipelined
/// write's transaction when a commit hook notifies.
const BEGIN_DEFERRED_WRITE: &str = concat!("BEGIN; ", defer_notify!(), "; ", index_walks_only!());

/// A pooled connection, given back to the pool when dropped unless the
/// operation holding it was cut off at its deadline: then the connection
/// may be silent or mid-statement, and it is discarded instead, so the next
/// operation gets a fresh one.
pub(crate) struct PooledClient {
    object: Option<deadpool_postgres::Object>,
    /// Set while a transaction begun by hand (see [`Store::write_pipelined`];
    /// a `Transaction` rolls itself back when dropped) has not been
    /// answered: dropped then, the connection is closed, never pooled
    /// mid-transaction.
    in_transaction: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for PooledClient {
    type Target = deadpool_postgres::Object;

    fn deref(&self) -> &Self::Target {
        self.object.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.object.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if CUTTING_OFF.with(|cutting| cutting.get()) || *self.in_transaction.get_mut() {
            if let Some(object) = self.object.take() {
                // Detached from the pool; dropping the client closes it.
                drop(deadpool_postgres::Object::take(object));
            }
        }
    }
}

/// Reports a commit's touched queues to the commit hook whatever became of
/// the commit: at once when it succeeded; when its outcome is unknown (an
/// error, or the operation dropped at its deadline), at once and again a
/// moment later, since a commit still under way on the server may become
/// visible only after the first wake-up.
pub(crate) struct CommitReport<'a> {
    store: &'a Store,
    touched: Option<TouchedQueues>,
}

/// When an in-doubt commit is reported again.
const IN_DOUBT_REPORT_AGAIN: Duration = Duration::from_secs(1);

impl<'a> CommitReport<'a> {
    pub(crate) fn new(store: &'a Store, touched: TouchedQueues) -> Self {
        Self {
            store,
            touched: Some(touched),
        }
    }

    pub(crate) fn settle(mut self, committed: bool) {
        if let Some(touched) = self.touched.take() {
            self.store.report(touched, !committed);
        }
    }

    /// Nothing was committed (the server refused the transaction): nothing
    /// to report.
    pub(crate) fn discard(mut self) {
        self.touched = None;
    }
}

/// One statement of [`Store::write_pipelined`].
pub(crate) struct Pipelined<'a> {
    /// What it does, for its error.
    pub(crate) context: &'static str,
    /// Its request, sent when first polled.
    pub(crate) request: futures::future::BoxFuture<'a, Result<(), tokio_postgres::Error>>,
}

impl<'a> Pipelined<'a> {
    /// `statement` (prepared) with `params`, its rows kept in `rows`.
    pub(crate) fn query(
        client: &'a PooledClient,
        context: &'static str,
        statement: &'a tokio_postgres::Statement,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
        rows: &'a std::sync::OnceLock<Vec<tokio_postgres::Row>>,
    ) -> Self {
        Self {
            context,
            request: Box::pin(async move {
                let answer = client.query(statement, params).await?;
                // Set once: each statement has its own slot.
                let _ = rows.set(answer);
                Ok(())
            }),
        }
    }

    /// `statement` (prepared) with `params`, its row count ignored.
    pub(crate) fn execute(
        client: &'a PooledClient,
        context: &'static str,
        statement: &'a tokio_postgres::Statement,
        params: &'a [&'a (dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Self {
        Self {
            context,
            request: Box::pin(async move { client.execute(statement, params).await.map(drop) }),
        }
    }
}

/// The first statement of a pipelined transaction that failed.
#[derive(Debug)]
pub(crate) struct PipelineError {
    pub(crate) context: &'static str,
    pub(crate) source: tokio_postgres::Error,
}

impl From<PipelineError> for StoreError {
    fn from(failure: PipelineError) -> Self {
        StoreError::Database {
            context: failure.context,
            source: failure.source,
        }
    }
}

impl Drop for CommitReport<'_> {
    fn drop(&mut self) {
        if let Some(touched) = self.touched.take() {
            self.store.report(touched, true);
        }
    }
}

impl Store {
    /// Calls the commit hook; for a commit in doubt, again after
    /// [`IN_DOUBT_REPORT_AGAIN`] and after the statement timeout (by then
    /// the server has finished or abandoned it).
    fn report(&self, touched: TouchedQueues, in_doubt: bool) {
        if self.commit_hook().is_none() || touched.is_empty() {
            return;
        }
        if in_doubt {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let (store, again) = (self.clone(), touched.clone());
                let last = self.options.statement_timeout.max(IN_DOUBT_REPORT_AGAIN);
                runtime.spawn(async move {
                    tokio::time::sleep(IN_DOUBT_REPORT_AGAIN).await;
                    store.report_commit(again.clone());
                    tokio::time::sleep(last - IN_DOUBT_REPORT_AGAIN).await;
                    store.report_commit(again);
                });
            }
        }
        self.report_commit(touched);
    }
}

/// A pool on `config` with pgwake's settings: connections checked only by
/// `is_closed` on reuse (a dead one fails its first query and is dropped),
/// each new one given the server-side timeouts of `options` before use.
pub(crate) fn build_pool(
    config: &ConnectionConfig,
    options: &StoreOptions,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(
        config.postgres_config().clone(),
        config.tls_connector(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let settings = options.session_settings();
    Pool::builder(manager)
        .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let settings = settings.clone();
            Box::pin(async move {
                client
                    .batch_execute(&settings)
                    .await
                    .map_err(deadpool_postgres::HookError::Backend)
            })
        }))
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
