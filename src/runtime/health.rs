//! What the runtime reports about itself: listener states and per-queue
//! counters, shared by the actors that update them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::messages::TaskKind;

/// A listener's state.
///
/// ```
/// use pgwake::ListenerState;
/// # fn example(runtime: pgwake::RuntimeHandle) {
/// for listener in runtime.health().listeners {
///     match listener.state {
///         ListenerState::Backoff { attempt, retry_in } => {
///             println!("{}: attempt {attempt} failed, next in {retry_in:?}", listener.channel)
///         }
///         ListenerState::NotDelivering => {
///             println!("{}: notifications do not arrive; is listener_url a pooler?", listener.channel)
///         }
///         _ => {}
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerState {
    /// Opening its connection, running `LISTEN`, or waiting for the first
    /// delivery probe to come back.
    Connecting,
    /// `LISTEN` succeeded, and a probe `NOTIFY` sent from another connection
    /// came back on the listening one: notifications flow.
    Listening,
    /// `LISTEN` succeeded, but the delivery probe (a `NOTIFY` sent from
    /// another connection) did not come back within
    /// `listener_probe_timeout`, or could not be sent: notifications are not
    /// delivered on this connection. Typical causes: a transaction- or
    /// statement-mode pooler such as PgBouncer between the listener and
    /// PostgreSQL (point `listener_url` at PostgreSQL itself), a read
    /// replica, or a proxy that drops asynchronous messages.
    ///
    /// Counted as not listening: workers poll every
    /// `fallback_while_degraded`, [`Health::all_listening`] is false and
    /// [`ListenerHealth::not_listening_for`] runs. The listener warns once
    /// and probes again every `listener_ping_after`; it turns `Listening`
    /// when a probe comes back.
    NotDelivering,
    /// Waiting before the next attempt after a failure.
    Backoff {
        /// The failed attempts in a row.
        attempt: u32,
        /// The delay before the next attempt.
        retry_in: Duration,
    },
    /// Notifications are off (poll-only mode), or the runtime shut down.
    Disabled,
}

/// One listener's health.
///
/// ```
/// use std::time::Duration;
/// # fn example(runtime: pgwake::RuntimeHandle) {
/// // Unhealthy once a listener has been down longer than a grace period.
/// let grace = Duration::from_secs(10);
/// let healthy = runtime.health().listeners.iter()
///     .all(|l| l.not_listening_for.is_none_or(|down| down <= grace));
/// # }
/// ```
///
/// Non-exhaustive: more may be reported. To build one (to test a health
/// check), use [`ListenerHealth::new`] and assign fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerHealth {
    /// Its channel.
    pub channel: String,
    /// Its kind of task.
    pub kind: TaskKind,
    /// Its state.
    pub state: ListenerState,
    /// How long it has been in that state.
    pub for_how_long: Duration,
    /// How long it has not been listening, across every connect attempt and
    /// backoff in a row (`None` while it listens, or when disabled): what a
    /// health check compares with its grace period.
    pub not_listening_for: Option<Duration>,
    /// Reconnections since the runtime started.
    pub reconnects: u64,
    /// How long ago its last `LISTEN` succeeded, which is when it sent its
    /// workers the resync; `None` before the first. It reports `Listening`
    /// only later, once its delivery probe is back.
    pub last_listen_ago: Option<Duration>,
}

impl ListenerHealth {
    /// A listener of `kind` on `channel` that just entered `state`, never
    /// reconnected and never listened (`not_listening_for` and
    /// `last_listen_ago` `None`); assign fields to say more.
    ///
    /// ```
    /// use pgwake::{ListenerHealth, ListenerState, TaskKind};
    /// use std::time::Duration;
    /// let mut down = ListenerHealth::new("activity_tasks", TaskKind::Activity, ListenerState::Connecting);
    /// down.not_listening_for = Some(Duration::from_secs(30));
    /// assert_eq!(down.reconnects, 0);
    /// ```
    pub fn new(channel: impl Into<String>, kind: TaskKind, state: ListenerState) -> Self {
        Self {
            channel: channel.into(),
            kind,
            state,
            for_how_long: Duration::ZERO,
            not_listening_for: None,
            reconnects: 0,
            last_listen_ago: None,
        }
    }
}

