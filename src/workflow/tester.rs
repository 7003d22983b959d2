//! Unit-testing a workflow without a database: [`WorkflowTester`] runs the
//! real executor ([`Workflows::execute`]) task after task over an
//! in-memory history, playing the store's part (it numbers events as
//! [`Store::complete_workflow_task`](crate::Store::complete_workflow_task)
//! does), the activity workers' (mocks registered by name) and the clock's
//! (virtual: when nothing else can happen, it jumps to the earliest pending
//! timer, so a workflow that waits for days runs in microseconds). Every
//! task replays the whole history, as a worker does when its cache misses,
//! so non-determinism shows at the first task that replays it.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::{ActivityError, ReplayError, WorkflowError};
use super::registry::Workflows;
use super::retry::Attempt;
use crate::store::{
    Event, EventType, InstanceRef, Lease, Queue, WorkerId, WorkflowCompletion, WorkflowOutcome,
    WorkflowTask,
};

/// The most workflow tasks one [`WorkflowTester::run`] executes, unless
/// set otherwise with [`WorkflowTester::max_tasks`], before it gives up on a workflow that never ends (a loop of timers, say), with
/// [`TesterError::TaskLimit`].
///
/// ```
/// use pgwake::workflow::{TesterError, WorkflowContext, WorkflowError, WorkflowTester, Workflows};
/// let workflows = Workflows::new().register("forever", |ctx: WorkflowContext, _: ()| async move {
///     loop {
///         ctx.sleep(std::time::Duration::from_secs(60)).await?;
///     }
///     #[allow(unreachable_code)]
///     Ok::<(), WorkflowError>(())
/// });
/// let mut tester = WorkflowTester::new(&workflows, "forever");
/// assert!(matches!(tester.run::<()>(&()), Err(TesterError::TaskLimit(_))));
/// assert_eq!(tester.tasks(), pgwake::workflow::MAX_TESTER_TASKS);
/// ```
pub const MAX_TESTER_TASKS: usize = 1_000;

/// Where the virtual clock starts: 2026-01-01T00:00:00Z, so that
/// [`WorkflowContext::now`](super::WorkflowContext::now) is the same on every run.
const VIRTUAL_START: Duration = Duration::from_secs(1_767_225_600);

/// A mocked activity: its input and attempt number to its result.
type Mock = Box<dyn Fn(Value, u32) -> Result<Value, ActivityError>>;

/// A mocked sub-workflow: its input to its result.
type SubMock = Box<dyn Fn(Value) -> Result<Value, WorkflowError>>;

/// When a signal set up with [`WorkflowTester::signal_at`] or
/// [`WorkflowTester::signal_after_tasks`] is delivered.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// Once the virtual clock reaches this much time after the start.
    At(Duration),
    /// Once this many workflow tasks have completed.
    AfterTasks(usize),
}

#[derive(Debug, Clone)]
struct PlannedSignal {
    delivery: Delivery,
    name: String,
    payload: Value,
}

