//! `pgwake bench throughput`: activities drained per second by a runtime's
//! workers: claimed one at a time, claimed in batches, and with producers
//! writing while workers drain.

use std::time::{Duration, Instant};

use clap::Args;
use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig, RuntimeHandle, TaskKind};
use serde_json::{json, Value};

use super::{connect, Progress, Server};
use crate::bounds::{whole, MAX_BENCH_CONNECTIONS, MAX_BENCH_SECONDS, MAX_CONCURRENCY};

/// The most activities bulk-inserted per run.
const MAX_TASKS: u64 = 10_000_000;
/// The most worker actors (they share a pool of at most 32 connections).
const MAX_WORKERS: usize = 1000;

#[derive(Debug, Args)]
pub(crate) struct ThroughputArgs {
    /// Activities bulk-inserted and drained in each of the first two runs
    /// (1 to 10000000).
    #[arg(long, default_value_t = 20_000, value_parser = whole(1, MAX_TASKS, "activities"))]
    tasks: u64,
    /// Worker actors (1 to 1000).
    #[arg(long, default_value_t = 8, value_parser = whole(1, MAX_WORKERS, "workers"))]
    workers: usize,
    /// Activities each worker claims and runs at once in the batch run (1
    /// to 10000).
    #[arg(long, default_value_t = 100,
          value_parser = whole(1, MAX_CONCURRENCY, "activities at once (the runtime's limit)"))]
    batch: usize,
    /// Producer connections in the mixed run (1 to 256).
    #[arg(long, default_value_t = 4,
          value_parser = whole(1, MAX_BENCH_CONNECTIONS, "connections"))]
    producers: usize,
    /// Length of the mixed run, in seconds (1 to 3600).
    #[arg(long, default_value_t = 10,
          value_parser = whole(1, MAX_BENCH_SECONDS, "seconds (1 hour)"))]
    mixed_seconds: u64,
}

const QUEUE: &str = "throughput";

async fn start_workers(
    url: &str,
    queue: &str,
    workers: usize,
    concurrency: usize,
) -> Result<RuntimeHandle, String> {
    let mut config = RuntimeConfig::new(url);
    config.store.pool_size = (workers * 2).clamp(4, 32);
    let mut builder = Runtime::builder(config);
    for _ in 0..workers {
        builder = builder.activity_worker(
            ActivityWorker::new([queue], |_: ActivityTask| async {
                Ok::<_, String>(Value::Null)
            })
            .concurrency(concurrency),
        );
    }
    builder.start().await.map_err(|e| e.to_string())
}

fn completed(runtime: &RuntimeHandle, queue: &str) -> u64 {
    runtime
        .health()
        .counters(TaskKind::Activity, queue)
        .completed
}

/// Activities owned by an active instance, so that every completion writes
/// its `ActivityCompleted` event as a real workflow's would.
async fn prepare(client: &tokio_postgres::Client) -> Result<(), String> {
    client
        .batch_execute(
            "TRUNCATE instances, pending_events, history, activities, attributes;
             INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ('bench-owner', 'e', 0, 'owner')",
        )
        .await
        .map_err(|e| e.to_string())
}

async fn bulk_insert(client: &tokio_postgres::Client, tasks: u64) -> Result<(), String> {
    let count = i64::try_from(tasks).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, schedule_event_id)
             SELECT 'a' || n, 'bench-owner', 'e', 11, 'throughput', now(), n FROM generate_series(1, $1::bigint) n",
            &[&count],
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn drain(
    label: &str,
    url: &str,
    workers: usize,
    concurrency: usize,
    tasks: u64,
) -> Result<f64, String> {
    let client = connect(url).await?;
    prepare(&client).await?;
    bulk_insert(&client, tasks).await?;
    let drain = Drain {
        queue: QUEUE,
        workers,
        concurrency,
        limit: Duration::from_secs(300),
    };
    time_drain(label, url, &drain, tasks).await
}

