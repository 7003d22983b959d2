//! Workflow tasks: claiming an instance with work, applying its decision,
//! and keeping or giving back its lease.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use super::events::{
    append_history, event_from_row_at, insert_pending, EventColumns, NewEvent, APPEND_HISTORY_SQL,
    ATTRIBUTES_JOIN, EVENT_COLUMNS, INSERT_PENDING_SQL,
};
use super::instances::lock_instance_ids;
use super::model::{
    ActivityTask, Event, EventType, InstanceRef, InstanceState, Lease, NewInstance,
    WorkflowCompletion, WorkflowOutcome, WorkflowPoll, WorkflowTask, WorkflowTasksPoll,
    MAX_COMMANDS_PER_DECISION, MAX_TIMER_DELAY,
};
use super::names::{check_id, Queue, WorkerId};
use super::stats::WORKFLOW_DUE_SQL;
use super::{db, lease_seconds, Pipelined, Store, TouchedQueues};

/// An instance `i` that worker `$2` may claim on the queues `$1`: active,
/// not leased (or its lease ran out), and not sticky to another worker.
/// One definition for the claim's candidate sets, its look for skipped
/// instances and the hand-over, which must agree.
const CLAIMABLE_INSTANCE: &str = "i.queue = ANY($1) AND i.state = 0
    AND (i.locked_until IS NULL OR i.locked_until < now())
    AND (i.sticky_until IS NULL OR i.sticky_until < now() OR i.worker = $2)";
/// [`CLAIMABLE_INSTANCE`] for an instance `i` reached from its pending
/// event `pe` on a walk of the claim's own queues: its queue is the
/// event's. (Stated as `= ANY($1)`, or as a plain equality that the
/// planner carries over to the walk's own `pe.queue = q.name`, it could
/// read the instances of the queue through an index that leads with
/// another column, every instance ever, rather than look each event's
/// instance up: hence the `|| ''`, which no index serves.)
const CLAIMABLE_INSTANCE_OF_EVENT: &str = "i.queue || '' = pe.queue AND i.state = 0
    AND (i.locked_until IS NULL OR i.locked_until < now())
    AND (i.sticky_until IS NULL OR i.sticky_until < now() OR i.worker = $2)";
/// The row id of pending event `pe`'s instance, looked up by its key: the
/// claim's walks join each event they read to its instance this way. As a
/// plain join, the planner once read the instances of the claim's queues
/// through an index led by `completed_at` (every instance ever, finished
/// ones included: 0.7 ms at 100,000) and matched them to the events.
const INSTANCE_OF_EVENT: &str = "SELECT x.id FROM instances x
     WHERE x.instance_id = pe.instance_id AND x.execution_id = pe.execution_id";

/// The SQLSTATE `pgwake_require` raises with when a workflow task's lease
/// is no longer its holder's.
const LEASE_LOST: &str = "PW001";

/// Opens a completed task's part of the history, and ends its lease, in one
/// statement: the lease is released and the instance's state set (holder
/// `$2` and fencing token `$3` of row `$1` must both match; a task that
/// completes ends the run of failures before it, if any, see
/// `fail_workflow_task`); a WorkflowTaskStarted (`$9`, sequence id `$10`,
/// type `$11`) opens the task's part, as in go-workflows' histories (its
/// replay skips it, as ours does); the task's events (`$8`) move from the
/// pending events of execution `$6`/`$7` to the history after it, in their
/// order. Raises (`pgwake_require`) [`LEASE_LOST`] when the lease was taken
/// over, and when not exactly the task's events moved: the transaction is
/// then rolled back whatever else it did. The decision's own events are
/// numbered after the moved ones.
const OPEN_TASK_HISTORY_SQL: &str = "WITH lease AS (
   UPDATE instances
      SET locked_until = NULL,
          lease_id = NULL,
          sticky_until = now() + make_interval(secs => $4),
          state = $5,
          completed_at = CASE WHEN $5 <> 0 THEN now() END,
          task_attempts = 0,
          last_task_error = NULL
    WHERE id = $1 AND worker = $2 AND lease_id = $3
   RETURNING 1),
 moved AS (
   DELETE FROM pending_events
    WHERE instance_id = $6 AND execution_id = $7 AND event_id = ANY($8)
   RETURNING *),
 started_attributes AS (
   INSERT INTO attributes (event_id, instance_id, execution_id, data)
   VALUES ($9::text, $6, $7, 'null')),
 recorded AS (
   INSERT INTO history (event_id, sequence_id, instance_id, execution_id,
                        event_type, timestamp, schedule_event_id, visible_at)
   SELECT $9::text, $10::bigint, $6::text, $7::text, $11::int, now(), 0::bigint, NULL::timestamptz
   UNION ALL
   SELECT event_id, $10::bigint + row_number() OVER (ORDER BY id), instance_id, execution_id,
          event_type, timestamp, schedule_event_id, visible_at
     FROM moved)
 SELECT CASE WHEN (SELECT count(*) FROM lease) <> 1
             THEN pgwake_require(false, 'PW001', 'the workflow task''s lease was taken over')
             ELSE pgwake_require((SELECT count(*) FROM moved) = cardinality($8::text[]), 'PW002',
                                 'the workflow task''s pending events changed under its lease')
        END";

use crate::error::StoreError;

impl Store {
    /// Claims the instance whose oldest visible pending event is oldest,
    /// among active, unleased instances of `queues` that are not sticky to
    /// another worker; leases it to `worker` for `lease`. The task holds
    /// the instance's visible pending events and its whole history (what
    /// [`Workflows::execute`](crate::workflow::Workflows::execute) replays).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let queues = pgwake::queues(["orders"])?;
    /// if let Some(task) = store.claim_workflow_task(&worker, &queues, std::time::Duration::from_secs(60)).await? {
    ///     println!("{} new events for {}", task.new_events.len(), task.instance.instance_id);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An empty queue list, a zero lease, a database failure.
    pub async fn claim_workflow_task(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        lease: Duration,
    ) -> Result<Option<WorkflowTask>, StoreError> {
        Ok(self.poll_workflow_task(worker, queues, lease).await?.0)
    }

    /// [`claim_workflow_task`](Self::claim_workflow_task), and in the same
    /// statement how long until the next pending event of `queues` that is
    /// not visible yet (a timer) becomes visible.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let (task, due_in) = store
    ///     .poll_workflow_task(&worker, &pgwake::queues(["orders"])?, std::time::Duration::from_secs(60))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`claim_workflow_task`](Self::claim_workflow_task).
    pub async fn poll_workflow_task(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        lease: Duration,
    ) -> Result<(Option<WorkflowTask>, Option<Duration>), StoreError> {
        let poll = self
            .poll_workflow_task_detailed(worker, queues, lease)
            .await?;
        Ok((poll.task, poll.due_in))
    }

    /// [`poll_workflow_task`](Self::poll_workflow_task), and, when nothing
    /// was claimed, whether a claimable instance was skipped because another
    /// transaction had it locked: nothing announces when such a lock goes,
    /// so a worker told `skipped_locked` polls again soon instead of
    /// sleeping until the next notification. Still one statement for the
    /// claim; the look for skipped instances (a plain read, no locks) runs
    /// only when nothing was claimed.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let poll = store
    ///     .poll_workflow_task_detailed(&worker, &pgwake::queues(["orders"])?, std::time::Duration::from_secs(60))
    ///     .await?;
    /// if poll.task.is_none() && poll.skipped_locked {
    ///     println!("an instance with work is locked elsewhere: poll again soon");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`claim_workflow_task`](Self::claim_workflow_task).
    pub async fn poll_workflow_task_detailed(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        lease: Duration,
    ) -> Result<WorkflowPoll, StoreError> {
        let poll = self.poll_workflow_tasks(worker, queues, 1, lease).await?;
        Ok(WorkflowPoll {
            task: poll.tasks.into_iter().next(),
            due_in: poll.due_in,
            skipped_locked: poll.skipped_locked,
            more: poll.more,
        })
    }

    /// Claims up to `max` workflow tasks, each of another instance, in one
    /// statement: as [`poll_workflow_task_detailed`](Self::poll_workflow_task_detailed)
    /// claims one, the instances whose oldest visible pending events are
    /// oldest first, every task read with its events and history in the
    /// same round trip. A worker with several free slots fills them with
    /// one claim instead of one per slot.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let poll = store
    ///     .poll_workflow_tasks(&worker, &pgwake::queues(["orders"])?, 8, std::time::Duration::from_secs(60))
    ///     .await?;
    /// println!("claimed {} workflow tasks", poll.tasks.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`claim_workflow_task`](Self::claim_workflow_task). A `max` of 0
    /// claims nothing.
    pub async fn poll_workflow_tasks(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        max: usize,
        lease: Duration,
    ) -> Result<WorkflowTasksPoll, StoreError> {
        self.bounded(
            "claiming workflow tasks",
            self.poll_workflow_tasks_unbounded(worker, queues, max, lease),
        )
        .await
    }

