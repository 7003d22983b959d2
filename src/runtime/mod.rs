//! The runtime: actix actors that start work the moment it is written.
//!
//! ```text
//!  writers (any process, psql, go-workflows)        pgwake's own writes (Store)
//!        | INSERT                                        | COMMIT (triggers skipped)
//!        v                                               v
//!   PostgreSQL --- pg_notify(channel, queue) ---+    Notifier --- debounced NOTIFY --> other processes
//!        |                                       |       |
//!        |                 ListenerActor (1 per channel, own connection, supervised)
//!        |                                       |       | in-process wake-up, no round trip
//!        |                                       v       v
//!        |                                    QueueRouter  -- TaskAvailable to idle workers of that queue only
//!        |                                           |
//!        |   FOR UPDATE SKIP LOCKED claims           v
//!        +<-------------------------------------- WorkerActors (fallback timer, due-time timer, heartbeats)
//!                     completions (one transaction each)
//! ```
//!
//! A listener actor per channel owns one dedicated connection, runs
//! `LISTEN`, turns each notification (its payload is the queue) into a
//! [`TaskAvailable`](actors::TaskAvailable) for the [`QueueRouter`], and
//! after every successful `LISTEN`, first or after a reconnect, publishes a
//! resync: every worker of its channel polls once, because notifications
//! sent while it was away are gone. Errors, the end of the stream, or an
//! unanswered ping stop it; its supervisor restarts it after a jittered
//! exponential backoff. It counts as listening only once a probe `NOTIFY`,
//! sent from a second connection, comes back on its own: behind a
//! transaction-mode pooler `LISTEN` succeeds but notifications are lost,
//! and it then reports [`ListenerState::NotDelivering`], warns once, and
//! its workers poll as if it were down (see `listener_probe_timeout`).
//!
//! A worker actor polls on start, on every wake-up, after every task it
//! finishes, and when its own timer fires: the earlier of the fallback
//! interval (long while its listener listens, short while it does not) and
//! the next due time of its queues, so a timer fires on time with no
//! notification at all. A database outage makes it back off and retry; it
//! never dies of one.
//!
//! The runtime owns these actors; you describe workers
//! ([`ActivityWorker`], [`WorkflowWorker`], or the workflow layer's
//! registries) and read [`Health`]. To make an actor of your own a worker,
//! see [`actors`].
//!
//! ```no_run
//! use pgwake::{ActivityWorker, Runtime, RuntimeConfig};
//! use std::time::Duration;
//!
//! #[actix_rt::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let runtime = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
//!         .activity_worker(ActivityWorker::new(["emails"], |task: pgwake::ActivityTask| async move {
//!             Ok::<_, String>(serde_json::json!({ "sent": task.input }))
//!         }).concurrency(8))
//!         .start()
//!         .await?;
//!     println!("{:?}", runtime.health());
//!     runtime.shutdown(Duration::from_secs(10)).await;
//!     Ok(())
//! }
//! ```
//!
//! Built with [`RuntimeBuilder::retention`] (or
//! [`RuntimeBuilder::maintainer`]), the runtime also takes part in the
//! election of the database's one maintainer, on a connection of its own,
//! and while elected removes old finished instances: see
//! [`MaintainerConfig`] and [`RetentionPolicy`].
//!
//! ## Guarantees
//! - At-least-once execution: a task whose worker dies is claimed again when
//!   its lease expires; one whose runtime shuts down is released at once.
//! - Exactly-once completion: a result is recorded only under the claim
//!   that produced it (fenced by the lease id the claim wrote, which no
//!   extension changes), so a task run twice is recorded once.
//! - No wedged worker: every store operation has a deadline that discards
//!   its connection, and a row held by another session delays only its own
//!   instance's results.
//! - No lost wake-up: the router offers a wake-up to one worker at a time
//!   and a worker with no free slot declines it, so another takes it or it
//!   is owed to the next worker that reports idle.
//! - Bounded wake-up after loss: a lost listener reconnects with backoff and
//!   resyncs; meanwhile workers poll every `fallback_while_degraded`, as they
//!   do while a listener's notifications are found not to be delivered.

mod backoff;
mod handler;
mod health;
mod listener;
mod maintainer;
mod messages;
mod notifier;
mod record_batch;
mod router;
mod wake;
mod worker;

