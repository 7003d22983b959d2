//! Removing finished executions for the maintainer's retention, one small
//! batch per statement.
//!
//! [`Store::remove_finished_instances`] removes every queue's finished
//! executions in one call bounded by one deadline; retention needs a queue
//! filter (per-queue ages) and a deadline per batch (a large backlog must
//! not make the whole run time out), so it has its own statement here.

use std::time::Duration;

use super::instances::delete_instances_sql;
use super::{db, Store};
use crate::error::StoreError;

/// Which finished executions one retention batch may remove, by queue.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RetentionScope<'a> {
    /// Only those of this queue (a per-queue override).
    Queue(&'a str),
    /// Those of every queue but these (the default age, which the
    /// overridden queues do not follow).
    AllBut(&'a [String]),
}

/// Deletes up to `$2` executions finished more than `$1` seconds ago
/// (database clock) of queue `$3`, with every row that belongs to them.
///
/// Locks: the chosen `instances` rows (`FOR UPDATE SKIP LOCKED`, so a row
/// another transaction holds is left for the next run rather than waited
/// for), then the `history`, `pending_events`, `activities` and
/// `attributes` rows of those executions: instances first, as every
/// transaction of the store does, so it cannot join a deadlock cycle. No
/// `ORDER BY`: with `SKIP LOCKED` the order does not matter for deadlocks,
/// and without it PostgreSQL may stop at the first `$2` rows the
/// `completed_at` index yields instead of sorting every expired row.
///
/// Each execution is judged on its own `completed_at`: the finished
/// executions of a continue-as-new chain go one by one as they age, and
/// the chain's active execution (`state = 0`) is never touched.
const REMOVE_FROM_QUEUE: &str = "SELECT id, instance_id, execution_id FROM instances
          WHERE state <> 0 AND completed_at < now() - make_interval(secs => $1)
            AND queue = $3
          LIMIT $2 FOR UPDATE SKIP LOCKED";

/// As [`REMOVE_FROM_QUEUE`], for every queue but those of the array `$3`.
const REMOVE_FROM_OTHER_QUEUES: &str = "SELECT id, instance_id, execution_id FROM instances
          WHERE state <> 0 AND completed_at < now() - make_interval(secs => $1)
            AND queue <> ALL($3::varchar[])
          LIMIT $2 FOR UPDATE SKIP LOCKED";

impl Store {
    /// Removes one batch of at most `batch_size` executions of `scope` that
    /// finished more than `older_than` ago, in one short autocommit
    /// statement under the store's deadline; returns how many it removed
    /// (fewer than `batch_size`: nothing more is due now).
    pub(crate) async fn remove_finished_batch(
        &self,
        scope: RetentionScope<'_>,
        older_than: Duration,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        self.bounded(
            "removing a batch of finished instances",
            self.remove_finished_batch_unbounded(scope, older_than, batch_size),
        )
        .await
    }

    async fn remove_finished_batch_unbounded(
        &self,
        scope: RetentionScope<'_>,
        older_than: Duration,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        let batch = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
        let age = older_than.as_secs_f64();
        let client = self.client().await?;
        let removed = match scope {
            RetentionScope::Queue(queue) => {
                client
                    .execute(
                        &delete_instances_sql(REMOVE_FROM_QUEUE),
                        &[&age, &batch, &queue],
                    )
                    .await
            }
            RetentionScope::AllBut(queues) => {
                client
                    .execute(
                        &delete_instances_sql(REMOVE_FROM_OTHER_QUEUES),
                        &[&age, &batch, &queues],
                    )
                    .await
            }
        };
        removed.map_err(db("removing a batch of finished instances"))
    }
}
