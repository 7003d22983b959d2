//! The maintainer election and retention, against a real PostgreSQL: one
//! maintainer per database, takeover after its session ends, and retention
//! that removes exactly the expired finished executions.

mod support;

use std::time::Duration;

use pgwake::runtime::{MaintainerConfig, RetentionPolicy, MAINTAINER_APPLICATION_NAME};
use pgwake::testing::fresh_database;
use pgwake::{NewInstance, Queue, Runtime, RuntimeConfig, RuntimeHandle};
use support::{connect, eventually, receive_within, reporting_workflows};

/// A fast election, so that the tests take seconds.
fn quick_election() -> MaintainerConfig {
    let mut config = MaintainerConfig::default();
    config.retry_interval = Duration::from_millis(300);
    config.operation_timeout = Duration::from_secs(2);
    config
}

/// Generous next to the documented takeover bound: the machine may be slow.
fn takeover_deadline() -> Duration {
    quick_election().takeover_bound() * 10
}

/// The backend pid holding the maintainer lock in this database, and its
/// `application_name` (`pg_locks` shows the key `0x706777616b650001` as
/// `classid = 0x70677761`, `objid = 0x6b650001`, `objsubid = 1`).
async fn lock_holder(sql: &tokio_postgres::Client) -> Vec<(i32, String)> {
    sql.query(
        "SELECT l.pid, a.application_name FROM pg_locks l
           JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted
            AND l.classid = 1885828961 AND l.objid = 1801781249 AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

async fn start_electing(url: &str) -> RuntimeHandle {
    Runtime::builder(RuntimeConfig::new(url))
        .maintainer(quick_election())
        .start()
        .await
        .unwrap()
}

fn maintainers(runtimes: &[&RuntimeHandle]) -> usize {
    runtimes.iter().filter(|r| r.health().maintainer).count()
}

#[actix_rt::test]
async fn exactly_one_of_two_runtimes_is_maintainer_and_the_other_takes_over_when_it_stops() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let first = start_electing(database.url()).await;
    let second = start_electing(database.url()).await;

    eventually(
        takeover_deadline(),
        "a maintainer to be elected",
        || async { maintainers(&[&first, &second]) == 1 },
    )
    .await;
    // Several election rounds: never two, and the lock is held by one
    // session, the maintainer's.
    for _ in 0..10 {
        assert!(maintainers(&[&first, &second]) <= 1, "two maintainers");
        let holders = lock_holder(&sql).await;
        assert_eq!(holders.len(), 1, "{holders:?}");
        assert!(
            holders[0]
                .1
                .starts_with(&format!("{MAINTAINER_APPLICATION_NAME}:")),
            "{holders:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (leader, follower) = if first.health().maintainer {
        (first, second)
    } else {
        (second, first)
    };
    leader.shutdown(Duration::from_secs(5)).await;
    assert!(!leader.health().maintainer);
    eventually(
        takeover_deadline(),
        "the other runtime to take over",
        || async { follower.health().maintainer && lock_holder(&sql).await.len() == 1 },
    )
    .await;
    follower.shutdown(Duration::from_secs(5)).await;
    eventually(takeover_deadline(), "the lock to be released", || async {
        lock_holder(&sql).await.is_empty()
    })
    .await;
}

#[actix_rt::test]
async fn a_maintainer_whose_session_is_terminated_is_replaced_by_a_new_session() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let first = start_electing(database.url()).await;
    let second = start_electing(database.url()).await;
    eventually(
        takeover_deadline(),
        "a maintainer to be elected",
        || async { maintainers(&[&first, &second]) == 1 && lock_holder(&sql).await.len() == 1 },
    )
    .await;
    let (old_pid, _) = lock_holder(&sql).await[0].clone();

    let terminated: bool = sql
        .query_one("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);

    // Either runtime may win the next round (the old maintainer reconnects
    // too); what matters is that a new session holds the lock, and that
    // exactly one runtime says it is the maintainer.
    eventually(
        takeover_deadline(),
        "a new session to hold the lock",
        || async {
            let holders = lock_holder(&sql).await;
            holders.len() == 1 && holders[0].0 != old_pid && maintainers(&[&first, &second]) == 1
        },
    )
    .await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
}

/// Inserts a finished execution of `queue` that completed `age_secs` ago,
/// with one history row.
async fn insert_finished(
    sql: &tokio_postgres::Client,
    instance: &str,
    execution: &str,
    queue: &str,
    age_secs: f64,
) {
    sql.execute(
        "INSERT INTO instances (instance_id, execution_id, state, queue, completed_at)
         VALUES ($1, $2, 2, $3, now() - make_interval(secs => $4))",
        &[&instance, &execution, &queue, &age_secs],
    )
    .await
    .unwrap();
    insert_history(sql, instance, execution).await;
}

async fn insert_history(sql: &tokio_postgres::Client, instance: &str, execution: &str) {
    sql.execute(
        "INSERT INTO history (event_id, instance_id, execution_id, event_type, timestamp)
         VALUES (md5(random()::text), $1, $2, 1, now())",
        &[&instance, &execution],
    )
    .await
    .unwrap();
}

/// `instance_id/execution_id` of every execution, sorted.
async fn executions(sql: &tokio_postgres::Client) -> Vec<String> {
    let rows = sql
        .query(
            "SELECT instance_id || '/' || execution_id FROM instances ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

/// Waits until an expired sentinel inserted now is removed: proof that a
/// whole retention run started after this call (its passes run in order,
/// the default age's last).
async fn wait_for_a_full_run(sql: &tokio_postgres::Client, queue: &str) {
    insert_finished(sql, "sentinel", "e", queue, 7.0 * 86_400.0).await;
    eventually(Duration::from_secs(30), "a retention run", || async {
        sql.query_one(
            "SELECT count(*) FROM instances WHERE instance_id = 'sentinel'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 0
    })
    .await;
}

/// `pgwake_retention_removed_total` as recorded in this test binary so far
/// (the recorder is installed at the first call; each snapshot drains the
/// counter, so only one test reads it).
fn retention_removed_so_far() -> u64 {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    static SEEN: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let snapshotter = SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder is installed in this binary");
        snapshotter
    });
    let mut seen = SEEN.lock().unwrap();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let (DebugValue::Counter(n), true) = (
            value,
            key.key().name() == pgwake::metrics::RETENTION_REMOVED,
        ) {
            *seen += n;
        }
    }
    *seen
}

fn hour() -> Duration {
    Duration::from_secs(3600)
}

#[actix_rt::test]
async fn retention_removes_exactly_the_expired_finished_executions_while_workers_run() {
    let removed_before = retention_removed_so_far();
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let (workflows, mut started) = reporting_workflows("orders");
    let retention = RetentionPolicy::new()
        .remove_finished_after(hour())
        .run_every(Duration::from_millis(200))
        .batch_size(2);
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .workflow_worker(workflows)
        .maintainer(quick_election())
        .retention(retention)
        .start()
        .await
        .unwrap();
    let orders = Queue::new("orders").unwrap();

    // Instances finished by the worker; the "old" ones are then backdated.
    for name in (0..5)
        .map(|i| format!("orders-old-{i}"))
        .chain((0..3).map(|i| format!("orders-young-{i}")))
    {
        runtime
            .store()
            .create_instance(NewInstance::new(&name, orders.clone()))
            .await
            .unwrap();
    }
    eventually(
        Duration::from_secs(20),
        "the workers to finish them",
        || async {
            sql.query_one("SELECT count(*) FROM instances WHERE state = 0", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        },
    )
    .await;
    // A continue-as-new chain: its old execution expired, its new one runs.
    insert_finished(&sql, "chain", "e1", "idle", 2.0 * 3600.0).await;
    sql.execute(
        "UPDATE instances SET state = 1 WHERE instance_id = 'chain' AND execution_id = 'e1'",
        &[],
    )
    .await
    .unwrap();
    for (instance, execution) in [("chain", "e2"), ("idle-active", "e")] {
        sql.execute(
            "INSERT INTO instances (instance_id, execution_id, state, queue, created_at)
             VALUES ($1, $2, 0, 'idle', now() - interval '3 days')",
            &[&instance, &execution],
        )
        .await
        .unwrap();
        insert_history(&sql, instance, execution).await;
    }
    eventually(
        takeover_deadline(),
        "the runtime to be maintainer",
        || async { runtime.health().maintainer },
    )
    .await;

    sql.execute(
        "UPDATE instances SET completed_at = now() - interval '2 hours'
          WHERE instance_id LIKE 'orders-old-%'",
        &[],
    )
    .await
    .unwrap();
    // Workers keep running meanwhile.
    while tokio::time::timeout(Duration::from_millis(10), started.recv())
        .await
        .is_ok()
    {}
    for i in 0..4 {
        let name = format!("orders-live-{i}");
        runtime
            .store()
            .create_instance(NewInstance::new(&name, orders.clone()))
            .await
            .unwrap();
        assert_eq!(
            receive_within(&mut started, Duration::from_secs(10), "a live workflow").await,
            name
        );
    }
    eventually(Duration::from_secs(30), "the expired executions to go", || async {
        sql.query_one(
            "SELECT count(*) FROM instances
              WHERE instance_id LIKE 'orders-old-%' OR (instance_id = 'chain' AND execution_id = 'e1')",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
            == 0
    })
    .await;
    wait_for_a_full_run(&sql, "orders").await;

    let remaining: Vec<String> = sql
        .query(
            "SELECT instance_id FROM instances ORDER BY instance_id, execution_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut expected: Vec<String> = ["chain", "idle-active"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..4).map(|i| format!("orders-live-{i}")))
        .chain((0..3).map(|i| format!("orders-young-{i}")))
        .collect();
    expected.sort();
    assert_eq!(remaining, expected);
    assert_eq!(
        executions(&sql)
            .await
            .into_iter()
            .filter(|e| e.starts_with("chain/"))
            .collect::<Vec<_>>(),
        vec!["chain/e2".to_string()]
    );
    let orphaned_history: i64 = sql
        .query_one(
            "SELECT count(*) FROM history h WHERE NOT EXISTS (SELECT 1 FROM instances i
               WHERE i.instance_id = h.instance_id AND i.execution_id = h.execution_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphaned_history, 0, "history of removed executions remains");
    // Five orders, the chain's first execution and the sentinel, at least
    // (the other tests of this binary may remove some meanwhile).
    assert!(retention_removed_so_far() - removed_before >= 7);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_queue_override_keeps_or_removes_on_its_own_age() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let minute = 60.0;
    insert_finished(&sql, "audit-old", "e", "audit", 2.0 * 86_400.0).await;
    insert_finished(&sql, "short-old", "e", "short", 5.0 * minute).await;
    insert_finished(&sql, "short-young", "e", "short", 10.0).await;
    insert_finished(&sql, "other-old", "e", "other", 2.0 * 3600.0).await;
    insert_finished(&sql, "other-mid", "e", "other", 30.0 * minute).await;

    let retention = RetentionPolicy::new()
        .remove_finished_after(hour())
        .keep_queue_forever("audit")
        .unwrap()
        .remove_queue_after("short", Duration::from_secs(60))
        .unwrap()
        .run_every(Duration::from_millis(200));
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .maintainer(quick_election())
        .retention(retention)
        .start()
        .await
        .unwrap();
    eventually(
        takeover_deadline(),
        "the expired executions to go",
        || async {
            let left = executions(&sql).await;
            !left.contains(&"short-old/e".to_string()) && !left.contains(&"other-old/e".to_string())
        },
    )
    .await;
    wait_for_a_full_run(&sql, "other").await;
    assert_eq!(
        executions(&sql).await,
        vec!["audit-old/e", "other-mid/e", "short-young/e"]
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// A finished execution of workflow `workflow` (its metadata as
/// `workflow::Client::start` writes it, with a trace context beside it).
async fn insert_finished_workflow(
    sql: &tokio_postgres::Client,
    instance: &str,
    queue: &str,
    metadata: &[u8],
    age_secs: f64,
) {
    sql.execute(
        "INSERT INTO instances (instance_id, execution_id, state, queue, metadata, completed_at)
         VALUES ($1, 'e', 2, $2, $3, now() - make_interval(secs => $4))",
        &[&instance, &queue, &metadata, &age_secs],
    )
    .await
    .unwrap();
    insert_history(sql, instance, "e").await;
}

#[actix_rt::test]
async fn a_workflow_override_comes_before_its_queues_age() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let of = |workflow: &str| {
        serde_json::to_vec(&serde_json::json!({
            "workflow": workflow,
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        }))
        .unwrap()
    };
    let minute = 60.0;
    // The queue keeps it forever; its workflow's override removes it.
    insert_finished_workflow(&sql, "news-old", "audit", &of("newsletter"), 5.0 * minute).await;
    insert_finished_workflow(&sql, "news-young", "audit", &of("newsletter"), 30.0).await;
    // The default age would remove it; its workflow is kept forever.
    insert_finished_workflow(&sql, "invoice-old", "other", &of("invoice"), 2.0 * 86_400.0).await;
    // Neither overridden: the queues decide.
    insert_finished_workflow(&sql, "reminder-old", "other", &of("reminder"), 2.0 * 3600.0).await;
    insert_finished_workflow(
        &sql,
        "reminder-audit",
        "audit",
        &of("reminder"),
        2.0 * 86_400.0,
    )
    .await;
    // Metadata written spaced out by another writer is no workflow's.
    insert_finished_workflow(
        &sql,
        "spaced-old",
        "other",
        br#"{"workflow": "invoice"}"#,
        2.0 * 3600.0,
    )
    .await;

    let retention = RetentionPolicy::new()
        .remove_finished_after(hour())
        .keep_queue_forever("audit")
        .unwrap()
        .remove_workflow_after("newsletter", Duration::from_secs(120))
        .keep_workflow_forever("invoice")
        .run_every(Duration::from_millis(200));
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .maintainer(quick_election())
        .retention(retention)
        .start()
        .await
        .unwrap();
    eventually(
        takeover_deadline(),
        "the expired executions to go",
        || async {
            let left = executions(&sql).await;
            !left.contains(&"news-old/e".to_string())
                && !left.contains(&"reminder-old/e".to_string())
                && !left.contains(&"spaced-old/e".to_string())
        },
    )
    .await;
    wait_for_a_full_run(&sql, "other").await;
    assert_eq!(
        executions(&sql).await,
        vec!["invoice-old/e", "news-young/e", "reminder-audit/e"]
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}

/// `pgwake work --retain-finished` elects itself and removes what expired;
/// `pgwake stats` names the session holding the lock.
#[cfg(feature = "cli")]
#[actix_rt::test]
async fn pgwake_work_retains_by_its_flags_and_stats_names_the_maintainer() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    insert_finished(&sql, "old", "e", "cli", 2.0 * 86_400.0).await;
    insert_finished(&sql, "kept", "e", "audit", 2.0 * 86_400.0).await;
    insert_finished(&sql, "young", "e", "cli", 60.0).await;
    let binary = env!("CARGO_BIN_EXE_pgwake");
    let worker = support::WorkProcess::start(
        binary,
        &[
            "work",
            "--queue",
            "cli",
            "--retain-finished",
            "1d",
            "--retain-queue",
            "audit=forever",
        ],
        &[("DATABASE_URL", database.url())],
    );
    eventually(
        Duration::from_secs(60),
        "the expired execution to go",
        || async { executions(&sql).await == ["kept/e", "young/e"] },
    )
    .await;
    let expected = format!(
        "maintainer: {MAINTAINER_APPLICATION_NAME}:{}",
        worker.child.id()
    );
    let stats = std::process::Command::new(binary)
        .arg("stats")
        .env("DATABASE_URL", database.url())
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&stats.stdout);
    assert!(
        printed.contains(&expected),
        "{printed}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&stats.stderr),
        worker.log()
    );
    assert!(
        worker
            .log()
            .contains("retention removed finished executions"),
        "{}",
        worker.log()
    );
    drop(worker);
    eventually(takeover_deadline(), "the lock to be released", || async {
        lock_holder(&sql).await.is_empty()
    })
    .await;
}

/// A maintainer whose connection goes silent (a partition: no error, no
/// answer) steps down within its ping deadline; the server keeps the old
/// session, and its lock, until it notices the session is gone (simulated
/// here by terminating it, as the server's keepalive would), and only then
/// does another process lead: never two at once.
#[actix_rt::test]
async fn a_silenced_maintainer_steps_down_and_another_leads_once_its_session_ends() {
    let server = pgwake::testing::TestPostgres::new().unwrap();
    let database = server.create_database().await.unwrap();
    let upstream = format!("127.0.0.1:{}", server.port()).parse().unwrap();
    let proxy = pgwake::testing::FaultProxy::start(upstream).await.unwrap();
    let sql = connect(database.url()).await;

    let mut behind_proxy = RuntimeConfig::new(database.url());
    behind_proxy.notifications = false;
    // The maintainer connects where listeners would: through the proxy.
    behind_proxy.listener_url = Some(format!(
        "{}?connect_timeout=2",
        proxy.proxied_url(database.url())
    ));
    let first = Runtime::builder(behind_proxy)
        .maintainer(quick_election())
        .start()
        .await
        .unwrap();
    eventually(
        takeover_deadline(),
        "the proxied runtime to lead",
        || async { first.health().maintainer },
    )
    .await;
    let second = start_electing(database.url()).await;
    let (old_pid, _) = lock_holder(&sql).await[0].clone();

    proxy.silence_open_connections();
    eventually(
        takeover_deadline(),
        "the silenced maintainer to step down",
        || async { !first.health().maintainer },
    )
    .await;
    // The server still holds the old session's lock: nobody leads.
    assert_eq!(lock_holder(&sql).await[0].0, old_pid);
    assert!(!second.health().maintainer);

    sql.execute("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap();
    eventually(takeover_deadline(), "a new maintainer", || async {
        let holders = lock_holder(&sql).await;
        holders.len() == 1 && holders[0].0 != old_pid && maintainers(&[&first, &second]) == 1
    })
    .await;
    first.shutdown(Duration::from_secs(5)).await;
    second.shutdown(Duration::from_secs(5)).await;
}

/// Retention is the maintainer's alone: while another session holds the
/// lock, a runtime with a retention policy removes nothing; once the lock
/// is free, it is elected and removes what expired.
#[actix_rt::test]
async fn retention_runs_only_while_this_process_is_the_maintainer() {
    let database = fresh_database().await.unwrap();
    let sql = connect(database.url()).await;
    let holder = connect(database.url()).await;
    let taken: bool = holder
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&pgwake::runtime::MAINTAINER_LOCK_KEY],
        )
        .await
        .unwrap()
        .get(0);
    assert!(taken);
    insert_finished(&sql, "expired", "e", "orders", 2.0 * 3600.0).await;
    let runtime = Runtime::builder(RuntimeConfig::new(database.url()))
        .maintainer(quick_election())
        .retention(
            RetentionPolicy::new()
                .remove_finished_after(hour())
                .run_every(Duration::from_millis(100)),
        )
        .start()
        .await
        .unwrap();
    // Absence cannot be waited for: give it several election rounds and
    // retention intervals, then check that nothing happened.
    tokio::time::sleep(quick_election().retry_interval * 4).await;
    assert!(!runtime.health().maintainer);
    assert_eq!(executions(&sql).await, ["expired/e"]);

    holder
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&pgwake::runtime::MAINTAINER_LOCK_KEY],
        )
        .await
        .unwrap();
    eventually(
        takeover_deadline(),
        "the runtime to lead and remove",
        || async { runtime.health().maintainer && executions(&sql).await.is_empty() },
    )
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;
}
