//! pgwake in one screen: an order workflow (reserve -> wait 1 s -> charge ->
//! done) written as ordinary async Rust, its two activities, and a client
//! that starts it and awaits its result. Each activity prints when it starts,
//! and how long after the previous step returned: that step's result being
//! recorded (one transaction), the wake-up, the workflow task deciding what
//! comes next, and the claim (plus, before `charge`, the 1 s timer).
//! `pgwake bench latency` measures the wake-up alone.
//!
//! ```sh
//! cargo run --example quickstart                       # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example quickstart
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgwake::testing::TestPostgres;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{Queue, Runtime, RuntimeConfig};

/// The workflow. It runs again from the top over its recorded history at
/// every step, so everything it learns from outside comes through `ctx`.
async fn order(ctx: WorkflowContext, sku: u32) -> Result<String, WorkflowError> {
    let hold: String = ctx.activity("reserve", &sku).await?;
    // A durable timer: a row in the database, it fires even if this process
    // restarts meanwhile.
    ctx.sleep(Duration::from_secs(1)).await?;
    let receipt: String = ctx.activity("charge", &(hold, 500)).await?;
    Ok(format!("shipped ({receipt})"))
}

async fn reserve(_: ActivityContext, sku: u32) -> Result<String, ActivityError> {
    step_started("reserve");
    Ok(format!("hold on sku {sku}"))
}

async fn charge(_: ActivityContext, (hold, cents): (String, u64)) -> Result<String, ActivityError> {
    step_started("charge");
    Ok(format!("{cents} cents charged, {hold}"))
}

/// When the previous step handed its work to pgwake.
static PREVIOUS_STEP: Mutex<Option<Instant>> = Mutex::new(None);

fn step_started(name: &str) {
    let mut previous = PREVIOUS_STEP.lock().unwrap();
    let ms = previous.map_or(0.0, |at| at.elapsed().as_secs_f64() * 1000.0);
    println!("  activity {name:<8} started {ms:>8.2} ms after the previous step returned");
    *previous = Some(Instant::now());
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the throwaway server alive until the end of main.
    let (_server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL");
            let server = TestPostgres::new()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let mut connection = pgwake::ConnectionConfig::from_url(&url)?.connect().await?;
    let report = pgwake::migrate::up(&mut connection, None).await?;
    println!(
        "schema at version {:?} (applied now: {:?})",
        report.to, report.applied
    );

    let workflows = Workflows::new().register("order", order);
    let activities = Activities::new()
        .register("reserve", reserve)
        .register("charge", charge);
    let runtime = Runtime::builder(RuntimeConfig::new(&url))
        .workflow_worker(workflows.worker(["orders"]))
        .activity_worker(activities.worker(["orders"]).concurrency(4))
        .start()
        .await?;
    while !runtime.health().all_listening() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let client = Client::new(runtime.store().clone());
    let instance_id = format!("order-{}", std::process::id());
    println!("starting workflow {instance_id} on queue 'orders'");
    *PREVIOUS_STEP.lock().unwrap() = Some(Instant::now());
    let options = StartOptions::default().queue(Queue::new("orders")?);
    client.start("order", &instance_id, &7, options).await?;
    let outcome: String = client.result(&instance_id, Duration::from_secs(30)).await?;
    println!("finished: {outcome:?}; its history:");

    let snapshot = runtime.store().instance(&instance_id).await?;
    for event in snapshot.iter().flat_map(|s| &s.history) {
        println!(
            "  #{:<2} {:?} {}",
            event.sequence_id, event.event_type, event.attributes
        );
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
