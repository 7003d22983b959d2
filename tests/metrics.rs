//! The `metrics` feature end to end: a runtime against a real PostgreSQL,
//! recorded by metrics-util's `DebuggingRecorder`.
//!
//! The recorder is global (spawned tasks and every actor see it), so this
//! binary holds one test: a second one running in parallel would see, and
//! through the recorder's draining snapshots take, the first one's values.
#![cfg(feature = "metrics")]

mod support;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use pgwake::metrics as m;
use pgwake::testing::fresh_database;
use pgwake::{
    ActivityTask, ActivityWorker, InstanceRef, Queue, Runtime, RuntimeConfig, TaskKind,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask, WorkflowWorker,
};
use serde_json::json;
use tokio::sync::mpsc;

/// The one recorder of this test binary, installed on first use.
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder is installed in this binary");
        m::describe();
        snapshotter
    })
}

/// `name{k=v,...}` with labels sorted, as the test names series.
fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// What the recorder saw. Its snapshots drain counters and histograms, so
/// they are added up here; gauges are as of the latest snapshot (which
/// resets them to zero until they are set again).
#[derive(Default)]
struct Seen {
    counters: HashMap<String, u64>,
    histograms: HashMap<String, Vec<f64>>,
    gauges: HashMap<String, f64>,
}

impl Seen {
    fn take(&mut self) {
        self.gauges.clear();
        for (key, _, _, value) in snapshotter().snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            let name = series(key.name(), &labels);
            match value {
                DebugValue::Counter(n) => *self.counters.entry(name).or_default() += n,
                DebugValue::Gauge(g) => {
                    self.gauges.insert(name, g.into_inner());
                }
                DebugValue::Histogram(samples) => self
                    .histograms
                    .entry(name)
                    .or_default()
                    .extend(samples.into_iter().map(|s| s.into_inner())),
            }
        }
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters
            .get(&series(name, labels))
            .copied()
            .unwrap_or(0)
    }

    fn samples(&self, name: &str, labels: &[(&str, &str)]) -> &[f64] {
        self.histograms
            .get(&series(name, labels))
            .map_or(&[], Vec::as_slice)
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.gauges.get(&series(name, labels)).copied()
    }
}

