//! `pgwake bench recovery`: how soon a task written during an outage runs
//! once the outage ends, when only the listener's reconnect and resync can
//! find it (the workers' fallback timers are 10 minutes).
//!
//! Two outages: the listener's backend killed (`pg_terminate_backend`), and
//! the whole server restarted. The runtime runs on a thread of its own, as
//! a worker process would, so that this thread can block on the restart
//! while the runtime lives through it.

use std::time::{Duration, Instant};

use clap::Args;
use pgwake::{
    ActivityTask, ActivityWorker, ListenerState, Runtime, RuntimeConfig, RuntimeHandle, TaskKind,
};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::{connect, median, row, Progress, Server};
use crate::bounds::whole;

/// The most outages of each kind (a server restart takes seconds).
const MAX_REPEATS: usize = 1000;

#[derive(Debug, Args)]
pub(crate) struct RecoveryArgs {
    /// Measured outages of each kind; the median is reported (1 to 1000).
    #[arg(long, default_value_t = 5, value_parser = whole(1, MAX_REPEATS, "outages"))]
    repeats: usize,
    /// Seconds the listener stays connected before each outage (0 to
    /// 3600). The default, 11, lets its reconnect backoff start over (it
    /// does after 10 s connected), as between outages minutes apart;
    /// back-to-back outages meet a longer backoff on purpose.
    #[arg(long, default_value_t = 11, value_parser = whole(0, crate::bounds::MAX_BENCH_SECONDS, "seconds"))]
    settle: u64,
}

const QUEUE: &str = "recovery";
/// The activity listener's connection, as the runtime names it.
const LISTENER_APPLICATION: &str = "pgwake-listener:activity_tasks";
/// Fallback timers this long never fire during the run: only the resync
/// after reconnecting can find a task written during an outage.
const FALLBACK: Duration = Duration::from_secs(600);
/// Attempts per sample before giving up on getting a clean one.
const ATTEMPTS: usize = 5;

type Started = mpsc::UnboundedReceiver<(u64, Instant)>;

