//! Read-only figures: per-queue counts, and when the next timer is due.

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::QueueStats;
use super::names::Queue;
use super::{db, Store};
use crate::error::StoreError;

impl Store {
    /// Per-queue counts, for every queue that has instances or activities,
    /// sorted by queue name. Takes no locks.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// for queue in store.stats().await? {
    ///     println!("{}: {} ready activities", queue.queue, queue.ready_activities);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.bounded("reading queue statistics", self.stats_unbounded())
            .await
    }

    async fn stats_unbounded(&self) -> Result<Vec<QueueStats>, StoreError> {
        let client = self.client().await?;
        let instances = client
            .query(
                &client.prepare_cached("SELECT i.queue,
                        count(*) FILTER (WHERE i.state = 0),
                        count(*) FILTER (WHERE i.state = 0
                          AND (i.locked_until IS NULL OR i.locked_until < now())
                          AND EXISTS (SELECT 1 FROM pending_events pe
                                       WHERE pe.instance_id = i.instance_id AND pe.execution_id = i.execution_id
                                         AND (pe.visible_at IS NULL OR pe.visible_at <= now()))),
                        (SELECT count(*) FROM pending_events pe JOIN instances j
                             ON j.instance_id = pe.instance_id AND j.execution_id = pe.execution_id
                          WHERE j.queue = i.queue AND j.state = 0 AND pe.visible_at > now()),
                        count(*) FILTER (WHERE i.state = 0 AND i.task_attempts > 0)
                   FROM instances i GROUP BY i.queue").await.map_err(db("preparing a statement"))?,
                &[],
            )
            .await
            .map_err(db("counting instances"))?;
        let activities = client
            .query(
                &client
                    .prepare_cached(ACTIVITY_COUNTS_SQL)
                    .await
                    .map_err(db("preparing a statement"))?,
                &[],
            )
            .await
            .map_err(db("counting activities"))?;
        let mut by_queue: BTreeMap<String, QueueStats> = BTreeMap::new();
        for row in &instances {
            let entry = by_queue.entry(row.get(0)).or_default();
            entry.active_instances = row.get(1);
            entry.claimable_workflow_tasks = row.get(2);
            entry.scheduled_later += row.get::<_, i64>(3);
            entry.failing_workflow_tasks = row.get(4);
        }
        for row in &activities {
            let entry = by_queue.entry(row.get(0)).or_default();
            entry.ready_activities = row.get(1);
            entry.running_activities = row.get(2);
            entry.scheduled_later += row.get::<_, i64>(3);
        }
        Ok(by_queue
            .into_iter()
            .map(|(queue, mut stats)| {
                stats.queue = queue;
                stats
            })
            .collect())
    }

    /// How long (database clock) until work of `queues` becomes claimable
    /// without anyone announcing it: a pending event or activity scheduled
    /// for later becomes visible, or a lease (or stickiness) runs out. An
    /// idle worker sleeps that long, so a timer fires on time and a task
    /// whose worker died is taken over when its lease expires, with no
    /// insert and no notification. `None` when nothing is due.
    ///
    /// Its cost does not grow with other queues' timers, leases or
    /// backlogs: each queue's next timer and lease come from indexes of
    /// their own.
    ///
    /// ```no_run
    /// # async fn f(store: pgwake::Store) -> Result<(), pgwake::StoreError> {
    /// if let Some(due_in) = store.next_due_in(&pgwake::queues(["orders"])?).await? {
    ///     println!("next timer in {due_in:?}");
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// A database failure.
    pub async fn next_due_in(&self, queues: &[Queue]) -> Result<Option<Duration>, StoreError> {
        self.bounded(
            "finding the next due time",
            self.next_due_in_unbounded(queues),
        )
        .await
    }

    async fn next_due_in_unbounded(
        &self,
        queues: &[Queue],
    ) -> Result<Option<Duration>, StoreError> {
        let queue_names: Vec<&str> = queues.iter().map(Queue::as_str).collect();
        let client = self.client().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(&format!(
                        "SELECT least(({WORKFLOW_DUE_SQL}), ({ACTIVITY_DUE_SQL}))"
                    ))
                    .await
                    .map_err(db("preparing a statement"))?,
                &[&queue_names],
            )
            .await
            .map_err(db("finding the next due time"))?;
        let due_in: Option<f64> = row.get(0);
        Ok(due_in.map(seconds))
    }
}

