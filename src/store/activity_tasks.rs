//! Activity tasks: claiming them in batches, reporting their results back
//! to their workflow, and keeping or giving back their leases.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde_json::{json, Value};

use super::model::{
    ActivityPoll, ActivityTask, EventType, InstanceRef, InstanceState, Lease, WorkflowTask,
};
use super::names::{Queue, WorkerId};
use super::workflow_tasks::{
    claimed_task, events_by_row, EagerSlots, HAND_OVER_CLAIM_SQL, HAND_OVER_READ_SQL,
};
use super::{db, lease_seconds, Pipelined, Store, TouchedQueues, WakeToken};
use crate::error::StoreError;
use crate::trace_context::TraceCarrier;

/// The owning instance's metadata, for the trace context an activity's span
/// is parented to: looked up by the unique (instance_id, execution_id)
/// index in the claim's own statement, so it costs no round trip. Without
/// the `opentelemetry` feature the claim reads nothing more than before.
#[cfg(feature = "opentelemetry")]
const OWNER_METADATA_JOIN: &str = "
                         LEFT JOIN LATERAL (
                           SELECT metadata FROM instances
                            WHERE instance_id = c.instance_id
                              AND execution_id = c.execution_id) im ON true";
#[cfg(feature = "opentelemetry")]
const OWNER_METADATA_COLUMN: &str = "im.metadata";
#[cfg(not(feature = "opentelemetry"))]
const OWNER_METADATA_JOIN: &str = "";
#[cfg(not(feature = "opentelemetry"))]
const OWNER_METADATA_COLUMN: &str = "NULL::bytea";

/// The activity claim (see `poll_activity_tasks_detailed_unbounded` for
/// its shape), built once: it is sent at every claim.
static ACTIVITY_CLAIM_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH ready AS (
                       SELECT r.id FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
                         SELECT id FROM activities
                          WHERE queue >= q.name AND queue <= q.name
                            AND locked_until IS NULL AND visible_at IS NULL
                          ORDER BY queue, id LIMIT $4
                          FOR UPDATE SKIP LOCKED) r),
                     expired AS (
                       SELECT r.id FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
                         SELECT id FROM activities
                          WHERE queue = q.name AND locked_until < now()
                            AND (visible_at IS NULL OR visible_at <= now())
                          ORDER BY locked_until LIMIT $4
                          FOR UPDATE SKIP LOCKED) r),
                     came_due AS (
                       SELECT r.id FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
                         SELECT id FROM activities
                          WHERE queue = q.name AND visible_at <= now() AND locked_until IS NULL
                          ORDER BY visible_at LIMIT $4
                          FOR UPDATE SKIP LOCKED) r),
                     candidate AS (
                       SELECT id FROM (SELECT id FROM ready UNION ALL SELECT id FROM expired
                                       UNION ALL SELECT id FROM came_due) c
                        ORDER BY id LIMIT $4),
                     claimed AS (
                       UPDATE activities a
                          SET locked_until = now() + make_interval(secs => $3), worker = $2,
                              lease_id = $5
                        WHERE a.id = ANY(ARRAY(SELECT id FROM candidate))
                       RETURNING a.id, a.activity_id, a.instance_id, a.execution_id, a.queue,
                                 a.schedule_event_id, a.locked_until, a.timestamp),
                     -- A full batch polls again at once: it needs no due time and no
                     -- look for skipped rows.
                     short AS (SELECT (SELECT count(*) FROM claimed) < $4 AS short),
                     due AS (
                       SELECT CASE WHEN short THEN (SELECT due_in FROM ({}) next) END AS due_in,
                              CASE WHEN short THEN EXISTS (
                                SELECT 1 FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
                                  SELECT id FROM activities s
                                   WHERE s.queue >= q.name AND s.queue <= q.name
                                     AND s.locked_until IS NULL AND s.visible_at IS NULL
                                     AND s.id NOT IN (SELECT id FROM claimed)
                                   ORDER BY s.queue, s.id LIMIT 1) r)
                                OR EXISTS (
                                SELECT 1 FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
                                  SELECT id FROM activities s
                                   WHERE s.queue = q.name AND s.locked_until < now()
                                     AND (s.visible_at IS NULL OR s.visible_at <= now())
                                     AND s.id NOT IN (SELECT id FROM claimed)
                                   ORDER BY s.locked_until LIMIT 1) r)
                                OR EXISTS (
                                SELECT 1 FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
                                  SELECT id FROM activities s
                                   WHERE s.queue = q.name AND s.visible_at <= now()
                                     AND s.locked_until IS NULL
                                     AND s.id NOT IN (SELECT id FROM claimed)
                                   ORDER BY s.visible_at LIMIT 1) r)
                              ELSE false END AS skipped_locked
                         FROM short),
                     -- A claim is a lease: if its commit is lost in a crash, the task
                     -- is claimed again, and fencing keeps completion exactly-once.
                     -- So it need not wait for its WAL flush.
                     lazy_commit AS (SELECT set_config('synchronous_commit', 'off', true))
                     SELECT due.due_in, due.skipped_locked, c.id, c.activity_id, c.instance_id,
                            c.execution_id, c.queue, c.schedule_event_id, c.locked_until, at.data,
                            c.timestamp, {}
                       FROM due CROSS JOIN lazy_commit LEFT JOIN (claimed c
                         LEFT JOIN LATERAL (
                           SELECT data FROM attributes
                            WHERE instance_id = c.instance_id AND execution_id = c.execution_id
                              AND event_id = c.activity_id LIMIT 1) at ON true{})
                         ON true
                      ORDER BY c.id",
        super::stats::ACTIVITY_DUE_SQL,
        OWNER_METADATA_COLUMN,
        OWNER_METADATA_JOIN,
    )
});

