//! `pgwake migrate`: the schema, golang-migrate compatible.

use clap::Subcommand;
use pgwake::migrate::{self, DownSteps};
use pgwake::{ConnectionConfig, MigrateError};

#[derive(Debug, Subcommand)]
pub(crate) enum MigrateAction {
    /// Apply every pending migration, or those up to --to.
    Up {
        /// Stop at this version.
        #[arg(long)]
        to: Option<i64>,
    },
    /// Revert the newest migration, or --steps N of them, or --all.
    Down {
        /// How many versions to revert.
        #[arg(long, default_value_t = 1, conflicts_with = "all")]
        steps: u32,
        /// Revert everything (drops pgwake's tables and their data).
        #[arg(long)]
        all: bool,
    },
    /// Show the applied version and what is pending.
    Status,
    /// Record VERSION as applied and clean without running SQL (0: none),
    /// after checking by hand what a dirty database really holds.
    Force {
        /// The version the schema is really at.
        version: i64,
    },
}

pub(crate) async fn run(url: &str, action: MigrateAction) -> Result<(), MigrateError> {
    let config = ConnectionConfig::from_url(url)?.with_application_name("pgwake-migrate");
    let mut client = config.connect().await?;
    match action {
        MigrateAction::Up { to } => {
            let report = migrate::up(&mut client, to).await?;
            println!("{}", describe_report(&report, "applied"));
        }
        MigrateAction::Down { steps, all } => {
            let steps = if all {
                DownSteps::All
            } else {
                DownSteps::Steps(steps)
            };
            let report = migrate::down(&mut client, steps).await?;
            println!("{}", describe_report(&report, "reverted"));
        }
        MigrateAction::Status => {
            let status = migrate::status(&client).await?;
            let pending: Vec<String> = status.pending().iter().map(i64::to_string).collect();
            println!(
                "version: {}{}\nnewest:  {}\npending: {}",
                version_text(status.version),
                if status.dirty {
                    " (dirty: run `pgwake migrate force VERSION` after checking the schema)"
                } else {
                    ""
                },
                status.newest,
                if pending.is_empty() {
                    "none".to_string()
                } else {
                    pending.join(", ")
                },
            );
        }
        MigrateAction::Force { version } => {
            migrate::force(&mut client, version).await?;
            println!(
                "version forced to {}",
                version_text((version != 0).then_some(version))
            );
        }
    }
    Ok(())
}

fn describe_report(report: &migrate::MigrationReport, verb: &str) -> String {
    if report.applied.is_empty() {
        return format!("nothing to do: at version {}", version_text(report.to));
    }
    let versions: Vec<String> = report.applied.iter().map(i64::to_string).collect();
    format!(
        "{verb} {}: version {} -> {}",
        versions.join(", "),
        version_text(report.from),
        version_text(report.to)
    )
}

fn version_text(version: Option<i64>) -> String {
    version.map_or_else(|| "none".to_string(), |v| v.to_string())
}
