//! `pgwake work`: a worker process running the demo workload until SIGINT
//! or SIGTERM, then shutting down gracefully.

use std::time::Duration;

use clap::Args;
use pgwake::{Runtime, RuntimeConfig};

use crate::bounds::{whole, MAX_CONCURRENCY, MAX_LEASE_SECS, MIN_LEASE_SECS};
use crate::demo;

/// The longest wait for running handlers at shutdown, in seconds: 1 hour.
const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 3600;
/// The longest an echo activity sleeps, in milliseconds: 1 hour.
const MAX_ACTIVITY_MS: u64 = 3600 * 1000;

#[derive(Debug, Args)]
pub(crate) struct WorkArgs {
    /// A queue to serve (repeat for several).
    #[arg(long = "queue", required = true)]
    queues: Vec<String>,
    /// Activities and workflow tasks each worker runs at once (1 to 10000).
    #[arg(long, default_value_t = 8,
          value_parser = whole(1, MAX_CONCURRENCY, "tasks at once (the runtime's limit)"))]
    concurrency: usize,
    /// Poll only: no LISTEN, no NOTIFY (behind PgBouncer in transaction
    /// mode, when --listener-url cannot reach PostgreSQL itself).
    #[arg(long)]
    no_notify: bool,
    /// Where the listeners connect (LISTEN), when not the database URL:
    /// behind PgBouncer in transaction mode, PostgreSQL itself, since LISTEN
    /// needs a session of its own; the pool stays on --database-url.
    /// Ignored with --no-notify.
    #[arg(
        long,
        env = "PGWAKE_LISTENER_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    listener_url: Option<String>,
    /// How long each echo activity sleeps, in milliseconds (at most 1 hour).
    #[arg(long, default_value_t = 0,
          value_parser = whole(0, MAX_ACTIVITY_MS, "milliseconds (1 hour)"))]
    activity_ms: u64,
    /// Activity lease, in seconds (1 to 86400: 24 hours).
    #[arg(long, default_value_t = 120,
          value_parser = whole(MIN_LEASE_SECS, MAX_LEASE_SECS, "seconds (24 hours)"))]
    activity_lease: u64,
    /// Workflow-task lease, in seconds (1 to 86400: 24 hours).
    #[arg(long, default_value_t = 60,
          value_parser = whole(MIN_LEASE_SECS, MAX_LEASE_SECS, "seconds (24 hours)"))]
    workflow_lease: u64,
    /// How long shutdown waits for running handlers, in seconds (at most
    /// 3600: 1 hour).
    #[arg(long, default_value_t = 30,
          value_parser = whole(0, MAX_SHUTDOWN_TIMEOUT_SECS, "seconds (1 hour)"))]
    shutdown_timeout: u64,
}

pub(crate) async fn run(url: &str, args: WorkArgs) -> Result<(), String> {
    // Checked before anything connects, and named: the runtime would refuse
    // it only after the history reader's pool connected, as "the database URL".
    if let Some(listener_url) = &args.listener_url {
        pgwake::ConnectionConfig::from_url(listener_url)
            .map_err(|e| format!("--listener-url (or PGWAKE_LISTENER_URL) is refused: {e}"))?;
    }
    let mut config = RuntimeConfig::new(url);
    config.notifications = !args.no_notify;
    config.listener_url = args.listener_url;
    // Workflows and activities share the pool: leave room for both kinds.
    config.store.pool_size = (args.concurrency * 2 + 4).min(64);
    // The fanout workflow reads its history; a small pool of its own keeps
    // those reads from competing with claims and completions.
    let mut history_reader = pgwake::StoreOptions::default();
    history_reader.pool_size = 4;
    let store = pgwake::Store::connect(url, history_reader)
        .await
        .map_err(|e| e.to_string())?;
    let separate_listener_url = config.listener_url.is_some();
    let runtime = Runtime::builder(config)
        .activity_worker(demo::echo_worker(
            &args.queues,
            args.concurrency,
            args.activity_ms,
            Duration::from_secs(args.activity_lease),
        ))
        .workflow_worker(demo::fanout_worker(
            &args.queues,
            args.concurrency,
            Duration::from_secs(args.workflow_lease),
            store,
        ))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        queues = ?args.queues,
        concurrency = args.concurrency,
        notify = !args.no_notify,
        separate_listener_url,
        "working"
    );
    wait_for_signal().await;
    tracing::info!("signal received: shutting down");
    let report = runtime
        .shutdown(Duration::from_secs(args.shutdown_timeout))
        .await;
    tracing::info!(
        released_leases = report.released_leases,
        drained = report.drained,
        "stopped"
    );
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // No signal handling available: run until the process is killed.
        return futures::future::pending().await;
    };
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
}
