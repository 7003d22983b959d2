//! Failover, against two real clusters: a primary and a streaming standby
//! made with `pg_basebackup -R`, and pgwake on one multi-host URL with
//! `target_session_attrs=read-write`, so that the pool, the listeners and
//! the notifier each skip a server that takes no writes. The primary is
//! crashed, the standby promoted, and the same runtime carries on against it.
//!
//! The runtime here never polls while its listeners listen
//! (`fallback_while_listening` is ten minutes): once they listen again
//! after the failover, a task found within the tests' deadlines was found
//! by a notification or by a listener's resync, not by a fallback poll.
//! While the listeners are down the workers poll every
//! `fallback_while_degraded` (the default 500 ms), as in production.
//!
//! The failover test prints how long wake-ups took to come back
//! (`cargo test --test failover -- --nocapture`); it asserts no speed.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwake::testing::{TestDatabase, TestPostgres};
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{Queue, Runtime, RuntimeConfig, RuntimeHandle, TaskKind};

/// Every wait of these tests: generous, since they assert no speed.
const WAIT: Duration = Duration::from_secs(60);

/// How long the primary is gone before the standby is promoted: what a
/// failover manager takes to decide, here short enough for a test.
const OUTAGE: Duration = Duration::from_secs(2);

/// When each workflow's activity first ran, by instance id.
type FirstRuns = Arc<Mutex<HashMap<String, Instant>>>;

/// A primary with a migrated test database, and a standby that has
/// replayed it.
async fn primary_and_standby() -> (TestPostgres, TestPostgres, TestDatabase) {
    let primary = TestPostgres::new().expect("start the primary");
    let standby = TestPostgres::new_standby_of(&primary).expect("start the standby");
    let database = primary.create_database().await.unwrap();
    standby.wait_until_replayed(&primary).await.unwrap();
    (primary, standby, database)
}

/// `postgres://postgres@127.0.0.1:<first>,127.0.0.1:<second>/<db>?target_session_attrs=read-write`
fn multi_host_url(first: &TestPostgres, second: &TestPostgres, database: &TestDatabase) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{}?target_session_attrs=read-write",
        first.port(),
        second.port(),
        database.name()
    )
}

/// The database on one server only, be it a standby.
fn single_host_url(server: &TestPostgres, database: &TestDatabase) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{}/{}?target_session_attrs=any",
        server.port(),
        database.name()
    )
}

/// `step_and_nap`: one activity, then a timer of the input's milliseconds;
/// returns the activity's result. The activity records when it first ran.
fn step_and_nap(first_runs: &FirstRuns) -> (Workflows, Activities) {
    let workflows = Workflows::new().register(
        "step_and_nap",
        |ctx: WorkflowContext, (id, nap_ms): (String, u64)| async move {
            let stamped: String = ctx.activity("stamp", &id).await?;
            ctx.sleep(Duration::from_millis(nap_ms)).await?;
            Ok::<_, WorkflowError>(stamped)
        },
    );
    let first_runs = first_runs.clone();
    let activities = Activities::new().register("stamp", move |_: ActivityContext, id: String| {
        first_runs
            .lock()
            .unwrap()
            .entry(id.clone())
            .or_insert_with(Instant::now);
        async move { Ok::<_, ActivityError>(format!("{id} stamped")) }
    });
    (workflows, activities)
}

/// A queue that only other processes write to: its workers are woken by
/// their notifications (or a listener's resync), never by this runtime's
/// own commits, which wake the workers of the queues they touch.
const PROBE: &str = "probe";

/// A runtime on `url` that never polls while listening, with workers for
/// `default` and for [`PROBE`]. Leases are short so that a task whose claim
/// reached the standby but whose result did not (the primary crashed in
/// between) is taken over in seconds, not minutes.
async fn start_runtime(url: &str, workflows: &Workflows, activities: &Activities) -> RuntimeHandle {
    let mut config = RuntimeConfig::new(url);
    config.fallback_while_listening = support::NEVER;
    let lease = Duration::from_secs(5);
    Runtime::builder(config)
        .workflow_worker(workflows.worker(["default"]).lease(lease))
        .workflow_worker(workflows.worker([PROBE]).lease(lease))
        .activity_worker(activities.worker(["default"]).concurrency(4).lease(lease))
        .activity_worker(activities.worker([PROBE]).lease(lease))
        .start()
        .await
        .unwrap()
}