/// Why [`WorkflowTester::run`] returned no result.
///
/// ```
/// use pgwake::workflow::{TesterError, WorkflowError};
/// let err = TesterError::Failed(WorkflowError::new("declined", "card declined"));
/// assert_eq!(err.to_string(), "the workflow failed: declined: card declined");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TesterError {
    /// The workflow returned this error.
    #[error("the workflow failed: {0}")]
    Failed(WorkflowError),
    /// The executor could not replay the history: the workflow is not
    /// deterministic (or the history is inconsistent). The store would fail
    /// such a task without applying it, again on every retry.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The workflow scheduled an activity no mock was registered for.
    #[error("the workflow scheduled activity {name:?}, which has no mock: register one with WorkflowTester::on_activity")]
    UnmockedActivity {
        /// The activity's name.
        name: String,
    },
    /// The workflow waits for something that never comes: no activity,
    /// timer or signal is left to deliver.
    #[error("the workflow is stuck after {tasks} tasks: it waits, and no activity, timer or signal is left to deliver{undelivered}")]
    Stuck {
        /// How many workflow tasks ran.
        tasks: usize,
        /// The signals set up that were never delivered, as `: "a", "b"` (or empty).
        undelivered: String,
    },
    /// The workflow did not end within this many tasks
    /// ([`WorkflowTester::max_tasks`]).
    #[error("the workflow did not end within {0} tasks")]
    TaskLimit(usize),
    /// The workflow started a sub-workflow no mock was registered for.
    #[error("the workflow started sub-workflow {name:?}, which has no mock: register one with WorkflowTester::on_sub_workflow")]
    UnmockedSubWorkflow {
        /// The sub-workflow's registered name.
        name: String,
    },
    /// The workflow ended as canceled (after [`WorkflowTester::cancel_at`]).
    #[error("the workflow ended as canceled")]
    Canceled,
    /// The decision holds what the tester does not carry out.
    #[error("the tester does not carry out {0}")]
    Unsupported(String),
    /// An input, a signal's payload or a mock's output did not serialize,
    /// or the result did not deserialize.
    #[error("(de)serializing {what}: {source}")]
    Serde {
        /// What was being (de)serialized.
        what: String,
        /// Serde's error.
        #[source]
        source: serde_json::Error,
    },
}

/// Runs a registered workflow with mocked activities, signals and a virtual
/// clock, with no database: the unit test of a workflow.
///
/// Each step runs the real executor over the history so far and the
/// pending events that are due, then applies its decision as the store
/// would: the task's events move to the history, then the decision's
/// (activities, timers, canceled timers, side effects, outcome) are
/// numbered after them. Scheduled activities are answered at once by their
/// mocks; a timer fires when the virtual clock reaches it, and the clock
/// only moves when nothing else is due.
///
/// ```
/// use std::time::Duration;
/// use pgwake::workflow::{
///     ActivityError, TesterError, WorkflowContext, WorkflowError, WorkflowTester, Workflows,
/// };
///
/// async fn signup(ctx: WorkflowContext, email: String) -> Result<bool, WorkflowError> {
///     let user: String = ctx.activity("create_user", &email).await?;
///     let mut confirmed = ctx.signal_channel::<bool>("confirmed");
///     let mut expiry = ctx.timer(Duration::from_secs(5));
///     let confirmed = futures::select_biased! {
///         yes = confirmed.recv() => yes?,
///         _ = expiry => false,
///     };
///     expiry.cancel();
///     let _: () = ctx.activity("send_welcome", &(user, confirmed)).await?;
///     Ok(confirmed)
/// }
///
/// let workflows = Workflows::new().register("signup", signup);
/// let mut tester = WorkflowTester::new(&workflows, "signup")
///     .on_activity("create_user", |email: String| Ok::<_, ActivityError>(format!("user:{email}")))
///     .on_activity("send_welcome", |_: (String, bool)| Ok::<_, ActivityError>(()))
///     .signal_at(Duration::from_secs(1), "confirmed", &true);
/// let confirmed: bool = tester.run(&"ada@example.com")?;
/// assert!(confirmed);
/// assert_eq!(tester.elapsed(), Duration::from_secs(1));
/// # Ok::<(), TesterError>(())
/// ```
pub struct WorkflowTester {
    workflows: Workflows,
    name: String,
    mocks: HashMap<String, Mock>,
    sub_mocks: HashMap<String, SubMock>,
    signals: Vec<PlannedSignal>,
    /// When the execution is asked to cancel, after the start.
    cancel_at: Option<Duration>,
    /// The signals the workflow sent to other instances in the last run.
    sent: Vec<(String, String, Value)>,
    /// How many executions the last run had (continue-as-new adds one).
    executions: usize,
    /// The first payload that did not serialize while setting up.
    setup_error: Option<TesterError>,
    max_tasks: usize,
    history: Vec<Event>,
    elapsed: Duration,
    tasks: usize,
}

