//! Your own actor as a pgwake worker: it registers with the runtime's
//! `QueueRouter` for its queues, and on each wake-up claims and completes
//! activities itself through the store. pgwake's `ActivityWorker` does all
//! of this for you; write your own actor when the work must live in an actor
//! you already have (its state, its supervisor, its mailbox).
//!
//! ```sh
//! cargo run --example own_actor                    # a throwaway PostgreSQL
//! DATABASE_URL=postgres://... cargo run --example own_actor
//! ```
//!
//! The rules such an actor follows:
//! - register in `started` (and poll once then: work written before the
//!   registration sent no wake-up to it), unregister in `stopping`;
//! - never block the mailbox: the claim and the work run as a future spawned
//!   on the actor's context (`ctx.spawn(fut.into_actor(self))`);
//! - one claim at a time; a wake-up that arrives meanwhile means "claim
//!   again when done", so none is lost;
//! - poll on a timer too, as a safety net for wake-ups that never come
//!   (a listener that was reconnecting, another process's writes).
//!
//! `pgwake::runtime::actors` documents the protocol (register, wake-ups,
//! wake policies, unregister); `tests/own_actor.rs` runs this actor.

use std::time::Duration;

use actix::prelude::*;
use pgwake::runtime::actors::{RegisterWorker, TaskAvailable, UnregisterWorker, WakePolicy};
use pgwake::{ActivityTask, InstanceRef, Queue, RuntimeHandle, StoreError, TaskKind, WorkerId};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// How many activities one claim takes at most.
const BATCH: usize = 16;
/// How long a claimed activity stays ours without being completed.
const LEASE: Duration = Duration::from_secs(60);

/// An activity the actor completed: what it reports on its channel.
#[derive(Debug, Clone)]
pub struct Handled {
    /// The activity's id.
    pub activity_id: String,
    /// Its name.
    pub name: String,
    /// What the actor recorded as its result.
    pub result: Value,
}

/// A user-defined actor that makes thumbnails for the activities of its queues.
pub struct Thumbnailer {
    runtime: RuntimeHandle,
    queues: Vec<Queue>,
    worker: WorkerId,
    /// Safety-net poll interval.
    poll_every: Duration,
    /// Where each completed activity is reported.
    handled: mpsc::UnboundedSender<Handled>,
    /// The router's id for our registration, once registered.
    registration: Option<u64>,
    /// A claim is running.
    claiming: bool,
    /// A wake-up arrived while a claim was running: claim again after it.
    claim_again: bool,
    /// Asked to stop: claims nothing more, and stops once the claim under
    /// way (if any) has handled what it claimed.
    stopping: bool,
}

impl Thumbnailer {
    /// An actor for `queues` that also polls every `poll_every`.
    pub fn new(
        runtime: RuntimeHandle,
        queues: Vec<Queue>,
        poll_every: Duration,
        handled: mpsc::UnboundedSender<Handled>,
    ) -> Self {
        Self {
            runtime,
            queues,
            worker: WorkerId::unique("thumbnailer"),
            poll_every,
            handled,
            registration: None,
            claiming: false,
            claim_again: false,
            stopping: false,
        }
    }

    /// Claims a batch and handles it, off the mailbox. One claim at a time.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        if self.claiming {
            self.claim_again = true;
            return;
        }
        self.claiming = true;
        let store = self.runtime.store().clone();
        let (worker, queues) = (self.worker.clone(), self.queues.clone());
        let handled = self.handled.clone();
        let work = async move {
            let tasks = store
                .claim_activity_tasks(&worker, &queues, BATCH, LEASE)
                .await?;
            let claimed = tasks.len();
            for task in tasks {
                let result = make_thumbnail(&task);
                // Recorded only under our lease: if it expired and someone
                // else took the task, this fails and changes nothing.
                store.complete_activity_task(&task, result.clone()).await?;
                let _ = handled.send(Handled {
                    activity_id: task.activity_id,
                    name: task.name,
                    result: result.unwrap_or_else(|error| json!({ "error": error })),
                });
            }
            Ok::<_, StoreError>(claimed)
        };
        ctx.spawn(work.into_actor(self).map(|outcome, actor, ctx| {
            actor.claiming = false;
            if actor.stopping {
                ctx.stop();
                return;
            }
            match outcome {
                // A full batch: there is probably more.
                Ok(claimed) if claimed == BATCH => actor.claim(ctx),
                Ok(_) => {}
                // The timer retries; tasks claimed and not completed go back
                // to the queue when their lease expires.
                Err(err) => tracing::warn!(error = %err, "claiming thumbnails failed"),
            }
            if std::mem::take(&mut actor.claim_again) {
                actor.claim(ctx);
            }
        }));
    }
}

