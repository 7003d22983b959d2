//! `pgwake stats`: per-queue figures from the store, the listener
//! connections PostgreSQL sees, and how full its notification queue is.

use std::time::Duration;

use clap::Args;
use pgwake::{Store, StoreOptions};

#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    /// Print again every second until interrupted.
    #[arg(long)]
    watch: bool,
}

pub(crate) async fn run(url: &str, args: StatsArgs) -> Result<(), String> {
    let mut options = StoreOptions::default();
    options.pool_size = 2;
    let store = Store::connect(url, options)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        print!("{}", render(&store).await?);
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        println!();
    }
}

async fn render(store: &Store) -> Result<String, String> {
    let mut out = String::new();
    let stats = store.stats().await.map_err(|e| e.to_string())?;
    out.push_str(&format!(
        "{:<24} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}\n",
        "queue", "active", "claimable", "failing", "ready", "running", "later"
    ));
    for q in &stats {
        out.push_str(&format!(
            "{:<24} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8}\n",
            q.queue,
            q.active_instances,
            q.claimable_workflow_tasks,
            q.failing_workflow_tasks,
            q.ready_activities,
            q.running_activities,
            q.scheduled_later
        ));
    }
    if stats.is_empty() {
        out.push_str("(no instances or activities)\n");
    }
    let client = store.pool().get().await.map_err(|e| e.to_string())?;
    let listeners = client
        .query(
            "SELECT application_name, count(*), max(now() - backend_start)::text
               FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE 'pgwake-listener:%'
              GROUP BY application_name ORDER BY application_name",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    out.push_str("listener connections:\n");
    if listeners.is_empty() {
        out.push_str("  none (no runtime with notifications is connected)\n");
    }
    for row in &listeners {
        out.push_str(&format!(
            "  {:<36} {:>3} connected, oldest for {}\n",
            row.get::<_, String>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2)
        ));
    }
    let usage: f64 = client
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    out.push_str(&format!(
        "notification queue usage: {:.4}%\n",
        usage * 100.0
    ));
    Ok(out)
}
