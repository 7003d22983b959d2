//! Starting, signalling, cancelling and awaiting workflows from outside.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::{stored_text, ClientError, WorkflowError};
use super::retry::Attempt;
use crate::store::{
    CancelOutcome, EventType, InstanceRef, InstanceSnapshot, InstanceState, NewInstance, Queue,
    Store, WakeToken,
};

/// How to start a workflow ([`Client::start`]).
///
/// ```
/// use pgwake::workflow::StartOptions;
/// let options = StartOptions::default().queue(pgwake::Queue::new("orders")?);
/// assert_eq!(options.queue.as_str(), "orders");
/// assert_eq!(StartOptions::default().queue.as_str(), "default");
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StartOptions {
    /// The queue its workflow tasks go to.
    pub queue: Queue,
}

impl StartOptions {
    /// Runs its workflow tasks on `queue` (`"default"` otherwise).
    ///
    /// ```
    /// let options = pgwake::workflow::StartOptions::default().queue(pgwake::Queue::new("orders")?);
    /// assert_eq!(options.queue.as_str(), "orders");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = queue;
        self
    }
}

/// The first and the longest pause between two reads of
/// [`Client::result`].
const RESULT_POLL_FIRST: Duration = Duration::from_millis(10);
const RESULT_POLL_MAX: Duration = Duration::from_millis(500);

/// Starts workflows and reads their results, through a [`Store`].
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::workflow::ClientError> {
/// use pgwake::workflow::{Client, StartOptions};
/// let client = Client::new(store);
/// client.start("greet", "greet-1", &"ada", StartOptions::default()).await?;
/// let greeting: String = client.result("greet-1", std::time::Duration::from_secs(30)).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    store: Store,
}

/// What [`Client::describe`] tells of an instance.
///
/// ```no_run
/// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
/// if let Some(about) = client.describe("greet-1").await? {
///     println!("{:?} {:?}: {} events, {} pending", about.workflow, about.state, about.history_events, about.pending_events);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Description {
    /// The execution (the active one, else the newest).
    pub instance: InstanceRef,
    /// The workflow's name, from the metadata.
    pub workflow: Option<String>,
    /// Its queue.
    pub queue: Queue,
    /// Its state.
    pub state: InstanceState,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it finished.
    pub completed_at: Option<SystemTime>,
    /// How many events its history holds.
    pub history_events: usize,
    /// How many events wait to be processed.
    pub pending_events: usize,
    /// How it ended: `{"result"}`, `{"error"}` or `{"canceled": true}`.
    pub outcome: Option<Value>,
    /// How many of its workflow tasks have failed in a row (a panic, a
    /// history the code does not replay) since the last one that completed;
    /// 0 when all is well. Each failure puts the next attempt off: 1 s after
    /// the first, doubling up to 5 min.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// if let Some(about) = client.describe("greet-1").await? {
    ///     if about.task_attempts > 0 {
    ///         eprintln!("stuck after {} attempts: {:?}", about.task_attempts, about.last_task_error);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub task_attempts: u32,
    /// Why its last workflow task failed, while
    /// [`task_attempts`](Self::task_attempts) is above 0 (at most 8 KiB of
    /// it); `None` once a task completes.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// let about = client.describe("greet-1").await?.expect("started before");
    /// if let Some(error) = &about.last_task_error {
    ///     assert!(about.task_attempts > 0);
    ///     eprintln!("its workflow task fails: {error}");
    /// }
    /// # Ok(()) }
    /// ```
    pub last_task_error: Option<String>,
    /// The activities scheduled and not answered yet, oldest first.
    pub pending_activities: Vec<PendingActivity>,
    /// The timers started and not fired or canceled yet, oldest first.
    pub pending_timers: Vec<PendingTimer>,
}

/// An activity a workflow waits for, from [`Client::describe`].
///
/// ```no_run
/// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
/// let about = client.describe("order-7").await?.expect("started before");
/// for activity in &about.pending_activities {
///     println!("waiting for {} (attempt {}) on {}", activity.name, activity.attempt, activity.queue);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PendingActivity {
    /// The activity's name.
    pub name: String,
    /// Which attempt it is (1 unless a retry policy retried it).
    pub attempt: u32,
    /// The queue it runs on.
    pub queue: String,
    /// When it was scheduled.
    pub scheduled_at: SystemTime,
}

/// A timer a workflow waits for, from [`Client::describe`].
///
/// ```no_run
/// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
/// let about = client.describe("order-7").await?.expect("started before");
/// if let Some(timer) = about.pending_timers.first() {
///     println!("next timer fires at {:?}", timer.fires_at);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PendingTimer {
    /// When it was started.
    pub started_at: SystemTime,
    /// When it fires (database clock), if its firing is still pending.
    pub fires_at: Option<SystemTime>,
}

