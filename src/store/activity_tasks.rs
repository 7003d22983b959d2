//! Activity tasks: claiming them in batches, reporting their results back
//! to their workflow, and keeping or giving back their leases.

use std::time::Duration;

use serde_json::{json, Value};

use super::events::{insert_pending, NewEvent};
use super::model::{ActivityTask, EventType, InstanceRef, Lease};
use super::names::{Queue, WorkerId};
use super::{db, lease_seconds, Store, TouchedQueues};
use crate::error::StoreError;

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
        if queues.is_empty() {
            return Err(StoreError::NoQueues);
        }
        let lease_secs = lease_seconds(lease)?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let queue_names: Vec<&str> = queues.iter().map(Queue::as_str).collect();
        let client = self.client().await?;
        // Locks up to `max` activities rows, FOR UPDATE SKIP LOCKED: it never
        // waits, so it cannot deadlock, and concurrent claimers take
        // disjoint rows. The due time rides along as the first column of a
        // row that exists even when nothing is claimed.
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let rows = client
            .query(
                &client
                    .prepare_cached(&format!(
                        "WITH candidate AS (
                       SELECT id FROM activities
                        WHERE queue = ANY($1)
                          AND (locked_until IS NULL OR locked_until < now())
                          AND (visible_at IS NULL OR visible_at <= now())
                        ORDER BY id LIMIT $4
                        FOR UPDATE SKIP LOCKED),
                     claimed AS (
                       UPDATE activities a
                          SET locked_until = now() + make_interval(secs => $3), worker = $2
                         FROM candidate c WHERE a.id = c.id
                       RETURNING a.id, a.activity_id, a.instance_id, a.execution_id, a.queue,
                                 a.schedule_event_id, a.locked_until, a.timestamp),
                     -- A full batch polls again at once: no due time needed.
                     due AS (SELECT CASE WHEN (SELECT count(*) FROM claimed) < $4
                                         THEN (SELECT due_in FROM ({}) next) END AS due_in),
                     -- A claim is a lease: if its commit is lost in a crash, the task
                     -- is claimed again, and fencing keeps completion exactly-once.
                     -- So it need not wait for its WAL flush.
                     lazy_commit AS (SELECT set_config('synchronous_commit', 'off', true))
                     SELECT due.due_in, c.id, c.activity_id, c.instance_id, c.execution_id, c.queue,
                            c.schedule_event_id, c.locked_until, at.data, c.timestamp
                       FROM due CROSS JOIN lazy_commit LEFT JOIN (claimed c
                         LEFT JOIN attributes at ON at.instance_id = c.instance_id
                              AND at.execution_id = c.execution_id AND at.event_id = c.activity_id)
                         ON true
                      ORDER BY c.id",
                        super::stats::ACTIVITY_DUE_SQL
                    ))
                    .await
                    .map_err(db("preparing a statement"))?,
                &[&queue_names, &worker.as_str(), &lease_secs, &limit],
            )
            .await
            .map_err(db("claiming activity tasks"))?;
        #[cfg(feature = "metrics")]
        crate::metrics::claim_duration(crate::runtime::TaskKind::Activity, started);
        let due_in = rows
            .first()
            .and_then(|r| r.get::<_, Option<f64>>(0))
            .map(super::stats::seconds);
        let rows: Vec<_> = rows
            .into_iter()
            .filter(|r| r.get::<_, Option<i64>>(1).is_some())
            .collect();
        let tasks = rows
            .iter()
            .map(|row| {
                let data: Option<Vec<u8>> = row.get(8);
                let scheduled: Value = match data {
                    Some(bytes) => serde_json::from_slice(&bytes)?,
                    None => Value::Null,
                };
                Ok(ActivityTask {
                    row_id: row.get(1),
                    activity_id: row.get(2),
                    instance: InstanceRef {
                        instance_id: row.get(3),
                        execution_id: row.get(4),
                    },
                    queue: Queue::new(row.get::<_, String>(5)).unwrap_or_default(),
                    schedule_event_id: row.get(6),
                    name: scheduled["name"].as_str().unwrap_or_default().to_string(),
                    input: scheduled.get("input").cloned().unwrap_or(Value::Null),
                    enqueued_at: row.get(9),
                    lease: Lease {
                        worker: worker.clone(),
                        locked_until: row.get(7),
                    },
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        if !tasks.is_empty() {
            tracing::debug!(count = tasks.len(), worker = %worker, "activity tasks claimed");
        }
        Ok((tasks, due_in))
    }

    /// Records an activity's result (`Ok`) or error (`Err`): deletes the
    /// activity and queues `ActivityCompleted` (`{"result"}`) or
    /// `ActivityFailed` (`{"error"}`) for its workflow in one transaction,
    /// which is what wakes the workflow.
    ///
    /// Only the lease holder may complete ([`StoreError::LeaseLost`]
    /// otherwise). If the workflow has finished meanwhile (canceled, say),
    /// the result is dropped and `Ok` returned: nobody is left to read it.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, task: pgwake::ActivityTask) -> Result<(), pgwake::StoreError> {
    /// store.complete_activity_task(&task, Ok(serde_json::json!({"sent": true}))).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::LeaseLost`], a payload too large, a database failure.
    pub async fn complete_activity_task(
        &self,
        task: &ActivityTask,
        result: Result<Value, String>,
    ) -> Result<(), StoreError> {
        let (event_type, attributes) = match result {
            Ok(value) => (EventType::ActivityCompleted, json!({ "result": value })),
            Err(error) => (EventType::ActivityFailed, json!({ "error": error })),
        };
        let data = self.encode(&attributes)?;
        let mut client = self.client().await?;
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let tx = self.begin_write(&mut client).await?;
        // Locks the owning instances row (shared) before the activities row,
        // the order every waiting transaction follows: a workflow completion
        // that finishes this instance holds it exclusively first, so the two
        // serialize instead of deadlocking.
        let owner = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT state, queue FROM instances
                  WHERE instance_id = $1 AND execution_id = $2 FOR SHARE",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[&task.instance.instance_id, &task.instance.execution_id],
            )
            .await
            .map_err(db("locking the activity's workflow"))?;
        let owner_queue = owner
            .filter(|row| row.get::<_, i32>(0) == 0)
            .map(|row| Queue::new(row.get::<_, String>(1)).unwrap_or_default());
        let owner_active = owner_queue.is_some();
        let deleted = tx
            .execute(
                &tx.prepare_cached(
                    "DELETE FROM activities WHERE id = $1 AND worker = $2 AND locked_until = $3",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[
                    &task.row_id,
                    &task.lease.worker.as_str(),
                    &task.lease.locked_until,
                ],
            )
            .await
            .map_err(db("deleting the completed activity"))?;
        if deleted == 0 {
            if !owner_active {
                tracing::debug!(activity_id = %task.activity_id, "workflow finished meanwhile; result dropped");
                return Ok(());
            }
            return Err(StoreError::LeaseLost {
                task: format!(
                    "activity {} of {}",
                    task.activity_id, task.instance.instance_id
                ),
                worker: task.lease.worker.to_string(),
            });
        }
        let mut touched = TouchedQueues::default();
        if let Some(queue) = &owner_queue {
            let event = NewEvent::new(event_type, task.schedule_event_id, data);
            insert_pending(&tx, &task.instance, &[event]).await?;
            touched.add_workflow(queue);
        }
        self.commit_write(tx, touched, "committing the activity result")
            .await?;
        #[cfg(feature = "metrics")]
        crate::metrics::completion_duration(crate::runtime::TaskKind::Activity, started);
        tracing::debug!(activity_id = %task.activity_id, ?event_type, "activity task completed");
        Ok(())
    }

    /// Records many activities' results in one transaction: what lets a
    /// worker that runs activities in batches record them at the same pace.
    /// Each is fenced by its own lease, exactly as
    /// [`complete_activity_task`](Self::complete_activity_task) fences one;
    /// the returned outcomes are in the order given.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, a: pgwake::ActivityTask, b: pgwake::ActivityTask) -> Result<(), pgwake::StoreError> {
    /// let outcomes = store
    ///     .complete_activity_tasks(&[(&a, Ok(serde_json::json!(1))), (&b, Err("timeout".into()))])
    ///     .await?;
    /// assert_eq!(outcomes.len(), 2);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A payload too large (nothing is recorded), a database failure
    /// (nothing is recorded). A lost lease is an `Err` in its own outcome.
    pub async fn complete_activity_tasks(
        &self,
        completions: &[(&ActivityTask, Result<Value, String>)],
    ) -> Result<Vec<Result<(), StoreError>>, StoreError> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        let mut row_ids = Vec::with_capacity(completions.len());
        let mut workers = Vec::with_capacity(completions.len());
        let mut tokens = Vec::with_capacity(completions.len());
        let mut event_ids = Vec::with_capacity(completions.len());
        let mut event_types = Vec::with_capacity(completions.len());
        let mut data = Vec::with_capacity(completions.len());
        for (task, result) in completions {
            let (event_type, attributes) = match result {
                Ok(value) => (EventType::ActivityCompleted, json!({ "result": value })),
                Err(error) => (EventType::ActivityFailed, json!({ "error": error })),
            };
            data.push(self.encode(&attributes)?);
            event_types.push(event_type.code());
            event_ids.push(super::new_id());
            row_ids.push(task.row_id);
            workers.push(task.lease.worker.as_str());
            tokens.push(task.lease.locked_until);
        }
        let owner_instances: Vec<&str> = completions
            .iter()
            .map(|(t, _)| t.instance.instance_id.as_str())
            .collect();
        let owner_executions: Vec<&str> = completions
            .iter()
            .map(|(t, _)| t.instance.execution_id.as_str())
            .collect();
        let mut client = self.client().await?;
        #[cfg(feature = "metrics")]
        let started = std::time::Instant::now();
        let tx = self.begin_write(&mut client).await?;
        // Locks the owning instances rows (shared) in id order, before any
        // activities row: the order every waiting transaction follows.
        let owners = tx
            .query(
                &tx.prepare_cached(
                    "SELECT i.id, i.instance_id, i.execution_id, i.queue FROM instances i
                  WHERE (i.instance_id, i.execution_id) IN
                        (SELECT * FROM unnest($1::text[], $2::text[]))
                    AND i.state = 0
                  ORDER BY i.id FOR SHARE",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[&owner_instances, &owner_executions],
            )
            .await
            .map_err(db("locking the activities' workflows"))?;
        // Deletes exactly the activities whose lease (holder and fencing
        // token) still matches, and queues each one's result for its owner
        // when the owner is active: one statement for the whole batch.
        let deleted = tx
            .query(
                &tx.prepare_cached("WITH input AS (
                   SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::text[], $5::int[], $6::bytea[])
                            WITH ORDINALITY AS t(row_id, worker, token, event_id, event_type, data, ord)),
                 deleted AS (
                   DELETE FROM activities a USING input
                    WHERE a.id = input.row_id AND a.worker = input.worker AND a.locked_until = input.token
                   RETURNING a.id, a.instance_id, a.execution_id, a.schedule_event_id),
                 results AS (
                   SELECT input.ord, input.event_id, input.event_type, input.data,
                          d.instance_id, d.execution_id, d.schedule_event_id
                     FROM deleted d JOIN input ON input.row_id = d.id
                     JOIN instances i ON i.instance_id = d.instance_id AND i.execution_id = d.execution_id
                    WHERE i.state = 0),
                 attrs AS (
                   INSERT INTO attributes (event_id, instance_id, execution_id, data)
                   SELECT event_id, instance_id, execution_id, data FROM results),
                 events AS (
                   INSERT INTO pending_events (event_id, instance_id, execution_id, event_type,
                                               timestamp, schedule_event_id)
                   SELECT event_id, instance_id, execution_id, event_type, now(), schedule_event_id
                     FROM results ORDER BY ord)
                 SELECT id FROM deleted").await.map_err(db("preparing a statement"))?,
                &[&row_ids, &workers, &tokens, &event_ids, &event_types, &data],
            )
            .await
            .map_err(db("recording activity results"))?;
        let deleted: std::collections::HashSet<i64> = deleted.iter().map(|r| r.get(0)).collect();
        let active_owners: std::collections::HashSet<(String, String)> =
            owners.iter().map(|r| (r.get(1), r.get(2))).collect();
        let mut touched = TouchedQueues::default();
        for row in &owners {
            touched.add_workflow(&Queue::new(row.get::<_, String>(3)).unwrap_or_default());
        }
        self.commit_write(tx, touched, "committing activity results")
            .await?;
        #[cfg(feature = "metrics")]
        crate::metrics::completion_duration(crate::runtime::TaskKind::Activity, started);
        let outcomes = completions
            .iter()
            .map(|(task, _)| {
                let owner_active = active_owners.contains(&(
                    task.instance.instance_id.clone(),
                    task.instance.execution_id.clone(),
                ));
                if deleted.contains(&task.row_id) || !owner_active {
                    // Recorded, or its workflow ended meanwhile and nobody is
                    // left to read it (as for a single completion).
                    Ok(())
                } else {
                    Err(StoreError::LeaseLost {
                        task: format!(
                            "activity {} of {}",
                            task.activity_id, task.instance.instance_id
                        ),
                        worker: task.lease.worker.to_string(),
                    })
                }
            })
            .collect();
        Ok(outcomes)
    }

    /// Extends the lease on an activity task by `lease` from now (database
    /// clock) and records the new fencing token in `task`. Unlike
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
        let lease_secs = lease_seconds(lease)?;
        let client = self.client().await?;
        // Locks one activities row by primary key and nothing else.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "UPDATE activities SET locked_until = now() + make_interval(secs => $4)
                  WHERE id = $1 AND worker = $2 AND locked_until = $3
                  RETURNING locked_until",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &task.row_id,
                    &task.lease.worker.as_str(),
                    &task.lease.locked_until,
                    &lease_secs,
                ],
            )
            .await
            .map_err(db("extending the activity task's lease"))?;
        match row {
            Some(row) => {
                task.lease.locked_until = row.get(0);
                Ok(())
            }
            None => Err(StoreError::LeaseLost {
                task: format!(
                    "activity {} of {}",
                    task.activity_id, task.instance.instance_id
                ),
                worker: task.lease.worker.to_string(),
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
        super::names::check_id("instance id", &instance.instance_id, 128)?;
        super::names::check_id("execution id", &instance.execution_id, 128)?;
        let data =
            self.encode(&json!({ "name": name, "input": input, "queue": queue.as_str() }))?;
        let activity_id = super::new_id();
        let defer = self.defers_notifications();
        let client = self.client().await?;
        // One autocommit statement. set_config(.., true) lasts until the end
        // of this statement's transaction, and runs before the statement's
        // AFTER triggers fire at its end, so the trigger skips it exactly
        // as it skips a SET LOCAL: a write without the commit-time NOTIFY
        // lock, in one round trip.
        client
            .execute(
                &client.prepare_cached("WITH defer AS (SELECT set_config('pgwake.defer_notify', CASE WHEN $6 THEN 'on' ELSE '' END, true) AS v),
                      attrs AS (INSERT INTO attributes (event_id, instance_id, execution_id, data)
                                VALUES ($1, $2, $3, $5))
                 INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue,
                                         timestamp, schedule_event_id)
                 SELECT $1, $2, $3, 11, $4, now(), 0 FROM defer WHERE defer.v IS NOT NULL").await.map_err(db("preparing a statement"))?,
                &[
                    &activity_id,
                    &instance.instance_id,
                    &instance.execution_id,
                    &queue.as_str(),
                    &data,
                    &defer,
                ],
            )
            .await
            .map_err(db("enqueueing an activity"))?;
        let mut touched = TouchedQueues::default();
        touched.add_activity(queue);
        self.report_commit(touched);
        Ok(activity_id)
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
        let client = self.client().await?;
        // Locks one activities row by primary key and nothing else.
        let released = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE activities SET locked_until = NULL
                  WHERE id = $1 AND worker = $2 AND locked_until = $3",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &task.row_id,
                    &task.lease.worker.as_str(),
                    &task.lease.locked_until,
                ],
            )
            .await
            .map_err(db("releasing the activity task"))?;
        Ok(released == 1)
    }
}
