//! Registering workflows and activities by name, with typed input and
//! output, and the workers that serve every registered name.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::context::WorkflowContext;
use super::error::{ActivityError, ReplayError, StoredText, WorkflowError};
use super::executor::{self, Execution, ExecutionCache, WorkflowFn};
use super::retry::Attempt;
use crate::runtime::{ActivityWorker, WorkflowWorker};
use crate::store::{ActivityTask, InstanceRef, WorkflowCompletion, WorkflowTask};

/// The workflows a worker runs, by name.
///
/// ```
/// use pgwake::workflow::{WorkflowContext, WorkflowError, Workflows};
///
/// async fn greet(ctx: WorkflowContext, name: String) -> Result<String, WorkflowError> {
///     let greeting: String = ctx.activity("greeting", &name).await?;
///     Ok(greeting)
/// }
/// let worker = Workflows::new().register("greet", greet).worker(["greetings"]);
/// ```
#[derive(Clone)]
pub struct Workflows {
    pub(super) registered: HashMap<String, WorkflowFn>,
    cache_size: usize,
}

impl Default for Workflows {
    fn default() -> Self {
        Self {
            registered: HashMap::new(),
            cache_size: DEFAULT_CACHE_SIZE,
        }
    }
}

/// How many running executions a worker keeps in memory by default
/// ([`Workflows::cache_size`]).
pub const DEFAULT_CACHE_SIZE: usize = 1_000;

/// How many workflow tasks a worker built by [`Workflows::worker`] runs at
/// once unless told otherwise: a task is a short, deterministic step of
/// code that mostly waits for its decision's commit, so one slot would
/// leave the worker waiting on round trips (peers run hundreds by
/// default). Change it with [`WorkflowWorker::concurrency`](crate::WorkflowWorker::concurrency).
pub const DEFAULT_WORKFLOW_CONCURRENCY: usize = 16;

/// Tells the caches of different [`Workflows::worker`] calls apart.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The executions kept by the workers running on this thread, per
    /// [`Workflows::worker`] call. Per thread because a running workflow is
    /// not `Send`: a worker's tasks run on its arbiter's thread, so every
    /// task of that worker finds the cache there.
    static WORKER_CACHES: RefCell<HashMap<u64, ExecutionCache>> = RefCell::new(HashMap::new());
}

impl std::fmt::Debug for Workflows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workflows")
            .field("names", &sorted_names(&self.registered))
            .finish()
    }
}

