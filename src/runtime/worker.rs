//! The `WorkerActor`: claims tasks of its queues when woken, runs their
//! handlers within its concurrency, completes them through the store, and
//! keeps its own fallback timer so that work is found even when no
//! notification ever arrives.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use futures::FutureExt;

use super::backoff::{jittered, Backoff};
use super::handler::{ActivityFn, WorkflowFn};
use super::health::{HealthBoard, QueueCounters};
use super::messages::{
    AbandonInFlight, InFlightCount, ListenerStateChanged, MoreWorkLikely, RegisterWorker,
    StopClaiming, TaskAvailable, TaskKind, UnregisterWorker, WakePolicy, WorkerIdle,
};
use super::router::QueueRouter;
use crate::error::StoreError;
use crate::store::{ActivityTask, Lease, Queue, Store, WorkerId, WorkflowTask};

/// How long a failed workflow task waits before it is retried.
const WORKFLOW_RETRY_DELAY: Duration = Duration::from_secs(1);
/// Attempts at recording a result through a passing database failure.
const COMPLETION_ATTEMPTS: u32 = 6;

#[derive(Clone)]
pub(crate) enum Job {
    Activity(ActivityFn),
    Workflow(WorkflowFn),
}

/// A worker's settings, validated by the builder.
#[derive(Debug, Clone)]
pub(crate) struct WorkerSettings {
    pub(crate) kind: TaskKind,
    pub(crate) worker_id: WorkerId,
    pub(crate) queues: Vec<Queue>,
    pub(crate) concurrency: usize,
    pub(crate) lease: Duration,
    pub(crate) notifications: bool,
    pub(crate) fallback_while_listening: Duration,
    pub(crate) fallback_while_degraded: Duration,
    pub(crate) error_backoff: Backoff,
}

#[derive(Debug, Clone)]
enum Claimed {
    Activity(ActivityTask),
    Workflow(WorkflowTask),
}

impl Claimed {
    fn queue(&self) -> &Queue {
        match self {
            Claimed::Activity(task) => &task.queue,
            Claimed::Workflow(task) => &task.queue,
        }
    }

    fn lease(&self) -> &Lease {
        match self {
            Claimed::Activity(task) => &task.lease,
            Claimed::Workflow(task) => &task.lease,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Completed,
    Failed,
    Panicked,
    LeaseLost,
    NotRecorded,
}

struct InFlight {
    handle: SpawnHandle,
    task: Claimed,
    /// The newest fencing token, as the heartbeat renews it.
    lease: Rc<RefCell<Lease>>,
    /// The handler finished; its result is being recorded.
    recording: bool,
}

/// A finished activity whose result waits to be recorded with others.
struct PendingRecord {
    number: u64,
    task: ActivityTask,
    report: Result<serde_json::Value, String>,
    outcome: Outcome,
}

/// How a run of an activity handler ended.
struct ActivityEnd {
    task: ActivityTask,
    /// `None` when the lease was lost while it ran: nothing to record.
    report: Option<Result<serde_json::Value, String>>,
    outcome: Outcome,
}

/// Runs one kind of handler for a set of queues.
///
/// The runtime starts one for each [`ActivityWorker`](crate::ActivityWorker)
/// and [`WorkflowWorker`](crate::WorkflowWorker); its counters are in the health:
///
/// ```
/// use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig, TaskKind};
/// # async fn example(config: RuntimeConfig) -> Result<(), pgwake::RuntimeError> {
/// let handler = |t: ActivityTask| async move { Ok::<_, String>(t.input) };
/// let emails = ActivityWorker::new(["emails"], handler);
/// let runtime = Runtime::builder(config).activity_worker(emails).start().await?;
/// let counters = runtime.health().counters(TaskKind::Activity, "emails");
/// println!("{} polls, {} claimed", counters.polls, counters.claimed);
/// # Ok(()) }
/// ```
pub struct WorkerActor {
    settings: WorkerSettings,
    job: Job,
    store: Store,
    router: Addr<QueueRouter>,
    health: HealthBoard,
    registration: Option<u64>,
    in_flight: HashMap<u64, InFlight>,
    next_task_number: u64,
    polling: bool,
    /// A wake-up came while polling: poll again right after.
    repoll: bool,
    fallback: Option<SpawnHandle>,
    failed_polls: u32,
    draining: bool,
    /// Activity results waiting to be recorded in one transaction.
    records: Vec<PendingRecord>,
    /// A batch of results is being recorded.
    recording: bool,
}

impl std::fmt::Debug for WorkerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerActor")
            .field("worker", &self.settings.worker_id)
            .field("queues", &self.settings.queues)
            .field("in_flight", &self.in_flight.len())
            .field("draining", &self.draining)
            .finish()
    }
}

