//! The runtime's protocol: every message between its actors, in one place.
//!
//! Data flows one way, listener -> router -> worker -> store; the one way
//! back is [`QueuesTouched`], which the store's commit hook sends to the
//! notifier.
//!
//! The `pub` messages are those your own actors exchange with the router
//! (and the notifier's [`QueuesTouched`]); they are public as
//! `pgwake::runtime::actors`. The `pub(crate)` ones pass only between
//! pgwake's own actors.

use std::time::Instant;

use actix::prelude::*;

pub use crate::kinds::{TaskKind, WakeReason};
use crate::store::{ActivityTask, Queue, WorkflowTask};

/// Work may be waiting: poll now. Sent by the router to registered workers.
///
/// Sent to the router, it wakes the workers registered for its queue:
///
/// ```
/// use pgwake::runtime::actors::{TaskAvailable, WakeReason};
/// use pgwake::{Queue, TaskKind};
/// # fn example(runtime: pgwake::RuntimeHandle) -> Result<(), pgwake::StoreError> {
/// runtime.router().do_send(TaskAvailable {
///     kind: TaskKind::Activity,
///     queue: Some(Queue::new("emails")?),
///     reason: WakeReason::Local,
/// });
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct TaskAvailable {
    /// The kind of task.
    pub kind: TaskKind,
    /// The queue, or `None` for every queue of that kind.
    pub queue: Option<Queue>,
    /// Why.
    pub reason: WakeReason,
}

/// How the router wakes a registered recipient.
///
/// ```
/// use pgwake::runtime::actors::{RegisterWorker, TaskAvailable, WakePolicy, WorkerIdle};
/// # use actix::prelude::*;
/// # struct Mailer;
/// # impl Actor for Mailer { type Context = Context<Self>; }
/// # impl Handler<TaskAvailable> for Mailer {
/// #     type Result = ();
/// #     fn handle(&mut self, _: TaskAvailable, _: &mut Context<Self>) {}
/// # }
/// # async fn example(runtime: pgwake::RuntimeHandle, mailer: Addr<Mailer>) -> Result<(), Box<dyn std::error::Error>> {
/// let id = runtime.router().send(RegisterWorker {
///     kind: pgwake::TaskKind::Activity, queues: pgwake::queues(["emails"])?,
///     recipient: mailer.recipient(), policy: WakePolicy::WhenIdle, listener_state: None,
/// }).await?;
/// // Not woken before it reports idle: poll once, and when that finds nothing,
/// runtime.router().do_send(WorkerIdle { id });
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakePolicy {
    /// Only while it has reported [`WorkerIdle`] since its last wake-up: a
    /// burst of notifications wakes idle workers once each, not every worker
    /// once per notification. (pgwake's own workers are asked instead, and
    /// answer whether they can take the work.)
    WhenIdle,
    /// On every notification for its queues (simplest for your own actors).
    Always,
}

/// Registers a recipient for the queues of one kind; answered with the
/// registration's id. Registrations whose recipient has stopped are dropped.
///
/// ```
/// use pgwake::runtime::actors::{RegisterWorker, TaskAvailable, WakePolicy};
/// use pgwake::{Queue, TaskKind};
/// # use actix::prelude::*;
/// # struct Thumbnailer;
/// # impl Actor for Thumbnailer { type Context = Context<Self>; }
/// # impl Handler<TaskAvailable> for Thumbnailer {
/// #     type Result = ();
/// #     fn handle(&mut self, _: TaskAvailable, _: &mut Context<Self>) {}
/// # }
/// # async fn example(runtime: pgwake::RuntimeHandle, thumbnailer: Addr<Thumbnailer>) -> Result<(), Box<dyn std::error::Error>> {
/// let id = runtime.router().send(RegisterWorker {
///     kind: TaskKind::Activity,
///     queues: vec![Queue::new("thumbnails")?],
///     recipient: thumbnailer.recipient(), // handles TaskAvailable
///     policy: WakePolicy::Always,
///     listener_state: None,
/// }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub struct RegisterWorker {
    /// The kind of task.
    pub kind: TaskKind,
    /// The queues it serves.
    pub queues: Vec<Queue>,
    /// Where wake-ups go.
    pub recipient: Recipient<TaskAvailable>,
    /// When wake-ups go.
    pub policy: WakePolicy,
    /// Where listener state changes go (pgwake's workers shorten their
    /// fallback timer while the listener is down).
    pub listener_state: Option<Recipient<ListenerStateChanged>>,
}

/// Removes a registration.
///
/// ```
/// use pgwake::runtime::actors::UnregisterWorker;
/// # fn example(runtime: pgwake::RuntimeHandle, id: u64) {
/// // `id` is what RegisterWorker answered; e.g. in your actor's `stopping`:
/// runtime.router().do_send(UnregisterWorker { id });
/// # }
/// ```
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnregisterWorker {
    /// The id [`RegisterWorker`] returned.
    pub id: u64,
}

/// A [`WakePolicy::WhenIdle`] worker has spare capacity and found nothing
/// to claim: it may be woken again.
///
/// ```
/// use pgwake::runtime::actors::WorkerIdle;
/// # fn example(runtime: pgwake::RuntimeHandle, id: u64) {
/// // The last poll claimed nothing: wake me on the next notification (at once,
/// // if one for my queues found every worker busy meanwhile).
/// runtime.router().do_send(WorkerIdle { id });
/// # }
/// ```
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerIdle {
    /// The registration id.
    pub id: u64,
}