impl Workflows {
    /// None registered.
    ///
    /// ```
    /// let workflows = pgwake::workflow::Workflows::new();
    /// assert!(workflows.names().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `workflow` as `name` (replacing one of the same name).
    /// Its input is the start event's attributes, deserialized as `I`; an
    /// input that does not deserialize fails the execution with an error
    /// of kind `"bad_input"`.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, Workflows};
    /// let workflows = Workflows::new().register("double", |_: WorkflowContext, n: u64| async move {
    ///     Ok::<_, WorkflowError>(n * 2)
    /// });
    /// assert_eq!(workflows.names(), ["double"]);
    /// ```
    pub fn register<I, O, F, Fut>(mut self, name: &str, workflow: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(WorkflowContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, WorkflowError>> + 'static,
    {
        let erased: WorkflowFn = erase("workflow", name, workflow);
        self.registered.insert(name.to_string(), erased);
        self
    }

    /// The registered names, sorted.
    ///
    /// ```
    /// assert!(pgwake::workflow::Workflows::new().names().is_empty());
    /// ```
    pub fn names(&self) -> Vec<String> {
        sorted_names(&self.registered)
    }

    /// Runs one workflow task: replays the workflow named in the instance's
    /// metadata (`{"workflow": "<name>"}`) over the task's history and new
    /// events, and returns its decision. An unregistered name gives the
    /// decision that fails the execution (kind `"unregistered"`). A history
    /// the code does not replay gives [`ReplayError`], and the task must not
    /// be applied. [`worker`](Self::worker) calls this for every task.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, workflows: pgwake::workflow::Workflows) -> Result<(), Box<dyn std::error::Error>> {
    /// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
    /// if let Some(task) = store.claim_workflow_task(&worker, &queues, std::time::Duration::from_secs(60)).await? {
    ///     match workflows.execute(&task) {
    ///         Ok(decision) => store.complete_workflow_task(&task, decision).await?,
    ///         Err(replay) => eprintln!("not applied: {replay}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ReplayError`] when the code and the history disagree.
    pub fn execute(&self, task: &WorkflowTask) -> Result<WorkflowCompletion, ReplayError> {
        match self.workflow_of(task) {
            Ok(workflow) => executor::execute(workflow, task),
            Err(unregistered) => Ok(executor::failing(&unregistered)),
        }
    }

    /// The registered workflow `task`'s instance runs, or the error that
    /// fails an instance whose workflow is not registered.
    fn workflow_of(&self, task: &WorkflowTask) -> Result<&WorkflowFn, WorkflowError> {
        let name = task
            .metadata
            .as_ref()
            .and_then(|m| m.get("workflow"))
            .and_then(Value::as_str);
        name.and_then(|name| self.registered.get(name))
            .ok_or_else(|| {
                let message = match name {
                    Some(name) => format!("no workflow named {name:?} is registered"),
                    None => "the instance's metadata names no workflow \
                             (expected {\"workflow\": \"<name>\"})"
                        .to_string(),
                };
                WorkflowError::new("unregistered", message).non_retryable()
            })
    }

    /// [`execute`](Self::execute), resuming the execution `cache` kept from
    /// this instance's previous task when it can, and keeping it again.
    fn execute_with_cache(
        &self,
        cache: &mut dyn FnMut(CacheOp<'_>) -> Option<Execution>,
        task: &WorkflowTask,
    ) -> Result<WorkflowCompletion, ReplayError> {
        let workflow = match self.workflow_of(task) {
            Ok(workflow) => workflow,
            Err(unregistered) => return Ok(executor::failing(&unregistered)),
        };
        let id = &task.instance.instance_id;
        let cached = cache(CacheOp::Take(id));
        let (decision, execution) = executor::execute_cached(workflow, task, cached)?;
        if let Some(execution) = execution {
            cache(CacheOp::Put(id, execution));
        }
        Ok(decision)
    }

    /// How many running executions each of this registry's workers keeps in
    /// memory (least recently used first out; 1,000 by default, 0 for
    /// none). A kept execution's next task applies only its new events
    /// instead of replaying its whole history: a step costs the same at the
    /// 1,000th event as at the 10th. A task that does not follow the kept
    /// state (another worker ran the instance meanwhile, a decision was not
    /// applied) replays the history as usual. The workers of one arbiter
    /// share their cache, so it serves them whichever claims the task; for
    /// workers spread over processes, [`StoreOptions::sticky_timeout`](crate::StoreOptions)
    /// keeps an instance's next task with the worker that ran the last one.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, Workflows};
    /// let worker = Workflows::new()
    ///     .register("noop", |_: WorkflowContext, _: ()| async { Ok::<_, WorkflowError>(()) })
    ///     .cache_size(10_000)
    ///     .worker(["orders"]);
    /// ```
    pub fn cache_size(mut self, executions: usize) -> Self {
        self.cache_size = executions;
        self
    }

    /// An [`Executor`] over these workflows keeping up to `capacity`
    /// running executions: [`execute`](Self::execute) with a cache, for
    /// code that claims and completes workflow tasks itself.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, workflows: pgwake::workflow::Workflows) -> Result<(), Box<dyn std::error::Error>> {
    /// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
    /// let mut executor = workflows.executor(100);
    /// while let Some(task) = store.claim_workflow_task(&worker, &queues, std::time::Duration::from_secs(60)).await? {
    ///     let decision = executor.execute(&task)?;
    ///     store.complete_workflow_task(&task, decision).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn executor(&self, capacity: usize) -> Executor {
        Executor {
            workflows: self.clone(),
            cache: ExecutionCache::new(capacity),
        }
    }

    /// A worker for `queues` running every registered workflow,
    /// [`DEFAULT_WORKFLOW_CONCURRENCY`] tasks at once. A task whose history
    /// does not replay fails (it is retried, not applied), with the
    /// [`ReplayError`] logged.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, Workflows};
    /// let worker = Workflows::new()
    ///     .register("noop", |_: WorkflowContext, _: ()| async { Ok::<_, WorkflowError>(()) })
    ///     .worker(["orders"])
    ///     .concurrency(4);
    /// ```
    pub fn worker<Q, S>(&self, queues: Q) -> WorkflowWorker
    where
        Q: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let workflows = Arc::new(self.clone());
        let cache_id = NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed);
        let forget = ForgetCache(cache_id);
        WorkflowWorker::new(queues, move |task: WorkflowTask| {
            // Held by the handler: the worker's cache goes with it.
            let _ = &forget;
            let workflows = workflows.clone();
            // Run inside the future, where the worker catches a panic of
            // the workflow's code.
            async move {
                let capacity = workflows.cache_size;
                // The thread's cache is borrowed only to take or put one
                // execution, never while the workflow's code runs.
                let mut cache = |op: CacheOp<'_>| {
                    WORKER_CACHES.with(|caches| {
                        let mut caches = caches.borrow_mut();
                        let cache = caches
                            .entry(cache_id)
                            .or_insert_with(|| ExecutionCache::new(capacity));
                        match op {
                            CacheOp::Take(id) => cache.take(id),
                            CacheOp::Put(id, execution) => {
                                cache.put(id, execution);
                                None
                            }
                        }
                    })
                };
                workflows.execute_with_cache(&mut cache, &task).map_err(|err| {
                    tracing::error!(instance_id = %task.instance.instance_id, error = %err, "workflow task does not replay");
                    err
                })
            }
        })
        .concurrency(DEFAULT_WORKFLOW_CONCURRENCY)
    }
}