impl Client {
    /// A client writing and reading through `store` (a runtime's store
    /// wakes that runtime's workers at once).
    ///
    /// ```no_run
    /// # fn f(runtime: pgwake::RuntimeHandle) {
    /// let client = pgwake::workflow::Client::new(runtime.store().clone());
    /// # }
    /// ```
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// A standalone client for the database at `url` (its own pool, with
    /// default [`StoreOptions`](crate::StoreOptions)), for a process that
    /// starts and awaits workflows without running workers. Its writes wake
    /// the workers of other processes through the insert triggers' NOTIFY;
    /// [`result`](Self::result) polls with backoff.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), pgwake::workflow::ClientError> {
    /// let client = pgwake::workflow::Client::connect("postgres://app@db.internal/app").await?;
    /// client.start("greet", "greet-1", &"ada", Default::default()).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A bad URL, an unreachable server, a schema that is not migrated.
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Ok(Self::new(
            Store::connect(url, crate::StoreOptions::default()).await?,
        ))
    }

    /// Starts the workflow `workflow` as `instance_id` with `input`.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// let started = client.start("greet", "greet-1", &"ada", Default::default()).await?;
    /// println!("execution {}", started.execution_id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An input that does not serialize, an active execution of that id
    /// ([`StoreError::AlreadyExists`](crate::StoreError::AlreadyExists)), a
    /// store failure.
    pub async fn start<I: Serialize>(
        &self,
        workflow: &str,
        instance_id: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<InstanceRef, ClientError> {
        let new = new_instance(workflow, instance_id, input, options)?;
        Ok(self.store.create_instance(new).await?)
    }

    /// [`start`](Self::start) in the caller's transaction `tx`: the
    /// workflow starts if and only if `tx` commits. After the commit,
    /// [`wake`](Self::wake) the returned token to run it at once; a token
    /// dropped instead only costs the round trip of the NOTIFY that the
    /// commit sends (see [`WakeToken`]).
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut connection = pool.get().await?;
    /// let tx = connection.transaction().await?;
    /// tx.execute("INSERT INTO signups (email) VALUES ($1)", &[&"ada@example.com"]).await?;
    /// let (started, token) = client
    ///     .start_in(&tx, "signup", "signup-7", &"ada@example.com", Default::default())
    ///     .await?;
    /// tx.commit().await?;
    /// client.wake(token);
    /// println!("execution {}", started.execution_id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`start`](Self::start); see
    /// [`Store::create_instance_in`] for what is left of `tx` after each.
    pub async fn start_in<I: Serialize>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        workflow: &str,
        instance_id: &str,
        input: &I,
        options: StartOptions,
    ) -> Result<(InstanceRef, WakeToken), ClientError> {
        let new = new_instance(workflow, instance_id, input, options)?;
        Ok(self.store.create_instance_in(tx, new).await?)
    }

    /// Sends the signal `name` with `value` to the active execution of
    /// `instance_id`.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// client.signal("signup-7", "confirmed", &true).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// No active execution ([`StoreError::NotFound`](crate::StoreError::NotFound)),
    /// a value that does not serialize, a store failure.
    pub async fn signal<T: Serialize>(
        &self,
        instance_id: &str,
        name: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        Ok(self
            .store
            .signal_instance(instance_id, name, signal_payload(value)?)
            .await?)
    }

    /// [`signal`](Self::signal) in the caller's transaction `tx`: the
    /// signal is sent if and only if `tx` commits. After the commit,
    /// [`wake`](Self::wake) the returned token (see [`WakeToken`]).
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut connection = pool.get().await?;
    /// let tx = connection.transaction().await?;
    /// tx.execute("UPDATE signups SET confirmed = true WHERE id = $1", &[&7_i64]).await?;
    /// let token = client.signal_in(&tx, "signup-7", "confirmed", &true).await?;
    /// tx.commit().await?;
    /// client.wake(token);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`signal`](Self::signal); see [`Store::signal_instance_in`] for
    /// what is left of `tx` after each.
    pub async fn signal_in<T: Serialize>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        instance_id: &str,
        name: &str,
        value: &T,
    ) -> Result<WakeToken, ClientError> {
        Ok(self
            .store
            .signal_instance_in(tx, instance_id, name, signal_payload(value)?)
            .await?)
    }

    /// Asks the active execution of `instance_id` to cancel: it finishes
    /// as canceled at its next workflow task.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// client.cancel("signup-7").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An instance that never existed, a store failure.
    pub async fn cancel(&self, instance_id: &str) -> Result<CancelOutcome, ClientError> {
        Ok(self.store.cancel_instance(instance_id).await?)
    }

    /// [`cancel`](Self::cancel) in the caller's transaction `tx`: the
    /// cancel is requested if and only if `tx` commits. After the commit,
    /// [`wake`](Self::wake) the returned token (see [`WakeToken`]).
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut connection = pool.get().await?;
    /// let tx = connection.transaction().await?;
    /// tx.execute("DELETE FROM signups WHERE id = $1", &[&7_i64]).await?;
    /// let (outcome, token) = client.cancel_in(&tx, "signup-7").await?;
    /// tx.commit().await?;
    /// client.wake(token);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`cancel`](Self::cancel); see [`Store::cancel_instance_in`] for
    /// what is left of `tx` after each.
    pub async fn cancel_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        instance_id: &str,
    ) -> Result<(CancelOutcome, WakeToken), ClientError> {
        Ok(self.store.cancel_instance_in(tx, instance_id).await?)
    }

    /// Wakes the work of a `*_in` write once its transaction has
    /// committed: [`Store::wake`] on this client's store (a runtime's store
    /// wakes that runtime's workers at once and sends its debounced NOTIFY;
    /// any other has nothing to do, the commit's NOTIFY announced it).
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client, mut connection: deadpool_postgres::Object) -> Result<(), Box<dyn std::error::Error>> {
    /// let tx = connection.transaction().await?;
    /// let (_, token) = client.start_in(&tx, "greet", "greet-1", &"ada", Default::default()).await?;
    /// tx.commit().await?;
    /// client.wake(token); // after the commit: before it, workers would find nothing yet
    /// # Ok(()) }
    /// ```
    pub fn wake(&self, token: WakeToken) {
        self.store.wake(token);
    }

    /// Waits up to `timeout` for `instance_id` to finish, and returns its
    /// result (its last execution's, when it continued as new). Woken by
    /// the commit when the end is recorded through this client's store or
    /// a clone of it (the runtime's, for a client from
    /// [`RuntimeHandle::store`](crate::RuntimeHandle::store)), without
    /// polling; for an end recorded elsewhere (another process), it reads
    /// the instance with a backoff of 10 ms doubling to 500 ms.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// use pgwake::workflow::ClientError;
    /// match client.result::<String>("greet-1", std::time::Duration::from_secs(30)).await {
    ///     Ok(greeting) => println!("{greeting}"),
    ///     Err(ClientError::Failed(err)) if err.kind() == "declined" => println!("declined"),
    ///     Err(err) => return Err(err),
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClientError::Failed`] with the workflow's typed error,
    /// [`ClientError::Canceled`], [`ClientError::Timeout`],
    /// [`ClientError::NotFound`], a result that does not deserialize.
    pub async fn result<O: DeserializeOwned>(
        &self,
        instance_id: &str,
        timeout: Duration,
    ) -> Result<O, ClientError> {
        let started = Instant::now();
        let mut pause = RESULT_POLL_FIRST;
        let ends = self.store.subscribe_to_end(instance_id);
        loop {
            // Registered before the read: an end committed meanwhile wakes it.
            let next_end = ends.next_end();
            let snapshot = self.store.instance(instance_id).await?;
            let Some(snapshot) = snapshot else {
                return Err(ClientError::NotFound {
                    instance_id: instance_id.to_string(),
                });
            };
            if snapshot.state == InstanceState::Finished {
                return match outcome(&snapshot) {
                    Some(outcome) if outcome.get("result").is_some() => {
                        O::deserialize(&outcome["result"]).map_err(|source| ClientError::Serde {
                            what: "the workflow's result",
                            source,
                        })
                    }
                    Some(outcome) if outcome.get("error").is_some() => {
                        let stored = stored_text(&outcome["error"]);
                        Err(ClientError::Failed(WorkflowError::from_stored(&stored)))
                    }
                    _ => Err(ClientError::Canceled {
                        instance_id: instance_id.to_string(),
                    }),
                };
            }
            let waited = started.elapsed();
            if waited >= timeout {
                return Err(ClientError::Timeout {
                    instance_id: instance_id.to_string(),
                    waited,
                });
            }
            tokio::select! {
                _ = next_end => {}
                _ = tokio::time::sleep(pause.min(timeout - waited)) => {
                    pause = (pause * 2).min(RESULT_POLL_MAX);
                }
            }
        }
    }

    /// What is known of `instance_id`'s newest execution; `None` if it
    /// never existed.
    ///
    /// ```no_run
    /// # async fn f(client: pgwake::workflow::Client) -> Result<(), pgwake::workflow::ClientError> {
    /// let about = client.describe("greet-1").await?.expect("started before");
    /// println!("{:?}", about.state);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A store failure.
    pub async fn describe(&self, instance_id: &str) -> Result<Option<Description>, ClientError> {
        let Some(snapshot) = self.store.instance(instance_id).await? else {
            return Ok(None);
        };
        let (pending_activities, pending_timers) =
            (pending_activities(&snapshot), pending_timers(&snapshot));
        Ok(Some(Description {
            pending_activities,
            pending_timers,
            workflow: snapshot
                .metadata
                .as_ref()
                .and_then(|m| m.get("workflow"))
                .and_then(Value::as_str)
                .map(str::to_string),
            outcome: outcome(&snapshot).cloned(),
            history_events: snapshot.history.len(),
            pending_events: snapshot.pending.len(),
            queue: snapshot.queue,
            state: snapshot.state,
            created_at: snapshot.created_at,
            completed_at: snapshot.completed_at,
            task_attempts: snapshot.task_attempts,
            last_task_error: snapshot.last_task_error,
            instance: snapshot.instance,
        }))
    }
}

