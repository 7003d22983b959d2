//! The maintainer: one process per database, elected with a PostgreSQL
//! advisory lock, that does the housekeeping nobody should do twice
//! (retention, the removal of old finished instances, and the firing of
//! [schedules](crate::schedule)).
//!
//! The public side is [`MaintainerConfig`] (the election, its takeover
//! bound) and [`RetentionPolicy`] (what the maintainer removes), both
//! re-exported from [`runtime`](super); their documentation is the guide.
//! This module also holds the election's pure state ([`Election`]) and the
//! actor that drives it on its connection ([`MaintainerActor`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use pgwake::runtime::RetentionPolicy;
//! use pgwake::{Runtime, RuntimeConfig};
//!
//! # async fn example() -> Result<(), pgwake::RuntimeError> {
//! let day = Duration::from_secs(86_400);
//! let retention = RetentionPolicy::new()
//!     .remove_finished_after(7 * day)
//!     .remove_queue_after("audit", 365 * day)?
//!     .keep_queue_forever("invoices")?;
//! let runtime = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
//!     .retention(retention)
//!     .start()
//!     .await?;
//! println!("maintainer: {}", runtime.health().maintainer);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client};

use super::backoff::jittered;
use super::health::HealthBoard;
use crate::connection::ConnectionConfig;
use crate::error::{BuildError, ErrorChain, StoreError};
use crate::store::retention::{workflow_needle, Among, RetentionScope};
use crate::store::{Queue, Store};

/// The key of the session-level advisory lock whose holder is the
/// maintainer: `pg_try_advisory_lock(8100634213390712833)`, the bytes
/// `pgwake` followed by `0x0001`. In `pg_locks` it shows as
/// `locktype = 'advisory'`, `classid = 1885828961`, `objid = 1801781249`,
/// `objsubid = 1`. pgwake's locks on instance ids use the two-key form
/// (`objsubid = 2`), so they never collide with it.
///
/// ```
/// assert_eq!(pgwake::runtime::MAINTAINER_LOCK_KEY, 0x7067_7761_6b65_0001);
/// ```
pub const MAINTAINER_LOCK_KEY: i64 = 0x7067_7761_6b65_0001;

/// `pg_locks.classid` of [`MAINTAINER_LOCK_KEY`]: its high 32 bits.
const LOCK_KEY_HIGH: i64 = MAINTAINER_LOCK_KEY >> 32;
/// `pg_locks.objid` of [`MAINTAINER_LOCK_KEY`]: its low 32 bits.
const LOCK_KEY_LOW: i64 = MAINTAINER_LOCK_KEY & 0xffff_ffff;

/// Whether this server session holds the maintainer lock (`$1`, `$2`: the
/// key's halves as `pg_locks` shows them).
macro_rules! holds_lock_sql {
    () => {
        "EXISTS (SELECT 1 FROM pg_locks
                  WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
                    AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = 1)"
    };
}

/// Takes the lock (`$3`) unless this server session already holds it.
///
/// A follower's own session never holds it (taking it makes it the leader,
/// and any failure ends the session), so a session that does was lent by
/// a transaction-mode pooler after another client took the lock on it:
/// `pg_try_advisory_lock` is re-entrant and would say true, and two
/// processes would lead. `CASE` evaluates the lock attempt only when the
/// condition is false.
const TRY_LOCK: &str = concat!(
    "SELECT CASE WHEN ",
    holds_lock_sql!(),
    " THEN false ELSE pg_try_advisory_lock($3) END"
);

/// The maintainer's ping: its session is alive and still holds the lock.
/// A live session keeps a session-level lock until it unlocks (never done)
/// or ends; false here means statements run on another server session
/// than the one that took it (a transaction-mode pooler).
const STILL_HOLDING: &str = concat!("SELECT ", holds_lock_sql!());

/// The prefix of the `application_name` of the maintainer's connection,
/// followed by `:` and the process id, e.g. `pgwake-maintainer:4242`.
///
/// ```
/// assert_eq!(pgwake::runtime::MAINTAINER_APPLICATION_NAME, "pgwake-maintainer");
/// ```
pub const MAINTAINER_APPLICATION_NAME: &str = "pgwake-maintainer";

