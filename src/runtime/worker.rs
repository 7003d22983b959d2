//! The `WorkerActor`: claims tasks of its queues when woken, runs their
//! handlers within its concurrency, completes them through the store, and
//! keeps its own fallback timer so that work is found even when no
//! notification ever arrives.
//!
//! When it claims is decided by its [`WakeState`] alone; this actor carries
//! out what that state machine returns, and answers the router's offers with
//! it. Every store call it makes has the store's deadline, so no silent
//! connection or held lock can leave it waiting for good.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::FutureExt;
use tracing::Instrument;

use super::backoff::{jittered, Backoff};
use super::handler::{ActivityFn, WorkflowFn};
use super::health::{HealthBoard, QueueCounters, WorkerEntry};
use super::messages::{
    AbandonInFlight, HandedOver, InFlightCount, ListenerStateChanged, MoreWorkLikely, OfferWake,
    RegisterOwnWorker, ReserveSlots, StopClaiming, TaskAvailable, TaskKind, TasksHandedOver,
    UnregisterWorker, WorkerIdle,
};
use super::record_batch::{when_to_flush, Buffer, Flush};
use super::router::QueueRouter;
use super::wake::{AfterClaim, ClaimEnd, Offer, Phase, Refill, WakeState};
use crate::error::StoreError;
use crate::store::{
    ActivityTask, EagerSlots, Queue, Store, WorkerId, WorkflowCompletion, WorkflowOutcome,
    WorkflowTask,
};

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
    /// After a failed claim or recording.
    pub(crate) error_backoff: Backoff,
    /// After a claim that skipped rows locked by another transaction: the
    /// lock ends unannounced, so look again, less often the longer it lasts.
    pub(crate) locked_backoff: Backoff,
    /// A claim or recording running longer than this is reported stuck.
    pub(crate) stuck_after: Duration,
    /// How long a finished activity's result waits for the rest of its
    /// batch before it is recorded, and a few freed slots for more before
    /// they are claimed.
    pub(crate) batch_window: Duration,
}

/// A worker of this process that another hands the tasks of its queues
/// over to, leased already, while it has free slots (eager dispatch): an
/// activity worker, to which a workflow worker's decisions lease their
/// activities, or a workflow worker, to which an activity worker's results
/// lease the workflow tasks they make ready. They run without a claim.
#[derive(Clone)]
pub(crate) struct EagerTarget {
    pub(crate) worker_id: WorkerId,
    pub(crate) queues: Vec<Queue>,
    pub(crate) lease: Duration,
    pub(crate) addr: Addr<WorkerActor>,
}

impl EagerTarget {
    /// The first of `targets` serving a queue of `decision`'s activities,
    /// and how many of them it serves.
    fn for_decision<'a>(
        targets: &'a [EagerTarget],
        task: &WorkflowTask,
        decision: &WorkflowCompletion,
    ) -> Option<(&'a EagerTarget, usize)> {
        let queue_of = |activity: &crate::store::ScheduleActivity| {
            activity.queue.clone().unwrap_or_else(|| task.queue.clone())
        };
        let first = decision
            .activities
            .iter()
            .map(queue_of)
            .find_map(|queue| targets.iter().find(|t| t.queues.contains(&queue)))?;
        let wanted = decision
            .activities
            .iter()
            .filter(|a| first.queues.contains(&queue_of(a)))
            .count();
        Some((first, wanted))
    }

    /// The one of `targets` serving the queue of most of `results`, the
    /// first when none serves any.
    fn for_results<'a>(
        targets: &'a [EagerTarget],
        results: &[PendingRecord],
    ) -> Option<&'a EagerTarget> {
        targets
            .iter()
            .enumerate()
            .max_by_key(|(index, target)| {
                let served = results
                    .iter()
                    .filter(|r| target.queues.contains(&r.task.queue))
                    .count();
                // The first of equals: `max_by_key` keeps the last.
                (served, std::cmp::Reverse(*index))
            })
            .map(|(_, target)| target)
    }

    /// Reserves up to `wanted` of this worker's free slots: `None` when it
    /// grants none (full, stopping, or gone).
    async fn reserve(&self, wanted: usize) -> Option<Reservation<'_>> {
        let reserved = self.addr.send(ReserveSlots { wanted }).await.unwrap_or(0);
        (reserved > 0).then_some(Reservation {
            target: self,
            reserved,
        })
    }
}

/// Slots an [`EagerTarget`] reserved for the tasks a transaction is about
/// to lease to it. Answered once, committed or not, by
/// [`hand_over`](Self::hand_over).
struct Reservation<'a> {
    target: &'a EagerTarget,
    reserved: usize,
}

impl Reservation<'_> {
    /// What the transaction may lease: the target's queues, up to the
    /// slots reserved.
    fn slots(&self) -> EagerSlots<'_> {
        EagerSlots {
            worker: &self.target.worker_id,
            queues: &self.target.queues,
            max: self.reserved,
            lease: self.target.lease,
        }
    }

    /// Hands the tasks leased over (none when the transaction failed); the
    /// slots they do not fill are freed.
    fn hand_over(self, tasks: HandedOver) {
        self.target.addr.do_send(TasksHandedOver {
            tasks,
            reserved: self.reserved,
        });
    }
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
}

/// What a claim found.
struct ClaimResult {
    claimed: Vec<Claimed>,
    /// Whether it saw other work waiting, when the claim says so (a
    /// workflow claim); `None` when its length says it (a batch shorter
    /// than asked found the queues drained).
    more: Option<bool>,
    due_in: Option<Duration>,
    skipped_locked: bool,
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
    /// Since when its result is being recorded (its handler finished).
    recording_since: Option<Instant>,
}

