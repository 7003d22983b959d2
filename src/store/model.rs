//! What the store reads and writes: instances, events, tasks and leases,
//! with go-workflows' numbering for states and event types.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::names::{Queue, WorkerId};

/// An instance's state, numbered as go-workflows numbers it.
///
/// ```
/// use pgwake::InstanceState;
/// // The numbers stored in `instances.state`.
/// assert_eq!(InstanceState::Active as i32, 0);
/// assert_eq!(InstanceState::ContinuedAsNew as i32, 1);
/// assert_eq!(InstanceState::Finished as i32, 2);
/// ```
///
/// Non-exhaustive: a state go-workflows adds may be added here, so a
/// `match` on it needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InstanceState {
    /// Running: may receive events and be claimed.
    Active = 0,
    /// Ended and replaced by a new execution of the same instance id.
    ContinuedAsNew = 1,
    /// Ended (completed, failed or canceled).
    Finished = 2,
}

impl InstanceState {
    pub(crate) fn from_db(value: i32) -> Self {
        match value {
            0 => Self::Active,
            1 => Self::ContinuedAsNew,
            _ => Self::Finished,
        }
    }
}

/// An event's type, numbered as go-workflows numbers it (1 to 19), and
/// pgwake's own types, numbered from 1000 so that they never collide with
/// one go-workflows adds: [`SignalNotDelivered`](Self::SignalNotDelivered),
/// [`SignalSent`](Self::SignalSent) and [`Patched`](Self::Patched).
///
/// ```
/// use pgwake::EventType;
/// let stored = EventType::ActivityCompleted.code();
/// assert_eq!(stored, 12);
/// assert_eq!(EventType::from_code(stored), Some(EventType::ActivityCompleted));
/// assert_eq!(EventType::SignalNotDelivered.code(), 1000);
/// assert_eq!(EventType::SignalSent.code(), 1001);
/// assert_eq!(EventType::Patched.code(), 1002);
/// ```
///
/// Non-exhaustive: new types (go-workflows' or pgwake's own) may be added,
/// so a `match` on it needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // the names are go-workflows' own
pub enum EventType {
    WorkflowExecutionStarted = 1,
    WorkflowExecutionFinished = 2,
    WorkflowExecutionContinuedAsNew = 3,
    WorkflowExecutionTerminated = 4,
    WorkflowExecutionCanceled = 5,
    WorkflowTaskStarted = 6,
    SubWorkflowScheduled = 7,
    SubWorkflowCancellationRequested = 8,
    SubWorkflowCompleted = 9,
    SubWorkflowFailed = 10,
    ActivityScheduled = 11,
    ActivityCompleted = 12,
    ActivityFailed = 13,
    TimerScheduled = 14,
    TimerFired = 15,
    TimerCanceled = 16,
    SignalReceived = 17,
    SideEffectResult = 18,
    TraceStarted = 19,
    /// pgwake's own: a signal that a workflow decision sent
    /// ([`WorkflowCompletion::signal`]) reached no execution, because its
    /// target had no active one. Written for the **sender** by the decision
    /// that sent it, with the attributes `{"instance_id", "name", "payload",
    /// "reason"}` and `schedule_event_id` 0: as a pending event when the
    /// sender goes on (so it wakes and its code learns of it), in its
    /// history before the outcome event when the decision ends it.
    /// go-workflows has no type that means this (its workflows signal
    /// through a system activity), and each of its types that readers could
    /// take for it already means something they act on.
    SignalNotDelivered = 1000,
    /// pgwake's own: a signal that a workflow decision sent reached the
    /// active execution of its target. Written for the sender as
    /// [`SignalNotDelivered`](Self::SignalNotDelivered) is, with the
    /// attributes `{"instance_id", "execution_id", "name"}`: one of the two
    /// for every signal of a decision, in the decision's order, so that a
    /// replaying workflow knows which of its signals were sent.
    SignalSent = 1001,
    /// pgwake's own: the first run of workflow code that asked
    /// [`patched`](crate::workflow::WorkflowContext::patched) for a change
    /// id, with the attributes `{"change_id"}`. A history holding it replays
    /// the new code's branch; one without it, the old one.
    Patched = 1002,
}

impl EventType {
    const ALL: [EventType; 22] = [
        Self::WorkflowExecutionStarted,
        Self::WorkflowExecutionFinished,
        Self::WorkflowExecutionContinuedAsNew,
        Self::WorkflowExecutionTerminated,
        Self::WorkflowExecutionCanceled,
        Self::WorkflowTaskStarted,
        Self::SubWorkflowScheduled,
        Self::SubWorkflowCancellationRequested,
        Self::SubWorkflowCompleted,
        Self::SubWorkflowFailed,
        Self::ActivityScheduled,
        Self::ActivityCompleted,
        Self::ActivityFailed,
        Self::TimerScheduled,
        Self::TimerFired,
        Self::TimerCanceled,
        Self::SignalReceived,
        Self::SideEffectResult,
        Self::TraceStarted,
        Self::SignalNotDelivered,
        Self::SignalSent,
        Self::Patched,
    ];