/// The work itself (a stand-in).
fn make_thumbnail(task: &ActivityTask) -> Result<Value, String> {
    match task.input["image"].as_str() {
        Some(image) => Ok(json!({ "thumbnail": format!("{image}.200x200.jpg") })),
        None => Err("no image given".to_string()),
    }
}

impl Actor for Thumbnailer {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let register = RegisterWorker {
            kind: TaskKind::Activity,
            queues: self.queues.clone(),
            recipient: ctx.address().recipient(),
            // Every wake-up for our queues; `claim` coalesces them.
            policy: WakePolicy::Always,
            listener_state: None,
        };
        // `wait`: no other message is handled before the registration is.
        ctx.wait(self.runtime.router().send(register).into_actor(self).map(
            |id, actor, ctx| match id {
                Ok(id) => {
                    actor.registration = Some(id);
                    actor.claim(ctx);
                }
                Err(err) => {
                    tracing::error!(error = %err, "the router is gone");
                    ctx.stop();
                }
            },
        ));
        ctx.run_interval(self.poll_every, |actor, ctx| actor.claim(ctx));
    }

    fn stopping(&mut self, _: &mut Context<Self>) -> Running {
        if let Some(id) = self.registration.take() {
            self.runtime.router().do_send(UnregisterWorker { id });
        }
        Running::Stop
    }
}

impl Handler<TaskAvailable> for Thumbnailer {
    type Result = ();

    fn handle(&mut self, _: TaskAvailable, ctx: &mut Context<Self>) {
        self.claim(ctx);
    }
}

/// Stops the actor once its claim under way, if any, is handled (it
/// unregisters on its way out).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for Thumbnailer {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        // Stopping drops the actor's futures, and a claim dropped in flight
        // still runs on the server: its tasks would stay leased, handled by
        // nobody, until the lease expires. So a claim under way finishes
        // (and handles its batch) first.
        self.stopping = true;
        if !self.claiming {
            ctx.stop();
        }
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the throwaway server alive until the end of main.
    let (_server, url) = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => (None, url),
        _ => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL");
            let server = pgwake::testing::TestPostgres::new()?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let mut client = pgwake::ConnectionConfig::from_url(&url)?.connect().await?;
    pgwake::migrate::up(&mut client, None).await?;

    // A runtime without workers of its own: listeners, router, notifier.
    let runtime = pgwake::Runtime::builder(pgwake::RuntimeConfig::new(&url))
        .start()
        .await?;
    let queue = Queue::new("thumbnails")?;
    let (handled_tx, mut handled) = mpsc::unbounded_channel();
    let thumbnailer = Thumbnailer::new(
        runtime.clone(),
        vec![queue.clone()],
        Duration::from_secs(30),
        handled_tx,
    )
    .start();

    // Standalone activities, owned by an execution of our choosing (no
    // workflow needs to exist; its results are simply not delivered).
    let owner = InstanceRef {
        instance_id: "photo-album".to_string(),
        execution_id: "upload-1".to_string(),
    };
    let images = ["beach", "mountain", "city"];
    for image in images {
        let id = runtime
            .store()
            .enqueue_activity(&owner, &queue, "thumbnail", json!({ "image": image }))
            .await?;
        println!("enqueued {id} ({image})");
    }
    for _ in images {
        let done = tokio::time::timeout(Duration::from_secs(10), handled.recv())
            .await
            .map_err(|_| "no thumbnail within 10 s")?
            .ok_or("the actor stopped")?;
        println!(
            "handled  {} ({}): {}",
            done.activity_id, done.name, done.result
        );
    }

    thumbnailer.send(Stop).await?;
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