/// A finished activity whose result waits to be recorded with others.
struct PendingRecord {
    number: u64,
    task: ActivityTask,
    report: Result<serde_json::Value, String>,
    outcome: Outcome,
    /// The store refused the handler's own result for good; `report` is now
    /// the failure that says so.
    refused: bool,
}

impl PendingRecord {
    /// What to do with a result the store refused for good: record, once,
    /// the activity's failure with the reason, so that the task does not
    /// run again and again at every lease expiry; `None` when that failure
    /// was refused too.
    fn refused(mut self, error: &StoreError) -> Option<Self> {
        if self.refused {
            tracing::error!(activity_id = %self.task.activity_id, error = %error, "could not record an activity's failure either; the task runs again when its lease expires");
            return None;
        }
        tracing::error!(activity_id = %self.task.activity_id, error = %error, "the store refused an activity's result; recording the activity as failed");
        self.report = Err(format!(
            "the activity's result could not be recorded: {error}"
        ));
        self.outcome = Outcome::Failed;
        self.refused = true;
        Some(self)
    }
}

/// How a run of an activity handler ended.
struct ActivityEnd {
    task: ActivityTask,
    /// `None` when the lease was lost while it ran: nothing to record.
    report: Option<Result<serde_json::Value, String>>,
    outcome: Outcome,
}

/// How a run of a workflow handler ended.
struct WorkflowEnd {
    task: WorkflowTask,
    /// The decision to record, or the handler's error/panic (`Err`), or
    /// `None` when the lease was lost while it ran.
    decision: Option<Result<WorkflowCompletion, (String, Outcome)>>,
}

/// Runs one kind of handler for a set of queues.
///
/// The runtime starts one for each [`ActivityWorker`](crate::ActivityWorker)
/// and [`WorkflowWorker`](crate::WorkflowWorker) and owns it; users see it
/// only through [`Health::workers`](crate::Health::workers) and the
/// per-queue counters.
pub(crate) struct WorkerActor {
    settings: WorkerSettings,
    /// Its queues' names, shared with every health report.
    queue_names: Arc<[String]>,
    job: Job,
    store: Store,
    router: Addr<QueueRouter>,
    health: HealthBoard,
    registration: Option<u64>,
    wake: WakeState,
    in_flight: HashMap<u64, InFlight>,
    next_task_number: u64,
    /// Since when the claim under way runs.
    claiming_since: Option<Instant>,
    timer: Option<SpawnHandle>,
    /// When `timer` fires.
    timer_due: Option<Instant>,
    /// Handlers started and not returned yet.
    handlers_running: usize,
    failed_claims: u32,
    /// Claims in a row that skipped rows locked by another transaction.
    locked_claims: u32,
    /// Activity results waiting to be recorded in one transaction.
    records: Vec<PendingRecord>,
    /// Since when the oldest of `records` waits.
    records_waiting_since: Option<Instant>,
    /// Records `records` when the batch window closes.
    flush_timer: Option<SpawnHandle>,
    /// A batch of results is being recorded.
    recording: bool,
    failed_records: u32,
    retry_records: Option<SpawnHandle>,
    /// Since when claims, or recordings, have failed in a row.
    claims_failing_since: Option<Instant>,
    records_failing_since: Option<Instant>,
    /// Where it hands tasks over to: activity workers for a workflow
    /// worker, workflow workers for an activity worker.
    hand_over_to: Arc<[EagerTarget]>,
}