/// How the maintainer election runs.
///
/// # Election
/// Each runtime started with [`RuntimeBuilder::maintainer`](super::RuntimeBuilder::maintainer)
/// or [`RuntimeBuilder::retention`](super::RuntimeBuilder::retention) opens
/// one dedicated connection (to `listener_url` when set, else
/// `database_url`, with the same TLS settings as the listeners;
/// `application_name` `pgwake-maintainer:<pid>`) and tries
/// `pg_try_advisory_lock(`[`MAINTAINER_LOCK_KEY`]`)` on it at start and
/// then every [`MaintainerConfig::retry_interval`] (±20% jitter). The lock
/// is session-level: whoever holds it is the maintainer until its session
/// ends, and PostgreSQL grants it to exactly one session per database.
/// The maintainer pings its connection every `retry_interval`, checking
/// in `pg_locks` that its session still holds the lock; a ping, a
/// lock attempt or a connect not answered within
/// [`MaintainerConfig::operation_timeout`], an error, or the end of the
/// connection drops the connection, and with it leadership, at once.
///
/// # Takeover bound
/// When the maintainer's session ends (its process exits or is killed, it
/// shuts down, its connection is cut or terminated), PostgreSQL releases
/// the lock at once and another runtime takes it at its next attempt:
/// within `1.2 × retry_interval + operation_timeout`
/// ([`MaintainerConfig::takeover_bound`]; 17 s with the defaults). A
/// maintainer that cannot reach the server stops acting as one within
/// `1.2 × retry_interval + operation_timeout` too, but the server holds its
/// lock until it notices that the session is gone (at once for a closed
/// socket; for a silent network, after the server's TCP keepalive or
/// `tcp_user_timeout` settings), and only then can another take over.
/// There is never more than one maintainer at a time, at the price of
/// none for that while.
///
/// The lock needs a session of its own: behind a transaction-mode pooler
/// (PgBouncer) point `listener_url` at PostgreSQL itself, as the listeners
/// need anyway.
///
/// Non-exhaustive: start from [`MaintainerConfig::default`] and assign the
/// fields to change.
///
/// ```
/// use std::time::Duration;
/// let mut config = pgwake::runtime::MaintainerConfig::default();
/// config.retry_interval = Duration::from_secs(2);
/// config.validate()?;
/// assert_eq!(config.takeover_bound(), Duration::from_millis(2_400) + config.operation_timeout);
/// # Ok::<(), pgwake::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintainerConfig {
    /// How often a runtime that is not the maintainer tries to take the
    /// lock (or to reconnect), and how often the maintainer pings its
    /// connection; each interval jittered by ±20%. Default 10 s.
    pub retry_interval: Duration,
    /// The deadline of each connect, lock attempt and ping on the
    /// maintainer's connection; past it the connection is dropped (and
    /// leadership with it). Default 5 s.
    pub operation_timeout: Duration,
}

impl Default for MaintainerConfig {
    /// A retry interval of 10 s and an operation timeout of 5 s.
    fn default() -> Self {
        Self {
            retry_interval: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(5),
        }
    }
}

impl MaintainerConfig {
    /// The longest time from the end of the maintainer's session to another
    /// runtime holding the lock, while that one stays connected: its next
    /// jittered attempt (`1.2 × retry_interval`) plus that attempt's
    /// deadline.
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = pgwake::runtime::MaintainerConfig::default();
    /// assert_eq!(config.takeover_bound(), Duration::from_secs(17));
    /// ```
    pub fn takeover_bound(&self) -> Duration {
        self.retry_interval.mul_f64(1.2) + self.operation_timeout
    }

