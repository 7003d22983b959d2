//! `pgwake bench notify-cost`: writer transactions per second, each
//! enqueuing one activity, with no trigger, with 000002's per-row trigger,
//! with migration 4's statement-level trigger, and through pgwake's
//! deferred path (the trigger skipped, one debounced NOTIFY per queue sent
//! after commit from the notifier's own connection).
//!
//! NOTIFY takes a database-wide lock at commit and holds it through the
//! commit's WAL flush, so notifying writers cannot share flushes (group
//! commit). That only shows when commits wait for the disk: the figures
//! mean something on a durable server only.
//!
//! Every variant writes the same rows with the statement the store sends,
//! sent the same way (prepared once per connection, then one round trip
//! and one autocommit transaction per activity). A plain connection keeps `LISTEN activity_tasks` open for
//! the whole run, as a worker process would: NOTIFY with no listener is
//! cheaper.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use pgwake::{InstanceRef, Queue, Runtime, RuntimeConfig, RuntimeHandle};
use serde_json::{json, Value};
use tokio_postgres::{AsyncMessage, Client, Statement};

use super::{connect, Progress, Server};
use crate::bounds::{decimal, whole, MAX_BENCH_CONNECTIONS, MAX_BENCH_SECONDS};

/// The most slices a variant's seconds are cut into.
const MAX_ROUNDS: usize = 1000;

#[derive(Debug, Args)]
pub(crate) struct NotifyCostArgs {
    /// Concurrent producers to measure, comma-separated; each producer is
    /// one connection enqueuing one activity per transaction (1 to 256).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16],
          value_parser = whole(1, MAX_BENCH_CONNECTIONS, "connections"))]
    producers: Vec<usize>,
    /// Measured seconds per variant and producer count (0.1 to 3600).
    #[arg(long, default_value_t = 3.0,
          value_parser = decimal(0.1, MAX_BENCH_SECONDS as f64, "seconds (1 hour)"))]
    seconds: f64,
    /// Slices each variant's seconds are cut into, the variants taking
    /// turns, so that a slow spell of the machine or its disk spreads over
    /// all of them instead of landing on one. 1 to 1000.
    #[arg(long, default_value_t = 3, value_parser = whole(1, MAX_ROUNDS, "rounds"))]
    rounds: usize,
}

const QUEUE: &str = "notify-cost";
const INSTANCE: &str = "bench-notify-cost";
const EXECUTION: &str = "e";

/// `Store::enqueue_activity`'s statement, word for word: the plain
/// producers send it with `$6 = false`, which leaves the trigger on.
const ENQUEUE_SQL: &str = "WITH defer AS (SELECT set_config('pgwake.defer_notify', CASE WHEN $6 THEN 'on' ELSE '' END, true) AS v),
      attrs AS (INSERT INTO attributes (event_id, instance_id, execution_id, data)
                VALUES ($1, $2, $3, $5))
 INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue,
                         timestamp, schedule_event_id)
 SELECT $1, $2, $3, 11, $4, now(), 0 FROM defer WHERE defer.v IS NOT NULL";

/// Removes both generations of notification triggers.
const DROP_TRIGGERS: &str = "
DROP TRIGGER IF EXISTS activities_notify_activity_task ON activities;
DROP TRIGGER IF EXISTS pending_events_notify_workflow_task ON pending_events;
DROP FUNCTION IF EXISTS notify_activity_task();
DROP FUNCTION IF EXISTS notify_workflow_task();
DROP TRIGGER IF EXISTS pgwake_activities_notify ON activities;
DROP TRIGGER IF EXISTS pgwake_pending_events_notify ON pending_events;
DROP FUNCTION IF EXISTS pgwake_notify_activity_tasks();
DROP FUNCTION IF EXISTS pgwake_notify_workflow_tasks();";
const ROW_TRIGGERS: &str = include_str!("../../../../migrations/000002_add_notify_triggers.up.sql");
const STATEMENT_TRIGGERS: &str =
    include_str!("../../../../migrations/000004_statement_level_notify.up.sql");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoTrigger,
    RowTrigger,
    StatementTrigger,
    Deferred,
}

impl Variant {
    const ALL: [Variant; 4] = [
        Variant::NoTrigger,
        Variant::RowTrigger,
        Variant::StatementTrigger,
        Variant::Deferred,
    ];

    fn key(self) -> &'static str {
        match self {
            Variant::NoTrigger => "no_trigger",
            Variant::RowTrigger => "row_trigger",
            Variant::StatementTrigger => "statement_trigger",
            Variant::Deferred => "deferred",
        }
    }

    /// The triggers in place during the run.
    fn triggers(self) -> &'static str {
        match self {
            Variant::NoTrigger => "",
            Variant::RowTrigger => ROW_TRIGGERS,
            Variant::StatementTrigger | Variant::Deferred => STATEMENT_TRIGGERS,
        }
    }
}

