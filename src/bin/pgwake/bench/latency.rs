//! `pgwake bench latency`: the time from just before an activity is
//! enqueued to the first line of its handler, one activity at a time, by
//! the three paths that can wake a worker.

use std::time::{Duration, Instant};

use clap::Args;
use pgwake::{
    ActivityTask, ActivityWorker, InstanceRef, Queue, Runtime, RuntimeConfig, RuntimeHandle,
};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{connect, row, Latencies, Progress, Server};
use crate::bounds::{decimal, whole};

/// The most activities one mode enqueues (measured, unmeasured or steady).
const MAX_SAMPLES: u64 = 1_000_000;
/// The most polling samples: each waits up to 200 ms, so about 30 minutes.
const MAX_POLL_SAMPLES: u64 = 10_000;
/// The fastest steady load, in activities per second.
const MAX_RATE: f64 = 100_000.0;
/// The slowest: one activity every 10 seconds.
const MIN_RATE: f64 = 0.1;

#[derive(Debug, Args)]
pub(crate) struct LatencyArgs {
    /// Measured activities per mode (local and remote; 1 to 1000000).
    #[arg(long, default_value_t = 1000, value_parser = whole(1, MAX_SAMPLES, "activities"))]
    samples: u64,
    /// Unmeasured activities before each mode (at most 1000000).
    #[arg(long, default_value_t = 100, value_parser = whole(0, MAX_SAMPLES, "activities"))]
    warmup: u64,
    /// Measured activities in the polling mode (each waits up to 200 ms; 1
    /// to 10000).
    #[arg(long, default_value_t = 100,
          value_parser = whole(1, MAX_POLL_SAMPLES, "activities (each waits up to 200 ms)"))]
    poll_samples: u64,
    /// Also measure under a steady load of this many activities per second
    /// (0.1 to 100000).
    #[arg(long, value_parser = decimal(MIN_RATE, MAX_RATE, "activities per second"))]
    rate: Option<f64>,
    /// Activities enqueued in the steady-load variant (1 to 1000000).
    #[arg(long, default_value_t = 3000, value_parser = whole(1, MAX_SAMPLES, "activities"))]
    steady_samples: u64,
}

const QUEUE: &str = "latency";
/// go-workflows' default polling interval.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// The index (`input["i"]`) and first instant of each handler run.
pub(crate) type Started = mpsc::UnboundedReceiver<(u64, Instant)>;

fn owner() -> InstanceRef {
    // No such instance: results are dropped instead of piling up as events.
    InstanceRef {
        instance_id: "bench-latency".into(),
        execution_id: "e".into(),
    }
}

/// A runtime with one activity worker on `queue` whose handler reports its
/// index and first instant, started and, with notifications on, listening
/// and idle: what every wake-up measurement starts from (`bench scale`'s
/// too).
pub(crate) async fn start_runtime(
    url: &str,
    queue: &str,
    notifications: bool,
) -> Result<(RuntimeHandle, Started), String> {
    let (sender, started) = mpsc::unbounded_channel();
    let worker = ActivityWorker::new([queue], move |task: ActivityTask| {
        // The handler's first line: the end of the measured interval.
        let at = Instant::now();
        let sender = sender.clone();
        async move {
            let _ = sender.send((task.input["i"].as_u64().unwrap_or(u64::MAX), at));
            Ok::<_, String>(Value::Null)
        }
    })
    .concurrency(16);
    let mut config = RuntimeConfig::new(url);
    config.notifications = notifications;
    config.fallback_while_degraded = POLL_INTERVAL;
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runtime.health().all_listening() {
        if Instant::now() > deadline {
            return Err("listeners did not start listening within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the workers' first polls finish, so that they are idle and waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok((runtime, started))
}

async fn wait_for(started: &mut Started, index: u64) -> Result<Instant, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), started.recv()).await {
            Ok(Some((i, at))) if i == index => return Ok(at),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the workers stopped".into()),
            Err(_) => return Err(format!("activity {index} did not start within 30 s")),
        }
    }
}

/// Waits until the worker has recorded every result and its follow-up poll
/// came back empty: only then does the next enqueue measure a wake-up, and
/// not a poll that happened to follow the previous task.
async fn wait_idle(runtime: &RuntimeHandle) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = runtime.health().counters(pgwake::TaskKind::Activity, QUEUE);
        // One task per claiming poll here, so finished polls = empty + claimed.
        if c.completed == c.claimed && c.polls == c.empty_polls + c.claimed {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the worker did not settle within 30 s: {c:?}"));
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Enqueues `warmup + samples` activities one at a time with `enqueue`,
/// each once the worker is idle (and, when `random_phase` is set, after a
/// random part of the poll interval, as arrivals fall in a polling worker's
/// cycle), recording the latency of the last `samples`.
async fn measure<F, Fut>(
    label: &str,
    runtime: &RuntimeHandle,
    (warmup, samples): (u64, u64),
    random_phase: Option<Duration>,
    started: &mut Started,
    mut enqueue: F,
) -> Result<Latencies, String>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut latencies = Latencies::new();
    let mut progress = Progress::new(label, warmup + samples);
    for i in 0..warmup + samples {
        wait_idle(runtime).await?;
        if let Some(cycle) = random_phase {
            tokio::time::sleep(cycle.mul_f64(fastrand::f64())).await;
        }
        let before = Instant::now();
        enqueue(i).await?;
        let handler_started = wait_for(started, i).await?;
        if i >= warmup {
            latencies.record(handler_started.duration_since(before));
        }
        progress.tick(i + 1);
    }
    Ok(latencies)
}