impl std::fmt::Debug for WorkflowTester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut mocked: Vec<&String> = self.mocks.keys().collect();
        mocked.sort();
        f.debug_struct("WorkflowTester")
            .field("workflow", &self.name)
            .field("mocked", &mocked)
            .field("signals", &self.signals)
            .field("history", &self.history.len())
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

/// A pending event: delivered in insertion order once visible.
struct Pending {
    event_type: EventType,
    schedule_event_id: i64,
    attributes: Value,
    written_at: SystemTime,
    visible_at: Option<SystemTime>,
}

impl WorkflowTester {
    /// A tester for the workflow registered in `workflows` as `name`, with
    /// no mocks and no signals. (An unregistered name runs as it does in a
    /// worker: the execution fails with kind `"unregistered"`.)
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new()
    ///     .register("double", |_: WorkflowContext, n: u64| async move { Ok::<_, WorkflowError>(n * 2) });
    /// let doubled: u64 = WorkflowTester::new(&workflows, "double").run(&21)?;
    /// assert_eq!(doubled, 42);
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn new(workflows: &Workflows, name: &str) -> Self {
        Self {
            workflows: workflows.clone(),
            name: name.to_string(),
            mocks: HashMap::new(),
            sub_mocks: HashMap::new(),
            signals: Vec::new(),
            cancel_at: None,
            sent: Vec::new(),
            executions: 0,
            setup_error: None,
            max_tasks: MAX_TESTER_TASKS,
            history: Vec::new(),
            elapsed: Duration::ZERO,
            tasks: 0,
        }
    }