    async fn poll_workflow_tasks_unbounded(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        max: usize,
        lease: Duration,
    ) -> Result<WorkflowTasksPoll, StoreError> {
        if queues.is_empty() {
            return Err(StoreError::NoQueues);
        }
        let max_tasks = i64::try_from(max).unwrap_or(i64::MAX);
        let lease_secs = lease_seconds(lease)?;
        let queue_names: Vec<&str> = queues.iter().map(Queue::as_str).collect();
        let lease_id = fastrand::i64(..);
        let client = self.client().await?;
        // Locks instances rows, FOR UPDATE SKIP LOCKED: it never waits, so
        // it cannot deadlock; the rows' conditions are re-checked on their
        // newest versions once locked. Oldest pending event first is fair
        // across instances. Each queue's events visible at once are walked
        // in that order, and its timers that came due in due order, through
        // the partial indexes of migration 13: timers not due yet, and other
        // queues' events, however many, are never read (events whose queue
        // is unknown, written before their instance was visible, are walked
        // too: none, in practice). Each walk stops after `max` events; an
        // instance with several of them counts once, so a claim may take
        // fewer than `max` while more wait, which `more` then says. (The
        // rows locked and not taken are unlocked at the commit that
        // follows.) The same conditions read without locking (the
        // statement's snapshot, where the rows claimed are still
        // unclaimed: hence `NOT IN claimed`) tell, when nothing was
        // claimed, whether an instance with work was skipped because
        // someone else holds it, and when some were, whether another had
        // work (`more`). That look walks the pending events in the
        // claim's own orders, not the instances of the queues: finished
        // instances, however many, are never read (nor, as one planned
        // on lagging statistics once did, every instance of the queue).
        // `due` is materialized:
        // the look runs once, not once per column that reads it.
        let started = std::time::Instant::now();
        let statement = client
            .prepare_cached(&CLAIM_SQL)
            .await
            .map_err(db("preparing a statement"))?;
        // The claimed instances' events and whole histories, read by the
        // statement after the claim in its transaction: a new statement, so
        // with a snapshot taken after the claim locked the rows. A previous
        // holder's completion that committed while we were claiming (the
        // claim then locked the row version it left) is visible there: its
        // events are in the history, not pending. A completion that had not
        // committed still holds the row, which the claim skipped. Pending
        // events and history come from the one statement, so from one
        // snapshot: an event is in one or the other, never both or neither,
        // and the executor replays exactly the history these new events
        // follow. When the claim took nothing, the read finds nothing.
        let read = client
            .prepare_cached(&HAND_OVER_READ_SQL)
            .await
            .map_err(db("preparing a statement"))?;
        // The claim is planned where the planner may only walk indexes in
        // their order: its statistics lag behind a burst of starts (a table
        // analyzed empty holds thousands of rows a second later), and with
        // them it sorted every ready event, or scanned every active
        // instance, on each claim (2-10 ms at 1,000 instances). The four
        // requests are sent together, one round trip; a cut-off claim
        // discards its connection, so no transaction is left open.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &queue_names,
            &worker.as_str(),
            &lease_secs,
            &lease_id,
            &max_tasks,
        ];
        let (_, claimed, rows, _) = futures::try_join!(
            client.batch_execute(super::BEGIN_INDEX_WALKS_ONLY),
            client.query(&statement, &params),
            client.query(&read, &[]),
            client.batch_execute("COMMIT"),
        )
        .map_err(db("claiming workflow tasks"))?;
        crate::metrics::claim_duration(crate::kinds::TaskKind::Workflow, started);
        // The statement answers one row at least (its LEFT JOIN); should it
        // not, nothing was claimed, and the worker had better look again
        // soon than sleep on it.
        let Some(first) = claimed.first() else {
            return Ok(WorkflowTasksPoll {
                tasks: Vec::new(),
                due_in: None,
                skipped_locked: true,
                more: false,
            });
        };
        let due_in = first.get::<_, Option<f64>>(0).map(super::stats::seconds);
        let skipped_locked: bool = first.get(1);
        if skipped_locked {
            tracing::debug!(worker = %worker, "claimable instance skipped: locked by another transaction");
        }
        let mut poll = WorkflowTasksPoll {
            tasks: Vec::new(),
            due_in,
            skipped_locked,
            more: first.get(2),
        };
        if first.get::<_, Option<i64>>(3).is_none() {
            return Ok(poll);
        }
        let events_of = events_by_row(&rows);
        for row in &claimed {
            let lease = Lease::new(worker.clone(), row.get(11), lease_id);
            if let Some(task) = claimed_task(&client, row, 3, lease, &events_of).await? {
                tracing::debug!(
                    instance_id = %task.instance.instance_id,
                    queue = %task.queue,
                    events = task.new_events.len(),
                    "workflow task claimed"
                );
                poll.tasks.push(task);
            }
        }
        Ok(poll)
    }

    /// Applies a workflow task's decision in one transaction: a
    /// [`EventType::WorkflowTaskStarted`] event (attributes `null`, stamped
    /// now) opens the task's part of the history, as in go-workflows'
    /// histories; the task's events move to the history after it, followed
    /// by the events the decision records; activities, timers,
    /// sub-workflows, signals and cancellations are written; the instance's
    /// state is set, its lease released, and its run of failed tasks, if
    /// any, ended (`task_attempts` back to 0, `last_task_error` cleared;
    /// see [`fail_workflow_task`](Self::fail_workflow_task)).
    ///
    /// A first task's history so reads `WorkflowTaskStarted`,
    /// `WorkflowExecutionStarted`, then what the decision recorded.
    ///
    /// Only the lease holder may complete: a task whose lease was taken over
    /// fails with [`StoreError::LeaseLost`] and changes nothing. A holder
    /// whose lease expired but was not taken over still completes (the
    /// fencing token proves nobody else started on it).
    ///
    /// When the execution ends, its remaining pending events and unfinished
    /// activities are deleted (nothing would ever process them), and its
    /// parent, if any, receives `SubWorkflowCompleted` or `SubWorkflowFailed`.
    ///
    /// Signals and cancellations reach the execution of their target that
    /// is active once the decision applies, a sub-workflow started by the
    /// same decision included. A signal that reaches none does not fail the
    /// decision: this execution receives [`EventType::SignalNotDelivered`]
    /// for it, and [`EventType::SignalSent`] for one that does (see
    /// [`WorkflowCompletion::signal`]).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, task: pgwake::WorkflowTask) -> Result<(), pgwake::StoreError> {
    /// use pgwake::{WorkflowCompletion, WorkflowOutcome};
    /// let decision = WorkflowCompletion::default().finish(WorkflowOutcome::Completed(serde_json::json!("ok")));
    /// store.complete_workflow_task(&task, decision).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], an invalid queue or id, a payload too large.
    pub async fn complete_workflow_task(
        &self,
        task: &WorkflowTask,
        completion: WorkflowCompletion,
    ) -> Result<(), StoreError> {
        self.complete_workflow_task_leasing(task, completion, None)
            .await
            .map(drop)
    }

    /// [`complete_workflow_task`](Self::complete_workflow_task), leasing
    /// the activities it schedules on `eager`'s queues, up to its free
    /// slots, to `eager`'s worker in the same transaction: they are
    /// returned, ready to run, and no claim (nor wake-up) is needed for
    /// them. The rest are written unleased, as always.
    pub(crate) async fn complete_workflow_task_leasing(
        &self,
        task: &WorkflowTask,
        completion: WorkflowCompletion,
        eager: Option<&EagerSlots<'_>>,
    ) -> Result<Vec<ActivityTask>, StoreError> {
        self.bounded(
            "recording a workflow decision",
            self.complete_workflow_task_unbounded(task, completion, eager),
        )
        .await
    }

    async fn complete_workflow_task_unbounded(
        &self,
        task: &WorkflowTask,
        completion: WorkflowCompletion,
        eager: Option<&EagerSlots<'_>>,
    ) -> Result<Vec<ActivityTask>, StoreError> {
        // Everything that can be refused is refused before the transaction.
        let mut plan = self.plan_completion(task, &completion)?;
        let eager_lease = EagerLease::new(eager)?;
        let writes_elsewhere = !completion.signals.is_empty()
            || !completion.cancellations.is_empty()
            || !completion.sub_workflows.is_empty()
            || matches!(completion.outcome, Some(WorkflowOutcome::ContinueAsNew(_)))
            || (plan.ends_execution && task.parent.is_some());
        if !writes_elsewhere {
            return self
                .complete_decision_pipelined(task, &completion, plan, &eager_lease)
                .await;
        }
        let mut client = self.client().await?;
        let started = std::time::Instant::now();
        let tx = self.begin_write(&mut client).await?;
        let mut touched = TouchedQueues::default();

        // 0. The advisory locks on every instance id this completion will
        //    create (its sub-workflows; its own id when it continues as
        //    new), all in one statement, in ascending key order, before any
        //    row lock. Taken one by one in the decision's order, two
        //    completions starting [a, b] and [b, a] deadlocked. Now each
        //    transaction requests advisory locks in ascending order only,
        //    and only while it holds no row lock (create_instance takes its
        //    one lock first thing too; insert_instance's own request below
        //    is for a lock held already, granted at once): no cycle runs
        //    through advisory locks alone, and none through an advisory
        //    lock and a row lock, since nobody waits for the one while
        //    holding the other.
        let continued_as_new =
            matches!(completion.outcome, Some(WorkflowOutcome::ContinueAsNew(_)));
        let created_ids: Vec<&str> = completion
            .sub_workflows
            .iter()
            .map(|sub| sub.instance.instance_id.as_str())
            .chain(continued_as_new.then_some(task.instance.instance_id.as_str()))
            .collect();
        lock_instance_ids(&tx, &created_ids).await?;

        // 1. Find the other executions this completion writes to, without
        //    locking (only ids are read here). A target that this very
        //    decision creates (a sub-workflow) is not found here: it does not
        //    exist yet. It needs no row lock either: see step 7.
        let target_ids: Vec<&str> = completion
            .signals
            .iter()
            .map(|s| s.instance_id.as_str())
            .chain(completion.cancellations.iter().map(String::as_str))
            .collect();
        let parent = task.parent.as_ref().filter(|_| plan.ends_execution);
        let parent_instance = parent.map(|(p, _)| p.instance_id.as_str());
        let parent_execution = parent.map(|(p, _)| p.execution_id.as_str());
        // Most decisions write to no other execution: then steps 1 and 2
        // are skipped, and step 3's UPDATE takes this row's lock (two
        // round trips fewer per workflow task).
        let writes_to_others = !target_ids.is_empty() || parent.is_some();
        let others = if !writes_to_others {
            Vec::new()
        } else {
            tx.query(
                &tx.prepare_cached(
                    "SELECT id, instance_id, execution_id FROM instances
                  WHERE (instance_id = ANY($1) AND state = 0)
                     OR (instance_id = $2 AND execution_id = $3)",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[&target_ids, &parent_instance, &parent_execution],
            )
            .await
            .map_err(db("finding the instances to write to"))?
        };

        // 2. Lock this instance and those, in ascending id order (the order
        //    every waiting transaction follows), then re-read their states.
        let mut lock_ids: Vec<i64> = others.iter().map(|r| r.get(0)).collect();
        lock_ids.push(task.row_id);
        let locked = if !writes_to_others {
            Vec::new()
        } else {
            tx.query(
                &tx.prepare_cached(
                    "SELECT id, instance_id, execution_id, state, queue FROM instances
                  WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[&lock_ids],
            )
            .await
            .map_err(db("locking the instances"))?
        };
        // The executions that the decision's signals and cancellations
        // reach, by instance id: the active ones just locked and, while it
        // goes on, this one (its row is in `locked` with its state before
        // this decision, so it is taken from the plan instead). Step 6 adds
        // the executions this decision creates.
        let mut receivers: HashMap<String, (InstanceRef, Queue)> = locked
            .iter()
            .filter(|r| r.get::<_, i64>(0) != task.row_id && r.get::<_, i32>(3) == 0)
            .map(|r| {
                let queue = Queue::new(r.get::<_, String>(4)).unwrap_or_default();
                let execution = InstanceRef {
                    instance_id: r.get(1),
                    execution_id: r.get(2),
                };
                (execution.instance_id.clone(), (execution, queue))
            })
            .collect();
        if !plan.ends_execution {
            receivers.insert(
                task.instance.instance_id.clone(),
                (task.instance.clone(), task.queue.clone()),
            );
        }

        // 3. The lease, released if still ours (LeaseLost otherwise, with
        //    the transaction rolled back); 4. the task's part of the history
        //    opened, its events moved there: one statement.
        let open = tx
            .prepare_cached(OPEN_TASK_HISTORY_SQL)
            .await
            .map_err(db("preparing a statement"))?;
        let opening = OpenTaskHistory::new(self, task, &plan);
        tx.execute(&open, &opening.params())
            .await
            .map_err(|source| decision_error(task, "opening the task's history", source))?;
        let first_new_sequence = opening.first_new_sequence;

        // 5. What the decision schedules is numbered after them (and written
        //    to the history in step 8, once it is known which signals were
        //    not delivered).
        let recorded = plan.history_with_sequence(first_new_sequence);

        if !completion.canceled_timers.is_empty() {
            tx.execute(
                &tx.prepare_cached(CANCEL_TIMERS_SQL)
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &task.instance.instance_id,
                    &task.instance.execution_id,
                    &EventType::TimerFired.code(),
                    &completion.canceled_timers,
                ],
            )
            .await
            .map_err(db("canceling timers"))?;
        }

        if plan.ends_execution {
            // Nothing would ever process these: leave no orphans behind.
            for sql in END_EXECUTION_SQL {
                tx.execute(
                    &tx.prepare_cached(sql)
                        .await
                        .map_err(db("preparing a statement"))?,
                    &[&task.instance.instance_id, &task.instance.execution_id],
                )
                .await
                .map_err(db("clearing a finished execution's work"))?;
            }
        }

        // 6. Activities, timers and sub-workflows, keyed by their scheduling
        //    event's sequence id; the next execution when this one continues
        //    as new.
        let mut scheduled_rows = ScheduledRows::default();
        let mut budget = eager_lease.budget();
        for (scheduled, sequence_id) in &recorded {
            let Scheduled::SubWorkflow(child) = &scheduled.kind else {
                scheduled_rows.add(scheduled, *sequence_id, &mut touched, &mut budget);
                continue;
            };
            let created = self
                .insert_instance(&tx, child, Some((&task.instance, *sequence_id)))
                .await?;
            touched.add_workflow(&child.queue);
            if let Some(created) = created {
                receivers.insert(child.instance_id.clone(), (created, child.queue.clone()));
            } else {
                let error = json!({
                    "error": format!("instance {:?} already has an active execution", child.instance_id),
                    "already_exists": true,
                });
                scheduled_rows.own_pending.push(NewEvent::new(
                    EventType::SubWorkflowFailed,
                    *sequence_id,
                    self.encode(&error)?,
                ));
            }
        }
        let own_pending = std::mem::take(&mut scheduled_rows.own_pending);
        let scheduled_activities = if scheduled_rows.activity_ids.is_empty() {
            Vec::new()
        } else {
            tx.query(
                &tx.prepare_cached(SCHEDULE_ACTIVITIES_SQL)
                    .await
                    .map_err(db("preparing a statement"))?,
                &scheduled_rows.params(task, &eager_lease),
            )
            .await
            .map_err(db("scheduling activities"))?
        };
        if !plan.ends_execution && !own_pending.is_empty() {
            insert_pending(&tx, &task.instance, &own_pending).await?;
            // Timers too: other processes learn of a due time only by polling.
            touched.add_workflow(&task.queue);
        }
        if let Some(WorkflowOutcome::ContinueAsNew(input)) = &completion.outcome {
            let next = NewInstance {
                instance_id: task.instance.instance_id.clone(),
                queue: task.queue.clone(),
                metadata: task.metadata.clone(),
                input: input.clone(),
            };
            let parent = task.parent.as_ref().map(|(p, s)| (p, *s));
            if let Some(created) = self.insert_instance(&tx, &next, parent).await? {
                receivers.insert(next.instance_id, (created, task.queue.clone()));
            }
            touched.add_workflow(&task.queue);
        }

        // 7. Events for other executions: signals, cancellations, the parent.
        //    Now that the sub-workflows exist, a signal or a cancellation
        //    for one started by this decision reaches it, after its
        //    WorkflowExecutionStarted (pending events are read in insertion
        //    order). The lock order stays that of every other transaction,
        //    with no new wait: an execution created here is a row this
        //    transaction inserted, which no other transaction can see, let
        //    alone lock, before the commit; its events are plain inserts;
        //    and the only lock that guards its id, the advisory lock, was
        //    taken in step 0 with all the others, before any row lock. The
        //    executions that existed already were locked in step 2, as before.
        //    Each signal also gets its sender one SignalSent or
        //    SignalNotDelivered, in the decision's order (step 8).
        let mut undelivered = Vec::new();
        let mut signal_reports = Vec::new();
        for (signal, data) in completion.signals.iter().zip(&plan.signal_data) {
            match receivers.get(&signal.instance_id) {
                Some((target, queue)) => {
                    let received = NewEvent::new(EventType::SignalReceived, 0, data.clone());
                    insert_pending(&tx, target, &[received]).await?;
                    touched.add_workflow(queue);
                    let report = serde_json::to_vec(&json!({
                        "instance_id": target.instance_id,
                        "execution_id": target.execution_id,
                        "name": signal.name,
                    }))?;
                    signal_reports.push(NewEvent::new(EventType::SignalSent, 0, report));
                }
                None => {
                    // Not size-checked (`encode`): the payload was accepted
                    // already, and refusing the report would refuse the
                    // whole decision.
                    let report = serde_json::to_vec(&json!({
                        "instance_id": signal.instance_id,
                        "name": signal.name,
                        "payload": signal.payload,
                        "reason": "the instance has no active execution: it was never created, \
                                   has finished, or was removed",
                    }))?;
                    signal_reports.push(NewEvent::new(EventType::SignalNotDelivered, 0, report));
                    undelivered.push(signal);
                }
            }
        }
        // A sender that goes on learns of its signals from pending events,
        // which wake it: its code may wait for them.
        if !plan.ends_execution && !signal_reports.is_empty() {
            insert_pending(&tx, &task.instance, &std::mem::take(&mut signal_reports)).await?;
            touched.add_workflow(&task.queue);
        }
        for instance_id in &completion.cancellations {
            match receivers.get(instance_id) {
                Some((target, queue)) => {
                    let cancel =
                        NewEvent::new(EventType::WorkflowExecutionCanceled, 0, b"null".to_vec());
                    insert_pending(&tx, target, &[cancel]).await?;
                    touched.add_workflow(queue);
                }
                None => {
                    tracing::debug!(target = %instance_id, "cancellation of an inactive instance: nothing to cancel")
                }
            }
        }
        if let (Some((parent_ref, schedule_id)), Some(report)) = (parent, &plan.parent_report) {
            let parent_row = locked.iter().find(|r| {
                r.get::<_, &str>(1) == parent_ref.instance_id
                    && r.get::<_, &str>(2) == parent_ref.execution_id
                    && r.get::<_, i32>(3) == 0
            });
            if let Some(parent_row) = parent_row {
                let report_event = NewEvent::new(report.0, *schedule_id, report.1.clone());
                insert_pending(&tx, parent_ref, &[report_event]).await?;
                touched
                    .add_workflow(&Queue::new(parent_row.get::<_, String>(4)).unwrap_or_default());
            }
        }

        // 8. What the decision records, numbered after the task's events: its
        //    scheduling and extra events, when it ends the execution the
        //    reports of its signals, then its outcome, last as in every
        //    history. The reports come after every scheduling event, so the
        //    sequence ids step 6 used stay theirs.
        let mut history = std::mem::take(&mut plan.history);
        history.extend(signal_reports);
        history.extend(plan.outcome_event.take());
        append_history(&tx, &task.instance, first_new_sequence, &history).await?;

        let leased =
            scheduled_rows.leased_tasks(task, &completion, &eager_lease, &scheduled_activities);
        self.commit_write(tx, touched, "committing the workflow task")
            .await?;
        if plan.ends_execution {
            self.finishes.ended(&task.instance.instance_id);
        }
        for signal in &undelivered {
            tracing::warn!(
                sender = %task.instance.instance_id,
                target = %signal.instance_id,
                signal = %signal.name,
                "signal not delivered: the target instance has no active execution; \
                 reported to the sender as SignalNotDelivered"
            );
        }
        crate::metrics::completion_duration(crate::kinds::TaskKind::Workflow, started);
        tracing::debug!(
            instance_id = %task.instance.instance_id,
            state = ?plan.state,
            activities = scheduled_rows.activity_ids.len(),
            leased = leased.len(),
            "workflow task completed"
        );
        Ok(leased)
    }

    /// A decision that writes to no other execution and creates none (most
    /// do: they schedule activities and timers, cancel timers, or end an
    /// execution that has no parent), applied in one round trip: no
    /// statement needs the answer of another, so they are sent together
    /// with BEGIN and COMMIT (see `Store::write_pipelined`). The statements
    /// are those of the general path, in its order; the lease check raises.
    async fn complete_decision_pipelined(
        &self,
        task: &WorkflowTask,
        completion: &WorkflowCompletion,
        mut plan: CompletionPlan,
        eager_lease: &EagerLease<'_>,
    ) -> Result<Vec<ActivityTask>, StoreError> {
        let client = self.client().await?;
        let started = std::time::Instant::now();
        let opening = OpenTaskHistory::new(self, task, &plan);
        let mut touched = TouchedQueues::default();
        let mut scheduled_rows = ScheduledRows::default();
        let mut budget = eager_lease.budget();
        for (scheduled, sequence_id) in plan.history_with_sequence(opening.first_new_sequence) {
            scheduled_rows.add(&scheduled, sequence_id, &mut touched, &mut budget);
        }
        let mut history = std::mem::take(&mut plan.history);
        history.extend(plan.outcome_event.take());
        let history = EventColumns::of(&history);
        let timers = EventColumns::of(&scheduled_rows.own_pending);

        // Every statement is prepared first (cached on the connection):
        // a request then leaves as soon as its future is first polled, in
        // the pipeline's order.
        let prepare = |sql| client.prepare_cached(sql);
        let (open, cancel, end_activities, end_pending, activities, pending, append) =
            futures::try_join!(
                prepare(OPEN_TASK_HISTORY_SQL),
                prepare(CANCEL_TIMERS_SQL),
                prepare(END_EXECUTION_SQL[0]),
                prepare(END_EXECUTION_SQL[1]),
                prepare(SCHEDULE_ACTIVITIES_SQL),
                prepare(INSERT_PENDING_SQL),
                prepare(APPEND_HISTORY_SQL),
            )
            .map_err(db("preparing a statement"))?;

        let instance = &task.instance;
        let open_params = opening.params();
        let cancel_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] = [
            &instance.instance_id,
            &instance.execution_id,
            &EventType::TimerFired.code(),
            &completion.canceled_timers,
        ];
        let end_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&instance.instance_id, &instance.execution_id];
        let activities_params = scheduled_rows.params(task, eager_lease);
        let scheduled_activities = std::sync::OnceLock::new();
        let pending_params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &instance.instance_id,
            &instance.execution_id,
            &timers.ids,
            &timers.types,
            &timers.schedule_ids,
            &timers.delays,
            &timers.data,
        ];
        let append_params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
            &instance.instance_id,
            &instance.execution_id,
            &opening.first_new_sequence,
            &history.ids,
            &history.types,
            &history.schedule_ids,
            &history.data,
        ];

        let mut statements = vec![Pipelined::execute(
            &client,
            "opening the task's history",
            &open,
            &open_params,
        )];
        if !completion.canceled_timers.is_empty() {
            statements.push(Pipelined::execute(
                &client,
                "canceling timers",
                &cancel,
                &cancel_params,
            ));
        }
        if plan.ends_execution {
            // Nothing would ever process these: leave no orphans behind.
            for end in [&end_activities, &end_pending] {
                statements.push(Pipelined::execute(
                    &client,
                    "clearing a finished execution's work",
                    end,
                    &end_params,
                ));
            }
        }
        if !scheduled_rows.activity_ids.is_empty() {
            statements.push(Pipelined::query(
                &client,
                "scheduling activities",
                &activities,
                &activities_params,
                &scheduled_activities,
            ));
        }
        if !plan.ends_execution && !scheduled_rows.own_pending.is_empty() {
            statements.push(Pipelined::execute(
                &client,
                "writing pending events",
                &pending,
                &pending_params,
            ));
            // Timers too: other processes learn of a due time only by polling.
            touched.add_workflow(&task.queue);
        }
        if !history.ids.is_empty() {
            statements.push(Pipelined::execute(
                &client,
                "appending to the history",
                &append,
                &append_params,
            ));
        }
        self.write_pipelined(&client, statements, touched)
            .await
            .map_err(|failure| decision_error(task, failure.context, failure.source))?;
        if plan.ends_execution {
            self.finishes.ended(&task.instance.instance_id);
        }
        let rows = scheduled_activities.get().map_or(&[][..], Vec::as_slice);
        let leased = scheduled_rows.leased_tasks(task, completion, eager_lease, rows);
        crate::metrics::completion_duration(crate::kinds::TaskKind::Workflow, started);
        tracing::debug!(
            instance_id = %task.instance.instance_id,
            state = ?plan.state,
            activities = scheduled_rows.activity_ids.len(),
            leased = leased.len(),
            "workflow task completed"
        );
        Ok(leased)
    }

    /// Extends the lease on a workflow task by `lease` from now (database
    /// clock) and records the new deadline in `task`. The claim's token
    /// does not change: should the reply be lost, `task` as it was still
    /// holds the lease (and may extend again, or complete).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, mut task: pgwake::WorkflowTask) -> Result<(), pgwake::StoreError> {
    /// store.extend_workflow_task(&mut task, std::time::Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease was taken over.
    pub async fn extend_workflow_task(
        &self,
        task: &mut WorkflowTask,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.bounded(
            "extending a workflow task's lease",
            self.extend_workflow_task_unbounded(task, lease),
        )
        .await
    }

    async fn extend_workflow_task_unbounded(
        &self,
        task: &mut WorkflowTask,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease_secs = lease_seconds(lease)?;
        let client = self.client().await?;
        // Locks one instances row by primary key and nothing else.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "UPDATE instances SET locked_until = now() + make_interval(secs => $4)
              WHERE id = $1 AND worker = $2 AND lease_id = $3 AND state = 0
              RETURNING locked_until",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &task.row_id,
                    &task.lease.worker().as_str(),
                    &task.lease.lease_id(),
                    &lease_secs,
                ],
            )
            .await
            .map_err(db("extending the workflow task's lease"))?;
        match row {
            Some(row) => {
                task.lease.extend_to(row.get(0));
                Ok(())
            }
            None => Err(StoreError::LeaseLost {
                task: format!("the workflow task of {}", task.instance.instance_id),
                worker: task.lease.worker().to_string(),
            }),
        }
    }

    /// Records that a workflow task failed (its handler returned an error
    /// or panicked, its history did not replay) and puts its retry off:
    /// the instance's `task_attempts` goes up by one, `error` becomes its
    /// `last_task_error` (cut to 8 KiB), its lease is released, and no
    /// worker may claim it before the returned delay has passed: 1 s after
    /// the first failure in a row, doubling to at most 5 min. The retry is
    /// a due time that [`poll_workflow_task`](Self::poll_workflow_task) and
    /// [`next_due_in`](Self::next_due_in) report, so an idle worker wakes
    /// for it with no notification. The next task that completes sets the
    /// attempts back to 0 ([`Store::instance`] and
    /// [`Client::describe`](crate::workflow::Client::describe) show both).
    ///
    /// Only the lease holder may fail a task, as only it may complete one.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
    /// if let Some(task) = store.claim_workflow_task(&worker, &queues, std::time::Duration::from_secs(60)).await? {
    ///     let retry_in = store.fail_workflow_task(&task, "the code panicked").await?;
    ///     println!("{} is retried in {retry_in:?}", task.instance.instance_id);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`] when the lease was taken over (or the task
    /// completed or failed already), a database failure.
    pub async fn fail_workflow_task(
        &self,
        task: &WorkflowTask,
        error: &str,
    ) -> Result<Duration, StoreError> {
        let (_, retry_in) = self.fail_workflow_task_counted(task, error).await?;
        Ok(retry_in)
    }

    /// [`fail_workflow_task`](Self::fail_workflow_task), and which failure
    /// in a row this was (1 for the first), for the worker's log.
    pub(crate) async fn fail_workflow_task_counted(
        &self,
        task: &WorkflowTask,
        error: &str,
    ) -> Result<(u32, Duration), StoreError> {
        self.bounded(
            "recording a failed workflow task",
            self.fail_workflow_task_unbounded(task, error),
        )
        .await
    }

    async fn fail_workflow_task_unbounded(
        &self,
        task: &WorkflowTask,
        error: &str,
    ) -> Result<(u32, Duration), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a transaction"))?;
        // Locks one instances row by primary key and nothing else, until
        // the commit: the count read here is the one the update below
        // raises. It may wait for a decision of another instance that
        // locked this row to signal it, but it holds no other lock while
        // it waits, so it cannot deadlock.
        let attempts = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT task_attempts FROM instances
                  WHERE id = $1 AND worker = $2 AND lease_id = $3
                    FOR UPDATE",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[
                    &task.row_id,
                    &task.lease.worker().as_str(),
                    &task.lease.lease_id(),
                ],
            )
            .await
            .map_err(db("reading the workflow task's attempts"))?;
        let Some(attempts) = attempts else {
            return Err(StoreError::LeaseLost {
                task: format!("the workflow task of {}", task.instance.instance_id),
                worker: task.lease.worker().to_string(),
            });
        };
        let attempt = attempts.get::<_, i32>(0).saturating_add(1).max(1);
        let delay = workflow_task_retry_delay(attempt.unsigned_abs());
        // Not claimable before the delay has passed: the claim skips an
        // instance whose `locked_until` is ahead, and the due-time query
        // reports it. No worker holds it meanwhile, and no stickiness
        // keeps it from the first worker to look once it is due.
        tx.execute(
            &tx.prepare_cached(
                "UPDATE instances
                SET task_attempts = $2,
                    last_task_error = $3,
                    locked_until = now() + make_interval(secs => $4),
                    worker = NULL,
                    lease_id = NULL,
                    sticky_until = NULL
              WHERE id = $1",
            )
            .await
            .map_err(db("preparing a statement"))?,
            &[
                &task.row_id,
                &attempt,
                &stored_task_error(error).as_ref(),
                &delay.as_secs_f64(),
            ],
        )
        .await
        .map_err(db("recording the failed workflow task"))?;
        tx.commit()
            .await
            .map_err(db("committing the failed workflow task"))?;
        Ok((attempt.unsigned_abs(), delay))
    }

    /// Gives a workflow task back unprocessed, so another worker can claim
    /// it at once instead of waiting for the lease to expire. Returns
    /// whether the lease was still held.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["orders"])?);
    /// if let Some(task) = store.claim_workflow_task(&worker, &queues, std::time::Duration::from_secs(60)).await? {
    ///     // Shutting down: let another worker take it now, not when the lease expires.
    ///     let was_held = store.release_workflow_task(&task).await?;
    ///     println!("released {}: {was_held}", task.instance.instance_id);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure.
    pub async fn release_workflow_task(&self, task: &WorkflowTask) -> Result<bool, StoreError> {
        self.bounded(
            "releasing a workflow task",
            self.release_workflow_task_unbounded(task),
        )
        .await
    }

    async fn release_workflow_task_unbounded(
        &self,
        task: &WorkflowTask,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // Locks one instances row by primary key and nothing else.
        let released = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE instances SET locked_until = NULL, lease_id = NULL, sticky_until = NULL
                  WHERE id = $1 AND worker = $2 AND lease_id = $3",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &task.row_id,
                    &task.lease.worker().as_str(),
                    &task.lease.lease_id(),
                ],
            )
            .await
            .map_err(db("releasing the workflow task"))?;
        Ok(released == 1)
    }

    fn plan_completion(
        &self,
        task: &WorkflowTask,
        completion: &WorkflowCompletion,
    ) -> Result<CompletionPlan, StoreError> {
        check_bounds(completion)?;
        let mut history = Vec::new();
        let mut kinds = Vec::new();
        let mut record = |event: NewEvent, kind: Scheduled| {
            history.push(event);
            kinds.push(kind);
        };
        for (command, activity) in completion.activities.iter().enumerate() {
            let queue = activity.queue.clone().unwrap_or_else(|| task.queue.clone());
            let data = self.encode(&json!({
                "name": activity.name, "input": activity.input, "queue": queue.as_str()
            }))?;
            record(
                NewEvent::new(EventType::ActivityScheduled, 0, data),
                Scheduled::Activity { queue, command },
            );
        }
        for timer in &completion.timers {
            let payload = self.encode(&timer.payload)?;
            let data = self.encode(&json!({
                "payload": timer.payload, "delay_ms": timer.delay.as_millis() as u64
            }))?;
            record(
                NewEvent::new(EventType::TimerScheduled, 0, data),
                Scheduled::Timer {
                    delay: timer.delay,
                    payload,
                },
            );
        }
        for canceled in &completion.canceled_timers {
            record(
                NewEvent::new(EventType::TimerCanceled, *canceled, b"null".to_vec()),
                Scheduled::Other,
            );
        }
        for sub in &completion.sub_workflows {
            check_id("instance id", &sub.instance.instance_id, 128)?;
            let data = self.encode(&json!({
                "instance_id": sub.instance.instance_id,
                "queue": sub.instance.queue.as_str(),
                "input": sub.instance.input,
                "metadata": sub.instance.metadata,
            }))?;
            record(
                NewEvent::new(EventType::SubWorkflowScheduled, 0, data),
                Scheduled::SubWorkflow(sub.instance.clone()),
            );
        }
        for (event_type, value) in &completion.history_events {
            record(
                NewEvent::new(*event_type, 0, self.encode(value)?),
                Scheduled::Other,
            );
        }
        let mut signal_data = Vec::new();
        for signal in &completion.signals {
            check_id("instance id", &signal.instance_id, 128)?;
            signal_data
                .push(self.encode(&json!({ "name": signal.name, "payload": signal.payload }))?);
        }
        for instance_id in &completion.cancellations {
            check_id("instance id", instance_id, 128)?;
        }
        let (state, parent_report, outcome_event) = match &completion.outcome {
            None => (InstanceState::Active, None, None),
            Some(outcome) => {
                let (event_type, attributes, report) = match outcome {
                    WorkflowOutcome::Completed(result) => (
                        EventType::WorkflowExecutionFinished,
                        json!({ "result": result }),
                        (EventType::SubWorkflowCompleted, json!({ "result": result })),
                    ),
                    WorkflowOutcome::Failed(error) => (
                        EventType::WorkflowExecutionFinished,
                        json!({ "error": error }),
                        (EventType::SubWorkflowFailed, json!({ "error": error })),
                    ),
                    WorkflowOutcome::Canceled => (
                        EventType::WorkflowExecutionFinished,
                        json!({ "canceled": true }),
                        (EventType::SubWorkflowFailed, json!({ "error": "canceled" })),
                    ),
                    WorkflowOutcome::ContinueAsNew(input) => (
                        EventType::WorkflowExecutionContinuedAsNew,
                        match &completion.continued_result {
                            Some(result) => json!({ "input": input, "result": result }),
                            None => json!({ "input": input }),
                        },
                        (
                            EventType::SubWorkflowCompleted,
                            json!({ "continued_as_new": true }),
                        ),
                    ),
                };
                let outcome_event = NewEvent::new(event_type, 0, self.encode(&attributes)?);
                let state = if matches!(outcome, WorkflowOutcome::ContinueAsNew(_)) {
                    InstanceState::ContinuedAsNew
                } else {
                    InstanceState::Finished
                };
                // A continued execution lives on under the same id: the parent
                // hears only of the end of the last one.
                let report = (state == InstanceState::Finished)
                    .then(|| Ok::<_, StoreError>((report.0, self.encode(&report.1)?)))
                    .transpose()?;
                (state, report, Some(outcome_event))
            }
        };
        Ok(CompletionPlan {
            ends_execution: state != InstanceState::Active,
            state,
            history,
            kinds,
            outcome_event,
            signal_data,
            parent_report,
        })
    }
}

