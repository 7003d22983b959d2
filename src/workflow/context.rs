//! What a workflow's code calls: [`WorkflowContext`] and the futures it
//! returns. Every one of them is answered from the history, never from the
//! outside world, so the code does the same on every replay.

use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures::future::FusedFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::command::{
    ActivityCommand, SideEffectCommand, SignalCommand, State, SubWorkflowCommand, TimerCommand,
};
use super::error::{ActivityError, WorkflowError};
use super::retry::RetryPolicy;
use super::state::ReplayState;
use crate::store::{InstanceRef, Queue};

/// A workflow's handle on its execution: activities, timers, signals, side
/// effects, time and randomness, all deterministic on replay. Cheap to
/// clone; not `Send` (a workflow runs on its worker's thread).
///
/// ```
/// use std::time::Duration;
/// use pgwake::workflow::{WorkflowContext, WorkflowError};
///
/// async fn signup(ctx: WorkflowContext, email: String) -> Result<String, WorkflowError> {
///     let user: String = ctx.activity("create_user", &email).await?;
///     let mut confirmed = ctx.signal_channel::<bool>("confirmed");
///     let mut timeout = ctx.timer(Duration::from_secs(5));
///     let outcome = futures::select_biased! {
///         yes = confirmed.recv() => if yes? { "confirmed" } else { "declined" },
///         _ = timeout => "timed out",
///     };
///     timeout.cancel();
///     let _: String = ctx.activity("welcome", &(user.as_str(), outcome)).await?;
///     Ok(outcome.to_string())
/// }
/// let workflows = pgwake::workflow::Workflows::new().register("signup", signup);
/// ```
#[derive(Clone)]
pub struct WorkflowContext {
    state: Rc<RefCell<ReplayState>>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowContext")
            .field("instance", &self.state.borrow().instance)
            .finish_non_exhaustive()
    }
}

/// How to run an activity ([`WorkflowContext::activity_with`]).
///
/// ```
/// use pgwake::workflow::{ActivityOptions, RetryPolicy};
/// let options = ActivityOptions::default()
///     .queue(pgwake::Queue::new("payments")?)
///     .retry(RetryPolicy::default().max_attempts(3));
/// assert_eq!(options.retry.max_attempts, 3);
/// # Ok::<(), pgwake::StoreError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ActivityOptions {
    /// The queue it runs on; the instance's when `None`.
    pub queue: Option<Queue>,
    /// How a failed attempt is retried (by default it is not).
    pub retry: RetryPolicy,
    /// How long each attempt may run once a worker started it; `None` for
    /// no limit (the lease still guards against a lost worker).
    pub start_to_close_timeout: Option<Duration>,
}

impl ActivityOptions {
    /// Runs it on `queue` instead of the instance's.
    ///
    /// ```
    /// let options = pgwake::workflow::ActivityOptions::default().queue(pgwake::Queue::new("payments")?);
    /// assert_eq!(options.queue.unwrap().as_str(), "payments");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// Retries a failed attempt as `retry` says.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgwake::workflow::{ActivityOptions, RetryPolicy};
    /// let options = ActivityOptions::default()
    ///     .retry(RetryPolicy::default().max_attempts(5).first_interval(Duration::from_millis(500)));
    /// assert_eq!(options.retry.max_attempts, 5);
    /// ```
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Fails an attempt that runs longer than `timeout` with an error of
    /// kind `"timeout"` (retryable: the [`RetryPolicy`] decides). The
    /// worker stops waiting for the handler and drops its future.
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = pgwake::workflow::ActivityOptions::default()
    ///     .start_to_close_timeout(Duration::from_secs(30));
    /// assert_eq!(options.start_to_close_timeout, Some(Duration::from_secs(30)));
    /// ```
    pub fn start_to_close_timeout(mut self, timeout: Duration) -> Self {
        self.start_to_close_timeout = Some(timeout);
        self
    }
}

impl WorkflowContext {
    pub(crate) fn new(state: Rc<RefCell<ReplayState>>) -> Self {
        Self { state }
    }

    /// The execution this code runs for.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<String, pgwake::workflow::WorkflowError> {
    ///     Ok(ctx.instance().instance_id)
    /// }
    /// ```
    pub fn instance(&self) -> InstanceRef {
        self.state.borrow().instance.clone()
    }