impl WorkerActor {
    pub(crate) fn new(
        settings: WorkerSettings,
        job: Job,
        store: Store,
        router: Addr<QueueRouter>,
        health: HealthBoard,
    ) -> Self {
        Self {
            settings,
            job,
            store,
            router,
            health,
            registration: None,
            in_flight: HashMap::new(),
            next_task_number: 0,
            polling: false,
            repoll: false,
            fallback: None,
            failed_polls: 0,
            draining: false,
            records: Vec::new(),
            recording: false,
        }
    }

    fn count(&self, queues: &[Queue], update: impl Fn(&mut QueueCounters)) {
        self.health.count(self.settings.kind, queues, update);
    }

    fn capacity(&self) -> usize {
        self.settings
            .concurrency
            .saturating_sub(self.in_flight.len())
    }

    /// Claims as much as there is room for, unless a poll is under way (then
    /// once more right after it) or there is no room (then after the next
    /// completion).
    fn poll(&mut self, ctx: &mut Context<Self>) {
        if self.draining {
            return;
        }
        if self.polling {
            self.repoll = true;
            return;
        }
        let capacity = self.capacity();
        if capacity == 0 {
            return;
        }
        if let Some(handle) = self.fallback.take() {
            ctx.cancel_future(handle);
        }
        self.polling = true;
        self.repoll = false;
        self.count(&self.settings.queues, |c| c.polls += 1);
        #[cfg(feature = "metrics")]
        crate::metrics::poll(self.settings.kind, &self.settings.queues);
        let store = self.store.clone();
        let settings = self.settings.clone();
        let is_activity = matches!(self.job, Job::Activity(_));
        let claim = async move {
            let (worker, queues, lease) = (&settings.worker_id, &settings.queues, settings.lease);
            // Each poll is one statement that also says when the next timer
            // is due: what keeps an idle worker cheap and its timers on time.
            if is_activity {
                let (tasks, due_in) = store
                    .poll_activity_tasks(worker, queues, capacity, lease)
                    .await?;
                return Ok((tasks.into_iter().map(Claimed::Activity).collect(), due_in));
            }
            let mut claimed = Vec::new();
            loop {
                match store.poll_workflow_task(worker, queues, lease).await {
                    Ok((Some(task), _)) => {
                        claimed.push(Claimed::Workflow(task));
                        if claimed.len() == capacity {
                            return Ok((claimed, None));
                        }
                    }
                    Ok((None, due_in)) => return Ok((claimed, due_in)),
                    // Keep what was claimed; the next poll reports the error.
                    Err(err) if !claimed.is_empty() => {
                        tracing::debug!(error = %err, "claim failed after some succeeded");
                        return Ok((claimed, None));
                    }
                    Err(err) => return Err(err),
                }
            }
        };
        ctx.spawn(claim.into_actor(self).map(move |result, act, ctx| {
            act.polling = false;
            act.polled(result, capacity, ctx);
        }));
    }