/// The names a registry holds, sorted.
fn sorted_names<V>(registered: &HashMap<String, V>) -> Vec<String> {
    let mut names: Vec<String> = registered.keys().cloned().collect();
    names.sort();
    names
}

/// The error a registered function fails with when the JSON it is given,
/// or its result, does not fit its types: not worth retrying.
trait TypeMismatch {
    fn mismatch(kind: &str, message: String) -> Self;
}

impl TypeMismatch for WorkflowError {
    fn mismatch(kind: &str, message: String) -> Self {
        Self::new(kind, message).non_retryable()
    }
}

impl TypeMismatch for ActivityError {
    fn mismatch(kind: &str, message: String) -> Self {
        Self::new(kind, message).non_retryable()
    }
}

/// A registered function over JSON: `function` with its input
/// deserialized as `I` (else an error of kind `"bad_input"`) and its output
/// serialized (else `"bad_output"`). `what` and `name` say whose, in those
/// errors.
#[allow(clippy::type_complexity)]
fn erase<C, I, O, E, F, Fut>(
    what: &'static str,
    name: &str,
    function: F,
) -> Arc<dyn Fn(C, Value) -> LocalBoxFuture<'static, Result<Value, E>> + Send + Sync>
where
    C: 'static,
    I: DeserializeOwned + 'static,
    O: Serialize + 'static,
    E: TypeMismatch + 'static,
    F: Fn(C, I) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, E>> + 'static,
{
    let name = name.to_string();
    Arc::new(move |ctx, input: Value| {
        let input = match I::deserialize(input) {
            Ok(input) => input,
            Err(err) => {
                let message = format!("the input of {what} {name:?} does not deserialize: {err}");
                return futures::future::ready(Err(E::mismatch("bad_input", message)))
                    .boxed_local();
            }
        };
        let name = name.clone();
        function(ctx, input)
            .map(move |result| {
                serde_json::to_value(result?).map_err(|err| {
                    let message =
                        format!("the result of {what} {name:?} does not serialize: {err}");
                    E::mismatch("bad_output", message)
                })
            })
            .boxed_local()
    })
}

/// Drops a worker's cache from the thread it ran on when the worker's
/// handler is dropped (a runtime stopped in a process that goes on).
struct ForgetCache(u64);

impl Drop for ForgetCache {
    fn drop(&mut self) {
        // Nothing to do on another thread, or while the thread ends.
        let _ = WORKER_CACHES.try_with(|caches| {
            if let Ok(mut caches) = caches.try_borrow_mut() {
                caches.remove(&self.0);
            }
        });
    }
}