    /// Runs the activity `name` with `input` on the instance's queue; its
    /// future gives the activity's result, or its typed error.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, cents: u64) -> Result<String, pgwake::workflow::WorkflowError> {
    ///     match ctx.activity::<String>("charge", &cents).await {
    ///         Ok(receipt) => Ok(receipt),
    ///         Err(err) if err.kind() == "declined" => Ok("declined".into()),
    ///         Err(err) => Err(err.into()),
    ///     }
    /// }
    /// ```
    pub fn activity<O: DeserializeOwned>(
        &self,
        name: &str,
        input: &impl Serialize,
    ) -> ActivityFuture<O> {
        self.activity_with(name, input, ActivityOptions::default())
    }

    /// [`activity`](Self::activity) with options (another queue, a retry
    /// policy). A retried activity's future gives only the final result:
    /// the first success, or the last attempt's failure.
    ///
    /// ```
    /// use pgwake::workflow::{ActivityOptions, RetryPolicy, WorkflowContext, WorkflowError};
    /// async fn wf(ctx: WorkflowContext, cents: u64) -> Result<String, WorkflowError> {
    ///     let options = ActivityOptions::default()
    ///         .queue(pgwake::Queue::new("payments").unwrap())
    ///         .retry(RetryPolicy::default().max_attempts(3).non_retryable(["declined"]));
    ///     Ok(ctx.activity_with::<String>("charge", &cents, options).await?)
    /// }
    /// ```
    pub fn activity_with<O: DeserializeOwned>(
        &self,
        name: &str,
        input: &impl Serialize,
        options: ActivityOptions,
    ) -> ActivityFuture<O> {
        let kind = match serde_json::to_value(input) {
            Ok(input) => {
                let command = ActivityCommand::new(name.to_string(), input, options.queue)
                    .with_retry(options.retry)
                    .with_timeout(options.start_to_close_timeout);
                ActivityKind::Scheduled(self.state.borrow_mut().add_activity(command))
            }
            Err(err) => ActivityKind::Failed(
                ActivityError::new("bad_input", format!("the input of {name:?}: {err}"))
                    .non_retryable(),
            ),
        };
        ActivityFuture {
            state: self.state.clone(),
            kind,
            done: false,
            output: PhantomData,
        }
    }