/// The parameters of [`HAND_OVER_CLAIM_SQL`] and its statements.
struct HandOver<'a> {
    slots: &'a EagerSlots<'a>,
    claim: tokio_postgres::Statement,
    read: tokio_postgres::Statement,
    worker: &'a str,
    queues: Vec<&'a str>,
    seconds: f64,
    max: i64,
    lease_id: i64,
}

impl<'a> HandOver<'a> {
    fn params(
        &'a self,
        instance_ids: &'a Vec<&'a str>,
        execution_ids: &'a Vec<&'a str>,
    ) -> [&'a (dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.queues,
            &self.worker,
            &self.seconds,
            &self.lease_id,
            &self.max,
            instance_ids,
            execution_ids,
        ]
    }
}

/// Records activity results, `$deleted` deleting the activities (the CTE
/// `deleted`, returning `id` and `schedule_event_id`): for each input row
/// (row `$1`, worker `$2`, lease id `$3`, new event id `$4`, type `$5`, data
/// `$6`, owner `$7`/`$8`), deletes the activity if its lease (holder and
/// claim) still matches, and queues its result for the owner when the owner
/// is active. Returns, per input row in order: whether it was deleted, the
/// owner's state and queue (NULL when there is no such execution), and,
/// for a row not deleted, whether the statement's snapshot shows it still
/// under this lease (then it is held by another transaction, or changed
/// since the snapshot). Each owner is looked up once per batch.
///
/// No `instances` row is locked: an execution that ends deletes its
/// activities before its pending events (`END_EXECUTION_SQL`), so a result
/// either finds its activity gone (and records nothing), or holds the
/// activity until it commits, and then the ending transaction waits for it
/// and deletes the new pending event too. (A shared lock on the owner, which
/// results once took, wrote the owner's row at every result and made a
/// multixact whenever two batches shared an owner.)
///
/// Rows are named by key (as joins, they were found by scans of the
/// tables); each owner is looked up by its key.
macro_rules! record_results_sql {
    ($deleted:literal) => {
        concat!(
            "WITH input AS (
   SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::int[],
                        $6::bytea[], $7::text[], $8::text[])
            WITH ORDINALITY AS t(row_id, worker, lease_id, event_id, event_type, data,
                                 instance_id, execution_id, ord)),",
            $deleted,
            ",
 owners AS MATERIALIZED (
   SELECT e.instance_id, e.execution_id, o.state, o.queue
     FROM (SELECT DISTINCT instance_id, execution_id FROM input) e LEFT JOIN LATERAL (
       SELECT state, queue FROM instances
        WHERE instance_id = e.instance_id AND execution_id = e.execution_id) o ON true),
 results AS (
   SELECT input.ord, input.event_id, input.event_type, input.data, input.instance_id,
          input.execution_id, d.schedule_event_id, o.queue
     FROM deleted d JOIN input ON input.row_id = d.id
     JOIN owners o ON o.instance_id = input.instance_id AND o.execution_id = input.execution_id
    WHERE o.state = 0),
 attrs AS (
   INSERT INTO attributes (event_id, instance_id, execution_id, data)
   SELECT event_id, instance_id, execution_id, data FROM results),
 events AS (
   INSERT INTO pending_events (event_id, instance_id, execution_id, event_type,
                               timestamp, schedule_event_id, queue)
   SELECT event_id, instance_id, execution_id, event_type, now(), schedule_event_id, queue
     FROM results ORDER BY ord)
 SELECT d.id IS NOT NULL, o.state, o.queue,
        CASE WHEN d.id IS NULL THEN EXISTS (
               SELECT 1 FROM activities s
                WHERE s.id = input.row_id AND s.worker = input.worker
                  AND s.lease_id = input.lease_id) ELSE false END
   FROM input
   JOIN owners o ON o.instance_id = input.instance_id AND o.execution_id = input.execution_id
   LEFT JOIN deleted d ON d.id = input.row_id
  ORDER BY input.ord"
        )
    };
}

/// [`record_results_sql!`] waiting for rows another transaction holds,
/// under [`RECORD_LOCK_TIMEOUT`]: what results run first. Such waits are
/// short: a claim that looked at a row it did not take holds it until its
/// commit, a millisecond or so (PostgreSQL keeps the lock of a row that
/// failed the recheck); so does an execution ending.
const RECORD_RESULTS_SQL: &str = record_results_sql!(
    "
 deleted AS (
   DELETE FROM activities a USING input
    WHERE a.id = ANY($1) AND a.id = input.row_id
      AND a.worker = input.worker AND a.lease_id = input.lease_id
   RETURNING a.id, a.schedule_event_id)"
);

/// [`record_results_sql!`] leaving the rows another transaction holds
/// (`SKIP LOCKED`): what runs when [`RECORD_RESULTS_SQL`] waited too long
/// (a session outside pgwake may hold a row for good), so that the batch's
/// other results are recorded. The locked rows are deleted by key.
const RECORD_UNHELD_SQL: &str = record_results_sql!(
    "
 locked AS MATERIALIZED (
   SELECT a.id FROM activities a JOIN input ON input.row_id = a.id
    WHERE a.id = ANY($1) AND a.worker = input.worker AND a.lease_id = input.lease_id
    ORDER BY a.id
    FOR UPDATE OF a SKIP LOCKED),
 deleted AS (
   DELETE FROM activities a WHERE a.id = ANY(ARRAY(SELECT id FROM locked))
   RETURNING a.id, a.schedule_event_id)"
);

/// How long [`RECORD_RESULTS_SQL`] waits for a row before the batch is
/// recorded without it ([`RECORD_UNHELD_SQL`]). Far below
/// `deadlock_timeout` (1 s by default), so that two waits in a cycle (an
/// ending execution deleting its activities in another order) end by this
/// timeout, not by a deadlock error.
const RECORD_LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '200ms'";

