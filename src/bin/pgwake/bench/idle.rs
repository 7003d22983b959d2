//! `pgwake bench idle`: what idle workers cost the database, in statements
//! per second, with notifications on (a worker sleeps until it is woken, or
//! for its 60 s fallback) and off (every worker polls every 500 ms).
//!
//! Counted from `pg_stat_database` (`xact_commit + xact_rollback` of the
//! bench database) over a window, since `pg_stat_statements` needs
//! `shared_preload_libraries`. Nothing completes while idle and the store's
//! statements are prepared once per connection, so each of the workers'
//! statements is one transaction; the measurement's own are subtracted.
//!
//! Except the listeners': PostgreSQL (15 and later) adds a backend's
//! transactions to `pg_stat_database` only when it flushes table
//! statistics, or when it disconnects, and a listener's `SELECT 1` pings
//! touch no table, so they stay out of sight while it lives. They are
//! counted from `pg_stat_activity` instead (see [`ListenerStatements`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use pgwake::{ActivityTask, ActivityWorker, Runtime, RuntimeConfig, RuntimeHandle, TaskKind};
use serde_json::{json, Value};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{connect, row, Progress, Server};
use crate::bounds::{whole, MAX_BENCH_SECONDS};

/// The most idle worker actors (each is one actor; they share the pool).
const MAX_WORKERS: usize = 10_000;

#[derive(Debug, Args)]
pub(crate) struct IdleArgs {
    /// Worker actors (concurrency 1 each), spread evenly over 4 queues (1
    /// to 10000).
    #[arg(long, default_value_t = 64, value_parser = whole(1, MAX_WORKERS, "workers"))]
    workers: usize,
    /// Length of each measured window, in seconds (1 to 3600).
    #[arg(long, default_value_t = 20,
          value_parser = whole(1, MAX_BENCH_SECONDS, "seconds (1 hour)"))]
    seconds: u64,
    /// Seconds between the listeners listening and the window's start. A
    /// backend that committed within 1 s of its last statistics flush holds
    /// its counts for up to 10 s while idle, so less than 11 s lets the
    /// start-up polls leak into the window. At most 3600.
    #[arg(long, default_value_t = 11,
          value_parser = whole(0, MAX_BENCH_SECONDS, "seconds (1 hour)"))]
    settle: u64,
}

const QUEUES: [&str; 4] = ["idle-0", "idle-1", "idle-2", "idle-3"];
/// How often the listeners' backends are sampled during a window.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The bench database's transaction count, as of the last flushes. One
/// simple-protocol statement, so one transaction, which is not in its own
/// result; `pg_stat_force_next_flush()` (PostgreSQL 15) flushes it, and
/// everything this connection did before, right after it, instead of up to
/// 10 s later. (It reads `pg_database`, so there are table statistics to
/// flush, and the transaction counts go with them.)
async fn transactions(client: &Client, force_flush: bool) -> Result<i64, String> {
    let sql = if force_flush {
        "SELECT pg_stat_force_next_flush(), xact_commit + xact_rollback
           FROM pg_stat_database WHERE datname = current_database()"
    } else {
        "SELECT NULL, xact_commit + xact_rollback
           FROM pg_stat_database WHERE datname = current_database()"
    };
    let messages = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(1).and_then(|v| v.parse::<i64>().ok()),
            _ => None,
        })
        .ok_or_else(|| "pg_stat_database has no row for the bench database".to_string())
}

