//! `pgwake bench scale`: whether pgwake's cost grows with the size of its
//! tables. The same three measurements (one claim, one wake-up, a drain) run
//! on a freshly migrated, empty database and on one beside it on the same
//! server, shaped like a production database some months in: a million
//! finished instances with their histories, a backlog on another queue,
//! activities leased to a worker that is gone, and timers due in an hour.
//!
//! Every populated row sits on a queue other than the measured ones, or is
//! not claimable: the populated run does the empty run's work, so any
//! difference is the price of the rows around it. The two databases take
//! turns, measurement by measurement and round by round, and the figures
//! are medians over the rounds: a machine that runs slower for a minute
//! slows both sides, not only the one measured then.

use std::time::{Duration, Instant};

use clap::Args;
use pgwake::{InstanceRef, Queue, Store, StoreOptions, WorkerId};
use serde_json::{json, Value};

use super::latency;
use super::throughput::{time_drain, Drain};
use super::{connect, median, Latencies, Progress, Server};
use crate::bounds::whole;

/// The most finished instances populated.
const MAX_FINISHED: u64 = 10_000_000;
/// The most history events per finished instance.
const MAX_HISTORY_PER_INSTANCE: u64 = 100;
/// The most rows of each other kind populated (backlog, leased, timers).
const MAX_ROWS: u64 = 10_000_000;
/// The most measured claims or wake-ups (wake-ups come every 20 ms, so
/// about 33 minutes).
const MAX_SAMPLES: u64 = 100_000;
/// The most activities drained.
const MAX_DRAIN: u64 = 10_000_000;
/// The most rounds of measurements.
const MAX_ROUNDS: u64 = 100;

#[derive(Debug, Args)]
pub(crate) struct ScaleArgs {
    /// Finished instances in the populated database, on queue "done" (0 to
    /// 10000000).
    #[arg(long, default_value_t = 1_000_000,
          value_parser = whole(0, MAX_FINISHED, "instances"))]
    finished: u64,
    /// History events of each finished instance, each with its attributes
    /// row (1 to 100).
    #[arg(long, default_value_t = 4,
          value_parser = whole(1, MAX_HISTORY_PER_INSTANCE, "events"))]
    history_per_instance: u64,
    /// Ready activities waiting on queue "backlog" (0 to 10000000).
    #[arg(long, default_value_t = 300_000, value_parser = whole(0, MAX_ROWS, "activities"))]
    backlog: u64,
    /// Activities on the measured queue "busy", leased for another hour to
    /// a worker that is gone (0 to 10000000).
    #[arg(long, default_value_t = 30_000, value_parser = whole(0, MAX_ROWS, "activities"))]
    leased: u64,
    /// Timers: pending events visible in an hour, of active instances on
    /// queue "sleepy" (0 to 10000000).
    #[arg(long, default_value_t = 50_000, value_parser = whole(0, MAX_ROWS, "timers"))]
    timers: u64,
    /// Measured claims, each of one activity (1 to 100000).
    #[arg(long, default_value_t = 300, value_parser = whole(1, MAX_SAMPLES, "claims"))]
    claims: u64,
    /// Measured wake-ups, one activity every 20 ms (1 to 100000).
    #[arg(long, default_value_t = 300, value_parser = whole(1, MAX_SAMPLES, "wake-ups"))]
    wakes: u64,
    /// Activities bulk-inserted and drained (1 to 10000000).
    #[arg(long, default_value_t = 20_000, value_parser = whole(1, MAX_DRAIN, "activities"))]
    drain: u64,
    /// Rounds of the three measurements on each database; the figures are
    /// their medians (1 to 100).
    #[arg(long, default_value_t = 3, value_parser = whole(1, MAX_ROUNDS, "rounds"))]
    rounds: u64,
}

/// The queue of the claims and the wake-ups: in the populated database it
/// also holds the leased activities, which every claim must step over.
const BUSY_QUEUE: &str = "busy";
const DRAIN_QUEUE: &str = "drain";
/// Unmeasured claims and wake-ups first: the first of each prepares its
/// statements on a new connection.
const WARMUP: u64 = 5;
/// The pause between two measured wake-ups.
const WAKE_INTERVAL: Duration = Duration::from_millis(20);
const CLAIM_LEASE: Duration = Duration::from_secs(60);
/// The claim's batch size, as a worker of concurrency 100 asks for.
const CLAIM_MAX: usize = 100;
const DRAIN_WORKERS: usize = 8;
const DRAIN_CONCURRENCY: usize = 100;
/// How long a drain may take before the run is abandoned.
const DRAIN_LIMIT: Duration = Duration::from_secs(600);

