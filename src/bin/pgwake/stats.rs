//! `pgwake stats`: per-queue figures from the store, the listener
//! connections PostgreSQL sees, which process is the maintainer, and how
//! full its notification queue is.

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
    out.push_str(&maintainer_line(&client).await?);
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

/// Which session holds the maintainer lock: its `application_name`
/// (`pgwake-maintainer:<pid of the process>`), its client address and how
/// long it has been connected (NULL, shown as `?`, for another role's
/// session without `pg_read_all_stats`).
async fn maintainer_line(client: &deadpool_postgres::Client) -> Result<String, String> {
    // In pg_locks a one-bigint advisory key is split into classid (high 32
    // bits) and objid (low 32 bits), with objsubid = 1.
    let key = pgwake::runtime::MAINTAINER_LOCK_KEY;
    let (high, low) = (i64::from((key >> 32) as u32), i64::from(key as u32));
    let holder = client
        .query_opt(
            "SELECT a.application_name, l.pid, host(a.client_addr),
                    date_trunc('second', now() - a.backend_start)::text
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.classid::bigint = $1 AND l.objid::bigint = $2
                AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&high, &low],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(match holder {
        None => "maintainer: none (no running process holds the maintainer lock)\n".to_string(),
        Some(row) => format!(
            "maintainer: {} (backend pid {}, from {}, connected for {})\n",
            row.get::<_, Option<String>>(0)
                .unwrap_or_else(|| "?".into()),
            row.get::<_, i32>(1),
            row.get::<_, Option<String>>(2)
                .unwrap_or_else(|| "a local socket (or not visible to this role)".into()),
            row.get::<_, Option<String>>(3)
                .unwrap_or_else(|| "?".into()),
        ),
    })
}
