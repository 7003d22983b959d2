//! The real `pgwake` binary in several processes, checked from SQL alone.
//!
//! * The chaos test: three `pgwake work` processes on two queues, 500
//!   `fanout` instances (4 `echo` activities each, 50 of them behind a
//!   500 ms timer) started in waves while faults are injected between the
//!   waves: the pgwake backends are terminated (listeners and pools alike),
//!   the server is restarted, and a worker holding leases is killed with
//!   SIGKILL and replaced. At the end every instance must have finished with
//!   exactly one `ActivityCompleted` per `ActivityScheduled`, and nothing may
//!   be left behind: no pending event, no activity, no lease. After the last
//!   fault, workers may not sit idle for 5 s while work is claimable (a
//!   missed wake-up, see [`StallWatch`]).
//! * The scale-out check: six processes, each serving only some of three
//!   queues, the same workload without faults: no process ever holds a task
//!   of a queue it does not serve, every process takes part, and completions
//!   are exact.
//!
//! Figures (tasks, faults by kind, times, latencies and wake-up gaps) are
//! printed: run with `-- --nocapture`. For manual runs:
//! * `PGWAKE_SOAK_SECONDS=600` runs the chaos fault loop that long, with
//!   waves of 200 instances, and allows 180 s for the drain;
//! * `PGWAKE_CHAOS_ALLOW_STALLS=1` measures missed wake-ups instead of
//!   failing on them (the drain may then wait for the 60 s fallback poll:
//!   it is allowed 100 s);
//! * `PGWAKE_CHAOS_LOG=pgwake=debug` sets the workers' `RUST_LOG` (default
//!   `pgwake=info`);
//! * `PGWAKE_KEEP_LOGS=1` keeps the worker logs of a passing test too.
//!
//! Worker logs go to files in a temporary directory, kept, and summarised on
//! stderr, when a test fails.
#![cfg(feature = "cli")]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use pgwake::testing::{fresh_database, TestPostgres};
use pgwake::ConnectionConfig;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

const PGWAKE: &str = env!("CARGO_BIN_EXE_pgwake");

/// Activities per `fanout` instance.
const ACTIVITIES: i64 = 4;

/// Both tests run many processes on what may be a two-core machine: one at
/// a time, so that neither's time bound depends on the other.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// Worker processes

/// Runs `pgwake work` (`$0 "$@"`) under a shell that prints the worker's pid,
/// then waits for one line on stdin: `term` sends it SIGTERM, anything else,
/// or end of file, SIGKILL; then it waits for the worker and exits with its
/// status. End of file comes when the test drops the pipe, or when the test
/// process dies, however it dies (as for `TestPostgres`'s server): no worker
/// outlives its test, not even a test killed by a timeout.
const WATCHDOG: &str = r#"
"$0" "$@" </dev/null >/dev/null &
worker=$!
echo "$worker"
IFS= read -r how || how=gone
case "$how" in
  term) kill -TERM "$worker" 2>/dev/null ;;
  *) kill -KILL "$worker" 2>/dev/null ;;
esac
wait "$worker"
"#;

/// The `pgwake work` processes of a test and the directory of their logs.
/// Dropping it kills (SIGKILL) every worker still running, also when the
/// test panics (and their watchdogs do if the test process dies).
struct Processes {
    dir: PathBuf,
    url: String,
    work_args: Vec<String>,
    workers: Vec<Worker>,
    /// The message of a failure raised through [`Processes::fail`], printed
    /// again after the logs, so that it ends the output.
    failure: std::cell::RefCell<Option<String>>,
}

struct Worker {
    name: String,
    queues: Vec<String>,
    /// The watchdog shell; its exit status is the worker's.
    watchdog: Child,
    /// The watchdog's stdin: a line or end of file stops the worker.
    commands: Option<ChildStdin>,
    /// The `pgwake work` process itself.
    pid: u32,
    log: PathBuf,
    /// Exited (killed by the test, or stopped and reaped).
    status: Option<ExitStatus>,
    /// SIGKILLed by the test.
    killed: bool,
}