pub mod actors {
    //! Advanced: your own actix actors as workers.
    //!
    //! [`ActivityWorker`](super::ActivityWorker) and
    //! [`WorkflowWorker`](super::WorkflowWorker) claim, run and complete
    //! tasks for you. Write an actor of your own when the work must live in
    //! one you already have (its state, its supervisor, its mailbox): the
    //! runtime's router wakes it for its queues, and it claims and completes
    //! through the [`Store`](crate::Store) itself. `examples/own_actor.rs`
    //! in the repository is a complete one (`cargo run --example
    //! own_actor`), and `tests/own_actor.rs` runs it.
    //!
    //! This module holds what such an actor exchanges with the runtime, and
    //! nothing else: the runtime's own actors and the messages between them
    //! are internal.
    //!
    //! # The protocol
    //! 1. **Register**: send [`RegisterWorker`] to the [`QueueRouter`] that
    //!    [`RuntimeHandle::router`](super::RuntimeHandle::router) returns:
    //!    the kind, the queues, where wake-ups go, and a [`WakePolicy`]. It
    //!    answers with the registration's id. Do it in `started`, and poll
    //!    once then: work written before the registration woke nobody.
    //! 2. **Receive [`TaskAvailable`]**: work may be waiting on its `queue`
    //!    (`None`: on every queue of yours, a resync after a listener
    //!    reconnected; see [`WakeReason`]). Claim through the store in a
    //!    future spawned on the actor's context, never blocking the mailbox.
    //!    A wake-up that arrives during a claim means "claim again after it".
    //! 3. **Choose a [`WakePolicy`]**: [`Always`](WakePolicy::Always) sends
    //!    you every wake-up for your queues (coalesce them as above).
    //!    [`WhenIdle`](WakePolicy::WhenIdle) wakes you only while you have
    //!    reported [`WorkerIdle`] since your last wake-up (you start busy:
    //!    poll, then report idle when a poll claims nothing and you have
    //!    room); after a claim that filled every free slot, send
    //!    [`MoreWorkLikely`] so that another idle worker of those queues
    //!    polls too.
    //! 4. **Unregister**: send [`UnregisterWorker`] with your id in
    //!    `stopping` (a registration whose actor has stopped is dropped
    //!    anyway).
    //!
    //! No wake-up comes while a listener is down or reconnecting, nor when
    //! delayed work becomes due: poll on a timer too. Register with
    //! `listener_state: Some(..)` to receive [`ListenerStateChanged`] and
    //! poll more often while nothing listens.
    //!
    //! [`Notifier`] and [`QueuesTouched`] are here only because
    //! [`RuntimeHandle::notifier`](super::RuntimeHandle::notifier) returns
    //! the notifier's address; writes through the store already tell it.
    //!
    //! ```
    //! use std::time::Duration;
    //!
    //! use actix::prelude::*;
    //! use pgwake::runtime::actors::{RegisterWorker, TaskAvailable, UnregisterWorker, WakePolicy};
    //! use pgwake::{Queue, RuntimeHandle, StoreError, TaskKind, WorkerId};
    //!
    //! struct Mailer {
    //!     runtime: RuntimeHandle,
    //!     queues: Vec<Queue>,
    //!     worker: WorkerId,
    //!     registration: Option<u64>,
    //! }
    //!
    //! impl Mailer {
    //!     /// Claims and completes a batch, off the mailbox.
    //!     /// (`examples/own_actor.rs` also runs one claim at a time.)
    //!     fn claim(&mut self, ctx: &mut Context<Self>) {
    //!         let store = self.runtime.store().clone();
    //!         let (worker, queues) = (self.worker.clone(), self.queues.clone());
    //!         let work = async move {
    //!             let lease = Duration::from_secs(60);
    //!             for task in store.claim_activity_tasks(&worker, &queues, 16, lease).await? {
    //!                 let result = Ok(serde_json::json!({ "sent": task.input }));
    //!                 store.complete_activity_task(&task, result).await?;
    //!             }
    //!             Ok::<_, StoreError>(())
    //!         };
    //!         ctx.spawn(work.into_actor(self).map(|outcome, _, _| {
    //!             if let Err(err) = outcome {
    //!                 eprintln!("claiming failed, the timer retries: {err}");
    //!             }
    //!         }));
    //!     }
    //! }
    //!
    //! impl Actor for Mailer {
    //!     type Context = Context<Self>;
    //!
    //!     fn started(&mut self, ctx: &mut Context<Self>) {
    //!         let register = RegisterWorker {
    //!             kind: TaskKind::Activity,
    //!             queues: self.queues.clone(),
    //!             recipient: ctx.address().recipient(),
    //!             policy: WakePolicy::Always,
    //!             listener_state: None,
    //!         };
    //!         // `wait`: no wake-up is handled before the registration is.
    //!         let registered = self.runtime.router().send(register).into_actor(self);
    //!         ctx.wait(registered.map(|id, actor, ctx| {
    //!             actor.registration = id.ok();
    //!             actor.claim(ctx); // work written before woke nobody
    //!         }));
    //!         ctx.run_interval(Duration::from_secs(30), |actor, ctx| actor.claim(ctx));
    //!     }
    //!
    //!     fn stopping(&mut self, _: &mut Context<Self>) -> Running {
    //!         if let Some(id) = self.registration.take() {
    //!             self.runtime.router().do_send(UnregisterWorker { id });
    //!         }
    //!         Running::Stop
    //!     }
    //! }
    //!
    //! impl Handler<TaskAvailable> for Mailer {
    //!     type Result = ();
    //!
    //!     fn handle(&mut self, _: TaskAvailable, ctx: &mut Context<Self>) {
    //!         self.claim(ctx);
    //!     }
    //! }
    //!
    //! fn start_mailer(runtime: RuntimeHandle) -> Result<Addr<Mailer>, StoreError> {
    //!     let queues = vec![Queue::new("emails")?];
    //!     let worker = WorkerId::unique("mailer");
    //!     Ok(Mailer { runtime, queues, worker, registration: None }.start())
    //! }
    //! ```