    /// Waits `delay` (a durable timer). Gives an error of kind
    /// `"canceled"` if the workflow is canceled meanwhile.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     ctx.sleep(std::time::Duration::from_secs(3600)).await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn sleep(&self, delay: Duration) -> Sleep {
        Sleep(self.timer(delay))
    }

    /// A durable timer firing after `delay`, which may be canceled (by
    /// [`Timer::cancel`], or by the workflow's cancellation): it then
    /// resolves to an error of kind `"canceled"`.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     let timer = ctx.timer(std::time::Duration::from_secs(60));
    ///     timer.cancel();
    ///     assert_eq!(timer.await.unwrap_err().kind(), "canceled");
    ///     Ok(())
    /// }
    /// ```
    pub fn timer(&self, delay: Duration) -> Timer {
        let index = self.state.borrow_mut().add_timer(TimerCommand::new(delay));
        Timer {
            state: self.state.clone(),
            index,
            done: false,
        }
    }

    /// The signals named `name` sent to this instance, in arrival order
    /// (buffered from the start, whether a channel exists yet or not).
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<u32, pgwake::workflow::WorkflowError> {
    ///     let mut votes = ctx.signal_channel::<u32>("vote");
    ///     Ok(votes.recv().await? + votes.recv().await?)
    /// }
    /// ```
    pub fn signal_channel<T: DeserializeOwned>(&self, name: &str) -> SignalChannel<T> {
        SignalChannel {
            state: self.state.clone(),
            name: name.to_string(),
            payload: PhantomData,
        }
    }

    /// Runs `compute` once, live, and records its value: every replay
    /// reads the value back instead of running it again.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<u64, pgwake::workflow::WorkflowError> {
    ///     let started: u64 = ctx.side_effect(|| std::process::id() as u64).await?;
    ///     Ok(started)
    /// }
    /// ```
    pub fn side_effect<T, F>(&self, compute: F) -> SideEffect<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> T + 'static,
    {
        let compute = Box::new(move || serde_json::to_value(compute()).unwrap_or(Value::Null));
        let index = self
            .state
            .borrow_mut()
            .add_side_effect(SideEffectCommand::new(compute));
        SideEffect {
            state: self.state.clone(),
            index,
            done: false,
            output: PhantomData,
        }
    }

    /// The time of the last event the workflow reacted to (database clock,
    /// from the history): the same on every replay, unlike the clock.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<bool, pgwake::workflow::WorkflowError> {
    ///     Ok(ctx.now() > std::time::SystemTime::UNIX_EPOCH)
    /// }
    /// ```
    pub fn now(&self) -> SystemTime {
        self.state.borrow().now
    }

    /// A pseudo-random number derived from the execution id and how many
    /// were drawn before: the same sequence on every replay.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<u64, pgwake::workflow::WorkflowError> {
    ///     Ok(ctx.random_u64() % 6 + 1)
    /// }
    /// ```
    pub fn random_u64(&self) -> u64 {
        self.state.borrow_mut().next_random()
    }

    /// Whether the code runs over recorded history (a replay) rather than
    /// reaching new ground: for logging or metrics that should not repeat
    /// on every replay. Never let it change what the workflow does.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     let _: () = ctx.activity("charge", &500).await?;
    ///     if !ctx.is_replaying() {
    ///         tracing::info!("charged");
    ///     }
    ///     Ok(())
    /// }
    /// ```
    pub fn is_replaying(&self) -> bool {
        self.state.borrow().replaying
    }

    /// A version 4 UUID drawn from the same deterministic source as
    /// [`random_u64`](Self::random_u64): the same on every replay.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<String, pgwake::workflow::WorkflowError> {
    ///     let order_id = ctx.uuid();
    ///     assert_eq!(order_id.len(), 36);
    ///     Ok(order_id)
    /// }
    /// ```
    pub fn uuid(&self) -> String {
        self.state.borrow_mut().next_uuid()
    }

    /// Starts the registered workflow `workflow` as a child of this
    /// execution, on this instance's queue with an id derived from this
    /// execution; its future gives the child's result, or its typed error
    /// (kind `"canceled"` if it was canceled). A child whose id has an
    /// active execution already is not started: its future fails.
    ///
    /// ```
    /// async fn order(ctx: pgwake::workflow::WorkflowContext, items: u32) -> Result<String, pgwake::workflow::WorkflowError> {
    ///     let tracking: String = ctx.sub_workflow("ship", &items).await?;
    ///     Ok(tracking)
    /// }
    /// ```
    pub fn sub_workflow<O: DeserializeOwned>(
        &self,
        workflow: &str,
        input: &impl Serialize,
    ) -> SubWorkflow<O> {
        self.sub_workflow_with(workflow, input, SubWorkflowOptions::default())
    }

    /// [`sub_workflow`](Self::sub_workflow) with options: the child's
    /// instance id (to signal it, or to make it unique across parents) and
    /// its queue.
    ///
    /// ```
    /// use pgwake::workflow::{SubWorkflowOptions, WorkflowContext, WorkflowError};
    /// async fn order(ctx: WorkflowContext, id: String) -> Result<String, WorkflowError> {
    ///     let options = SubWorkflowOptions::default()
    ///         .instance_id(format!("{id}-shipping"))
    ///         .queue(pgwake::Queue::new("shipping").unwrap());
    ///     Ok(ctx.sub_workflow_with::<String>("ship", &id, options).await?)
    /// }
    /// ```
    pub fn sub_workflow_with<O: DeserializeOwned>(
        &self,
        workflow: &str,
        input: &impl Serialize,
        options: SubWorkflowOptions,
    ) -> SubWorkflow<O> {
        let kind = match serde_json::to_value(input) {
            Ok(input) => {
                let mut state = self.state.borrow_mut();
                let instance_id = match options.instance_id {
                    Some(id) => id,
                    None => state.next_sub_workflow_id(),
                };
                let command = SubWorkflowCommand::new(
                    workflow.to_string(),
                    instance_id,
                    input,
                    options.queue,
                );
                SubWorkflowKind::Started(state.add_sub_workflow(command))
            }
            Err(err) => SubWorkflowKind::Failed(
                WorkflowError::new(
                    "bad_input",
                    format!("the input of sub-workflow {workflow:?}: {err}"),
                )
                .non_retryable(),
            ),
        };
        SubWorkflow {
            state: self.state.clone(),
            kind,
            done: false,
            output: PhantomData,
        }
    }

    /// Sends the signal `name` with `value` to the active execution of
    /// `instance_id` (a sub-workflow this task starts included). Sent with
    /// this task's decision whether awaited or not; its future tells, at
    /// the next task, whether it reached an execution: an error of kind
    /// `"not_found"` when the target had none.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, order: String) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     ctx.signal_workflow(&order, "paid", &true).await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn signal_workflow(
        &self,
        instance_id: &str,
        name: &str,
        value: &impl Serialize,
    ) -> SignalSent {
        let kind = match serde_json::to_value(value) {
            Ok(payload) => {
                let command =
                    SignalCommand::new(instance_id.to_string(), name.to_string(), payload);
                SignalKind::Sent(self.state.borrow_mut().add_sent_signal(command))
            }
            Err(err) => SignalKind::Failed(
                WorkflowError::new("bad_input", format!("the value of signal {name:?}: {err}"))
                    .non_retryable(),
            ),
        };
        SignalSent {
            state: self.state.clone(),
            kind,
            done: false,
        }
    }

    /// Whether the execution was asked to cancel.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<&'static str, pgwake::workflow::WorkflowError> {
    ///     let _ = ctx.sleep(std::time::Duration::from_secs(60)).await;
    ///     Ok(if ctx.is_cancelled() { "stopped early" } else { "slept" })
    /// }
    /// ```
    pub fn is_cancelled(&self) -> bool {
        self.state.borrow().canceled
    }

    /// Resolves once the execution is asked to cancel
    /// ([`Client::cancel`](super::Client::cancel), or a parent's
    /// cancellation). At that moment everything the workflow waits for ends
    /// with an error of kind `"canceled"`: timers are canceled, running
    /// sub-workflows are asked to cancel (their futures still give their
    /// end), activities are abandoned (they run on; their results are
    /// ignored), and signal channels with nothing buffered give up. The code
    /// goes on: what it starts afterwards (cleanup activities, say) runs
    /// as usual. A workflow that then returns a canceled error ends as
    /// canceled; one that returns a result completes with it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use pgwake::workflow::{WorkflowContext, WorkflowError};
    /// async fn booking(ctx: WorkflowContext, seat: String) -> Result<(), WorkflowError> {
    ///     let _: () = ctx.activity("reserve", &seat).await?;
    ///     futures::select_biased! {
    ///         _ = ctx.cancelled() => {
    ///             // Clean up, then end as canceled.
    ///             let _: () = ctx.activity("release", &seat).await?;
    ///             Err(WorkflowError::new("canceled", "booking canceled"))
    ///         }
    ///         paid = ctx.sleep(Duration::from_secs(900)) => paid,
    ///     }
    /// }
    /// ```
    pub fn cancelled(&self) -> Cancelled {
        Cancelled {
            state: self.state.clone(),
            done: false,
        }
    }

    /// Ends this execution when the workflow returns, and starts a new one
    /// of the same instance id with `input` (a fresh history: how a
    /// workflow that runs forever, or for many steps, keeps its history
    /// short). The execution that ends records the workflow's result in
    /// its `WorkflowExecutionContinuedAsNew` event; a parent waits for the
    /// last execution. Returning an error instead fails the execution.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError};
    /// async fn counter(ctx: WorkflowContext, round: u32) -> Result<u32, WorkflowError> {
    ///     let _: () = ctx.activity("tick", &round).await?;
    ///     if round < 100 {
    ///         ctx.continue_as_new(&(round + 1))?;
    ///     }
    ///     Ok(round)
    /// }
    /// ```
    ///
    /// # Errors
    /// An input that does not serialize (kind `"bad_input"`).
    pub fn continue_as_new(&self, input: &impl Serialize) -> Result<(), WorkflowError> {
        let input = serde_json::to_value(input).map_err(|err| {
            WorkflowError::new(
                "bad_input",
                format!("the input of the next execution: {err}"),
            )
            .non_retryable()
        })?;
        self.state.borrow_mut().continue_as_new = Some(input);
        Ok(())
    }

    /// Whether to run the code of change `change_id`, for changing a
    /// workflow while executions of it are running. Executions that reach
    /// this call with the new code answer `true` (and record a `Patched`
    /// marker, the first time); executions whose history was written by the
    /// code before the change, and reached this point then, answer `false`
    /// when they replay, so they take the old branch and stay
    /// deterministic. Once no execution from before the change runs, remove
    /// the old branch (keeping the call lets both kinds of history replay).
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError};
    /// async fn order(ctx: WorkflowContext, cents: u64) -> Result<(), WorkflowError> {
    ///     if ctx.patched("fraud-check") {
    ///         let _: () = ctx.activity("check_fraud", &cents).await?;
    ///     }
    ///     let _: () = ctx.activity("charge", &cents).await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn patched(&self, change_id: &str) -> bool {
        self.state.borrow_mut().patched(change_id)
    }
}