/// How long a workflow task waits after its first failure in a row.
const FIRST_TASK_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The longest a failing workflow task waits between attempts: a task that
/// fails for good (a code change that does not replay) costs one attempt
/// every 5 minutes, and a fixed deployment is picked up within 5 minutes.
const MAX_TASK_RETRY_DELAY: Duration = Duration::from_secs(5 * 60);

/// The most of a failed task's error that is kept, in bytes.
const MAX_TASK_ERROR_BYTES: usize = 8 * 1024;

/// How long a workflow task waits after its `attempt`th failure in a row
/// (1 for the first): 1 s doubling, at most 5 min.
fn workflow_task_retry_delay(attempt: u32) -> Duration {
    // Nine doublings pass the cap already: a larger shift would only
    // overflow.
    let doublings = attempt.saturating_sub(1).min(16);
    FIRST_TASK_RETRY_DELAY
        .saturating_mul(1 << doublings)
        .min(MAX_TASK_RETRY_DELAY)
}

/// A failed task's error as it is stored: at most 8 KiB, cut at a character
/// boundary, with no NUL character (which a `text` column refuses, and
/// with it the whole failure record).
fn stored_task_error(error: &str) -> std::borrow::Cow<'_, str> {
    let mut end = error.len().min(MAX_TASK_ERROR_BYTES);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    let kept = &error[..end];
    if kept.contains('\0') {
        kept.replace('\0', "\u{fffd}").into()
    } else {
        kept.into()
    }
}

