//! `pgwake work`: a worker process running the demo workload until SIGINT
//! or SIGTERM, then shutting down gracefully.

use std::time::Duration;

use clap::Args;
use pgwake::runtime::{MaintainerConfig, RetentionPolicy};
use pgwake::schedule::ScheduleFiring;
use pgwake::{Runtime, RuntimeConfig};

use crate::bounds::{whole, MAX_CONCURRENCY, MAX_LEASE_SECS, MIN_LEASE_SECS};
use crate::demo;

/// The longest wait for running handlers at shutdown, in seconds: 1 hour.
const MAX_SHUTDOWN_TIMEOUT_SECS: u64 = 3600;
/// The longest an echo activity sleeps, in milliseconds: 1 hour.
const MAX_ACTIVITY_MS: u64 = 3600 * 1000;
/// The longest retention age accepted: 100 years, far beyond any policy
/// and far from overflowing PostgreSQL's interval arithmetic.
const MAX_RETENTION_SECS: u64 = 100 * 365 * 86_400;
/// The longest schedule tick accepted, in milliseconds: 1 minute.
const MAX_TICK_MS: u64 = 60_000;
/// The longest maintainer retry interval accepted, in milliseconds: 10 minutes.
const MAX_MAINTAINER_RETRY_MS: u64 = 600_000;

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
    /// Remove finished instances older than this (e.g. `7d`, `12h`, `30m`,
    /// `90s`), on every queue without a --retain-queue of its own. Done by
    /// the one process per database elected maintainer; giving this (or
    /// --retain-queue) makes this process take part in the election.
    #[arg(long, value_name = "AGE", value_parser = parse_age)]
    retain_finished: Option<Duration>,
    /// Retention of one queue, overriding --retain-finished: `QUEUE=AGE`
    /// (e.g. `audit=365d`) or `QUEUE=forever` (repeat for several).
    #[arg(long = "retain-queue", value_name = "QUEUE=AGE|forever", value_parser = parse_queue_age)]
    retain_queues: Vec<(String, Option<Duration>)>,
    /// Retention of one workflow's instances, ahead of their queue's:
    /// `WORKFLOW=AGE` (e.g. `newsletter=1d`) or `WORKFLOW=forever` (repeat
    /// for several).
    #[arg(long = "retain-workflow", value_name = "WORKFLOW=AGE|forever", value_parser = parse_workflow_age)]
    retain_workflows: Vec<(String, Option<Duration>)>,
    /// Do not take part in the maintainer election: this process then
    /// neither fires schedules nor runs retention. Without it every
    /// `pgwake work` takes part, so that schedules fire whenever one runs;
    /// behind a transaction-mode pooler, give --listener-url (PostgreSQL
    /// itself, where the maintainer's lock holds) or this.
    #[arg(long, conflicts_with_all = ["retain_finished", "retain_queues", "retain_workflows"])]
    no_maintainer: bool,
    /// How often the maintainer looks for due schedules, in milliseconds
    /// (10 to 60000): the longest a fire time waits for its instance while
    /// a maintainer runs.
    #[arg(long, default_value_t = 1000,
          value_parser = whole(10, MAX_TICK_MS, "milliseconds (1 minute)"))]
    schedule_tick_ms: u64,
    /// How often a process that is not the maintainer tries to become it,
    /// and the maintainer pings its connection, in milliseconds (100 to
    /// 600000): a lost maintainer is replaced within 1.2 × this + 5 s.
    #[arg(long, default_value_t = 10_000,
          value_parser = whole(100, MAX_MAINTAINER_RETRY_MS, "milliseconds (10 minutes)"))]
    maintainer_retry_ms: u64,
}

/// An age such as `7d`, `12h`, `30m` or `90s` (a bare number is seconds).
pub(crate) fn parse_age(text: &str) -> Result<Duration, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let per_unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err("must be a whole number followed by s, m, h or d (e.g. 7d)".into()),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| "must be a whole number followed by s, m, h or d (e.g. 7d)".to_string())?;
    match value.checked_mul(per_unit) {
        Some(secs) if secs <= MAX_RETENTION_SECS => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "must be at most {MAX_RETENTION_SECS} seconds (100 years)"
        )),
    }
}

