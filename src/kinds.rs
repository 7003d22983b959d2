//! The two kinds of task and the reasons a worker wakes: vocabulary shared
//! by every layer (configuration, store, metrics, runtime), so it lives
//! below all of them and imports nothing of the crate.

/// Which kind of task, and so which channel announces it.
///
/// ```
/// use pgwake::{RuntimeConfig, TaskKind};
/// let config = RuntimeConfig::new("postgres://postgres@localhost/app");
/// assert_eq!(config.channel(TaskKind::Workflow), "workflow_tasks");
/// assert_eq!(config.channel(TaskKind::Activity), "activity_tasks");
/// ```
// Exhaustive on purpose: go-workflows' schema has exactly these two kinds
// of task, one table and one channel each; a third would be a new schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    /// Workflow tasks: announced on `workflow_tasks`.
    Workflow,
    /// Activity tasks: announced on `activity_tasks`.
    Activity,
}

impl TaskKind {
    /// The channel name in the `public` schema.
    ///
    /// ```
    /// use pgwake::TaskKind;
    /// assert_eq!(TaskKind::Workflow.base_channel(), "workflow_tasks");
    /// assert_eq!(TaskKind::Activity.base_channel(), "activity_tasks");
    /// ```
    pub fn base_channel(self) -> &'static str {
        match self {
            TaskKind::Workflow => "workflow_tasks",
            TaskKind::Activity => "activity_tasks",
        }
    }
}

/// Why a worker is being woken.
///
/// ```
/// # use actix::prelude::*;
/// use pgwake::runtime::actors::{TaskAvailable, WakeReason};
/// # struct Mailer;
/// # impl Actor for Mailer { type Context = Context<Self>; }
/// impl Handler<TaskAvailable> for Mailer {
///     type Result = ();
///     fn handle(&mut self, msg: TaskAvailable, _: &mut Context<Self>) {
///         if msg.reason == WakeReason::Resync { println!("listener back: poll every queue"); }
///         // ... then claim through the store
///     }
/// }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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