    /// Checks both intervals.
    ///
    /// # Errors
    /// [`BuildError::Setting`] naming a zero interval.
    ///
    /// ```
    /// let mut config = pgwake::runtime::MaintainerConfig::default();
    /// config.retry_interval = std::time::Duration::ZERO;
    /// assert!(config.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), BuildError> {
        for (name, value) in [
            ("maintainer.retry_interval", self.retry_interval),
            ("maintainer.operation_timeout", self.operation_timeout),
        ] {
            if value.is_zero() {
                return Err(BuildError::Setting {
                    name,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        Ok(())
    }
}

/// Which finished instances the maintainer removes, and how often it looks.
///
/// Nothing is removed unless an age is set: [`new`](Self::new) keeps
/// everything, [`remove_finished_after`](Self::remove_finished_after) sets
/// the age of every queue without an override of its own
/// ([`remove_queue_after`](Self::remove_queue_after),
/// [`keep_queue_forever`](Self::keep_queue_forever)). An execution's age
/// counts from its `completed_at` (database clock); running executions are
/// never removed.
///
/// # How it runs
/// The maintainer runs its [`RetentionPolicy`] at once when it is elected
/// and then every [`RetentionPolicy::run_every`] interval: it removes
/// executions finished longer ago than their queue's age, with their
/// history, events, activities and attributes, in batches of
/// [`RetentionPolicy::batch_size`], each one short autocommit statement
/// under the store's operation deadline that skips rows other transactions
/// hold; it stops between batches once it is no longer the maintainer.
/// Each execution is judged on its own `completed_at`: the finished
/// executions of a continue-as-new chain go one by one as they age, while
/// the chain's running execution stays. Removals are counted by the metric
/// `pgwake_retention_removed_total`, and each run that removed something
/// logs one `info` event.
///
/// ```
/// use std::time::Duration;
/// use pgwake::runtime::RetentionPolicy;
/// let day = Duration::from_secs(86_400);
/// let policy = RetentionPolicy::new()
///     .remove_finished_after(7 * day)
///     .keep_queue_forever("invoices")?
///     .run_every(Duration::from_secs(600))
///     .batch_size(200);
/// assert_eq!(policy.age_for("emails"), Some(7 * day));
/// assert_eq!(policy.age_for("invoices"), None);
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetentionPolicy {
    default_age: Option<Duration>,
    /// Per-queue overrides; `None` keeps that queue's instances forever.
    queue_ages: BTreeMap<String, Option<Duration>>,
    /// Per-workflow overrides, ahead of the queues'; `None` keeps that
    /// workflow's instances forever.
    workflow_ages: BTreeMap<String, Option<Duration>>,
    run_every: Duration,
    batch_size: usize,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetentionPolicy {
    /// The default run interval: one minute.
    pub const DEFAULT_RUN_EVERY: Duration = Duration::from_secs(60);

    /// The default batch size: 500 executions per statement.
    pub const DEFAULT_BATCH_SIZE: usize = 500;

    /// A policy that keeps everything, runs every
    /// [`DEFAULT_RUN_EVERY`](Self::DEFAULT_RUN_EVERY) in batches of
    /// [`DEFAULT_BATCH_SIZE`](Self::DEFAULT_BATCH_SIZE).
    ///
    /// ```
    /// let policy = pgwake::runtime::RetentionPolicy::new();
    /// assert_eq!(policy.age_for("emails"), None);
    /// ```
    pub fn new() -> Self {
        Self {
            default_age: None,
            queue_ages: BTreeMap::new(),
            workflow_ages: BTreeMap::new(),
            run_every: Self::DEFAULT_RUN_EVERY,
            batch_size: Self::DEFAULT_BATCH_SIZE,
        }
    }

    /// Removes executions finished more than `age` ago, on every queue
    /// without an override.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::runtime::RetentionPolicy::new().remove_finished_after(Duration::from_secs(3600));
    /// assert_eq!(policy.age_for("any"), Some(Duration::from_secs(3600)));
    /// ```
    pub fn remove_finished_after(mut self, age: Duration) -> Self {
        self.default_age = Some(age);
        self
    }

    /// Removes `queue`'s executions finished more than `age` ago, whatever
    /// the default age.
    ///
    /// # Errors
    /// An invalid queue name ([`StoreError::InvalidQueueName`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::runtime::RetentionPolicy::new()
    ///     .remove_queue_after("audit", Duration::from_secs(86_400))?;
    /// assert_eq!(policy.age_for("audit"), Some(Duration::from_secs(86_400)));
    /// assert_eq!(policy.age_for("emails"), None);
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn remove_queue_after(mut self, queue: &str, age: Duration) -> Result<Self, StoreError> {
        let queue = Queue::new(queue)?;
        self.queue_ages
            .insert(queue.as_str().to_string(), Some(age));
        Ok(self)
    }

    /// Never removes `queue`'s executions, whatever the default age.
    ///
    /// # Errors
    /// An invalid queue name ([`StoreError::InvalidQueueName`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::runtime::RetentionPolicy::new()
    ///     .remove_finished_after(Duration::from_secs(60))
    ///     .keep_queue_forever("invoices")?;
    /// assert_eq!(policy.age_for("invoices"), None);
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn keep_queue_forever(mut self, queue: &str) -> Result<Self, StoreError> {
        let queue = Queue::new(queue)?;
        self.queue_ages.insert(queue.as_str().to_string(), None);
        Ok(self)
    }

    /// Removes the executions of workflow `name` finished more than `age`
    /// ago, whatever their queue's age: a workflow's override comes before
    /// its queue's. An execution is of workflow `name` when its metadata is
    /// a JSON object whose `workflow` key holds `name`, as
    /// [`workflow::Client::start`](crate::workflow::Client::start), the SQL
    /// function `pgwake_start_workflow` and schedules write it (compared
    /// as serde_json writes it, without spaces; metadata another writer
    /// spaced out follows its queue's age).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::runtime::RetentionPolicy::new()
    ///     .keep_queue_forever("emails")?
    ///     .remove_workflow_after("newsletter", Duration::from_secs(3600));
    /// assert_eq!(policy.age_for_workflow("emails", "newsletter"), Some(Duration::from_secs(3600)));
    /// assert_eq!(policy.age_for_workflow("emails", "receipt"), None);
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn remove_workflow_after(mut self, name: &str, age: Duration) -> Self {
        self.workflow_ages.insert(name.to_string(), Some(age));
        self
    }

    /// Never removes the executions of workflow `name`, whatever their
    /// queue's age (see [`remove_workflow_after`](Self::remove_workflow_after)).
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = pgwake::runtime::RetentionPolicy::new()
    ///     .remove_finished_after(Duration::from_secs(60))
    ///     .keep_workflow_forever("invoice");
    /// assert_eq!(policy.age_for_workflow("billing", "invoice"), None);
    /// assert_eq!(policy.age_for_workflow("billing", "reminder"), Some(Duration::from_secs(60)));
    /// ```
    pub fn keep_workflow_forever(mut self, name: &str) -> Self {
        self.workflow_ages.insert(name.to_string(), None);
        self
    }

    /// How often the maintainer runs the policy (default
    /// [`DEFAULT_RUN_EVERY`](Self::DEFAULT_RUN_EVERY)); also at once when
    /// it is elected. Must be longer than zero.
    pub fn run_every(mut self, interval: Duration) -> Self {
        self.run_every = interval;
        self
    }

    /// How many executions one statement removes at most (default
    /// [`DEFAULT_BATCH_SIZE`](Self::DEFAULT_BATCH_SIZE)): smaller batches
    /// hold their row locks for less time. Must be at least 1.
    pub fn batch_size(mut self, executions: usize) -> Self {
        self.batch_size = executions;
        self
    }

    /// The age after which `queue`'s finished executions are removed;
    /// `None`: never.
    pub fn age_for(&self, queue: &str) -> Option<Duration> {
        match self.queue_ages.get(queue) {
            Some(age) => *age,
            None => self.default_age,
        }
    }

    /// The age after which the finished executions of workflow `workflow`
    /// on `queue` are removed: the workflow's override, else the queue's
    /// age; `None`: never.
    pub fn age_for_workflow(&self, queue: &str, workflow: &str) -> Option<Duration> {
        match self.workflow_ages.get(workflow) {
            Some(age) => *age,
            None => self.age_for(queue),
        }
    }

    /// Checks the run interval and the batch size.
    ///
    /// # Errors
    /// [`BuildError::Setting`] naming the setting.
    ///
    /// ```
    /// let policy = pgwake::runtime::RetentionPolicy::new().batch_size(0);
    /// assert!(policy.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), BuildError> {
        if self.run_every.is_zero() {
            return Err(BuildError::Setting {
                name: "retention.run_every",
                reason: "must be longer than zero".into(),
            });
        }
        if self.batch_size == 0 {
            return Err(BuildError::Setting {
                name: "retention.batch_size",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The removals one run makes: one per workflow with an age of its
    /// own (on every queue), one per queue with an age of its own, then one
    /// for every other queue under the default age (none when there is no
    /// default age); the last two leave out the workflows with overrides.
    pub(crate) fn passes(&self) -> Vec<RetentionPass> {
        let overridden: Vec<Vec<u8>> = self
            .workflow_ages
            .keys()
            .map(|name| workflow_needle(name))
            .collect();
        let mut passes: Vec<RetentionPass> = self
            .workflow_ages
            .iter()
            .filter_map(|(name, age)| {
                age.map(|older_than| RetentionPass {
                    queues: PassQueues::AllBut(Vec::new()),
                    workflows: PassWorkflows::Only(workflow_needle(name)),
                    older_than,
                })
            })
            .collect();
        passes.extend(self.queue_ages.iter().filter_map(|(queue, age)| {
            age.map(|older_than| RetentionPass {
                queues: PassQueues::Only(queue.clone()),
                workflows: PassWorkflows::AllBut(overridden.clone()),
                older_than,
            })
        }));
        if let Some(older_than) = self.default_age {
            passes.push(RetentionPass {
                queues: PassQueues::AllBut(self.queue_ages.keys().cloned().collect()),
                workflows: PassWorkflows::AllBut(overridden),
                older_than,
            });
        }
        passes
    }
}

/// One removal of a retention run: which queues, and from what age.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RetentionPass {
    queues: PassQueues,
    workflows: PassWorkflows,
    older_than: Duration,
}

/// The workflows a pass removes, by [`workflow_needle`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum PassWorkflows {
    Only(Vec<u8>),
    /// Every workflow but those with an override (none: every workflow).
    AllBut(Vec<Vec<u8>>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PassQueues {
    Only(String),
    /// Every queue but those that have an override (kept forever or aged
    /// on their own).
    AllBut(Vec<String>),
}

impl RetentionPass {
    fn scope(&self) -> RetentionScope<'_> {
        RetentionScope {
            queues: match &self.queues {
                PassQueues::Only(queue) => Among::Only(queue),
                PassQueues::AllBut(queues) => Among::AllBut(queues),
            },
            workflows: match &self.workflows {
                PassWorkflows::Only(needle) => Among::Only(needle),
                PassWorkflows::AllBut(needles) => Among::AllBut(needles),
            },
        }
    }
}

/// Where this process stands in the election.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// No connection: the next tick connects.
    Reconnecting,
    /// Connected, not holding the lock: the next tick tries to take it.
    Follower,
    /// Connected and holding the lock: the next tick pings.
    Leader,
}

/// What happened on the maintainer's connection, or that its timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElectionEvent {
    /// The retry timer fired.
    Tick,
    /// A connect succeeded.
    Connected,
    /// `pg_try_advisory_lock` returned true.
    LockTaken,
    /// `pg_try_advisory_lock` returned false: another session holds it.
    LockHeldElsewhere,
    /// A ping was answered: the session lives and still holds the lock
    /// (a ping that finds it does not is a `ConnectionLost`).
    PingAnswered,
    /// A connect, lock attempt or ping failed or ran past its deadline, or
    /// the connection ended: the connection is dropped.
    ConnectionLost,
}

/// What the actor does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElectionCommand {
    /// Nothing until the next event.
    Wait,
    /// Open a new connection.
    Connect,
    /// Run `pg_try_advisory_lock` on the connection.
    TryLock,
    /// Run `SELECT 1` on the connection.
    Ping,
}

/// The election's pure state: a role and whether an operation is under
/// way (at most one at a time, so a slow server never piles them up).
///
/// A connection that failed in any way is dropped before anything else
/// (`ConnectionLost` leads to `Reconnecting` from every state), because a
/// lock attempt whose answer was lost may have been granted: only ending
/// the session is sure to release it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Election {
    role: Role,
    awaiting: bool,
}

impl Election {
    pub(crate) fn new() -> Self {
        Self {
            role: Role::Reconnecting,
            awaiting: false,
        }
    }

    pub(crate) fn role(&self) -> Role {
        self.role
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Applies `event`; returns what to do next. An answer that does not
    /// fit the state (an operation of a connection since lost, which the
    /// actor filters out anyway) changes nothing.
    pub(crate) fn on(&mut self, event: ElectionEvent) -> ElectionCommand {
        use ElectionCommand::{Connect, Ping, TryLock, Wait};
        use ElectionEvent as E;
        use Role::{Follower, Leader, Reconnecting};
        match (self.role, event) {
            (_, E::ConnectionLost) => {
                *self = Self::new();
                Wait
            }
            (_, E::Tick) if self.awaiting => Wait,
            (role, E::Tick) => {
                self.awaiting = true;
                match role {
                    Reconnecting => Connect,
                    Follower => TryLock,
                    Leader => Ping,
                }
            }
            (Reconnecting, E::Connected) => {
                // Try at once: a runtime that starts after the maintainer's
                // loss should not wait a whole interval for its first try.
                self.role = Follower;
                self.awaiting = true;
                TryLock
            }
            (Follower, E::LockTaken) => {
                self.role = Leader;
                self.awaiting = false;
                Wait
            }
            (Follower, E::LockHeldElsewhere) | (Leader, E::PingAnswered) => {
                self.awaiting = false;
                Wait
            }
            _ => Wait,
        }
    }
}

/// Stops the maintainer (at shutdown): it drops its connection, which
/// releases the lock at once, and another runtime can take over at its
/// next attempt. Here rather than in `messages`: only the runtime's
/// shutdown sends it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopMaintaining;

/// What the maintainer actor needs.
#[derive(Debug, Clone)]
pub(crate) struct MaintainerSettings {
    /// Where to connect, `application_name` already set.
    pub(crate) connection: ConnectionConfig,
    pub(crate) config: MaintainerConfig,
    pub(crate) retention: Option<RetentionPolicy>,
    pub(crate) schedules: Option<crate::schedule::ScheduleFiring>,
}

/// Runs the election on a dedicated connection, and retention while this
/// process is the maintainer. Never stops on a failure: it reconnects at
/// its next tick.
pub(crate) struct MaintainerActor {
    settings: MaintainerSettings,
    store: Store,
    health: HealthBoard,
    election: Election,
    client: Option<Rc<Client>>,
    /// The connection's message stream, polled by this actor's context;
    /// cancelling it drops the connection.
    connection_stream: Option<SpawnHandle>,
    /// Bumped for every connection, so that the answer of an operation on
    /// a connection since dropped is ignored.
    generation: u64,
    /// Whether this process is the maintainer, read by a retention run
    /// between its batches.
    leading: Arc<AtomicBool>,
    /// A retention run is under way (runs never overlap).
    retention_running: Arc<AtomicBool>,
    /// A run of schedule firings is under way (runs never overlap).
    schedules_running: Arc<AtomicBool>,
    /// Connection losses and failed connects since the last successful
    /// connect: only the first of a series is a warning, so that a
    /// database down for an hour does not log one every `retry_interval`.
    failures_in_a_row: u32,
    shut_down: bool,
}

impl std::fmt::Debug for MaintainerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaintainerActor")
            .field("role", &self.election.role())
            .field("generation", &self.generation)
            .field("retention_running", &self.retention_running)
            .finish()
    }
}

impl MaintainerActor {
    pub(crate) fn new(settings: MaintainerSettings, store: Store, health: HealthBoard) -> Self {
        Self {
            settings,
            store,
            health,
            election: Election::new(),
            client: None,
            connection_stream: None,
            generation: 0,
            leading: Arc::new(AtomicBool::new(false)),
            retention_running: Arc::new(AtomicBool::new(false)),
            schedules_running: Arc::new(AtomicBool::new(false)),
            failures_in_a_row: 0,
            shut_down: false,
        }
    }