    fn polled(
        &mut self,
        result: Result<(Vec<Claimed>, Option<Duration>), StoreError>,
        requested: usize,
        ctx: &mut Context<Self>,
    ) {
        let (claimed, next_due) = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                self.failed_polls = self.failed_polls.saturating_add(1);
                #[cfg(feature = "metrics")]
                crate::metrics::poll_failed(self.settings.kind, &self.settings.queues);
                let delay = self.settings.error_backoff.delay(self.failed_polls);
                tracing::warn!(
                    worker = %self.settings.worker_id,
                    attempt = self.failed_polls,
                    retry_in = ?delay,
                    error = %err,
                    "poll failed; retrying"
                );
                self.arm_timer(delay, ctx);
                return;
            }
        };
        self.failed_polls = 0;
        if claimed.is_empty() {
            self.count(&self.settings.queues, |c| c.empty_polls += 1);
            #[cfg(feature = "metrics")]
            crate::metrics::empty_poll(self.settings.kind, &self.settings.queues);
        }
        let got = claimed.len();
        for task in claimed {
            self.start_task(task, ctx);
        }
        if self.draining {
            return;
        }
        if got == requested {
            // As much as we asked for: probably more waiting.
            if self.capacity() > 0 {
                self.poll(ctx);
            } else {
                self.router.do_send(MoreWorkLikely {
                    kind: self.settings.kind,
                    queues: self.settings.queues.clone(),
                });
            }
            return;
        }
        if self.repoll {
            self.poll(ctx);
            return;
        }
        if let Some(id) = self.registration {
            self.router.do_send(WorkerIdle { id });
        }
        let base = if self.settings.notifications && self.health.listening(self.settings.kind) {
            self.settings.fallback_while_listening
        } else {
            self.settings.fallback_while_degraded
        };
        let mut delay = jittered(base);
        if let Some(due) = next_due {
            // A hair after the due time: visible_at <= now() must hold.
            delay = delay.min(due + Duration::from_millis(2));
        }
        self.arm_timer(delay, ctx);
    }

    fn arm_timer(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.fallback.take() {
            ctx.cancel_future(handle);
        }
        self.fallback = Some(ctx.run_later(delay, |act, ctx| {
            act.fallback = None;
            act.poll(ctx);
        }));
    }

    fn start_task(&mut self, task: Claimed, ctx: &mut Context<Self>) {
        self.count(std::slice::from_ref(task.queue()), |c| c.claimed += 1);
        let number = self.next_task_number;
        self.next_task_number += 1;
        let lease = Rc::new(RefCell::new(task.lease().clone()));
        let handle = match (&self.job, task.clone()) {
            (Job::Activity(handler), Claimed::Activity(task)) => {
                let run = run_activity(
                    self.store.clone(),
                    handler.clone(),
                    task,
                    self.settings.lease,
                    lease.clone(),
                );
                ctx.spawn(
                    run.into_actor(self)
                        .map(move |end, act, ctx| act.activity_ended(number, end, ctx)),
                )
            }
            (Job::Workflow(handler), Claimed::Workflow(task)) => {
                let queue = task.queue.clone();
                let run = run_workflow(
                    self.store.clone(),
                    handler.clone(),
                    task,
                    self.settings.lease,
                    lease.clone(),
                );
                ctx.spawn(run.into_actor(self).map(move |outcome, act, ctx| {
                    act.in_flight.remove(&number);
                    act.finished(&queue, outcome, ctx);
                }))
            }
            _ => unreachable!("a worker claims only its own kind of task"),
        };
        self.in_flight.insert(
            number,
            InFlight {
                handle,
                task,
                lease,
                recording: false,
            },
        );
    }

    fn activity_ended(&mut self, number: u64, end: ActivityEnd, ctx: &mut Context<Self>) {
        let Some(report) = end.report else {
            self.in_flight.remove(&number);
            self.finished(&end.task.queue, end.outcome, ctx);
            return;
        };
        if let Some(in_flight) = self.in_flight.get_mut(&number) {
            in_flight.recording = true;
        }
        self.records.push(PendingRecord {
            number,
            task: end.task,
            report,
            outcome: end.outcome,
        });
        self.flush_records(ctx);
    }

    /// Records every waiting result in one transaction; results that finish
    /// meanwhile wait for the next one. Alone, a result is recorded at once;
    /// under load, results of a batch are recorded together.
    fn flush_records(&mut self, ctx: &mut Context<Self>) {
        if self.recording || self.records.is_empty() {
            return;
        }
        self.recording = true;
        let batch = std::mem::take(&mut self.records);
        let store = self.store.clone();
        let record = async move {
            let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                let pairs: Vec<(&ActivityTask, Result<serde_json::Value, String>)> =
                    batch.iter().map(|r| (&r.task, r.report.clone())).collect();
                match store.complete_activity_tasks(&pairs).await {
                    Ok(outcomes) => break Ok(outcomes),
                    Err(err) if err.is_transient() && attempt < COMPLETION_ATTEMPTS => {
                        tracing::warn!(attempt, error = %err, "recording results failed; retrying");
                        tokio::time::sleep(backoff.delay(attempt)).await;
                    }
                    Err(err) => break Err(err),
                }
            };
            (batch, outcome)
        };
        ctx.spawn(record.into_actor(self).map(|(batch, outcome), act, ctx| {
            act.recording = false;
            if let Err(err) = &outcome {
                tracing::error!(error = %err, count = batch.len(), "could not record results; those tasks will run again when their leases expire");
            }
            for (index, done) in batch.into_iter().enumerate() {
                act.in_flight.remove(&done.number);
                let recorded = match &outcome {
                    Ok(outcomes) => match outcomes.get(index) {
                        Some(Ok(())) => done.outcome,
                        Some(Err(StoreError::LeaseLost { .. })) => Outcome::LeaseLost,
                        _ => Outcome::NotRecorded,
                    },
                    Err(_) => Outcome::NotRecorded,
                };
                act.count_outcome(&done.task.queue, recorded);
            }
            act.flush_records(ctx);
            act.poll(ctx);
        }));
    }

    fn count_outcome(&self, queue: &Queue, outcome: Outcome) {
        self.count(std::slice::from_ref(queue), |c| match outcome {
            Outcome::Completed => c.completed += 1,
            Outcome::Failed => c.failed += 1,
            Outcome::Panicked => c.panicked += 1,
            Outcome::LeaseLost => c.leases_lost += 1,
            Outcome::NotRecorded => {}
        });
        #[cfg(feature = "metrics")]
        match outcome {
            Outcome::Completed => crate::metrics::task_completed(self.settings.kind, queue),
            Outcome::LeaseLost => crate::metrics::lease_lost(self.settings.kind),
            Outcome::NotRecorded => crate::metrics::result_not_recorded(self.settings.kind),
            // Counted when the handler returned, recorded or not.
            Outcome::Failed | Outcome::Panicked => {}
        }
    }

    fn finished(&mut self, queue: &Queue, outcome: Outcome, ctx: &mut Context<Self>) {
        self.count_outcome(queue, outcome);
        // A failed workflow task keeps its lease for WORKFLOW_RETRY_DELAY; the
        // poll below sees that lease's expiry as a due time and comes back
        // for it then.
        self.poll(ctx);
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string())
}