/// What [`Workflows::execute_with_cache`] asks of a cache.
enum CacheOp<'a> {
    Take(&'a str),
    Put(&'a str, Execution),
}

/// Runs workflow tasks as [`Workflows::execute`] does, keeping running
/// executions in memory between their tasks (see
/// [`Workflows::cache_size`]). Not `Send`: it holds the workflows' futures.
/// From [`Workflows::executor`].
pub struct Executor {
    workflows: Workflows,
    cache: ExecutionCache,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("workflows", &self.workflows)
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl Executor {
    /// Runs one workflow task: resumes the kept execution of its instance
    /// when the task follows it, else replays the whole history. The same
    /// decision as [`Workflows::execute`], at the cost of the new events.
    ///
    /// ```no_run
    /// # fn f(task: pgwake::WorkflowTask, workflows: pgwake::workflow::Workflows) -> Result<(), pgwake::workflow::ReplayError> {
    /// let mut executor = workflows.executor(100);
    /// let decision = executor.execute(&task)?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ReplayError`] when the code and the history disagree.
    pub fn execute(&mut self, task: &WorkflowTask) -> Result<WorkflowCompletion, ReplayError> {
        let cache = &mut self.cache;
        let mut op = |op: CacheOp<'_>| match op {
            CacheOp::Take(id) => cache.take(id),
            CacheOp::Put(id, execution) => {
                cache.put(id, execution);
                None
            }
        };
        self.workflows.execute_with_cache(&mut op, task)
    }

    /// How many running executions it keeps now.
    ///
    /// ```
    /// let executor = pgwake::workflow::Workflows::new().executor(10);
    /// assert_eq!(executor.cached(), 0);
    /// ```
    pub fn cached(&self) -> usize {
        self.cache.len()
    }
}

/// What an activity knows of its run.
///
/// ```
/// use pgwake::workflow::{ActivityContext, ActivityError};
/// async fn charge(ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
///     Ok(format!("{} charged {cents} (attempt {})", ctx.activity_id(), ctx.attempt()))
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ActivityContext {
    activity_id: String,
    instance: InstanceRef,
    attempt: u32,
    timeout: Option<Duration>,
}

impl ActivityContext {
    /// The context of `task`, and the activity's own input (the attempt's
    /// number travels with the scheduled input; a plain input is attempt 1).
    fn of_task(task: &ActivityTask) -> (Self, Value) {
        let scheduled = Attempt::from_scheduled(task.input.clone());
        let ctx = Self {
            activity_id: task.activity_id.clone(),
            instance: task.instance.clone(),
            attempt: scheduled.number,
            timeout: scheduled.timeout,
        };
        (ctx, scheduled.input)
    }

    /// How long this attempt may run
    /// ([`ActivityOptions::start_to_close_timeout`](super::ActivityOptions::start_to_close_timeout)),
    /// if the workflow set a limit: past it, the worker stops waiting for
    /// the handler (dropping its future) and records a failure of kind
    /// `"timeout"`.
    ///
    /// ```
    /// fn budget(ctx: &pgwake::workflow::ActivityContext) -> Option<std::time::Duration> { ctx.start_to_close_timeout() }
    /// ```
    pub fn start_to_close_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Which attempt this is: 1, then 2, 3 ... when the workflow's
    /// [`RetryPolicy`](super::RetryPolicy) retries it.
    ///
    /// ```
    /// fn first(ctx: &pgwake::workflow::ActivityContext) -> bool { ctx.attempt() == 1 }
    /// ```
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The activity's id (its `ActivityScheduled` event id): the same on
    /// every delivery of this activity, a good idempotency key.
    ///
    /// ```
    /// fn key(ctx: &pgwake::workflow::ActivityContext) -> String { ctx.activity_id().to_string() }
    /// ```
    pub fn activity_id(&self) -> &str {
        &self.activity_id
    }

    /// The execution that scheduled it.
    ///
    /// ```
    /// fn owner(ctx: &pgwake::workflow::ActivityContext) -> &str { &ctx.instance().instance_id }
    /// ```
    pub fn instance(&self) -> &InstanceRef {
        &self.instance
    }
}

type ActivityFn = Arc<
    dyn Fn(ActivityContext, Value) -> LocalBoxFuture<'static, Result<Value, ActivityError>>
        + Send
        + Sync,
>;

/// The activities a worker runs, by name.
///
/// ```
/// use pgwake::workflow::{ActivityContext, ActivityError, Activities};
/// async fn greeting(_: ActivityContext, name: String) -> Result<String, ActivityError> {
///     Ok(format!("hello, {name}"))
/// }
/// let worker = Activities::new().register("greeting", greeting).worker(["greetings"]);
/// ```
#[derive(Clone, Default)]
pub struct Activities {
    registered: HashMap<String, ActivityFn>,
}

impl std::fmt::Debug for Activities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Activities")
            .field("names", &sorted_names(&self.registered))
            .finish()
    }
}

