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

/// A store of one pooled connection: the statistics of its statements are
/// flushed when it is dropped, and its claims are planned once.
async fn one_connection_store(url: &str) -> Store {
    let mut options = StoreOptions::default();
    options.pool_size = 1;
    Store::connect(url, options).await.unwrap()
}

/// Waits until the statistics collector counts more scans of `index` than
/// `scans_before`: the dropped store's statistics are in.
async fn until_walked(sql: &tokio_postgres::Client, index: &str, scans_before: i64) {
    support::until_some(
        Duration::from_secs(30),
        "the claims' statistics",
        || async { (index_reads(sql, index).await.0 > scans_before).then_some(()) },
    )
    .await;
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

    let store = one_connection_store(database.url()).await;
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
    until_walked(&sql, per_queue_index, per_queue_before.0).await;
    // ...and the index ordered by lease time across queues not at all: a
    // walk of it reads the 4,000 leases of queue busy.
    assert_eq!(index_reads(&sql, go_workflows_index).await, before);
}

/// Seconds from now until `due`, as the store reported it.
fn secs(due: Option<Duration>) -> f64 {
    due.expect("a due time").as_secs_f64()
}

#[actix_rt::test]
async fn a_queues_workflow_due_time_is_its_own_next_timer_and_reads_no_other_queues_timers() {
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    // 2,000 sleeping instances on queue "sleepy", timer k due in 1 h + k s;
    // on "late", one instance whose timer comes after all of them (3 h); on
    // "early", one whose timer comes before them (30 min). Written as
    // go-workflows writes them: the trigger names the events' queues.
    sql.batch_execute(
        "INSERT INTO instances (instance_id, execution_id, state, queue, created_at)
         SELECT 'sleepy-' || n, 'e', 0, 'sleepy', now() FROM generate_series(1, 2000) n;
         INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                     schedule_event_id, visible_at)
         SELECT 'timer-' || n, 'sleepy-' || n, 'e', 5, now(), 1,
                now() + interval '1 hour' + n * interval '1 second'
           FROM generate_series(1, 2000) n;
         INSERT INTO instances (instance_id, execution_id, state, queue, created_at)
         VALUES ('late-1', 'e', 0, 'late', now()), ('early-1', 'e', 0, 'early', now());
         INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                     schedule_event_id, visible_at)
         VALUES ('late-timer', 'late-1', 'e', 5, now(), 1, now() + interval '3 hours'),
                ('early-timer', 'early-1', 'e', 5, now(), 1, now() + interval '30 minutes');
         ANALYZE;",
    )
    .await
    .unwrap();
    let initial = table_index_fetches(&sql, "pending_events").await;
    // One connection per store: its end flushes all its statistics at once.
    let store = one_connection_store(database.url()).await;

    // Each queue gets its own next timer exactly, whatever comes before it.
    let early = secs(
        store
            .next_due_in(&queues(["early"]).unwrap())
            .await
            .unwrap(),
    );
    assert!((1790.0..=1800.0).contains(&early), "{early} s");
    let late = secs(store.next_due_in(&queues(["late"]).unwrap()).await.unwrap());
    assert!((10790.0..=10800.0).contains(&late), "{late} s");
    let both = secs(
        store
            .next_due_in(&queues(["late", "sleepy"]).unwrap())
            .await
            .unwrap(),
    );
    assert!((3590.0..=3601.0).contains(&both), "{both} s");
    // A queue with no timer has nothing due, and its empty claims say so.
    let idle = queues(["idle"]).unwrap();
    assert_eq!(store.next_due_in(&idle).await.unwrap(), None);
    let worker = WorkerId::new("idle-worker").unwrap();
    for _ in 0..5 {
        let poll = store
            .poll_workflow_task_detailed(&worker, &idle, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(poll.task.is_none());
        assert_eq!(poll.due_in, None);
    }
    drop(store);
    let fetched = support::until_some(Duration::from_secs(30), "the polls' statistics", || async {
        let now = table_index_fetches(&sql, "pending_events").await;
        (now > initial).then_some(now - initial)
    })
    .await;
    // Walked across queues in time order, each look read up to 100 timers
    // (the bound it had) or all 2,002; per queue, one each.
    assert!(fetched < 50, "{fetched} pending events read by 9 looks");
}

/// Heap rows fetched so far through the indexes of `table`.
async fn table_index_fetches(sql: &tokio_postgres::Client, table: &str) -> i64 {
    sql.query_one(
        "SELECT coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = $1",
        &[&table],
    )
    .await
    .unwrap()
    .get(0)
}