    fn apply(&mut self, event: ElectionEvent, ctx: &mut Context<Self>) {
        if self.shut_down {
            return;
        }
        let was_leader = self.election.is_leader();
        let command = self.election.on(event);
        if was_leader != self.election.is_leader() {
            self.leadership_changed();
        }
        match command {
            ElectionCommand::Wait => {}
            ElectionCommand::Connect => self.connect(ctx),
            ElectionCommand::TryLock => self.try_lock(ctx),
            ElectionCommand::Ping => self.ping(ctx),
        }
    }

    fn schedule_tick(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(jittered(self.settings.config.retry_interval), |act, ctx| {
            act.apply(ElectionEvent::Tick, ctx);
            act.schedule_tick(ctx);
        });
    }

    fn leadership_changed(&mut self) {
        let leading = self.election.is_leader();
        self.leading.store(leading, Ordering::Relaxed);
        self.health.set_maintainer(leading);
        if leading {
            tracing::info!(
                lock_key = MAINTAINER_LOCK_KEY,
                "this process is now the maintainer"
            );
            self.run_retention();
            self.fire_schedules();
        } else {
            tracing::warn!("this process is no longer the maintainer (its connection was lost)");
        }
    }

    /// Drops the connection (ending the session releases the lock) and
    /// reports the loss to the election.
    fn lose(&mut self, ctx: &mut Context<Self>, reason: &str) {
        if self.shut_down {
            return;
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        if self.failures_in_a_row == 1 {
            tracing::warn!(
                error = reason,
                server = %self.settings.connection,
                "the maintainer's connection was lost (or could not be opened); retrying every retry_interval"
            );
        } else {
            tracing::debug!(
                error = reason,
                attempt = self.failures_in_a_row,
                "the maintainer's connection failed again"
            );
        }
        self.drop_connection(ctx);
        self.apply(ElectionEvent::ConnectionLost, ctx);
    }

    fn drop_connection(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        self.client = None;
        if let Some(stream) = self.connection_stream.take() {
            ctx.cancel_future(stream);
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.drop_connection(ctx);
        let generation = self.generation;
        let connection = self.settings.connection.clone();
        let timeout = self.settings.config.operation_timeout;
        ctx.spawn(
            async move { tokio::time::timeout(timeout, connection.connect_raw()).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if act.generation != generation {
                        return;
                    }
                    match result {
                        Ok(Ok((client, mut connection))) => {
                            let messages =
                                futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                            act.connection_stream = Some(ctx.add_stream(messages));
                            act.client = Some(Rc::new(client));
                            if act.failures_in_a_row > 0 {
                                tracing::info!(
                                    failed_attempts = act.failures_in_a_row,
                                    "the maintainer's connection is back"
                                );
                                act.failures_in_a_row = 0;
                            }
                            act.apply(ElectionEvent::Connected, ctx);
                        }
                        Ok(Err(err)) => act.lose(ctx, &ErrorChain(&err).to_string()),
                        Err(_) => act.lose(ctx, &format!("connect not done within {timeout:?}")),
                    }
                }),
        );
    }

    /// Runs `sql` (one boolean answer) with `params` on the connection
    /// under the operation deadline, and applies what `answered` makes of
    /// the answer; any failure, or an `Err` from `answered`, is a lost
    /// connection.
    fn ask(
        &mut self,
        ctx: &mut Context<Self>,
        what: &'static str,
        sql: &'static str,
        params: Vec<i64>,
        answered: fn(bool) -> Result<ElectionEvent, &'static str>,
    ) {
        let Some(client) = self.client.clone() else {
            self.lose(ctx, "no connection");
            return;
        };
        let generation = self.generation;
        let timeout = self.settings.config.operation_timeout;
        let query = async move {
            let params: Vec<&(dyn ToSql + Sync)> =
                params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            let row = client.query_one(sql, &params).await?;
            row.try_get::<_, bool>(0)
        };
        ctx.spawn(
            async move { tokio::time::timeout(timeout, query).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if act.generation != generation {
                        return;
                    }
                    match result {
                        Ok(Ok(answer)) => match answered(answer) {
                            Ok(event) => act.apply(event, ctx),
                            Err(reason) => act.lose(ctx, reason),
                        },
                        Ok(Err(err)) => act.lose(ctx, &ErrorChain(&err).to_string()),
                        Err(_) => act.lose(ctx, &format!("{what} not answered within {timeout:?}")),
                    }
                }),
        );
    }

