//! The runtime's protocol: every message between its actors, in one place.
//!
//! Data flows one way, listener -> router -> worker -> store; the one way
//! back is [`QueuesTouched`], which the store's commit hook sends to the
//! notifier.

use std::time::Instant;

use actix::prelude::*;

use crate::store::Queue;

/// Which kind of task, and so which channel announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Workflow tasks: announced on `workflow_tasks`.
    Workflow,
    /// Activity tasks: announced on `activity_tasks`.
    Activity,
}

impl TaskKind {
    /// The channel name in the `public` schema.
    pub fn base_channel(self) -> &'static str {
        match self {
            TaskKind::Workflow => "workflow_tasks",
            TaskKind::Activity => "activity_tasks",
        }
    }
}

/// Why a worker is being woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeReason {
    /// A notification arrived for the queue.
    Notification,
    /// A listener (re)connected: notifications sent while it was away are
    /// gone, so every worker of its channel polls once.
    Resync,
    /// This process committed work for the queue (no database round trip).
    Local,
    /// Another worker claimed a full batch: there is probably more.
    MoreWork,
}

/// Work may be waiting: poll now. Sent by the router to registered workers.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakePolicy {
    /// Only while it has reported [`WorkerIdle`] since its last wake-up: a
    /// burst of notifications wakes idle workers once each, not every worker
    /// once per notification. pgwake's workers use this.
    WhenIdle,
    /// On every notification for its queues (simplest for your own actors).
    Always,
}

/// Registers a recipient for the queues of one kind; answered with the
/// registration's id. Registrations whose recipient has stopped are dropped.
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
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnregisterWorker {
    /// The id [`RegisterWorker`] returned.
    pub id: u64,
}

/// A [`WakePolicy::WhenIdle`] worker has spare capacity and found nothing
/// to claim: it may be woken again.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct WorkerIdle {
    /// The registration id.
    pub id: u64,
}

/// A worker claimed as much as it asked for: wake another idle worker of
/// these queues to keep the chain going.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct MoreWorkLikely {
    /// The kind of task.
    pub kind: TaskKind,
    /// The queues polled.
    pub queues: Vec<Queue>,
}

/// A listener started or stopped listening.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ListenerStateChanged {
    /// Its kind of task.
    pub kind: TaskKind,
    /// Whether it is listening now.
    pub listening: bool,
}

/// The store committed work on these queues (its commit hook's report).
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
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopClaiming;

/// Release the leases of unfinished tasks, cancel their handlers, and stop;
/// answered with how many leases were released.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct AbandonInFlight;

/// Asks a worker how many tasks it is running.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct InFlightCount;

/// Tells a listener to disconnect for good (runtime shutdown).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct StopListening;