/// Counters for one queue since the runtime started.
///
/// ```
/// use pgwake::TaskKind;
/// # fn example(runtime: pgwake::RuntimeHandle) {
/// let emails = runtime.health().counters(TaskKind::Activity, "emails");
/// println!("{} claimed, {} completed, {} failed", emails.claimed, emails.completed, emails.failed);
/// # }
/// ```
///
/// Non-exhaustive: more counters may be added. To build one, start from
/// [`QueueCounters::default`] and assign fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounters {
    /// Wake-ups delivered to this queue's workers.
    pub wakeups: u64,
    /// Polls (claim queries) by workers serving this queue.
    pub polls: u64,
    /// Polls that claimed nothing.
    pub empty_polls: u64,
    /// Tasks claimed.
    pub claimed: u64,
    /// Tasks completed successfully.
    pub completed: u64,
    /// Handlers that returned an error.
    pub failed: u64,
    /// Handlers that panicked.
    pub panicked: u64,
    /// Leases lost before completion (the work was discarded).
    pub leases_lost: u64,
}

/// One worker's state, as its wake-up state machine and its store calls
/// leave it.
///
/// ```
/// # fn example(runtime: pgwake::RuntimeHandle) {
/// for worker in runtime.health().workers {
///     println!(
///         "{} ({:?} on {:?}): {}/{} slots, claiming for {:?}, recording for {:?}{}",
///         worker.worker, worker.kind, worker.queues, worker.slots_used, worker.concurrency,
///         worker.claiming_for, worker.recording_for, if worker.stuck { ", STUCK" } else { "" },
///     );
/// }
/// # }
/// ```
///
/// Non-exhaustive: more may be reported. To build one (to test a health
/// check), use [`WorkerHealth::new`] and assign fields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerHealth {
    /// The worker's id (also in `activities.worker` / `instances.worker`).
    pub worker: String,
    /// The kind of task it runs.
    pub kind: TaskKind,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Tasks claimed and not finished (running, or their results being recorded).
    pub slots_used: usize,
    /// Its concurrency.
    pub concurrency: usize,
    /// How long the claim under way has run, if one is.
    pub claiming_for: Option<Duration>,
    /// How long the oldest result being recorded has waited, if any is.
    pub recording_for: Option<Duration>,
    /// It has stopped claiming (shutdown).
    pub stopped: bool,
    /// How long its claims or recordings have been failing in a row (the
    /// database unreachable, silent or refusing), if they are.
    pub failing_for: Option<Duration>,
    /// The worker makes no progress: a claim or a recording has run, or its
    /// store calls have kept failing, for longer than twice the store's
    /// operation deadline. Report unhealthy.
    pub stuck: bool,
}

impl WorkerHealth {
    /// An idle worker `worker` of `kind` serving nothing yet, with a
    /// concurrency of 1 and nothing under way; assign fields to say more
    /// (to test a health check).
    ///
    /// ```
    /// use pgwake::{Health, TaskKind, WorkerHealth};
    /// let mut worker = WorkerHealth::new("activity-1", TaskKind::Activity);
    /// worker.stuck = true;
    /// let mut health = Health::default();
    /// health.workers.push(worker);
    /// assert_eq!(health.stuck_workers().count(), 1);
    /// ```
    pub fn new(worker: impl Into<String>, kind: TaskKind) -> Self {
        Self {
            worker: worker.into(),
            kind,
            queues: Vec::new(),
            slots_used: 0,
            concurrency: 1,
            claiming_for: None,
            recording_for: None,
            stopped: false,
            failing_for: None,
            stuck: false,
        }
    }
}

/// A snapshot of the runtime's health.
///
/// ```
/// # fn example(runtime: pgwake::RuntimeHandle) {
/// let health = runtime.health();
/// for (queue, counters) in &health.queues {
///     println!("{queue}: {} wake-ups, {} polls", counters.wakeups, counters.polls);
/// }
/// # }
/// ```
///
/// Non-exhaustive: more may be reported. To build one (to test a health
/// check), start from [`Health::default`] (nothing reported) and assign or
/// push to its fields.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Health {
    /// One entry per listener (each `Disabled` in poll-only mode).
    pub listeners: Vec<ListenerHealth>,
    /// Counters per queue (`kind:queue`, e.g. `activity:emails`).
    pub queues: BTreeMap<String, QueueCounters>,
    /// Every worker of the runtime, by id.
    pub workers: Vec<WorkerHealth>,
    /// Whether this process is the database's maintainer: it holds the
    /// advisory lock [`MAINTAINER_LOCK_KEY`](crate::runtime::MAINTAINER_LOCK_KEY)
    /// (see [`MaintainerConfig`](crate::runtime::MaintainerConfig)).
    /// Always false for a runtime started without
    /// [`RuntimeBuilder::maintainer`](crate::RuntimeBuilder::maintainer) or
    /// [`RuntimeBuilder::retention`](crate::RuntimeBuilder::retention).
    pub maintainer: bool,
}