/// What [`Client::start`] and [`Client::start_in`] create.
fn new_instance<I: Serialize>(
    workflow: &str,
    instance_id: &str,
    input: &I,
    options: StartOptions,
) -> Result<NewInstance, ClientError> {
    let input = serde_json::to_value(input).map_err(|source| ClientError::Serde {
        what: "the workflow's input",
        source,
    })?;
    // The caller's trace context rides in the metadata so that the
    // workflow's spans join the caller's trace (crate::trace_context).
    let mut metadata = json!({ "workflow": workflow });
    crate::trace_context::inject_current(&mut metadata);
    Ok(NewInstance::new(instance_id, options.queue)
        .with_input(input)
        .with_metadata(metadata))
}

/// A signal's value as JSON.
fn signal_payload<T: Serialize>(value: &T) -> Result<Value, ClientError> {
    serde_json::to_value(value).map_err(|source| ClientError::Serde {
        what: "the signal's value",
        source,
    })
}

/// The sequence ids of the scheduling events answered by an event of
/// `answers`, in the history or pending.
fn answered(snapshot: &InstanceSnapshot, answers: &[EventType]) -> HashSet<i64> {
    snapshot
        .history
        .iter()
        .chain(&snapshot.pending)
        .filter(|e| answers.contains(&e.event_type))
        .map(|e| e.schedule_event_id)
        .collect()
}