    fn try_lock(&mut self, ctx: &mut Context<Self>) {
        self.ask(
            ctx,
            "the maintainer lock attempt",
            TRY_LOCK,
            vec![LOCK_KEY_HIGH, LOCK_KEY_LOW, MAINTAINER_LOCK_KEY],
            |taken| {
                Ok(if taken {
                    ElectionEvent::LockTaken
                } else {
                    ElectionEvent::LockHeldElsewhere
                })
            },
        );
    }

    fn ping(&mut self, ctx: &mut Context<Self>) {
        self.ask(
            ctx,
            "the maintainer's ping",
            STILL_HOLDING,
            vec![LOCK_KEY_HIGH, LOCK_KEY_LOW],
            |holding| {
                if holding {
                    Ok(ElectionEvent::PingAnswered)
                } else {
                    Err(
                        "the maintainer lock is no longer held by this connection's server \
                         session: a transaction-mode pooler between pgwake and PostgreSQL? \
                         Point listener_url at PostgreSQL itself",
                    )
                }
            },
        );
    }

    /// Spawns one retention run, unless one is under way or this process
    /// is not the maintainer.
    fn run_retention(&self) {
        let Some(policy) = &self.settings.retention else {
            return;
        };
        if !self.election.is_leader() {
            return;
        }
        let passes = policy.passes();
        if passes.is_empty() || self.retention_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let batch_size = policy.batch_size;
        let store = self.store.clone();
        let (leading, running) = (self.leading.clone(), self.retention_running.clone());
        // Detached from the actor's context: stopping the actor must not
        // drop a statement mid-flight (its pooled connection would go back
        // to the pool busy); the run ends by itself after its current
        // batch, once `leading` is false.
        actix::spawn(async move {
            let (removed, error) = remove_expired(&store, &passes, batch_size, &leading).await;
            running.store(false, Ordering::Release);
            if removed > 0 {
                tracing::info!(removed, "retention removed finished executions");
            }
            if let Some(err) = error {
                tracing::warn!(error = %ErrorChain(&err), removed, "retention run failed; the next run retries");
            }
        });
    }
}

impl MaintainerActor {
    /// Spawns one run of schedule firings, unless one is under way or this
    /// process is not the maintainer.
    fn fire_schedules(&self) {
        let Some(firing) = &self.settings.schedules else {
            return;
        };
        if !self.election.is_leader() || self.schedules_running.swap(true, Ordering::AcqRel) {
            return;
        }
        let grace = firing.grace;
        let store = self.store.clone();
        let (leading, running) = (self.leading.clone(), self.schedules_running.clone());
        // Detached, as retention runs are: a firing is one transaction,
        // which must not be dropped mid-flight by the actor stopping.
        actix::spawn(async move {
            let (fired, error) =
                crate::schedule::store::fire_due_schedules(&store, grace, &leading).await;
            running.store(false, Ordering::Release);
            if let Some(err) = error {
                tracing::warn!(error = %ErrorChain(&err), fired, "firing schedules failed; the next tick retries");
            }
        });
    }
}

/// Runs `passes` batch by batch while `leading` holds; returns how many
/// executions were removed and the error that ended the run early, if any.
async fn remove_expired(
    store: &Store,
    passes: &[RetentionPass],
    batch_size: usize,
    leading: &AtomicBool,
) -> (u64, Option<StoreError>) {
    let mut removed = 0;
    for pass in passes {
        loop {
            // Checked before every batch: a process that lost the election
            // must not keep deleting in parallel with the new maintainer.
            if !leading.load(Ordering::Relaxed) {
                return (removed, None);
            }
            match store
                .remove_finished_batch(pass.scope(), pass.older_than, batch_size)
                .await
            {
                Ok(count) => {
                    removed += count;
                    crate::metrics::retention_removed(count);
                    if count < batch_size as u64 {
                        break;
                    }
                }
                Err(err) => return (removed, Some(err)),
            }
        }
    }
    (removed, None)
}

impl Actor for MaintainerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.health.set_maintainer(false);
        self.apply(ElectionEvent::Tick, ctx);
        self.schedule_tick(ctx);
        if let Some(policy) = &self.settings.retention {
            ctx.run_interval(policy.run_every, |act, _| act.run_retention());
        }
        if let Some(firing) = &self.settings.schedules {
            ctx.run_interval(firing.tick, |act, _| act.fire_schedules());
        }
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        self.leading.store(false, Ordering::Relaxed);
        self.health.set_maintainer(false);
        Running::Stop
    }
}