/// A claimed task whose lease a running handler keeps alive.
trait LeasedTask {
    const KIND: TaskKind;
    fn lease(&self) -> &Lease;
    /// Names the task in logs.
    fn describe(&self) -> String;
    async fn extend(&mut self, store: &Store, lease: Duration) -> Result<(), StoreError>;
}

impl LeasedTask for ActivityTask {
    const KIND: TaskKind = TaskKind::Activity;
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn describe(&self) -> String {
        format!("activity {}", self.activity_id)
    }
    async fn extend(&mut self, store: &Store, lease: Duration) -> Result<(), StoreError> {
        store.extend_activity_task(self, lease).await
    }
}

impl LeasedTask for WorkflowTask {
    const KIND: TaskKind = TaskKind::Workflow;
    fn lease(&self) -> &Lease {
        &self.lease
    }
    fn describe(&self) -> String {
        format!("workflow task of {}", self.instance.instance_id)
    }
    async fn extend(&mut self, store: &Store, lease: Duration) -> Result<(), StoreError> {
        store.extend_workflow_task(self, lease).await
    }
}

/// Runs `work` (a handler's future) to its end, catching a panic, while
/// extending `task`'s lease every third of it and publishing each new
/// fencing token to `shared_lease`. `None` when the lease was lost: the work
/// is abandoned, since its result could not be recorded.
async fn run_with_heartbeat<T: LeasedTask, R>(
    store: &Store,
    task: &mut T,
    lease: Duration,
    shared_lease: &RefCell<Lease>,
    work: impl std::future::Future<Output = R>,
) -> Option<std::thread::Result<R>> {
    let work = AssertUnwindSafe(work).catch_unwind();
    futures::pin_mut!(work);
    let heartbeat = lease / 3;
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        tokio::select! {
            result = &mut work => return Some(result),
            _ = beats.tick() => match task.extend(store, lease).await {
                Ok(()) => {
                    *shared_lease.borrow_mut() = task.lease().clone();
                    #[cfg(feature = "metrics")]
                    crate::metrics::lease_extended(T::KIND);
                }
                Err(StoreError::LeaseLost { .. }) => {
                    tracing::warn!(kind = ?T::KIND, task = %task.describe(), "lease lost while running; abandoning it");
                    return None;
                }
                Err(err) => tracing::warn!(task = %task.describe(), error = %err, "lease extension failed; will retry"),
            },
        }
    }
}