async fn start_runtime(
    url: &str,
    workers: usize,
    notifications: bool,
) -> Result<RuntimeHandle, String> {
    // Defaults but for `notifications`: 60 s fallback while listening,
    // 500 ms while not (or with notifications off).
    let mut config = RuntimeConfig::new(url);
    config.notifications = notifications;
    let mut builder = Runtime::builder(config);
    for index in 0..workers {
        builder = builder.activity_worker(
            ActivityWorker::new([QUEUES[index % QUEUES.len()]], |_: ActivityTask| async {
                Ok::<_, String>(Value::Null)
            })
            .concurrency(1),
        );
    }
    let runtime = builder.start().await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !runtime.health().all_listening() {
        if Instant::now() > deadline {
            return Err("listeners did not start listening within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(runtime)
}

/// Claim queries made by the workers (each serves one queue, so the
/// per-queue counters add up to the workers' polls).
fn polls(runtime: &RuntimeHandle) -> u64 {
    let health = runtime.health();
    QUEUES
        .iter()
        .map(|q| health.counters(TaskKind::Activity, q).polls)
        .sum()
}

/// Statements run by the listeners' backends, from `pg_stat_activity`.
/// Each ping is one simple-protocol statement, at least 5 s after the
/// previous one, so a change of a backend's `query_start` between two
/// samples is one statement.
struct ListenerStatements {
    last: HashMap<String, String>,
    statements: u64,
    /// Samples taken: one transaction each on the measuring connection.
    samples: i64,
}

impl ListenerStatements {
    async fn start(stats: &Client) -> Result<Self, String> {
        let mut me = Self {
            last: HashMap::new(),
            statements: 0,
            samples: 0,
        };
        me.last = me.snapshot(stats).await?;
        Ok(me)
    }

    async fn snapshot(&mut self, stats: &Client) -> Result<HashMap<String, String>, String> {
        self.samples += 1;
        let messages = stats
            .simple_query(
                "SELECT pid, query_start FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name LIKE 'pgwake-listener:%'",
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some((
                    row.get(0)?.to_string(),
                    row.get(1).unwrap_or("").to_string(),
                )),
                _ => None,
            })
            .collect())
    }

    async fn sample(&mut self, stats: &Client) -> Result<(), String> {
        let now = self.snapshot(stats).await?;
        self.statements += now
            .iter()
            .filter(|(pid, started)| self.last.get(*pid) != Some(*started))
            .count() as u64;
        self.last = now;
        Ok(())
    }
}

struct Window {
    seconds: f64,
    /// What `pg_stat_database` saw in the window, ours subtracted.
    transactions: i64,
    /// The workers' polls, as the runtime counted them.
    polls: u64,
    listener_statements: u64,
}

impl Window {
    fn statements(&self) -> f64 {
        self.transactions.max(0) as f64 + self.listener_statements as f64
    }

    fn per_second(&self, count: f64) -> f64 {
        count / self.seconds
    }

    fn json(&self) -> Value {
        json!({
            "statements_per_sec": self.per_second(self.statements()),
            "polls_per_sec": self.per_second(self.polls as f64),
            "listener_statements_per_sec": self.per_second(self.listener_statements as f64),
            "transactions_per_sec": self.per_second(self.transactions as f64),
            "window_seconds": self.seconds,
        })
    }
}

async fn measure(
    url: &str,
    stats: &Client,
    args: &IdleArgs,
    notifications: bool,
    force_flush: bool,
) -> Result<Window, String> {
    let mode = if notifications {
        "notify on"
    } else {
        "notify off"
    };
    eprintln!("{mode}: starting {} idle workers", args.workers);
    let runtime = start_runtime(url, args.workers, notifications).await?;
    let mut progress = Progress::new(&format!("{mode}, settling (s)"), args.settle);
    let settled = Instant::now() + Duration::from_secs(args.settle);
    while Instant::now() < settled {
        tokio::time::sleep(SAMPLE_EVERY.min(settled.saturating_duration_since(Instant::now())))
            .await;
        progress.tick(args.settle - settled.saturating_duration_since(Instant::now()).as_secs());
    }

    let polls_before = polls(&runtime);
    let before = transactions(stats, force_flush).await?;
    let started = Instant::now();
    let mut listeners = ListenerStatements::start(stats).await?;
    let mut progress = Progress::new(&format!("{mode}, measuring (s)"), args.seconds);
    let end = started + Duration::from_secs(args.seconds);
    while Instant::now() < end {
        tokio::time::sleep(SAMPLE_EVERY.min(end.saturating_duration_since(Instant::now()))).await;
        listeners.sample(stats).await?;
        progress.tick(started.elapsed().as_secs());
    }
    let seconds = started.elapsed().as_secs_f64();
    let polls_after = polls(&runtime);
    // The first read flushes this connection's samples; the second sees them.
    transactions(stats, force_flush).await?;
    if !force_flush {
        // Before PostgreSQL 15 the statistics collector needs a moment.
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    let after = transactions(stats, force_flush).await?;
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(Window {
        seconds,
        // Ours: `before`, the samples, and the first of the two last reads.
        transactions: after - before - 2 - listeners.samples,
        polls: polls_after - polls_before,
        listener_statements: listeners.statements,
    })
}

pub(crate) async fn run(server: Server, args: IdleArgs) -> Result<(Value, Value), String> {
    println!("idle on {}", server.description);
    let description = server.description.clone();
    let stats = connect(&server.url).await?;
    let version: i32 = stats
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let force_flush = version >= 150_000;
    if !force_flush {
        eprintln!("note: PostgreSQL before 15 has no pg_stat_force_next_flush(); counts may lag");
    }

    let on = measure(&server.url, &stats, &args, true, force_flush).await?;
    let off = measure(&server.url, &stats, &args, false, force_flush).await?;
    drop(stats);
    server.close().await;

    let defaults = RuntimeConfig::new("postgres://localhost");
    let fallback = defaults.fallback_while_listening.as_secs_f64();
    let degraded_ms = defaults.fallback_while_degraded.as_millis();
    // The fallback timers' polls in the steady state (each fires 60 s ±20%
    // after the worker's previous poll), with whatever else this window saw.
    let fallback_rate = args.workers as f64 / fallback;
    let steady = on.per_second((on.statements() - on.polls as f64).max(0.0)) + fallback_rate;

    println!(
        "{} idle activity workers (concurrency 1) on {} queues, {:.0} s windows after {} s settling",
        args.workers,
        QUEUES.len(),
        on.seconds,
        args.settle
    );
    for (label, w) in [("notify on", &on), ("notify off", &off)] {
        row(
            label,
            &[
                (
                    "statements/s",
                    format!("{:.2}", w.per_second(w.statements())),
                ),
                ("polls/s", format!("{:.2}", w.per_second(w.polls as f64))),
                (
                    "listener/s",
                    format!("{:.2}", w.per_second(w.listener_statements as f64)),
                ),
                (
                    "transactions/s",
                    format!("{:.2}", w.per_second(w.transactions as f64)),
                ),
            ],
        );
    }
    println!(
        "statements/s: every transaction pg_stat_database saw in the bench database (the measurement's own \
         subtracted; the workers' polls are one each, the runtime's count is polls/s) plus the listeners' \
         pings (listener/s: one SELECT 1 per listener after 5 s without traffic, 2 listeners), counted from \
         pg_stat_activity because PostgreSQL adds a backend's transactions to pg_stat_database only along \
         with table statistics or when it disconnects, and a ping touches no table. It also holds \
         autovacuum's visits to the database (a few transactions each, once per autovacuum_naptime), and \
         the backends' unflushed counts (up to 1 s of polls each) blur both ends of the window."
    );
    println!(
        "notify on: workers sleep until notified; their fallback timer is {fallback:.0} s (±20%), first armed \
         as the listeners start listening. This window ({}-{} s after that) saw {} polls; in the steady state \
         the fallback adds {} / {fallback:.0} s = {fallback_rate:.2} polls/s, so expect about {steady:.2} \
         statements/s.{}",
        args.settle,
        args.settle + args.seconds,
        on.polls,
        args.workers,
        if args.settle + args.seconds < 72 {
            " Use --seconds 80 (or more) for a window that holds the first fallback round."
        } else {
            ""
        }
    );
    let times = if on.statements() > 0.0 {
        format!(
            "{:.0} times as many statements",
            off.statements() / on.statements()
        )
    } else {
        "far more statements".to_string()
    };
    println!(
        "notify off: poll-only mode, every worker polls every {degraded_ms} ms (fallback_while_degraded): \
         {times}, which is the point of the comparison."
    );

    let mut on_json = on.json();
    on_json["steady_state_estimate_per_sec"] = json!(steady);
    let results = json!({ "notify_on": on_json, "notify_off": off.json() });
    let config = json!({
        "workers": args.workers,
        "worker_concurrency": 1,
        "queues": QUEUES.len(),
        "seconds": args.seconds,
        "settle_seconds": args.settle,
        "fallback_while_listening_s": fallback,
        "fallback_while_degraded_ms": degraded_ms as u64,
        "server": description,
    });
    Ok((config, results))
}
