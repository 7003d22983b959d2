//! A queue's claims and due times read nothing of other queues' leases:
//! thousands of leases held or run out on one queue cost an idle queue's
//! workers nothing.

mod support;

use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::{queues, Store, StoreOptions, WorkerId};

/// Index scans and index entries read so far through `index`, as the
/// statistics collector has them.
async fn index_reads(sql: &tokio_postgres::Client, index: &str) -> (i64, i64) {
    let row = sql
        .query_one(
            "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = $1",
            &[&index],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[actix_rt::test]
async fn an_idle_queues_claims_and_due_times_read_no_other_queues_leases() {
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    // 2,000 leases held by a worker that is gone, 2,000 that ran out, all on
    // queue "busy"; nothing on "idle".
    sql.batch_execute(
        "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, timestamp,
                                 schedule_event_id, queue, locked_until, worker, lease_id)
         SELECT 'held-' || n, 'i-' || n, 'e', 11, now(), 1, 'busy',
                now() + interval '1 hour', 'gone', n
           FROM generate_series(1, 2000) n;
         INSERT INTO activities (activity_id, instance_id, execution_id, event_type, timestamp,
                                 schedule_event_id, queue, locked_until, worker, lease_id)
         SELECT 'lapsed-' || n, 'j-' || n, 'e', 11, now(), 1, 'busy',
                now() - interval '1 hour', 'gone', n
           FROM generate_series(1, 2000) n;
         ANALYZE activities;",
    )
    .await
    .unwrap();
    let go_workflows_index = "idx_activities_locked_until";
    let per_queue_index = "idx_activities_queue_locked_until";
    let before = index_reads(&sql, go_workflows_index).await;
    let per_queue_before = index_reads(&sql, per_queue_index).await;

    let mut options = StoreOptions::default();
    options.pool_size = 1;
    let store = Store::connect(database.url(), options).await.unwrap();
    let worker = WorkerId::new("idle-worker").unwrap();
    let idle = queues(["idle"]).unwrap();
    for _ in 0..5 {
        let poll = store
            .poll_activity_tasks_detailed(&worker, &idle, 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(poll.tasks.is_empty());
        assert_eq!(poll.due_in, None, "nothing of queue idle is due");
        assert!(!poll.skipped_locked);
        assert_eq!(store.next_due_in(&idle).await.unwrap(), None);
    }
    // Its connection ends: the server flushes that backend's statistics.
    drop(store);

    // The per-queue index was walked (so the statistics are in)...
    support::until_some(
        Duration::from_secs(30),
        "the claims' statistics",
        || async {
            (index_reads(&sql, per_queue_index).await.0 > per_queue_before.0).then_some(())
        },
    )
    .await;
    // ...and the index ordered by lease time across queues not at all: a
    // walk of it reads the 4,000 leases of queue busy.
    assert_eq!(index_reads(&sql, go_workflows_index).await, before);
}
