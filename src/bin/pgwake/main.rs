//! The `pgwake` command: schema migrations, a demo worker process and its
//! producer, queue figures, and the benchmarks whose results the README quotes.

mod bench;
mod bounds;
mod dashboard;
mod demo;
mod migrate;
mod schedule;
mod start;
mod stats;
mod work;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "pgwake",
    version,
    about = "PostgreSQL tasks that start the moment they are written"
)]
struct Cli {
    /// The database, as postgres://USER:PASSWORD@HOST:PORT/DATABASE or key=value pairs.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Schema migrations (golang-migrate compatible).
    Migrate {
        #[command(subcommand)]
        action: migrate::MigrateAction,
    },
    /// Run a worker process with the demo workload (echo activities, fanout workflows).
    Work(work::WorkArgs),
    /// Start fanout workflow instances for `pgwake work` to run.
    Start(start::StartArgs),
    /// Per-queue figures, listener connections and the notification queue.
    Stats(stats::StatsArgs),
    /// Measure latency, throughput, idle load, notification cost, recovery or workflows.
    Bench(bench::BenchArgs),
    /// Serve the web dashboard (queues, instances, histories, actions).
    Dashboard(dashboard::DashboardArgs),
    /// Schedules (cron or interval) that `pgwake work`'s maintainer fires.
    Schedule {
        #[command(subcommand)]
        action: schedule::ScheduleAction,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("pgwake=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // actix's System: the runtime's actors need it (and tokio under it).
    let system = actix_rt::System::new();
    match system.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn require_url(url: Option<String>) -> Result<String, String> {
    url.ok_or_else(|| {
        "no database given: pass --database-url postgres://USER:PASSWORD@HOST:PORT/DATABASE \
         or set DATABASE_URL"
            .to_string()
    })
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Migrate { action } => migrate::run(&require_url(cli.database_url)?, action)
            .await
            .map_err(|e| e.to_string()),
        Command::Work(args) => work::run(&require_url(cli.database_url)?, args).await,
        Command::Start(args) => start::run(&require_url(cli.database_url)?, args).await,
        Command::Stats(args) => stats::run(&require_url(cli.database_url)?, args).await,
        Command::Bench(args) => bench::run(cli.database_url, args).await,
        Command::Dashboard(args) => dashboard::run(&require_url(cli.database_url)?, args).await,
        Command::Schedule { action } => {
            schedule::run(&require_url(cli.database_url)?, action).await
        }
    }
}