    /// The number stored in `event_type`.
    ///
    /// ```
    /// assert_eq!(pgwake::EventType::TimerFired.code(), 15);
    /// ```
    pub fn code(self) -> i32 {
        self as i32
    }

    /// The type for a stored number, if it is one of go-workflows' or
    /// pgwake's own.
    ///
    /// ```
    /// use pgwake::EventType;
    /// assert_eq!(EventType::from_code(1), Some(EventType::WorkflowExecutionStarted));
    /// assert_eq!(EventType::from_code(1000), Some(EventType::SignalNotDelivered));
    /// assert_eq!(EventType::from_code(0), None);
    /// assert_eq!(EventType::from_code(20), None);
    /// ```
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code() == code)
    }
}

/// One execution of a workflow instance: `(instance_id, execution_id)`.
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// use pgwake::{NewInstance, Queue};
/// let started = store.create_instance(NewInstance::new("order-42", Queue::new("orders")?)).await?;
/// assert_eq!(started.instance_id, "order-42");
/// println!("execution {}", started.execution_id);
/// # Ok(()) }
/// ```
// Exhaustive on purpose: it is the key of an execution (the schema's
// `(instance_id, execution_id)`), built by callers as a plain pair (the
// owner of an enqueued activity, say); anything more about an execution
// belongs in `InstanceSnapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceRef {
    /// The id the caller chose.
    pub instance_id: String,
    /// The execution, generated when it started.
    pub execution_id: String,
}

/// An event of an instance, pending or in its history. Its attributes are
/// stored as JSON in `attributes.data`.
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// if let Some(snapshot) = store.instance("order-42").await? {
///     for event in &snapshot.history {
///         println!("#{} {:?} {}", event.sequence_id, event.event_type, event.attributes);
///     }
/// }
/// # Ok(()) }
/// ```
///
/// Non-exhaustive: build one (a history for a test) with [`Event::new`]
/// and set the other fields by assignment.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Event {
    /// Unique id (`event_id`), also the key of its attributes.
    pub event_id: String,
    /// Position in the history (history events); insertion order (pending).
    pub sequence_id: i64,
    /// What happened.
    pub event_type: EventType,
    /// When it was written (database clock).
    pub timestamp: SystemTime,
    /// The sequence id of the event this one answers (an `ActivityScheduled`
    /// for `ActivityCompleted`, a `TimerScheduled` for `TimerFired` ...), else 0.
    pub schedule_event_id: i64,
    /// Not claimable before this time (timers).
    pub visible_at: Option<SystemTime>,
    /// The event's payload.
    pub attributes: Value,
}

impl Event {
    /// An event with these id, position, type and attributes, written at
    /// the Unix epoch (a fixed time, so that a history built for a test
    /// replays the same way every time), answering nothing
    /// (`schedule_event_id` 0) and visible at once. Set the other fields by
    /// assignment.
    ///
    /// ```
    /// use pgwake::{Event, EventType};
    /// use std::time::{Duration, SystemTime};
    /// let mut completed = Event::new("e-3", 3, EventType::ActivityCompleted, serde_json::json!({"result": 7}));
    /// completed.schedule_event_id = 2; // answers the `ActivityScheduled` at #2
    /// completed.timestamp = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    /// assert_eq!(completed.sequence_id, 3);
    /// assert!(completed.visible_at.is_none());
    /// ```
    pub fn new(
        event_id: impl Into<String>,
        sequence_id: i64,
        event_type: EventType,
        attributes: Value,
    ) -> Self {
        Self {
            event_id: event_id.into(),
            sequence_id,
            event_type,
            timestamp: SystemTime::UNIX_EPOCH,
            schedule_event_id: 0,
            visible_at: None,
            attributes,
        }
    }
}

/// A lease on a claimed task: who holds it and until when.
///
/// Each claim also writes a fresh random lease id to the task's row, kept
/// here out of sight. Extending, completing and releasing match the row,
/// the worker and that id, which no extension changes: a copy of the lease
/// taken before an extension whose reply was lost still holds the task.
/// Whoever claims the task again, another worker or the same one, writes a
/// new id, so the previous holder's late calls match nothing and are refused
/// with [`StoreError::LeaseLost`](crate::StoreError::LeaseLost). A lease
/// whose time ran out but that nobody claimed again still holds.
///
/// ```no_run
/// # async fn f(store: pgwake::Store, mut task: pgwake::WorkflowTask) -> Result<(), pgwake::StoreError> {
/// let before = task.lease.clone();
/// store.extend_workflow_task(&mut task, std::time::Duration::from_secs(60)).await?;
/// // Same holder, later deadline; the copy from before still holds the task.
/// assert_eq!(task.lease.worker(), before.worker());
/// assert!(task.lease.locked_until() >= before.locked_until());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    worker: WorkerId,
    locked_until: SystemTime,
    lease_id: i64,
}