    pub use super::messages::{
        ListenerStateChanged, MoreWorkLikely, QueuesTouched, RegisterWorker, TaskAvailable,
        TaskKind, UnregisterWorker, WakePolicy, WakeReason, WorkerIdle,
    };
    pub use super::notifier::Notifier;
    pub use super::router::QueueRouter;
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use self::listener::ListenerActor;
use self::maintainer::{MaintainerActor, MaintainerSettings, StopMaintaining};
use self::messages::{
    AbandonInFlight, FlushNotifications, InFlightCount, QueuesTouched, StopClaiming, StopListening,
    StopNotifying,
};
use self::notifier::Notifier;
use self::router::QueueRouter;
use self::worker::{EagerTarget, WorkerActor};
pub use handler::{
    ActivityWorker, HandlerError, WorkflowWorker, DEFAULT_ACTIVITY_LEASE, DEFAULT_WORKFLOW_LEASE,
};
pub use health::{Health, ListenerHealth, ListenerState, QueueCounters, WorkerHealth};
pub use maintainer::{
    MaintainerConfig, RetentionPolicy, MAINTAINER_APPLICATION_NAME, MAINTAINER_LOCK_KEY,
};
pub use messages::TaskKind;

use self::backoff::Backoff;
use self::health::HealthBoard;
use self::listener::ListenerSettings;
use self::worker::{Job, WorkerSettings};
use crate::config::RuntimeConfig;
use crate::connection::ConnectionConfig;
use crate::error::{BuildError, RuntimeError};
use crate::store::{build_pool, Store, WakeToken, WorkerId};

/// One step of the shutdown, bounded by [`SHUTDOWN_STEP_TIMEOUT`].
fn bounded_step<F: std::future::Future>(future: F) -> tokio::time::Timeout<F> {
    tokio::time::timeout(SHUTDOWN_STEP_TIMEOUT, future)
}

/// How long a finished activity's result waits for the rest of its batch
/// before it is recorded (and a few freed slots for more before they are
/// claimed). Short next to a transaction's commit, long next to a no-op
/// handler: batches stay whole, and a lone task never waits (it is recorded
/// at once when no other handler runs).
const BATCH_WINDOW: Duration = Duration::from_millis(2);

/// How long a listener's connection must stay up before its reconnect
/// backoff starts over (capped by `reconnect_backoff_max`).
const LISTENER_STABLE_AFTER: Duration = Duration::from_secs(10);

/// The longest shutdown timeout honoured; longer ones are capped to it (an
/// `Instant` far in the future cannot be represented on every platform).
const MAX_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// How long shutdown gives each of its own steps after the drain deadline
/// (releasing leases, flushing the notifier): bounded, so a silent database
/// cannot hold a process that is asked to stop.
const SHUTDOWN_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point: [`Runtime::builder`].
///
/// ```
/// use pgwake::{Runtime, RuntimeConfig};
/// # async fn example() -> Result<(), pgwake::RuntimeError> {
/// let config = RuntimeConfig::new("postgres://postgres@localhost/app");
/// // No workers of its own: listeners, router and notifier, for your actors.
/// let runtime = Runtime::builder(config).start().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Runtime;

impl Runtime {
    /// Starts describing a runtime.
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig};
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .activity_worker(ActivityWorker::new(["emails"], |task: ActivityTask| async move {
    ///         Ok::<_, String>(task.input)
    ///     }));
    /// builder.validate()?;
    /// # Ok::<(), pgwake::BuildError>(())
    /// ```
    pub fn builder(config: RuntimeConfig) -> RuntimeBuilder {
        RuntimeBuilder {
            config,
            activity_workers: Vec::new(),
            workflow_workers: Vec::new(),
            store: None,
            maintainer: None,
            retention: None,
            schedules: None,
        }
    }
}

/// Workers and settings, validated as a whole by [`start`](Self::start).
///
/// ```
/// use pgwake::{ActivityTask, ActivityWorker, BuildError, Runtime, RuntimeConfig};
/// let handler = |t: ActivityTask| async move { Ok::<_, String>(t.input) };
/// let worker = ActivityWorker::new(["emails"], handler);
/// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
///     .activity_worker(worker.clone())
///     .activity_worker(worker.concurrency(0));
/// let err = builder.validate().unwrap_err();
/// assert!(matches!(err, BuildError::Worker { index: 1, kind: "activity", .. }));
/// ```
#[derive(Debug)]
pub struct RuntimeBuilder {
    config: RuntimeConfig,
    activity_workers: Vec<ActivityWorker>,
    workflow_workers: Vec<WorkflowWorker>,
    /// The store [`store`](Self::store) handed out, which the runtime uses.
    store: Option<Store>,
    /// The election's settings, when this runtime takes part in it.
    maintainer: Option<MaintainerConfig>,
    /// What the maintainer removes, when this runtime is elected.
    retention: Option<RetentionPolicy>,
    /// How the maintainer fires schedules, when this runtime is elected.
    schedules: Option<crate::schedule::ScheduleFiring>,
}

impl RuntimeBuilder {
    /// The store the runtime will use, available before it starts: give
    /// clones to handlers that start workflows or enqueue work. Built from
    /// the configuration (its pool connects on first use, so nothing
    /// connects yet) once; later calls return clones of the same store. At
    /// [`start`](Self::start) it and all its clones, made before or after,
    /// get the runtime's commit hook: their writes wake this process's
    /// workers at once and the notifier sends the debounced NOTIFY, as
    /// [`RuntimeHandle::store`]'s do (it is the same store). Writes made
    /// through it before the start, or after the shutdown, are announced by
    /// the database triggers instead.
    ///
    /// ```no_run
    /// use pgwake::workflow::{Activities, ActivityContext, ActivityError, Client, Workflows};
    /// use pgwake::{Runtime, RuntimeConfig};
    /// # async fn example(workflows: Workflows) -> Result<(), pgwake::RuntimeError> {
    /// let mut builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"));
    /// let client = Client::new(builder.store()?);
    /// let activities = Activities::new().register("sign_up", move |_: ActivityContext, email: String| {
    ///     let client = client.clone();
    ///     async move {
    ///         // The same pool as the runtime's, and its wake-ups.
    ///         client.start("welcome", &format!("welcome-{email}"), &email, Default::default()).await
    ///             .map_err(|err| ActivityError::new("start_failed", err.to_string()))?;
    ///         Ok::<_, ActivityError>(())
    ///     }
    /// });
    /// let runtime = builder
    ///     .workflow_worker(workflows.worker(["default"]))
    ///     .activity_worker(activities.worker(["default"]))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RuntimeError::Build`] for a configuration that
    /// [`RuntimeConfig::validate`] refuses.
    pub fn store(&mut self) -> Result<Store, RuntimeError> {
        if let Some(store) = &self.store {
            return Ok(store.clone());
        }
        self.config.validate()?;
        let store = runtime_store(&self.config)?;
        self.store = Some(store.clone());
        Ok(store)
    }

    /// Adds activity workers.
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig};
    /// let handler = |task: ActivityTask| async move { Ok::<_, String>(task.input) };
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .activity_worker(ActivityWorker::new(["emails"], handler).concurrency(32))
    ///     .activity_worker(ActivityWorker::new(["reports"], handler));
    /// assert!(builder.validate().is_ok());
    /// ```
    pub fn activity_worker(mut self, worker: ActivityWorker) -> Self {
        self.activity_workers.push(worker);
        self
    }

    /// Adds workflow workers.
    ///
    /// ```
    /// use pgwake::{Runtime, RuntimeConfig, WorkflowCompletion, WorkflowTask, WorkflowWorker};
    /// let orders = WorkflowWorker::new(["orders"], |_: WorkflowTask| async move {
    ///     Ok::<_, String>(WorkflowCompletion::default())
    /// });
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .workflow_worker(orders.concurrency(4));
    /// assert!(builder.validate().is_ok());
    /// ```
    pub fn workflow_worker(mut self, worker: WorkflowWorker) -> Self {
        self.workflow_workers.push(worker);
        self
    }

    /// Takes part in the election of the database's maintainer (one
    /// process per database, on a connection of its own; see
    /// [`MaintainerConfig`]): [`Health::maintainer`] then says whether this
    /// process is it. [`retention`](Self::retention) implies it, with
    /// [`MaintainerConfig::default`] unless this sets another.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgwake::runtime::MaintainerConfig;
    /// use pgwake::{Runtime, RuntimeConfig};
    /// let mut election = MaintainerConfig::default();
    /// election.retry_interval = Duration::from_secs(5);
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .maintainer(election);
    /// assert!(builder.validate().is_ok());
    /// ```
    pub fn maintainer(mut self, config: MaintainerConfig) -> Self {
        self.maintainer = Some(config);
        self
    }

    /// Removes old finished instances while this process is the
    /// maintainer, as `policy` says; takes part in the election (see
    /// [`maintainer`](Self::maintainer)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgwake::runtime::RetentionPolicy;
    /// use pgwake::{Runtime, RuntimeConfig};
    /// let week = Duration::from_secs(7 * 86_400);
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .retention(RetentionPolicy::new().remove_finished_after(week));
    /// assert!(builder.validate().is_ok());
    /// ```
    pub fn retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = Some(policy);
        self
    }

    /// Fires the database's due [schedules](crate::schedule) while this
    /// process is the maintainer, looking every `firing.tick`; takes part in
    /// the election (see [`maintainer`](Self::maintainer)).
    ///
    /// ```
    /// use pgwake::schedule::ScheduleFiring;
    /// use pgwake::{Runtime, RuntimeConfig};
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .schedules(ScheduleFiring::default());
    /// assert!(builder.validate().is_ok());
    /// ```
    pub fn schedules(mut self, firing: crate::schedule::ScheduleFiring) -> Self {
        self.schedules = Some(firing);
        self
    }

    /// Checks the whole configuration without connecting.
    ///
    /// # Errors
    /// The first problem found, naming the setting or the worker.
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker, BuildError, Runtime, RuntimeConfig};
    /// let handler = |t: ActivityTask| async move { Ok::<_, String>(t.input) };
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
    ///     .activity_worker(ActivityWorker::new(["bad queue"], handler));
    /// assert!(matches!(builder.validate(), Err(BuildError::Worker { index: 0, .. })));
    /// ```
    pub fn validate(&self) -> Result<(), BuildError> {
        self.config.validate()?;
        for (index, w) in self.activity_workers.iter().enumerate() {
            handler::validate_worker(index, "activity", &w.queues, w.concurrency, w.lease)?;
        }
        for (index, w) in self.workflow_workers.iter().enumerate() {
            handler::validate_worker(index, "workflow", &w.queues, w.concurrency, w.lease)?;
        }
        if let Some(maintainer) = &self.maintainer {
            maintainer.validate()?;
        }
        if let Some(retention) = &self.retention {
            retention.validate()?;
        }
        if let Some(firing) = &self.schedules {
            firing.validate()?;
        }
        Ok(())
    }