/// A worker claimed as much as it asked for: wake another idle worker of
/// these queues to keep the chain going.
///
/// ```
/// use pgwake::{runtime::actors::MoreWorkLikely, TaskKind};
/// # fn example(runtime: pgwake::RuntimeHandle, queues: Vec<pgwake::Queue>) {
/// // A claim filled every free slot: let another idle worker of these queues poll.
/// runtime.router().do_send(MoreWorkLikely { kind: TaskKind::Activity, queues });
/// # }
/// ```
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MoreWorkLikely {
    /// The kind of task.
    pub kind: TaskKind,
    /// The queues polled.
    pub queues: Vec<Queue>,
}

/// A listener started or stopped listening. Not listening includes a
/// listener whose `LISTEN` succeeded but whose notifications are not
/// delivered ([`ListenerState::NotDelivering`](crate::ListenerState::NotDelivering)):
/// poll as often as while it is down.
///
/// Your actor gets it when it registers with `listener_state: Some(addr.recipient())`:
///
/// ```
/// # use actix::prelude::*;
/// use pgwake::runtime::actors::ListenerStateChanged;
/// use std::time::Duration;
/// # struct Mailer { poll_every: Duration }
/// # impl Actor for Mailer { type Context = Context<Self>; }
/// impl Handler<ListenerStateChanged> for Mailer {
///     type Result = ();
///     fn handle(&mut self, msg: ListenerStateChanged, _: &mut Context<Self>) {
///         // No wake-ups while the listener is down: poll more often.
///         self.poll_every = Duration::from_millis(if msg.listening { 60_000 } else { 500 });
///     }
/// }
/// ```
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ListenerStateChanged {
    /// Its kind of task.
    pub kind: TaskKind,
    /// Whether it is listening now, its notifications confirmed delivered.
    pub listening: bool,
}

/// The store committed work on these queues (its commit hook's report).
///
/// Sent to the notifier, it wakes this process's workers of those queues at
/// once and sends one debounced NOTIFY per queue for the other processes:
///
/// ```
/// use pgwake::{runtime::actors::QueuesTouched, Queue};
/// # fn example(runtime: pgwake::RuntimeHandle) -> Result<(), pgwake::StoreError> {
/// runtime.notifier().do_send(QueuesTouched {
///     activity: vec![Queue::new("emails")?],
///     ..Default::default()
/// });
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, Message)]
#[rtype(result = "()")]
pub struct QueuesTouched {
    /// Queues that got pending events (workflow tasks).
    pub workflow: Vec<Queue>,
    /// Queues that got activities.
    pub activity: Vec<Queue>,
    /// When the commit returned.
    pub at: Option<Instant>,
}

/// Stop claiming new work; in-flight tasks go on.
/// [`RuntimeHandle::shutdown`](crate::RuntimeHandle::shutdown) sends it to
/// every worker first.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopClaiming;

/// Release the leases of unfinished tasks, cancel their handlers, and stop;
/// answered with how many leases were released. Shutdown sends it to every
/// worker at its deadline and reports the sum of the answers.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub(crate) struct AbandonInFlight;

/// Asks a worker how many tasks it is running. Shutdown asks every worker
/// until all answer 0 or its deadline passes.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub(crate) struct InFlightCount;

/// Tells a listener to disconnect for good (runtime shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopListening;

/// The router offers a wake-up to one of pgwake's own workers, which answers
/// whether it takes it (`true`) or cannot (`false`: every slot is taken, or
/// it is stopping), so that the router gives it to another worker or keeps
/// it owed. `queue: None` is a resync of every queue of the worker.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub(crate) struct OfferWake {
    pub(crate) queue: Option<Queue>,
    pub(crate) reason: WakeReason,
}

/// Registers one of pgwake's own workers, which is asked rather than told.
#[derive(Debug, Message)]
#[rtype(result = "u64")]
pub(crate) struct RegisterOwnWorker {
    pub(crate) kind: TaskKind,
    pub(crate) queues: Vec<Queue>,
    pub(crate) offers: Recipient<OfferWake>,
    pub(crate) listener_state: Recipient<ListenerStateChanged>,
}

/// Sends every NOTIFY the notifier still owes now, without waiting for the
/// debounce window; answered with how many are still unsent (0: all sent).
/// The runtime's shutdown repeats it until 0 or its deadline.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub(crate) struct FlushNotifications;

/// Stops the notifier (after [`FlushNotifications`], at shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct StopNotifying;

/// A worker asks another worker of its process for up to `wanted` free
/// slots, for the tasks it is about to lease to it (eager dispatch): a
/// workflow worker for the activities its decision schedules, an activity
/// worker for the workflow tasks its results make ready. Answered with how
/// many it reserved (0 when it has none free, or is stopping). Every
/// reservation is answered by one [`TasksHandedOver`].
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub(crate) struct ReserveSlots {
    pub(crate) wanted: usize,
}

/// Tasks leased to a worker by another worker's committed transaction, on
/// the `reserved` slots it reserved for them: it runs them as if it had
/// claimed them, and frees the slots they did not fill (all of them when
/// the transaction failed).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct TasksHandedOver {
    pub(crate) tasks: HandedOver,
    pub(crate) reserved: usize,
}

/// The tasks of a [`TasksHandedOver`].
#[derive(Debug)]
pub(crate) enum HandedOver {
    Activities(Vec<ActivityTask>),
    Workflows(Vec<WorkflowTask>),
}

impl HandedOver {
    pub(crate) fn len(&self) -> usize {
        match self {
            HandedOver::Activities(tasks) => tasks.len(),
            HandedOver::Workflows(tasks) => tasks.len(),
        }
    }
}