impl std::fmt::Debug for WorkerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerActor")
            .field("worker", &self.settings.worker_id)
            .field("queues", &self.settings.queues)
            .field("wake", &self.wake)
            .field("in_flight", &self.in_flight.len())
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
        // Both claim every free slot's task in one statement; activity
        // workers refill in half batches (results come back together),
        // workflow workers at once (a step waits for its claim).
        let wake = match job {
            Job::Activity(_) => WakeState::new(settings.concurrency),
            Job::Workflow(_) => WakeState::refilling_at_once(settings.concurrency),
        };
        let queue_names = settings
            .queues
            .iter()
            .map(|q| q.as_str().to_string())
            .collect();
        let actor = Self {
            settings,
            queue_names,
            job,
            store,
            router,
            health,
            registration: None,
            wake,
            in_flight: HashMap::new(),
            next_task_number: 0,
            claiming_since: None,
            timer: None,
            timer_due: None,
            handlers_running: 0,
            failed_claims: 0,
            locked_claims: 0,
            records: Vec::new(),
            records_waiting_since: None,
            flush_timer: None,
            recording: false,
            failed_records: 0,
            retry_records: None,
            claims_failing_since: None,
            records_failing_since: None,
            hand_over_to: Arc::new([]),
        };
        actor.report_health();
        actor
    }

    /// A worker that hands tasks over to `targets` while they have free
    /// slots: a workflow worker its decisions' activities (to activity
    /// workers), an activity worker the workflow tasks its results make
    /// ready (to workflow workers).
    pub(crate) fn handing_over_to(mut self, targets: Vec<EagerTarget>) -> Self {
        self.hand_over_to = targets.into();
        self
    }

    fn count(&self, queues: &[Queue], update: impl Fn(&mut QueueCounters)) {
        self.health.count(self.settings.kind, queues, update);
    }

    /// Publishes this worker's state to the health board.
    fn report_health(&self) {
        let recording_since = self
            .in_flight
            .values()
            .filter_map(|f| f.recording_since)
            .min();
        self.health.set_worker(
            self.settings.worker_id.as_str(),
            WorkerEntry {
                kind: self.settings.kind,
                queues: self.queue_names.clone(),
                concurrency: self.settings.concurrency,
                slots_used: self.wake.running(),
                claiming_since: self.claiming_since,
                recording_since,
                failing_since: [self.claims_failing_since, self.records_failing_since]
                    .into_iter()
                    .flatten()
                    .min(),
                stopped: self.wake.phase() == Phase::Stopped,
                stuck_after: self.settings.stuck_after,
            },
        );
    }

    /// Carries out a wake-up offer (from the router, or told directly).
    fn offered(&mut self, ctx: &mut Context<Self>) -> Offer {
        let offer = self.wake.offer();
        if let Offer::Started { max } = offer {
            self.claim(max, ctx);
        }
        offer
    }

    /// Claims up to `max` tasks; the wake-up state has already moved to
    /// claiming.
    fn claim(&mut self, max: usize, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        self.timer_due = None;
        self.claiming_since = Some(Instant::now());
        self.report_health();
        self.count(&self.settings.queues, |c| c.polls += 1);
        crate::metrics::poll(self.settings.kind, &self.settings.queues);
        let store = self.store.clone();
        let settings = self.settings.clone();
        let is_activity = matches!(self.job, Job::Activity(_));
        let claim = async move {
            let (worker, queues, lease) = (&settings.worker_id, &settings.queues, settings.lease);
            // Each claim is one statement that also says when the next timer
            // is due: what keeps an idle worker cheap and its timers on time.
            if is_activity {
                let poll = store
                    .poll_activity_tasks_detailed(worker, queues, max, lease)
                    .await?;
                return Ok(ClaimResult {
                    claimed: poll.tasks.into_iter().map(Claimed::Activity).collect(),
                    more: None,
                    due_in: poll.due_in,
                    skipped_locked: poll.skipped_locked,
                });
            }
            // Every free slot's task in one statement; an instance counts
            // once however many of its events are in line, so a claim
            // that took fewer than asked says whether more waits.
            let poll = store
                .poll_workflow_tasks(worker, queues, max, lease)
                .await?;
            Ok(ClaimResult {
                more: Some(poll.more),
                claimed: poll.tasks.into_iter().map(Claimed::Workflow).collect(),
                due_in: poll.due_in,
                skipped_locked: poll.skipped_locked,
            })
        };
        ctx.spawn(claim.into_actor(self).map(|result, act, ctx| {
            act.claiming_since = None;
            act.claimed(result, ctx);
        }));
    }

    fn claimed(&mut self, result: Result<ClaimResult, StoreError>, ctx: &mut Context<Self>) {
        let found = match result {
            Ok(found) => {
                self.failed_claims = 0;
                self.claims_failing_since = None;
                found
            }
            Err(err) => {
                self.failed_claims = self.failed_claims.saturating_add(1);
                self.claims_failing_since.get_or_insert_with(Instant::now);
                crate::metrics::poll_failed(self.settings.kind, &self.settings.queues);
                let delay = self.settings.error_backoff.delay(self.failed_claims);
                tracing::warn!(
                    worker = %self.settings.worker_id,
                    attempt = self.failed_claims,
                    retry_in = ?delay,
                    error = %err,
                    "claim failed; retrying"
                );
                let after = self.wake.claim_ended(ClaimEnd::Failed);
                debug_assert!(matches!(
                    after,
                    AfterClaim::RetryLater | AfterClaim::Stopped
                ));
                if after == AfterClaim::RetryLater {
                    self.arm_timer(delay, ctx);
                }
                self.report_health();
                return;
            }
        };
        if found.claimed.is_empty() {
            self.count(&self.settings.queues, |c| c.empty_polls += 1);
            crate::metrics::empty_poll(self.settings.kind, &self.settings.queues);
        }
        let end = match found.more {
            None => ClaimEnd::Claimed(found.claimed.len()),
            Some(false) => ClaimEnd::Drained(found.claimed.len()),
            Some(true) => ClaimEnd::More(found.claimed.len()),
        };
        let after = self.wake.claim_ended(end);
        for task in found.claimed {
            self.start_task(task, ctx);
        }
        match after {
            AfterClaim::ClaimAgain { max } => self.claim(max, ctx),
            AfterClaim::Full => self.router.do_send(MoreWorkLikely {
                kind: self.settings.kind,
                queues: self.settings.queues.clone(),
            }),
            AfterClaim::RefillSoon => self.arm_timer_by(self.settings.batch_window, ctx),
            AfterClaim::Idle => {
                if let Some(id) = self.registration {
                    self.router.do_send(WorkerIdle { id });
                }
                self.sleep(found.due_in, found.skipped_locked, ctx);
            }
            AfterClaim::RetryLater | AfterClaim::Stopped => {}
        }
        self.report_health();
    }

    /// Sleeps until the fallback, the next due time, or (when the claim
    /// skipped locked rows) a short, growing delay: a lock that ends is
    /// announced by nobody.
    fn sleep(&mut self, due_in: Option<Duration>, skipped_locked: bool, ctx: &mut Context<Self>) {
        let base = if self.settings.notifications && self.health.listening(self.settings.kind) {
            self.settings.fallback_while_listening
        } else {
            self.settings.fallback_while_degraded
        };
        let mut delay = jittered(base);
        if let Some(due) = due_in {
            // A hair after the due time: visible_at <= now() must hold.
            delay = delay.min(due + Duration::from_millis(2));
        }
        if skipped_locked {
            self.locked_claims = self.locked_claims.saturating_add(1);
            delay = delay.min(self.settings.locked_backoff.delay(self.locked_claims));
        } else {
            self.locked_claims = 0;
        }
        self.arm_timer(delay, ctx);
    }

    fn arm_timer(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        self.timer_due = Some(Instant::now() + delay);
        self.timer = Some(ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.timer_due = None;
            if let Some(max) = act.wake.timer_fired() {
                act.claim(max, ctx);
            }
        }));
    }

    /// Makes the timer fire within `delay`, leaving one due sooner alone:
    /// each freed slot asking again must not push the claim further out.
    fn arm_timer_by(&mut self, delay: Duration, ctx: &mut Context<Self>) {
        let due = Instant::now() + delay;
        if self.timer.is_none() || self.timer_due.is_some_and(|armed| armed > due) {
            self.arm_timer(delay, ctx);
        }
    }

    /// Runs a task it claimed, or that another worker handed over.
    fn start_task(&mut self, task: Claimed, ctx: &mut Context<Self>) {
        self.count(std::slice::from_ref(task.queue()), |c| c.claimed += 1);
        self.handlers_running += 1;
        let number = self.next_task_number;
        self.next_task_number += 1;
        let handle = match (&self.job, task.clone()) {
            (Job::Activity(handler), Claimed::Activity(task)) => {
                let run = run_activity(
                    self.store.clone(),
                    handler.clone(),
                    task,
                    self.settings.lease,
                );
                ctx.spawn(
                    run.into_actor(self)
                        .map(move |end, act, ctx| act.activity_ended(number, end, ctx)),
                )
            }
            (Job::Workflow(handler), Claimed::Workflow(task)) => {
                let run = run_workflow(
                    self.store.clone(),
                    handler.clone(),
                    task,
                    self.settings.lease,
                );
                ctx.spawn(
                    run.into_actor(self)
                        .map(move |end, act, ctx| act.workflow_ended(number, end, ctx)),
                )
            }
            _ => unreachable!("a worker claims only its own kind of task"),
        };
        self.in_flight.insert(
            number,
            InFlight {
                handle,
                task,
                recording_since: None,
            },
        );
    }

    fn mark_recording(&mut self, number: u64) {
        if let Some(in_flight) = self.in_flight.get_mut(&number) {
            in_flight.recording_since.get_or_insert_with(Instant::now);
        }
        self.report_health();
    }

    fn activity_ended(&mut self, number: u64, end: ActivityEnd, ctx: &mut Context<Self>) {
        self.handlers_running = self.handlers_running.saturating_sub(1);
        let Some(report) = end.report else {
            // Its slot frees now; a result of the others may have waited
            // for this handler alone.
            self.maybe_flush_records(ctx);
            self.finished(number, &end.task.queue, end.outcome, ctx);
            return;
        };
        self.mark_recording(number);
        self.records.push(PendingRecord {
            number,
            task: end.task,
            report,
            outcome: end.outcome,
            refused: false,
        });
        self.records_waiting_since.get_or_insert_with(Instant::now);
        self.maybe_flush_records(ctx);
    }

    /// Records the waiting results now or when their batch window closes,
    /// as [`when_to_flush`] says: alone, a result is recorded at once;
    /// under load, the results of a batch are recorded together.
    fn maybe_flush_records(&mut self, ctx: &mut Context<Self>) {
        let buffer = Buffer {
            waiting: self.records.len(),
            oldest_waited: self
                .records_waiting_since
                .map_or(Duration::ZERO, |since| since.elapsed()),
            handlers_running: self.handlers_running,
            busy: self.recording || self.retry_records.is_some(),
        };
        match when_to_flush(buffer, self.settings.batch_window) {
            Flush::Now => self.flush_records(ctx),
            Flush::After(delay) if self.flush_timer.is_none() => {
                self.flush_timer = Some(ctx.run_later(delay, |act, ctx| {
                    act.flush_timer = None;
                    act.maybe_flush_records(ctx);
                }));
            }
            Flush::After(_) | Flush::Wait => {}
        }
    }

    /// Records every waiting result in one transaction; results that finish
    /// meanwhile wait for the next one. A result whose workflow is locked by
    /// another transaction waits (with its slot) and is retried; the others
    /// are not held up by it.
    fn flush_records(&mut self, ctx: &mut Context<Self>) {
        if self.recording || self.retry_records.is_some() || self.records.is_empty() {
            return;
        }
        if let Some(handle) = self.flush_timer.take() {
            ctx.cancel_future(handle);
        }
        self.recording = true;
        self.records_waiting_since = None;
        let batch = std::mem::take(&mut self.records);
        let store = self.store.clone();
        // The workflow tasks these results make ready go to a workflow
        // worker of this process, as many as it has slots for: the one
        // serving the queue of most of them (an activity's queue is its
        // workflow's unless the workflow chose another), else the first.
        // Only a guess: the hand-over takes nothing its queues do not hold.
        let target = EagerTarget::for_results(&self.hand_over_to, &batch).cloned();
        let record = async move {
            let pairs: Vec<(&ActivityTask, Result<serde_json::Value, String>)> =
                batch.iter().map(|r| (&r.task, r.report.clone())).collect();
            let mut owners: Vec<&crate::store::InstanceRef> =
                batch.iter().map(|r| &r.task.instance).collect();
            owners.sort_by(|a, b| {
                (&a.instance_id, &a.execution_id).cmp(&(&b.instance_id, &b.execution_id))
            });
            owners.dedup();
            let reservation = match &target {
                Some(target) => target.reserve(owners.len()).await,
                None => None,
            };
            let slots = reservation.as_ref().map(Reservation::slots);
            let outcome = store
                .complete_activity_tasks_handing_over(&pairs, slots.as_ref())
                .await;
            let (tasks, outcome) = match outcome {
                Ok((outcomes, tasks)) => (tasks, Ok(outcomes)),
                Err(err) => (Vec::new(), Err(err)),
            };
            if let Some(reservation) = reservation {
                reservation.hand_over(HandedOver::Workflows(tasks));
            }
            (batch, outcome)
        };
        ctx.spawn(record.into_actor(self).map(|(batch, outcome), act, ctx| {
            act.recording = false;
            act.recorded(batch, outcome, ctx);
        }));
    }

    fn recorded(
        &mut self,
        batch: Vec<PendingRecord>,
        outcome: Result<Vec<Result<(), StoreError>>, StoreError>,
        ctx: &mut Context<Self>,
    ) {
        let outcomes = match outcome {
            Ok(outcomes) => outcomes,
            Err(err) if err.is_transient() => {
                // The work is done and its lease still fences it: keep the
                // results and try again, rather than run the tasks again.
                tracing::warn!(error = %err, count = batch.len(), "recording results failed; retrying");
                self.records.splice(0..0, batch);
                self.records_waiting_since.get_or_insert_with(Instant::now);
                self.retry_recording(ctx);
                return;
            }
            Err(err) => {
                // Refused for good, and which result caused it is unknown:
                // each is recorded as the activity's failure instead.
                let mut freed = 0;
                for done in batch {
                    let (number, queue) = (done.number, done.task.queue.clone());
                    match done.refused(&err) {
                        Some(failure) => self.records.push(failure),
                        None => {
                            freed +=
                                usize::from(self.done_with(number, &queue, Outcome::NotRecorded))
                        }
                    }
                }
                self.records_waiting_since.get_or_insert_with(Instant::now);
                self.flush_records(ctx);
                self.free_slots(freed, ctx);
                return;
            }
        };
        let mut busy = Vec::new();
        let mut refused = Vec::new();
        // Slots freed by this batch, filled by one claim after it: a claim
        // per result would split every batch into claims of one task.
        let mut freed = 0;
        for (done, result) in batch.into_iter().zip(outcomes) {
            let recorded = match result {
                Ok(()) => done.outcome,
                Err(StoreError::LeaseLost { .. }) => Outcome::LeaseLost,
                Err(err) if err.is_transient() => {
                    tracing::debug!(activity_id = %done.task.activity_id, error = %err, "result waits for its workflow");
                    busy.push(done);
                    continue;
                }
                Err(err) => {
                    let (number, queue) = (done.number, done.task.queue.clone());
                    match done.refused(&err) {
                        Some(failure) => refused.push(failure),
                        None => {
                            freed +=
                                usize::from(self.done_with(number, &queue, Outcome::NotRecorded))
                        }
                    }
                    continue;
                }
            };
            freed += usize::from(self.done_with(done.number, &done.task.queue, recorded));
        }
        if !refused.is_empty() || !busy.is_empty() {
            self.records_waiting_since.get_or_insert_with(Instant::now);
        }
        self.records.extend(refused);
        if busy.is_empty() {
            self.failed_records = 0;
            self.records_failing_since = None;
            self.maybe_flush_records(ctx);
        } else {
            self.records.splice(0..0, busy);
            self.retry_recording(ctx);
        }
        self.free_slots(freed, ctx);
    }

    fn retry_recording(&mut self, ctx: &mut Context<Self>) {
        self.failed_records = self.failed_records.saturating_add(1);
        self.records_failing_since.get_or_insert_with(Instant::now);
        self.report_health();
        let delay = self.settings.error_backoff.delay(self.failed_records);
        self.retry_records = Some(ctx.run_later(delay, |act, ctx| {
            act.retry_records = None;
            act.flush_records(ctx);
        }));
    }

    fn workflow_ended(&mut self, number: u64, end: WorkflowEnd, ctx: &mut Context<Self>) {
        self.handlers_running = self.handlers_running.saturating_sub(1);
        let queue = end.task.queue.clone();
        let decision = match end.decision {
            None => return self.finished(number, &queue, Outcome::LeaseLost, ctx),
            Some(Err((error, outcome))) => {
                // The store counts the failure and puts the retry off (1 s
                // doubling to 5 min); the retry is a due time that the claim
                // after this slot frees reports, so this worker, idle or
                // not, wakes for it. The call has the store's deadline like
                // every other: the slot is not held for longer.
                let store = self.store.clone();
                let task = end.task;
                let fail = async move {
                    let retry = store.fail_workflow_task_counted(&task, &error).await;
                    (task, error, retry)
                };
                self.mark_recording(number);
                ctx.spawn(fail.into_actor(self).map(
                    move |(task, error, retry), act, ctx| {
                        // Its retry is a due time of this worker's queues,
                        // written by no one who announces it: woken for
                        // it here, since after a claim that saw the queues
                        // drained, the freed slot claims nothing.
                        let due = match &retry {
                            Ok((_, retry_in)) => Some(*retry_in),
                            Err(StoreError::LeaseLost { .. }) => None,
                            Err(_) => task
                                .lease
                                .locked_until()
                                .duration_since(std::time::SystemTime::now())
                                .ok(),
                        };
                        if let Some(due) = due {
                            act.arm_timer_by(due + Duration::from_millis(2), ctx);
                        }
                        let instance_id = &task.instance.instance_id;
                        match retry {
                            Ok((attempt, retry_in)) => {
                                tracing::warn!(%instance_id, attempt, %error, ?retry_in, "workflow task failed; retrying after a delay");
                            }
                            Err(StoreError::LeaseLost { .. }) => {
                                tracing::warn!(%instance_id, %error, "workflow task failed, and its lease was lost meanwhile: the new holder runs it");
                            }
                            Err(store_error) => {
                                // Not counted, and not put off: the task
                                // runs again once its lease lapses, a due
                                // time the claim reports.
                                tracing::warn!(%instance_id, %error, %store_error, "workflow task failed, and recording the failure failed too; retrying when its lease expires");
                            }
                        }
                        act.finished(number, &queue, outcome, ctx)
                    },
                ));
                return;
            }
            Some(Ok(decision)) => decision,
        };
        self.mark_recording(number);
        self.record_workflow(number, end.task, decision, false, ctx);
    }

    /// Records a workflow task's decision, retrying through passing
    /// failures with the actor's backoff. A decision the store refuses for
    /// good (out of range, too large, invalid) fails the instance with the
    /// reason, visibly, instead of being retried forever.
    fn record_workflow(
        &mut self,
        number: u64,
        task: WorkflowTask,
        decision: WorkflowCompletion,
        replaces_refused: bool,
        ctx: &mut Context<Self>,
    ) {
        let store = self.store.clone();
        let targets = self.hand_over_to.clone();
        let record = async move {
            let reservation = match EagerTarget::for_decision(&targets, &task, &decision) {
                Some((target, wanted)) => target.reserve(wanted).await,
                None => None,
            };
            let slots = reservation.as_ref().map(Reservation::slots);
            let result = store
                .complete_workflow_task_leasing(&task, decision.clone(), slots.as_ref())
                .await;
            let (tasks, result) = match result {
                Ok(tasks) => (tasks, Ok(())),
                Err(err) => (Vec::new(), Err(err)),
            };
            if let Some(reservation) = reservation {
                reservation.hand_over(HandedOver::Activities(tasks));
            }
            (task, decision, result)
        };
        ctx.spawn(record.into_actor(self).map(move |(task, decision, result), act, ctx| {
            let queue = task.queue.clone();
            match result {
                Ok(()) => {
                    act.failed_records = 0;
                    act.records_failing_since = None;
                    act.finished(number, &queue, Outcome::Completed, ctx)
                }
                Err(StoreError::LeaseLost { .. }) => act.finished(number, &queue, Outcome::LeaseLost, ctx),
                Err(err) if err.is_transient() => {
                    act.failed_records = act.failed_records.saturating_add(1);
                    act.records_failing_since.get_or_insert_with(Instant::now);
                    let delay = act.settings.error_backoff.delay(act.failed_records);
                    tracing::warn!(instance_id = %task.instance.instance_id, error = %err, retry_in = ?delay, "recording a decision failed; retrying");
                    ctx.run_later(delay, move |act, ctx| {
                        act.record_workflow(number, task, decision, replaces_refused, ctx)
                    });
                }
                Err(err) if replaces_refused => {
                    tracing::error!(instance_id = %task.instance.instance_id, error = %err, "could not record the failure of an unrecordable decision; the task runs again when its lease expires");
                    act.finished(number, &queue, Outcome::NotRecorded, ctx);
                }
                Err(err) => {
                    tracing::error!(instance_id = %task.instance.instance_id, error = %err, "the store refused the workflow's decision; failing the instance");
                    act.record_workflow(number, task, unrecordable(&err), true, ctx);
                }
            }
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
        match outcome {
            Outcome::Completed => crate::metrics::task_completed(self.settings.kind, queue),
            Outcome::LeaseLost => crate::metrics::lease_lost(self.settings.kind),
            Outcome::NotRecorded => crate::metrics::result_not_recorded(self.settings.kind),
            // Counted when the handler returned, recorded or not.
            Outcome::Failed | Outcome::Panicked => {}
        }
    }

    /// A task is done with (recorded, failed, or lost): its slot is free.
    fn finished(&mut self, number: u64, queue: &Queue, outcome: Outcome, ctx: &mut Context<Self>) {
        let freed = usize::from(self.done_with(number, queue, outcome));
        self.free_slots(freed, ctx);
    }

    /// Forgets a task and counts its outcome; whether that freed a slot
    /// (not when shutdown released it meanwhile, which freed it then).
    fn done_with(&mut self, number: u64, queue: &Queue, outcome: Outcome) -> bool {
        if self.in_flight.remove(&number).is_none() {
            return false;
        }
        self.count_outcome(queue, outcome);
        true
    }

    /// `count` slots are free: one claim fills them, now or when a few
    /// more are free (within the batch window).
    fn free_slots(&mut self, count: usize, ctx: &mut Context<Self>) {
        match self.wake.slots_freed(count) {
            Refill::Now { max } => self.claim(max, ctx),
            Refill::Soon => self.arm_timer_by(self.settings.batch_window, ctx),
            Refill::Nothing => {}
        }
        self.report_health();
    }
}

/// The decision recorded instead of one the store refused for good: the
/// instance fails, with the store's reason.
fn unrecordable(error: &StoreError) -> WorkflowCompletion {
    WorkflowCompletion::default().finish(WorkflowOutcome::Failed(format!(
        "the workflow's decision could not be recorded: {error}"
    )))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_string())
}

/// A claimed task whose lease a running handler keeps alive.
trait LeasedTask: Clone + 'static {
    const KIND: TaskKind;
    /// Names the task in logs.
    fn describe(&self) -> String;
    async fn extend(&mut self, store: &Store, lease: Duration) -> Result<(), StoreError>;
}