fn owner() -> InstanceRef {
    // No such instance: nothing in this scenario ever runs the activities.
    InstanceRef {
        instance_id: INSTANCE.into(),
        execution_id: EXECUTION.into(),
    }
}

/// A plain connection with the enqueue statement prepared.
struct Producer {
    client: Client,
    enqueue: Statement,
}

/// One activity per transaction through a plain connection, until `deadline`.
async fn plain_producer(producer: &Producer, deadline: Instant) -> Result<u64, String> {
    let mut done = 0u64;
    while Instant::now() < deadline {
        enqueue_plain(producer, done).await?;
        done += 1;
    }
    Ok(done)
}

async fn enqueue_plain(producer: &Producer, i: u64) -> Result<(), String> {
    let id = uuid::Uuid::new_v4().to_string();
    let data = serde_json::to_vec(&json!({ "name": "bench", "input": { "i": i }, "queue": QUEUE }))
        .map_err(|e| e.to_string())?;
    producer
        .client
        .execute(
            &producer.enqueue,
            &[&id, &INSTANCE, &EXECUTION, &QUEUE, &data, &false],
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The same through the runtime's store: the trigger is skipped, and the
/// notifier sends the NOTIFY after commit, debounced.
async fn deferred_producer(
    runtime: &RuntimeHandle,
    queue: &Queue,
    deadline: Instant,
) -> Result<u64, String> {
    let mut done = 0u64;
    while Instant::now() < deadline {
        enqueue_deferred(runtime, queue, done).await?;
        done += 1;
    }
    Ok(done)
}

async fn enqueue_deferred(runtime: &RuntimeHandle, queue: &Queue, i: u64) -> Result<(), String> {
    runtime
        .store()
        .enqueue_activity(&owner(), queue, "bench", json!({ "i": i }))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A worker process's listening connection: `LISTEN activity_tasks`,
/// reading and counting every notification.
struct Listener {
    _client: Client,
    received: Arc<AtomicU64>,
    driver: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn start(url: &str) -> Result<Self, String> {
        let config = pgwake::ConnectionConfig::from_url(url)
            .map_err(|e| e.to_string())?
            .with_application_name("pgwake-bench-listener");
        let (client, mut connection) = config.connect_raw().await.map_err(|e| e.to_string())?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(_)) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        });
        client
            .batch_execute("LISTEN activity_tasks")
            .await
            .map_err(|e| e.to_string())?;
        Ok(Self {
            _client: client,
            received,
            driver,
        })
    }

    fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Outcome {
    commits: u64,
    seconds: f64,
    notifications: u64,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.commits += other.commits;
        self.seconds += other.seconds;
        self.notifications += other.notifications;
    }

    fn per_second(&self) -> f64 {
        self.commits as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_variant(
    admin: &Client,
    producers: &[Producer],
    runtime: &RuntimeHandle,
    queue: &Queue,
    listener: &Listener,
    variant: Variant,
    count: usize,
    seconds: f64,
) -> Result<Outcome, String> {
    admin
        .batch_execute(&format!("{DROP_TRIGGERS}\n{}", variant.triggers()))
        .await
        .map_err(|e| format!("installing the {} triggers: {e}", variant.key()))?;
    admin
        .batch_execute("TRUNCATE activities, attributes")
        .await
        .map_err(|e| e.to_string())?;
    // One unmeasured write per producer: connections, pool and caches warm.
    let warm: Vec<_> = (0..count)
        .map(|p| async move {
            match variant {
                Variant::Deferred => enqueue_deferred(runtime, queue, u64::MAX - p as u64).await,
                _ => enqueue_plain(&producers[p], u64::MAX - p as u64).await,
            }
        })
        .collect();
    for result in futures::future::join_all(warm).await {
        result?;
    }
    // Let the warm-up's NOTIFYs (and the notifier's trailing one) pass.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let notified_before = listener.received();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let runs: Vec<_> = (0..count)
        .map(|p| async move {
            match variant {
                Variant::Deferred => deferred_producer(runtime, queue, deadline).await,
                _ => plain_producer(&producers[p], deadline).await,
            }
        })
        .collect();
    let mut commits = 0;
    for result in futures::future::join_all(runs).await {
        commits += result?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The notifier's last trailing NOTIFY comes up to one debounce window late.
    tokio::time::sleep(Duration::from_millis(60)).await;
    Ok(Outcome {
        commits,
        seconds: elapsed,
        notifications: listener.received() - notified_before,
    })
}

pub(crate) async fn run(server: Server, args: NotifyCostArgs) -> Result<(Value, Value), String> {
    // Each count, --seconds and --rounds are bounded when parsed.
    if args.producers.is_empty() {
        return Err("--producers must list at least one count".into());
    }
    println!("notify-cost on {}", server.description);
    let description = server.description.clone();
    let admin = connect(&server.url).await?;
    let durable: bool = admin
        .query_one(
            "SELECT current_setting('fsync') = 'on' AND current_setting('synchronous_commit') <> 'off'",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let not_durable_note = "note: this server does not wait for WAL flushes (fsync or synchronous_commit off), \
         so commits never queue for the disk: these figures show what sending NOTIFY costs in CPU, not what \
         its commit lock costs where commits wait for their flush (it makes them flush one by one instead of \
         in groups). Run with --durable (a throwaway server with fsync on) or --database-url for that.";
    if !durable {
        eprintln!("{not_durable_note}");
    }

    let max = args.producers.iter().copied().max().unwrap_or(1);
    let mut config = RuntimeConfig::new(&server.url);
    config.store.pool_size = max + 2;
    // No workers: this runtime only writes, through its store and notifier.
    let runtime = Runtime::builder(config)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let queue = Queue::new(QUEUE).map_err(|e| e.to_string())?;
    let listener = Listener::start(&server.url).await?;
    let mut producers = Vec::with_capacity(max);
    for _ in 0..max {
        let client = connect(&server.url).await?;
        let enqueue = client
            .prepare(ENQUEUE_SQL)
            .await
            .map_err(|e| e.to_string())?;
        producers.push(Producer { client, enqueue });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runtime.health().all_listening() {
        if Instant::now() > deadline {
            return Err("the runtime's listeners did not listen within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let total = (args.producers.len() * args.rounds * Variant::ALL.len()) as u64;
    let slice = args.seconds / args.rounds as f64;
    let mut progress = Progress::new("notify-cost slices", total);
    let mut results = serde_json::Map::new();
    let mut received = serde_json::Map::new();
    let mut table = Vec::new();
    let mut done = 0;
    for &count in &args.producers {
        let mut outcomes = [Outcome::default(); 4];
        for round in 0..args.rounds {
            // A different variant first in each round.
            for k in 0..Variant::ALL.len() {
                let index = (k + round) % Variant::ALL.len();
                let variant = Variant::ALL[index];
                let outcome = run_variant(
                    &admin, &producers, &runtime, &queue, &listener, variant, count, slice,
                )
                .await?;
                outcomes[index].add(outcome);
                done += 1;
                progress.tick(done);
            }
        }
        let mut rates = serde_json::Map::new();
        let mut notes = serde_json::Map::new();
        for (variant, outcome) in Variant::ALL.iter().zip(&outcomes) {
            eprintln!(
                "  {count} producer(s), {}: {:.0} transactions/s, {} notifications received",
                variant.key(),
                outcome.per_second(),
                outcome.notifications
            );
            rates.insert(variant.key().into(), json!(outcome.per_second()));
            notes.insert(variant.key().into(), json!(outcome.notifications));
        }
        results.insert(format!("producers_{count}"), Value::Object(rates));
        received.insert(format!("producers_{count}"), Value::Object(notes));
        table.push((count, outcomes.map(|o| o.per_second())));
    }
    // Leave the schema as migration 4 made it.
    admin
        .batch_execute(&format!(
            "{DROP_TRIGGERS}\n{STATEMENT_TRIGGERS}\nTRUNCATE activities, attributes"
        ))
        .await
        .map_err(|e| e.to_string())?;
    runtime.shutdown(Duration::from_secs(5)).await;
    let notifier_sent = runtime.notifications_sent();
    drop(listener);
    drop(producers);
    drop(admin);
    server.close().await;

    println!(
        "{:<10} {:>12} {:>12} {:>12} {:>12} {:>16}",
        "producers", "no trigger", "row trigger", "stmt trigger", "deferred", "deferred/none"
    );
    for (count, line) in &table {
        println!(
            "{count:<10} {:>12.0} {:>12.0} {:>12.0} {:>12.0} {:>15.2}x",
            line[0],
            line[1],
            line[2],
            line[3],
            line[3] / line[0].max(f64::MIN_POSITIVE)
        );
    }
    println!(
        "transactions per second, each one statement inserting one activity (and its attributes row), \
         {} s per variant in {} interleaved slices; a plain connection LISTENs on activity_tasks throughout.",
        args.seconds, args.rounds
    );
    println!(
        "row/stmt trigger: every transaction NOTIFYs at commit; deferred: pgwake's store skips the trigger \
         and its notifier sends at most one NOTIFY per queue per 25 ms after commit ({notifier_sent} in all)."
    );
    if !durable {
        println!("{not_durable_note}");
    }

    let config = json!({
        "producers": args.producers,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "durable": durable,
        "server": description,
    });
    let mut results = Value::Object(results);
    results["notifications_received"] = Value::Object(received);
    Ok((config, results))
}