    /// Validates, then starts the router, notifier, listeners and workers in
    /// the current actix `System`.
    ///
    /// An unreachable database does not fail the start: listeners and
    /// workers keep retrying with backoff and [`RuntimeHandle::health`] says
    /// so. A reachable database whose schema is missing or out of date does.
    ///
    /// # Errors
    /// [`RuntimeError::Build`] before anything connects;
    /// [`RuntimeError::Store`] for an unusable schema.
    ///
    /// ```
    /// use pgwake::RuntimeError;
    /// # async fn example(builder: pgwake::RuntimeBuilder) {
    /// match builder.start().await {
    ///     Ok(runtime) => println!("{:?}", runtime.health()),
    ///     Err(RuntimeError::Build(err)) => eprintln!("bad configuration: {err}"),
    ///     Err(err) => eprintln!("database not usable: {err}"),
    /// }
    /// # }
    /// ```
    pub async fn start(self) -> Result<RuntimeHandle, RuntimeError> {
        self.validate()?;
        let config = self.config;
        let health = HealthBoard::default();
        let notifications_sent = Arc::new(AtomicU64::new(0));
        let database =
            ConnectionConfig::from_url(&config.database_url).map_err(BuildError::from)?;
        let listener_connection = match &config.listener_url {
            Some(url) => ConnectionConfig::from_url(url).map_err(BuildError::from)?,
            None => database.clone(),
        };
        let channels: HashMap<TaskKind, String> = [TaskKind::Workflow, TaskKind::Activity]
            .into_iter()
            .map(|kind| (kind, config.channel(kind)))
            .collect();

        let router = QueueRouter::new(health.clone()).start();
        let notifier = Notifier::new(
            router.clone(),
            config
                .notifications
                .then(|| database.with_application_name("pgwake-notifier")),
            channels.clone(),
            config.notify_debounce,
            config.store.operation_timeout,
            notifications_sent.clone(),
        )
        .start();

        let store = match self.store {
            Some(store) => store,
            None => runtime_store(&config)?,
        };
        match store.check_schema().await {
            Ok(()) => {}
            // Wrong credentials, a missing database, an unusable schema:
            // retrying cannot help, so say so now.
            Err(err) if !err.is_transient() => return Err(err.into()),
            Err(err) => {
                tracing::warn!(error = %err, "database not reachable yet; workers will keep retrying")
            }
        }
        // Only once the start cannot fail, so that a store handed out by
        // `store()` never defers to a runtime that did not start. Shared
        // with every clone, those handed to handlers before included.
        let hook_target = notifier.clone();
        store.attach_commit_hook(Arc::new(move |touched| {
            hook_target.do_send(QueuesTouched {
                workflow: touched.workflow,
                activity: touched.activity,
                at: Some(Instant::now()),
            });
        }));

        let backoff = Backoff::new(config.reconnect_backoff_min, config.reconnect_backoff_max);
        let mut listeners = Vec::new();
        if config.notifications {
            for (kind, channel) in &channels {
                // Reported from now on, before the actor's first start.
                health.set_listener(*kind, channel, ListenerState::Connecting);
                let settings = ListenerSettings {
                    kind: *kind,
                    channel: channel.clone(),
                    connection: listener_connection
                        .with_application_name(&format!("pgwake-listener:{channel}")),
                    ping_after: config.listener_ping_after,
                    ping_timeout: config.listener_ping_timeout,
                    probe_timeout: config.listener_probe_timeout,
                    backoff,
                    stable_after: LISTENER_STABLE_AFTER.min(config.reconnect_backoff_max),
                };
                let (router, health) = (router.clone(), health.clone());
                listeners.push(Supervisor::start(move |_| {
                    ListenerActor::new(settings, router, health)
                }));
            }
        } else {
            for (kind, channel) in &channels {
                health.set_listener(*kind, channel, ListenerState::Disabled);
            }
        }

        let worker_settings =
            |kind: TaskKind, index: usize, queues, concurrency, lease| WorkerSettings {
                kind,
                worker_id: WorkerId::unique(&format!(
                    "pgwake-{}{index}",
                    kind.base_channel().split('_').next().unwrap_or("w")
                )),
                queues,
                concurrency,
                lease,
                notifications: config.notifications,
                fallback_while_listening: config.fallback_while_listening,
                fallback_while_degraded: config.fallback_while_degraded,
                error_backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
                locked_backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(2)),
                stuck_after: config.store.operation_timeout * 2,
                batch_window: BATCH_WINDOW,
            };
        // Each kind hands tasks over to the other (eager dispatch), so every
        // worker's context, and with it its address, exists before any starts.
        let mut activity = Vec::new();
        for (index, w) in self.activity_workers.into_iter().enumerate() {
            let queues =
                handler::validate_worker(index, "activity", &w.queues, w.concurrency, w.lease)?;
            let settings =
                worker_settings(TaskKind::Activity, index, queues, w.concurrency, w.lease);
            activity.push((settings, Job::Activity(w.handler), Context::new()));
        }
        let mut workflow = Vec::new();
        for (index, w) in self.workflow_workers.into_iter().enumerate() {
            let queues =
                handler::validate_worker(index, "workflow", &w.queues, w.concurrency, w.lease)?;
            let settings =
                worker_settings(TaskKind::Workflow, index, queues, w.concurrency, w.lease);
            workflow.push((settings, Job::Workflow(w.handler), Context::new()));
        }
        let targets = |workers: &[(WorkerSettings, Job, Context<WorkerActor>)]| {
            if !config.eager_dispatch {
                return Vec::new();
            }
            workers
                .iter()
                .map(|(settings, _, context)| EagerTarget {
                    worker_id: settings.worker_id.clone(),
                    queues: settings.queues.clone(),
                    lease: settings.lease,
                    addr: context.address(),
                })
                .collect::<Vec<_>>()
        };
        let (to_activity_workers, to_workflow_workers) = (targets(&activity), targets(&workflow));
        let mut workers = Vec::new();
        let handing_over = activity
            .into_iter()
            .map(|worker| (worker, &to_workflow_workers))
            .chain(
                workflow
                    .into_iter()
                    .map(|worker| (worker, &to_activity_workers)),
            );
        for ((settings, job, context), targets) in handing_over {
            let actor =
                WorkerActor::new(settings, job, store.clone(), router.clone(), health.clone())
                    .handing_over_to(targets.clone());
            workers.push(context.run(actor));
        }
        let elects =
            self.maintainer.is_some() || self.retention.is_some() || self.schedules.is_some();
        let maintainer = elects.then(|| {
            let settings = MaintainerSettings {
                // The listeners' server: PostgreSQL itself, where a
                // session-level lock lives as long as the session.
                connection: listener_connection.with_application_name(&format!(
                    "{MAINTAINER_APPLICATION_NAME}:{}",
                    std::process::id()
                )),
                config: self.maintainer.unwrap_or_default(),
                retention: self.retention,
                schedules: self.schedules,
            };
            MaintainerActor::new(settings, store.clone(), health.clone()).start()
        });
        tracing::info!(
            workers = workers.len(),
            notifications = config.notifications,
            maintainer = maintainer.is_some(),
            "pgwake runtime started"
        );
        Ok(RuntimeHandle {
            store,
            router,
            notifier,
            listeners,
            workers,
            maintainer,
            health,
            notifications_sent,
        })
    }
}

