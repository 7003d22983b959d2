//! Typed workflows run to the end behind a real PgBouncer in transaction
//! mode, in the two setups docs/operations.md names (issue #12, item 3):
//! the pool behind PgBouncer with the listeners straight on PostgreSQL,
//! and poll-only mode entirely behind PgBouncer.
//!
//! A test binary of its own: tests/pgbouncer.rs installs the global metrics
//! recorder for its one runtime, and the two runtimes here would count into
//! it. This binary installs none.
//!
//! Like tests/pgbouncer.rs, these tests need the `pgbouncer` binary
//! (`PGWAKE_PGBOUNCER` picks another); on a machine without it they are
//! skipped with the reason printed, except in CI (`CI` set), where a missing
//! PgBouncer fails them. PgBouncer 1.21 or newer runs them with several
//! server connections; an older one with one (see [`transaction_pooler`]).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use futures::future::join_all;
use pgwake::testing::{fresh_database, PgBouncer, PoolMode};
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{
    EventType, InstanceState, ListenerState, Runtime, RuntimeConfig, RuntimeHandle, Store,
    StoreOptions, TaskKind,
};
use support::eventually;

/// How long a test waits for any one condition; never a timing assertion.
const WAIT: Duration = Duration::from_secs(60);

/// Workflows per test, all in flight at once.
const WORKFLOWS: u64 = 20;

/// PgBouncer's server connections per user and database: few, so that the
/// runtime's pool, its notifier and the client share them.
const BACKENDS: u32 = 3;

/// PgBouncer's `max_prepared_statements` (1.21 or newer): room for every
/// statement the store prepares, so none is evicted and prepared again.
/// The default since 1.24; 1.21 to 1.23 default to 0, which is off.
const MAX_PREPARED_STATEMENTS: &str = "200";

/// The durable timer each workflow sleeps on.
const NAP: Duration = Duration::from_millis(200);

/// A transaction-mode PgBouncer in front of `server_url`, whose admin
/// console its user may read, and its number of server connections.
///
/// The store's statements are named prepared statements (deadpool's cache),
/// which transaction mode carries from one server connection to another only
/// from PgBouncer 1.21 on, with `max_prepared_statements`: then
/// [`BACKENDS`] server connections. An older PgBouncer (Debian 12 ships
/// 1.18) refuses that setting, and a statement prepared on one server
/// connection is then missing on the next ("prepared statement \"s36\"
/// does not exist"); with one server connection every statement of this
/// process is on it (tokio-postgres numbers them process-wide), so the
/// test runs with one: every client shares it. That holds for one process
/// only, and only while PgBouncer keeps that connection: not a setup to
/// deploy.
async fn transaction_pooler(server_url: &str) -> Option<(PgBouncer, u32)> {
    let builder = PgBouncer::builder(server_url)
        .pool_mode(PoolMode::Transaction)
        .setting("admin_users", &user_of(server_url));
    // Asked of a running PgBouncer rather than found out from a failed
    // start: the one that is used, wherever it was found.
    let one_backend = support::started_or_skipped(builder.clone().default_pool_size(1).start())?;
    let version = pgbouncer_version(&one_backend).await;
    if version < (1, 21) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "PgBouncer {version:?} has no max_prepared_statements: one server connection"
        );
        return Some((one_backend, 1));
    }
    stop(one_backend).await;
    let tracking = builder
        .default_pool_size(BACKENDS)
        .setting("max_prepared_statements", MAX_PREPARED_STATEMENTS)
        .start();
    support::started_or_skipped(tracking).map(|bouncer| (bouncer, BACKENDS))
}

/// The rows `command` answers on `bouncer`'s admin console, its connection
/// closed again. Plain tokio-postgres: the console answers only its own
/// commands, not pgwake's connection checks.
async fn admin_rows(bouncer: &PgBouncer, command: &str) -> Vec<tokio_postgres::SimpleQueryRow> {
    let (client, connection) =
        tokio_postgres::connect(&bouncer.url_for("pgbouncer"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let messages = client.simple_query(command).await.unwrap();
    drop(client);
    // Gone before PgBouncer stops: see [`stop`].
    let _ = connection.await;
    messages
        .into_iter()
        .filter_map(|message| match message {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row),
            _ => None,
        })
        .collect()
}

/// Stops `bouncer` off this thread. PgBouncer 1.23 and newer stop on
/// SIGTERM only once their clients have gone, and the connections of this
/// test's clients close on this thread: blocked in `Drop`, it would hold
/// PgBouncer up until the helper's 10 s limit.
async fn stop(bouncer: PgBouncer) {
    tokio::task::spawn_blocking(move || drop(bouncer))
        .await
        .unwrap();
}

/// `(major, minor)` of `bouncer`, from its admin console's `SHOW VERSION`
/// (`PgBouncer 1.18.0`).
async fn pgbouncer_version(bouncer: &PgBouncer) -> (u32, u32) {
    let text = admin_rows(bouncer, "SHOW VERSION")
        .await
        .first()
        .and_then(|row| row.get(0).map(str::to_string))
        .expect("SHOW VERSION answers one row");
    let number = text.trim_start_matches("PgBouncer").trim();
    let mut parts = number.split('.').map(|part| part.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor))) => (major, minor),
        _ => panic!("PgBouncer's version: {text:?}"),
    }
}