#[actix_rt::test]
async fn a_quiet_queues_workflow_claim_reads_no_other_queues_ready_events() {
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    // 2,000 instances waiting on queue "busy", older than the one waiting
    // on "quiet"; written as go-workflows writes them (no queue on the
    // events: the trigger of migration 13 fills it).
    sql.batch_execute(
        "INSERT INTO instances (instance_id, execution_id, state, queue)
         SELECT 'busy-' || n, 'e', 0, 'busy' FROM generate_series(1, 2000) n;
         INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                     schedule_event_id)
         SELECT 'started-' || n, 'busy-' || n, 'e', 1, now(), 0 FROM generate_series(1, 2000) n;
         INSERT INTO instances (instance_id, execution_id, state, queue)
         VALUES ('quiet-1', 'e', 0, 'quiet');
         INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                     schedule_event_id)
         VALUES ('started-quiet', 'quiet-1', 'e', 1, now(), 0);
         ANALYZE;",
    )
    .await
    .unwrap();
    let unqueued: i64 = sql
        .query_one(
            "SELECT count(*) FROM pending_events WHERE queue IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(unqueued, 0, "the trigger names every event's queue");
    let initial = table_index_fetches(&sql, "pending_events").await;

    let store = one_connection_store(database.url()).await;
    let worker = WorkerId::new("quiet-worker").unwrap();
    let quiet = queues(["quiet"]).unwrap();
    let poll = store
        .poll_workflow_tasks(&worker, &quiet, 8, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(poll.tasks.len(), 1);
    assert_eq!(poll.tasks[0].instance.instance_id, "quiet-1");
    assert!(!poll.more);
    for _ in 0..4 {
        let poll = store
            .poll_workflow_tasks(&worker, &quiet, 8, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(poll.tasks.is_empty() && !poll.more && !poll.skipped_locked);
    }
    // Its connection ends: the server flushes that backend's statistics.
    drop(store);
    let fetched = support::until_some(
        Duration::from_secs(30),
        "the claims' statistics",
        || async {
            let now = table_index_fetches(&sql, "pending_events").await;
            (now > initial).then_some(now - initial)
        },
    )
    .await;
    // Walked across queues in id order, five claims read the 2,000 older
    // events of queue busy each, 10,000 rows; per queue, the one of quiet
    // and its read.
    assert!(fetched < 100, "{fetched} pending events read by 5 claims");
}

#[actix_rt::test]
async fn an_event_written_before_its_instance_is_visible_is_still_claimed() {
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    // One statement: the trigger's look for the instance does not see it.
    sql.batch_execute(
        "WITH created AS (
           INSERT INTO instances (instance_id, execution_id, state, queue)
           VALUES ('same-statement', 'e', 0, 'orders'))
         INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                     schedule_event_id)
         VALUES ('started', 'same-statement', 'e', 1, now(), 0);",
    )
    .await
    .unwrap();
    let queue: Option<String> = sql
        .query_one("SELECT queue FROM pending_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(queue, None);
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let worker = WorkerId::new("w").unwrap();
    let poll = store
        .poll_workflow_tasks(
            &worker,
            &queues(["orders"]).unwrap(),
            8,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(poll.tasks.len(), 1);
    assert_eq!(poll.tasks[0].instance.instance_id, "same-statement");
    // Another queue's worker does not take it.
    let store_b = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    assert!(store_b.release_workflow_task(&poll.tasks[0]).await.unwrap());
    let other = store_b
        .poll_workflow_tasks(
            &worker,
            &queues(["other"]).unwrap(),
            8,
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(other.tasks.is_empty());
}

#[actix_rt::test]
async fn an_idle_queues_activity_claims_read_no_other_queues_ready_rows() {
    let database = fresh_database().await.unwrap();
    let sql = support::connect(database.url()).await;
    let store = one_connection_store(database.url()).await;
    let worker = WorkerId::new("idle-worker").unwrap();
    let idle = queues(["idle"]).unwrap();
    // The claim is planned once per connection: here, while the table is
    // empty, as on a new deployment before its first backlog.
    let first = store
        .poll_activity_tasks_detailed(&worker, &idle, 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert!(first.tasks.is_empty());
    // Then 2,000 ready activities arrive on queue "busy"; nothing on "idle".
    sql.batch_execute(
        "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, timestamp,
                                 schedule_event_id, queue)
         SELECT 'ready-' || n, 'i-' || n, 'e', 11, now(), 1, 'busy'
           FROM generate_series(1, 2000) n",
    )
    .await
    .unwrap();
    let initial = table_index_fetches(&sql, "activities").await;
    let ready_index = "idx_activities_queue_id_ready";
    let ready_walks_before = index_reads(&sql, ready_index).await.0;
    for _ in 0..5 {
        let poll = store
            .poll_activity_tasks_detailed(&worker, &idle, 10, Duration::from_secs(60))
            .await
            .unwrap();
        assert!(poll.tasks.is_empty());
        assert_eq!(poll.due_in, None, "nothing of queue idle is due");
        assert!(!poll.skipped_locked);
    }
    // Its connection ends: the server flushes that backend's statistics.
    drop(store);
    // The walks of the queue's ready rows are counted (so the statistics
    // are in)...
    until_walked(&sql, ready_index, ready_walks_before).await;
    // ...and the rows read through any index of the table are few.
    let fetched = table_index_fetches(&sql, "activities").await - initial;
    // Looked for across queues, the rows come due were found by walking
    // every ready row of every queue: 2,000 per claim.
    assert!(fetched < 50, "{fetched} activities read by 5 claims");
}