/// The runtime's store for `config`, on a pool of its own; no commit hook
/// yet.
fn runtime_store(config: &RuntimeConfig) -> Result<Store, RuntimeError> {
    let database = ConnectionConfig::from_url(&config.database_url).map_err(BuildError::from)?;
    let pool = build_pool(
        &database.with_application_name("pgwake-worker"),
        &config.store,
    )?;
    Ok(Store::new(pool, config.store.clone()))
}

/// A running runtime: its store (writes through it wake this process's
/// workers at once), its router (for your own actors), health, shutdown.
///
/// Clones share the same actors and pool:
///
/// ```
/// use std::time::Duration;
/// # async fn example(builder: pgwake::RuntimeBuilder) -> Result<(), pgwake::RuntimeError> {
/// let runtime: pgwake::RuntimeHandle = builder.start().await?;
/// let for_http = runtime.clone();
/// actix_rt::spawn(async move { println!("{:?}", for_http.health()) });
/// runtime.shutdown(Duration::from_secs(10)).await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RuntimeHandle {
    store: Store,
    router: Addr<QueueRouter>,
    notifier: Addr<Notifier>,
    listeners: Vec<Addr<ListenerActor>>,
    workers: Vec<Addr<WorkerActor>>,
    maintainer: Option<Addr<MaintainerActor>>,
    health: HealthBoard,
    notifications_sent: Arc<AtomicU64>,
}