/// How a backlog already written is drained: by `workers` workers of
/// `concurrency` on `queue`, given up after `limit`.
pub(crate) struct Drain<'a> {
    pub(crate) queue: &'a str,
    pub(crate) workers: usize,
    pub(crate) concurrency: usize,
    pub(crate) limit: Duration,
}

/// Starts a runtime that drains the `tasks` activities waiting on
/// `drain.queue`: tasks per second from its start to the last completion
/// (`bench scale`'s drain too).
pub(crate) async fn time_drain(
    label: &str,
    url: &str,
    drain: &Drain<'_>,
    tasks: u64,
) -> Result<f64, String> {
    let started = Instant::now();
    let runtime = start_workers(url, drain.queue, drain.workers, drain.concurrency).await?;
    let mut progress = Progress::new(label, tasks);
    loop {
        let done = completed(&runtime, drain.queue);
        progress.tick(done);
        if done >= tasks {
            break;
        }
        if started.elapsed() > drain.limit {
            runtime.shutdown(Duration::from_secs(5)).await;
            return Err(format!(
                "{label}: only {done} of {tasks} drained in {} s",
                drain.limit.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(tasks as f64 / elapsed.as_secs_f64())
}

async fn mixed(url: &str, args: &ThroughputArgs) -> Result<f64, String> {
    let client = connect(url).await?;
    prepare(&client).await?;
    let runtime = start_workers(url, QUEUE, args.workers, args.batch).await?;
    let window = Duration::from_secs(args.mixed_seconds);
    let stop_at = Instant::now() + window;
    let mut producers = Vec::new();
    for p in 0..args.producers {
        let producer = connect(url).await?;
        producers.push(async move {
            let insert = producer
                .prepare(
                    "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, schedule_event_id)
                     SELECT $1 || '-' || n, 'bench-owner', 'e', 11, 'throughput', now(), n FROM generate_series(1, 10) n",
                )
                .await
                .map_err(|e| e.to_string())?;
            let mut batch = 0u64;
            while Instant::now() < stop_at {
                producer
                    .execute(&insert, &[&format!("m{p}-{batch}")])
                    .await
                    .map_err(|e| e.to_string())?;
                batch += 1;
            }
            Ok::<_, String>(batch * 10)
        });
    }
    let before = completed(&runtime, QUEUE);
    let started = Instant::now();
    let produced: u64 = futures::future::try_join_all(producers)
        .await?
        .into_iter()
        .sum();
    let done = completed(&runtime, QUEUE) - before;
    let elapsed = started.elapsed();
    runtime.shutdown(Duration::from_secs(5)).await;
    eprintln!(
        "  mixed: {produced} produced, {done} drained in {:.1} s",
        elapsed.as_secs_f64()
    );
    Ok(done as f64 / elapsed.as_secs_f64())
}

pub(crate) async fn run(server: Server, args: ThroughputArgs) -> Result<(Value, Value), String> {
    println!("throughput on {}", server.description);
    let description = server.description.clone();
    let single = drain("one at a time", &server.url, args.workers, 1, args.tasks).await?;
    let batched = drain("batches", &server.url, args.workers, args.batch, args.tasks).await?;
    let mixed = mixed(&server.url, &args).await?;
    server.close().await;
    println!("{:<34} {:>12}", "run", "tasks/s");
    println!(
        "{:<34} {:>12.0}",
        format!("{} workers, one at a time", args.workers),
        single
    );
    println!(
        "{:<34} {:>12.0}",
        format!("{} workers, batches of {}", args.workers, args.batch),
        batched
    );
    println!(
        "{:<34} {:>12.0}",
        format!("mixed, {} producers", args.producers),
        mixed
    );
    let config = json!({
        "tasks": args.tasks,
        "workers": args.workers,
        "batch": args.batch,
        "producers": args.producers,
        "mixed_seconds": args.mixed_seconds,
        "server": description,
    });
    let results = json!({
        "tasks_per_sec": single,
        "batch_tasks_per_sec": batched,
        "mixed_tasks_per_sec": mixed,
    });
    Ok((config, results))
}
