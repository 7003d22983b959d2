//! What users register: activity and workflow handlers, and the workers
//! that run them (queues, concurrency, lease).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use serde_json::Value;

use crate::error::BuildError;
use crate::store::{ActivityTask, Queue, WorkflowCompletion, WorkflowTask};

/// What a handler may fail with: anything that displays.
///
/// ```
/// use pgwake::runtime::HandlerError;
/// async fn send(task: pgwake::ActivityTask) -> Result<serde_json::Value, HandlerError> {
///     let to = task.input["to"].as_str().ok_or("no recipient given")?;
///     Ok(serde_json::json!({ "sent_to": to }))
/// }
/// let worker = pgwake::ActivityWorker::new(["emails"], send);
/// ```
pub type HandlerError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) type ActivityFn =
    Arc<dyn Fn(ActivityTask) -> LocalBoxFuture<'static, Result<Value, HandlerError>> + Send + Sync>;
pub(crate) type WorkflowFn = Arc<
    dyn Fn(WorkflowTask) -> LocalBoxFuture<'static, Result<WorkflowCompletion, HandlerError>>
        + Send
        + Sync,
>;

/// The default activity lease (go-workflows' default).
///
/// ```
/// use pgwake::runtime::DEFAULT_ACTIVITY_LEASE;
/// assert_eq!(DEFAULT_ACTIVITY_LEASE, std::time::Duration::from_secs(120));
/// // A slow activity: five times as long without a heartbeat.
/// let worker = pgwake::ActivityWorker::new(["reports"], |task: pgwake::ActivityTask| async move {
///     Ok::<_, String>(task.input)
/// })
/// .lease(DEFAULT_ACTIVITY_LEASE * 5);
/// ```
pub const DEFAULT_ACTIVITY_LEASE: Duration = Duration::from_secs(120);
/// The default workflow-task lease (go-workflows' default).
///
/// ```
/// use pgwake::runtime::DEFAULT_WORKFLOW_LEASE;
/// assert_eq!(DEFAULT_WORKFLOW_LEASE, std::time::Duration::from_secs(60));
/// ```
pub const DEFAULT_WORKFLOW_LEASE: Duration = Duration::from_secs(60);

/// Activity workers: run `handler` for each activity of `queues`, up to
/// `concurrency` at a time.
///
/// The handler gets the task and returns its result as JSON, or an error
/// (recorded as `ActivityFailed`). A handler that panics is caught and
/// recorded as a failure too; the worker lives on. While it runs, the
/// worker extends its lease every third of the lease.
///
/// ```
/// use pgwake::ActivityWorker;
/// let worker = ActivityWorker::new(["emails"], |task: pgwake::ActivityTask| async move {
///     Ok::<_, String>(serde_json::json!({ "sent_to": task.input["to"] }))
/// })
/// .concurrency(16);
/// ```
#[derive(Clone)]
pub struct ActivityWorker {
    pub(crate) queues: Vec<String>,
    pub(crate) handler: ActivityFn,
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
}

impl std::fmt::Debug for ActivityWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityWorker")
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl ActivityWorker {
    /// A worker for `queues` running `handler`, concurrency 1, lease 120 s.
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker};
    /// let worker = ActivityWorker::new(["emails", "sms"], |task: ActivityTask| async move {
    ///     println!("{} on {}", task.name, task.queue);
    ///     Ok::<_, String>(serde_json::json!({ "delivered": true }))
    /// });
    /// ```
    pub fn new<I, S, F, Fut, E>(queues: I, handler: F) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        F: Fn(ActivityTask) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, E>> + 'static,
        E: Into<HandlerError>,
    {
        let handler: ActivityFn =
            Arc::new(move |task| handler(task).map(|r| r.map_err(Into::into)).boxed_local());
        Self {
            queues: queues.into_iter().map(Into::into).collect(),
            handler,
            concurrency: 1,
            lease: DEFAULT_ACTIVITY_LEASE,
        }
    }

    /// A worker for `queues` running a synchronous, CPU-bound or blocking
    /// `handler` on tokio's blocking thread pool, off the actix arbiter: the
    /// arbiter goes on routing wake-ups, claiming and heartbeating every
    /// other task of the process while the handler computes. Use it for
    /// hashing, compression, image work or a blocking client library; an
    /// `async` handler that awaits I/O belongs in [`new`](Self::new).
    ///
    /// A panic in the handler is caught and recorded as a failure, as for
    /// [`new`](Self::new). The lease is kept alive while it runs.
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker};
    /// let worker = ActivityWorker::blocking(["thumbnails"], |task: ActivityTask| {
    ///     let pixels: u64 = (0..1_000_000u64).sum(); // stands for real CPU work
    ///     Ok::<_, String>(serde_json::json!({ "input": task.input, "pixels": pixels }))
    /// })
    /// .concurrency(2);
    /// ```
    pub fn blocking<I, S, F, E>(queues: I, handler: F) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        F: Fn(ActivityTask) -> Result<Value, E> + Send + Sync + 'static,
        E: Into<HandlerError> + 'static,
    {
        let handler = Arc::new(handler);
        let handler: ActivityFn = Arc::new(move |task| {
            let handler = handler.clone();
            async move {
                match tokio::task::spawn_blocking(move || handler(task).map_err(Into::into)).await {
                    Ok(result) => result,
                    // Re-raised here, where the worker catches handler panics.
                    Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
                    Err(join) => Err(format!("blocking handler did not finish: {join}").into()),
                }
            }
            .boxed_local()
        });
        Self {
            queues: queues.into_iter().map(Into::into).collect(),
            handler,
            concurrency: 1,
            lease: DEFAULT_ACTIVITY_LEASE,
        }
    }

    /// How many activities it runs at once (claimed in one batch).
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig};
    /// let worker = ActivityWorker::new(["emails"], |task: ActivityTask| async move {
    ///     Ok::<_, String>(task.input)
    /// });
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://localhost/app"));
    /// // 1 to 10000, checked by `validate` (and `start`).
    /// assert!(builder.activity_worker(worker.concurrency(0)).validate().is_err());
    /// ```
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long a claimed activity stays reserved without a heartbeat.
    ///
    /// ```
    /// use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig};
    /// use std::time::Duration;
    /// let worker = ActivityWorker::new(["reports"], |task: ActivityTask| async move {
    ///     Ok::<_, String>(task.input)
    /// });
    /// let builder = Runtime::builder(RuntimeConfig::new("postgres://localhost/app"));
    /// // 1 second to 24 hours, checked by `validate` (and `start`).
    /// assert!(builder.activity_worker(worker.lease(Duration::from_secs(600))).validate().is_ok());
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

