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

use super::command::{ActivityCommand, SideEffectCommand, State, TimerCommand};
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
                    .with_retry(options.retry);
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

    /// Waits `delay` (a durable timer).
    ///
    /// ```
    /// async fn wf(ctx: pgwake::workflow::WorkflowContext, _: ()) -> Result<(), pgwake::workflow::WorkflowError> {
    ///     ctx.sleep(std::time::Duration::from_secs(3600)).await;
    ///     Ok(())
    /// }
    /// ```
    pub fn sleep(&self, delay: Duration) -> Sleep {
        Sleep(self.timer(delay))
    }

    /// A durable timer firing after `delay`, which may be canceled: it
    /// then resolves to an error of kind `"canceled"`.
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

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        let result = match &self.kind {
            ActivityKind::Failed(err) => Err(err.clone()),
            ActivityKind::Scheduled(index) => {
                let state = self.state.borrow();
                match state.activity_result(*index) {
                    None => return Poll::Pending,
                    Some(Err(err)) => Err(err.clone()),
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
        self.state.borrow_mut().timers[self.index].cancel();
    }
}

impl Future for Timer {
    type Output = Result<(), WorkflowError>;

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
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

/// [`WorkflowContext::sleep`]: a timer nobody cancels.
#[derive(Debug)]
#[must_use = "sleeping happens only when awaited"]
pub struct Sleep(Timer);

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
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
    /// `"bad_signal"`.
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

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        let next = {
            let channel = &self.channel;
            channel.state.borrow_mut().take_signal(&channel.name)
        };
        let Some(payload) = next else {
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

    fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
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