impl LeasedTask for ActivityTask {
    const KIND: TaskKind = TaskKind::Activity;
    fn describe(&self) -> String {
        format!("activity {}", self.activity_id)
    }
    async fn extend(&mut self, store: &Store, lease: Duration) -> Result<(), StoreError> {
        store.extend_activity_task(self, lease).await
    }
}

impl LeasedTask for WorkflowTask {
    const KIND: TaskKind = TaskKind::Workflow;
    fn describe(&self) -> String {
        format!("workflow task of {}", self.instance.instance_id)
    }
    async fn extend(&mut self, store: &Store, lease: Duration) -> Result<(), StoreError> {
        store.extend_workflow_task(self, lease).await
    }
}

/// Runs `work` (a handler's future) to its end, catching a panic, while
/// extending `task`'s lease every third of it. The handler is polled the
/// whole time, an extension in flight included: a slow extension never
/// pauses the work. `None` when the lease was lost: the work is abandoned,
/// since its result could not be recorded.
async fn run_with_heartbeat<T: LeasedTask, R>(
    store: &Store,
    task: &T,
    lease: Duration,
    work: impl std::future::Future<Output = R>,
) -> Option<std::thread::Result<R>> {
    let work = AssertUnwindSafe(work).catch_unwind();
    futures::pin_mut!(work);
    let heartbeat = lease / 3;
    let mut beats = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    // The lease id fences the claim and never changes, so an extension works
    // on a copy of the task and only its outcome matters.
    let mut extending: Option<futures::future::LocalBoxFuture<'static, Result<(), StoreError>>> =
        None;
    loop {
        tokio::select! {
            result = &mut work => return Some(result),
            _ = beats.tick(), if extending.is_none() => {
                let (store, mut copy) = (store.clone(), task.clone());
                extending = Some(async move { copy.extend(&store, lease).await }.boxed_local());
            }
            extended = async { extending.as_mut().expect("guarded").await }, if extending.is_some() => {
                extending = None;
                match extended {
                    Ok(()) => {
                        crate::metrics::lease_extended(T::KIND);
                    }
                    Err(StoreError::LeaseLost { .. }) => {
                        tracing::warn!(kind = ?T::KIND, task = %task.describe(), "lease lost while running; abandoning it");
                        return None;
                    }
                    Err(err) => tracing::warn!(task = %task.describe(), error = %err, "lease extension failed; will retry"),
                }
            }
        }
    }
}