pub(crate) async fn run(server: Server, args: LatencyArgs) -> Result<(Value, Value), String> {
    println!("latency on {}", server.description);
    let server_description = server.description.clone();
    let queue = Queue::new(QUEUE).map_err(|e| e.to_string())?;
    let remote = connect(&server.url).await?;
    // A plain connection that sets nothing: the statement-level trigger
    // notifies, as it would for any writer outside pgwake.
    let insert = remote
        .prepare(
            "WITH attrs AS (INSERT INTO attributes (event_id, instance_id, execution_id, data)
                            VALUES ($1, 'bench-latency', 'e', $2))
             INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, schedule_event_id)
             VALUES ($1, 'bench-latency', 'e', 11, 'latency', now(), 0)",
        )
        .await
        .map_err(|e| e.to_string())?;
    let plain_insert = |prefix: &'static str| {
        let (remote, insert) = (&remote, &insert);
        move |i: u64| async move {
            let data = serde_json::to_vec(&json!({ "name": "bench", "input": { "i": i } }))
                .unwrap_or_default();
            remote
                .execute(insert, &[&format!("{prefix}{i}"), &data])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };

    let (runtime, mut started) = start_runtime(&server.url, QUEUE, true).await?;
    let store = runtime.store().clone();
    let local = measure(
        "local",
        &runtime,
        (args.warmup, args.samples),
        None,
        &mut started,
        |i| {
            let store = store.clone();
            let queue = queue.clone();
            async move {
                store
                    .enqueue_activity(&owner(), &queue, "bench", json!({ "i": i }))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    let remote_latencies = measure(
        "remote",
        &runtime,
        (args.warmup, args.samples),
        None,
        &mut started,
        plain_insert("r"),
    )
    .await?;

    let steady = match args.rate {
        Some(rate) => {
            Some(steady_load(&runtime, &mut started, &queue, rate, args.steady_samples).await?)
        }
        None => None,
    };
    runtime.shutdown(Duration::from_secs(5)).await;

    let (polling, mut poll_started) = start_runtime(&server.url, QUEUE, false).await?;
    let poll = measure(
        "poll",
        &polling,
        (5, args.poll_samples),
        Some(POLL_INTERVAL),
        &mut poll_started,
        plain_insert("p"),
    )
    .await?;
    polling.shutdown(Duration::from_secs(5)).await;
    server.close().await;

    let ratio = poll.quantile_ms(0.5) / remote_latencies.quantile_ms(0.5).max(0.001);
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9}",
        "mode", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (label, l) in [
        ("local (in-process)", &local),
        ("remote (trigger NOTIFY)", &remote_latencies),
        ("poll (200 ms)", &poll),
    ] {
        println!(
            "{label:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            l.quantile_ms(0.5),
            l.quantile_ms(0.9),
            l.quantile_ms(0.99),
            l.max_ms()
        );
    }
    println!("poll p50 / remote p50: {ratio:.0}x");
    let mut results = json!({
        "local": local.summary(),
        "remote": remote_latencies.summary(),
        "poll": poll.summary(),
        "poll_over_remote_p50": ratio,
    });
    if let Some(steady) = steady {
        row(
            "steady (local)",
            &[
                (
                    "rate",
                    format!("{:.0}/s", steady["rate"].as_f64().unwrap_or(0.0)),
                ),
                (
                    "p50",
                    format!("{:.3}", steady["p50_ms"].as_f64().unwrap_or(0.0)),
                ),
                (
                    "p95",
                    format!("{:.3}", steady["p95_ms"].as_f64().unwrap_or(0.0)),
                ),
                (
                    "p99",
                    format!("{:.3}", steady["p99_ms"].as_f64().unwrap_or(0.0)),
                ),
            ],
        );
        results["steady"] = steady;
    }
    let config = json!({
        "samples": args.samples,
        "warmup": args.warmup,
        "poll_samples": args.poll_samples,
        "poll_interval_ms": POLL_INTERVAL.as_millis() as u64,
        "rate": args.rate,
        "steady_samples": args.steady_samples,
        "worker_concurrency": 16,
        "server": server_description,
    });
    Ok((config, results))
}

/// Enqueues at a fixed rate without waiting for each to start, and
/// measures each one's latency: what a loaded system's wake-ups look like.
async fn steady_load(
    runtime: &RuntimeHandle,
    started: &mut Started,
    queue: &Queue,
    rate: f64,
    samples: u64,
) -> Result<Value, String> {
    let base = 1_000_000u64;
    let mut enqueued_at = Vec::with_capacity(samples as usize);
    let mut latencies = Latencies::new();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut progress = Progress::new("steady", samples);
    for n in 0..samples {
        ticker.tick().await;
        enqueued_at.push(Instant::now());
        runtime
            .store()
            .enqueue_activity(&owner(), queue, "bench", json!({ "i": base + n }))
            .await
            .map_err(|e| e.to_string())?;
        while let Ok((i, at)) = started.try_recv() {
            if let Some(before) = i
                .checked_sub(base)
                .and_then(|k| enqueued_at.get(k as usize))
            {
                latencies.record(at.duration_since(*before));
            }
        }
        progress.tick(n + 1);
    }
    while latencies.len() < samples {
        let (i, at) = tokio::time::timeout(Duration::from_secs(30), started.recv())
            .await
            .map_err(|_| "steady-load activities did not all start within 30 s".to_string())?
            .ok_or("the workers stopped")?;
        if let Some(before) = i
            .checked_sub(base)
            .and_then(|k| enqueued_at.get(k as usize))
        {
            latencies.record(at.duration_since(*before));
        }
    }
    Ok(json!({
        "rate": rate,
        "p50_ms": latencies.quantile_ms(0.50),
        "p95_ms": latencies.quantile_ms(0.95),
        "p99_ms": latencies.quantile_ms(0.99),
    }))
}