async fn start_workflow(client: &Client, id: &str, nap_ms: u64) {
    start_workflow_on(client, "default", id, nap_ms).await;
}

async fn start_workflow_on(client: &Client, queue: &str, id: &str, nap_ms: u64) {
    let options = StartOptions::default().queue(Queue::new(queue).unwrap());
    client
        .start("step_and_nap", id, &(id.to_string(), nap_ms), options)
        .await
        .unwrap_or_else(|err| panic!("starting {id}: {err}"));
}

async fn assert_finishes(client: &Client, id: &str) {
    let result: String = client
        .result(id, WAIT)
        .await
        .unwrap_or_else(|err| panic!("{id} did not finish: {err}"));
    assert_eq!(result, format!("{id} stamped"));
}

/// The port of the server a pooled connection of `runtime` is on, and
/// whether that server is in recovery.
async fn pool_server(runtime: &RuntimeHandle) -> (i32, bool) {
    let client = runtime.store().pool().get().await.unwrap();
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// Sessions on `server`'s copy of `database`, other than the asking one.
async fn sessions_on(server: &TestPostgres, database: &TestDatabase, filter: &str) -> i64 {
    let client = support::connect(&single_host_url(server, database)).await;
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND {filter}"
    );
    client.query_one(&sql, &[]).await.unwrap().get(0)
}

/// Every listener of `runtime`, and its notifier, has its session on
/// `server`, and the notifier has sent NOTIFYs from there (the runtime's
/// writes skip the triggers, so its NOTIFYs all come from the notifier).
async fn assert_sessions_of_listeners_and_notifier(
    runtime: &RuntimeHandle,
    server: &TestPostgres,
    database: &TestDatabase,
) {
    let listeners = runtime.health().listeners.len() as i64;
    let listening = sessions_on(
        server,
        database,
        "application_name LIKE 'pgwake-listener:%'",
    );
    assert_eq!(listening.await, listeners);
    let notifier = sessions_on(server, database, "application_name = 'pgwake-notifier'");
    assert_eq!(notifier.await, 1);
    assert!(runtime.notifications_sent() > 0);
}

/// The instant the activity of `id` first ran, waiting for it up to [`WAIT`].
async fn first_run_of(first_runs: &FirstRuns, id: &str) -> Instant {
    support::until_some(WAIT, &format!("the activity of {id}"), || async {
        first_runs.lock().unwrap().get(id).copied()
    })
    .await
}