/// What [`RuntimeHandle::shutdown`] did.
///
/// ```
/// # async fn example(runtime: pgwake::RuntimeHandle) {
/// let report = runtime.shutdown(std::time::Duration::from_secs(10)).await;
/// if !report.drained {
///     eprintln!("{} unfinished tasks released to other workers", report.released_leases);
/// }
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Tasks still running at the deadline whose leases were given back.
    pub released_leases: usize,
    /// Whether every handler finished before the deadline.
    pub drained: bool,
}

impl RuntimeHandle {
    /// The store, with the commit hook that wakes this process's workers and
    /// notifies the others.
    ///
    /// ```
    /// use pgwake::{NewInstance, Queue};
    /// # async fn example(runtime: pgwake::RuntimeHandle) -> Result<(), pgwake::StoreError> {
    /// // Once committed, this process's `orders` workers are woken at once.
    /// let new = NewInstance::new("order-7", Queue::new("orders")?);
    /// let execution = runtime.store().create_instance(new).await?;
    /// # Ok(()) }
    /// ```
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wakes the work of a write made in your own transaction
    /// ([`Store::create_instance_in`] and the other `*_in` methods), once
    /// that transaction has committed: this process's workers of its
    /// queues at once, and one debounced NOTIFY for other processes. See
    /// [`WakeToken`] for a token dropped or used before the commit.
    ///
    /// ```no_run
    /// use pgwake::{NewInstance, Queue};
    /// # async fn example(runtime: pgwake::RuntimeHandle, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO orders (id) VALUES ($1)", &[&7_i64]).await?;
    /// let new = NewInstance::new("order-7", Queue::new("orders")?);
    /// let (_, token) = runtime.store().create_instance_in(&tx, new).await?;
    /// tx.commit().await?;
    /// runtime.wake(token);
    /// # Ok(()) }
    /// ```
    pub fn wake(&self, token: WakeToken) {
        self.store.wake(token);
    }

