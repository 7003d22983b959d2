//! A workflow worker's claims, against a real PostgreSQL: one claim fills
//! every free slot, rather than one claim per slot.

mod support;

use std::time::{Duration, Instant};

use pgwake::testing::fresh_database;
use pgwake::workflow::{Client, StartOptions, WorkflowContext, WorkflowError, Workflows};
use pgwake::{Runtime, RuntimeConfig, Store, StoreOptions, TaskKind};

const WAIT: Duration = Duration::from_secs(20);
const QUEUE: &str = "default";
const WAITING: u64 = 6;

#[actix_rt::test]
async fn instances_waiting_at_start_are_claimed_together_not_one_claim_each() {
    let database = fresh_database().await.unwrap();
    let store = Store::connect(database.url(), StoreOptions::default())
        .await
        .unwrap();
    let client = Client::new(store);
    for n in 0..WAITING {
        client
            .start("done", &format!("waiting-{n}"), &n, StartOptions::default())
            .await
            .unwrap();
    }
    let mut config = RuntimeConfig::new(database.url());
    config.eager_dispatch = false;
    // Only the start's claim and the resync after LISTEN look for work.
    config.fallback_while_listening = support::NEVER;
    let runtime = Runtime::builder(config)
        .workflow_worker(
            Workflows::new()
                .register("done", |_: WorkflowContext, n: u64| async move {
                    Ok::<_, WorkflowError>(n)
                })
                .worker([QUEUE])
                .concurrency(8),
        )
        .start()
        .await
        .unwrap();
    for n in 0..WAITING {
        let result: u64 = client.result(&format!("waiting-{n}"), WAIT).await.unwrap();
        assert_eq!(result, n);
    }
    let deadline = Instant::now() + WAIT;
    while !runtime.health().all_listening() {
        assert!(Instant::now() < deadline, "the listeners never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let counters = runtime.health().counters(TaskKind::Workflow, QUEUE);
    assert_eq!(counters.claimed, WAITING);
    // Claimed one per statement, six tasks take six claims at least; one
    // claim takes them all, and the resync after LISTEN (and a wake-up,
    // should one come) may look once or twice more.
    assert!(
        counters.polls < WAITING,
        "{} claims for {WAITING} tasks waiting at the start, 8 slots free",
        counters.polls
    );
    runtime.shutdown(Duration::from_secs(5)).await;
}