#[actix_rt::test]
async fn with_the_standby_listed_first_the_pool_listeners_and_notifier_use_the_primary() {
    let (primary, standby, database) = primary_and_standby().await;
    let url = multi_host_url(&standby, &primary, &database);
    let first_runs = FirstRuns::default();
    let (workflows, activities) = step_and_nap(&first_runs);
    let runtime = start_runtime(&url, &workflows, &activities).await;
    support::eventually(WAIT, "the listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;

    let client = Client::new(runtime.store().clone());
    start_workflow(&client, "standby-first", 10).await;
    assert_finishes(&client, "standby-first").await;

    let primary_port = i32::from(primary.port());
    assert_eq!(pool_server(&runtime).await, (primary_port, false));
    assert_sessions_of_listeners_and_notifier(&runtime, &primary, &database).await;
    // tokio-postgres closes a connection to the standby as soon as it
    // reports `transaction_read_only`; none stays behind.
    let on_standby = sessions_on(&standby, &database, "application_name LIKE 'pgwake%'").await;
    assert_eq!(on_standby, 0);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn after_the_primary_crashes_and_the_standby_is_promoted_no_workflow_is_lost() {
    let (mut primary, standby, database) = primary_and_standby().await;
    let url = multi_host_url(&primary, &standby, &database);
    let first_runs = FirstRuns::default();
    let (workflows, activities) = step_and_nap(&first_runs);
    let runtime = start_runtime(&url, &workflows, &activities).await;
    support::eventually(WAIT, "the listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;
    let client = Client::new(runtime.store().clone());

    // Four finish before the crash; eight are in their timers when it comes.
    let before: Vec<String> = (0..12).map(|i| format!("before-{i}")).collect();
    for (i, id) in before.iter().enumerate() {
        let nap_ms = if i < 4 { 10 } else { 1_500 };
        start_workflow(&client, id, nap_ms).await;
    }
    for id in &before[..4] {
        assert_finishes(&client, id).await;
    }
    for id in &before[4..] {
        first_run_of(&first_runs, id).await;
    }

    // Replication is asynchronous: a start the primary acknowledged a
    // moment before it crashed may never have reached the standby, and
    // would then be lost by any failover, pgwake or not. So every start is
    // made to reach the standby before the crash; what the runtime commits
    // in between (a decision, a result) may be lost, and is redone once the
    // lease its claim left on the standby expires.
    standby.wait_until_replayed(&primary).await.unwrap();
    primary.crash().unwrap();
    support::eventually(WAIT, "the listeners to notice the crash", || async {
        !runtime.health().all_listening()
    })
    .await;
    tokio::time::sleep(OUTAGE).await;

    let promote_requested = Instant::now();
    standby.promote().await.unwrap();
    let promoted_in = promote_requested.elapsed();
    let sent_at_promotion = runtime.notifications_sent();

    // Measured together from the promotion request: the listeners back,
    // a workflow another process starts at once (its insert's NOTIFY may
    // find no listener yet: a poll or the resync finds it), and the
    // workflows that were in their timers at the crash.
    let listening_again = async {
        support::eventually(WAIT, "the listeners to listen again", || async {
            runtime.health().all_listening()
        })
        .await;
        promote_requested.elapsed()
    };
    let first_woken = async {
        let other_process = Client::connect(&url).await.unwrap();
        start_workflow(&other_process, "enqueued-at-promotion", 10).await;
        first_run_of(&first_runs, "enqueued-at-promotion").await - promote_requested
    };
    let before_finished = async {
        for id in &before {
            assert_finishes(&client, id).await;
        }
        promote_requested.elapsed()
    };
    let (listening_after, handled_after, all_finished) =
        tokio::join!(listening_again, first_woken, before_finished);
    assert_finishes(&client, "enqueued-at-promotion").await;

    // Once listening, a task another process puts on the probe queue is
    // found by its notification alone: the probe workers' fallback poll is
    // ten minutes away, and their resync long done.
    let other_process = Client::connect(&url).await.unwrap();
    let enqueued = Instant::now();
    start_workflow_on(&other_process, PROBE, "enqueued-when-listening", 10).await;
    let notified_in = first_run_of(&first_runs, "enqueued-when-listening").await - enqueued;

    let after: Vec<String> = (0..8).map(|i| format!("after-{i}")).collect();
    for id in &after {
        start_workflow(&client, id, 200).await;
    }
    for id in after
        .iter()
        .map(String::as_str)
        .chain(["enqueued-when-listening"])
    {
        assert_finishes(&client, id).await;
    }

    eprintln!(
        "failover: outage {OUTAGE:?}, promotion took {promoted_in:?}; from the promotion \
         request: (i) listeners listening again {listening_after:?}, (ii) workflow started by \
         another process at promotion handled {handled_after:?}, workflows started before the \
         crash all finished {all_finished:?}; once listening, a workflow from another process \
         handled {notified_in:?} after its start"
    );
    let health = runtime.health();
    assert!(health.all_listening(), "{:?}", health.listeners);
    assert!(health.listeners.iter().all(|l| l.reconnects >= 1));
    assert_eq!(
        pool_server(&runtime).await,
        (i32::from(standby.port()), false)
    );
    assert_sessions_of_listeners_and_notifier(&runtime, &standby, &database).await;
    assert!(
        runtime.notifications_sent() > sent_at_promotion,
        "the notifier sent nothing after the failover"
    );
    let counters = health.counters(TaskKind::Workflow, "default");
    assert!(counters.completed > 0, "{counters:?}");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_standby_creates_no_database_until_it_is_promoted() {
    let (mut primary, standby, database) = primary_and_standby().await;
    let refused = standby.create_database().await.unwrap_err();
    assert!(
        matches!(
            refused,
            pgwake::testing::TestPostgresError::StandbyIsReadOnly { .. }
        ),
        "{refused}"
    );
    // The primary's database is on the standby, migrated, by replication.
    let replica = support::connect(&single_host_url(&standby, &database)).await;
    pgwake::migrate::check(&replica).await.unwrap();

    primary.stop().unwrap();
    standby.promote().await.unwrap();
    let created = standby.create_database().await.unwrap();
    let client = created.config().connect().await.unwrap();
    pgwake::migrate::check(&client).await.unwrap();
}