    /// The router: register your own actors for queues with
    /// [`RegisterWorker`](actors::RegisterWorker) (see [`actors`]).
    ///
    /// ```
    /// # use actix::prelude::*;
    /// use pgwake::runtime::actors::{RegisterWorker, TaskAvailable, WakePolicy};
    /// # struct Mailer;
    /// # impl Actor for Mailer { type Context = Context<Self>; }
    /// # impl Handler<TaskAvailable> for Mailer {
    /// #     type Result = ();
    /// #     fn handle(&mut self, _: TaskAvailable, _: &mut Context<Self>) {}
    /// # }
    /// # async fn example(runtime: pgwake::RuntimeHandle, mailer: Addr<Mailer>) -> Result<(), Box<dyn std::error::Error>> {
    /// let id: u64 = runtime.router().send(RegisterWorker {
    ///     kind: pgwake::TaskKind::Activity, queues: pgwake::queues(["emails"])?,
    ///     recipient: mailer.recipient(), policy: WakePolicy::Always, listener_state: None,
    /// }).await?;
    /// # Ok(()) }
    /// ```
    pub fn router(&self) -> &Addr<QueueRouter> {
        &self.router
    }

    /// The notifier (what the store's commit hook talks to): a
    /// [`QueuesTouched`] sent to it wakes this process's workers of those
    /// queues and sends one debounced NOTIFY per queue for the others.
    /// Writes through [`store`](Self::store), and [`wake`](Self::wake),
    /// already send it.
    ///
    /// ```
    /// use pgwake::{runtime::actors::QueuesTouched, Queue};
    /// # fn example(runtime: pgwake::RuntimeHandle) -> Result<(), pgwake::StoreError> {
    /// let touched = QueuesTouched { activity: vec![Queue::new("emails")?], ..Default::default() };
    /// runtime.notifier().do_send(touched);
    /// # Ok(()) }
    /// ```
    pub fn notifier(&self) -> &Addr<Notifier> {
        &self.notifier
    }