/// What recording results does with activities rows another transaction
/// holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeldRows {
    /// Waits for them, under [`RECORD_LOCK_TIMEOUT`] ([`RECORD_RESULTS_SQL`]).
    Wait,
    /// Leaves them ([`RECORD_UNHELD_SQL`]).
    Skip,
}

/// What became of one result given to [`record_results_sql!`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    /// Deleted under its lease, and queued for its active owner.
    Recorded,
    /// Its execution ended (or was removed): nobody is left to read it.
    Dropped,
    /// Still under its lease but locked by another transaction (an ending
    /// execution, a heartbeat, a session outside pgwake): try again.
    Busy,
    /// Under another lease, or gone while its owner is active.
    LeaseLost,
}

impl Recording {
    /// Reads one row of [`record_results_sql!`]'s answer.
    fn of(deleted: bool, owner_active: bool, still_held: bool) -> Self {
        match (deleted, owner_active, still_held) {
            (true, true, _) => Self::Recorded,
            (true, false, _) => Self::Dropped,
            (false, _, true) => Self::Busy,
            (false, true, false) => Self::LeaseLost,
            (false, false, false) => Self::Dropped,
        }
    }

    /// The outcome a caller sees for `task`.
    fn outcome(self, task: &ActivityTask) -> Result<(), StoreError> {
        match self {
            Self::Recorded | Self::Dropped => Ok(()),
            Self::Busy => Err(StoreError::ActivityBusy {
                activity_id: task.activity_id.clone(),
                instance_id: task.instance.instance_id.clone(),
            }),
            Self::LeaseLost => Err(StoreError::LeaseLost {
                task: format!(
                    "activity {} of {}",
                    task.activity_id, task.instance.instance_id
                ),
                worker: task.lease.worker().to_string(),
            }),
        }
    }
}