impl Lease {
    pub(crate) fn new(worker: WorkerId, locked_until: SystemTime, lease_id: i64) -> Self {
        Self {
            worker,
            locked_until,
            lease_id,
        }
    }

    /// The holder.
    ///
    /// ```no_run
    /// # fn f(task: pgwake::ActivityTask, me: pgwake::WorkerId) {
    /// assert_eq!(task.lease.worker(), &me);
    /// println!("{} holds {}", task.lease.worker(), task.activity_id);
    /// # }
    /// ```
    pub fn worker(&self) -> &WorkerId {
        &self.worker
    }

    /// Until when (database clock) the task is reserved, as written at the
    /// claim or at the last extension this copy saw. Past it, another worker
    /// may claim the task; until one does, this lease still holds.
    ///
    /// ```no_run
    /// # fn f(task: pgwake::WorkflowTask) {
    /// let left = task.lease.locked_until().duration_since(std::time::SystemTime::now());
    /// println!("about {left:?} left (give or take the clocks' difference)");
    /// # }
    /// ```
    pub fn locked_until(&self) -> SystemTime {
        self.locked_until
    }

    /// The claim's token, written to the row's `lease_id` by the claim.
    pub(crate) fn lease_id(&self) -> i64 {
        self.lease_id
    }

    /// Records an extension: only the deadline moves.
    pub(crate) fn extend_to(&mut self, locked_until: SystemTime) {
        self.locked_until = locked_until;
    }
}

/// A claimed workflow task: an instance and the events it has to react to.
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
/// if let Some(task) = store.claim_workflow_task(&worker, &queues, std::time::Duration::from_secs(60)).await? {
///     for event in &task.new_events {
///         println!("{}: {:?}", task.instance.instance_id, event.event_type);
///     }
///     store.complete_workflow_task(&task, pgwake::WorkflowCompletion::default()).await?;
/// }
/// # Ok(()) }
/// ```
///
/// Non-exhaustive: only claims make one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkflowTask {
    /// `instances.id`.
    pub(crate) row_id: i64,
    /// The execution.
    pub instance: InstanceRef,
    /// Its queue.
    pub queue: Queue,
    /// Its metadata (JSON), if any.
    pub metadata: Option<Value>,
    /// The parent execution and its `SubWorkflowScheduled` sequence id, for sub-workflows.
    pub parent: Option<(InstanceRef, i64)>,
    /// The visible pending events, oldest first.
    pub new_events: Vec<Event>,
    /// The execution's whole history, by sequence id, read in the same
    /// statement as `new_events` (one snapshot): what a replaying executor
    /// runs the workflow's code over before it applies `new_events`.
    pub history: Vec<Event>,
    /// The sequence id of the last history event (0 for none).
    pub last_sequence_id: i64,
    /// The lease.
    pub lease: Lease,
}

/// A claimed activity task.
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["emails"])?);
/// for task in store.claim_activity_tasks(&worker, &queues, 10, std::time::Duration::from_secs(120)).await? {
///     println!("{}({}) for {}", task.name, task.input, task.instance.instance_id);
///     store.complete_activity_task(&task, Ok(serde_json::json!("sent"))).await?;
/// }
/// # Ok(()) }
/// ```
///
/// Non-exhaustive: only claims make one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActivityTask {
    /// `activities.id`.
    pub(crate) row_id: i64,
    /// The activity's id (its `ActivityScheduled` event id).
    pub activity_id: String,
    /// The execution that scheduled it.
    pub instance: InstanceRef,
    /// Its queue.
    pub queue: Queue,
    /// The sequence id of its `ActivityScheduled` event.
    pub schedule_event_id: i64,
    /// The activity's name, as scheduled.
    pub name: String,
    /// Its input, as scheduled.
    pub input: Value,
    /// When it was written: its `timestamp` column (database clock). With
    /// `SystemTime::now()` it tells how long the activity waited, give or
    /// take the difference between the database's clock and this
    /// process's (small on one machine, and possibly negative).
    pub enqueued_at: SystemTime,
    /// The lease.
    pub lease: Lease,
    /// The trace context of the owning instance's metadata, read with the
    /// claim so that the activity's span joins the instance's trace
    /// (empty without the `opentelemetry` feature).
    pub(crate) trace: crate::trace_context::TraceCarrier,
}