/// Runs an activity handler while extending its lease; the worker records
/// the result (with others finished at the same time). A panic inside the
/// handler is caught here.
async fn run_activity(
    store: Store,
    handler: ActivityFn,
    mut task: ActivityTask,
    lease: Duration,
    shared_lease: Rc<RefCell<Lease>>,
) -> ActivityEnd {
    #[cfg(feature = "metrics")]
    let started = crate::metrics::activity_started(&task);
    let input = task.clone();
    let work = async move { handler(input).await };
    let Some(result) = run_with_heartbeat(&store, &mut task, lease, &shared_lease, work).await
    else {
        return ActivityEnd {
            task,
            report: None,
            outcome: Outcome::LeaseLost,
        };
    };
    #[cfg(feature = "metrics")]
    crate::metrics::handler_ended(TaskKind::Activity, &task.queue, started, &result);
    let (report, outcome) = match result {
        Ok(Ok(value)) => (Ok(value), Outcome::Completed),
        Ok(Err(err)) => (Err(err.to_string()), Outcome::Failed),
        Err(panic) => {
            let message = panic_message(panic.as_ref());
            tracing::error!(activity_id = %task.activity_id, panic = %message, "activity handler panicked");
            (
                Err(format!("handler panicked: {message}")),
                Outcome::Panicked,
            )
        }
    };
    ActivityEnd {
        task,
        report: Some(report),
        outcome,
    }
}

/// Runs a workflow handler while extending its lease, then applies its
/// decision; an error or panic keeps the lease a moment and lets it retry.
async fn run_workflow(
    store: Store,
    handler: WorkflowFn,
    mut task: WorkflowTask,
    lease: Duration,
    shared_lease: Rc<RefCell<Lease>>,
) -> Outcome {
    #[cfg(feature = "metrics")]
    let started = crate::metrics::workflow_started(&task);
    let input = task.clone();
    let work = async move { handler(input).await };
    let Some(result) = run_with_heartbeat(&store, &mut task, lease, &shared_lease, work).await
    else {
        return Outcome::LeaseLost;
    };
    #[cfg(feature = "metrics")]
    crate::metrics::handler_ended(TaskKind::Workflow, &task.queue, started, &result);
    let (error, outcome) = match result {
        Ok(Ok(decision)) => {
            return record(
                || store.complete_workflow_task(&task, decision.clone()),
                Outcome::Completed,
            )
            .await
        }
        Ok(Err(err)) => (err.to_string(), Outcome::Failed),
        Err(panic) => (
            format!("handler panicked: {}", panic_message(panic.as_ref())),
            Outcome::Panicked,
        ),
    };
    tracing::warn!(instance_id = %task.instance.instance_id, %error, "workflow task failed; retrying in {WORKFLOW_RETRY_DELAY:?}");
    // Keep the lease just long enough to pace the retry, then let it lapse.
    let _ = store
        .extend_workflow_task(&mut task, WORKFLOW_RETRY_DELAY)
        .await;
    outcome
}

