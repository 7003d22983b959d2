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

/// Which finished executions one retention batch may remove: by queue and
/// by workflow name.
#[derive(Debug)]
pub(crate) struct RetentionScope<'a> {
    /// The queues whose executions it removes.
    pub(crate) queues: Among<'a, String>,
    /// The workflows whose executions it removes, each given as the bytes
    /// [`workflow_needle`] makes of its name.
    pub(crate) workflows: Among<'a, Vec<u8>>,
}

/// One of a retention batch's filters.
#[derive(Debug)]
pub(crate) enum Among<'a, T> {
    /// Only this one (an override).
    Only(&'a T),
    /// Any but these (the ones with overrides of their own); any at all
    /// when empty.
    AllBut(&'a [T]),
}

/// The bytes that mark an execution of workflow `name` in its metadata:
/// `"workflow":"<name>"`, as serde_json writes the metadata of
/// `workflow::Client::start`, `pgwake_start_workflow` and the schedules (a
/// JSON object whose `workflow` key holds the name). Matched as bytes, so
/// that metadata another writer stored differently (not JSON, or spaced
/// out) never makes the statement fail: it counts as no workflow's.
pub(crate) fn workflow_needle(name: &str) -> Vec<u8> {
    let mut needle = br#""workflow":"#.to_vec();
    // A string serializes; the name is escaped as the metadata has it.
    needle.extend(serde_json::to_vec(name).unwrap_or_default());
    needle
}

/// The executions one batch removes: finished more than `$1` seconds ago
/// (database clock), at most `$2`, of the queues `$3` (or all but them) and
/// the workflows whose needles are `$4` (or all but them).
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
fn batch_sql(scope: &RetentionScope<'_>) -> String {
    // Both filters always take their array parameter, $3 and $4: one
    // element for an override, the overridden ones (or none) otherwise.
    let queues = match scope.queues {
        Among::Only(_) => "queue = ANY($3::varchar[])",
        Among::AllBut(_) => "queue <> ALL($3::varchar[])",
    };
    let workflows = match scope.workflows {
        Among::Only(_) => "EXISTS",
        Among::AllBut(_) => "NOT EXISTS",
    };
    format!(
        "SELECT id, instance_id, execution_id FROM instances
          WHERE state <> 0 AND completed_at < now() - make_interval(secs => $1)
            AND {queues}
            AND {workflows} (SELECT 1 FROM unnest($4::bytea[]) w(needle)
                              WHERE position(w.needle IN metadata) > 0)
          LIMIT $2 FOR UPDATE SKIP LOCKED"
    )
}

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
        let queues: Vec<&str> = match scope.queues {
            Among::Only(queue) => vec![queue.as_str()],
            Among::AllBut(queues) => queues.iter().map(String::as_str).collect(),
        };
        let workflows: Vec<&[u8]> = match scope.workflows {
            Among::Only(needle) => vec![needle.as_slice()],
            Among::AllBut(needles) => needles.iter().map(Vec::as_slice).collect(),
        };
        let client = self.client().await?;
        client
            .execute(
                &delete_instances_sql(&batch_sql(&scope)),
                &[&age, &batch, &queues, &workflows],
            )
            .await
            .map_err(db("removing a batch of finished instances"))
    }
}