impl Health {
    /// Whether every listener is listening (true in poll-only mode). A
    /// listener whose notifications are not delivered
    /// ([`ListenerState::NotDelivering`]) is not.
    ///
    /// ```
    /// use pgwake::{Health, ListenerHealth, ListenerState, TaskKind};
    /// use std::time::Duration;
    /// let mut health = Health::default();
    /// health.listeners.push(ListenerHealth::new("activity_tasks", TaskKind::Activity, ListenerState::Listening));
    /// assert!(health.all_listening());
    /// let retry_in = Duration::from_millis(100);
    /// health.listeners[0].state = ListenerState::Backoff { attempt: 1, retry_in };
    /// assert!(!health.all_listening());
    /// health.listeners[0].state = ListenerState::NotDelivering; // behind a transaction pooler
    /// assert!(!health.all_listening());
    /// health.listeners[0].state = ListenerState::Disabled; // poll-only mode
    /// assert!(health.all_listening());
    /// ```
    pub fn all_listening(&self) -> bool {
        self.listeners
            .iter()
            .all(|l| matches!(l.state, ListenerState::Listening | ListenerState::Disabled))
    }

    /// Workers that make no progress: see [`WorkerHealth::stuck`].
    ///
    /// ```
    /// # fn example(runtime: pgwake::RuntimeHandle) {
    /// let health = runtime.health();
    /// if health.all_listening() && health.stuck_workers().next().is_none() {
    ///     println!("healthy");
    /// }
    /// # }
    /// ```
    pub fn stuck_workers(&self) -> impl Iterator<Item = &WorkerHealth> {
        self.workers.iter().filter(|w| w.stuck)
    }

    /// The counters of `queue` for `kind`, zero if it saw no activity.
    ///
    /// ```
    /// use pgwake::{Health, QueueCounters, TaskKind};
    /// let mut health = Health::default();
    /// let mut counters = QueueCounters::default();
    /// (counters.claimed, counters.completed) = (3, 2);
    /// health.queues.insert("activity:emails".to_string(), counters.clone());
    /// assert_eq!(health.counters(TaskKind::Activity, "emails"), counters);
    /// assert_eq!(health.counters(TaskKind::Workflow, "emails"), QueueCounters::default());
    /// ```
    pub fn counters(&self, kind: TaskKind, queue: &str) -> QueueCounters {
        self.queues
            .get(&counter_key(kind, queue))
            .cloned()
            .unwrap_or_default()
    }
}

pub(crate) fn counter_key(kind: TaskKind, queue: &str) -> String {
    let prefix = match kind {
        TaskKind::Workflow => "workflow",
        TaskKind::Activity => "activity",
    };
    format!("{prefix}:{queue}")
}

#[derive(Debug)]
struct ListenerEntry {
    channel: String,
    state: ListenerState,
    since: Instant,
    /// When it last stopped listening (or started, if it never listened).
    down_since: Option<Instant>,
    reconnects: u64,
    ever_listened: bool,
    listened_at: Option<Instant>,
}

/// What a worker last reported; times are turned into durations when read.
#[derive(Debug, Clone)]
pub(crate) struct WorkerEntry {
    pub(crate) kind: TaskKind,
    pub(crate) queues: Arc<[String]>,
    pub(crate) concurrency: usize,
    pub(crate) slots_used: usize,
    pub(crate) claiming_since: Option<Instant>,
    pub(crate) recording_since: Option<Instant>,
    pub(crate) failing_since: Option<Instant>,
    pub(crate) stopped: bool,
    /// Past this, a claim or recording counts as stuck.
    pub(crate) stuck_after: Duration,
}

#[derive(Debug, Default)]
struct State {
    listeners: BTreeMap<TaskKind, ListenerEntry>,
    queues: BTreeMap<String, QueueCounters>,
    workers: BTreeMap<String, WorkerEntry>,
    maintainer: bool,
}

/// The shared, updatable health (cheap to clone).
#[derive(Debug, Clone, Default)]
pub(crate) struct HealthBoard(Arc<Mutex<State>>);