impl Store {
    /// Claims up to `max` visible, unleased activities of `queues`, oldest
    /// first, in one statement, and leases them to `worker` for `lease`.
    /// Batching is what lets a worker drain tens of thousands a second.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let queues = pgwake::queues(["emails"])?;
    /// for task in store.claim_activity_tasks(&worker, &queues, 32, std::time::Duration::from_secs(120)).await? {
    ///     println!("{} {}", task.name, task.input);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An empty queue list, a zero lease, a database failure.
    pub async fn claim_activity_tasks(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ActivityTask>, StoreError> {
        Ok(self
            .poll_activity_tasks(worker, queues, max, lease)
            .await?
            .0)
    }

    /// [`claim_activity_tasks`](Self::claim_activity_tasks), and in the
    /// same statement how long until the next activity of `queues` that is
    /// not visible yet becomes visible: what an idle worker needs to sleep
    /// exactly that long, for the price of one statement per poll.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let (tasks, due_in) = store
    ///     .poll_activity_tasks(&worker, &pgwake::queues(["emails"])?, 32, std::time::Duration::from_secs(120))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`claim_activity_tasks`](Self::claim_activity_tasks).
    pub async fn poll_activity_tasks(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        max: usize,
        lease: Duration,
    ) -> Result<(Vec<ActivityTask>, Option<Duration>), StoreError> {
        let poll = self
            .poll_activity_tasks_detailed(worker, queues, max, lease)
            .await?;
        Ok((poll.tasks, poll.due_in))
    }

    /// [`poll_activity_tasks`](Self::poll_activity_tasks), and whether the
    /// claim skipped claimable activities that another transaction had
    /// locked: nothing announces when such a lock goes, so a worker told
    /// `skipped_locked` polls again soon instead of sleeping until the next
    /// notification. Still one statement; the look for skipped rows (a
    /// plain read, no locks) runs only when the batch was not full.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let worker = pgwake::WorkerId::unique("docs");
    /// let queues = pgwake::queues(["emails"])?;
    /// let poll = store
    ///     .poll_activity_tasks_detailed(&worker, &queues, 32, std::time::Duration::from_secs(120))
    ///     .await?;
    /// println!("{} claimed, locked elsewhere: {}", poll.tasks.len(), poll.skipped_locked);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`claim_activity_tasks`](Self::claim_activity_tasks).
    pub async fn poll_activity_tasks_detailed(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        max: usize,
        lease: Duration,
    ) -> Result<ActivityPoll, StoreError> {
        self.bounded(
            "claiming activity tasks",
            self.poll_activity_tasks_detailed_unbounded(worker, queues, max, lease),
        )
        .await
    }

    async fn poll_activity_tasks_detailed_unbounded(
        &self,
        worker: &WorkerId,
        queues: &[Queue],
        max: usize,
        lease: Duration,
    ) -> Result<ActivityPoll, StoreError> {
        if queues.is_empty() {
            return Err(StoreError::NoQueues);
        }
        let lease_secs = lease_seconds(lease)?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let queue_names: Vec<&str> = queues.iter().map(Queue::as_str).collect();
        // One token for every row of this claim: (row, worker, lease id)
        // names the claim, and a later claim of any of them writes another.
        let lease_id = fastrand::i64(..);
        let client = self.client().await?;
        // Locks up to `max` activities rows, FOR UPDATE SKIP LOCKED: it never
        // waits, so it cannot deadlock, and concurrent claimers take
        // disjoint rows. Oldest first, found without reading the backlog:
        // each queue's ready rows walk the partial index of migration 8 from
        // its oldest and stop after `max`; leases that ran out and rows
        // scheduled for later that came due (few) come from the indexes on
        // `locked_until` and `visible_at`. The sets are merged in id order;
        // rows one of them locked beyond the batch are unlocked when the
        // statement ends.
        //
        // Each shape below is chosen so the planner cannot pick the plans
        // it once did, each found with auto_explain on `pgwake bench scale`
        // or `bench latency`:
        // - the queue is a range of one value ordered by (queue, id), which
        //   only the partial index serves: it comes from unnest, unknown to
        //   the planner, and `queue = q.name ORDER BY id` (even `ORDER BY
        //   queue, id`, which an equality reduces to id) was planned as a
        //   walk of the primary key through every other queue's backlog
        //   (130 ms a claim);
        // - rows come due are looked for per queue too, through the index of
        //   migration 3 on `(queue, visible_at)`: across queues, on
        //   statistics taken while the table was small, the look walked the
        //   index on `(locked_until, queue)` from `locked_until IS NULL`,
        //   that is every ready row of every queue;
        // - expired leases and rows come due are two ordered index scans:
        //   as one OR they were a bitmap scan, which cannot mark the index
        //   entries of deleted rows dead, so every claim re-read every
        //   finished task's lease entry once its time had passed; expired
        //   leases are looked for per queue, through the index of
        //   migration 12 (through the one on `(locked_until, queue)`, an idle
        //   queue's claim read every other queue's lease that had run out);
        // - the ids go to the UPDATE as an array: joined to the CTE, they
        //   were once planned as a walk of the whole primary key;
        // - each claimed row's input is looked up by its key, the LIMIT
        //   keeping the planner from making it a join again: as a join it
        //   hashed the whole attributes table whenever its statistics
        //   lagged its rows, a cost that grew with every task run;
        // - the look for skipped rows has the claim's own shape (as a plain
        //   EXISTS it was a scan of the table, which statistics say is full
        //   of ready rows: those of other queues).
        //
        // The due time and the skipped-rows flag ride along in the first
        // columns of a row that exists even when nothing is claimed. The
        // flag's EXISTS reads the statement's snapshot, in which the rows
        // this statement claimed are still unclaimed: hence `NOT IN
        // claimed`. A row that snapshot shows claimable and that the claim
        // did not take was locked by someone else (or changed since the
        // snapshot, and then the next poll sees it as it is).
        let started = std::time::Instant::now();
        let statement = client
            .prepare_cached(&ACTIVITY_CLAIM_SQL)
            .await
            .map_err(db("preparing a statement"))?;
        // Planned where only index walks are left to the planner (see
        // `index_walks_only!`): with lagging statistics, the claim's UPDATE
        // scanned the whole table, and the rows come due were looked for
        // through every unleased row. The three requests leave together:
        // one round trip.
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &queue_names,
            &worker.as_str(),
            &lease_secs,
            &limit,
            &lease_id,
        ];
        let (_, rows, _) = futures::try_join!(
            client.batch_execute(super::BEGIN_INDEX_WALKS_ONLY),
            client.query(&statement, &params),
            client.batch_execute("COMMIT"),
        )
        .map_err(db("claiming activity tasks"))?;
        crate::metrics::claim_duration(crate::kinds::TaskKind::Activity, started);
        let due_in = rows
            .first()
            .and_then(|r| r.get::<_, Option<f64>>(0))
            .map(super::stats::seconds);
        let skipped_locked = rows.first().is_some_and(|r| r.get::<_, bool>(1));
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| r.get::<_, Option<i64>>(2).is_some())
            .collect();
        let tasks = rows
            .iter()
            .map(|row| {
                let data: Option<Vec<u8>> = row.get(9);
                let scheduled: Value = match data {
                    Some(bytes) => serde_json::from_slice(&bytes)?,
                    None => Value::Null,
                };
                Ok(ActivityTask {
                    row_id: row.get(2),
                    activity_id: row.get(3),
                    instance: InstanceRef {
                        instance_id: row.get(4),
                        execution_id: row.get(5),
                    },
                    queue: Queue::new(row.get::<_, String>(6)).unwrap_or_default(),
                    schedule_event_id: row.get(7),
                    name: scheduled["name"].as_str().unwrap_or_default().to_string(),
                    input: scheduled.get("input").cloned().unwrap_or(Value::Null),
                    enqueued_at: row.get(10),
                    lease: Lease::new(worker.clone(), row.get(8), lease_id),
                    trace: TraceCarrier::from_metadata_bytes(
                        row.get::<_, Option<Vec<u8>>>(11).as_deref(),
                    ),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        if !tasks.is_empty() {
            tracing::debug!(count = tasks.len(), worker = %worker, "activity tasks claimed");
        }
        if skipped_locked {
            tracing::debug!(worker = %worker, "claimable activities skipped: locked by another transaction");
        }
        Ok(ActivityPoll {
            tasks,
            due_in,
            skipped_locked,
        })
    }

    /// Records an activity's result (`Ok`) or error (`Err`): deletes the
    /// activity and queues `ActivityCompleted` (`{"result"}`) or
    /// `ActivityFailed` (`{"error"}`) for its workflow in one transaction,
    /// which is what wakes the workflow.
    ///
    /// Only the lease holder may complete ([`StoreError::LeaseLost`]
    /// otherwise). If the workflow has finished meanwhile (canceled, say),
    /// the result is dropped and `Ok` returned: nobody is left to read it.
    /// It locks no workflow instance, and waits at most 200 ms for another
    /// transaction holding the activity's row: after that nothing is
    /// recorded and the error is [`StoreError::ActivityBusy`] (transient:
    /// complete it again shortly). One round trip.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, task: pgwake::ActivityTask) -> Result<(), pgwake::StoreError> {
    /// store.complete_activity_task(&task, Ok(serde_json::json!({"sent": true}))).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], [`StoreError::ActivityBusy`], a payload
    /// too large, a database failure.
    pub async fn complete_activity_task(
        &self,
        task: &ActivityTask,
        result: Result<Value, String>,
    ) -> Result<(), StoreError> {
        self.bounded(
            "recording an activity result",
            self.complete_activity_task_unbounded(task, result),
        )
        .await
    }

    async fn complete_activity_task_unbounded(
        &self,
        task: &ActivityTask,
        result: Result<Value, String>,
    ) -> Result<(), StoreError> {
        let (event_type, attributes) = match result {
            Ok(value) => (EventType::ActivityCompleted, json!({ "result": value })),
            Err(error) => (EventType::ActivityFailed, json!({ "error": error })),
        };
        let data = self.encode(&attributes)?;
        let recording = self
            .record_activity_results(&[(task, event_type, data)], None)
            .await?
            .0[0];
        recording.outcome(task)?;
        if recording == Recording::Dropped {
            tracing::debug!(activity_id = %task.activity_id, "workflow finished meanwhile; result dropped");
        } else {
            tracing::debug!(activity_id = %task.activity_id, ?event_type, "activity task completed");
        }
        Ok(())
    }

    /// Records many activities' results in one transaction: what lets a
    /// worker that runs activities in batches record them at the same pace.
    /// Each is fenced by its own lease, exactly as
    /// [`complete_activity_task`](Self::complete_activity_task) fences one;
    /// the returned outcomes are in the order given.
    ///
    /// It locks no workflow instance, and waits at most 200 ms for other
    /// transactions holding its activities rows (a claim that looked at
    /// them, an execution ending: a moment): a result whose row stays held
    /// longer (a session outside pgwake) is neither recorded nor dropped,
    /// and its outcome is [`StoreError::ActivityBusy`] (transient: complete
    /// it again shortly; the activity keeps its lease). The others are
    /// recorded. One round trip, two when a row stayed held. A result (or
    /// error) larger than
    /// [`StoreOptions::max_payload_bytes`](super::StoreOptions::max_payload_bytes)
    /// is recorded as `ActivityFailed`, with an error naming both sizes, so
    /// that the workflow learns of it and the batch goes through; its
    /// outcome is `Ok`.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, a: pgwake::ActivityTask, b: pgwake::ActivityTask) -> Result<(), pgwake::StoreError> {
    /// let outcomes = store
    ///     .complete_activity_tasks(&[(&a, Ok(serde_json::json!(1))), (&b, Err("timeout".into()))])
    ///     .await?;
    /// for outcome in outcomes {
    ///     match outcome {
    ///         Ok(()) => {}
    ///         Err(err) if err.is_transient() => println!("try again shortly: {err}"),
    ///         Err(err) => println!("not recorded: {err}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure (nothing is recorded). A lost lease or a busy
    /// activity is an `Err` in its own outcome.
    pub async fn complete_activity_tasks(
        &self,
        completions: &[(&ActivityTask, Result<Value, String>)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        let (outcomes, _) = self
            .complete_activity_tasks_handing_over(completions, None)
            .await?;
        Ok(outcomes)
    }

    /// [`complete_activity_tasks`](Self::complete_activity_tasks), also
    /// leasing to `hand_over`'s (workflow) worker, in the same transaction,
    /// up to its free slots of the executions the results make ready, on
    /// its queues, that it may claim: their workflow tasks are returned,
    /// events and history read as a claim reads them, and no claim (nor
    /// wake-up) is needed for them. The others are announced as always.
    pub(crate) async fn complete_activity_tasks_handing_over(
        &self,
        completions: &[(&ActivityTask, Result<Value, String>)],
        hand_over: Option<&EagerSlots<'_>>,
    ) -> Result<(Vec<Result<(), StoreError>>, Vec<WorkflowTask>), StoreError> {
        self.bounded(
            "recording activity results",
            self.complete_activity_tasks_unbounded(completions, hand_over),
        )
        .await
    }

    async fn complete_activity_tasks_unbounded(
        &self,
        completions: &[(&ActivityTask, Result<Value, String>)],
        hand_over: Option<&EagerSlots<'_>>,
    ) -> Result<(Vec<Result<(), StoreError>>, Vec<WorkflowTask>), StoreError> {
        if completions.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut encoded = Vec::with_capacity(completions.len());
        for (task, result) in completions {
            let (event_type, data) = self.encode_activity_result(task, result)?;
            encoded.push((*task, event_type, data));
        }
        let (recordings, handed_over) = self.record_activity_results(&encoded, hand_over).await?;
        let outcomes = completions
            .iter()
            .zip(recordings)
            .map(|((task, _), recording)| recording.outcome(task))
            .collect();
        Ok((outcomes, handed_over))
    }

    /// Records `results` in a transaction of one round trip
    /// ([`RECORD_RESULTS_SQL`]); if a row stays held for longer than
    /// [`RECORD_LOCK_TIMEOUT`], records them again leaving the rows held
    /// ([`RECORD_UNHELD_SQL`]: those are [`Recording::Busy`]). Wakes the
    /// owners of the results it recorded, and of those it found gone while
    /// their owner is active: an earlier attempt whose commit's answer was
    /// lost may have recorded them, and then the wake-up is owed now (when
    /// unsure, wake once more).
    async fn record_activity_results(
        &self,
        results: &[(&ActivityTask, EventType, Vec<u8>)],
        hand_over: Option<&EagerSlots<'_>>,
    ) -> Result<(Vec<Recording>, Vec<WorkflowTask>), StoreError> {
        let started = std::time::Instant::now();
        let client = self.client().await?;
        let recorded = match self
            .run_recording(&client, HeldRows::Wait, results, hand_over)
            .await
        {
            Err(StoreError::Database { source, .. })
                if source.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                tracing::debug!(
                    count = results.len(),
                    "an activity row stayed held; recording the batch without it"
                );
                // Rare: its workflow tasks are claimed as usual.
                self.run_recording(&client, HeldRows::Skip, results, None)
                    .await?
            }
            other => other?,
        };
        crate::metrics::completion_duration(crate::kinds::TaskKind::Activity, started);
        Ok(recorded)
    }

    /// One transaction of [`record_activity_results`](Self::record_activity_results),
    /// doing `held` with rows another transaction holds.
    async fn run_recording(
        &self,
        client: &super::PooledClient,
        held: HeldRows,
        results: &[(&ActivityTask, EventType, Vec<u8>)],
        hand_over: Option<&EagerSlots<'_>>,
    ) -> Result<(Vec<Recording>, Vec<WorkflowTask>), StoreError> {
        let row_ids: Vec<i64> = results.iter().map(|(t, ..)| t.row_id).collect();
        let workers: Vec<&str> = results
            .iter()
            .map(|(t, ..)| t.lease.worker().as_str())
            .collect();
        let lease_ids: Vec<i64> = results.iter().map(|(t, ..)| t.lease.lease_id()).collect();
        let event_ids: Vec<String> = results.iter().map(|_| super::new_id()).collect();
        let event_types: Vec<i32> = results.iter().map(|(_, e, _)| e.code()).collect();
        let data: Vec<&[u8]> = results.iter().map(|(.., d)| d.as_slice()).collect();
        let instance_ids: Vec<&str> = results
            .iter()
            .map(|(t, ..)| t.instance.instance_id.as_str())
            .collect();
        let execution_ids: Vec<&str> = results
            .iter()
            .map(|(t, ..)| t.instance.execution_id.as_str())
            .collect();
        let sql = match held {
            HeldRows::Wait => RECORD_RESULTS_SQL,
            HeldRows::Skip => RECORD_UNHELD_SQL,
        };
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(db("preparing a statement"))?;
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &row_ids,
            &workers,
            &lease_ids,
            &event_ids,
            &event_types,
            &data,
            &instance_ids,
            &execution_ids,
        ];
        let answer = std::sync::OnceLock::new();
        // The workflow tasks handed over: claimed after the recording, and
        // read in a statement of their own, as a claim reads them.
        let handing = match hand_over.filter(|slots| slots.max > 0) {
            Some(slots) => {
                let (claim, read) = futures::try_join!(
                    client.prepare_cached(&HAND_OVER_CLAIM_SQL),
                    client.prepare_cached(&HAND_OVER_READ_SQL),
                )
                .map_err(db("preparing a statement"))?;
                Some(HandOver {
                    slots,
                    claim,
                    read,
                    worker: slots.worker.as_str(),
                    queues: slots.queues.iter().map(Queue::as_str).collect(),
                    seconds: lease_seconds(slots.lease)?,
                    max: i64::try_from(slots.max).unwrap_or(i64::MAX),
                    lease_id: fastrand::i64(..),
                })
            }
            None => None,
        };
        let hand_over_params = handing
            .as_ref()
            .map(|h| h.params(&instance_ids, &execution_ids));
        let (claimed, events) = (std::sync::OnceLock::new(), std::sync::OnceLock::new());
        let mut statements = Vec::with_capacity(4);
        if held == HeldRows::Wait {
            statements.push(Pipelined {
                context: "limiting the wait for locks",
                request: Box::pin(client.batch_execute(RECORD_LOCK_TIMEOUT)),
            });
        }
        statements.push(Pipelined::query(
            client,
            "recording activity results",
            &statement,
            &params,
            &answer,
        ));
        if let (Some(handing), Some(hand_over_params)) = (&handing, &hand_over_params) {
            statements.push(Pipelined::query(
                client,
                "claiming the workflow tasks the results make ready",
                &handing.claim,
                hand_over_params,
                &claimed,
            ));
            statements.push(Pipelined::query(
                client,
                "reading the workflow tasks the results make ready",
                &handing.read,
                &[],
                &events,
            ));
        }
        // The queues to wake are known from the answer only: reported once
        // the commit is (an unanswered commit's results are recorded again,
        // and that attempt reports them).
        self.write_pipelined(client, statements, TouchedQueues::default())
            .await?;
        let handed_over = match &handing {
            Some(handing) => {
                Self::handed_over_tasks(
                    client,
                    handing.slots,
                    handing.lease_id,
                    claimed.get().map_or(&[][..], Vec::as_slice),
                    events.get().map_or(&[][..], Vec::as_slice),
                )
                .await?
            }
            None => Vec::new(),
        };
        let rows = answer.get().map(Vec::as_slice).unwrap_or_default();
        let mut touched = TouchedQueues::default();
        let recordings = (0..results.len())
            .map(|i| {
                let Some(row) = rows.get(i) else {
                    // Not answered for (never expected): try again.
                    return Recording::Busy;
                };
                let owner_active =
                    row.get::<_, Option<i32>>(1) == Some(InstanceState::Active as i32);
                let recording = Recording::of(row.get(0), owner_active, row.get(3));
                // A task handed over needs no wake-up: nobody else can
                // claim it.
                let handed = handed_over
                    .iter()
                    .any(|t| t.instance == results[i].0.instance);
                if matches!(recording, Recording::Recorded | Recording::LeaseLost) && !handed {
                    if let Some(queue) = row
                        .get::<_, Option<String>>(2)
                        .and_then(|q| Queue::new(q).ok())
                    {
                        touched.add_workflow(&queue);
                    }
                }
                recording
            })
            .collect();
        self.report_commit(touched);
        Ok((recordings, handed_over))
    }

    /// The workflow tasks [`HAND_OVER_CLAIM_SQL`] leased (`claimed`), with
    /// their events (`events`, [`HAND_OVER_READ_SQL`]'s rows, in the order
    /// of the instances' row ids). One whose events a previous holder
    /// processed meanwhile is given back, as a claim gives it back.
    async fn handed_over_tasks(
        client: &super::PooledClient,
        slots: &EagerSlots<'_>,
        lease_id: i64,
        claimed: &[tokio_postgres::Row],
        events: &[tokio_postgres::Row],
    ) -> Result<Vec<WorkflowTask>, StoreError> {
        let events_of = events_by_row(events);
        let mut tasks = Vec::with_capacity(claimed.len());
        for row in claimed {
            let lease = Lease::new(slots.worker.clone(), row.get(8), lease_id);
            tasks.extend(claimed_task(client, row, 0, lease, &events_of).await?);
        }
        if !tasks.is_empty() {
            tracing::debug!(count = tasks.len(), worker = %slots.worker, "workflow tasks handed over with their activities' results");
        }
        Ok(tasks)
    }

    /// The event type and attributes that record `result`. One too large
    /// to store becomes an `ActivityFailed` saying so: refusing it would
    /// fail the whole batch, again on every attempt.
    fn encode_activity_result(
        &self,
        task: &ActivityTask,
        result: &Result<Value, String>,
    ) -> Result<(EventType, Vec<u8>), StoreError> {
        let (event_type, attributes, what) = match result {
            Ok(value) => (
                EventType::ActivityCompleted,
                json!({ "result": value }),
                "result",
            ),
            Err(error) => (
                EventType::ActivityFailed,
                json!({ "error": error }),
                "error",
            ),
        };
        match self.encode(&attributes) {
            Ok(data) => Ok((event_type, data)),
            Err(StoreError::PayloadTooLarge { size, limit }) => {
                tracing::warn!(
                    activity_id = %task.activity_id,
                    instance_id = %task.instance.instance_id,
                    size,
                    limit,
                    "activity {what} too large; recorded as a failure"
                );
                let error = format!(
                    "the activity's {what} was not recorded: it is {size} bytes as JSON, larger \
                     than the {limit} bytes this store accepts (StoreOptions::max_payload_bytes); \
                     store large data elsewhere and return a reference"
                );
                // A few hundred bytes: not held to the limit, so that even
                // a store with an absurdly small limit can say why.
                Ok((
                    EventType::ActivityFailed,
                    serde_json::to_vec(&json!({ "error": error }))?,
                ))
            }
            Err(other) => Err(other),
        }
    }

    /// Extends the lease on an activity task by `lease` from now (database
    /// clock) and records the new deadline in `task`. The claim's token
    /// does not change: should the reply be lost, `task` as it was still
    /// holds the lease (and may extend again, or complete). Unlike
    /// go-workflows', it fails when the lease is no longer held, so a worker
    /// learns that its work will be discarded.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, mut task: pgwake::ActivityTask) -> Result<(), pgwake::StoreError> {
    /// store.extend_activity_task(&mut task, std::time::Duration::from_secs(120)).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`].
    pub async fn extend_activity_task(
        &self,
        task: &mut ActivityTask,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.bounded(
            "extending an activity task's lease",
            self.extend_activity_task_unbounded(task, lease),
        )
        .await
    }

    async fn extend_activity_task_unbounded(
        &self,
        task: &mut ActivityTask,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease_secs = lease_seconds(lease)?;
        let client = self.client().await?;
        // Locks one activities row by primary key and nothing else.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "UPDATE activities SET locked_until = now() + make_interval(secs => $4)
              WHERE id = $1 AND worker = $2 AND lease_id = $3
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
            .map_err(db("extending the activity task's lease"))?;
        match row {
            Some(row) => {
                task.lease.extend_to(row.get(0));
                Ok(())
            }
            None => Err(StoreError::LeaseLost {
                task: format!(
                    "activity {} of {}",
                    task.activity_id, task.instance.instance_id
                ),
                worker: task.lease.worker().to_string(),
            }),
        }
    }

    /// Enqueues an activity outside any workflow decision, in one statement:
    /// a standalone job on `queue`, owned by `instance` (whose pending events
    /// receive its result if it is active). Unlike a scheduled activity it
    /// has no `ActivityScheduled` event (its `schedule_event_id` is 0).
    /// Returns the activity's id.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, owner: pgwake::InstanceRef) -> Result<(), pgwake::StoreError> {
    /// let id = store
    ///     .enqueue_activity(&owner, &pgwake::Queue::new("emails")?, "send", serde_json::json!({"to": "a@b.c"}))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// An invalid id, a payload too large, a database failure.
    pub async fn enqueue_activity(
        &self,
        instance: &InstanceRef,
        queue: &Queue,
        name: &str,
        input: Value,
    ) -> Result<String, StoreError> {
        self.bounded(
            "enqueueing an activity",
            self.enqueue_activity_unbounded(instance, queue, name, input),
        )
        .await
    }

    async fn enqueue_activity_unbounded(
        &self,
        instance: &InstanceRef,
        queue: &Queue,
        name: &str,
        input: Value,
    ) -> Result<String, StoreError> {
        let activity = StandaloneActivity::new(self, instance, queue, name, input)?;
        let defer = self.defers_notifications();
        let client = self.client().await?;
        // One autocommit statement: its reply may be lost too.
        let report = super::CommitReport::new(self, activity.touched());
        let written = activity.insert(&*client, defer).await;
        report.settle(written.is_ok());
        written?;
        Ok(activity.activity_id)
    }

    /// [`enqueue_activity`](Self::enqueue_activity) in the caller's
    /// transaction `tx`: the activity exists if and only if `tx` commits.
    /// After the commit, [`wake`](Self::wake) the returned token to start
    /// it at once; dropped, the token costs only the round trip of the
    /// NOTIFY the insert trigger sends at the commit (see [`WakeToken`]).
    /// Returns the activity's id.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, pool: deadpool_postgres::Pool, owner: pgwake::InstanceRef) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?;
    /// tx.execute("INSERT INTO users (email) VALUES ($1)", &[&"a@b.c"]).await?;
    /// let (id, token) = store
    ///     .enqueue_activity_in(&tx, &owner, &pgwake::Queue::new("emails")?, "welcome", serde_json::json!({"to": "a@b.c"}))
    ///     .await?;
    /// tx.commit().await?;
    /// store.wake(token);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`enqueue_activity`](Self::enqueue_activity). After a refused id
    /// or payload nothing was written and `tx` can go on; after a database
    /// error or a timeout, roll it back.
    pub async fn enqueue_activity_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        instance: &InstanceRef,
        queue: &Queue,
        name: &str,
        input: Value,
    ) -> Result<(String, WakeToken), StoreError> {
        let activity = StandaloneActivity::new(self, instance, queue, name, input)?;
        // Never deferred: the caller's commit must announce the activity
        // through the trigger, whether or not the token is used.
        self.bounded("enqueueing an activity", activity.insert(tx, false))
            .await?;
        let token = WakeToken::new(activity.touched());
        Ok((activity.activity_id, token))
    }

    /// Gives an activity task back unprocessed, claimable at once. Returns
    /// whether the lease was still held.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// # let (worker, queues) = (pgwake::WorkerId::unique("docs"), pgwake::queues(["emails"])?);
    /// for task in store.claim_activity_tasks(&worker, &queues, 10, std::time::Duration::from_secs(120)).await? {
    ///     // Shutting down: let another worker take it now, not when the lease expires.
    ///     let was_held = store.release_activity_task(&task).await?;
    ///     println!("released {}: {was_held}", task.activity_id);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure.
    pub async fn release_activity_task(&self, task: &ActivityTask) -> Result<bool, StoreError> {
        self.bounded(
            "releasing an activity task",
            self.release_activity_task_unbounded(task),
        )
        .await
    }

    async fn release_activity_task_unbounded(
        &self,
        task: &ActivityTask,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        // Locks one activities row by primary key and nothing else.
        let released = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE activities SET locked_until = NULL, lease_id = NULL
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
            .map_err(db("releasing the activity task"))?;
        Ok(released == 1)
    }
}

/// A standalone activity about to be enqueued: its owner's ids checked, its
/// attributes encoded and size-checked.
struct StandaloneActivity<'a> {
    activity_id: String,
    instance: &'a InstanceRef,
    queue: &'a Queue,
    data: Vec<u8>,
}

