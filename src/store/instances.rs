//! Creating, signalling, cancelling, reading and removing instances.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use serde_json::json;

use super::events::{event_from_row, insert_pending, NewEvent, ATTRIBUTES_JOIN, EVENT_COLUMNS};
use super::model::{
    CancelOutcome, EventType, InstanceRef, InstanceSnapshot, InstanceState, NewInstance,
};
use super::names::{check_id, Queue};
use super::{db, new_id, Store, TouchedQueues, WakeToken};
use crate::error::StoreError;

/// Class id of pgwake's advisory locks on instance ids (the second key is
/// `hashtext(instance_id)`): apart from applications' own advisory locks.
const INSTANCE_ID_LOCK_CLASS: i32 = 0x7067_7761; // "pgwa"

/// Takes the advisory locks on `instance_ids` (as [`Store::insert_instance`]
/// takes one), in one statement, deduplicated and in ascending order of the
/// lock key: what lets a transaction that creates several instances take
/// them all without two such transactions waiting for each other in a
/// cycle. Taking them again later in the same transaction is granted at
/// once: advisory locks are re-entrant within a session.
pub(crate) async fn lock_instance_ids(
    client: &impl GenericClient,
    instance_ids: &[&str],
) -> Result<(), StoreError> {
    if instance_ids.is_empty() {
        return Ok(());
    }
    // The sorted, distinct keys come from a subquery that is not flattened
    // (DISTINCT), so the locks are taken row by row in its order.
    client
        .execute(
            &client
                .prepare_cached(
                    "SELECT pg_advisory_xact_lock($1, key)
                       FROM (SELECT DISTINCT hashtext(id) AS key
                               FROM unnest($2::text[]) AS t(id) ORDER BY key) keys",
                )
                .await
                .map_err(db("preparing a statement"))?,
            &[&INSTANCE_ID_LOCK_CLASS, &instance_ids],
        )
        .await
        .map_err(db("locking the instance ids"))?;
    Ok(())
}

/// Deletes the instances selected by `doomed` (a query yielding `id,
/// instance_id, execution_id`) with every row that belongs to them.
pub(super) fn delete_instances_sql(doomed: &str) -> String {
    format!(
        "WITH doomed AS ({doomed}),
         h AS (DELETE FROM history x USING doomed d
                WHERE x.instance_id = d.instance_id AND x.execution_id = d.execution_id),
         p AS (DELETE FROM pending_events x USING doomed d
                WHERE x.instance_id = d.instance_id AND x.execution_id = d.execution_id),
         ac AS (DELETE FROM activities x USING doomed d
                WHERE x.instance_id = d.instance_id AND x.execution_id = d.execution_id),
         at AS (DELETE FROM attributes x USING doomed d
                WHERE x.instance_id = d.instance_id AND x.execution_id = d.execution_id)
         DELETE FROM instances i USING doomed d WHERE i.id = d.id"
    )
}

impl Store {
    /// Creates a workflow instance and its `WorkflowExecutionStarted` event
    /// in one transaction. One active execution per instance id: a second
    /// is refused, a finished one may be started again.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let new = pgwake::NewInstance::new("order-7", pgwake::Queue::new("orders")?);
    /// let execution = store.create_instance(new).await?;
    /// println!("started execution {}", execution.execution_id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`], an invalid id, a payload too large.
    pub async fn create_instance(&self, new: NewInstance) -> Result<InstanceRef, StoreError> {
        self.bounded("creating an instance", self.create_instance_unbounded(new))
            .await
    }

    async fn create_instance_unbounded(&self, new: NewInstance) -> Result<InstanceRef, StoreError> {
        let mut client = self.client().await?;
        let tx = self.begin_write(&mut client).await?;
        let queue = new.queue.clone();
        let (instance, touched) = self.write_new_instance(&tx, new).await?;
        self.commit_write(tx, touched, "committing the new instance")
            .await?;
        tracing::debug!(instance_id = %instance.instance_id, %queue, "instance created");
        Ok(instance)
    }