/// The active instance that owns every measured activity, so that each
/// completion writes its `ActivityCompleted` event as a real workflow's
/// would. Its queue has no workers: those events stay where they are. The
/// SQL below names it too.
const OWNER_INSTANCE: &str = "scale-owner";
const OWNER_EXECUTION: &str = "e";

fn owner() -> InstanceRef {
    InstanceRef {
        instance_id: OWNER_INSTANCE.into(),
        execution_id: OWNER_EXECUTION.into(),
    }
}

/// Removes what the previous measurement left (its activities, their
/// attributes and the events their completions wrote), through the
/// indexes that lead with `instance_id`, and recreates the owner. Run
/// before each measurement on both databases, so that each starts from
/// the same rows.
const RESET_OWNER_SQL: &str = "
    DELETE FROM activities WHERE instance_id = 'scale-owner';
    DELETE FROM pending_events WHERE instance_id = 'scale-owner';
    DELETE FROM attributes WHERE instance_id = 'scale-owner';
    DELETE FROM history WHERE instance_id = 'scale-owner';
    DELETE FROM instances WHERE instance_id = 'scale-owner';
    INSERT INTO instances (instance_id, execution_id, state, queue)
    VALUES ('scale-owner', 'e', 0, 'owner')";

/// The drain's activities, as `pgwake bench throughput` inserts them.
const DRAIN_INSERT_SQL: &str = "
    INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, schedule_event_id)
    SELECT 'drain-' || n, 'scale-owner', 'e', 11, 'drain', now(), n FROM generate_series(1, $1::bigint) n";

/// Finished instances (state 2, `InstanceState::Finished`), completed over
/// the last 30 days. Ids are uuid-shaped, as go-workflows' and pgwake's
/// execution ids are, so that the indexes have their real width.
const FINISHED_INSTANCES_SQL: &str = "
    INSERT INTO instances (instance_id, execution_id, metadata, state, queue, created_at, completed_at)
    SELECT 'done-' || n, md5('done-' || n)::uuid::text, convert_to('{\"workflow\": \"bench\"}', 'UTF8'),
           2, 'done', t.at, t.at + interval '2 seconds'
      FROM generate_series(1, $1::bigint) n,
           LATERAL (SELECT now() - interval '30 days' + (n % 2592000) * interval '1 second' AS at) t";

/// Each finished instance's history: started, then activities scheduled
/// and completed in turn, then finished. `$2` events per instance.
const FINISHED_HISTORY_SQL: &str = "
    INSERT INTO history (event_id, sequence_id, instance_id, execution_id, event_type, timestamp, schedule_event_id)
    SELECT md5('done-' || n || '-' || k)::uuid::text, k, 'done-' || n, md5('done-' || n)::uuid::text,
           CASE WHEN k = 1 THEN 1 WHEN k = $2 THEN 2 WHEN k % 2 = 0 THEN 11 ELSE 12 END,
           now() - interval '30 days',
           CASE WHEN k = 1 OR k = $2 THEN 0 WHEN k % 2 = 0 THEN k ELSE k - 1 END
      FROM generate_series(1, $1::bigint) n CROSS JOIN generate_series(1, $2::bigint) k";

/// An attributes row for every history event above, as every real event
/// has one.
const FINISHED_ATTRIBUTES_SQL: &str = "
    INSERT INTO attributes (event_id, instance_id, execution_id, data)
    SELECT md5('done-' || n || '-' || k)::uuid::text, 'done-' || n, md5('done-' || n)::uuid::text,
           convert_to(json_build_object('name', 'bench', 'result', json_build_object('n', n, 'k', k))::text, 'UTF8')
      FROM generate_series(1, $1::bigint) n CROSS JOIN generate_series(1, $2::bigint) k";