    /// Listener states and per-queue counters.
    ///
    /// ```
    /// # fn example(runtime: pgwake::RuntimeHandle) {
    /// let health = runtime.health();
    /// if !health.all_listening() {
    ///     eprintln!("degraded, polling: {:?}", health.listeners);
    /// }
    /// # }
    /// ```
    pub fn health(&self) -> Health {
        self.health.snapshot()
    }

    /// NOTIFYs this process's notifier has sent (one per queue per send).
    ///
    /// ```
    /// # fn example(runtime: pgwake::RuntimeHandle) {
    /// println!("{} NOTIFYs sent so far", runtime.notifications_sent());
    /// # }
    /// ```
    pub fn notifications_sent(&self) -> u64 {
        self.notifications_sent.load(Ordering::Relaxed)
    }

    /// Stops claiming, lets running handlers finish until `timeout`, then
    /// releases the leases of those still running (another worker can
    /// claim them at once instead of waiting for expiry) and stops the
    /// actors.
    ///
    /// ```
    /// # async fn example(runtime: pgwake::RuntimeHandle) -> std::io::Result<()> {
    /// tokio::signal::ctrl_c().await?;
    /// let report = runtime.shutdown(std::time::Duration::from_secs(30)).await;
    /// println!("drained: {}, leases released: {}", report.drained, report.released_leases);
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(&self, timeout: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + timeout.min(MAX_SHUTDOWN_TIMEOUT);
        // Every step is bounded: a mailbox that does not answer (a worker
        // stuck in a CPU-bound handler) must not hold the shutdown.
        for worker in &self.workers {
            let _ = bounded_step(worker.send(StopClaiming)).await;
        }
        // First of all: ending its session releases the maintainer lock, so
        // another process can take over while this one drains.
        if let Some(maintainer) = &self.maintainer {
            let _ = bounded_step(maintainer.send(StopMaintaining)).await;
        }
        let drained = loop {
            let mut running = 0;
            for worker in &self.workers {
                running += match bounded_step(worker.send(InFlightCount)).await {
                    Ok(Ok(count)) => count,
                    Ok(Err(_)) => 0,
                    Err(_) => 1,
                };
            }
            if running == 0 {
                break true;
            }
            if tokio::time::Instant::now() >= deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let mut released_leases = 0;
        for worker in &self.workers {
            // Releases are store operations, each under the store's deadline.
            let release = tokio::time::timeout(
                self.store.options().operation_timeout + SHUTDOWN_STEP_TIMEOUT,
                worker.send(AbandonInFlight),
            );
            if let Ok(Ok(released)) = release.await {
                released_leases += released;
            }
        }
        for listener in &self.listeners {
            let _ = bounded_step(listener.send(StopListening)).await;
        }
        // From here on, writes through the store announce themselves through
        // the triggers; then what the notifier still owes is sent.
        self.store.stop_deferring_notifications();
        let flushed = self.flush_notifier().await;
        self.notifier.do_send(StopNotifying);
        tracing::info!(released_leases, drained, flushed, "pgwake runtime stopped");
        ShutdownReport {
            released_leases,
            drained,
        }
    }

    /// Sends every NOTIFY the notifier owes, within [`SHUTDOWN_STEP_TIMEOUT`];
    /// whether all were sent.
    async fn flush_notifier(&self) -> bool {
        let deadline = tokio::time::Instant::now() + SHUTDOWN_STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.notifier.send(FlushNotifications)).await {
                Ok(Ok(0)) => return true,
                Ok(Ok(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => return false,
            }
        }
    }
}