fn pending_activities(snapshot: &InstanceSnapshot) -> Vec<PendingActivity> {
    if snapshot.state != InstanceState::Active {
        return Vec::new();
    }
    let done = answered(
        snapshot,
        &[EventType::ActivityCompleted, EventType::ActivityFailed],
    );
    snapshot
        .history
        .iter()
        .filter(|e| e.event_type == EventType::ActivityScheduled && !done.contains(&e.sequence_id))
        .map(|e| {
            let attempt = Attempt::from_scheduled(e.attributes["input"].clone());
            PendingActivity {
                name: e.attributes["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                attempt: attempt.number,
                queue: e.attributes["queue"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                scheduled_at: e.timestamp,
            }
        })
        .collect()
}

fn pending_timers(snapshot: &InstanceSnapshot) -> Vec<PendingTimer> {
    if snapshot.state != InstanceState::Active {
        return Vec::new();
    }
    let done = answered(snapshot, &[EventType::TimerCanceled]);
    let fired: HashSet<i64> = snapshot
        .history
        .iter()
        .filter(|e| e.event_type == EventType::TimerFired)
        .map(|e| e.schedule_event_id)
        .collect();
    snapshot
        .history
        .iter()
        .filter(|e| {
            e.event_type == EventType::TimerScheduled
                && !done.contains(&e.sequence_id)
                && !fired.contains(&e.sequence_id)
        })
        .map(|e| PendingTimer {
            started_at: e.timestamp,
            fires_at: snapshot
                .pending
                .iter()
                .find(|p| {
                    p.event_type == EventType::TimerFired && p.schedule_event_id == e.sequence_id
                })
                .and_then(|p| p.visible_at),
        })
        .collect()
}

/// The attributes of the event that ended the execution, if one did.
fn outcome(snapshot: &InstanceSnapshot) -> Option<&Value> {
    snapshot
        .history
        .iter()
        .rev()
        .find(|e| e.event_type == EventType::WorkflowExecutionFinished)
        .map(|e| &e.attributes)
}