/// Refuses a decision too large for one transaction, or a timer that no
/// timestamp can hold: either would fail the same way on every attempt.
fn check_bounds(completion: &WorkflowCompletion) -> Result<(), StoreError> {
    let counts = [
        ("activities", completion.activities.len()),
        ("timers", completion.timers.len()),
        ("canceled timers", completion.canceled_timers.len()),
        ("sub-workflows", completion.sub_workflows.len()),
        ("signals", completion.signals.len()),
        ("cancellations", completion.cancellations.len()),
        ("history events", completion.history_events.len()),
    ];
    if let Some((kind, count)) = counts
        .into_iter()
        .find(|(_, count)| *count > MAX_COMMANDS_PER_DECISION)
    {
        return Err(StoreError::TooManyCommands {
            kind,
            count,
            limit: MAX_COMMANDS_PER_DECISION,
        });
    }
    if completion
        .timers
        .iter()
        .any(|timer| timer.delay > MAX_TIMER_DELAY)
    {
        return Err(StoreError::InvalidDuration {
            what: "timer delay",
            reason: "it must be at most 10 years (3650 days); for a later deadline, start a \
                     shorter timer and another one when it fires",
        });
    }
    Ok(())
}

/// What a scheduling history event sets in motion once its sequence id is known.
enum Scheduled {
    /// `command`: its index in the completion's `activities`.
    Activity {
        queue: Queue,
        command: usize,
    },
    Timer {
        delay: Duration,
        payload: Vec<u8>,
    },
    SubWorkflow(NewInstance),
    Other,
}