impl StreamHandler<Result<AsyncMessage, tokio_postgres::Error>> for MaintainerActor {
    fn handle(
        &mut self,
        item: Result<AsyncMessage, tokio_postgres::Error>,
        ctx: &mut Context<Self>,
    ) {
        if let Err(err) = item {
            self.lose(ctx, &ErrorChain(&err).to_string());
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // Overridden: the default stops the actor, and this one reconnects.
        self.connection_stream = None;
        self.lose(ctx, "the server closed the connection");
    }
}

impl Handler<StopMaintaining> for MaintainerActor {
    type Result = ();

    fn handle(&mut self, _: StopMaintaining, ctx: &mut Context<Self>) {
        self.drop_connection(ctx);
        self.shut_down = true;
        if self.election.is_leader() {
            tracing::info!("the maintainer stopped; its lock is released");
        }
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ElectionCommand as C;
    use ElectionEvent as E;

    const ROLES: [Role; 3] = [Role::Reconnecting, Role::Follower, Role::Leader];
    const EVENTS: [ElectionEvent; 6] = [
        E::Tick,
        E::Connected,
        E::LockTaken,
        E::LockHeldElsewhere,
        E::PingAnswered,
        E::ConnectionLost,
    ];

    /// The expected (next role, next awaiting, command) for every state and
    /// event: the whole table, written out.
    fn expected(role: Role, awaiting: bool, event: ElectionEvent) -> (Role, bool, ElectionCommand) {
        use Role::{Follower as F, Leader as L, Reconnecting as R};
        match (role, awaiting, event) {
            (_, _, E::ConnectionLost) => (R, false, C::Wait),
            (r, true, E::Tick) => (r, true, C::Wait),
            (R, false, E::Tick) => (R, true, C::Connect),
            (F, false, E::Tick) => (F, true, C::TryLock),
            (L, false, E::Tick) => (L, true, C::Ping),
            (R, _, E::Connected) => (F, true, C::TryLock),
            (F, _, E::LockTaken) => (L, false, C::Wait),
            (F, _, E::LockHeldElsewhere) => (F, false, C::Wait),
            (L, _, E::PingAnswered) => (L, false, C::Wait),
            (r, a, _) => (r, a, C::Wait),
        }
    }

    #[test]
    fn every_state_and_event_follows_the_table() {
        for role in ROLES {
            for awaiting in [false, true] {
                for event in EVENTS {
                    let mut election = Election { role, awaiting };
                    let command = election.on(event);
                    let (next_role, next_awaiting, next_command) = expected(role, awaiting, event);
                    assert_eq!(
                        (election.role, election.awaiting, command),
                        (next_role, next_awaiting, next_command),
                        "from {role:?} (awaiting: {awaiting}) on {event:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn leadership_is_gained_only_by_taking_the_lock_and_lost_only_with_the_connection() {
        for role in ROLES {
            for awaiting in [false, true] {
                for event in EVENTS {
                    let mut election = Election { role, awaiting };
                    election.on(event);
                    if role != Role::Leader && election.is_leader() {
                        assert_eq!((role, event), (Role::Follower, E::LockTaken));
                    }
                    if role == Role::Leader && !election.is_leader() {
                        assert_eq!(event, E::ConnectionLost);
                    }
                }
            }
        }
    }

    #[test]
    fn a_full_cycle_elects_pings_and_falls_back_to_reconnecting() {
        let mut election = Election::new();
        assert_eq!(election.on(E::Tick), C::Connect);
        assert_eq!(election.on(E::Tick), C::Wait, "one operation at a time");
        assert_eq!(election.on(E::Connected), C::TryLock);
        assert_eq!(election.on(E::LockHeldElsewhere), C::Wait);
        assert_eq!(election.role(), Role::Follower);
        assert_eq!(election.on(E::Tick), C::TryLock);
        assert_eq!(election.on(E::LockTaken), C::Wait);
        assert!(election.is_leader());
        assert_eq!(election.on(E::Tick), C::Ping);
        assert_eq!(election.on(E::PingAnswered), C::Wait);
        assert_eq!(election.on(E::Tick), C::Ping);
        assert_eq!(election.on(E::ConnectionLost), C::Wait);
        assert_eq!(election, Election::new());
        assert_eq!(election.on(E::Tick), C::Connect);
    }

    #[test]
    fn the_lock_key_halves_are_what_pg_locks_and_the_docs_show() {
        assert_eq!(LOCK_KEY_HIGH, 1_885_828_961);
        assert_eq!(LOCK_KEY_LOW, 1_801_781_249);
        assert_eq!((LOCK_KEY_HIGH << 32) | LOCK_KEY_LOW, MAINTAINER_LOCK_KEY);
    }

    #[test]
    fn retention_passes_cover_overrides_then_every_other_queue() {
        let minute = Duration::from_secs(60);
        let policy = RetentionPolicy::new()
            .remove_finished_after(60 * minute)
            .remove_queue_after("short", minute)
            .unwrap()
            .keep_queue_forever("audit")
            .unwrap();
        assert_eq!(
            policy.passes(),
            vec![
                RetentionPass {
                    queues: PassQueues::Only("short".into()),
                    workflows: PassWorkflows::AllBut(Vec::new()),
                    older_than: minute
                },
                RetentionPass {
                    queues: PassQueues::AllBut(vec!["audit".into(), "short".into()]),
                    workflows: PassWorkflows::AllBut(Vec::new()),
                    older_than: 60 * minute
                },
            ]
        );
        assert_eq!(policy.age_for("audit"), None);
        assert_eq!(policy.age_for("short"), Some(minute));
        assert_eq!(policy.age_for("orders"), Some(60 * minute));
    }

    #[test]
    fn a_policy_without_a_default_age_removes_only_overridden_queues() {
        let policy = RetentionPolicy::new()
            .remove_queue_after("short", Duration::from_secs(1))
            .unwrap()
            .keep_queue_forever("audit")
            .unwrap();
        assert_eq!(
            policy.passes(),
            vec![RetentionPass {
                queues: PassQueues::Only("short".into()),
                workflows: PassWorkflows::AllBut(Vec::new()),
                older_than: Duration::from_secs(1)
            }]
        );
        assert!(RetentionPolicy::new().passes().is_empty());
    }

    #[test]
    fn a_workflow_override_comes_before_its_queues_age_and_the_others_leave_it_out() {
        let minute = Duration::from_secs(60);
        let policy = RetentionPolicy::new()
            .remove_finished_after(60 * minute)
            .keep_queue_forever("audit")
            .unwrap()
            .remove_queue_after("short", minute)
            .unwrap()
            .remove_workflow_after("newsletter", 2 * minute)
            .keep_workflow_forever("invoice");
        let overridden = vec![
            br#""workflow":"invoice""#.to_vec(),
            br#""workflow":"newsletter""#.to_vec(),
        ];
        assert_eq!(
            policy.passes(),
            vec![
                RetentionPass {
                    queues: PassQueues::AllBut(Vec::new()),
                    workflows: PassWorkflows::Only(br#""workflow":"newsletter""#.to_vec()),
                    older_than: 2 * minute
                },
                RetentionPass {
                    queues: PassQueues::Only("short".into()),
                    workflows: PassWorkflows::AllBut(overridden.clone()),
                    older_than: minute
                },
                RetentionPass {
                    queues: PassQueues::AllBut(vec!["audit".into(), "short".into()]),
                    workflows: PassWorkflows::AllBut(overridden),
                    older_than: 60 * minute
                },
            ]
        );
        assert_eq!(
            policy.age_for_workflow("audit", "newsletter"),
            Some(2 * minute)
        );
        assert_eq!(policy.age_for_workflow("short", "invoice"), None);
        assert_eq!(policy.age_for_workflow("short", "other"), Some(minute));
        assert_eq!(policy.age_for_workflow("audit", "other"), None);
    }

    #[test]
    fn invalid_retention_settings_are_refused_by_name() {
        assert!(RetentionPolicy::new()
            .remove_queue_after("bad queue", Duration::ZERO)
            .is_err());
        let zero = RetentionPolicy::new().run_every(Duration::ZERO);
        assert!(matches!(
            zero.validate(),
            Err(BuildError::Setting {
                name: "retention.run_every",
                ..
            })
        ));
        let config = MaintainerConfig {
            operation_timeout: Duration::ZERO,
            ..MaintainerConfig::default()
        };
        assert!(matches!(
            config.validate(),
            Err(BuildError::Setting {
                name: "maintainer.operation_timeout",
                ..
            })
        ));
    }
}