/// What one poll for activity tasks found, from
/// [`Store::poll_activity_tasks_detailed`](super::Store::poll_activity_tasks_detailed).
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["emails"])?);
/// let poll = store
///     .poll_activity_tasks_detailed(&worker, &queues, 32, std::time::Duration::from_secs(120))
///     .await?;
/// if poll.tasks.is_empty() && poll.skipped_locked {
///     // Claimable work exists but another transaction holds it: poll again soon.
/// } else if let Some(due_in) = poll.due_in {
///     println!("nothing to do for {due_in:?}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ActivityPoll {
    /// The tasks claimed, oldest first.
    pub tasks: Vec<ActivityTask>,
    /// When the batch was not full: how long until an activity of the
    /// queues that is not claimable yet becomes so unannounced (a delayed
    /// one turns visible, a lease runs out). `None` when nothing is due or
    /// the batch was full (poll again at once).
    pub due_in: Option<Duration>,
    /// When the batch was not full: whether claimable activities exist that
    /// the claim skipped because another transaction had them locked. Their
    /// lock going away wakes nobody, so poll again soon (with backoff)
    /// rather than wait for a notification. Also true, harmlessly, when a
    /// concurrent claim took them a moment ago.
    pub skipped_locked: bool,
}

/// What one poll for a workflow task found, from
/// [`Store::poll_workflow_task_detailed`](super::Store::poll_workflow_task_detailed).
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
/// let poll = store
///     .poll_workflow_task_detailed(&worker, &queues, std::time::Duration::from_secs(60))
///     .await?;
/// match poll.task {
///     Some(task) => println!("{} new events", task.new_events.len()),
///     None if poll.skipped_locked => println!("an instance is locked elsewhere: poll again soon"),
///     None => println!("idle; next due in {:?}", poll.due_in),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkflowPoll {
    /// The task claimed, if any.
    pub task: Option<WorkflowTask>,
    /// How long until a workflow task of the queues (another than the one
    /// claimed, if any) may become claimable unannounced (a timer fires, a lease or
    /// stickiness runs out), or sooner, never later (see
    /// [`Store::next_due_in`](crate::Store::next_due_in)). `None` when
    /// nothing is due.
    pub due_in: Option<Duration>,
    /// When none was claimed: whether a claimable instance exists that the
    /// claim skipped because another transaction had it locked. Its lock
    /// going away wakes nobody, so poll again soon (with backoff). Also
    /// true, harmlessly, when a concurrent claim took it a moment ago.
    pub skipped_locked: bool,
    /// When one was claimed: whether another instance of the queues had
    /// work to process as of the claim (claimable, or held by another
    /// transaction). False: the queues held nothing else then, and work
    /// written since is announced.
    pub more: bool,
}

/// What one poll for up to a number of workflow tasks found, from
/// [`Store::poll_workflow_tasks`](super::Store::poll_workflow_tasks).
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
/// let poll = store
///     .poll_workflow_tasks(&worker, &queues, 8, std::time::Duration::from_secs(60))
///     .await?;
/// for task in &poll.tasks {
///     println!("{}: {} new events", task.instance.instance_id, task.new_events.len());
/// }
/// if poll.more {
///     println!("other instances have work: poll again when there is room");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WorkflowTasksPoll {
    /// The tasks claimed, each of another instance, in the order of their
    /// rows: the instances whose oldest pending events are oldest, as many
    /// as asked for at most, fewer when the queues hold fewer instances
    /// with work (or several of the events first in line belong to one
    /// instance).
    pub tasks: Vec<WorkflowTask>,
    /// As [`WorkflowPoll::due_in`].
    pub due_in: Option<Duration>,
    /// When none was claimed: as [`WorkflowPoll::skipped_locked`].
    pub skipped_locked: bool,
    /// When some were claimed: whether an instance of the queues that was
    /// not claimed had work to process as of the claim (claimable, or held
    /// by another transaction). False: the queues held nothing else then,
    /// and work written since is announced.
    pub more: bool,
}

/// The most commands of one kind (activities, timers, canceled timers,
/// sub-workflows, signals, cancellations, history events) one
/// [`WorkflowCompletion`] may hold; more is refused with
/// [`StoreError::TooManyCommands`](crate::StoreError::TooManyCommands)
/// before anything is written. A decision applies in one transaction; one
/// this large already holds its locks for seconds.
///
/// ```
/// use pgwake::store::MAX_COMMANDS_PER_DECISION;
/// // Fan out 25,000 activities over three workflow tasks.
/// let batches: Vec<usize> = (0..25_000usize).collect::<Vec<_>>()
///     .chunks(MAX_COMMANDS_PER_DECISION).map(<[usize]>::len).collect();
/// assert_eq!(batches, [10_000, 10_000, 5_000]);
/// ```
pub const MAX_COMMANDS_PER_DECISION: usize = 10_000;