/// `$1` active instances named `$2-<n>` on queue `$3`: the owners of the
/// backlog, the leased activities and the timers, one each.
const ACTIVE_INSTANCES_SQL: &str = "
    INSERT INTO instances (instance_id, execution_id, metadata, state, queue, created_at)
    SELECT $2::text || '-' || n, md5($2::text || '-' || n)::uuid::text, convert_to('{\"workflow\": \"bench\"}', 'UTF8'),
           0, $3::text, now() - interval '1 hour'
      FROM generate_series(1, $1::bigint) n";

/// One activity for each instance `$2-<n>`, on queue `$3`; when `$4`,
/// leased for another hour to worker 'gone' (its lease never runs out
/// during the run, so no claim takes it). With its attributes row.
const ACTIVITIES_SQL: &str = "
    WITH attrs AS (
      INSERT INTO attributes (event_id, instance_id, execution_id, data)
      SELECT md5($2::text || '-a-' || n)::uuid::text, $2::text || '-' || n, md5($2::text || '-' || n)::uuid::text,
             convert_to(json_build_object('name', 'bench', 'input', json_build_object('n', n), 'queue', $3::text)::text, 'UTF8')
        FROM generate_series(1, $1::bigint) n)
    INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp,
                            schedule_event_id, locked_until, worker, lease_id)
    SELECT md5($2::text || '-a-' || n)::uuid::text, $2::text || '-' || n, md5($2::text || '-' || n)::uuid::text, 11, $3::text,
           now() - interval '1 hour', 2,
           CASE WHEN $4 THEN now() + interval '1 hour' END,
           CASE WHEN $4 THEN 'gone' END,
           CASE WHEN $4 THEN n END
      FROM generate_series(1, $1::bigint) n";

/// A timer (`TimerFired`, 15) visible in an hour for each instance
/// `$2-<n>`, with its attributes row.
const TIMERS_SQL: &str = "
    WITH attrs AS (
      INSERT INTO attributes (event_id, instance_id, execution_id, data)
      SELECT md5($2::text || '-t-' || n)::uuid::text, $2::text || '-' || n, md5($2::text || '-' || n)::uuid::text,
             convert_to('null', 'UTF8')
        FROM generate_series(1, $1::bigint) n)
    INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                                schedule_event_id, visible_at)
    SELECT md5($2::text || '-t-' || n)::uuid::text, $2::text || '-' || n, md5($2::text || '-' || n)::uuid::text, 15,
           now(), 2, now() + interval '1 hour'
      FROM generate_series(1, $1::bigint) n";

/// The three figures of one database in one round.
struct Figures {
    claim: Latencies,
    wake: Latencies,
    tasks_per_sec: f64,
}

impl Figures {
    fn to_json(&self) -> Value {
        json!({
            "claim_p50_ms": self.claim.quantile_ms(0.50),
            "claim_p99_ms": self.claim.quantile_ms(0.99),
            "wake_p50_ms": self.wake.quantile_ms(0.50),
            "wake_p99_ms": self.wake.quantile_ms(0.99),
            "tasks_per_sec": self.tasks_per_sec,
        })
    }
}

/// One database's figures: each the median of its rounds' figures.
struct Medians {
    claim_p50_ms: f64,
    claim_p99_ms: f64,
    wake_p50_ms: f64,
    wake_p99_ms: f64,
    tasks_per_sec: f64,
}

impl Medians {
    fn of(rounds: &[Figures]) -> Self {
        let median_of =
            |figure: fn(&Figures) -> f64| median(&rounds.iter().map(figure).collect::<Vec<_>>());
        Self {
            claim_p50_ms: median_of(|f| f.claim.quantile_ms(0.50)),
            claim_p99_ms: median_of(|f| f.claim.quantile_ms(0.99)),
            wake_p50_ms: median_of(|f| f.wake.quantile_ms(0.50)),
            wake_p99_ms: median_of(|f| f.wake.quantile_ms(0.99)),
            tasks_per_sec: median_of(|f| f.tasks_per_sec),
        }
    }

    fn to_json(&self, rounds: &[Figures]) -> Value {
        json!({
            "claim_p50_ms": self.claim_p50_ms,
            "claim_p99_ms": self.claim_p99_ms,
            "wake_p50_ms": self.wake_p50_ms,
            "wake_p99_ms": self.wake_p99_ms,
            "tasks_per_sec": self.tasks_per_sec,
            "rounds": rounds.iter().map(Figures::to_json).collect::<Vec<_>>(),
        })
    }
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

async fn reset_owner(url: &str) -> Result<(), String> {
    connect(url)
        .await?
        .batch_execute(RESET_OWNER_SQL)
        .await
        .map_err(text)
}

/// One database of the comparison.
struct Side<'a> {
    label: &'static str,
    url: &'a str,
    rounds: Vec<Figures>,
}