/// How to start a sub-workflow ([`WorkflowContext::sub_workflow_with`]).
///
/// ```
/// let options = pgwake::workflow::SubWorkflowOptions::default().instance_id("order-7-shipping");
/// assert_eq!(options.instance_id.as_deref(), Some("order-7-shipping"));
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct SubWorkflowOptions {
    /// The child's instance id; derived from the parent's execution when
    /// `None` (deterministic, unique per child).
    pub instance_id: Option<String>,
    /// The queue of its workflow tasks; the parent's when `None`.
    pub queue: Option<Queue>,
}

impl SubWorkflowOptions {
    /// Starts it as `instance_id` (1 to 128 characters).
    ///
    /// ```
    /// let options = pgwake::workflow::SubWorkflowOptions::default().instance_id("child-1");
    /// assert_eq!(options.instance_id.unwrap(), "child-1");
    /// ```
    pub fn instance_id(mut self, instance_id: impl Into<String>) -> Self {
        self.instance_id = Some(instance_id.into());
        self
    }

    /// Runs its workflow tasks on `queue`.
    ///
    /// ```
    /// let options = pgwake::workflow::SubWorkflowOptions::default().queue(pgwake::Queue::new("shipping")?);
    /// assert_eq!(options.queue.unwrap().as_str(), "shipping");
    /// # Ok::<(), pgwake::StoreError>(())
    /// ```
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = Some(queue);
        self
    }
}