/// The longest timer delay accepted: ten years (3650 days). A longer delay
/// is refused with [`StoreError::InvalidDuration`](crate::StoreError::InvalidDuration)
/// before anything is written (PostgreSQL's timestamps end in the year
/// 294276, and a delay that overflows them would fail every attempt).
///
/// ```
/// use pgwake::store::MAX_TIMER_DELAY;
/// assert_eq!(MAX_TIMER_DELAY.as_secs(), 3650 * 24 * 3600);
/// ```
pub const MAX_TIMER_DELAY: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A workflow instance to create.
///
/// ```
/// let new = pgwake::NewInstance::new("order-42", pgwake::Queue::new("orders")?)
///     .with_input(serde_json::json!({"items": 3}))
///     .with_metadata(serde_json::json!({"tenant": "acme"}));
/// assert_eq!(new.instance_id, "order-42");
/// # Ok::<(), pgwake::StoreError>(())
/// ```
///
/// Non-exhaustive: build one with [`NewInstance::new`] and its `with_*`
/// methods (or assign its fields), so that a setting added later breaks no
/// caller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewInstance {
    /// The id (1 to 128 characters); one active execution per id.
    pub instance_id: String,
    /// The queue its workflow tasks go to.
    pub queue: Queue,
    /// Stored in `instances.metadata` as JSON.
    pub metadata: Option<Value>,
    /// The attributes of its `WorkflowExecutionStarted` event.
    pub input: Value,
}

impl NewInstance {
    /// An instance with no metadata and a `null` input.
    ///
    /// ```
    /// let new = pgwake::NewInstance::new("order-42", pgwake::Queue::default());
    /// assert_eq!(new.queue.as_str(), "default");
    /// assert!(new.metadata.is_none() && new.input.is_null());
    /// ```
    pub fn new(instance_id: impl Into<String>, queue: Queue) -> Self {
        Self {
            instance_id: instance_id.into(),
            queue,
            metadata: None,
            input: Value::Null,
        }
    }

    /// Sets the start event's attributes.
    ///
    /// ```
    /// let new = pgwake::NewInstance::new("order-42", pgwake::Queue::default())
    ///     .with_input(serde_json::json!({"items": 3}));
    /// assert_eq!(new.input["items"], 3);
    /// ```
    pub fn with_input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// Sets the metadata.
    ///
    /// ```
    /// let new = pgwake::NewInstance::new("order-42", pgwake::Queue::default())
    ///     .with_metadata(serde_json::json!({"tenant": "acme"}));
    /// assert_eq!(new.metadata, Some(serde_json::json!({"tenant": "acme"})));
    /// ```
    pub fn with_metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }
}

/// What a workflow task decided; [`Store::complete_workflow_task`](super::Store::complete_workflow_task)
/// applies all of it in one transaction.
///
/// ```
/// use pgwake::{WorkflowCompletion, Queue};
/// use serde_json::json;
/// let decision = WorkflowCompletion::default()
///     .schedule_activity("charge", json!({"cents": 500}), None)
///     .start_timer(std::time::Duration::from_secs(30), json!("reminder"));
/// assert_eq!(decision.activities.len(), 1);
/// ```
///
/// Non-exhaustive: start from [`WorkflowCompletion::default`], then use its
/// builder methods or assign or push to its fields:
///
/// ```
/// use pgwake::{EventType, WorkflowCompletion};
/// let mut decision = WorkflowCompletion::default();
/// decision.canceled_timers.push(4);
/// decision.history_events.push((EventType::SideEffectResult, serde_json::json!(7)));
/// assert!(decision.outcome.is_none());
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct WorkflowCompletion {
    /// Activities to schedule.
    pub activities: Vec<ScheduleActivity>,
    /// Timers to start.
    pub timers: Vec<StartTimer>,
    /// Timers to cancel, by the sequence id of their `TimerScheduled` event.
    pub canceled_timers: Vec<i64>,
    /// Sub-workflows to start ([`start_sub_workflow`](Self::start_sub_workflow)).
    pub sub_workflows: Vec<StartSubWorkflow>,
    /// Signals to send to other instances ([`signal`](Self::signal) says
    /// which execution each reaches, and what happens when none does).
    pub signals: Vec<SendSignal>,
    /// Other instances to cancel ([`cancel`](Self::cancel)).
    pub cancellations: Vec<String>,
    /// Extra events to append to the history (side effects, markers).
    pub history_events: Vec<(EventType, Value)>,
    /// How the execution ends, if it does.
    pub outcome: Option<WorkflowOutcome>,
    /// With [`WorkflowOutcome::ContinueAsNew`]: the result of the
    /// execution that ends, recorded as `"result"` in its
    /// `WorkflowExecutionContinuedAsNew` event (ignored otherwise).
    pub continued_result: Option<Value>,
}

impl WorkflowCompletion {
    /// Schedules an activity named `name` on `queue` (default: the instance's).
    ///
    /// ```
    /// use pgwake::{Queue, WorkflowCompletion};
    /// let decision = WorkflowCompletion::default()
    ///     .schedule_activity("charge", serde_json::json!({"cents": 500}), None)
    ///     .schedule_activity("email", serde_json::json!("receipt"), Some(Queue::new("emails")?));
    /// assert!(decision.activities[0].queue.is_none()); // the instance's queue
    /// assert_eq!(decision.activities[1].queue.as_ref().map(Queue::as_str), Some("emails"));
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn schedule_activity(mut self, name: &str, input: Value, queue: Option<Queue>) -> Self {
        self.activities
            .push(ScheduleActivity::new(name, input, queue));
        self
    }