/// A runtime on its own thread and actix system.
struct RemoteRuntime {
    runtime: RuntimeHandle,
    started: Started,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RemoteRuntime {
    async fn start(url: &str) -> Result<Self, String> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let url = url.to_string();
        let thread = std::thread::Builder::new()
            .name("pgwake-runtime".into())
            .spawn(move || {
                actix_rt::System::new().block_on(async move {
                    match start_runtime(&url).await {
                        Ok((runtime, started)) => {
                            let _ = ready_tx.send(Ok((runtime.clone(), started)));
                            let _ = stop_rx.await;
                            runtime.shutdown(Duration::from_secs(5)).await;
                        }
                        Err(err) => {
                            let _ = ready_tx.send(Err(err));
                        }
                    }
                });
            })
            .map_err(|e| format!("starting the runtime's thread: {e}"))?;
        let (runtime, started) = ready_rx
            .await
            .map_err(|_| "the runtime's thread ended".to_string())??;
        Ok(Self {
            runtime,
            started,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RemoteRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn start_runtime(url: &str) -> Result<(RuntimeHandle, Started), String> {
    let (sender, started) = mpsc::unbounded_channel();
    let worker = ActivityWorker::new([QUEUE], move |task: ActivityTask| {
        // The handler's first line: the end of the measured interval.
        let at = Instant::now();
        let sender = sender.clone();
        async move {
            let _ = sender.send((task.input["i"].as_u64().unwrap_or(u64::MAX), at));
            Ok::<_, String>(Value::Null)
        }
    })
    .concurrency(4);
    let mut config = RuntimeConfig::new(url);
    config.fallback_while_listening = FALLBACK;
    config.fallback_while_degraded = FALLBACK;
    let runtime = Runtime::builder(config)
        .activity_worker(worker)
        .start()
        .await
        .map_err(|e| e.to_string())?;
    Ok((runtime, started))
}

/// The activity listener's state, how long it has been in it, and its reconnections.
fn activity_listener(runtime: &RuntimeHandle) -> Result<(ListenerState, Duration, u64), String> {
    runtime
        .health()
        .listeners
        .into_iter()
        .find(|l| l.kind == TaskKind::Activity)
        .map(|l| (l.state, l.for_how_long, l.reconnects))
        .ok_or_else(|| "the runtime has no activity listener".to_string())
}

/// Waits until every listener has listened for `settle`, and the worker
/// has finished every task and its follow-up poll came back empty.
async fn wait_ready(runtime: &RuntimeHandle, settle: Duration) -> Result<(), String> {
    let deadline = Instant::now() + settle + Duration::from_secs(30);
    loop {
        let health = runtime.health();
        let c = health.counters(TaskKind::Activity, QUEUE);
        // One task per claiming poll here, so finished polls = empty + claimed.
        if health.all_listening()
            && health.listeners.iter().all(|l| l.for_how_long >= settle)
            && c.completed == c.claimed
            && c.polls == c.empty_polls + c.claimed
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the runtime did not settle within 30 s: {c:?}, {:?}",
                health.listeners
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn insert(client: &Client, i: u64) -> Result<(), String> {
    let data = serde_json::to_vec(&json!({ "name": "bench", "input": { "i": i } }))
        .map_err(|e| e.to_string())?;
    client
        .execute(
            "WITH attrs AS (INSERT INTO attributes (event_id, instance_id, execution_id, data)
                            VALUES ($1, 'bench-recovery', 'e', $2))
             INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, schedule_event_id)
             VALUES ($1, 'bench-recovery', 'e', 11, 'recovery', now(), 0)",
            &[&format!("r{i}"), &data],
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn wait_for(started: &mut Started, index: u64) -> Result<Instant, String> {
    loop {
        match tokio::time::timeout(Duration::from_secs(30), started.recv()).await {
            Ok(Some((i, at))) if i == index => return Ok(at),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("the worker stopped".into()),
            Err(_) => {
                return Err(format!(
                    "activity {index} did not start within 30 s (the resync did not find it)"
                ))
            }
        }
    }
}

/// When the activity listener's last `LISTEN` succeeded (and it sent its
/// workers the resync), once it is Listening again: since issue #12 it
/// reports Listening only after its delivery probe came back, a round trip
/// later than the resync this benchmark measures from.
async fn listening_since(runtime: &RuntimeHandle) -> Result<Instant, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listener = runtime
            .health()
            .listeners
            .into_iter()
            .find(|l| l.kind == TaskKind::Activity)
            .ok_or_else(|| "the runtime has no activity listener".to_string())?;
        if let (ListenerState::Listening, Some(ago)) = (&listener.state, listener.last_listen_ago) {
            return Ok(Instant::now() - ago);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the activity listener is still {:?} after 30 s",
                listener.state
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn signed_ms(later: Instant, earlier: Instant) -> f64 {
    if later >= earlier {
        ms(later - earlier)
    } else {
        -ms(earlier - later)
    }
}

#[derive(Default)]
struct Samples {
    /// End of the outage to the handler's start.
    recovery: Vec<f64>,
    /// Start of the outage to the handler's start.
    from_start: Vec<f64>,
    /// End of the outage to the listener listening again.
    listener_back: Vec<f64>,
    /// Samples thrown away (listener back before the insert, or the task
    /// found by something other than the resync).
    discarded: usize,
    /// Samples kept whose task was written after the listener was back, so
    /// that its NOTIFY, not the resync, woke the worker (server restart only).
    notified: usize,
}

/// Kills the activity listener's backend, inserts a task while the
/// listener is away, and measures from its LISTEN succeeding again.
async fn killed_listener(
    remote: &mut RemoteRuntime,
    url: &str,
    (repeats, settle): (usize, Duration),
    next: &mut u64,
) -> Result<Samples, String> {
    let admin = connect(url).await?;
    let mut samples = Samples::default();
    let mut progress = Progress::new("killed listener", repeats as u64);
    while samples.recovery.len() < repeats {
        if samples.discarded >= ATTEMPTS * repeats.max(1) {
            return Err(
                "could not get a clean killed-listener sample (see the discarded samples)".into(),
            );
        }
        wait_ready(&remote.runtime, settle).await?;
        // Let the worker's follow-up wake-ups, if any, pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
        wait_ready(&remote.runtime, settle).await?;
        let (_, _, reconnects_before) = activity_listener(&remote.runtime)?;
        let i = *next;
        *next += 1;
        let killed_at = Instant::now();
        let killed: i64 = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE application_name = $1 AND datname = current_database()) AS t",
                &[&LISTENER_APPLICATION],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if killed != 1 {
            return Err(format!(
                "expected one backend named {LISTENER_APPLICATION}, found {killed}"
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while activity_listener(&remote.runtime)?.0 == ListenerState::Listening {
            if Instant::now() > deadline {
                return Err("the listener did not notice its backend's death within 5 s".into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        insert(&admin, i).await?;
        let inserted_at = Instant::now();
        let (state, _, reconnects) = activity_listener(&remote.runtime)?;
        let handler_at = wait_for(&mut remote.started, i).await?;
        let back_at = listening_since(&remote.runtime).await?;
        if state == ListenerState::Listening
            || reconnects != reconnects_before
            || back_at < inserted_at
            || handler_at < back_at
        {
            // Back before the insert committed (its NOTIFY may have woken
            // the worker), or found before the resync: not what we measure.
            samples.discarded += 1;
            eprintln!("  sample discarded: the listener was back before the insert, or the task was found before the resync");
            continue;
        }
        samples.recovery.push(signed_ms(handler_at, back_at));
        samples.from_start.push(signed_ms(handler_at, killed_at));
        samples.listener_back.push(signed_ms(back_at, killed_at));
        progress.tick(samples.recovery.len() as u64);
    }
    Ok(samples)
}

/// Restarts the throwaway server (fast shutdown, start, wait until ready),
/// inserts a task as soon as it is back, and measures from the restart's
/// return.
async fn server_restart(
    server: &mut Server,
    remote: &mut RemoteRuntime,
    (repeats, settle): (usize, Duration),
    next: &mut u64,
) -> Result<Samples, String> {
    let url = server.url.clone();
    let mut samples = Samples::default();
    let mut progress = Progress::new("server restart", repeats as u64);
    while samples.recovery.len() < repeats {
        if samples.discarded >= ATTEMPTS * repeats.max(1) {
            return Err(
                "could not get a clean server-restart sample (see the discarded samples)".into(),
            );
        }
        wait_ready(&remote.runtime, settle).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        wait_ready(&remote.runtime, settle).await?;
        let i = *next;
        *next += 1;
        let postgres = server.owned_mut().ok_or("no throwaway server to restart")?;
        let down_at = Instant::now();
        // Blocks this thread only: the runtime lives on its own.
        postgres
            .restart()
            .map_err(|e| format!("restarting the server: {e}"))?;
        let ready_at = Instant::now();
        let admin = connect(&url).await?;
        insert(&admin, i).await?;
        let inserted_at = Instant::now();
        let handler_at = wait_for(&mut remote.started, i).await?;
        let back_at = listening_since(&remote.runtime).await?;
        if handler_at < back_at {
            samples.discarded += 1;
            eprintln!("  sample discarded: the task was found before the listener was back");
            continue;
        }
        if back_at < inserted_at {
            // Back between the server's readiness and the insert: the task
            // was written right after the outage, as the scenario allows.
            samples.notified += 1;
        }
        samples.recovery.push(signed_ms(handler_at, ready_at));
        samples.from_start.push(signed_ms(handler_at, down_at));
        samples.listener_back.push(signed_ms(back_at, ready_at));
        progress.tick(samples.recovery.len() as u64);
    }
    Ok(samples)
}

fn summary(samples: &Samples) -> Value {
    json!({
        "samples_ms": samples.recovery,
        "from_outage_start_ms": samples.from_start,
        "listener_back_ms": samples.listener_back,
        "discarded": samples.discarded,
        "found_by_notify": samples.notified,
    })
}

pub(crate) async fn run(
    url: Option<String>,
    durable: bool,
    args: RecoveryArgs,
) -> Result<(Value, Value), String> {
    let given_server = url.is_some();
    let mut server = Server::open(url, durable).await?;
    println!("recovery on {}", server.description);
    let description = server.description.clone();
    let mut remote = RemoteRuntime::start(&server.url).await?;
    let mut next = 0u64;
    let settle = Duration::from_secs(args.settle);

    let outcome = async {
        let killed =
            killed_listener(&mut remote, &server.url, (args.repeats, settle), &mut next).await?;
        let restart = if server.owned_mut().is_some() {
            Some(server_restart(&mut server, &mut remote, (args.repeats, settle), &mut next).await?)
        } else {
            None
        };
        Ok::<_, String>((killed, restart))
    }
    .await;
    remote.stop();
    drop(remote);
    let (killed, restart) = outcome?;
    server.close().await;

    let killed_ms = median(&killed.recovery);
    let restart_ms = restart.as_ref().map(|r| median(&r.recovery));
    let fmt = |v: f64| format!("{v:.1}");
    println!("medians of {} outages each, in ms", args.repeats);
    row(
        "killed listener",
        &[
            ("recovery", fmt(killed_ms)),
            ("from kill", fmt(median(&killed.from_start))),
            ("listening after kill", fmt(median(&killed.listener_back))),
        ],
    );
    match &restart {
        Some(r) => row(
            "server restart",
            &[
                ("recovery", fmt(median(&r.recovery))),
                ("from stop", fmt(median(&r.from_start))),
                ("listening after ready", fmt(median(&r.listener_back))),
            ],
        ),
        None => println!(
            "server restart: not measured: --database-url's server is not ours to restart \
             (server_restart_ms is null)"
        ),
    }
    println!(
        "killed listener, recovery (killed_listener_ms): from the listener's LISTEN succeeding again (the end \
         of the outage) to the handler's first line: the resync, one poll, the handler's start. It excludes \
         the reconnect backoff (50-100 ms, jittered, for a first failure) and the reconnection, which \
         'from kill' includes: pg_terminate_backend returning to the handler's first line."
    );
    if let Some(r) = &restart {
        println!(
            "server restart, recovery (server_restart_ms): from the restarted server being ready (TestPostgres::restart \
             returned; it checks every 20 ms) to the handler's first line, for a task inserted as soon as the \
             server was back. It includes what is left of the listener's backoff, which doubled with every \
             failed attempt while the server was down ('listening after ready'), the reconnection, LISTEN, the \
             resync and one poll on a new pool connection. 'from stop' starts before the fast shutdown. In {} of \
             {} restarts the listener was back before the insert, and the task's NOTIFY woke the worker.",
            r.notified,
            r.recovery.len()
        );
    }
    println!(
        "workers' fallback timers: {} s, so no timer found any task: the resync after reconnecting did \
         (or the task's NOTIFY, where counted above).",
        FALLBACK.as_secs()
    );

    let results = json!({
        "killed_listener_ms": killed_ms,
        "server_restart_ms": restart_ms,
        "killed_listener": summary(&killed),
        "server_restart": restart.as_ref().map(summary),
    });
    let config = json!({
        "repeats": args.repeats,
        "settle_seconds": args.settle,
        "fallback_s": FALLBACK.as_secs(),
        "worker_concurrency": 4,
        "server_restart_measured": restart.is_some(),
        "server_restart_skipped_reason": given_server.then_some("--database-url's server cannot be restarted by the bench"),
        "server": description,
    });
    Ok((config, results))
}