/// Runs an activity handler while extending its lease; the worker records
/// the result (with others finished at the same time). A panic inside the
/// handler is caught here.
async fn run_activity(
    store: Store,
    handler: ActivityFn,
    task: ActivityTask,
    lease: Duration,
) -> ActivityEnd {
    let started = crate::metrics::activity_started(&task);
    // Parented to the trace the instance was started in, if any
    // (crate::trace_context); `attempt` is recorded by the registry's
    // handler, which alone knows it.
    let span = tracing::info_span!(
        "activity",
        name = %task.name,
        activity_id = %task.activity_id,
        instance_id = %task.instance.instance_id,
        queue = %task.queue,
        attempt = tracing::field::Empty,
    );
    crate::trace_context::set_parent(&span, &task.trace);
    let work = span.in_scope(|| handler(task.clone())).instrument(span);
    let Some(result) = run_with_heartbeat(&store, &task, lease, work).await else {
        return ActivityEnd {
            task,
            report: None,
            outcome: Outcome::LeaseLost,
        };
    };
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

/// Runs a workflow handler while extending its lease; the worker records
/// its decision.
async fn run_workflow(
    store: Store,
    handler: WorkflowFn,
    task: WorkflowTask,
    lease: Duration,
) -> WorkflowEnd {
    let started = crate::metrics::workflow_started(&task);
    // Parented to the trace the instance was started in, if any
    // (crate::trace_context); sub-workflows started by this task carry
    // this span's context.
    let workflow = task
        .metadata
        .as_ref()
        .and_then(|m| m.get("workflow"))
        .and_then(serde_json::Value::as_str);
    let span = tracing::info_span!(
        "workflow_task",
        workflow,
        instance_id = %task.instance.instance_id,
        execution_id = %task.instance.execution_id,
        queue = %task.queue,
    );
    crate::trace_context::set_parent(
        &span,
        &crate::trace_context::TraceCarrier::from_metadata(task.metadata.as_ref()),
    );
    let work = span.in_scope(|| handler(task.clone())).instrument(span);
    let Some(result) = run_with_heartbeat(&store, &task, lease, work).await else {
        return WorkflowEnd {
            task,
            decision: None,
        };
    };
    crate::metrics::handler_ended(TaskKind::Workflow, &task.queue, started, &result);
    let decision = match result {
        Ok(Ok(decision)) => Ok(decision),
        Ok(Err(err)) => Err((err.to_string(), Outcome::Failed)),
        Err(panic) => Err((
            format!("handler panicked: {}", panic_message(panic.as_ref())),
            Outcome::Panicked,
        )),
    };
    WorkflowEnd {
        task,
        decision: Some(decision),
    }
}

impl Actor for WorkerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let register = RegisterOwnWorker {
            kind: self.settings.kind,
            queues: self.settings.queues.clone(),
            offers: ctx.address().recipient(),
            listener_state: ctx.address().recipient(),
        };
        ctx.wait(
            self.router
                .send(register)
                .into_actor(self)
                .map(|result, act, ctx| {
                    act.registration = result.ok();
                    if let Some(max) = act.wake.timer_fired() {
                        act.claim(max, ctx);
                    }
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

impl Handler<OfferWake> for WorkerActor {
    type Result = bool;

    fn handle(&mut self, msg: OfferWake, ctx: &mut Context<Self>) -> bool {
        let offer = self.offered(ctx);
        tracing::trace!(worker = %self.settings.worker_id, queue = ?msg.queue.as_ref().map(Queue::as_str), reason = ?msg.reason, ?offer, "wake-up offered");
        offer.accepted()
    }
}

impl Handler<TaskAvailable> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: TaskAvailable, ctx: &mut Context<Self>) {
        // Told directly (not through the router): nobody to decline to; a
        // full worker claims anyway when its next slot frees.
        self.offered(ctx);
    }
}

impl Handler<ListenerStateChanged> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: ListenerStateChanged, ctx: &mut Context<Self>) {
        // The notification path is down: a long sleep would now be a long
        // delay. Shorten it; the resync after reconnecting wakes us anyway.
        if !msg.listening && self.timer.is_some() && self.wake.phase() == Phase::Idle {
            self.arm_timer(jittered(self.settings.fallback_while_degraded), ctx);
        }
    }
}