    /// Starts a timer that fires after `delay` (database clock).
    ///
    /// ```
    /// use std::time::Duration;
    /// let decision = pgwake::WorkflowCompletion::default()
    ///     .start_timer(Duration::from_secs(30), serde_json::json!("reminder"));
    /// assert_eq!(decision.timers[0].delay, Duration::from_secs(30));
    /// ```
    pub fn start_timer(mut self, delay: Duration, payload: Value) -> Self {
        self.timers.push(StartTimer::new(delay, payload));
        self
    }

    /// Starts a sub-workflow: a child instance whose end is reported back
    /// as `SubWorkflowCompleted` or `SubWorkflowFailed`. If an execution of
    /// its id is active already, none is started and the parent receives
    /// `SubWorkflowFailed`. Signals and cancellations of the same decision
    /// reach the child ([`signal`](Self::signal)).
    ///
    /// ```
    /// use pgwake::{NewInstance, Queue, WorkflowCompletion};
    /// let decision = WorkflowCompletion::default()
    ///     .start_sub_workflow(NewInstance::new("order-42-shipping", Queue::new("shipping")?));
    /// assert_eq!(decision.sub_workflows[0].instance.instance_id, "order-42-shipping");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn start_sub_workflow(mut self, child: NewInstance) -> Self {
        self.sub_workflows.push(StartSubWorkflow::new(child));
        self
    }

    /// Sends the signal `name` with `payload` to the instance `instance_id`:
    /// a pending `SignalReceived` event (`{"name", "payload"}`) of the
    /// execution of that id that is active once the decision is applied.
    /// That is one running already, or a sub-workflow started by this same
    /// decision (the signal then follows its `WorkflowExecutionStarted`), or
    /// the sender itself when it goes on (its next execution when it
    /// continues as new).
    ///
    /// **The sender learns what became of each signal**: one
    /// [`EventType::SignalSent`] (`{"instance_id", "execution_id", "name"}`)
    /// or [`EventType::SignalNotDelivered`] (`{"instance_id", "name",
    /// "payload", "reason"}`) per signal, in the decision's order. When the
    /// sender goes on they are pending events of its own, so they wake it
    /// and appear in its next task's `new_events` (a workflow may wait for
    /// them); when the decision ends the execution they are recorded in its
    /// history, after its scheduling events and before its outcome event.
    ///
    /// **A target with no active execution** (never created, finished,
    /// removed) does not fail the decision: the workflow cannot be blamed
    /// for a target that finished meanwhile, and a refused decision would
    /// be refused again on every retry. The decision applies, the sender
    /// receives `SignalNotDelivered`, and the store logs a warning naming
    /// sender, target and signal.
    /// ([`Store::signal_instance`](super::Store::signal_instance), called
    /// from outside a workflow, refuses such a target with
    /// [`StoreError::NotFound`](crate::StoreError::NotFound) instead.)
    ///
    /// ```
    /// use pgwake::{NewInstance, Queue, WorkflowCompletion};
    /// use serde_json::json;
    /// // Start a child and signal it in one decision: the child's first
    /// // task holds its start, then the signal.
    /// let decision = WorkflowCompletion::default()
    ///     .start_sub_workflow(NewInstance::new("order-42-shipping", Queue::new("shipping")?))
    ///     .signal("order-42-shipping", "address-changed", json!({"zip": "1010"}));
    /// assert_eq!(decision.signals[0].instance_id, "order-42-shipping");
    /// assert_eq!(decision.signals[0].name, "address-changed");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn signal(mut self, instance_id: &str, name: &str, payload: Value) -> Self {
        self.signals
            .push(SendSignal::new(instance_id, name, payload));
        self
    }

    /// Asks the instance `instance_id` to cancel: a pending
    /// `WorkflowExecutionCanceled` event of the same execution a
    /// [`signal`](Self::signal) would reach (a sub-workflow started by this
    /// same decision included). A target with no active execution is left
    /// alone, as [`Store::cancel_instance`](super::Store::cancel_instance)
    /// leaves a finished one: there is nothing left to cancel.
    ///
    /// ```
    /// let decision = pgwake::WorkflowCompletion::default().cancel("order-42-shipping");
    /// assert_eq!(decision.cancellations, ["order-42-shipping"]);
    /// ```
    pub fn cancel(mut self, instance_id: &str) -> Self {
        self.cancellations.push(instance_id.to_string());
        self
    }

    /// Ends the execution.
    ///
    /// ```
    /// use pgwake::{WorkflowCompletion, WorkflowOutcome};
    /// let decision = WorkflowCompletion::default()
    ///     .finish(WorkflowOutcome::Completed(serde_json::json!({"total": 500})));
    /// assert!(matches!(decision.outcome, Some(WorkflowOutcome::Completed(_))));
    /// ```
    pub fn finish(mut self, outcome: WorkflowOutcome) -> Self {
        self.outcome = Some(outcome);
        self
    }
}