/// Deletes execution `$1`/`$2`'s pending `TimerFired` events (type `$3`)
/// of the timers scheduled by the events `$4`.
const CANCEL_TIMERS_SQL: &str = "DELETE FROM pending_events
  WHERE instance_id = $1 AND execution_id = $2 AND event_type = $3
    AND schedule_event_id = ANY($4)";

/// Deletes what nobody would ever process once execution `$1`/`$2` ended.
/// Activities first: deleting one waits for a result being recorded for it
/// (which holds its row until it commits), and the pending events' delete,
/// a statement later, then sees that result's event and deletes it too. In
/// the other order the result's event would outlive the execution.
const END_EXECUTION_SQL: [&str; 2] = [
    "DELETE FROM activities WHERE instance_id = $1 AND execution_id = $2",
    "DELETE FROM pending_events WHERE instance_id = $1 AND execution_id = $2",
];

/// Inserts execution `$1`/`$2`'s activities (`$3` the ActivityScheduled
/// type): ids `$4` on queues `$5`, scheduled by the events `$6`, in order;
/// those flagged in `$7` leased already, for `$8` seconds, to worker `$9`
/// under lease id `$10` (eager dispatch: see [`EagerSlots`]). Returns each
/// row's id, activity id, lease end, timestamp and whether it is leased.
const SCHEDULE_ACTIVITIES_SQL: &str =
    "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue,
                         timestamp, schedule_event_id, locked_until, worker, lease_id)
 SELECT activity_id, $1, $2, $3, queue, now(), schedule_event_id,
        CASE WHEN leased THEN now() + make_interval(secs => $8::float8) END,
        CASE WHEN leased THEN $9::text END,
        CASE WHEN leased THEN $10::bigint END
   FROM unnest($4::text[], $5::text[], $6::bigint[], $7::bool[])
        WITH ORDINALITY AS t(activity_id, queue, schedule_event_id, leased, ord)
  ORDER BY ord
 RETURNING id, activity_id, locked_until, timestamp, worker IS NOT NULL";