/// The user of `url`, who runs everything here.
fn user_of(url: &str) -> String {
    pgwake::ConnectionConfig::from_url(url)
        .unwrap()
        .postgres_config()
        .get_user()
        .expect("the test database's URL names its user")
        .to_string()
}

/// Two activities around a durable timer and a signal: every kind of step
/// a workflow takes, each its own transactions through the pool. The result
/// of order `n` is `99 * n`.
fn orders() -> (Workflows, Activities) {
    let workflows = Workflows::new().register("order", |ctx: WorkflowContext, n: u64| async move {
        let priced: u64 = ctx.activity("price", &n).await?;
        ctx.sleep(NAP).await?;
        let mut approvals = ctx.signal_channel::<u64>("approved");
        let discount = approvals.recv().await?;
        let total: u64 = ctx.activity("charge", &(priced, discount)).await?;
        Ok::<_, WorkflowError>(total)
    });
    let activities = Activities::new()
        .register("price", |_: ActivityContext, n: u64| async move {
            Ok::<_, ActivityError>(n * 100)
        })
        .register(
            "charge",
            |_: ActivityContext, (priced, discount): (u64, u64)| async move {
                Ok::<_, ActivityError>(priced - discount)
            },
        );
    (workflows, activities)
}

/// A runtime on `config` running [`orders`] on the queue `default`.
async fn start_runtime(config: RuntimeConfig) -> RuntimeHandle {
    let (workflows, activities) = orders();
    Runtime::builder(config)
        .workflow_worker(workflows.worker(["default"]).concurrency(4))
        .activity_worker(activities.worker(["default"]).concurrency(4))
        .start()
        .await
        .unwrap()
}

/// What a failed wait reports besides its own message: the runtime's view
/// and the end of PgBouncer's log.
fn diagnostics(runtime: &RuntimeHandle, bouncer: &PgBouncer) -> String {
    let log = std::fs::read_to_string(bouncer.log_file()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "health: {:?}\nPgBouncer's log ends with:\n{}",
        runtime.health(),
        tail.join("\n")
    )
}