/// An activity to schedule.
///
/// ```
/// let decision = pgwake::WorkflowCompletion::default()
///     .schedule_activity("charge", serde_json::json!(500), None);
/// let activity: &pgwake::store::ScheduleActivity = &decision.activities[0];
/// assert_eq!(activity.name, "charge");
/// assert_eq!(activity.input, 500);
/// ```
///
/// Non-exhaustive: build one with [`ScheduleActivity::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScheduleActivity {
    /// The activity's name (handlers dispatch on it).
    pub name: String,
    /// Its input.
    pub input: Value,
    /// Its queue; the instance's when `None`.
    pub queue: Option<Queue>,
}

impl ScheduleActivity {
    /// The activity `name` with `input`, on `queue` (the instance's when
    /// `None`): what [`WorkflowCompletion::schedule_activity`] pushes.
    ///
    /// ```
    /// use pgwake::store::ScheduleActivity;
    /// let mut decision = pgwake::WorkflowCompletion::default();
    /// decision.activities.push(ScheduleActivity::new("charge", serde_json::json!(500), None));
    /// assert_eq!(decision.activities[0].name, "charge");
    /// ```
    pub fn new(name: impl Into<String>, input: Value, queue: Option<Queue>) -> Self {
        Self {
            name: name.into(),
            input,
            queue,
        }
    }
}

/// A timer to start.
///
/// ```
/// use pgwake::store::StartTimer;
/// use std::time::Duration;
/// let mut decision = pgwake::WorkflowCompletion::default();
/// decision.timers.push(StartTimer::new(Duration::from_secs(60), serde_json::json!("retry")));
/// assert_eq!(decision.timers[0].payload, "retry");
/// ```
///
/// Non-exhaustive: build one with [`StartTimer::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StartTimer {
    /// When it fires, from the completion's commit (database clock).
    pub delay: Duration,
    /// Attributes of its `TimerScheduled` / `TimerFired` events.
    pub payload: Value,
}

impl StartTimer {
    /// A timer firing `delay` after the completion's commit, with `payload`:
    /// what [`WorkflowCompletion::start_timer`] pushes.
    ///
    /// ```
    /// let timer = pgwake::store::StartTimer::new(std::time::Duration::from_secs(60), serde_json::json!("retry"));
    /// assert_eq!(timer.delay.as_secs(), 60);
    /// ```
    pub fn new(delay: Duration, payload: Value) -> Self {
        Self { delay, payload }
    }
}

/// A sub-workflow to start: a child instance whose end is reported back as
/// `SubWorkflowCompleted` or `SubWorkflowFailed`.
///
/// ```
/// use pgwake::{store::StartSubWorkflow, NewInstance, Queue, WorkflowCompletion};
/// let mut decision = WorkflowCompletion::default();
/// decision.sub_workflows.push(StartSubWorkflow::new(
///     NewInstance::new("order-42-shipping", Queue::new("shipping")?),
/// ));
/// assert_eq!(decision.sub_workflows[0].instance.instance_id, "order-42-shipping");
/// # Ok::<(), pgwake::StoreError>(())
/// ```
///
/// Non-exhaustive: build one with [`StartSubWorkflow::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StartSubWorkflow {
    /// The child.
    pub instance: NewInstance,
}

impl StartSubWorkflow {
    /// Starts `instance` as a child: what
    /// [`WorkflowCompletion::start_sub_workflow`] pushes.
    ///
    /// ```
    /// use pgwake::{store::StartSubWorkflow, NewInstance, Queue};
    /// let child = StartSubWorkflow::new(NewInstance::new("order-42-shipping", Queue::default()));
    /// assert_eq!(child.instance.queue.as_str(), "default");
    /// ```
    pub fn new(instance: NewInstance) -> Self {
        Self { instance }
    }
}

/// A signal for another instance's active execution; see
/// [`WorkflowCompletion::signal`] for which execution it reaches, and what
/// the sender's history records when none does.
///
/// ```
/// use pgwake::store::SendSignal;
/// let mut decision = pgwake::WorkflowCompletion::default();
/// decision.signals.push(SendSignal::new("order-42", "approved", serde_json::json!({"by": "alice"})));
/// assert_eq!(decision.signals.len(), 1);
/// ```
///
/// Non-exhaustive: build one with [`SendSignal::new`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SendSignal {
    /// The receiving instance id.
    pub instance_id: String,
    /// The signal's name.
    pub name: String,
    /// Its payload.
    pub payload: Value,
}

impl SendSignal {
    /// The signal `name` with `payload` for the instance `instance_id`:
    /// what [`WorkflowCompletion::signal`] pushes.
    ///
    /// ```
    /// let signal = pgwake::store::SendSignal::new("order-42", "approved", serde_json::json!(true));
    /// assert_eq!((signal.instance_id.as_str(), signal.name.as_str()), ("order-42", "approved"));
    /// ```
    pub fn new(instance_id: impl Into<String>, name: impl Into<String>, payload: Value) -> Self {
        Self {
            instance_id: instance_id.into(),
            name: name.into(),
            payload,
        }
    }
}