/// Workflow workers: run `handler` for each workflow task of `queues`.
///
/// The handler gets the instance, its new events and its history position,
/// and returns the decision ([`WorkflowCompletion`]) that the worker applies
/// through the store. An error or a panic fails the task without applying
/// anything ([`Store::fail_workflow_task`](crate::Store::fail_workflow_task)):
/// it is retried after 1 s, doubling to at most 5 min, and the instance
/// shows the attempts and the last error until a task succeeds.
///
/// ```
/// use pgwake::{WorkflowCompletion, WorkflowOutcome, WorkflowWorker};
/// let worker = WorkflowWorker::new(["orders"], |task: pgwake::WorkflowTask| async move {
///     Ok::<_, String>(WorkflowCompletion::default().finish(WorkflowOutcome::Completed(serde_json::json!(null))))
/// });
/// ```
#[derive(Clone)]
pub struct WorkflowWorker {
    pub(crate) queues: Vec<String>,
    pub(crate) handler: WorkflowFn,
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
}

impl std::fmt::Debug for WorkflowWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowWorker")
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl WorkflowWorker {
    /// A worker for `queues` running `handler`, concurrency 1, lease 60 s.
    ///
    /// ```
    /// use pgwake::{WorkflowCompletion, WorkflowOutcome, WorkflowTask, WorkflowWorker};
    /// let worker = WorkflowWorker::new(["orders"], |task: WorkflowTask| async move {
    ///     println!("{}: {} new events", task.instance.instance_id, task.new_events.len());
    ///     let outcome = WorkflowOutcome::Completed(serde_json::json!("done"));
    ///     Ok::<_, String>(WorkflowCompletion::default().finish(outcome))
    /// });
    /// ```
    pub fn new<I, S, F, Fut, E>(queues: I, handler: F) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
        F: Fn(WorkflowTask) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<WorkflowCompletion, E>> + 'static,
        E: Into<HandlerError>,
    {
        let handler: WorkflowFn =
            Arc::new(move |task| handler(task).map(|r| r.map_err(Into::into)).boxed_local());
        Self {
            queues: queues.into_iter().map(Into::into).collect(),
            handler,
            concurrency: 1,
            lease: DEFAULT_WORKFLOW_LEASE,
        }
    }

    /// How many workflow tasks it runs at once.
    ///
    /// ```
    /// use pgwake::{WorkflowCompletion, WorkflowTask, WorkflowWorker};
    /// let worker = WorkflowWorker::new(["orders"], |_: WorkflowTask| async move {
    ///     Ok::<_, String>(WorkflowCompletion::default())
    /// })
    /// .concurrency(4);
    /// ```
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How long a claimed workflow task stays reserved without a heartbeat.
    ///
    /// ```
    /// use pgwake::{WorkflowCompletion, WorkflowTask, WorkflowWorker};
    /// let worker = WorkflowWorker::new(["orders"], |_: WorkflowTask| async move {
    ///     Ok::<_, String>(WorkflowCompletion::default())
    /// })
    /// .lease(std::time::Duration::from_secs(30));
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
}

/// Checks one worker's settings; `index` and `kind` name it in the error.
pub(crate) fn validate_worker(
    index: usize,
    kind: &'static str,
    queues: &[String],
    concurrency: usize,
    lease: Duration,
) -> Result<Vec<Queue>, BuildError> {
    let fail = |reason: String| BuildError::Worker {
        index,
        kind,
        reason,
    };
    let validated =
        crate::store::queues(queues.iter().cloned()).map_err(|e| fail(e.to_string()))?;
    if concurrency == 0 {
        return Err(fail("concurrency must be at least 1".into()));
    }
    if concurrency > 10_000 {
        return Err(fail("concurrency must be at most 10000".into()));
    }
    if lease < Duration::from_secs(1) || lease > Duration::from_secs(24 * 3600) {
        return Err(fail("lease must be between 1 second and 24 hours".into()));
    }
    Ok(validated)
}