/// One round: claims, wake-ups and the drain, each after a reset of the
/// owner, each run on both databases before the next, the order of the
/// two alternating from round to round.
async fn round(round: u64, sides: &mut [Side<'_>; 2], args: &ScaleArgs) -> Result<(), String> {
    let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
    let mut claimed: [Option<Latencies>; 2] = [None, None];
    let mut woken: [Option<Latencies>; 2] = [None, None];
    let mut drained = [0.0; 2];
    for &s in &order {
        let label = format!("round {}, {}", round + 1, sides[s].label);
        reset_owner(sides[s].url).await?;
        claimed[s] = Some(claims(&label, sides[s].url, args.claims).await?);
    }
    for &s in &order {
        let label = format!("round {}, {}", round + 1, sides[s].label);
        reset_owner(sides[s].url).await?;
        woken[s] = Some(wakes(&label, sides[s].url, args.wakes).await?);
    }
    for &s in &order {
        let label = format!("round {}, {}", round + 1, sides[s].label);
        reset_owner(sides[s].url).await?;
        drained[s] = drain(&label, sides[s].url, args.drain).await?;
        reset_owner(sides[s].url).await?;
    }
    for (s, side) in sides.iter_mut().enumerate() {
        if let (Some(claim), Some(wake)) = (claimed[s].take(), woken[s].take()) {
            side.rounds.push(Figures {
                claim,
                wake,
                tasks_per_sec: drained[s],
            });
        }
    }
    Ok(())
}

/// Inserts one ready activity, times the claim that takes it, completes
/// it; `claims` times after the warm-up. Only the claim is timed: it is
/// the statement that searches the table.
async fn claims(label: &str, url: &str, claims: u64) -> Result<Latencies, String> {
    let mut options = StoreOptions::default();
    options.pool_size = 2;
    let store = Store::connect(url, options).await.map_err(text)?;
    let worker = WorkerId::unique("scale");
    let queues = [Queue::new(BUSY_QUEUE).map_err(text)?];
    let mut latencies = Latencies::new();
    let mut progress = Progress::new(&format!("{label}: claims"), WARMUP + claims);
    for i in 0..WARMUP + claims {
        store
            .enqueue_activity(&owner(), &queues[0], "bench", json!({ "i": i }))
            .await
            .map_err(text)?;
        let before = Instant::now();
        let poll = store
            .poll_activity_tasks_detailed(&worker, &queues, CLAIM_MAX, CLAIM_LEASE)
            .await
            .map_err(text)?;
        let took = before.elapsed();
        let [task] = poll.tasks.as_slice() else {
            return Err(format!(
                "claim {i} took {} activities, not the one just inserted",
                poll.tasks.len()
            ));
        };
        for outcome in store
            .complete_activity_tasks(&[(task, Ok(Value::Null))])
            .await
            .map_err(text)?
        {
            outcome.map_err(text)?;
        }
        if i >= WARMUP {
            latencies.record(took);
        }
        progress.tick(i + 1);
    }
    Ok(latencies)
}

/// Records the latency of wake-up `i`, which started at `at`, unless it is
/// part of the warm-up.
fn record(latencies: &mut Latencies, enqueued_at: &[Instant], (i, at): (u64, Instant)) {
    if i >= WARMUP {
        if let Some(before) = usize::try_from(i).ok().and_then(|i| enqueued_at.get(i)) {
            latencies.record(at.duration_since(*before));
        }
    }
}

/// Enqueues one activity every 20 ms through the runtime's store (as
/// `bench latency`'s local mode does: its commit wakes the worker in
/// process) and records each one's enqueue-to-handler time, the warm-up's
/// excepted.
async fn wakes(label: &str, url: &str, wakes: u64) -> Result<Latencies, String> {
    let (runtime, mut started) = latency::start_runtime(url, BUSY_QUEUE, true).await?;
    let queue = Queue::new(BUSY_QUEUE).map_err(text)?;
    let total = WARMUP + wakes;
    let mut enqueued_at = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut latencies = Latencies::new();
    let mut ticker = tokio::time::interval(WAKE_INTERVAL);
    // A slow enqueue delays the next instead of bunching those after it.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut progress = Progress::new(&format!("{label}: wake-ups"), total);
    for i in 0..total {
        ticker.tick().await;
        enqueued_at.push(Instant::now());
        let enqueued = runtime
            .store()
            .enqueue_activity(&owner(), &queue, "bench", json!({ "i": i }))
            .await;
        if let Err(e) = enqueued {
            runtime.shutdown(Duration::from_secs(5)).await;
            return Err(e.to_string());
        }
        while let Ok(start) = started.try_recv() {
            record(&mut latencies, &enqueued_at, start);
        }
        progress.tick(i + 1);
    }
    while latencies.len() < wakes {
        match tokio::time::timeout(Duration::from_secs(30), started.recv()).await {
            Ok(Some(start)) => record(&mut latencies, &enqueued_at, start),
            Ok(None) | Err(_) => {
                runtime.shutdown(Duration::from_secs(5)).await;
                return Err(format!(
                    "only {} of {wakes} wake-ups started within 30 s of the last",
                    latencies.len()
                ));
            }
        }
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(latencies)
}

/// Bulk-inserts `tasks` activities and drains them with 8 workers of
/// concurrency 100, as `bench throughput`'s batch run does; timed from the
/// runtime's start to the last completion.
async fn drain(label: &str, url: &str, tasks: u64) -> Result<f64, String> {
    let count = i64::try_from(tasks).unwrap_or(i64::MAX);
    connect(url)
        .await?
        .execute(DRAIN_INSERT_SQL, &[&count])
        .await
        .map_err(text)?;
    let drain = Drain {
        queue: DRAIN_QUEUE,
        workers: DRAIN_WORKERS,
        concurrency: DRAIN_CONCURRENCY,
        limit: DRAIN_LIMIT,
    };
    time_drain(&format!("{label}: drain"), url, &drain, tasks).await
}

/// Fills the database in a few set-based statements, then vacuums and
/// analyses it, as autovacuum would have by the time a database had grown
/// this way (left to autovacuum, the vacuum of the new rows would run
/// during the measurements, on the populated side only), and asks for a
/// checkpoint, so that the populated side does not start with gigabytes of
/// dirty buffers to write out. Returns how long it took and the database's
/// size in bytes.
async fn populate(url: &str, args: &ScaleArgs) -> Result<(Duration, i64), String> {
    let client = connect(url).await?;
    let started = Instant::now();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let (finished, per_instance) = (count(args.finished), count(args.history_per_instance));
    let step = |what: &str| {
        eprintln!(
            "  populating: {what} ({:.0} s)",
            started.elapsed().as_secs_f64()
        )
    };
    step("finished instances");
    client
        .execute(FINISHED_INSTANCES_SQL, &[&finished])
        .await
        .map_err(text)?;
    step("their history");
    client
        .execute(FINISHED_HISTORY_SQL, &[&finished, &per_instance])
        .await
        .map_err(text)?;
    step("the history's attributes");
    client
        .execute(FINISHED_ATTRIBUTES_SQL, &[&finished, &per_instance])
        .await
        .map_err(text)?;
    step("backlog, leased activities and timers");
    for (rows, prefix, queue) in [
        (args.backlog, "backlog", "backlog"),
        (args.leased, "busy", BUSY_QUEUE),
        (args.timers, "sleepy", "sleepy"),
    ] {
        client
            .execute(ACTIVE_INSTANCES_SQL, &[&count(rows), &prefix, &queue])
            .await
            .map_err(text)?;
    }
    for (rows, prefix, queue, leased) in [
        (args.backlog, "backlog", "backlog", false),
        (args.leased, "busy", BUSY_QUEUE, true),
    ] {
        client
            .execute(ACTIVITIES_SQL, &[&count(rows), &prefix, &queue, &leased])
            .await
            .map_err(text)?;
    }
    client
        .execute(TIMERS_SQL, &[&count(args.timers), &"sleepy"])
        .await
        .map_err(text)?;
    step("VACUUM ANALYZE");
    client.batch_execute("VACUUM ANALYZE").await.map_err(text)?;
    step("CHECKPOINT");
    if let Err(e) = client.batch_execute("CHECKPOINT").await {
        // CHECKPOINT needs a superuser or pg_checkpoint: without it the
        // server's own checkpoints write the pages out in their time.
        eprintln!("  no checkpoint ({e}); measuring without one");
    }
    let took = started.elapsed();
    let size: i64 = client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .map_err(text)?
        .get(0);
    Ok((took, size))
}

/// Populates the second database, then runs the rounds on both. Returns
/// how long populating took, the populated database's size and each side.
async fn measure_both<'a>(
    empty_url: &'a str,
    populated_url: &'a str,
    args: &ScaleArgs,
) -> Result<(Duration, i64, Side<'a>, Side<'a>), String> {
    let (populate_time, database_bytes) = populate(populated_url, args).await?;
    println!(
        "populated in {:.1} s: {} finished instances ({} history events), {} backlog, {} leased, {} timers; {:.0} MB",
        populate_time.as_secs_f64(),
        args.finished,
        args.finished * args.history_per_instance,
        args.backlog,
        args.leased,
        args.timers,
        database_bytes as f64 / 1e6
    );
    let mut sides = [
        Side {
            label: "empty",
            url: empty_url,
            rounds: Vec::new(),
        },
        Side {
            label: "populated",
            url: populated_url,
            rounds: Vec::new(),
        },
    ];
    for r in 0..args.rounds {
        round(r, &mut sides, args).await?;
    }
    let [empty, populated] = sides;
    Ok((populate_time, database_bytes, empty, populated))
}

pub(crate) async fn run(mut server: Server, args: ScaleArgs) -> Result<(Value, Value), String> {
    println!("scale on {}", server.description);
    let description = server.description.clone();
    let empty_url = server.url.clone();
    let populated_url = server.another_database().await?;
    // The databases are dropped whether or not the measurements succeed.
    let measured = measure_both(&empty_url, &populated_url, &args).await;
    server.close().await;
    let (populate_time, database_bytes, empty_side, populated_side) = measured?;
    let (empty, populated) = (
        Medians::of(&empty_side.rounds),
        Medians::of(&populated_side.rounds),
    );

    let ratio = |populated: f64, empty: f64| populated / empty.max(0.001);
    println!("medians of {} rounds", args.rounds);
    println!(
        "{:<22} {:>10} {:>10} {:>10}",
        "measure", "empty", "populated", "ratio"
    );
    let line = |label: &str, digits: usize, e: f64, p: f64| {
        println!(
            "{label:<22} {e:>10.digits$} {p:>10.digits$} {:>9.2}x",
            ratio(p, e)
        );
    };
    let (e, p) = (&empty, &populated);
    line("claim p50 ms", 3, e.claim_p50_ms, p.claim_p50_ms);
    line("claim p99 ms", 3, e.claim_p99_ms, p.claim_p99_ms);
    line("wake p50 ms", 3, e.wake_p50_ms, p.wake_p50_ms);
    line("wake p99 ms", 3, e.wake_p99_ms, p.wake_p99_ms);
    line("tasks/s", 0, e.tasks_per_sec, p.tasks_per_sec);

    let config = json!({
        "finished": args.finished,
        "history_per_instance": args.history_per_instance,
        "backlog": args.backlog,
        "leased": args.leased,
        "timers": args.timers,
        "claims": args.claims,
        "wakes": args.wakes,
        "drain": args.drain,
        "rounds": args.rounds,
        "warmup": WARMUP,
        "claim_max": CLAIM_MAX,
        "wake_interval_ms": WAKE_INTERVAL.as_millis() as u64,
        "drain_workers": DRAIN_WORKERS,
        "drain_concurrency": DRAIN_CONCURRENCY,
        "server": description,
    });
    let results = json!({
        "empty": empty.to_json(&empty_side.rounds),
        "populated": populated.to_json(&populated_side.rounds),
        "populated_over_empty": {
            "claim_p50": ratio(populated.claim_p50_ms, empty.claim_p50_ms),
            "wake_p50": ratio(populated.wake_p50_ms, empty.wake_p50_ms),
            "tasks_per_sec": ratio(populated.tasks_per_sec, empty.tasks_per_sec),
        },
        "populate_seconds": populate_time.as_secs_f64(),
        "populated_database_bytes": database_bytes,
    });
    Ok((config, results))
}
