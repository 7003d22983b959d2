//! `pgwake bench`: the figures the README publishes, each with the command
//! that reproduces it, written as JSON (`{"scenario", "config", "results"}`)
//! so that results can be compared across versions.
//!
//! Each scenario runs on its own throwaway PostgreSQL (durability off unless
//! `--durable`), or in a fresh database on `--database-url`'s server, which
//! is dropped afterwards.

mod idle;
mod latency;
mod notify_cost;
mod recovery;
mod scale;
mod throughput;
mod workflow;

use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use pgwake::testing::TestPostgres;
use serde_json::{json, Value};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
    /// Also write the results, as JSON, to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    /// On the throwaway server, keep fsync and synchronous_commit on (each
    /// commit waits for its WAL flush, as on a production server).
    #[arg(long, global = true)]
    durable: bool,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Enqueue-to-handler latency: in-process, through the trigger's NOTIFY, and by polling.
    Latency(latency::LatencyArgs),
    /// Tasks per second drained by workers, one by one, in batches, and mixed with producers.
    Throughput(throughput::ThroughputArgs),
    /// Statements per second that idle workers cost the database.
    Idle(idle::IdleArgs),
    /// Writer transactions per second without, with and around NOTIFY.
    NotifyCost(notify_cost::NotifyCostArgs),
    /// Time from the end of an outage to the first handler start.
    Recovery(recovery::RecoveryArgs),
    /// Typed workflows of three sequential activities: instances per
    /// second, the latency from one step's handler to the next's, and the
    /// cost of replaying a workflow task.
    ///
    /// The step latency runs from the end of step k's activity handler to
    /// the start of step k+1's: it includes recording the activity's
    /// result, the workflow task that follows (its claim, the executor, the
    /// decision's transaction), and scheduling the next activity. It is
    /// measured after the drain, on the warm runtime, with one instance
    /// running at a time (`--latency-workflows`), so no step waits behind
    /// another instance's tasks. The drain gives workflows per second.
    Workflow(workflow::WorkflowArgs),
    /// Whether pgwake's cost grows with its tables: the p50 of one claim,
    /// the enqueue-to-handler wake-up (one activity every 20 ms) and a
    /// drain's tasks per second (8 workers of concurrency 100), on an
    /// empty database and on a populated one beside it on the same server.
    /// The two take turns, measurement by measurement, for `--rounds`
    /// rounds; each figure is the median of its rounds.
    ///
    /// The populated database holds `--finished` finished instances on
    /// queue "done" with `--history-per-instance` history events each (and
    /// their attributes), a `--backlog` of ready activities on queue
    /// "backlog", `--leased` activities on the measured queue "busy" leased
    /// for an hour to a worker that is gone, and `--timers` pending events
    /// due in an hour on queue "sleepy"; each activity and timer is owned by
    /// an active instance of its own. It is filled with set-based SQL,
    /// vacuumed, analysed and checkpointed before the measurements.
    Scale(scale::ScaleArgs),
}