#[derive(Debug)]
enum SubWorkflowKind {
    Started(usize),
    Failed(WorkflowError),
}

/// A sub-workflow's result, from [`WorkflowContext::sub_workflow`]. Fused
/// and `Unpin`.
#[derive(Debug)]
#[must_use = "a sub-workflow's result is read by awaiting it"]
pub struct SubWorkflow<O> {
    state: Rc<RefCell<ReplayState>>,
    kind: SubWorkflowKind,
    done: bool,
    output: PhantomData<fn() -> O>,
}

impl<O> SubWorkflow<O> {
    /// Cancels the child: one not started yet (created in this same task)
    /// is never started, and its future gives an error of kind
    /// `"canceled"`; a running one is asked to cancel, and its future gives
    /// whatever the child ends with. Safe to call more than once.
    ///
    /// ```
    /// use pgwake::workflow::{WorkflowContext, WorkflowError};
    /// async fn wf(ctx: WorkflowContext, _: ()) -> Result<(), WorkflowError> {
    ///     let child = ctx.sub_workflow::<()>("slow", &());
    ///     child.cancel();
    ///     assert!(child.await.unwrap_err().is_canceled());
    ///     Ok(())
    /// }
    /// ```
    pub fn cancel(&self) {
        if let SubWorkflowKind::Started(index) = self.kind {
            self.state.borrow_mut().cancel_sub_workflow(index);
        }
    }

    /// The child's instance id (`None` if its input did not serialize).
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     let child = ctx.sub_workflow::<()>("ship", &());
    ///     ctx.signal_workflow(&child.instance_id().unwrap(), "hurry", &true);
    ///     child.await
    /// }
    /// ```
    pub fn instance_id(&self) -> Option<String> {
        match self.kind {
            SubWorkflowKind::Started(index) => {
                Some(self.state.borrow().sub_workflows[index].instance_id.clone())
            }
            SubWorkflowKind::Failed(_) => None,
        }
    }
}