impl<'a> StandaloneActivity<'a> {
    fn new(
        store: &Store,
        instance: &'a InstanceRef,
        queue: &'a Queue,
        name: &str,
        input: Value,
    ) -> Result<Self, StoreError> {
        super::names::check_id("instance id", &instance.instance_id, 128)?;
        super::names::check_id("execution id", &instance.execution_id, 128)?;
        let data =
            store.encode(&json!({ "name": name, "input": input, "queue": queue.as_str() }))?;
        Ok(Self {
            activity_id: super::new_id(),
            instance,
            queue,
            data,
        })
    }

    fn touched(&self) -> TouchedQueues {
        let mut touched = TouchedQueues::default();
        touched.add_activity(self.queue);
        touched
    }

    /// Inserts it and its attributes in one statement on `client`: alone
    /// (autocommit) or in the caller's transaction.
    ///
    /// With `defer`, it skips the insert trigger's NOTIFY: set_config(..,
    /// true) lasts until the end of the statement's transaction and runs
    /// before the statement's AFTER triggers fire at its end, so the trigger
    /// skips it exactly as it skips a SET LOCAL: a write without the
    /// commit-time NOTIFY lock, in one round trip. Without `defer` the
    /// setting is not touched, so a caller's transaction keeps its own.
    async fn insert(&self, client: &impl GenericClient, defer: bool) -> Result<(), StoreError> {
        // `FROM defer WHERE v IS NOT NULL` makes the insert read the CTE,
        // and so evaluate set_config, before inserting.
        client
            .execute(
                &client
                    .prepare_cached(
                        "WITH defer AS (SELECT CASE WHEN $6
                                    THEN set_config('pgwake.defer_notify', 'on', true)
                                    ELSE '' END AS v),
                      attrs AS (INSERT INTO attributes (event_id, instance_id, execution_id, data)
                                VALUES ($1, $2, $3, $5))
                 INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue,
                                         timestamp, schedule_event_id)
                 SELECT $1, $2, $3, 11, $4, now(), 0 FROM defer WHERE defer.v IS NOT NULL",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &self.activity_id,
                    &self.instance.instance_id,
                    &self.instance.execution_id,
                    &self.queue.as_str(),
                    &self.data,
                    &defer,
                ],
            )
            .await
            .map_err(db("enqueueing an activity"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Recording;

    /// Every combination of what the recording statement reports for a
    /// result: deleted or not, owner active or not, row still under the
    /// lease in the statement's snapshot or not.
    #[test]
    fn each_answer_of_the_recording_statement_has_one_meaning() {
        let cases = [
            ((true, true, true), Recording::Recorded),
            ((true, true, false), Recording::Recorded),
            ((true, false, true), Recording::Dropped),
            ((true, false, false), Recording::Dropped),
            // Not deleted, still ours as of the snapshot: someone holds it.
            ((false, true, true), Recording::Busy),
            ((false, false, true), Recording::Busy),
            // Gone or re-leased: lost while the owner runs, moot once it ended.
            ((false, true, false), Recording::LeaseLost),
            ((false, false, false), Recording::Dropped),
        ];
        for ((deleted, owner_active, still_held), expected) in cases {
            assert_eq!(
                Recording::of(deleted, owner_active, still_held),
                expected,
                "deleted {deleted}, owner active {owner_active}, still held {still_held}"
            );
        }
    }
}