/// The activities and timers a decision's events set in motion.
#[derive(Default)]
struct ScheduledRows {
    activity_ids: Vec<String>,
    activity_queues: Vec<String>,
    activity_schedule_ids: Vec<i64>,
    /// Whether each activity is leased at once (eager dispatch).
    activity_leased: Vec<bool>,
    /// Each activity's index in the completion's `activities`.
    activity_commands: Vec<usize>,
    /// Its own pending events: its timers' `TimerFired`, and the failures
    /// of sub-workflows it could not start.
    own_pending: Vec<NewEvent>,
}

impl ScheduledRows {
    /// Takes in an activity or a timer scheduled by the event of sequence
    /// id `sequence_id`; a sub-workflow (started by its caller) or another
    /// event sets nothing in motion here.
    ///
    /// An activity that `budget` leases eagerly touches no queue: no worker
    /// needs waking for it, since no claim can take it.
    fn add(
        &mut self,
        scheduled: &Recorded<'_>,
        sequence_id: i64,
        touched: &mut TouchedQueues,
        budget: &mut EagerBudget<'_>,
    ) {
        match &scheduled.kind {
            Scheduled::Activity { queue, command } => {
                let leased = budget.take(queue);
                if !leased {
                    touched.add_activity(queue);
                }
                self.activity_ids.push(scheduled.event.event_id.clone());
                self.activity_queues.push(queue.as_str().to_string());
                self.activity_schedule_ids.push(sequence_id);
                self.activity_leased.push(leased);
                self.activity_commands.push(*command);
            }
            Scheduled::Timer { delay, payload } => {
                let mut fired = NewEvent::new(EventType::TimerFired, sequence_id, payload.clone());
                fired.visible_after = Some(*delay);
                self.own_pending.push(fired);
            }
            Scheduled::SubWorkflow(_) | Scheduled::Other => {}
        }
    }

    /// The parameters of [`SCHEDULE_ACTIVITIES_SQL`].
    fn params<'a>(
        &'a self,
        task: &'a WorkflowTask,
        lease: &'a EagerLease<'_>,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 10] {
        [
            &task.instance.instance_id,
            &task.instance.execution_id,
            &ACTIVITY_SCHEDULED,
            &self.activity_ids,
            &self.activity_queues,
            &self.activity_schedule_ids,
            &self.activity_leased,
            &lease.seconds,
            &lease.worker,
            &lease.lease_id,
        ]
    }

    /// The activities [`SCHEDULE_ACTIVITIES_SQL`] leased (its `rows`), as
    /// tasks for `lease`'s worker, in the decision's order; their names and
    /// inputs are `completion`'s.
    fn leased_tasks(
        &self,
        task: &WorkflowTask,
        completion: &WorkflowCompletion,
        lease: &EagerLease<'_>,
        rows: &[tokio_postgres::Row],
    ) -> Vec<ActivityTask> {
        let Some(slots) = lease.slots else {
            return Vec::new();
        };
        let mut leased = Vec::new();
        for row in rows.iter().filter(|row| row.get::<_, bool>(4)) {
            let activity_id: String = row.get(1);
            // Each row is one of this decision's: its id is among them.
            let Some(index) = self.activity_ids.iter().position(|id| *id == activity_id) else {
                continue;
            };
            let command = &completion.activities[self.activity_commands[index]];
            leased.push(ActivityTask {
                row_id: row.get(0),
                activity_id,
                instance: task.instance.clone(),
                queue: Queue::new(self.activity_queues[index].as_str()).unwrap_or_default(),
                schedule_event_id: self.activity_schedule_ids[index],
                name: command.name.clone(),
                input: command.input.clone(),
                enqueued_at: row.get(3),
                lease: Lease::new(slots.worker.clone(), row.get(2), lease.lease_id),
                trace: crate::trace_context::TraceCarrier::from_metadata(task.metadata.as_ref()),
            });
        }
        leased
    }
}