pub(crate) async fn run(url: Option<String>, args: BenchArgs) -> Result<(), String> {
    let (name, outcome) = match args.scenario {
        Scenario::Latency(a) => (
            "latency",
            latency::run(Server::open(url, args.durable).await?, a).await,
        ),
        Scenario::Throughput(a) => (
            "throughput",
            throughput::run(Server::open(url, args.durable).await?, a).await,
        ),
        Scenario::Idle(a) => (
            "idle",
            idle::run(Server::open(url, args.durable).await?, a).await,
        ),
        Scenario::NotifyCost(a) => (
            "notify-cost",
            notify_cost::run(Server::open(url, args.durable).await?, a).await,
        ),
        Scenario::Recovery(a) => ("recovery", recovery::run(url, args.durable, a).await),
        Scenario::Workflow(a) => (
            "workflow",
            workflow::run(Server::open(url, args.durable).await?, a).await,
        ),
        Scenario::Scale(a) => (
            "scale",
            scale::run(Server::open(url, args.durable).await?, a).await,
        ),
    };
    let (config, results) = outcome?;
    let document = json!({ "scenario": name, "config": config, "results": results });
    if let Some(path) = args.json {
        let text = serde_json::to_string_pretty(&document).map_err(|e| e.to_string())?;
        std::fs::write(&path, text + "\n")
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Where a scenario runs: a migrated database, on a throwaway server or on
/// the given one (then in a database of its own, dropped on [`Server::close`]).
pub(crate) struct Server {
    pub(crate) url: String,
    pub(crate) description: String,
    owned: Option<TestPostgres>,
    /// The given server's URL and the databases created on it.
    created_on: Option<(String, Vec<String>)>,
}

impl Server {
    pub(crate) async fn open(url: Option<String>, durable: bool) -> Result<Self, String> {
        match url {
            None => {
                let server = if durable {
                    TestPostgres::new_durable()
                } else {
                    TestPostgres::new()
                }
                .map_err(|e| e.to_string())?;
                let database = server.create_database().await.map_err(|e| e.to_string())?;
                let url = database.url().to_string();
                let description = describe(
                    &url,
                    if durable {
                        "throwaway, durable"
                    } else {
                        "throwaway, fsync off"
                    },
                )
                .await?;
                Ok(Self {
                    url,
                    description,
                    owned: Some(server),
                    created_on: None,
                })
            }
            Some(admin_url) => {
                let databases = pgwake::testing::TestDatabases::new(admin_url.clone());
                let database = databases
                    .create_database()
                    .await
                    .map_err(|e| e.to_string())?;
                let url = database.url().to_string();
                let description = describe(&url, "given by --database-url").await?;
                Ok(Self {
                    url,
                    description,
                    owned: None,
                    created_on: Some((admin_url, vec![database.name().to_string()])),
                })
            }
        }
    }

    pub(crate) fn owned_mut(&mut self) -> Option<&mut TestPostgres> {
        self.owned.as_mut()
    }

    /// The URL of another migrated database on the same server, for a
    /// scenario that compares two databases side by side; dropped on
    /// [`Server::close`] like the first.
    pub(crate) async fn another_database(&mut self) -> Result<String, String> {
        if let Some(server) = &self.owned {
            let database = server.create_database().await.map_err(|e| e.to_string())?;
            return Ok(database.url().to_string());
        }
        let Some((admin_url, names)) = &mut self.created_on else {
            return Err("no server to create a database on".into());
        };
        let database = pgwake::testing::TestDatabases::new(admin_url.clone())
            .create_database()
            .await
            .map_err(|e| e.to_string())?;
        names.push(database.name().to_string());
        Ok(database.url().to_string())
    }

    pub(crate) async fn close(self) {
        if let Some((admin_url, names)) = self.created_on {
            if let Ok(config) = pgwake::ConnectionConfig::from_url(&admin_url) {
                if let Ok(client) = config.connect().await {
                    for name in names {
                        let _ = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                }
            }
        }
    }
}

/// "PostgreSQL 15.x, fsync=on, synchronous_commit=on (origin)".
async fn describe(url: &str, origin: &str) -> Result<String, String> {
    let client = connect(url).await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('fsync'),
                    current_setting('synchronous_commit'), current_setting('full_page_writes')",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(format!(
        "PostgreSQL {}, fsync={}, synchronous_commit={}, full_page_writes={} ({origin})",
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        row.get::<_, String>(2),
        row.get::<_, String>(3)
    ))
}

pub(crate) async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    pgwake::ConnectionConfig::from_url(url)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// The median of `samples` (NaN when there are none).
pub(crate) fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Latencies in microseconds, summarised in milliseconds.
pub(crate) struct Latencies(hdrhistogram::Histogram<u64>);

impl Latencies {
    pub(crate) fn new() -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
        )
    }

    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 600_000_000);
        self.0
            .record(micros)
            .expect("within the histogram's bounds");
    }

    pub(crate) fn quantile_ms(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub(crate) fn max_ms(&self) -> f64 {
        self.0.max() as f64 / 1000.0
    }

    pub(crate) fn len(&self) -> u64 {
        self.0.len()
    }

    pub(crate) fn summary(&self) -> Value {
        json!({
            "p50_ms": self.quantile_ms(0.50),
            "p90_ms": self.quantile_ms(0.90),
            "p99_ms": self.quantile_ms(0.99),
            "max_ms": self.max_ms(),
        })
    }
}

/// Prints "label: done/total" to stderr at most once a second.
pub(crate) struct Progress {
    label: String,
    total: u64,
    last: Instant,
    started: Instant,
}

impl Progress {
    pub(crate) fn new(label: &str, total: u64) -> Self {
        let now = Instant::now();
        Self {
            label: label.to_string(),
            total,
            last: now,
            started: now,
        }
    }

    pub(crate) fn tick(&mut self, done: u64) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            eprintln!(
                "  {}: {done}/{} ({:.0} s)",
                self.label,
                self.total,
                self.started.elapsed().as_secs_f64()
            );
        }
    }
}

/// A line of a results table.
pub(crate) fn row(label: &str, values: &[(&str, String)]) {
    let cells: Vec<String> = values.iter().map(|(k, v)| format!("{k} {v:>9}")).collect();
    println!("{label:<22} {}", cells.join("   "));
}