impl Activities {
    /// None registered.
    ///
    /// ```
    /// assert!(pgwake::workflow::Activities::new().names().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `activity` as `name` (replacing one of the same name). An
    /// input that does not deserialize as `I` fails the activity with an
    /// error of kind `"bad_input"`.
    ///
    /// ```
    /// use pgwake::workflow::{ActivityContext, ActivityError, Activities};
    /// let activities = Activities::new().register("add", |_: ActivityContext, (a, b): (i64, i64)| async move {
    ///     Ok::<_, ActivityError>(a + b)
    /// });
    /// assert_eq!(activities.names(), ["add"]);
    /// ```
    pub fn register<I, O, F, Fut>(mut self, name: &str, activity: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(ActivityContext, I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, ActivityError>> + 'static,
    {
        let erased: ActivityFn = erase("activity", name, activity);
        self.registered.insert(name.to_string(), erased);
        self
    }

    /// The registered names, sorted.
    ///
    /// ```
    /// assert!(pgwake::workflow::Activities::new().names().is_empty());
    /// ```
    pub fn names(&self) -> Vec<String> {
        sorted_names(&self.registered)
    }

    /// A worker for `queues` running every registered activity. An
    /// unregistered name fails the activity (kind `"unregistered"`); every
    /// failure is recorded as its error's JSON, which the workflow reads
    /// back typed.
    ///
    /// ```
    /// use pgwake::workflow::{ActivityContext, ActivityError, Activities};
    /// let worker = Activities::new()
    ///     .register("noop", |_: ActivityContext, _: ()| async { Ok::<_, ActivityError>(()) })
    ///     .worker(["jobs"])
    ///     .concurrency(8);
    /// ```
    pub fn worker<Q, S>(&self, queues: Q) -> ActivityWorker
    where
        Q: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let activities = self.clone();
        ActivityWorker::new(queues, move |task: ActivityTask| {
            let (ctx, input) = ActivityContext::of_task(&task);
            // The worker's `activity` span is current here; only the
            // registry knows the attempt's number.
            tracing::Span::current().record("attempt", ctx.attempt);
            let timeout = ctx.timeout;
            let run = match activities.registered.get(&task.name) {
                Some(activity) => activity(ctx, input),
                None => {
                    let err = ActivityError::new(
                        "unregistered",
                        format!("no activity named {:?} is registered", task.name),
                    )
                    .non_retryable();
                    futures::future::ready(Err(err)).boxed_local()
                }
            };
            let name = task.name.clone();
            async move {
                let result = match timeout {
                    None => run.await,
                    Some(limit) => match tokio::time::timeout(limit, run).await {
                        Ok(result) => result,
                        Err(_) => Err(ActivityError::new(
                            "timeout",
                            format!(
                                "activity {name:?} did not finish within its start-to-close \
                                 timeout of {limit:?}"
                            ),
                        )),
                    },
                };
                result.map_err(|err| StoredText(err.to_stored()))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use serde_json::json;

    use super::*;
    use crate::store::{Lease, Queue, WorkerId};

    fn task(input: Value) -> ActivityTask {
        ActivityTask {
            row_id: 1,
            activity_id: "a-1".into(),
            instance: InstanceRef {
                instance_id: "i".into(),
                execution_id: "e".into(),
            },
            queue: Queue::default(),
            schedule_event_id: 2,
            name: "charge".into(),
            input,
            enqueued_at: SystemTime::UNIX_EPOCH,
            lease: Lease::new(WorkerId::unique("test"), SystemTime::now(), 1),
            trace: Default::default(),
        }
    }

    #[test]
    fn the_activity_sees_the_attempt_scheduled_and_its_own_input() {
        let scheduled = Attempt {
            input: json!(500),
            number: 3,
            timeout: Some(Duration::from_secs(9)),
        };
        let (ctx, input) = ActivityContext::of_task(&task(scheduled.scheduled_input()));
        assert_eq!(ctx.start_to_close_timeout(), Some(Duration::from_secs(9)));
        assert_eq!(ctx.attempt(), 3);
        assert_eq!(input, json!(500));
    }

    #[test]
    fn an_input_without_attempt_is_the_first_attempt() {
        let (ctx, input) = ActivityContext::of_task(&task(json!({"cents": 500})));
        assert_eq!(ctx.attempt(), 1);
        assert_eq!(input, json!({"cents": 500}));
    }

    #[test]
    fn a_dropped_workers_cache_leaves_its_thread() {
        let id = NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed);
        WORKER_CACHES.with(|c| c.borrow_mut().insert(id, ExecutionCache::new(1)));
        drop(ForgetCache(id));
        assert!(WORKER_CACHES.with(|c| !c.borrow().contains_key(&id)));
    }
}