/// The workflow claim's three walks of the pending events that make an
/// instance of the queues `$1` claimable (see
/// `Store::poll_workflow_tasks`): each queue's events visible at once in id
/// order, each queue's timers that came due in due order, and the events
/// whose queue is unknown in id order; each event joined to its instance by
/// key. Each selects `columns`, adds the condition `extra` and ends with
/// `tail` (a limit, a lock). One definition for the claim's candidates and
/// its look for the others, which must walk alike.
fn pending_walks(columns: &str, extra: &str, tail: &str) -> [String; 3] {
    let per_queue = |condition: &str, order: &str| {
        format!(
            "SELECT r.* FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
               SELECT {columns} FROM pending_events pe
                 JOIN instances i ON i.id = ({INSTANCE_OF_EVENT})
                WHERE {condition} AND {CLAIMABLE_INSTANCE_OF_EVENT} {extra}
                ORDER BY {order} {tail}) r"
        )
    };
    [
        // The range on the queue, not an equality: only the index on
        // (queue, id) then serves the order.
        per_queue(
            "pe.queue >= q.name AND pe.queue <= q.name AND pe.visible_at IS NULL",
            "pe.queue, pe.id",
        ),
        per_queue(
            "pe.queue = q.name AND pe.visible_at <= now()",
            "pe.visible_at, pe.id",
        ),
        format!(
            "SELECT {columns} FROM pending_events pe
               JOIN instances i ON i.id = ({INSTANCE_OF_EVENT})
              WHERE pe.queue IS NULL AND (pe.visible_at IS NULL OR pe.visible_at <= now())
                AND {CLAIMABLE_INSTANCE} {extra}
              ORDER BY pe.id {tail}"
        ),
    ]
}

/// Claims up to `$5` workflow tasks of the queues `$1` for worker `$2`
/// (for `$3` seconds, lease id `$4`), and says when the queues' next one
/// is due and whether others wait (see `Store::poll_workflow_tasks`):
/// `due_in, skipped_locked, more`, then the claimed rows' columns (those
/// of [`leased_task`], then the lease's end), one row at least. Names the
/// rows it leased in `pgwake.claimed` for [`HAND_OVER_READ_SQL`].
static CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let [ready, fired, unqueued] = pending_walks(
        "i.id, pe.id AS event",
        "",
        "LIMIT $5 FOR UPDATE OF i SKIP LOCKED",
    );
    let [other_ready, other_fired, other_unqueued] =
        pending_walks("1", "AND i.id NOT IN (SELECT id FROM claimed)", "LIMIT 1");
    format!(
        "WITH ready AS ({ready}),
         fired AS ({fired}),
         unqueued AS ({unqueued}),
         candidate AS (
           SELECT id FROM (SELECT * FROM ready UNION ALL SELECT * FROM fired
                           UNION ALL SELECT * FROM unqueued) c
            GROUP BY id ORDER BY min(event) LIMIT $5),
         claimed AS (
           UPDATE instances i
              SET locked_until = now() + make_interval(secs => $3), worker = $2, lease_id = $4
             FROM candidate c WHERE i.id = c.id
           RETURNING i.id, i.instance_id, i.execution_id, i.queue, i.metadata,
                     i.parent_instance_id, i.parent_execution_id,
                     i.parent_schedule_event_id::bigint AS parent_schedule, i.locked_until),
         -- Names the claimed rows for the statement that reads their events.
         named AS (
           SELECT set_config('pgwake.claimed',
                             (SELECT coalesce(string_agg(id::text, ','), '') FROM claimed),
                             true)),
         due AS MATERIALIZED (
           SELECT (SELECT due_in FROM ({WORKFLOW_DUE_SQL}) next) AS due_in,
                  EXISTS ({other_ready}) OR EXISTS ({other_fired})
                  OR EXISTS ({other_unqueued}) AS others,
                  EXISTS (SELECT 1 FROM claimed) AS took),
         lazy_commit AS (SELECT set_config('synchronous_commit', 'off', true))
         SELECT due.due_in, due.others AND NOT due.took AS skipped_locked,
                due.others AND due.took AS more, claimed.*
           FROM due CROSS JOIN lazy_commit CROSS JOIN named LEFT JOIN claimed ON true
          ORDER BY claimed.id"
    )
});

/// Leases to worker `$2` (for `$3` seconds, lease id `$4`) up to `$5` of
/// the executions `$6`/`$7` that it may claim on the queues `$1` and that
/// have events to process: the workflow tasks an activity worker's results
/// make ready, taken in the transaction that records them (see
/// `Store::complete_activity_tasks_handing_over`). Never waits (`SKIP
/// LOCKED`); names the rows it leased in `pgwake.claimed` for
/// [`HAND_OVER_READ_SQL`]. Its columns are [`leased_task`]'s, then the
/// lease's end.
pub(super) static HAND_OVER_CLAIM_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "WITH owners AS (
           SELECT DISTINCT o.instance_id, o.execution_id
             FROM unnest($6::text[], $7::text[]) o(instance_id, execution_id)),
         -- Each owner's row looked up by its key: a join here was planned,
         -- on statistics that lag behind a burst of starts, as a walk of
         -- every instance (6.7 ms at 2,000).
         candidate AS (
           SELECT i.id FROM instances i
            WHERE i.id = ANY(ARRAY(
                    SELECT (SELECT x.id FROM instances x
                             WHERE x.instance_id = o.instance_id
                               AND x.execution_id = o.execution_id)
                      FROM owners o))
              AND {CLAIMABLE_INSTANCE}
              AND EXISTS (
                SELECT 1 FROM pending_events pe
                 WHERE pe.instance_id = i.instance_id AND pe.execution_id = i.execution_id
                   AND (pe.visible_at IS NULL OR pe.visible_at <= now()))
            ORDER BY i.id LIMIT $5
            FOR UPDATE OF i SKIP LOCKED),
         claimed AS (
           UPDATE instances i
              SET locked_until = now() + make_interval(secs => $3), worker = $2, lease_id = $4
            WHERE i.id = ANY(ARRAY(SELECT id FROM candidate))
           RETURNING i.id, i.instance_id, i.execution_id, i.queue, i.metadata,
                     i.parent_instance_id, i.parent_execution_id,
                     i.parent_schedule_event_id::bigint AS parent_schedule, i.locked_until),
         named AS (
           SELECT set_config('pgwake.claimed',
                             (SELECT coalesce(string_agg(id::text, ','), '') FROM claimed), true))
         SELECT claimed.* FROM claimed CROSS JOIN named"
        )
    });

/// The pending events and the history of the executions
/// [`HAND_OVER_CLAIM_SQL`] leased, by row id, each instance's pending
/// events first, in order, then its history in order: `id, recorded,
/// position`, then [`EVENT_COLUMNS`]. A statement of its own, after the
/// claim: its snapshot shows what a previous holder committed while the
/// claim waited for nothing (see the claim's read).
pub(super) static HAND_OVER_READ_SQL: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| {
        format!(
            "WITH claimed AS MATERIALIZED (
           SELECT id, instance_id, execution_id FROM instances
            WHERE id = ANY(string_to_array(
                    nullif(current_setting('pgwake.claimed', true), ''), ',')::bigint[]))
         SELECT c.id, false AS recorded, e.id AS position, {EVENT_COLUMNS}
           FROM claimed c JOIN pending_events e
                ON e.instance_id = c.instance_id AND e.execution_id = c.execution_id
                {ATTRIBUTES_JOIN}
          WHERE e.visible_at IS NULL OR e.visible_at <= now()
         UNION ALL
         SELECT c.id, true, e.sequence_id, {EVENT_COLUMNS}
           FROM claimed c JOIN history e
                ON e.instance_id = c.instance_id AND e.execution_id = c.execution_id
                {ATTRIBUTES_JOIN}
          ORDER BY 1, 2, 3"
        )
    });

/// [`HAND_OVER_READ_SQL`]'s rows, grouped by the row id of their instance.
pub(super) fn events_by_row(rows: &[tokio_postgres::Row]) -> HashMap<i64, &[tokio_postgres::Row]> {
    let row_id = |row: &tokio_postgres::Row| row.get::<_, i64>(0);
    rows.chunk_by(|a, b| row_id(a) == row_id(b))
        .map(|rows| (row_id(&rows[0]), rows))
        .collect()
}

/// The task of an instance just leased (`lease`), from `row`'s columns
/// from `at` on (see [`leased_task`]), with its events: those of
/// `events_of` ([`events_by_row`]) under its row id. `None` when no event
/// is pending: a previous holder, whose completion won the race, processed
/// the events it was claimed for; the instance is given back rather than
/// sat on until the lease expires.
pub(super) async fn claimed_task(
    client: &super::PooledClient,
    row: &tokio_postgres::Row,
    at: usize,
    lease: Lease,
    events_of: &HashMap<i64, &[tokio_postgres::Row]>,
) -> Result<Option<WorkflowTask>, StoreError> {
    let event_rows = events_of
        .get(&row.get::<_, i64>(at))
        .copied()
        .unwrap_or_default();
    let (mut pending, mut history) = (Vec::new(), Vec::new());
    // HAND_OVER_READ_SQL's columns: the row id, whether the event is in the
    // history, its position, then EVENT_COLUMNS.
    for event_row in event_rows {
        let event = event_from_row_at(event_row, 3)?;
        if event_row.get::<_, bool>(1) {
            history.push(event);
        } else {
            pending.push(event);
        }
    }
    if pending.is_empty() {
        let release = client
            .prepare_cached(
                "UPDATE instances SET locked_until = NULL, lease_id = NULL
                  WHERE id = $1 AND worker = $2 AND lease_id = $3",
            )
            .await
            .map_err(db("preparing a statement"))?;
        client
            .execute(
                &release,
                &[
                    &row.get::<_, i64>(at),
                    &lease.worker().as_str(),
                    &lease.lease_id(),
                ],
            )
            .await
            .map_err(db("releasing an empty claim"))?;
        return Ok(None);
    }
    leased_task(row, at, lease, pending, history).map(Some)
}