impl HealthBoard {
    pub(crate) fn set_listener(&self, kind: TaskKind, channel: &str, state: ListenerState) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = guard
            .listeners
            .entry(kind)
            .or_insert_with(|| ListenerEntry {
                channel: channel.to_string(),
                state: ListenerState::Connecting,
                since: Instant::now(),
                down_since: Some(Instant::now()),
                reconnects: 0,
                ever_listened: false,
                listened_at: None,
            });
        if entry.state != state {
            if state == ListenerState::Listening {
                if entry.ever_listened {
                    entry.reconnects += 1;
                }
                entry.ever_listened = true;
                entry.down_since = None;
            } else if state == ListenerState::Disabled {
                entry.down_since = None;
            } else if entry.down_since.is_none() {
                entry.down_since = Some(Instant::now());
            }
            entry.state = state;
            entry.since = Instant::now();
        }
    }

    /// Records that `kind`'s listener's `LISTEN` succeeded just now.
    pub(crate) fn listen_succeeded(&self, kind: TaskKind) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = guard.listeners.get_mut(&kind) {
            entry.listened_at = Some(Instant::now());
        }
    }

    /// Whether `kind`'s listener is listening, which picks its workers'
    /// fallback interval: not while connecting, backing off, or finding its
    /// notifications not delivered.
    pub(crate) fn listening(&self, kind: TaskKind) -> bool {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard
            .listeners
            .get(&kind)
            .is_some_and(|l| l.state == ListenerState::Listening)
    }

    pub(crate) fn count(
        &self,
        kind: TaskKind,
        queues: &[crate::Queue],
        update: impl Fn(&mut QueueCounters),
    ) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for queue in queues {
            update(
                guard
                    .queues
                    .entry(counter_key(kind, queue.as_str()))
                    .or_default(),
            );
        }
    }

    /// Records a worker's state (replacing what it reported before).
    pub(crate) fn set_worker(&self, worker: &str, entry: WorkerEntry) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.workers.insert(worker.to_string(), entry);
    }

    /// Records whether this process is the maintainer now.
    pub(crate) fn set_maintainer(&self, maintainer: bool) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.maintainer = maintainer;
    }

    pub(crate) fn snapshot(&self) -> Health {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Health {
            listeners: guard
                .listeners
                .iter()
                .map(|(kind, l)| ListenerHealth {
                    channel: l.channel.clone(),
                    kind: *kind,
                    state: l.state.clone(),
                    for_how_long: l.since.elapsed(),
                    not_listening_for: l.down_since.map(|at| at.elapsed()),
                    reconnects: l.reconnects,
                    last_listen_ago: l.listened_at.map(|at| at.elapsed()),
                })
                .collect(),
            queues: guard.queues.clone(),
            maintainer: guard.maintainer,
            workers: guard
                .workers
                .iter()
                .map(|(worker, w)| {
                    let claiming_for = w.claiming_since.map(|at| at.elapsed());
                    let recording_for = w.recording_since.map(|at| at.elapsed());
                    let failing_for = w.failing_since.map(|at| at.elapsed());
                    let stuck = claiming_for
                        .into_iter()
                        .chain(recording_for)
                        .chain(failing_for)
                        .any(|running| running > w.stuck_after);
                    WorkerHealth {
                        worker: worker.clone(),
                        kind: w.kind,
                        queues: w.queues.to_vec(),
                        slots_used: w.slots_used,
                        concurrency: w.concurrency,
                        claiming_for,
                        recording_for,
                        failing_for,
                        stopped: w.stopped,
                        stuck,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn activity_listener(board: &HealthBoard) -> ListenerHealth {
        board
            .snapshot()
            .listeners
            .into_iter()
            .find(|l| l.kind == TaskKind::Activity)
            .unwrap()
    }

    #[test]
    fn a_listener_whose_notifications_are_not_delivered_is_not_listening() {
        let board = HealthBoard::default();
        board.set_listener(
            TaskKind::Activity,
            "activity_tasks",
            ListenerState::Connecting,
        );
        board.set_listener(
            TaskKind::Activity,
            "activity_tasks",
            ListenerState::NotDelivering,
        );
        assert!(!board.listening(TaskKind::Activity));
        assert!(!board.snapshot().all_listening());
        let listener = activity_listener(&board);
        assert_eq!(listener.state, ListenerState::NotDelivering);
        assert!(
            listener.not_listening_for.is_some(),
            "its grace period runs"
        );

        // A probe came back: listening, and that is no reconnect.
        board.set_listener(
            TaskKind::Activity,
            "activity_tasks",
            ListenerState::Listening,
        );
        assert!(board.listening(TaskKind::Activity));
        let listener = activity_listener(&board);
        assert_eq!(listener.not_listening_for, None);
        assert_eq!(listener.reconnects, 0);
    }
}