/// How an execution ends.
///
/// ```
/// use pgwake::{WorkflowCompletion, WorkflowOutcome};
/// let decision = WorkflowCompletion::default().finish(WorkflowOutcome::Failed("card declined".into()));
/// assert_eq!(decision.outcome, Some(WorkflowOutcome::Failed("card declined".into())));
/// ```
///
/// Non-exhaustive: a way to end may be added (go-workflows also knows
/// termination), so a `match` on it needs a wildcard arm.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WorkflowOutcome {
    /// Finished with a result.
    Completed(Value),
    /// Finished with an error.
    Failed(String),
    /// Finished on cancellation.
    Canceled,
    /// Ended and replaced by a new execution started with this input.
    ContinueAsNew(Value),
}

/// What [`Store::cancel_instance`](super::Store::cancel_instance) did.
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// match store.cancel_instance("order-42").await? {
///     pgwake::CancelOutcome::Requested => println!("the workflow will see a cancel event"),
///     pgwake::CancelOutcome::AlreadyFinished => println!("nothing left to cancel"),
///     _ => {} // non-exhaustive: more outcomes may be told apart later
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// A cancel event was queued for the active execution.
    Requested,
    /// The instance had already finished; it was left as it was.
    AlreadyFinished,
}

/// Figures for one queue, from [`Store::stats`](super::Store::stats).
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// for q in store.stats().await? {
///     println!("{}: {} ready, {} running activities", q.queue, q.ready_activities, q.running_activities);
/// }
/// # Ok(()) }
/// ```
///
/// Non-exhaustive: more figures may be added. To build one (an expected
/// value in a test), start from [`QueueStats::default`] and assign fields:
///
/// ```
/// let mut expected = pgwake::QueueStats::default();
/// expected.queue = "emails".to_string();
/// expected.ready_activities = 2;
/// assert_eq!(expected.running_activities, 0);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Active instances.
    pub active_instances: i64,
    /// Active instances with a claimable workflow task now (unlocked, with
    /// at least one visible pending event), counted once per instance.
    pub claimable_workflow_tasks: i64,
    /// Activities claimable now (visible, not leased).
    pub ready_activities: i64,
    /// Activities under a live lease.
    pub running_activities: i64,
    /// Pending events and activities that become visible later (timers).
    pub scheduled_later: i64,
    /// Active instances whose last workflow task failed (a panic, an error,
    /// a history the code does not replay) and waits for its retry:
    /// `task_attempts` above 0. Each is retried with a growing delay until
    /// a task completes; their `last_task_error` says why
    /// ([`Store::instance`](super::Store::instance)).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// for q in store.stats().await? {
    ///     if q.failing_workflow_tasks > 0 {
    ///         eprintln!("{}: {} workflows keep failing", q.queue, q.failing_workflow_tasks);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub failing_workflow_tasks: i64,
}

/// A finished or running execution, as [`Store::instance`](super::Store::instance) reads it.
///
/// ```no_run
/// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
/// if let Some(snapshot) = store.instance("order-42").await? {
///     let (done, waiting) = (snapshot.history.len(), snapshot.pending.len());
///     println!("{:?}: {done} events in history, {waiting} pending", snapshot.state);
/// }
/// # Ok(()) }
/// ```
///
/// Non-exhaustive: more of what the store knows of an execution may be
/// added; only [`Store::instance`](super::Store::instance) makes one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct InstanceSnapshot {
    /// The execution.
    pub instance: InstanceRef,
    /// Its queue.
    pub queue: Queue,
    /// Its state.
    pub state: InstanceState,
    /// Metadata, if any.
    pub metadata: Option<Value>,
    /// When it was created.
    pub created_at: SystemTime,
    /// When it finished.
    pub completed_at: Option<SystemTime>,
    /// Its history, in order.
    pub history: Vec<Event>,
    /// Events waiting to be processed, oldest first.
    pub pending: Vec<Event>,
    /// How many of its workflow tasks have failed in a row since the last
    /// one that completed (0 when the last one completed, or none ran yet).
    /// A failing task is retried 1 s after its first failure, the delay
    /// doubling up to 5 min
    /// ([`Store::fail_workflow_task`](super::Store::fail_workflow_task)).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// if let Some(snapshot) = store.instance("order-42").await? {
    ///     if snapshot.task_attempts > 0 {
    ///         eprintln!("failed {} times in a row", snapshot.task_attempts);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub task_attempts: u32,
    /// Why its last workflow task failed (at most 8 KiB of it), while
    /// [`task_attempts`](Self::task_attempts) is above 0; `None` once a
    /// task completes.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// if let Some(error) = store.instance("order-42").await?.and_then(|s| s.last_task_error) {
    ///     eprintln!("its workflow task fails: {error}");
    /// }
    /// # Ok(()) }
    /// ```
    pub last_task_error: Option<String>,
}