    /// Answers every activity scheduled as `name` with `mock(input)`,
    /// at once (no virtual time passes). An error reaches the workflow as
    /// it would from a real activity, kind and all. An input that does not
    /// deserialize as `I` fails the activity with kind `"bad_input"`, as a
    /// registered activity does.
    ///
    /// ```
    /// use pgwake::workflow::{ActivityError, WorkflowTester, Workflows};
    /// let tester = WorkflowTester::new(&Workflows::new(), "checkout")
    ///     .on_activity("charge", |cents: u64| {
    ///         if cents > 10_000 {
    ///             Err(ActivityError::new("declined", "over the limit"))
    ///         } else {
    ///             Ok(format!("receipt-{cents}"))
    ///         }
    ///     });
    /// ```
    pub fn on_activity<I, O, F>(self, name: &str, mock: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(I) -> Result<O, ActivityError> + 'static,
    {
        self.on_activity_attempt(name, move |input: I, _| mock(input))
    }

    /// [`on_activity`](Self::on_activity) with a mock that also gets the
    /// attempt's number ([`ActivityContext::attempt`](super::ActivityContext::attempt)):
    /// 1, then 2, 3 ... when a [`RetryPolicy`](super::RetryPolicy) retries it.
    ///
    /// ```
    /// use pgwake::workflow::{ActivityError, WorkflowTester, Workflows};
    /// let tester = WorkflowTester::new(&Workflows::new(), "checkout")
    ///     .on_activity_attempt("charge", |cents: u64, attempt: u32| {
    ///         if attempt < 3 {
    ///             Err(ActivityError::new("timeout", "gateway slow"))
    ///         } else {
    ///             Ok(format!("receipt-{cents}"))
    ///         }
    ///     });
    /// ```
    pub fn on_activity_attempt<I, O, F>(mut self, name: &str, mock: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(I, u32) -> Result<O, ActivityError> + 'static,
    {
        let activity = name.to_string();
        let erased: Mock = Box::new(move |input, attempt| {
            let input = I::deserialize(input).map_err(|err| {
                ActivityError::new(
                    "bad_input",
                    format!("the input of activity {activity:?} does not deserialize: {err}"),
                )
                .non_retryable()
            })?;
            serde_json::to_value(mock(input, attempt)?).map_err(|err| {
                ActivityError::new(
                    "bad_output",
                    format!("the result of activity {activity:?} does not serialize: {err}"),
                )
                .non_retryable()
            })
        });
        self.mocks.insert(name.to_string(), erased);
        self
    }

    /// Answers every sub-workflow started as `name` with `mock(input)`: its
    /// result, or its error, reaches the parent at once.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("order", |ctx: WorkflowContext, items: u32| async move {
    ///     let tracking: String = ctx.sub_workflow("ship", &items).await?;
    ///     Ok::<_, WorkflowError>(tracking)
    /// });
    /// let tracking: String = WorkflowTester::new(&workflows, "order")
    ///     .on_sub_workflow("ship", |items: u32| Ok::<_, WorkflowError>(format!("parcel of {items}")))
    ///     .run(&3)?;
    /// assert_eq!(tracking, "parcel of 3");
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn on_sub_workflow<I, O, F>(mut self, name: &str, mock: F) -> Self
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(I) -> Result<O, WorkflowError> + 'static,
    {
        let workflow = name.to_string();
        let erased: SubMock = Box::new(move |input| {
            let input = I::deserialize(input).map_err(|err| {
                WorkflowError::new(
                    "bad_input",
                    format!("the input of sub-workflow {workflow:?} does not deserialize: {err}"),
                )
                .non_retryable()
            })?;
            serde_json::to_value(mock(input)?).map_err(|err| {
                WorkflowError::new(
                    "bad_output",
                    format!("the result of sub-workflow {workflow:?} does not serialize: {err}"),
                )
                .non_retryable()
            })
        });
        self.sub_mocks.insert(name.to_string(), erased);
        self
    }

    /// Asks the execution to cancel when the virtual clock reaches `at`
    /// after the start, as [`Client::cancel`](super::Client::cancel) would.
    /// A run that then ends as canceled gives [`TesterError::Canceled`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgwake::workflow::{TesterError, WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("wait", |ctx: WorkflowContext, _: ()| async move {
    ///     ctx.sleep(Duration::from_secs(3600)).await
    /// });
    /// let err = WorkflowTester::new(&workflows, "wait")
    ///     .cancel_at(Duration::from_secs(60))
    ///     .run::<()>(&())
    ///     .unwrap_err();
    /// assert!(matches!(err, TesterError::Canceled));
    /// ```
    pub fn cancel_at(mut self, at: Duration) -> Self {
        self.cancel_at = Some(at);
        self
    }

    /// The signals the last run sent to other instances
    /// ([`signal_workflow`](super::WorkflowContext::signal_workflow)), as
    /// `(instance_id, name, payload)`, in order. The tester reports each as
    /// delivered.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("notify", |ctx: WorkflowContext, _: ()| async move {
    ///     ctx.signal_workflow("order-7", "paid", &true).await
    /// });
    /// let mut tester = WorkflowTester::new(&workflows, "notify");
    /// tester.run::<()>(&())?;
    /// assert_eq!(tester.sent_signals()[0].1, "paid");
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn sent_signals(&self) -> &[(String, String, Value)] {
        &self.sent
    }

    /// How many executions the last run had: one, plus one per
    /// [`continue_as_new`](super::WorkflowContext::continue_as_new).
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("count", |ctx: WorkflowContext, n: u32| async move {
    ///     if n < 3 {
    ///         ctx.continue_as_new(&(n + 1))?;
    ///     }
    ///     Ok::<_, WorkflowError>(n)
    /// });
    /// let mut tester = WorkflowTester::new(&workflows, "count");
    /// assert_eq!(tester.run::<u32>(&0)?, 3);
    /// assert_eq!(tester.executions(), 4);
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn executions(&self) -> usize {
        self.executions
    }

    /// Gives up with [`TesterError::TaskLimit`] after `tasks` workflow tasks
    /// (default [`MAX_TESTER_TASKS`]). Every task replays the whole history,
    /// so a run of n tasks costs about n² events.
    ///
    /// ```
    /// let tester = pgwake::workflow::WorkflowTester::new(&pgwake::workflow::Workflows::new(), "batch")
    ///     .max_tasks(5_000);
    /// ```
    pub fn max_tasks(mut self, tasks: usize) -> Self {
        self.max_tasks = tasks;
        self
    }

    /// Sends the signal `name` with `payload` when the virtual clock
    /// reaches `at` after the start (at the start for `Duration::ZERO`).
    /// Events due at the same time arrive in the order they were written:
    /// a timer that fires at `at` was written when it started, so before
    /// the signal.
    ///
    /// ```
    /// use std::time::Duration;
    /// let tester = pgwake::workflow::WorkflowTester::new(&pgwake::workflow::Workflows::new(), "signup")
    ///     .signal_at(Duration::from_secs(1), "confirmed", &true);
    /// ```
    pub fn signal_at(self, at: Duration, name: &str, payload: &impl Serialize) -> Self {
        self.plan_signal(Delivery::At(at), name, payload)
    }

    /// Sends the signal `name` with `payload` once `tasks` workflow tasks
    /// have completed (before the first for 0), at the virtual time then.
    ///
    /// ```
    /// let tester = pgwake::workflow::WorkflowTester::new(&pgwake::workflow::Workflows::new(), "signup")
    ///     .signal_after_tasks(1, "confirmed", &true);
    /// ```
    pub fn signal_after_tasks(self, tasks: usize, name: &str, payload: &impl Serialize) -> Self {
        self.plan_signal(Delivery::AfterTasks(tasks), name, payload)
    }

    fn plan_signal(mut self, delivery: Delivery, name: &str, payload: &impl Serialize) -> Self {
        match serde_json::to_value(payload) {
            Ok(payload) => self.signals.push(PlannedSignal {
                delivery,
                name: name.to_string(),
                payload,
            }),
            Err(source) => {
                self.setup_error.get_or_insert(TesterError::Serde {
                    what: format!("the payload of signal {name:?}"),
                    source,
                });
            }
        }
        self
    }

    /// Runs the workflow with `input` from the start until it ends, and
    /// returns its result. Each call starts over (a new history, the clock
    /// back at the start); the mocks and signals set up stay.
    ///
    /// ```
    /// use pgwake::workflow::{TesterError, WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("fail", |_: WorkflowContext, _: ()| async {
    ///     Err::<(), _>(WorkflowError::new("nope", "always fails"))
    /// });
    /// let err = WorkflowTester::new(&workflows, "fail").run::<()>(&()).unwrap_err();
    /// assert!(matches!(err, TesterError::Failed(e) if e.kind() == "nope"));
    /// ```
    ///
    /// # Errors
    /// [`TesterError::Failed`] when the workflow returns an error, and the
    /// other [`TesterError`] variants when the run cannot go on.
    pub fn run<O: DeserializeOwned>(&mut self, input: &impl Serialize) -> Result<O, TesterError> {
        if let Some(err) = self.setup_error.take() {
            return Err(err);
        }
        let input = serde_json::to_value(input).map_err(|source| TesterError::Serde {
            what: "the workflow's input".into(),
            source,
        })?;
        self.history.clear();
        self.elapsed = Duration::ZERO;
        self.tasks = 0;
        self.sent.clear();
        self.executions = 1;
        let mut pending = vec![Pending {
            event_type: EventType::WorkflowExecutionStarted,
            schedule_event_id: 0,
            attributes: input,
            written_at: self.now(),
            visible_at: None,
        }];
        if let Some(at) = self.cancel_at {
            pending.push(Pending {
                event_type: EventType::WorkflowExecutionCanceled,
                schedule_event_id: 0,
                attributes: Value::Null,
                written_at: self.start() + at,
                visible_at: Some(self.start() + at),
            });
        }
        let mut signals = self.signals.clone();
        loop {
            if self.tasks == self.max_tasks {
                return Err(TesterError::TaskLimit(self.max_tasks));
            }
            self.deliver_due_signals(&mut signals, &mut pending);
            let now = self.now();
            let (due, later): (Vec<Pending>, Vec<Pending>) = pending
                .into_iter()
                .partition(|p| p.visible_at.is_none_or(|at| at <= now));
            pending = later;
            if due.is_empty() {
                // Nothing to do now: jump to the next timer or signal.
                let next_timer = pending
                    .iter()
                    .filter_map(|p| p.visible_at)
                    .filter_map(|at| at.duration_since(self.start()).ok());
                let next_signal = signals.iter().filter_map(|s| match s.delivery {
                    Delivery::At(at) => Some(at),
                    Delivery::AfterTasks(_) => None,
                });
                match next_timer.chain(next_signal).min() {
                    Some(next) => {
                        self.elapsed = self.elapsed.max(next);
                        continue;
                    }
                    None => return Err(self.stuck(&signals)),
                }
            }
            let task = self.task(due);
            let decision = self.workflows.execute(&task)?;
            self.tasks += 1;
            // As the store does: the task's start, then its events.
            self.record(EventType::WorkflowTaskStarted, 0, Value::Null);
            self.history.extend(task.new_events);
            if let Some(outcome) = self.apply(decision, &mut pending)? {
                return match outcome {
                    WorkflowOutcome::Completed(result) => {
                        serde_json::from_value(result).map_err(|source| TesterError::Serde {
                            what: "the workflow's result".into(),
                            source,
                        })
                    }
                    WorkflowOutcome::Failed(stored) => {
                        Err(TesterError::Failed(WorkflowError::from_stored(&stored)))
                    }
                    WorkflowOutcome::Canceled => Err(TesterError::Canceled),
                    WorkflowOutcome::ContinueAsNew(input) => {
                        // A new execution, with a new history, from now.
                        self.executions += 1;
                        self.history.clear();
                        pending.retain(|p| {
                            p.event_type == EventType::WorkflowExecutionCanceled
                                && p.visible_at.is_some_and(|at| at > self.now())
                        });
                        pending.insert(
                            0,
                            Pending {
                                event_type: EventType::WorkflowExecutionStarted,
                                schedule_event_id: 0,
                                attributes: input,
                                written_at: self.now(),
                                visible_at: None,
                            },
                        );
                        continue;
                    }
                };
            }
        }
    }

    /// The history of the last run, as the store would hold it.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// use pgwake::EventType;
    /// let workflows = Workflows::new().register("noop", |_: WorkflowContext, _: ()| async { Ok::<_, WorkflowError>(()) });
    /// let mut tester = WorkflowTester::new(&workflows, "noop");
    /// tester.run::<()>(&())?;
    /// let types: Vec<EventType> = tester.history().iter().map(|e| e.event_type).collect();
    /// assert_eq!(
    ///     types,
    ///     [EventType::WorkflowTaskStarted, EventType::WorkflowExecutionStarted, EventType::WorkflowExecutionFinished]
    /// );
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn history(&self) -> &[Event] {
        &self.history
    }

    /// How much virtual time the last run took.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("nap", |ctx: WorkflowContext, _: ()| async move {
    ///     ctx.sleep(Duration::from_secs(24 * 3600)).await?;
    ///     Ok::<_, WorkflowError>(())
    /// });
    /// let mut tester = WorkflowTester::new(&workflows, "nap");
    /// tester.run::<()>(&())?;
    /// assert_eq!(tester.elapsed(), Duration::from_secs(24 * 3600));
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// How many workflow tasks the last run executed.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError, WorkflowTester, Workflows};
    /// let workflows = Workflows::new().register("noop", |_: WorkflowContext, _: ()| async { Ok::<_, WorkflowError>(()) });
    /// let mut tester = WorkflowTester::new(&workflows, "noop");
    /// tester.run::<()>(&())?;
    /// assert_eq!(tester.tasks(), 1);
    /// # Ok::<(), pgwake::workflow::TesterError>(())
    /// ```
    pub fn tasks(&self) -> usize {
        self.tasks
    }

    fn start(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + VIRTUAL_START
    }

    fn now(&self) -> SystemTime {
        self.start() + self.elapsed
    }

    fn last_sequence_id(&self) -> i64 {
        self.history.last().map_or(0, |e| e.sequence_id)
    }

    fn deliver_due_signals(&self, signals: &mut Vec<PlannedSignal>, pending: &mut Vec<Pending>) {
        let now = self.now();
        signals.retain(|signal| {
            let due = match signal.delivery {
                Delivery::At(at) => at <= self.elapsed,
                Delivery::AfterTasks(tasks) => tasks <= self.tasks,
            };
            if due {
                pending.push(Pending {
                    event_type: EventType::SignalReceived,
                    schedule_event_id: 0,
                    attributes: json!({ "name": signal.name, "payload": signal.payload }),
                    written_at: now,
                    visible_at: None,
                });
            }
            !due
        });
    }

    fn stuck(&self, signals: &[PlannedSignal]) -> TesterError {
        let names: Vec<String> = signals.iter().map(|s| format!("{:?}", s.name)).collect();
        TesterError::Stuck {
            tasks: self.tasks,
            undelivered: if names.is_empty() {
                String::new()
            } else {
                format!(" (undelivered signals: {})", names.join(", "))
            },
        }
    }

    /// The task the store would hand out now: the history and the due
    /// events, numbered after it in the order they were written.
    fn task(&self, due: Vec<Pending>) -> WorkflowTask {
        let last_sequence_id = self.last_sequence_id();
        let new_events = due
            .into_iter()
            // After the WorkflowTaskStarted the store records first.
            .zip(last_sequence_id + 2..)
            .map(|(p, sequence_id)| Event {
                event_id: format!("tester-{sequence_id}"),
                sequence_id,
                event_type: p.event_type,
                timestamp: p.written_at,
                schedule_event_id: p.schedule_event_id,
                visible_at: p.visible_at,
                attributes: p.attributes,
            })
            .collect();
        WorkflowTask {
            row_id: 0,
            instance: InstanceRef {
                instance_id: self.name.clone(),
                execution_id: format!("{}-tester-{}", self.name, self.executions),
            },
            queue: Queue::default(),
            metadata: Some(json!({ "workflow": self.name })),
            parent: None,
            new_events,
            history: self.history.clone(),
            last_sequence_id,
            lease: Lease::new(WorkerId::unique("tester"), self.now(), 0),
        }
    }

    /// Applies `decision` as the store does, after the task's events were
    /// moved to the history; returns the outcome when the execution ends.
    fn apply(
        &mut self,
        decision: WorkflowCompletion,
        pending: &mut Vec<Pending>,
    ) -> Result<Option<WorkflowOutcome>, TesterError> {
        let now = self.now();
        let queue = Queue::default();
        let mut answers = Vec::new();
        for activity in &decision.activities {
            let Some(mock) = self.mocks.get(&activity.name) else {
                return Err(TesterError::UnmockedActivity {
                    name: activity.name.clone(),
                });
            };
            let queue = activity.queue.as_ref().unwrap_or(&queue);
            let attributes =
                json!({ "name": activity.name, "input": activity.input, "queue": queue.as_str() });
            let Attempt {
                input,
                number: attempt,
                ..
            } = Attempt::from_scheduled(activity.input.clone());
            let answer = mock(input, attempt);
            let schedule = self.record(EventType::ActivityScheduled, 0, attributes);
            answers.push((schedule, answer));
        }
        let mut timers = Vec::new();
        for timer in &decision.timers {
            let attributes = json!({
                "payload": timer.payload, "delay_ms": timer.delay.as_millis() as u64
            });
            let schedule = self.record(EventType::TimerScheduled, 0, attributes);
            timers.push((schedule, timer));
        }
        for canceled in &decision.canceled_timers {
            self.record(EventType::TimerCanceled, *canceled, Value::Null);
        }
        let mut children = Vec::new();
        for sub in &decision.sub_workflows {
            let name = sub
                .instance
                .metadata
                .as_ref()
                .and_then(|m| m["workflow"].as_str())
                .unwrap_or_default()
                .to_string();
            let Some(mock) = self.sub_mocks.get(&name) else {
                return Err(TesterError::UnmockedSubWorkflow { name });
            };
            let answer = mock(sub.instance.input.clone());
            let attributes = json!({
                "instance_id": sub.instance.instance_id,
                "queue": sub.instance.queue.as_str(),
                "input": sub.instance.input,
                "metadata": sub.instance.metadata,
            });
            let schedule = self.record(EventType::SubWorkflowScheduled, 0, attributes);
            children.push((schedule, answer));
        }
        for (event_type, value) in &decision.history_events {
            self.record(*event_type, 0, value.clone());
        }
        // Every signal is reported delivered, as the store reports it.
        let reports: Vec<Pending> = decision
            .signals
            .iter()
            .map(|signal| {
                self.sent.push((
                    signal.instance_id.clone(),
                    signal.name.clone(),
                    signal.payload.clone(),
                ));
                Pending {
                    event_type: EventType::SignalSent,
                    schedule_event_id: 0,
                    attributes: json!({
                        "instance_id": signal.instance_id,
                        "execution_id": "tester",
                        "name": signal.name,
                    }),
                    written_at: now,
                    visible_at: None,
                }
            })
            .collect();
        if let Some(outcome) = decision.outcome {
            for report in reports {
                self.record(report.event_type, 0, report.attributes);
            }
            let attributes = match &outcome {
                WorkflowOutcome::Completed(result) => json!({ "result": result }),
                WorkflowOutcome::Failed(error) => json!({ "error": error }),
                WorkflowOutcome::Canceled => json!({ "canceled": true }),
                WorkflowOutcome::ContinueAsNew(input) => json!({ "input": input }),
            };
            let event_type = match outcome {
                WorkflowOutcome::ContinueAsNew(_) => EventType::WorkflowExecutionContinuedAsNew,
                _ => EventType::WorkflowExecutionFinished,
            };
            let attributes = match (&outcome, decision.continued_result) {
                (WorkflowOutcome::ContinueAsNew(input), Some(result)) => {
                    json!({ "input": input, "result": result })
                }
                _ => attributes,
            };
            self.record(event_type, 0, attributes);
            return Ok(Some(outcome));
        }
        pending.retain(|p| {
            p.event_type != EventType::TimerFired
                || !decision.canceled_timers.contains(&p.schedule_event_id)
        });
        // The store writes the timers' TimerFired events in this commit
        // (visible later), then the activity workers answer: timers first.
        for (schedule, timer) in timers {
            pending.push(Pending {
                event_type: EventType::TimerFired,
                schedule_event_id: schedule,
                attributes: timer.payload.clone(),
                written_at: now,
                visible_at: Some(now + timer.delay),
            });
        }
        pending.extend(reports);
        for (schedule, answer) in answers {
            let (event_type, attributes) = match answer {
                Ok(result) => (EventType::ActivityCompleted, json!({ "result": result })),
                Err(error) => (
                    EventType::ActivityFailed,
                    json!({ "error": error.to_stored() }),
                ),
            };
            pending.push(Pending {
                event_type,
                schedule_event_id: schedule,
                attributes,
                written_at: now,
                visible_at: None,
            });
        }
        for (schedule, answer) in children {
            let (event_type, attributes) = match answer {
                Ok(result) => (EventType::SubWorkflowCompleted, json!({ "result": result })),
                Err(error) => (
                    EventType::SubWorkflowFailed,
                    json!({ "error": error.to_stored() }),
                ),
            };
            pending.push(Pending {
                event_type,
                schedule_event_id: schedule,
                attributes,
                written_at: now,
                visible_at: None,
            });
        }
        Ok(None)
    }

    /// Appends one event the decision records; returns its sequence id.
    fn record(&mut self, event_type: EventType, schedule_event_id: i64, attributes: Value) -> i64 {
        let sequence_id = self.last_sequence_id() + 1;
        self.history.push(Event {
            event_id: format!("tester-{sequence_id}"),
            sequence_id,
            event_type,
            timestamp: self.now(),
            schedule_event_id,
            visible_at: None,
            attributes,
        });
        sequence_id
    }
}
