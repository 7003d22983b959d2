//! `pgwake start`: creates fanout workflow instances for `pgwake work`.

use std::time::Instant;

use clap::Args;
use pgwake::{NewInstance, Queue, Store, StoreOptions};

use crate::bounds::whole;
use crate::demo::{self, MAX_ACTIVITIES, MAX_TIMER_MS};

/// The most instances one `pgwake start` creates.
const MAX_COUNT: u64 = 1_000_000;

#[derive(Debug, Args)]
pub(crate) struct StartArgs {
    /// The queue of the new instances (and of their activities).
    #[arg(long)]
    queue: String,
    /// How many instances to start (1 to 1000000).
    #[arg(long, default_value_t = 1, value_parser = whole(1, MAX_COUNT, "instances"))]
    count: u64,
    /// How many echo activities each schedules (at most 10000, what the
    /// fanout workflow schedules in one decision).
    #[arg(long, default_value_t = 1,
          value_parser = whole(0, MAX_ACTIVITIES, "activities (the fanout workflow's limit per instance)"))]
    activities: u64,
    /// Wait this long (a timer) before scheduling the activities, in
    /// milliseconds (at most 10 years).
    #[arg(long, default_value_t = 0,
          value_parser = whole(0, MAX_TIMER_MS, "milliseconds (10 years)"))]
    timer_ms: u64,
    /// Instance ids are PREFIX-<n>-<random>.
    #[arg(long, default_value = "fanout")]
    prefix: String,
}

pub(crate) async fn run(url: &str, args: StartArgs) -> Result<(), String> {
    let queue = Queue::new(args.queue.as_str()).map_err(|e| e.to_string())?;
    // No commit hook: the database triggers announce each instance, as for
    // any writer outside a pgwake runtime.
    let store = Store::connect(url, StoreOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let batch = uuid_suffix();
    let creations = (0..args.count).map(|n| {
        let store = store.clone();
        let new = NewInstance::new(format!("{}-{n}-{batch}", args.prefix), queue.clone())
            .with_input(demo::fanout_input(args.activities, args.timer_ms));
        async move { store.create_instance(new).await }
    });
    // A few at a time: fast, without monopolising the server.
    let mut pending = futures::stream::iter(creations).buffer_unordered(8);
    let mut created = 0u64;
    use futures::StreamExt;
    while let Some(result) = pending.next().await {
        result.map_err(|e| e.to_string())?;
        created += 1;
    }
    println!(
        "started {created} fanout instances on queue {queue} ({} activities each) in {:.2} s",
        args.activities,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn uuid_suffix() -> String {
    let id = pgwake::WorkerId::unique("x").to_string();
    id.rsplit(':').next().unwrap_or("0").to_string()
}