#[actix_rt::test]
async fn the_runtime_records_its_metrics() {
    let mut seen = Seen::default();
    seen.take();
    let database = fresh_database().await.unwrap();
    let url = database.url();

    let (sender, mut handled) = mpsc::unbounded_channel();
    let activities = ActivityWorker::new(["mx-acts"], move |task: ActivityTask| {
        let sender = sender.clone();
        async move {
            let _ = sender.send(task.activity_id.clone());
            Ok::<_, String>(json!("done"))
        }
    });
    let panicking = ActivityWorker::new(["mx-panics"], |_: ActivityTask| async move {
        panic!("this handler panics on purpose");
        #[allow(unreachable_code)]
        Ok::<_, String>(json!(null))
    });
    let workflows = WorkflowWorker::new(["mx-flows"], |_: WorkflowTask| async move {
        Ok::<_, String>(
            WorkflowCompletion::default().finish(WorkflowOutcome::Completed(json!(null))),
        )
    });
    // The fallback never fires in time: work is found through wake-ups only.
    let mut config = RuntimeConfig::new(url);
    config.fallback_while_listening = Duration::from_secs(600);
    config.fallback_while_degraded = Duration::from_secs(600);
    let runtime = Runtime::builder(config)
        .activity_worker(activities)
        .activity_worker(panicking)
        .workflow_worker(workflows)
        .start()
        .await
        .unwrap();
    support::eventually(Duration::from_secs(10), "listeners to listen", || async {
        runtime.health().all_listening()
    })
    .await;

    // Set in the same actor turn as the health state the wait saw.
    seen.take();
    for channel in ["activity_tasks", "workflow_tasks"] {
        assert_eq!(
            seen.gauge(m::LISTENER_LISTENING, &[("channel", channel)]),
            Some(1.0),
            "{channel}"
        );
    }

    // Work written by another connection, and notifications that wake nobody.
    let client = support::connect(url).await;
    client
        .batch_execute(
            "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
             VALUES ('ok-1', 'owner', 'e', 11, 'mx-acts', now()),
                    ('boom', 'owner', 'e', 11, 'mx-panics', now());
             INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ('flow', 'e', 0, 'mx-flows');
             INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
             VALUES ('start', 'flow', 'e', 1, now());
             SELECT pg_notify('activity_tasks', 'not a queue name!');
             SELECT pg_notify('activity_tasks', 'mx-nobody');",
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the activity did not start within 10 s")
        .unwrap();
    assert_eq!(first, "ok-1");
    support::eventually(
        Duration::from_secs(10),
        "the panic and the workflow's completion to be counted",
        || async {
            let health = runtime.health();
            health.counters(TaskKind::Activity, "mx-panics").panicked == 1
                && health.counters(TaskKind::Activity, "mx-acts").completed == 1
                && health.counters(TaskKind::Workflow, "mx-flows").completed == 1
        },
    )
    .await;

    // A write through the runtime's store: a local wake-up, and a NOTIFY for
    // the other processes, whose echo this process's listener receives too
    // (no pid filter: behind a pooler pids are shared).
    let owner = InstanceRef {
        instance_id: "owner".into(),
        execution_id: "e".into(),
    };
    runtime
        .store()
        .enqueue_activity(&owner, &Queue::new("mx-acts").unwrap(), "send", json!(1))
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), handled.recv())
        .await
        .expect("the enqueued activity did not start within 10 s")
        .unwrap();
    assert_ne!(second, "ok-1");

    let activity = [("channel", "activity_tasks")];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        seen.take();
        let dropped = |reason| {
            seen.counter(
                m::NOTIFICATIONS_DROPPED,
                &[("channel", "activity_tasks"), ("reason", reason)],
            )
        };
        let done = dropped("invalid_payload") >= 1
            && dropped("unserved_queue") >= 1
            && seen.counter(m::NOTIFICATIONS_SENT, &activity) >= 1
            && seen.counter(
                m::TASKS_COMPLETED,
                &[("kind", "activity"), ("queue", "mx-acts")],
            ) == 2
            // Sampled as soon as the notifier connected.
            && seen.gauge(m::NOTIFICATION_QUEUE_USAGE, &[]).is_some();
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the metrics; seen: {:#?}",
            (&seen.counters, &seen.gauges)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Notifications, wake-ups, polls.
    assert!(seen.counter(m::NOTIFICATIONS_RECEIVED, &activity) >= 3);
    assert!(
        seen.counter(m::NOTIFICATIONS_RECEIVED, &[("channel", "workflow_tasks")]) >= 1,
        "the workflow's pending event was notified"
    );
    let wakeups = |reason| {
        seen.counter(
            m::WAKEUPS,
            &[
                ("kind", "activity"),
                ("queue", "mx-acts"),
                ("reason", reason),
            ],
        )
    };
    assert!(wakeups("notification") >= 1);
    assert!(wakeups("local") >= 1);
    let acts = [("kind", "activity"), ("queue", "mx-acts")];
    assert!(
        seen.counter(m::POLLS, &acts) >= 3,
        "start, ok-1, the enqueued one"
    );
    assert!(seen.counter(m::EMPTY_POLLS, &acts) >= 1);

    // Latencies, all in seconds and plausible.
    for (name, labels) in [
        (m::CLAIM_DURATION, &[("kind", "activity")][..]),
        (m::CLAIM_DURATION, &[("kind", "workflow")][..]),
        (m::COMPLETION_DURATION, &[("kind", "activity")][..]),
        (m::COMPLETION_DURATION, &[("kind", "workflow")][..]),
        (m::ENQUEUE_TO_START, &acts[..]),
        (
            m::ENQUEUE_TO_START,
            &[("kind", "workflow"), ("queue", "mx-flows")][..],
        ),
        (m::HANDLER_DURATION, &acts[..]),
    ] {
        let samples = seen.samples(name, labels);
        assert!(!samples.is_empty(), "{name} {labels:?} has no samples");
        assert!(
            samples.iter().all(|s| (0.0..10.0).contains(s)),
            "{name} {labels:?}: {samples:?}"
        );
    }
    assert_eq!(seen.samples(m::ENQUEUE_TO_START, &acts).len(), 2);

    // Outcomes.
    let panics = [("kind", "activity"), ("queue", "mx-panics")];
    assert_eq!(seen.counter(m::HANDLER_PANICS, &panics), 1);
    assert_eq!(seen.counter(m::HANDLER_FAILURES, &panics), 0);
    assert_eq!(seen.counter(m::TASKS_COMPLETED, &panics), 0);
    assert_eq!(
        seen.counter(
            m::TASKS_COMPLETED,
            &[("kind", "workflow"), ("queue", "mx-flows")]
        ),
        1
    );
    assert_eq!(seen.counter(m::LEASES_LOST, &[("kind", "activity")]), 0);

    runtime.shutdown(Duration::from_secs(5)).await;
}