    /// [`create_instance`](Self::create_instance) in the caller's
    /// transaction `tx`: the instance exists if and only if `tx` commits.
    /// After the commit, [`wake`](Self::wake) the returned token to start
    /// it at once; dropped, the token costs only the round trip of the
    /// NOTIFY the insert triggers send at the commit (see [`WakeToken`]).
    ///
    /// The statements run under [`StoreOptions::operation_timeout`](crate::StoreOptions::operation_timeout);
    /// the transaction, its commit and its other statements are the
    /// caller's. Until `tx` ends it holds a lock on the instance id, which
    /// a concurrent create of the same id waits for.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// use pgwake::{NewInstance, Queue};
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE accounts SET state = 'closing' WHERE id = $1", &[&7_i64]).await?;
    /// let new = NewInstance::new("close-account-7", Queue::new("accounts")?);
    /// let (execution, token) = store.create_instance_in(&tx, new).await?;
    /// tx.commit().await?;
    /// store.wake(token);
    /// println!("started execution {}", execution.execution_id);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`create_instance`](Self::create_instance). After
    /// [`StoreError::AlreadyExists`] or a refused id or payload nothing was
    /// written and `tx` can go on; after a database error or a timeout,
    /// roll it back.
    pub async fn create_instance_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        new: NewInstance,
    ) -> Result<(InstanceRef, WakeToken), StoreError> {
        let queue = new.queue.clone();
        let (instance, touched) = self
            .bounded("creating an instance", self.write_new_instance(tx, new))
            .await?;
        tracing::debug!(instance_id = %instance.instance_id, %queue, "instance written in the caller's transaction");
        Ok((instance, WakeToken::new(touched)))
    }

    /// Creates the instance in `client`'s transaction: what
    /// [`create_instance`](Self::create_instance) and
    /// [`create_instance_in`](Self::create_instance_in) share.
    async fn write_new_instance(
        &self,
        client: &impl GenericClient,
        new: NewInstance,
    ) -> Result<(InstanceRef, TouchedQueues), StoreError> {
        let created = self.insert_instance(client, &new, None).await?;
        let Some(instance) = created else {
            return Err(StoreError::AlreadyExists {
                instance_id: new.instance_id,
            });
        };
        let mut touched = TouchedQueues::default();
        touched.add_workflow(&new.queue);
        Ok((instance, touched))
    }

    /// Inserts an instance unless an active execution of its id exists
    /// (`None` then). Serialized per instance id by a transaction-level
    /// advisory lock: without it two concurrent creates would both find no
    /// active execution and both insert one (go-workflows' race).
    ///
    /// Waiting for that lock is safe only where the transaction holds no
    /// row lock and no other advisory lock yet (as in
    /// [`create_instance`](Self::create_instance)); a transaction that
    /// creates instances later or several at once takes all their locks
    /// first with [`lock_instance_ids`], and the lock taken here is then
    /// already held: granted at once, it never waits.
    pub(crate) async fn insert_instance(
        &self,
        client: &impl GenericClient,
        new: &NewInstance,
        parent: Option<(&InstanceRef, i64)>,
    ) -> Result<Option<InstanceRef>, StoreError> {
        check_id("instance id", &new.instance_id, 128)?;
        let metadata = new.metadata.as_ref().map(|m| self.encode(m)).transpose()?;
        let start = NewEvent::new(
            EventType::WorkflowExecutionStarted,
            0,
            self.encode(&new.input)?,
        );
        client
            .execute(
                &client
                    .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .await
                    .map_err(db("preparing a statement"))?,
                &[&INSTANCE_ID_LOCK_CLASS, &new.instance_id],
            )
            .await
            .map_err(db("locking the instance id"))?;
        let active = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT 1 FROM instances WHERE instance_id = $1 AND state = 0 LIMIT 1",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[&new.instance_id],
            )
            .await
            .map_err(db("looking for an active execution"))?;
        if active.is_some() {
            return Ok(None);
        }
        let instance = InstanceRef {
            instance_id: new.instance_id.clone(),
            execution_id: new_id(),
        };
        let (parent_instance, parent_execution, parent_schedule) = match parent {
            Some((p, schedule)) => (
                Some(p.instance_id.as_str()),
                Some(p.execution_id.as_str()),
                Some(schedule.to_string()),
            ),
            None => (None, None, None),
        };
        client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO instances (instance_id, execution_id, parent_instance_id,
                   parent_execution_id, parent_schedule_event_id, metadata, state, queue)
                 VALUES ($1, $2, $3, $4, $5::text::numeric, $6, 0, $7)",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[
                    &instance.instance_id,
                    &instance.execution_id,
                    &parent_instance,
                    &parent_execution,
                    &parent_schedule,
                    &metadata,
                    &new.queue.as_str(),
                ],
            )
            .await
            .map_err(db("inserting the instance"))?;
        insert_pending(client, &instance, &[start]).await?;
        Ok(Some(instance))
    }

    /// Queues a `SignalReceived` event (`{"name", "payload"}`) for the
    /// active execution of `instance_id`.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// store.signal_instance("order-7", "address-changed", serde_json::json!({"zip": "1010"})).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no execution of it is active.
    pub async fn signal_instance(
        &self,
        instance_id: &str,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<(), StoreError> {
        self.bounded(
            "signalling an instance",
            self.signal_instance_unbounded(instance_id, name, payload),
        )
        .await
    }

    async fn signal_instance_unbounded(
        &self,
        instance_id: &str,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<(), StoreError> {
        let data = self.signal_data(instance_id, name, payload)?;
        let mut client = self.client().await?;
        let tx = self.begin_write(&mut client).await?;
        let touched = self.write_signal(&tx, instance_id, data).await?;
        self.commit_write(tx, touched, "committing the signal")
            .await?;
        Ok(())
    }

    /// [`signal_instance`](Self::signal_instance) in the caller's
    /// transaction `tx`: the signal is sent if and only if `tx` commits.
    /// After the commit, [`wake`](Self::wake) the returned token (see
    /// [`WakeToken`]). Until `tx` ends it holds a share lock on the
    /// instance's row, which claims of its workflow tasks skip and their
    /// completions wait for: keep the transaction short.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?;
    /// tx.execute("UPDATE orders SET paid = true WHERE id = $1", &[&7_i64]).await?;
    /// let token = store.signal_instance_in(&tx, "order-7", "paid", serde_json::json!({"cents": 500})).await?;
    /// tx.commit().await?;
    /// store.wake(token);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`signal_instance`](Self::signal_instance). After
    /// [`StoreError::NotFound`] or a refused id or payload nothing was
    /// written and `tx` can go on; after a database error or a timeout,
    /// roll it back.
    pub async fn signal_instance_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        instance_id: &str,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<WakeToken, StoreError> {
        let data = self.signal_data(instance_id, name, payload)?;
        let touched = self
            .bounded(
                "signalling an instance",
                self.write_signal(tx, instance_id, data),
            )
            .await?;
        Ok(WakeToken::new(touched))
    }

    /// A signal's attributes, the instance id checked and the size limited.
    fn signal_data(
        &self,
        instance_id: &str,
        name: &str,
        payload: serde_json::Value,
    ) -> Result<Vec<u8>, StoreError> {
        check_id("instance id", instance_id, 128)?;
        self.encode(&json!({ "name": name, "payload": payload }))
    }

    /// Queues the signal `data` in `client`'s transaction: what
    /// [`signal_instance`](Self::signal_instance) and
    /// [`signal_instance_in`](Self::signal_instance_in) share.
    async fn write_signal(
        &self,
        client: &impl GenericClient,
        instance_id: &str,
        data: Vec<u8>,
    ) -> Result<TouchedQueues, StoreError> {
        // Locks the one active instance row (shared): a concurrent
        // completion cannot finish it between this check and the insert.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT execution_id, queue FROM instances WHERE instance_id = $1 AND state = 0
             ORDER BY id DESC LIMIT 1 FOR SHARE",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[&instance_id],
            )
            .await
            .map_err(db("looking for the instance"))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                instance_id: instance_id.to_string(),
                needs_active: true,
            });
        };
        let instance = InstanceRef {
            instance_id: instance_id.to_string(),
            execution_id: row.get(0),
        };
        insert_pending(
            client,
            &instance,
            &[NewEvent::new(EventType::SignalReceived, 0, data)],
        )
        .await?;
        let mut touched = TouchedQueues::default();
        touched.add_workflow(&Queue::new(row.get::<_, String>(1)).unwrap_or_default());
        Ok(touched)
    }

    /// Asks the active execution of `instance_id` to cancel (a
    /// `WorkflowExecutionCanceled` event its workflow reacts to). A finished
    /// instance is left as it is.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let outcome = store.cancel_instance("order-7").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the instance never existed.
    pub async fn cancel_instance(&self, instance_id: &str) -> Result<CancelOutcome, StoreError> {
        self.bounded(
            "canceling an instance",
            self.cancel_instance_unbounded(instance_id),
        )
        .await
    }

    async fn cancel_instance_unbounded(
        &self,
        instance_id: &str,
    ) -> Result<CancelOutcome, StoreError> {
        check_id("instance id", instance_id, 128)?;
        let mut client = self.client().await?;
        let tx = self.begin_write(&mut client).await?;
        let (outcome, touched) = self.write_cancel_request(&tx, instance_id).await?;
        self.commit_write(tx, touched, "committing the cancel request")
            .await?;
        Ok(outcome)
    }

    /// [`cancel_instance`](Self::cancel_instance) in the caller's
    /// transaction `tx`: the cancel is requested if and only if `tx`
    /// commits. After the commit, [`wake`](Self::wake) the returned token
    /// (empty for [`CancelOutcome::AlreadyFinished`]; see [`WakeToken`]).
    /// Until `tx` ends it holds a share lock on the instance's row, which
    /// claims of its workflow tasks skip and their completions wait for:
    /// keep the transaction short.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store, pool: deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut client = pool.get().await?;
    /// let tx = client.transaction().await?;
    /// tx.execute("DELETE FROM carts WHERE order_id = $1", &[&7_i64]).await?;
    /// let (outcome, token) = store.cancel_instance_in(&tx, "order-7").await?;
    /// tx.commit().await?;
    /// store.wake(token);
    /// println!("{outcome:?}");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`cancel_instance`](Self::cancel_instance). After
    /// [`StoreError::NotFound`] or a refused id nothing was written and
    /// `tx` can go on; after a database error or a timeout, roll it back.
    pub async fn cancel_instance_in(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        instance_id: &str,
    ) -> Result<(CancelOutcome, WakeToken), StoreError> {
        check_id("instance id", instance_id, 128)?;
        let (outcome, touched) = self
            .bounded(
                "canceling an instance",
                self.write_cancel_request(tx, instance_id),
            )
            .await?;
        Ok((outcome, WakeToken::new(touched)))
    }

    /// Requests the cancel in `client`'s transaction: what
    /// [`cancel_instance`](Self::cancel_instance) and
    /// [`cancel_instance_in`](Self::cancel_instance_in) share.
    async fn write_cancel_request(
        &self,
        client: &impl GenericClient,
        instance_id: &str,
    ) -> Result<(CancelOutcome, TouchedQueues), StoreError> {
        // Locks the newest instance row (shared), preferring the active one.
        let row = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT execution_id, state, queue FROM instances WHERE instance_id = $1
             ORDER BY (state = 0) DESC, id DESC LIMIT 1 FOR SHARE",
                    )
                    .await
                    .map_err(db("preparing a statement"))?,
                &[&instance_id],
            )
            .await
            .map_err(db("looking for the instance"))?;
        let Some(row) = row else {
            return Err(StoreError::NotFound {
                instance_id: instance_id.to_string(),
                needs_active: false,
            });
        };
        if InstanceState::from_db(row.get(1)) != InstanceState::Active {
            return Ok((CancelOutcome::AlreadyFinished, TouchedQueues::default()));
        }
        let instance = InstanceRef {
            instance_id: instance_id.to_string(),
            execution_id: row.get(0),
        };
        let event = NewEvent::new(EventType::WorkflowExecutionCanceled, 0, b"null".to_vec());
        insert_pending(client, &instance, &[event]).await?;
        let mut touched = TouchedQueues::default();
        touched.add_workflow(&Queue::new(row.get::<_, String>(2)).unwrap_or_default());
        Ok((CancelOutcome::Requested, touched))
    }

    /// The newest execution of `instance_id` (the active one if any), with
    /// its history and pending events, and how often its workflow task has
    /// failed in a row and why; `None` if it never existed. All read in one
    /// snapshot (a repeatable-read, read-only transaction): an event is in
    /// the history or pending as of the state shown, never in neither.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// if let Some(snapshot) = store.instance("order-7").await? {
    ///     println!("{:?}: {} events", snapshot.state, snapshot.history.len());
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure or an unreadable payload.
    pub async fn instance(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceSnapshot>, StoreError> {
        self.bounded("reading an instance", self.instance_unbounded(instance_id))
            .await
    }

    async fn instance_unbounded(
        &self,
        instance_id: &str,
    ) -> Result<Option<InstanceSnapshot>, StoreError> {
        check_id("instance id", instance_id, 128)?;
        let mut client = self.client().await?;
        // One snapshot for the three reads: read one by one, a decision
        // committing between them showed an execution still active whose
        // cancellation was neither pending nor in its history.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db("starting a read"))?;
        let row = tx
            .query_opt(
                &tx.prepare_cached(
                    "SELECT execution_id, queue, state, metadata, created_at, completed_at,
                    task_attempts, last_task_error
               FROM instances WHERE instance_id = $1
              ORDER BY (state = 0) DESC, id DESC LIMIT 1",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[&instance_id],
            )
            .await
            .map_err(db("reading the instance"))?;
        let Some(row) = row else { return Ok(None) };
        let instance = InstanceRef {
            instance_id: instance_id.to_string(),
            execution_id: row.get(0),
        };
        let metadata: Option<Vec<u8>> = row.get(3);
        let events = |table: &str, order: &str| {
            format!(
                "SELECT {EVENT_COLUMNS} FROM {table} e {ATTRIBUTES_JOIN}
              WHERE e.instance_id = $1 AND e.execution_id = $2 ORDER BY {order}"
            )
        };
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&instance.instance_id, &instance.execution_id];
        let (history_sql, pending_sql) = (
            events("history", "e.sequence_id"),
            events("pending_events", "e.id"),
        );
        let (history, pending) = futures::try_join!(
            async {
                tx.query(&history_sql, &params)
                    .await
                    .map_err(db("reading the history"))
            },
            async {
                tx.query(&pending_sql, &params)
                    .await
                    .map_err(db("reading pending events"))
            },
        )?;
        tx.commit().await.map_err(db("ending the read"))?;
        Ok(Some(InstanceSnapshot {
            queue: Queue::new(row.get::<_, String>(1)).unwrap_or_default(),
            state: InstanceState::from_db(row.get(2)),
            metadata: metadata.map(|m| serde_json::from_slice(&m)).transpose()?,
            created_at: row.get(4),
            completed_at: row.get(5),
            task_attempts: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
            last_task_error: row.get(7),
            history: history
                .iter()
                .map(event_from_row)
                .collect::<Result<_, _>>()?,
            pending: pending
                .iter()
                .map(event_from_row)
                .collect::<Result<_, _>>()?,
            instance,
        }))
    }

    /// Removes every finished execution of `instance_id` with all its rows:
    /// history, pending events, activities and attributes (go-workflows
    /// leaves the last three behind).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// store.remove_instance("order-7").await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`StoreError::NotFinished`] while an execution is active,
    /// [`StoreError::NotFound`] when there is none.
    pub async fn remove_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        self.bounded(
            "removing an instance",
            self.remove_instance_unbounded(instance_id),
        )
        .await
    }

    async fn remove_instance_unbounded(&self, instance_id: &str) -> Result<(), StoreError> {
        check_id("instance id", instance_id, 128)?;
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(db("starting a transaction"))?;
        // Locks the instance's rows in id order, before any other table.
        let rows = tx
            .query(
                &tx.prepare_cached(
                    "SELECT id, state FROM instances WHERE instance_id = $1 ORDER BY id FOR UPDATE",
                )
                .await
                .map_err(db("preparing a statement"))?,
                &[&instance_id],
            )
            .await
            .map_err(db("locking the instance"))?;
        if rows.is_empty() {
            return Err(StoreError::NotFound {
                instance_id: instance_id.to_string(),
                needs_active: false,
            });
        }
        if rows
            .iter()
            .any(|r| r.get::<_, i32>(1) == InstanceState::Active as i32)
        {
            return Err(StoreError::NotFinished {
                instance_id: instance_id.to_string(),
            });
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        tx.execute(
            &delete_instances_sql(
                "SELECT id, instance_id, execution_id FROM instances WHERE id = ANY($1)",
            ),
            &[&ids],
        )
        .await
        .map_err(db("removing the instance"))?;
        tx.commit().await.map_err(db("committing the removal"))?;
        Ok(())
    }

    /// Removes executions that finished more than `older_than` ago (database
    /// clock), `batch_size` per transaction so that no transaction grows
    /// large; returns how many were removed. Safe to run from several
    /// processes at once (rows are taken with `SKIP LOCKED`).
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// let removed = store.remove_finished_instances(std::time::Duration::from_secs(7 * 86400), 500).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure; batches already committed stay removed.
    pub async fn remove_finished_instances(
        &self,
        older_than: Duration,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        self.bounded(
            "removing finished instances",
            self.remove_finished_instances_unbounded(older_than, batch_size),
        )
        .await
    }

    async fn remove_finished_instances_unbounded(
        &self,
        older_than: Duration,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        let batch = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
        let age = older_than.as_secs_f64();
        let sql = delete_instances_sql(
            "SELECT id, instance_id, execution_id FROM instances
          WHERE state <> 0 AND completed_at < now() - make_interval(secs => $1)
          ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        );
        let client = self.client().await?;
        let mut removed = 0;
        loop {
            let count = client
                .execute(&sql, &[&age, &batch])
                .await
                .map_err(db("removing finished instances"))?;
            removed += count;
            if count < batch as u64 {
                return Ok(removed);
            }
        }
    }
}