/// The task of an instance just leased (`lease`), from `row`'s columns
/// from `at` on: `id, instance_id, execution_id, queue, metadata,
/// parent_instance_id, parent_execution_id, parent_schedule_event_id`
/// (the lease's end follows them), with its pending `events` and its
/// `history`.
fn leased_task(
    row: &tokio_postgres::Row,
    at: usize,
    lease: Lease,
    events: Vec<Event>,
    history: Vec<Event>,
) -> Result<WorkflowTask, StoreError> {
    let metadata: Option<Vec<u8>> = row.get(at + 4);
    let parent = match (
        row.get::<_, Option<String>>(at + 5),
        row.get::<_, Option<String>>(at + 6),
    ) {
        (Some(instance_id), Some(execution_id)) => Some((
            InstanceRef {
                instance_id,
                execution_id,
            },
            row.get::<_, Option<i64>>(at + 7).unwrap_or(0),
        )),
        _ => None,
    };
    Ok(WorkflowTask {
        row_id: row.get(at),
        instance: InstanceRef {
            instance_id: row.get(at + 1),
            execution_id: row.get(at + 2),
        },
        queue: Queue::new(row.get::<_, String>(at + 3)).unwrap_or_default(),
        metadata: metadata.map(|m| serde_json::from_slice(&m)).transpose()?,
        parent,
        last_sequence_id: history.last().map_or(0, |e: &Event| e.sequence_id),
        new_events: events,
        history,
        lease,
    })
}

/// The ActivityScheduled event type, as stored.
const ACTIVITY_SCHEDULED: i32 = EventType::ActivityScheduled as i32;

/// Free slots of a worker of this process that a decision may fill with
/// the activities it schedules (eager dispatch): they are written leased to
/// that worker, who runs them without a claim. Should it never run them
/// (it stopped, its process died), their lease runs out and any worker
/// claims them, as after a crash.
#[derive(Debug, Clone)]
pub(crate) struct EagerSlots<'a> {
    /// The worker the activities are leased to.
    pub(crate) worker: &'a WorkerId,
    /// The queues it serves: only their activities are leased.
    pub(crate) queues: &'a [Queue],
    /// The most activities it takes.
    pub(crate) max: usize,
    /// How long their lease lasts.
    pub(crate) lease: Duration,
}

/// [`EagerSlots`] as [`SCHEDULE_ACTIVITIES_SQL`]'s parameters.
struct EagerLease<'a> {
    slots: Option<&'a EagerSlots<'a>>,
    seconds: f64,
    worker: Option<&'a str>,
    lease_id: i64,
}

impl<'a> EagerLease<'a> {
    fn new(slots: Option<&'a EagerSlots<'a>>) -> Result<Self, StoreError> {
        Ok(Self {
            seconds: slots
                .map(|s| lease_seconds(s.lease))
                .transpose()?
                .unwrap_or(0.0),
            worker: slots.map(|s| s.worker.as_str()),
            // One token for every activity this decision leases, as for a
            // claim's batch.
            lease_id: slots.map_or(0, |_| fastrand::i64(..)),
            slots,
        })
    }

    fn budget(&self) -> EagerBudget<'a> {
        EagerBudget {
            queues: self.slots.map_or(&[][..], |s| s.queues),
            left: self.slots.map_or(0, |s| s.max),
        }
    }
}

/// What is left of the eager slots while a decision's activities are
/// written, in their order.
struct EagerBudget<'a> {
    queues: &'a [Queue],
    left: usize,
}

impl EagerBudget<'_> {
    /// Whether an activity on `queue` is leased eagerly (taking a slot).
    fn take(&mut self, queue: &Queue) -> bool {
        let leased = self.left > 0 && self.queues.contains(queue);
        self.left -= usize::from(leased);
        leased
    }
}

/// The parameters of [`OPEN_TASK_HISTORY_SQL`] for a task and its decision.
struct OpenTaskHistory<'a> {
    row_id: i64,
    worker: &'a str,
    lease_id: i64,
    sticky_secs: Option<f64>,
    state: i32,
    instance: &'a InstanceRef,
    moved_ids: Vec<&'a str>,
    started_id: String,
    started_sequence: i64,
    started_type: i32,
    /// The sequence id of the decision's first event: after the
    /// WorkflowTaskStarted and the moved events.
    first_new_sequence: i64,
}

impl<'a> OpenTaskHistory<'a> {
    fn new(store: &Store, task: &'a WorkflowTask, plan: &CompletionPlan) -> Self {
        let moved_ids: Vec<&str> = task
            .new_events
            .iter()
            .map(|e| e.event_id.as_str())
            .collect();
        let started_sequence = task.last_sequence_id + 1;
        Self {
            row_id: task.row_id,
            worker: task.lease.worker().as_str(),
            lease_id: task.lease.lease_id(),
            sticky_secs: (!store.options().sticky_timeout.is_zero() && !plan.ends_execution)
                .then(|| store.options().sticky_timeout.as_secs_f64()),
            state: plan.state as i32,
            instance: &task.instance,
            first_new_sequence: started_sequence + moved_ids.len() as i64 + 1,
            moved_ids,
            started_id: super::new_id(),
            started_sequence,
            started_type: EventType::WorkflowTaskStarted.code(),
        }
    }

    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 11] {
        [
            &self.row_id,
            &self.worker,
            &self.lease_id,
            &self.sticky_secs,
            &self.state,
            &self.instance.instance_id,
            &self.instance.execution_id,
            &self.moved_ids,
            &self.started_id,
            &self.started_sequence,
            &self.started_type,
        ]
    }
}

/// A decision's statement failed: [`StoreError::LeaseLost`] when
/// `pgwake_require` found the lease taken over, a database error otherwise.
fn decision_error(
    task: &WorkflowTask,
    context: &'static str,
    source: tokio_postgres::Error,
) -> StoreError {
    if source.code().map(tokio_postgres::error::SqlState::code) == Some(LEASE_LOST) {
        StoreError::LeaseLost {
            task: format!("the workflow task of {}", task.instance.instance_id),
            worker: task.lease.worker().to_string(),
        }
    } else {
        StoreError::Database { context, source }
    }
}

/// A completion, validated and encoded before its transaction starts.
struct CompletionPlan {
    state: InstanceState,
    ends_execution: bool,
    /// The events the decision records before its outcome, in order.
    history: Vec<NewEvent>,
    /// What each of `history` sets in motion.
    kinds: Vec<Scheduled>,
    /// The event that ends the execution, recorded last.
    outcome_event: Option<NewEvent>,
    signal_data: Vec<Vec<u8>>,
    parent_report: Option<(EventType, Vec<u8>)>,
}

struct Recorded<'a> {
    event: &'a NewEvent,
    kind: &'a Scheduled,
}

impl CompletionPlan {
    fn history_with_sequence(&self, first: i64) -> Vec<(Recorded<'_>, i64)> {
        self.history
            .iter()
            .zip(&self.kinds)
            .enumerate()
            .map(|(offset, (event, kind))| (Recorded { event, kind }, first + offset as i64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_one_second_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=12)
            .map(|attempt| workflow_task_retry_delay(attempt).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    }

    #[test]
    fn retry_delay_stays_capped_for_huge_attempt_counts() {
        for attempt in [17, 64, 1_000, u32::MAX - 1, u32::MAX] {
            assert_eq!(workflow_task_retry_delay(attempt), MAX_TASK_RETRY_DELAY);
        }
        // Attempt 0 is not a failure count the store writes; it waits as the first.
        assert_eq!(workflow_task_retry_delay(0), FIRST_TASK_RETRY_DELAY);
    }

    #[test]
    fn stored_task_error_is_cut_to_8_kib_at_a_character_boundary() {
        assert_eq!(stored_task_error("boom"), "boom");
        let ascii = "x".repeat(MAX_TASK_ERROR_BYTES + 10);
        assert_eq!(stored_task_error(&ascii).len(), MAX_TASK_ERROR_BYTES);
        // 'é' is two bytes: one more byte than 8 KiB would split the last one.
        let accented = format!("x{}", "é".repeat(MAX_TASK_ERROR_BYTES / 2));
        let stored = stored_task_error(&accented);
        assert_eq!(stored.len(), MAX_TASK_ERROR_BYTES - 1);
        assert!(accented.starts_with(stored.as_ref()));
    }

    #[test]
    fn stored_task_error_replaces_nul_characters() {
        assert_eq!(stored_task_error("a\0b"), "a\u{fffd}b");
    }
}
