//! `pgwake schedule`: add, list, pause, resume and remove the schedules
//! that the maintainer of running `pgwake work` processes fires.

use std::time::SystemTime;

use clap::{Args, Subcommand};
use pgwake::schedule::{CatchUpPolicy, OverlapPolicy, Schedule, ScheduleSpec, Schedules};
use pgwake::{Queue, Store, StoreOptions};

use crate::work::parse_age;

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleAction {
    /// Add a schedule, or replace the one of that name.
    Add(AddArgs),
    /// List every schedule with its next and last fire times.
    List,
    /// Stop a schedule from firing until it is resumed.
    Pause {
        /// The schedule's name.
        name: String,
    },
    /// Let a paused schedule fire again, from its next fire time after now.
    Resume {
        /// The schedule's name.
        name: String,
    },
    /// Remove a schedule (the instances it started stay).
    Remove {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AddArgs {
    /// The schedule's name (its instances are `schedule:NAME:<fire time>`).
    #[arg(long)]
    name: String,
    /// A cron expression: 5 fields (minute hour day-of-month month
    /// day-of-week), or 6 with seconds first, e.g. "0 3 * * *".
    #[arg(long, conflicts_with = "every", required_unless_present = "every")]
    cron: Option<String>,
    /// A fixed interval instead: `30s`, `5m`, `1h`, `1d` (fires on its
    /// multiples since the Unix epoch).
    #[arg(long, value_name = "DURATION", value_parser = parse_age)]
    every: Option<std::time::Duration>,
    /// The IANA time zone the cron expression is read in.
    #[arg(long, default_value = "UTC")]
    time_zone: String,
    /// The workflow each firing starts (`fanout` for `pgwake work`).
    #[arg(long)]
    workflow: String,
    /// Its input, as JSON.
    #[arg(long, default_value = "null")]
    input: String,
    /// The queue of its workflow tasks.
    #[arg(long, default_value = "default")]
    queue: String,
    /// When the previous firing's instance still runs: skip this firing,
    /// allow both, or cancel the previous one.
    #[arg(long, default_value = "skip", value_name = "skip|allow|cancel")]
    overlap: String,
    /// Fire times missed while no maintainer ran: skip them, or run the
    /// last one once.
    #[arg(long, default_value = "last", value_name = "skip|last")]
    catch_up: String,
}

pub(crate) async fn run(url: &str, action: ScheduleAction) -> Result<(), String> {
    // Everything the user typed is checked before anything connects.
    let add = match &action {
        ScheduleAction::Add(args) => Some(schedule_from(args)?),
        _ => None,
    };
    let store = Store::connect(url, StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let schedules = Schedules::new(store);
    match action {
        ScheduleAction::Add(_) => {
            let schedule = add.expect("built above");
            let added = schedules
                .upsert(&schedule)
                .await
                .map_err(|e| e.to_string())?;
            let verb = if added { "added" } else { "replaced" };
            println!("{verb} schedule {}", schedule.name());
        }
        ScheduleAction::List => {
            let all = schedules.list().await.map_err(|e| e.to_string())?;
            if all.is_empty() {
                println!("no schedules");
            }
            for s in all {
                println!(
                    "{}\t{}\tworkflow={}\tqueue={}\toverlap={}\tcatch-up={}\t{}\tnext={}\tlast={}\tlast-instance={}",
                    s.name,
                    s.spec,
                    s.workflow,
                    s.queue,
                    s.overlap.as_str(),
                    s.catch_up.as_str(),
                    if s.paused { "paused" } else { "active" },
                    rfc3339(s.next_fire_at),
                    s.last_fire_at.map_or_else(|| "-".into(), rfc3339),
                    s.last_instance_id.as_deref().unwrap_or("-"),
                );
            }
        }
        ScheduleAction::Pause { name } => {
            schedules.pause(&name).await.map_err(|e| e.to_string())?;
            println!("paused schedule {name}");
        }
        ScheduleAction::Resume { name } => {
            schedules.resume(&name).await.map_err(|e| e.to_string())?;
            println!("resumed schedule {name}");
        }
        ScheduleAction::Remove { name } => {
            schedules.remove(&name).await.map_err(|e| e.to_string())?;
            println!("removed schedule {name}");
        }
    }
    Ok(())
}

fn schedule_from(args: &AddArgs) -> Result<Schedule, String> {
    let spec = match (&args.cron, args.every) {
        (Some(cron), _) => ScheduleSpec::cron(cron, &args.time_zone),
        (None, Some(every)) => {
            ScheduleSpec::every(every).and_then(|spec| spec.in_time_zone(&args.time_zone))
        }
        (None, None) => return Err("give --cron EXPR or --every DURATION".into()),
    }
    .map_err(|e| e.to_string())?;
    let input: serde_json::Value =
        serde_json::from_str(&args.input).map_err(|e| format!("--input is not JSON: {e}"))?;
    let queue = Queue::new(args.queue.as_str()).map_err(|e| format!("--queue: {e}"))?;
    let overlap: OverlapPolicy = args
        .overlap
        .parse()
        .map_err(|e| format!("--overlap: {e}"))?;
    let catch_up: CatchUpPolicy = args
        .catch_up
        .parse()
        .map_err(|e| format!("--catch-up: {e}"))?;
    Ok(
        Schedule::new(args.name.as_str(), spec, args.workflow.as_str())
            .map_err(|e| e.to_string())?
            .input(input)
            .queue(queue)
            .overlap(overlap)
            .catch_up(catch_up),
    )
}

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}