impl Processes {
    fn new(label: &str, url: &str, work_args: &[&str]) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir =
            std::env::temp_dir().join(format!("pgwake-{label}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Processes {
            dir,
            url: url.to_string(),
            work_args: work_args.iter().map(|a| a.to_string()).collect(),
            workers: Vec::new(),
            failure: std::cell::RefCell::new(None),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("DATABASE_URL", &self.url)
            .env(
                "RUST_LOG",
                std::env::var("PGWAKE_CHAOS_LOG").unwrap_or_else(|_| "pgwake=info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        command
    }

    /// Starts `pgwake work` on `queues`; returns its index.
    fn spawn(&mut self, queues: &[&str]) -> usize {
        let index = self.workers.len();
        let name = format!("w{}", index + 1);
        let log = self.dir.join(format!("{name}.log"));
        let mut command = self.command("sh");
        command.args(["-c", WATCHDOG, PGWAKE, "work"]);
        for queue in queues {
            command.args(["--queue", queue]);
        }
        command
            .args(&self.work_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut watchdog = command.spawn().expect("spawning pgwake work");
        let commands = watchdog.stdin.take();
        let mut first_line = String::new();
        std::io::BufReader::new(watchdog.stdout.take().expect("piped"))
            .read_line(&mut first_line)
            .expect("reading the worker's pid");
        let pid = first_line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the watchdog printed {first_line:?}, not a pid"));
        self.workers.push(Worker {
            name,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            watchdog,
            commands,
            pid,
            log,
            status: None,
            killed: false,
        });
        index
    }

    fn pid(&self, index: usize) -> u32 {
        self.workers[index].pid
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Worker)> {
        self.workers
            .iter()
            .enumerate()
            .filter(|(_, w)| w.status.is_none())
    }

    /// SIGKILL, no goodbye: its leases stay until they expire.
    fn kill9(&mut self, index: usize) {
        let worker = &mut self.workers[index];
        let mut commands = worker.commands.take().expect("a running worker");
        commands.write_all(b"kill\n").expect("asking for kill -9");
        drop(commands);
        worker.killed = true;
        worker.status = Some(worker.watchdog.wait().expect("reaping a killed worker"));
    }

    /// `pgwake start`: `count` fanout instances on `queue`.
    async fn start_instances(&self, queue: &str, count: u64, timer_ms: u64, prefix: &str) {
        let mut command = self.command(PGWAKE);
        command.args([
            "start",
            "--queue",
            queue,
            "--count",
            &count.to_string(),
            "--activities",
            &ACTIVITIES.to_string(),
            "--timer-ms",
            &timer_ms.to_string(),
            "--prefix",
            prefix,
        ]);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("running pgwake start");
        assert!(
            output.status.success(),
            "pgwake start failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// SIGTERM to every running worker, then waits for each to exit.
    async fn stop_all(&mut self, within: Duration) -> Vec<(String, bool, Option<ExitStatus>)> {
        for worker in self.workers.iter_mut().filter(|w| w.status.is_none()) {
            if let Some(commands) = worker.commands.as_mut() {
                let _ = commands.write_all(b"term\n");
            }
        }
        let deadline = Instant::now() + within;
        loop {
            let mut waiting = false;
            for worker in self.workers.iter_mut().filter(|w| w.status.is_none()) {
                match worker.watchdog.try_wait() {
                    Ok(Some(status)) => worker.status = Some(status),
                    _ => waiting = true,
                }
            }
            if !waiting || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.workers
            .iter()
            .map(|w| (w.name.clone(), w.killed, w.status))
            .collect()
    }

    /// The log lines of the worker with process id `pid` that tell of a
    /// task it may have left leased: failed polls (a claim may have committed
    /// before the failure), failed workflow tasks, lost leases, errors.
    fn lease_warnings_of(&self, pid: u32) -> Vec<String> {
        self.workers
            .iter()
            .filter(|w| w.pid == pid)
            .flat_map(|w| {
                std::fs::read_to_string(&w.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| {
                        l.contains("poll failed")
                            || l.contains("workflow task failed")
                            || l.contains("lease")
                            || l.contains(" ERROR ")
                    })
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Fails the test with `message`, which is printed again at the end of
    /// the cleanup's output (after the worker logs).
    fn fail(&self, message: String) -> ! {
        *self.failure.borrow_mut() = Some(message.clone());
        panic!("{message}");
    }

    /// Per worker: name, pid, queues, WARN and ERROR lines; then every
    /// distinct WARN/ERROR message with its count, over all logs.
    fn log_summary(&self) -> String {
        let mut out = String::new();
        let mut messages: BTreeMap<String, usize> = BTreeMap::new();
        for worker in &self.workers {
            let text = std::fs::read_to_string(&worker.log).unwrap_or_default();
            let (mut warns, mut errors) = (0, 0);
            for line in text.lines() {
                let level = if line.contains(" WARN ") {
                    warns += 1;
                    "WARN"
                } else if line.contains(" ERROR ") {
                    errors += 1;
                    "ERROR"
                } else {
                    continue;
                };
                // `<time> LEVEL target: message key=value ...`: the message.
                let message: Vec<&str> = line
                    .split_once(": ")
                    .map(|(_, rest)| rest)
                    .unwrap_or(line)
                    .split_whitespace()
                    .take_while(|word| !word.contains('='))
                    .collect();
                *messages
                    .entry(format!("{level} {}", message.join(" ")))
                    .or_default() += 1;
            }
            out.push_str(&format!(
                "  {} pid {} queues {:?}: {warns} WARN, {errors} ERROR lines, {}\n",
                worker.name,
                worker.pid,
                worker.queues,
                match (worker.killed, worker.status) {
                    (true, _) => "SIGKILLed by the test".to_string(),
                    (false, Some(status)) => format!("exited: {status}"),
                    (false, None) => "running".to_string(),
                }
            ));
        }
        for (message, count) in messages {
            out.push_str(&format!("  {count:>5} x {message}\n"));
        }
        out
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        // Summarised before the cleanup kills them, so that the exit column
        // shows what the test did.
        let summary = std::thread::panicking().then(|| self.log_summary());
        for worker in self.workers.iter_mut().filter(|w| w.status.is_none()) {
            // End of file: the watchdog SIGKILLs the worker and exits.
            drop(worker.commands.take());
            worker.status = worker.watchdog.wait().ok();
        }
        if let Some(summary) = summary {
            for worker in &self.workers {
                let mut text = String::new();
                if let Ok(mut file) = std::fs::File::open(&worker.log) {
                    let _ = file.read_to_string(&mut text);
                }
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("---- last lines of {}:", worker.log.display());
                for line in &lines[lines.len().saturating_sub(10)..] {
                    eprintln!("{line}");
                }
            }
            eprintln!("---- worker logs kept in {}", self.dir.display());
            eprintln!("{summary}");
            if let Some(failure) = self.failure.borrow().as_deref() {
                eprintln!("---- the failure (as above):\n{failure}");
            }
        } else if std::env::var_os("PGWAKE_KEEP_LOGS").is_some() {
            eprintln!("---- worker logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------
// SQL

/// The test's own connection, reopened after the faults close it. Its
/// application_name is not `pgwake-%`, so it terminates nobody's but its own.
struct Admin {
    config: ConnectionConfig,
    client: Option<tokio_postgres::Client>,
}

impl Admin {
    fn new(url: &str) -> Self {
        Admin {
            config: ConnectionConfig::from_url(url)
                .unwrap()
                .with_application_name("chaos-admin"),
            client: None,
        }
    }

    async fn try_query(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, String> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(self.config.connect().await.map_err(|e| e.to_string())?);
        }
        let client = self.client.as_ref().expect("connected above");
        client.query(sql, params).await.map_err(|e| {
            self.client = None;
            e.to_string()
        })
    }

    /// Retried for up to 30 s: the server may be restarting.
    async fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Row> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_query(sql, params).await {
                Ok(rows) => return rows,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => panic!("{sql}: {err}"),
            }
        }
    }

    async fn one_i64(&mut self, sql: &str) -> i64 {
        self.query(sql, &[]).await[0].get(0)
    }
}

/// Waits until `processes` workers have both listeners connected.
async fn wait_listening(admin: &mut Admin, processes: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let listening = admin
            .one_i64(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name LIKE 'pgwake-listener:%'",
            )
            .await;
        if listening >= processes * 2 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {listening} listener connections after {within:?}, expected {}",
            processes * 2
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The process id inside a worker id (`prefix:host:PID:random`).
fn pid_of_worker(worker: &str) -> Option<u32> {
    worker.rsplit(':').nth(1)?.parse().ok()
}

/// What is left in the database, for failure messages.
async fn database_state(admin: &mut Admin) -> String {
    let rows = admin
        .query(
            "SELECT 'instances state=' || state || ' locked=' || (locked_until > now())::text, count(*)
               FROM instances GROUP BY 1
             UNION ALL
             SELECT 'pending_events visible=' || (visible_at IS NULL OR visible_at <= now())::text
                    || ' type=' || event_type, count(*)
               FROM pending_events GROUP BY 1
             UNION ALL
             SELECT 'activities queue=' || queue || ' locked=' || COALESCE((locked_until > now())::text, 'never'),
                    count(*)
               FROM activities GROUP BY 1
             ORDER BY 1",
            &[],
        )
        .await;
    rows.iter()
        .map(|r| format!("  {}: {}\n", r.get::<_, String>(0), r.get::<_, i64>(1)))
        .collect()
}

/// The unfinished instances (at most 20): lease holder (pid), lease
/// remaining (negative: expired), pending events (type, visible) and
/// activities (locked or not).
async fn unfinished_instances(admin: &mut Admin) -> String {
    let rows = admin
        .query(
            "SELECT i.instance_id, i.worker,
                    round(extract(epoch FROM i.locked_until - now())::numeric, 2)::text,
                    round(extract(epoch FROM now() - i.created_at)::numeric, 2)::text,
                    (SELECT string_agg(pe.event_type || CASE WHEN pe.visible_at IS NULL OR pe.visible_at <= now()
                                                        THEN '' ELSE '(later)' END, ',')
                       FROM pending_events pe
                      WHERE pe.instance_id = i.instance_id AND pe.execution_id = i.execution_id),
                    (SELECT string_agg(COALESCE(round(extract(epoch FROM a.locked_until - now())::numeric, 2)::text,
                                                'unclaimed'), ',')
                       FROM activities a
                      WHERE a.instance_id = i.instance_id AND a.execution_id = i.execution_id)
               FROM instances i WHERE i.state <> 2 ORDER BY i.created_at LIMIT 20",
            &[],
        )
        .await;
    rows.iter()
        .map(|r| {
            format!(
                "  {} age {} s, lease held by pid {:?} for {} s more, pending events [{}], \
                 activities' leases [{}]\n",
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(3).unwrap_or_default(),
                r.get::<_, Option<String>>(1)
                    .as_deref()
                    .and_then(pid_of_worker),
                r.get::<_, Option<String>>(2).unwrap_or_else(|| "-".into()),
                r.get::<_, Option<String>>(4).unwrap_or_default(),
                r.get::<_, Option<String>>(5).unwrap_or_default()
            )
        })
        .collect()
}

/// Watches for missed wake-ups: work that some worker could claim (an
/// active instance with a visible pending event and no live lease, or a
/// visible activity with no live lease) while no worker holds any lease at
/// all, i.e. every process sits idle although there is something to do.
/// Woken by notifications, due times and resyncs, a healthy runtime leaves
/// that state within milliseconds; a period of `limit` fails the test (unless
/// `PGWAKE_CHAOS_ALLOW_STALLS` is set, which only measures them). The
/// longest such period is reported as the "idle-with-work" gap.
struct StallWatch {
    limit: Duration,
    since: Option<Instant>,
    longest: Duration,
    allow: bool,
}

impl StallWatch {
    fn new(limit: Duration) -> Self {
        StallWatch {
            limit,
            since: None,
            longest: Duration::ZERO,
            allow: std::env::var_os("PGWAKE_CHAOS_ALLOW_STALLS").is_some(),
        }
    }

    fn longest(&self) -> Duration {
        self.since
            .map_or(self.longest, |since| self.longest.max(since.elapsed()))
    }

    async fn check(&mut self, admin: &mut Admin, processes: &Processes) {
        let rows = admin
            .query(
                "SELECT 'workflow', i.instance_id, i.worker,
                        extract(epoch FROM now() - i.locked_until)::float8
                   FROM instances i
                  WHERE i.state = 0 AND (i.locked_until IS NULL OR i.locked_until < now())
                    AND EXISTS (SELECT 1 FROM pending_events pe
                                 WHERE pe.instance_id = i.instance_id AND pe.execution_id = i.execution_id
                                   AND (pe.visible_at IS NULL OR pe.visible_at <= now()))
                    AND NOT EXISTS (SELECT 1 FROM instances l WHERE l.locked_until > now())
                    AND NOT EXISTS (SELECT 1 FROM activities l WHERE l.locked_until > now())
                 UNION ALL
                 SELECT 'activity', a.instance_id, a.worker,
                        extract(epoch FROM now() - a.locked_until)::float8
                   FROM activities a
                  WHERE (a.locked_until IS NULL OR a.locked_until < now())
                    AND (a.visible_at IS NULL OR a.visible_at <= now())
                    AND NOT EXISTS (SELECT 1 FROM instances l WHERE l.locked_until > now())
                    AND NOT EXISTS (SELECT 1 FROM activities l WHERE l.locked_until > now())
                  LIMIT 20",
                &[],
            )
            .await;
        if rows.is_empty() {
            if let Some(since) = self.since.take() {
                self.longest = self.longest.max(since.elapsed());
            }
            return;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.limit || self.allow {
            return;
        }
        let mut described = String::new();
        let mut holders = BTreeSet::new();
        for row in &rows {
            let worker: Option<String> = row.get(2);
            let pid = worker.as_deref().and_then(pid_of_worker);
            holders.extend(pid);
            described.push_str(&format!(
                "  {} task of {}: last lease by pid {:?}, {}\n",
                row.get::<_, &str>(0),
                row.get::<_, &str>(1),
                pid,
                match row.get::<_, Option<f64>>(3) {
                    Some(secs) => format!("expired {secs:.2} s ago"),
                    None => "never claimed".to_string(),
                }
            ));
        }
        let mut logs = String::new();
        for pid in holders {
            for line in processes.lease_warnings_of(pid) {
                logs.push_str(&format!("  pid {pid}: {line}\n"));
            }
        }
        processes.fail(format!(
            "missed wake-up: for {:?} no worker held any lease while this work was claimable \
             (first 20):\n{described}\
             what the processes that last held those leases logged about leases and polls:\n{logs}",
            since.elapsed(),
        ));
    }
}

/// Waits until `expected` instances exist and all have finished. Returns
/// how long that took, and what the unfinished instances looked like when
/// they were few and had been waiting for 10 s (stalls: what to look at).
async fn wait_all_finished(
    admin: &mut Admin,
    processes: &Processes,
    expected: i64,
    within: Duration,
    stalls_watch: &mut StallWatch,
) -> (Duration, Vec<String>) {
    let started = Instant::now();
    let mut stalls = Vec::new();
    let mut next_snapshot = Duration::from_secs(10);
    loop {
        let row = &admin
            .query(
                "SELECT count(*), count(*) FILTER (WHERE state = 2) FROM instances",
                &[],
            )
            .await[0];
        let (total, finished): (i64, i64) = (row.get(0), row.get(1));
        if total == expected && finished == expected {
            return (started.elapsed(), stalls);
        }
        stalls_watch.check(admin, processes).await;
        if started.elapsed() > next_snapshot && total - finished <= 20 {
            stalls.push(format!(
                "after {:.1} s of waiting:\n{}",
                started.elapsed().as_secs_f64(),
                unfinished_instances(admin).await
            ));
            next_snapshot += Duration::from_secs(20);
        }
        if started.elapsed() > within {
            let state = database_state(admin).await;
            let unfinished = unfinished_instances(admin).await;
            processes.fail(format!(
                "after {within:?}: {finished} of {total} instances finished (expected {expected});\n\
                 left in the database:\n{state}unfinished instances:\n{unfinished}\
                 earlier snapshots:\n{}",
                stalls.join(""),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Exactly-once recording, from SQL alone, once every instance finished.
async fn assert_exact(admin: &mut Admin, expected_instances: i64) {
    // Per instance: one start, one finish, 4 scheduled, 4 completed, no failure;
    // a timer (and its firing) exactly for the `timer-` instances.
    let wrong = admin
        .query(
            "SELECT i.instance_id, i.state,
                    count(h.*) FILTER (WHERE h.event_type = 1) AS started,
                    count(h.*) FILTER (WHERE h.event_type = 2) AS finished,
                    count(h.*) FILTER (WHERE h.event_type = 11) AS scheduled,
                    count(h.*) FILTER (WHERE h.event_type = 12) AS completed,
                    count(h.*) FILTER (WHERE h.event_type = 13) AS failed,
                    count(h.*) FILTER (WHERE h.event_type = 15) AS fired
               FROM instances i
               LEFT JOIN history h ON h.instance_id = i.instance_id AND h.execution_id = i.execution_id
              GROUP BY i.instance_id, i.state
             HAVING i.state <> 2
                 OR count(h.*) FILTER (WHERE h.event_type = 1) <> 1
                 OR count(h.*) FILTER (WHERE h.event_type = 2) <> 1
                 OR count(h.*) FILTER (WHERE h.event_type = 11) <> $1
                 OR count(h.*) FILTER (WHERE h.event_type = 12) <> $1
                 OR count(h.*) FILTER (WHERE h.event_type = 13) <> 0
                 OR count(h.*) FILTER (WHERE h.event_type = 15)
                    <> CASE WHEN i.instance_id LIKE 'timer-%' THEN 1 ELSE 0 END
              ORDER BY 1 LIMIT 20",
            &[&ACTIVITIES],
        )
        .await;
    let described: Vec<String> = wrong
        .iter()
        .map(|r| {
            format!(
                "{} state={} started={} finished={} scheduled={} completed={} failed={} fired={}",
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, i64>(2),
                r.get::<_, i64>(3),
                r.get::<_, i64>(4),
                r.get::<_, i64>(5),
                r.get::<_, i64>(6),
                r.get::<_, i64>(7)
            )
        })
        .collect();
    assert!(
        described.is_empty(),
        "instances whose history is not exact (first 20):\n{}",
        described.join("\n")
    );
    // Per activity: its ActivityScheduled is answered by exactly one completion.
    let unanswered = admin
        .one_i64(
            "SELECT count(*) FROM history s
              WHERE s.event_type = 11
                AND (SELECT count(*) FROM history c
                      WHERE c.instance_id = s.instance_id AND c.execution_id = s.execution_id
                        AND c.event_type = 12 AND c.schedule_event_id = s.sequence_id) <> 1",
        )
        .await;
    assert_eq!(
        unanswered, 0,
        "activities not answered by exactly one ActivityCompleted"
    );
    let totals = &admin
        .query(
            "SELECT (SELECT count(*) FROM instances),
                    (SELECT count(*) FROM history WHERE event_type = 12),
                    (SELECT count(*) FROM pending_events),
                    (SELECT count(*) FROM activities),
                    (SELECT count(*) FROM instances WHERE locked_until > now())",
            &[],
        )
        .await[0];
    assert_eq!(totals.get::<_, i64>(0), expected_instances, "instances");
    assert_eq!(
        totals.get::<_, i64>(1),
        expected_instances * ACTIVITIES,
        "ActivityCompleted events in all"
    );
    assert_eq!(totals.get::<_, i64>(2), 0, "rows left in pending_events");
    assert_eq!(totals.get::<_, i64>(3), 0, "rows left in activities");
    assert_eq!(totals.get::<_, i64>(4), 0, "instance leases still held");
}

/// Latency figures from the history's timestamps (each the `now()` of the
/// transaction that wrote the event), max and p99, in seconds:
/// * activity: `ActivityScheduled` -> its `ActivityCompleted` (queueing, the
///   50 ms handler, recording; a killed worker's task waits for its lease);
/// * wake-up: an instance's last `ActivityCompleted` -> its
///   `WorkflowExecutionFinished`, i.e. how long a workflow took to be woken
///   by, claim and act on the completion that finishes it: the "max wake-up
///   gap" this test reports (next to [`StallWatch`]'s idle-with-work gap);
/// * instance: `created_at` -> `completed_at` (timer instances include the
///   500 ms timer).
async fn latency_figures(admin: &mut Admin) -> String {
    let row = &admin
        .query(
            "WITH activity AS (
               SELECT extract(epoch FROM c.timestamp - s.timestamp)::float8 AS secs
                 FROM history s JOIN history c
                   ON c.instance_id = s.instance_id AND c.execution_id = s.execution_id
                  AND c.event_type = 12 AND c.schedule_event_id = s.sequence_id
                WHERE s.event_type = 11),
             wake AS (
               SELECT extract(epoch FROM f.timestamp - (
                        SELECT max(c.timestamp) FROM history c
                         WHERE c.instance_id = f.instance_id AND c.execution_id = f.execution_id
                           AND c.event_type = 12))::float8 AS secs
                 FROM history f WHERE f.event_type = 2),
             instance AS (
               SELECT extract(epoch FROM completed_at - created_at)::float8 AS secs FROM instances)
             SELECT (SELECT max(secs) FROM activity),
                    (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY secs) FROM activity),
                    (SELECT max(secs) FROM wake),
                    (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY secs) FROM wake),
                    (SELECT max(secs) FROM instance),
                    (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY secs) FROM instance)",
            &[],
        )
        .await[0];
    let f = |i: usize| row.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
    format!(
        "activity scheduled->completed max {:.3} s p99 {:.3} s; \
         wake-up last completion->finished max {:.3} s p99 {:.3} s; \
         instance created->finished max {:.3} s p99 {:.3} s",
        f(0),
        f(1),
        f(2),
        f(3),
        f(4),
        f(5)
    )
}

/// Which worker process last ran each instance's workflow task (the
/// `worker` column outlives the lease): instances per pid and queue.
async fn last_workflow_workers(admin: &mut Admin) -> BTreeMap<(u32, String), i64> {
    admin
        .query(
            "SELECT worker, queue, count(*) FROM instances GROUP BY 1, 2",
            &[],
        )
        .await
        .iter()
        .map(|r| {
            let worker: Option<String> = r.get(0);
            let pid = worker.as_deref().and_then(pid_of_worker).unwrap_or(0);
            ((pid, r.get::<_, String>(1)), r.get::<_, i64>(2))
        })
        .collect()
}

/// Asks the workers to stop (SIGTERM), checks they exit cleanly and leave
/// no connection behind.
async fn stop_gracefully(admin: &mut Admin, processes: &mut Processes) {
    let statuses = processes.stop_all(Duration::from_secs(20)).await;
    for (name, killed, status) in &statuses {
        let status = status.unwrap_or_else(|| panic!("{name} did not exit within 20 s of SIGTERM"));
        // Only the SIGKILLed ones may have exited otherwise than cleanly.
        assert!(status.success() || *killed, "{name} exited with {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = admin
            .one_i64(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name LIKE 'pgwake-%'",
            )
            .await;
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} pgwake connections remain after every worker exited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------
// The chaos test

#[derive(Debug, Default)]
struct Faults {
    termination_rounds: u32,
    listeners_terminated: i64,
    other_backends_terminated: i64,
    restarts: u32,
    restart_time: Duration,
    kills: u32,
    leases_held_by_killed: i64,
}

fn soak_seconds() -> Option<u64> {
    std::env::var("PGWAKE_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
}

/// Terminates every pgwake backend of the database: listeners, pools,
/// notifier, history readers.
async fn terminate_backends(admin: &mut Admin, faults: &mut Faults) {
    let rows = admin
        .query(
            "SELECT application_name LIKE 'pgwake-listener:%', count(*)
               FROM pg_stat_activity
              WHERE datname = current_database() AND application_name LIKE 'pgwake-%'
                AND pg_terminate_backend(pid)
              GROUP BY 1",
            &[],
        )
        .await;
    faults.termination_rounds += 1;
    for row in rows {
        if row.get::<_, bool>(0) {
            faults.listeners_terminated += row.get::<_, i64>(1);
        } else {
            faults.other_backends_terminated += row.get::<_, i64>(1);
        }
    }
}

/// A task whose lease a SIGKILLed worker held.
#[derive(Debug)]
struct Orphan {
    /// `activity` or `workflow`.
    kind: String,
    instance_id: String,
    /// The activity's id (its `ActivityScheduled` event id); empty for a workflow task.
    activity_id: String,
    /// The database's clock just before the kill.
    killed_at: std::time::SystemTime,
}

/// SIGKILLs worker `index` while it holds at least one activity lease, and
/// starts a replacement on the same queues. Returns the tasks it held.
async fn kill_mid_task(
    admin: &mut Admin,
    processes: &mut Processes,
    index: usize,
    faults: &mut Faults,
) -> Vec<Orphan> {
    let pattern = format!("%:{}:%", processes.pid(index));
    let deadline = Instant::now() + Duration::from_secs(15);
    let orphans = loop {
        let rows = admin
            .query(
                "SELECT 'activity', instance_id, activity_id, clock_timestamp() FROM activities
                  WHERE worker LIKE $1 AND locked_until > now()
                 UNION ALL
                 SELECT 'workflow', instance_id, '', clock_timestamp() FROM instances
                  WHERE worker LIKE $1 AND locked_until > now()",
                &[&pattern],
            )
            .await;
        if rows.iter().any(|r| r.get::<_, &str>(0) == "activity") {
            processes.kill9(index);
            faults.kills += 1;
            faults.leases_held_by_killed += rows.len() as i64;
            break rows
                .iter()
                .map(|r| Orphan {
                    kind: r.get(0),
                    instance_id: r.get(1),
                    activity_id: r.get(2),
                    killed_at: r.get(3),
                })
                .collect::<Vec<_>>();
        }
        assert!(
            Instant::now() < deadline,
            "worker {} held no activity lease for 15 s",
            processes.workers[index].name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let queues = processes.workers[index].queues.clone();
    let queues: Vec<&str> = queues.iter().map(String::as_str).collect();
    processes.spawn(&queues);
    orphans
}

/// How long after the kill each orphaned task was done again: an activity's
/// `ActivityCompleted`, or the next history event a workflow task wrote for
/// the instance (`ActivityScheduled`, `TimerScheduled` or
/// `WorkflowExecutionFinished`), in seconds.
async fn orphan_recovery(admin: &mut Admin, orphans: &[Orphan]) -> Vec<(String, f64)> {
    let mut recovered = Vec::new();
    for orphan in orphans {
        let rows = admin
            .query(
                "SELECT extract(epoch FROM min(h.timestamp) - $4)::float8 FROM history h
                  WHERE h.instance_id = $1
                    AND CASE WHEN $2 = 'activity'
                        THEN h.event_type = 12 AND h.schedule_event_id =
                             (SELECT s.sequence_id FROM history s
                               WHERE s.instance_id = $1 AND s.event_id = $3 AND s.event_type = 11)
                        ELSE h.event_type IN (2, 11, 14) AND h.timestamp > $4 END",
                &[
                    &orphan.instance_id,
                    &orphan.kind,
                    &orphan.activity_id,
                    &orphan.killed_at,
                ],
            )
            .await;
        let after: Option<f64> = rows[0].get(0);
        recovered.push((
            format!("{} of {}", orphan.kind, orphan.instance_id),
            after.unwrap_or(f64::NAN),
        ));
    }
    recovered
}

/// The `count` slowest instances' histories: event types with their offset
/// from the instance's creation, in seconds.
async fn slowest_instances(admin: &mut Admin, count: i64) -> String {
    let rows = admin
        .query(
            "WITH slow AS (
               SELECT instance_id, execution_id, created_at, completed_at FROM instances
                ORDER BY completed_at - created_at DESC NULLS FIRST LIMIT $1)
             SELECT s.instance_id,
                    extract(epoch FROM s.completed_at - s.created_at)::float8,
                    string_agg(h.event_type || '@' ||
                               round(extract(epoch FROM h.timestamp - s.created_at)::numeric, 2),
                               ' ' ORDER BY h.sequence_id)
               FROM slow s LEFT JOIN history h
                 ON h.instance_id = s.instance_id AND h.execution_id = s.execution_id
              GROUP BY 1, 2 ORDER BY 2 DESC NULLS FIRST",
            &[&count],
        )
        .await;
    rows.iter()
        .map(|r| {
            format!(
                "  {} took {:.2} s: {}\n",
                r.get::<_, String>(0),
                r.get::<_, Option<f64>>(1).unwrap_or(f64::NAN),
                r.get::<_, Option<String>>(2).unwrap_or_default()
            )
        })
        .collect()
}

#[actix_rt::test]
async fn chaos_workers_survive_terminated_backends_a_restart_and_a_kill() {
    let _serial = SERIAL.lock().await;
    let soak = soak_seconds();
    let began = Instant::now();
    // Declared before the processes, so dropped after them: the workers are
    // killed before their server goes away.
    let mut server = Some(TestPostgres::new().expect("a throwaway PostgreSQL"));
    let database = server.as_ref().unwrap().create_database().await.unwrap();
    let mut admin = Admin::new(database.url());
    let mut processes = Processes::new(
        "chaos",
        database.url(),
        &[
            "--concurrency",
            "4",
            "--activity-ms",
            "50",
            "--activity-lease",
            "5",
            "--workflow-lease",
            "5",
            "--shutdown-timeout",
            "5",
        ],
    );
    // Both queues are served by two processes; the third serves one.
    processes.spawn(&["qa", "qb"]);
    processes.spawn(&["qa", "qb"]);
    processes.spawn(&["qb"]);
    wait_listening(&mut admin, 3, Duration::from_secs(30)).await;
    let setup = began.elapsed();

    // Waves of instances, a fault after each: in the short mode five waves
    // of 100 (90 plain, 10 behind a 500 ms timer) = 500 instances, 50 with
    // timers; the soak mode repeats the cycle with waves of 200 until its
    // time is up.
    let wave_size: u64 = if soak.is_some() { 200 } else { 100 };
    let mut expected: i64 = 0;
    let mut faults = Faults::default();
    let mut orphans: Vec<Orphan> = Vec::new();
    let chaos_began = Instant::now();
    let mut wave: u64 = 0;
    loop {
        let plain = wave_size * 9 / 20;
        let timers = wave_size / 20;
        for queue in ["qa", "qb"] {
            processes
                .start_instances(queue, plain, 0, &format!("plain-{queue}-{wave}"))
                .await;
            processes
                .start_instances(queue, timers, 500, &format!("timer-{queue}-{wave}"))
                .await;
            expected += (plain + timers) as i64;
        }
        match wave % 5 {
            0 | 2 | 4 => terminate_backends(&mut admin, &mut faults).await,
            1 => {
                // Rotate the victim among the processes still running.
                let running: Vec<usize> = processes.running().map(|(i, _)| i).collect();
                let victim = running[(faults.kills as usize + 1) % running.len()];
                orphans
                    .extend(kill_mid_task(&mut admin, &mut processes, victim, &mut faults).await);
            }
            _ => {
                // Off the actors' thread: the restart blocks for a while.
                let taken = server.take().unwrap();
                let (back, took) = tokio::task::spawn_blocking(move || {
                    let mut taken = taken;
                    let started = Instant::now();
                    taken.restart().expect("restarting the server");
                    (taken, started.elapsed())
                })
                .await
                .unwrap();
                server = Some(back);
                faults.restarts += 1;
                faults.restart_time += took;
            }
        }
        wave += 1;
        // The fault schedule: about 2 s between faults.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let done = match soak {
            Some(seconds) => chaos_began.elapsed() >= Duration::from_secs(seconds),
            None => wave >= 5,
        };
        if done {
            break;
        }
    }
    let chaos_time = chaos_began.elapsed();

    let drain_limit = Duration::from_secs(if soak.is_some() {
        180
    } else if std::env::var_os("PGWAKE_CHAOS_ALLOW_STALLS").is_some() {
        100
    } else {
        60
    });
    // Only after the last fault: while the server restarts or listeners
    // reconnect, idle workers with work waiting are expected.
    let mut stall_watch = StallWatch::new(Duration::from_secs(5));
    let (drain_time, stalls) = wait_all_finished(
        &mut admin,
        &processes,
        expected,
        drain_limit,
        &mut stall_watch,
    )
    .await;
    assert_exact(&mut admin, expected).await;
    let latencies = latency_figures(&mut admin).await;
    let by_worker = last_workflow_workers(&mut admin).await;
    let recovery = orphan_recovery(&mut admin, &orphans).await;
    let slowest = slowest_instances(&mut admin, 3).await;
    let summary = processes.log_summary();
    stop_gracefully(&mut admin, &mut processes).await;

    println!(
        "chaos: {expected} instances, {} activities completed exactly once, {} workers spawned\n\
         faults: {} termination rounds ({} listener + {} other backends), \
         {} restart(s) ({:.2} s), {} SIGKILL(s) of a worker holding {} lease(s), replaced\n\
         time: setup {:.1} s, waves+faults {:.1} s, drain after the last fault {:.1} s, total {:.1} s\n\
         {latencies}; idle-with-work gap after the last fault max {:.2} s\n\
         tasks of the killed worker done again after (s): {recovery:?}\n\
         stalled instances while draining: {}\n\
         slowest instances (event type @ seconds after creation):\n{slowest}\
         final workflow task by (pid, queue): {by_worker:?}\n\
         worker logs:\n{summary}",
        expected * ACTIVITIES,
        processes.workers.len(),
        faults.termination_rounds,
        faults.listeners_terminated,
        faults.other_backends_terminated,
        faults.restarts,
        faults.restart_time.as_secs_f64(),
        faults.kills,
        faults.leases_held_by_killed,
        setup.as_secs_f64(),
        chaos_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        stall_watch.longest().as_secs_f64(),
        if stalls.is_empty() {
            "none".to_string()
        } else {
            format!("\n{}", stalls.join(""))
        },
    );
    assert!(faults.listeners_terminated > 0 && faults.other_backends_terminated > 0);
    drop(processes);
    drop(server);
}

// ---------------------------------------------------------------------------
// The scale-out check

#[actix_rt::test]
async fn scale_out_six_processes_route_queues_and_complete_exactly() {
    let _serial = SERIAL.lock().await;
    let began = Instant::now();
    let database = fresh_database().await.expect("a test database");
    let mut admin = Admin::new(database.url());
    let mut processes = Processes::new(
        "scale",
        database.url(),
        &["--concurrency", "4", "--activity-ms", "50"],
    );
    let serves: [&[&str]; 6] = [
        &["q1"],
        &["q2"],
        &["q3"],
        &["q1", "q2"],
        &["q2", "q3"],
        &["q1", "q3"],
    ];
    for queues in serves {
        processes.spawn(queues);
    }
    let queues_of_pid: BTreeMap<u32, Vec<String>> = processes
        .workers
        .iter()
        .map(|w| (w.pid, w.queues.clone()))
        .collect();
    wait_listening(&mut admin, 6, Duration::from_secs(30)).await;
    let setup = began.elapsed();

    // 500 instances: 150 plain and 16 or 17 behind a 500 ms timer per queue.
    let run_began = Instant::now();
    let mut expected: i64 = 0;
    for (queue, timers) in [("q1", 17), ("q2", 17), ("q3", 16)] {
        processes
            .start_instances(queue, 150, 0, &format!("plain-{queue}"))
            .await;
        processes
            .start_instances(queue, timers, 500, &format!("timer-{queue}"))
            .await;
        expected += 150 + timers as i64;
    }
    assert_eq!(expected, 500);

    // While they run, sample who holds which queue's leases.
    let mut held: BTreeSet<(&'static str, String, u32)> = BTreeSet::new();
    let mut unknown_workers: BTreeSet<String> = BTreeSet::new();
    let mut stall_watch = StallWatch::new(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let rows = admin
            .query(
                "SELECT 'activity', queue, worker FROM activities
                  WHERE locked_until > now() AND worker IS NOT NULL
                 UNION
                 SELECT 'workflow', queue, worker FROM instances
                  WHERE locked_until > now() AND worker IS NOT NULL
                 UNION ALL
                 SELECT 'unfinished', count(*)::text, '' FROM instances WHERE state <> 2",
                &[],
            )
            .await;
        let mut unfinished = -1;
        for row in rows {
            let kind: String = row.get(0);
            let (queue, worker): (String, String) = (row.get(1), row.get(2));
            let kind = match kind.as_str() {
                "activity" => "activity",
                "workflow" => "workflow",
                _ => {
                    unfinished = queue.parse().unwrap();
                    continue;
                }
            };
            match pid_of_worker(&worker) {
                Some(pid) if queues_of_pid.contains_key(&pid) => {
                    held.insert((kind, queue, pid));
                }
                _ => {
                    unknown_workers.insert(worker);
                }
            }
        }
        if unfinished == 0 {
            break;
        }
        stall_watch.check(&mut admin, &processes).await;
        if Instant::now() > deadline {
            let state = database_state(&mut admin).await;
            let stuck = unfinished_instances(&mut admin).await;
            processes.fail(format!(
                "{unfinished} instances unfinished after 45 s; left:\n{state}\
                 unfinished instances:\n{stuck}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_time = run_began.elapsed();
    assert_exact(&mut admin, expected).await;

    // Routing: nobody held a task of a queue it does not serve...
    assert!(
        unknown_workers.is_empty(),
        "leases held by unknown workers: {unknown_workers:?}"
    );
    let by_worker = last_workflow_workers(&mut admin).await;
    let misrouted: Vec<String> = held
        .iter()
        .map(|(kind, queue, pid)| (kind.to_string(), queue.clone(), *pid))
        .chain(
            by_worker
                .keys()
                .map(|(pid, queue)| ("last workflow task".to_string(), queue.clone(), *pid)),
        )
        .filter(|(_, queue, pid)| {
            !queues_of_pid
                .get(pid)
                .is_some_and(|served| served.contains(queue))
        })
        .map(|(kind, queue, pid)| format!("{kind} of {queue} by pid {pid}"))
        .collect();
    assert!(misrouted.is_empty(), "misrouted tasks: {misrouted:?}");
    // ...every process took part, and every queue was served by several.
    let participants: BTreeSet<u32> = held
        .iter()
        .map(|(_, _, pid)| *pid)
        .chain(by_worker.keys().map(|(pid, _)| *pid))
        .collect();
    for (pid, queues) in &queues_of_pid {
        assert!(
            participants.contains(pid),
            "process {pid} (queues {queues:?}) was never seen working"
        );
    }
    for queue in ["q1", "q2", "q3"] {
        let servers: BTreeSet<u32> = held
            .iter()
            .filter(|(kind, q, _)| *kind == "activity" && q == queue)
            .map(|(_, _, pid)| *pid)
            .collect();
        assert!(
            servers.len() >= 2,
            "{queue}'s activities were run by {servers:?} only"
        );
    }
    let latencies = latency_figures(&mut admin).await;
    let summary = processes.log_summary();
    stop_gracefully(&mut admin, &mut processes).await;

    let mut activity_pids: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (kind, queue, pid) in &held {
        if *kind == "activity" {
            activity_pids.entry(queue.clone()).or_default().insert(*pid);
        }
    }
    println!(
        "scale-out: {expected} instances, {} activities completed exactly once, 6 processes\n\
         serving: {queues_of_pid:?}\n\
         activity leases seen per queue (pids): {activity_pids:?}\n\
         final workflow task by (pid, queue): {by_worker:?}\n\
         time: setup {:.1} s, start to all finished {:.1} s, total {:.1} s\n\
         {latencies}; idle-with-work gap max {:.2} s\n\
         worker logs:\n{summary}",
        expected * ACTIVITIES,
        setup.as_secs_f64(),
        run_time.as_secs_f64(),
        began.elapsed().as_secs_f64(),
        stall_watch.longest().as_secs_f64(),
    );
}
