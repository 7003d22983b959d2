//! pgwake in one screen: migrate a database, write a workflow instance, a
//! pending event and an activity, and watch the notifications that wake
//! workers arrive on both channels.
//!
//! ```sh
//! cargo run --example quickstart                       # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example quickstart
//! ```

use std::time::{Duration, Instant};

use futures::StreamExt;
use pgwake::testing::TestPostgres;
use pgwake::ConnectionConfig;
use tokio_postgres::{AsyncMessage, NoTls};

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
    let config = ConnectionConfig::from_url(&url)?;
    println!("database: {config}");

    let mut writer = config.connect().await?;
    let report = pgwake::migrate::up(&mut writer, None).await?;
    println!(
        "schema at version {:?} (applied now: {:?})",
        report.to, report.applied
    );

    // A listener: a dedicated connection whose notifications we drive ourselves.
    let (listener, mut connection) = config.postgres_config().connect(NoTls).await?;
    let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    actix_rt::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = sender.send((
                    Instant::now(),
                    n.channel().to_string(),
                    n.payload().to_string(),
                ));
            }
        }
    });
    listener
        .batch_execute("LISTEN workflow_tasks; LISTEN activity_tasks")
        .await?;

    let instance_id = format!("quickstart-{}", std::process::id());
    let started = Instant::now();
    writer
        .execute(
            "INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ($1, 'e1', 0, 'orders')",
            &[&instance_id],
        )
        .await?;
    writer
        .execute(
            "INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
             VALUES ('started', $1, 'e1', 1, now())",
            &[&instance_id],
        )
        .await?;
    println!("wrote a workflow instance on queue 'orders' and its start event");
    writer
        .execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ('charge', $1, 'e1', 11, 'payments', now())",
            &[&instance_id],
        )
        .await?;
    println!("wrote an activity on queue 'payments'");

    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), notifications.recv()).await {
            Ok(Some((at, channel, queue))) => println!(
                "notification on {channel:<15} for queue {queue:<9} {:>8.3} ms after the first write",
                at.duration_since(started).as_secs_f64() * 1000.0
            ),
            _ => println!("no notification within 5 s: are the triggers installed?"),
        }
    }
    println!("done");
    Ok(())
}