impl Handler<StopClaiming> for WorkerActor {
    type Result = ();

    fn handle(&mut self, _: StopClaiming, ctx: &mut Context<Self>) {
        self.wake.stop();
        if let Some(handle) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        self.timer_due = None;
        if let Some(id) = self.registration.take() {
            self.router.do_send(UnregisterWorker { id });
        }
        self.report_health();
    }
}

impl Handler<ReserveSlots> for WorkerActor {
    type Result = usize;

    fn handle(&mut self, msg: ReserveSlots, _: &mut Context<Self>) -> usize {
        let reserved = self.wake.reserve(msg.wanted);
        self.report_health();
        reserved
    }
}

impl Handler<TasksHandedOver> for WorkerActor {
    type Result = ();

    fn handle(&mut self, msg: TasksHandedOver, ctx: &mut Context<Self>) {
        let TasksHandedOver { tasks, reserved } = msg;
        debug_assert!(tasks.len() <= reserved, "more tasks than slots reserved");
        let unused = reserved.saturating_sub(tasks.len());
        let tasks: Vec<Claimed> = match tasks {
            HandedOver::Activities(tasks) => tasks.into_iter().map(Claimed::Activity).collect(),
            HandedOver::Workflows(tasks) => tasks.into_iter().map(Claimed::Workflow).collect(),
        };
        if self.wake.phase() == Phase::Stopped {
            // Shutting down (their slots were reserved before): give them
            // back at once rather than hold them until their leases expire.
            self.wake.released(reserved);
            let store = self.store.clone();
            ctx.spawn(
                async move {
                    for task in &tasks {
                        let released = match task {
                            Claimed::Activity(task) => store.release_activity_task(task).await,
                            Claimed::Workflow(task) => store.release_workflow_task(task).await,
                        };
                        if let Err(err) = released {
                            tracing::warn!(task = ?task.queue(), error = %err, "could not give back a task handed over during shutdown; it runs again when its lease expires");
                        }
                    }
                }
                .into_actor(self),
            );
            self.report_health();
            return;
        }
        if !tasks.is_empty() {
            tracing::debug!(worker = %self.settings.worker_id, count = tasks.len(), "tasks handed over, leased");
        }
        for task in tasks {
            self.start_task(task, ctx);
        }
        self.free_slots(unused, ctx);
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
            .filter(|(_, f)| f.recording_since.is_none())
            .map(|(n, _)| *n)
            .collect();
        self.wake.released(running.len());
        self.handlers_running = 0;
        for number in running {
            let Some(in_flight) = self.in_flight.remove(&number) else {
                continue;
            };
            ctx.cancel_future(in_flight.handle);
            let store = self.store.clone();
            releases.push(async move {
                let released = match in_flight.task {
                    Claimed::Activity(task) => store.release_activity_task(&task).await,
                    Claimed::Workflow(task) => store.release_workflow_task(&task).await,
                };
                matches!(released, Ok(true))
            });
        }
        self.report_health();
        Box::pin(
            futures::future::join_all(releases)
                .into_actor(self)
                .map(|released, _, _| released.into_iter().filter(|r| *r).count()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::store::{InstanceRef, Lease};

    fn record() -> PendingRecord {
        PendingRecord {
            number: 7,
            task: ActivityTask {
                row_id: 1,
                activity_id: "a-1".into(),
                instance: InstanceRef {
                    instance_id: "i".into(),
                    execution_id: "e".into(),
                },
                queue: Queue::new("q").unwrap(),
                schedule_event_id: 3,
                name: "send".into(),
                input: serde_json::Value::Null,
                enqueued_at: SystemTime::now(),
                lease: Lease::new(WorkerId::unique("test"), SystemTime::now(), 42),
                trace: Default::default(),
            },
            report: Ok(serde_json::json!("done")),
            outcome: Outcome::Completed,
            refused: false,
        }
    }

    #[test]
    fn a_refused_result_becomes_the_activitys_failure_once_then_is_given_up() {
        let refused = StoreError::InvalidDuration {
            what: "something",
            reason: "out of range",
        };
        let failure = record().refused(&refused).expect("recorded as a failure");
        assert_eq!(failure.outcome, Outcome::Failed);
        let message = failure.report.as_ref().unwrap_err();
        assert!(
            message.contains("could not be recorded") && message.contains("out of range"),
            "{message}"
        );
        assert!(failure.refused(&refused).is_none(), "not retried forever");
    }
}