impl<O: DeserializeOwned> Future for SubWorkflow<O> {
    type Output = Result<O, WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        park(&self.state, cx);
        let result = match &self.kind {
            SubWorkflowKind::Failed(err) => Err(err.clone()),
            SubWorkflowKind::Started(index) => {
                let state = self.state.borrow();
                let command = &state.sub_workflows[*index];
                match command.result() {
                    None => return Poll::Pending,
                    Some(Err(err)) => Err(err.clone()),
                    Some(Ok(value)) => O::deserialize(value).map_err(|err| {
                        WorkflowError::new(
                            "bad_output",
                            format!(
                                "the result of sub-workflow {:?} does not deserialize: {err}",
                                command.workflow
                            ),
                        )
                        .non_retryable()
                    }),
                }
            }
        };
        self.done = true;
        Poll::Ready(result)
    }
}

impl<O: DeserializeOwned> FusedFuture for SubWorkflow<O> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

#[derive(Debug)]
enum SignalKind {
    Sent(usize),
    Failed(WorkflowError),
}

/// Whether a signal from [`WorkflowContext::signal_workflow`] reached an
/// execution. Fused and `Unpin`.
#[derive(Debug)]
pub struct SignalSent {
    state: Rc<RefCell<ReplayState>>,
    kind: SignalKind,
    done: bool,
}

impl Future for SignalSent {
    type Output = Result<(), WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        park(&self.state, cx);
        let result = match &self.kind {
            SignalKind::Failed(err) => Err(err.clone()),
            SignalKind::Sent(index) => match self.state.borrow().sent_signals[*index].result() {
                None => return Poll::Pending,
                Some(result) => result.clone(),
            },
        };
        self.done = true;
        Poll::Ready(result)
    }
}

impl FusedFuture for SignalSent {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Resolves once the execution is asked to cancel, from
/// [`WorkflowContext::cancelled`]. Fused and `Unpin`.
#[derive(Debug)]
#[must_use = "a cancellation is noticed only when awaited"]
pub struct Cancelled {
    state: Rc<RefCell<ReplayState>>,
    done: bool,
}

impl Future for Cancelled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        park(&self.state, cx);
        if !self.state.borrow().canceled {
            return Poll::Pending;
        }
        self.done = true;
        Poll::Ready(())
    }
}

impl FusedFuture for Cancelled {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// Registers the waker of whoever polls a workflow future (a `join_all`,
/// a `FuturesUnordered`), woken after every event: such combinators poll
/// again only the futures that woke them.
fn park(state: &Rc<RefCell<ReplayState>>, cx: &Context<'_>) {
    state.borrow_mut().wakers.push(cx.waker().clone());
}

#[derive(Debug)]
enum ActivityKind {
    Scheduled(usize),
    Failed(ActivityError),
}

/// An activity's result, from [`WorkflowContext::activity`]. Fused and
/// `Unpin`: usable in `futures::select_biased!` as it is.
#[derive(Debug)]
#[must_use = "an activity's result is read by awaiting it"]
pub struct ActivityFuture<O> {
    state: Rc<RefCell<ReplayState>>,
    kind: ActivityKind,
    done: bool,
    output: PhantomData<fn() -> O>,
}

impl<O: DeserializeOwned> Future for ActivityFuture<O> {
    type Output = Result<O, ActivityError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        park(&self.state, cx);
        let result = match &self.kind {
            ActivityKind::Failed(err) => Err(err.clone()),
            ActivityKind::Scheduled(index) => {
                let state = self.state.borrow();
                match state.activity_result(*index) {
                    None => return Poll::Pending,
                    Some(Err(err)) => Err(err),
                    Some(Ok(value)) => O::deserialize(value).map_err(|err| {
                        ActivityError::new(
                            "bad_output",
                            format!(
                                "the result of {:?} does not deserialize: {err}",
                                state.activities[*index].name
                            ),
                        )
                        .non_retryable()
                    }),
                }
            }
        };
        self.done = true;
        Poll::Ready(result)
    }
}

impl<O: DeserializeOwned> FusedFuture for ActivityFuture<O> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// A durable timer, from [`WorkflowContext::timer`]: `Ok(())` when it
/// fires, an error of kind `"canceled"` once [`cancel`](Self::cancel)ed.
#[derive(Debug)]
#[must_use = "a timer does nothing unless awaited or canceled"]
pub struct Timer {
    state: Rc<RefCell<ReplayState>>,
    index: usize,
    done: bool,
}