/// Records a result, retrying through passing database failures: the work
/// is done, and losing its result would mean doing it again.
async fn record<F, Fut>(mut complete: F, outcome: Outcome) -> Outcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    for attempt in 1..=COMPLETION_ATTEMPTS {
        match complete().await {
            Ok(()) => return outcome,
            Err(StoreError::LeaseLost { .. }) => return Outcome::LeaseLost,
            Err(err) if err.is_transient() && attempt < COMPLETION_ATTEMPTS => {
                tracing::warn!(attempt, error = %err, "recording a result failed; retrying");
                tokio::time::sleep(backoff.delay(attempt)).await;
            }
            Err(err) => {
                tracing::error!(error = %err, "could not record a result; the task will run again when its lease expires");
                return Outcome::NotRecorded;
            }
        }
    }
    Outcome::NotRecorded
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let register = RegisterWorker {
            kind: self.settings.kind,
            queues: self.settings.queues.clone(),
            recipient: ctx.address().recipient(),
            policy: WakePolicy::WhenIdle,
            listener_state: Some(ctx.address().recipient()),
        };
        ctx.wait(
            self.router
                .send(register)
                .into_actor(self)
                .map(|result, act, ctx| {
                    act.registration = result.ok();
                    act.poll(ctx);
                }),
        );
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if let Some(id) = self.registration.take() {
            self.router.do_send(UnregisterWorker { id });
        }
        Running::Stop
    }
}

impl Handler<TaskAvailable> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: TaskAvailable, ctx: &mut Context<Self>) {
        self.poll(ctx);
    }
}

impl Handler<ListenerStateChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: ListenerStateChanged, ctx: &mut Context<Self>) {
        // The notification path is down: a long sleep would now be a long
        // delay. Shorten it; the resync after reconnecting wakes us anyway.
        if !msg.listening && self.fallback.is_some() && !self.draining {
            self.arm_timer(jittered(self.settings.fallback_while_degraded), ctx);
        }
    }
}

impl Handler<StopClaiming> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: StopClaiming, ctx: &mut Context<Self>) {
        self.draining = true;
        if let Some(handle) = self.fallback.take() {
            ctx.cancel_future(handle);
        }
        if let Some(id) = self.registration.take() {
            self.router.do_send(UnregisterWorker { id });
        }
    }
}

impl Handler<InFlightCount> for WorkerActor {
    type Result = usize;

    fn handle(&mut self, _: InFlightCount, _: &mut Context<Self>) -> usize {
        self.in_flight.len()
    }
}

impl Handler<AbandonInFlight> for WorkerActor {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, _: AbandonInFlight, ctx: &mut Context<Self>) -> Self::Result {
        let mut releases = Vec::new();
        // Results being recorded stay: their handlers finished, and releasing
        // them would run them again.
        let running: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| !f.recording)
            .map(|(n, _)| *n)
            .collect();
        for number in running {
            let Some(in_flight) = self.in_flight.remove(&number) else {
                continue;
            };
            ctx.cancel_future(in_flight.handle);
            let lease = in_flight.lease.borrow().clone();
            let store = self.store.clone();
            releases.push(async move {
                let released = match in_flight.task {
                    Claimed::Activity(mut task) => {
                        task.lease = lease;
                        store.release_activity_task(&task).await
                    }
                    Claimed::Workflow(mut task) => {
                        task.lease = lease;
                        store.release_workflow_task(&task).await
                    }
                };
                matches!(released, Ok(true))
            });
        }
        Box::pin(
            futures::future::join_all(releases)
                .into_actor(self)
                .map(|released, _, _| released.into_iter().filter(|r| *r).count()),
        )
    }
}