/// Runs [`WORKFLOWS`] orders to the end through `client`, a client of its
/// own through PgBouncer (not the runtime's store): its starts and signals
/// reach the runtime as any other process's writes would. Each signal is
/// sent once its workflow has slept, so that the workflow really waits.
async fn run_orders(runtime: &RuntimeHandle, bouncer: &PgBouncer, client: &Client, store: &Store) {
    let ids: Vec<String> = (1..=WORKFLOWS).map(|n| format!("order-{n}")).collect();
    for (n, id) in (1..=WORKFLOWS).zip(&ids) {
        client
            .start("order", id, &n, StartOptions::default())
            .await
            .unwrap_or_else(|err| panic!("starting {id}: {err}"));
    }

    let mut waiting = BTreeSet::new();
    let all_slept = tokio::time::timeout(WAIT, async {
        while waiting.len() < ids.len() {
            for id in &ids {
                if waiting.contains(id) {
                    continue;
                }
                let snapshot = store.instance(id).await.unwrap().unwrap();
                if snapshot
                    .history
                    .iter()
                    .any(|e| e.event_type == EventType::TimerFired)
                {
                    waiting.insert(id.clone());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        all_slept.is_ok(),
        "only {} of {WORKFLOWS} workflows slept within {WAIT:?}\n{}",
        waiting.len(),
        diagnostics(runtime, bouncer)
    );

    for (n, id) in (1..=WORKFLOWS).zip(&ids) {
        client
            .signal(id, "approved", &n)
            .await
            .unwrap_or_else(|err| panic!("signalling {id}: {err}"));
    }
    let results = join_all(ids.iter().map(|id| client.result::<u64>(id, WAIT))).await;
    for ((n, id), result) in (1..=WORKFLOWS).zip(&ids).zip(results) {
        match result {
            Ok(total) => assert_eq!(total, 99 * n, "{id}"),
            Err(err) => panic!("{id}: {err}\n{}", diagnostics(runtime, bouncer)),
        }
    }
}

/// Every instance finished, and no work left behind: read on PostgreSQL
/// directly.
async fn assert_all_finished(sql: &tokio_postgres::Client) {
    let row = sql
        .query_one(
            "SELECT count(*) FILTER (WHERE state = $1),
                    count(*),
                    (SELECT count(*) FROM activities),
                    (SELECT count(*) FROM pending_events)
               FROM instances",
            &[&(InstanceState::Finished as i32)],
        )
        .await
        .unwrap();
    let (finished, instances, activities, pending_events): (i64, i64, i64, i64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        (finished, instances),
        (WORKFLOWS as i64, WORKFLOWS as i64),
        "finished instances, of all"
    );
    assert_eq!(
        (activities, pending_events),
        (0, 0),
        "activities and pending events left"
    );
}

/// The backend pids of PgBouncer's server connections to `database`, from
/// its admin console.
async fn pgbouncer_server_pids(bouncer: &PgBouncer, database: &str) -> BTreeSet<i32> {
    admin_rows(bouncer, "SHOW SERVERS")
        .await
        .into_iter()
        .filter(|row| row.get("database") == Some(database))
        .filter_map(|row| row.get("remote_pid").and_then(|pid| pid.parse().ok()))
        .collect()
}

/// The pids and `application_name`s of the listeners' backends on
/// `sql`'s database.
async fn listener_backends(sql: &tokio_postgres::Client) -> Vec<(i32, String)> {
    sql.query(
        "SELECT pid, application_name FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'pgwake-listener:%'
          ORDER BY application_name",
        &[],
    )
    .await
    .unwrap()
    .into_iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect()
}

/// Issue #12, item 3: the pool (workers and notifier) and a client behind
/// PgBouncer in transaction mode, sharing a few backends; the listeners on
/// `listener_url`, straight on PostgreSQL. The fallback polls are so long
/// that only notifications, and the workers' own timers, can move the
/// workflows along in time.
#[actix_rt::test]
async fn workflows_run_to_the_end_with_the_pool_behind_pgbouncer_and_listeners_direct() {
    let database = fresh_database().await.unwrap();
    let Some((bouncer, backends)) = transaction_pooler(database.url()).await else {
        return;
    };
    let mut config = support::notify_only(&bouncer.url());
    config.listener_url = Some(database.url().to_string());
    let runtime = start_runtime(config).await;
    eventually(WAIT, "both listeners listening", || async {
        let health = runtime.health();
        health.listeners.len() == 2
            && health
                .listeners
                .iter()
                .all(|l| l.state == ListenerState::Listening)
    })
    .await;

    let store = Store::connect(&bouncer.url(), StoreOptions::default())
        .await
        .unwrap();
    let client = Client::new(store.clone());
    run_orders(&runtime, &bouncer, &client, &store).await;

    let sql = support::connect(database.url()).await;
    assert_all_finished(&sql).await;
    let listeners = listener_backends(&sql).await;
    let names: Vec<&str> = listeners.iter().map(|(_, name)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "pgwake-listener:activity_tasks",
            "pgwake-listener:workflow_tasks"
        ],
        "one listener backend per channel"
    );
    let pooled = pgbouncer_server_pids(&bouncer, database.name()).await;
    assert!(!pooled.is_empty(), "PgBouncer has server connections");
    assert!(
        pooled.len() <= backends as usize,
        "PgBouncer's pool: {pooled:?}"
    );
    for (pid, name) in &listeners {
        assert!(
            !pooled.contains(pid),
            "{name} (backend {pid}) is one of PgBouncer's server connections {pooled:?}"
        );
    }
    assert!(
        runtime.notifications_sent() >= 1,
        "the notifier sent through PgBouncer"
    );
    let health = runtime.health();
    assert!(
        health.counters(TaskKind::Workflow, "default").wakeups >= 1,
        "{health:?}"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
    drop((client, store, runtime));
    stop(bouncer).await;
}

/// Issue #12, item 3: poll-only mode, everything (pool and client) behind
/// PgBouncer in transaction mode: no listener, no NOTIFY, workers polling
/// every `fallback_while_degraded`.
#[actix_rt::test]
async fn workflows_run_to_the_end_in_poll_only_mode_entirely_behind_pgbouncer() {
    let database = fresh_database().await.unwrap();
    let Some((bouncer, _)) = transaction_pooler(database.url()).await else {
        return;
    };
    let mut config = RuntimeConfig::new(bouncer.url());
    config.notifications = false;
    config.fallback_while_degraded = Duration::from_millis(50);
    let runtime = start_runtime(config).await;
    let health = runtime.health();
    assert!(
        health
            .listeners
            .iter()
            .all(|l| l.state == ListenerState::Disabled),
        "{health:?}"
    );

    let store = Store::connect(&bouncer.url(), StoreOptions::default())
        .await
        .unwrap();
    let client = Client::new(store.clone());
    run_orders(&runtime, &bouncer, &client, &store).await;

    let sql = support::connect(database.url()).await;
    assert_all_finished(&sql).await;
    assert_eq!(listener_backends(&sql).await, [], "no listener connects");
    assert_eq!(
        runtime.notifications_sent(),
        0,
        "no NOTIFY in poll-only mode"
    );
    runtime.shutdown(Duration::from_secs(5)).await;
    drop((client, store, runtime));
    stop(bouncer).await;
}