impl Timer {
    /// Cancels it (recorded as `TimerCanceled` unless it fired already or
    /// was never scheduled). Safe to call more than once.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     let reminder = ctx.timer(std::time::Duration::from_secs(86_400));
    ///     reminder.cancel();
    ///     Ok(())
    /// }
    /// ```
    pub fn cancel(&self) {
        self.state.borrow_mut().cancel_timer(self.index);
    }
}

impl Future for Timer {
    type Output = Result<(), WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        park(&self.state, cx);
        let state = self.state.borrow().timers[self.index].state();
        let result = match state {
            State::Done => Ok(()),
            State::Canceled | State::CancelPending => {
                Err(WorkflowError::new("canceled", "the timer was canceled"))
            }
            State::Pending | State::Committed => return Poll::Pending,
        };
        self.done = true;
        Poll::Ready(result)
    }
}

impl FusedFuture for Timer {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// [`WorkflowContext::sleep`]: a timer only the workflow's cancellation
/// cancels.
#[derive(Debug)]
#[must_use = "sleeping happens only when awaited"]
pub struct Sleep(Timer);

impl Future for Sleep {
    type Output = Result<(), WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl FusedFuture for Sleep {
    fn is_terminated(&self) -> bool {
        self.0.done
    }
}

/// The signals of one name, from [`WorkflowContext::signal_channel`].
#[derive(Debug)]
pub struct SignalChannel<T> {
    state: Rc<RefCell<ReplayState>>,
    name: String,
    payload: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> SignalChannel<T> {
    /// The next signal: the oldest not received yet, as soon as one
    /// arrived. A payload that does not deserialize gives an error of kind
    /// `"bad_signal"`; none left once the workflow is canceled, an error of
    /// kind `"canceled"`.
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<String, pgwake::workflow::WorkflowError> {
    ///     let mut approvals = ctx.signal_channel::<String>("approved");
    ///     let by = approvals.recv().await?;
    ///     Ok(by)
    /// }
    /// ```
    pub fn recv(&mut self) -> SignalRecv<'_, T> {
        SignalRecv {
            channel: self,
            done: false,
        }
    }
}

/// The next signal of a [`SignalChannel`]. Fused and `Unpin`.
#[derive(Debug)]
#[must_use = "a signal is received only when awaited"]
pub struct SignalRecv<'a, T> {
    channel: &'a mut SignalChannel<T>,
    done: bool,
}

impl<T: DeserializeOwned> Future for SignalRecv<'_, T> {
    type Output = Result<T, WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        park(&self.channel.state, cx);
        let (next, canceled) = {
            let channel = &self.channel;
            let mut state = channel.state.borrow_mut();
            (state.take_signal(&channel.name), state.canceled)
        };
        let Some(payload) = next else {
            if canceled {
                self.done = true;
                return Poll::Ready(Err(WorkflowError::canceled(format!(
                    "the workflow was canceled while it waited for a {:?} signal",
                    self.channel.name
                ))));
            }
            return Poll::Pending;
        };
        self.done = true;
        Poll::Ready(T::deserialize(payload).map_err(|err| {
            WorkflowError::new(
                "bad_signal",
                format!(
                    "a {:?} signal does not deserialize: {err}",
                    self.channel.name
                ),
            )
        }))
    }
}

impl<T: DeserializeOwned> FusedFuture for SignalRecv<'_, T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

/// A side effect's value, from [`WorkflowContext::side_effect`].
#[derive(Debug)]
#[must_use = "a side effect's value is read by awaiting it"]
pub struct SideEffect<T> {
    state: Rc<RefCell<ReplayState>>,
    index: usize,
    done: bool,
    output: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Future for SideEffect<T> {
    type Output = Result<T, WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        park(&self.state, cx);
        let value = self.state.borrow().side_effects[self.index]
            .value()
            .cloned();
        let Some(value) = value else {
            return Poll::Pending;
        };
        self.done = true;
        Poll::Ready(T::deserialize(value).map_err(|err| {
            WorkflowError::new(
                "bad_side_effect",
                format!("a recorded side effect does not deserialize: {err}"),
            )
        }))
    }
}

impl<T: DeserializeOwned> FusedFuture for SideEffect<T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}
