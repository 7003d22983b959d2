//! pgwake in one screen: a workflow (reserve -> wait 1 s -> charge -> done)
//! run by worker actors that wake the moment their work is committed.
//! Each step prints the time from the previous handler's return to its own
//! first line: recording the previous result (one transaction), the
//! wake-up, and the claim. `pgwake bench latency` measures the wake-up alone.
//!
//! ```sh
//! cargo run --example quickstart                       # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example quickstart
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pgwake::testing::TestPostgres;
use pgwake::{
    ActivityTask, ActivityWorker, EventType, NewInstance, Queue, Runtime, RuntimeConfig,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask, WorkflowWorker,
};
use serde_json::json;

/// When the last handler handed its work to pgwake: the next step's
/// wake-up latency is measured from here.
#[derive(Clone, Default)]
struct Stopwatch(Arc<Mutex<Option<Instant>>>);

impl Stopwatch {
    fn mark(&self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }

    fn since_mark_ms(&self) -> f64 {
        self.0
            .lock()
            .unwrap()
            .map_or(0.0, |at| at.elapsed().as_secs_f64() * 1000.0)
    }
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
    let mut client = pgwake::ConnectionConfig::from_url(&url)?.connect().await?;
    let report = pgwake::migrate::up(&mut client, None).await?;
    println!(
        "schema at version {:?} (applied now: {:?})",
        report.to, report.applied
    );

    let clock = Stopwatch::default();
    let (finished_tx, mut finished) = tokio::sync::mpsc::unbounded_channel();

    let activities = {
        let clock = clock.clone();
        ActivityWorker::new(["payments"], move |task: ActivityTask| {
            let clock = clock.clone();
            async move {
                println!(
                    "  activity {:<8} started {:>6.2} ms after the previous step returned",
                    task.name,
                    clock.since_mark_ms()
                );
                clock.mark();
                Ok::<_, String>(json!({ "step": task.name }))
            }
        })
        .concurrency(4)
    };

    let workflows = {
        let clock = clock.clone();
        WorkflowWorker::new(["orders"], move |task: WorkflowTask| {
            let (clock, finished_tx) = (clock.clone(), finished_tx.clone());
            async move {
                let woke_ms = clock.since_mark_ms();
                let mut decision = WorkflowCompletion::default();
                for event in &task.new_events {
                    let step = event.attributes["result"]["step"]
                        .as_str()
                        .unwrap_or_default();
                    let what = match (event.event_type, step) {
                        (EventType::WorkflowExecutionStarted, _) => {
                            decision = decision.schedule_activity(
                                "reserve",
                                json!({"sku": 7}),
                                Some(Queue::new("payments")?),
                            );
                            "started      -> schedule 'reserve'"
                        }
                        (EventType::ActivityCompleted, "reserve") => {
                            decision =
                                decision.start_timer(Duration::from_secs(1), json!("cooling-off"));
                            "reserved     -> start a 1 s timer"
                        }
                        (EventType::TimerFired, _) => {
                            let due = event.visible_at.unwrap_or(event.timestamp);
                            let late = SystemTime::now().duration_since(due).unwrap_or_default();
                            println!(
                                "  (timer fired {:.2} ms after it was due)",
                                late.as_secs_f64() * 1000.0
                            );
                            decision = decision.schedule_activity(
                                "charge",
                                json!({"cents": 500}),
                                Some(Queue::new("payments")?),
                            );
                            "timer fired  -> schedule 'charge'"
                        }
                        (EventType::ActivityCompleted, "charge") => {
                            decision =
                                decision.finish(WorkflowOutcome::Completed(json!("shipped")));
                            let _ = finished_tx.send(());
                            "charged      -> finish"
                        }
                        _ => continue,
                    };
                    println!("  workflow {what:<36} started {woke_ms:>6.2} ms after the previous step returned");
                }
                clock.mark();
                Ok::<_, pgwake::StoreError>(decision)
            }
        })
    };

    let runtime = Runtime::builder(RuntimeConfig::new(&url))
        .activity_worker(activities)
        .workflow_worker(workflows)
        .start()
        .await?;
    while !runtime.health().all_listening() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let instance_id = format!("order-{}", std::process::id());
    println!("starting workflow {instance_id} on queue 'orders'");
    clock.mark();
    runtime
        .store()
        .create_instance(
            NewInstance::new(&instance_id, Queue::new("orders")?).with_input(json!({"sku": 7})),
        )
        .await?;

    tokio::time::timeout(Duration::from_secs(30), finished.recv())
        .await
        .map_err(|_| "the workflow did not finish within 30 s")?;
    // The finishing decision is recorded right after its handler returns.
    let snapshot = loop {
        let snapshot = runtime
            .store()
            .instance(&instance_id)
            .await?
            .expect("the instance exists");
        if snapshot.state != pgwake::InstanceState::Active {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    println!("finished: {:?}, history:", snapshot.state);
    for event in &snapshot.history {
        println!(
            "  #{:<2} {:?} {}",
            event.sequence_id, event.event_type, event.attributes
        );
    }
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