/// Per queue: activities claimable now, leased, and scheduled for later
/// (the table holds only activities not done yet). `pgwake stats` and the
/// dashboard's overview.
pub(crate) const ACTIVITY_COUNTS_SQL: &str = "SELECT queue,
        count(*) FILTER (WHERE (locked_until IS NULL OR locked_until < now())
                           AND (visible_at IS NULL OR visible_at <= now())),
        count(*) FILTER (WHERE locked_until >= now()),
        count(*) FILTER (WHERE visible_at > now())
   FROM activities GROUP BY queue";

/// Seconds until the next activity of the queues `$1` becomes claimable
/// without anyone announcing it (one row, NULL when none): one scheduled for
/// later, or one whose lease expires (its worker may be gone; no NOTIFY is
/// sent when a lease runs out). Per queue, each half walks an index from
/// now on, `(queue, visible_at)` of migration 3 or `(queue, locked_until)`
/// of migration 12, and stops at the first row: other queues' rows are
/// never read.
pub(crate) const ACTIVITY_DUE_SQL: &str =
    "SELECT EXTRACT(EPOCH FROM (min(due) - now()))::float8 AS due_in
   FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
         (SELECT visible_at AS due FROM activities
           WHERE queue = q.name AND visible_at > now()
           ORDER BY visible_at LIMIT 1)
         UNION ALL
         (SELECT locked_until FROM activities
           WHERE queue = q.name AND locked_until > now()
           ORDER BY locked_until LIMIT 1)) next_activity";

/// Seconds until the next workflow task of the queues `$1` may become
/// claimable unannounced (one row, NULL when none): a pending event
/// scheduled for later (a timer), or an active instance whose lease or
/// stickiness runs out. A failed task's retry is the second kind:
/// `fail_workflow_task` holds the instance back with a `locked_until` and no
/// worker.
///
/// Each queue's next timer is the first entry of its part of the index of
/// migration 13 from now on: other queues' timers are never read (before,
/// pending events carried no queue, and a walk of every queue's timers in
/// time order, bounded at 100, answered with the 100th when the queues had
/// none among them: a wake-up earlier than needed). Timers whose queue is
/// unknown (written before their instance was visible) are looked at too,
/// through their own partial index, empty in practice. Leases and
/// stickiness are looked for among active instances only (`completed_at IS
/// NULL`, the index's first column), not through every finished one (0.77
/// ms at 300,000; now 0.02).
pub(crate) const WORKFLOW_DUE_SQL: &str =
    "SELECT EXTRACT(EPOCH FROM (min(due) - now()))::float8 AS due_in
   FROM ((SELECT t.due FROM unnest($1::text[]) q(name) CROSS JOIN LATERAL (
            SELECT pe.visible_at AS due FROM pending_events pe
             WHERE pe.queue = q.name AND pe.visible_at > now()
             ORDER BY pe.visible_at LIMIT 1) t)
         UNION ALL
         (SELECT pe.visible_at FROM pending_events pe
           WHERE pe.queue IS NULL AND pe.visible_at > now()
           ORDER BY pe.visible_at LIMIT 1)
         UNION ALL
         (SELECT locked_until FROM instances
           WHERE state = 0 AND completed_at IS NULL AND queue = ANY($1) AND locked_until > now()
           ORDER BY locked_until LIMIT 1)
         UNION ALL
         (SELECT sticky_until FROM instances
           WHERE state = 0 AND completed_at IS NULL AND queue = ANY($1) AND sticky_until > now()
           ORDER BY sticky_until LIMIT 1)) next_workflow_task";

/// A due time in seconds (possibly slightly negative: due already) as a delay.
pub(crate) fn seconds(due_in: f64) -> Duration {
    Duration::from_secs_f64(due_in.max(0.0))
}