/// `QUEUE=AGE` or `QUEUE=forever`; the queue name is checked when the
/// policy is built.
fn parse_queue_age(text: &str) -> Result<(String, Option<Duration>), String> {
    let (queue, age) = text
        .split_once('=')
        .ok_or_else(|| "must be QUEUE=AGE or QUEUE=forever (e.g. audit=365d)".to_string())?;
    let age = match age {
        "forever" => None,
        age => Some(parse_age(age)?),
    };
    Ok((queue.to_string(), age))
}

fn parse_workflow_age(text: &str) -> Result<(String, Option<Duration>), String> {
    let (workflow, age) = text.split_once('=').ok_or_else(|| {
        "must be WORKFLOW=AGE or WORKFLOW=forever (e.g. newsletter=1d)".to_string()
    })?;
    if workflow.is_empty() {
        return Err("the workflow name before `=` is empty".to_string());
    }
    let age = match age {
        "forever" => None,
        age => Some(parse_age(age)?),
    };
    Ok((workflow.to_string(), age))
}

/// The retention policy the flags ask for, if any.
fn retention_policy(args: &WorkArgs) -> Result<Option<RetentionPolicy>, String> {
    if args.retain_finished.is_none()
        && args.retain_queues.is_empty()
        && args.retain_workflows.is_empty()
    {
        return Ok(None);
    }
    let mut policy = RetentionPolicy::new();
    if let Some(age) = args.retain_finished {
        policy = policy.remove_finished_after(age);
    }
    for (queue, age) in &args.retain_queues {
        policy = match age {
            Some(age) => policy.remove_queue_after(queue, *age),
            None => policy.keep_queue_forever(queue),
        }
        .map_err(|e| format!("--retain-queue {queue}: {e}"))?;
    }
    for (workflow, age) in &args.retain_workflows {
        policy = match age {
            Some(age) => policy.remove_workflow_after(workflow, *age),
            None => policy.keep_workflow_forever(workflow),
        };
    }
    Ok(Some(policy))
}

pub(crate) async fn run(url: &str, args: WorkArgs) -> Result<(), String> {
    // Checked before anything connects, and named: the runtime would refuse
    // it only after the history reader's pool connected, as "the database URL".
    if let Some(listener_url) = &args.listener_url {
        pgwake::ConnectionConfig::from_url(listener_url)
            .map_err(|e| format!("--listener-url (or PGWAKE_LISTENER_URL) is refused: {e}"))?;
    }
    let retention = retention_policy(&args)?;
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
    let mut builder = Runtime::builder(config);
    if let Some(policy) = retention {
        builder = builder.retention(policy);
    }
    if !args.no_maintainer {
        let mut election = MaintainerConfig::default();
        election.retry_interval = Duration::from_millis(args.maintainer_retry_ms);
        let mut firing = ScheduleFiring::default();
        firing.tick = Duration::from_millis(args.schedule_tick_ms);
        builder = builder.maintainer(election).schedules(firing);
    }
    let runtime = builder
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_a_unit_and_refuse_what_is_not_one() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_age("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_age("90"), Ok(Duration::from_secs(90)));
        for bad in ["", "d", "7w", "-1d", "1.5h", "99999999999999999999d"] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_queue_age("audit=forever"),
            Ok(("audit".to_string(), None))
        );
        assert_eq!(
            parse_queue_age("short=1m"),
            Ok(("short".to_string(), Some(Duration::from_secs(60))))
        );
        assert!(parse_queue_age("audit").is_err());
        assert_eq!(
            parse_workflow_age("newsletter=1d"),
            Ok(("newsletter".to_string(), Some(Duration::from_secs(86_400))))
        );
        assert_eq!(
            parse_workflow_age("invoice=forever"),
            Ok(("invoice".to_string(), None))
        );
        assert!(parse_workflow_age("=1d").is_err());
        assert!(parse_workflow_age("invoice").is_err());
    }
}
