//! Runtime metrics through the [`metrics`](https://docs.rs/metrics) facade
//! (feature `metrics`).
//!
//! Without the feature this module still names every metric, and the
//! runtime's recording calls compile to nothing: the runtime calls this one
//! facade, never `cfg` at each site.
//!
//! pgwake only records; it installs no exporter. Install the recorder of
//! your choice (Prometheus, StatsD, OpenTelemetry ...) before starting the
//! runtime, then call [`describe`] once to give every metric its help text
//! and unit. Without a recorder every call is a no-op.
//!
//! ```no_run
//! // With e.g. metrics-exporter-prometheus:
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?;
//! pgwake::metrics::describe();
//! ```
//!
//! These metrics complement [`RuntimeHandle::health`](crate::RuntimeHandle::health),
//! whose counters are per runtime and read in-process; these go wherever
//! your recorder sends them.
//!
//! | Name | Type | Labels | Meaning |
//! | --- | --- | --- | --- |
//! | `pgwake_notifications_received_total` | counter | `channel` | Notifications this process's listener received on `channel`, including those then dropped. |
//! | `pgwake_notifications_dropped_total` | counter | `channel`, `reason` | Received notifications that woke nobody. `reason`: `invalid_payload` (the payload is not a valid queue name), `unserved_queue` (no worker of this process serves the queue). |
//! | `pgwake_wakeups_total` | counter | `kind`, `queue`, `reason` | Wake-ups delivered to workers, per queue; a wake-up for every queue of a worker (a resync, or a notification with an empty payload) counts once for each of its queues. `reason`: `notification`, `resync` (a listener (re)connected), `local` (this process committed work), `more_work` (a worker claimed a full batch). |
//! | `pgwake_polls_total` | counter | `kind`, `queue` | Polls (claim queries) by workers; `queue` is the worker's queue set, its names joined with `,` (queue names cannot hold a comma). A workflow worker's poll runs claim statements until one finds nothing or its free capacity is filled, and counts once. |
//! | `pgwake_empty_polls_total` | counter | `kind`, `queue` | Polls that claimed nothing (`queue` as for `pgwake_polls_total`). |
//! | `pgwake_poll_failures_total` | counter | `kind`, `queue` | Polls that failed (database unreachable ...) and are retried after a backoff (`queue` as for `pgwake_polls_total`). |
//! | `pgwake_claim_duration_seconds` | histogram | `kind` | Round trip of one successful claim statement, without the wait for a pooled connection. Recorded by the [`Store`](crate::Store), so direct calls of its `poll_*`/`claim_*` methods count too. |
//! | `pgwake_enqueue_to_start_seconds` | histogram | `kind`, `queue` | From when the task became ready in the database to its handler's start: an activity's `timestamp` ([`ActivityTask::enqueued_at`](crate::ActivityTask::enqueued_at); a `visible_at` set by another writer is not taken into account); for a workflow task, its oldest new event's `timestamp`, or `visible_at` if later (a timer counts from when it fired, not from when it was set). The database's clock is compared with this process's; a negative difference (clocks apart) is recorded as zero. |
//! | `pgwake_handler_duration_seconds` | histogram | `kind`, `queue` | How long handlers ran, to their return or panic; not recorded for a run abandoned because its lease was lost, nor for one cancelled at shutdown. |
//! | `pgwake_completion_duration_seconds` | histogram | `kind` | One successful transaction recording results, from `BEGIN` to `COMMIT`, without the wait for a pooled connection. One sample per transaction: a batch of activity results recorded together is one sample. Recorded by the [`Store`](crate::Store). |
//! | `pgwake_tasks_completed_total` | counter | `kind`, `queue` | Tasks whose handler succeeded and whose result was recorded. |
//! | `pgwake_handler_failures_total` | counter | `kind`, `queue` | Handlers that returned an error (an activity's is recorded as `ActivityFailed`; a workflow task is retried). |
//! | `pgwake_handler_panics_total` | counter | `kind`, `queue` | Handlers that panicked (caught; handled as a failure). |
//! | `pgwake_lease_extensions_total` | counter | `kind` | Leases extended by a running task's heartbeat. |
//! | `pgwake_leases_lost_total` | counter | `kind` | Leases found lost by a heartbeat or when the result was recorded (the task expired and was claimed again, or was deleted, e.g. with its ended workflow): the work is discarded. |
//! | `pgwake_results_not_recorded_total` | counter | `kind` | Finished tasks whose result could not be recorded after retries (database failure): they run again once their lease expires. |
//! | `pgwake_listener_listening` | gauge | `channel` | 1 while the listener of `channel` is listening (its delivery probe came back), 0 while it connects, backs off after a loss, finds its notifications not delivered, or is stopped. |
//! | `pgwake_listener_reconnects_total` | counter | `channel` | Successful `LISTEN`s after one or more failed attempts or a lost connection. |
//! | `pgwake_listener_probe_failures_total` | counter | `channel` | Delivery probes of the listener of `channel` that did not come back within `listener_probe_timeout`, or could not be sent: its notifications are not delivered (typically a transaction pooler between it and PostgreSQL), and its workers poll every `fallback_while_degraded`. While they fail, it probes again every `listener_ping_after`. |
//! | `pgwake_notifications_sent_total` | counter | `channel` | NOTIFYs this process's notifier sent for its own writes (one per queue per send). |
//! | `pgwake_retention_removed_total` | counter | | Finished executions (with their history, events, activities and attributes) removed by the retention of this process while it was the maintainer. |
//! | `pgwake_notification_queue_usage` | gauge | | The fraction (0 to 1) of PostgreSQL's notification queue in use, from `pg_notification_queue_usage()`: server-wide, not per process. Sampled every 10 s by the notifier while it has a connection (it connects at the first write through the runtime's store; never in poll-only mode). When full, `NOTIFY` fails: a listening session is not consuming (typically one left idle in a transaction). |
//!
//! Label values: `kind` is `workflow` or `activity`; `channel` is the
//! channel's name (`activity_tasks`, `workflow_tasks`, or schema-qualified
//! ones); `queue` is a queue's name. A label per queue means one series per
//! queue: keep queue names few, not one per tenant or per user.
//!
//! Durations are recorded in seconds (`f64`). The facade leaves bucketing
//! to the exporter: with Prometheus, configure buckets for the `_seconds`
//! metrics, or they are exported as summaries.

#![cfg_attr(not(feature = "metrics"), allow(unused_variables, dead_code))]

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

// Without the feature the recording macros below take the place of the
// `metrics` crate's, and expand to a value whose methods do nothing: their
// arguments are not even evaluated, so the labels cost nothing either.

#[cfg(feature = "metrics")]
use ::metrics::{counter, gauge, histogram, Unit};

#[cfg(not(feature = "metrics"))]
mod disabled {
    /// What a recording macro gives when metrics are compiled out.
    pub(super) struct Nothing;

    impl Nothing {
        pub(super) fn increment(&self, _: u64) {}
        pub(super) fn set(&self, _: f64) {}
        pub(super) fn record(&self, _: f64) {}
    }

    macro_rules! counter {
        ($($ignored:tt)*) => {
            disabled::Nothing
        };
    }
    macro_rules! gauge {
        ($($ignored:tt)*) => {
            disabled::Nothing
        };
    }
    macro_rules! histogram {
        ($($ignored:tt)*) => {
            disabled::Nothing
        };
    }
    pub(super) use {counter, gauge, histogram};
}
#[cfg(not(feature = "metrics"))]
use disabled::{counter, gauge, histogram};

use crate::kinds::{TaskKind, WakeReason};
use crate::store::{ActivityTask, Queue, WorkflowTask};

/// Counter: notifications received by this process's listeners (label `channel`).
///
/// ```
/// assert_eq!(pgwake::metrics::NOTIFICATIONS_RECEIVED, "pgwake_notifications_received_total");
/// ```
pub const NOTIFICATIONS_RECEIVED: &str = "pgwake_notifications_received_total";
/// Counter: received notifications that woke nobody (labels `channel`, `reason`:
/// `invalid_payload`, `unserved_queue`).
///
/// ```
/// assert_eq!(pgwake::metrics::NOTIFICATIONS_DROPPED, "pgwake_notifications_dropped_total");
/// ```
pub const NOTIFICATIONS_DROPPED: &str = "pgwake_notifications_dropped_total";
/// Counter: wake-ups delivered to workers, per queue (labels `kind`, `queue`,
/// `reason`: `notification`, `resync`, `local`, `more_work`).
///
/// ```
/// assert_eq!(pgwake::metrics::WAKEUPS, "pgwake_wakeups_total");
/// ```
pub const WAKEUPS: &str = "pgwake_wakeups_total";
/// Counter: polls by workers (labels `kind`, `queue`: the worker's queues
/// joined with `,`).
///
/// ```
/// assert_eq!(pgwake::metrics::POLLS, "pgwake_polls_total");
/// ```
pub const POLLS: &str = "pgwake_polls_total";
/// Counter: polls that claimed nothing (labels as [`POLLS`]).
///
/// ```
/// assert_eq!(pgwake::metrics::EMPTY_POLLS, "pgwake_empty_polls_total");
/// ```
pub const EMPTY_POLLS: &str = "pgwake_empty_polls_total";
/// Counter: polls that failed and are retried after a backoff (labels as [`POLLS`]).
///
/// ```
/// assert_eq!(pgwake::metrics::POLL_FAILURES, "pgwake_poll_failures_total");
/// ```
pub const POLL_FAILURES: &str = "pgwake_poll_failures_total";
/// Histogram, seconds: one claim statement's round trip (label `kind`).
///
/// ```
/// assert_eq!(pgwake::metrics::CLAIM_DURATION, "pgwake_claim_duration_seconds");
/// ```
pub const CLAIM_DURATION: &str = "pgwake_claim_duration_seconds";
/// Histogram, seconds: from the task's ready time in the database to its
/// handler's start, clamped at zero (labels `kind`, `queue`).
///
/// ```
/// assert_eq!(pgwake::metrics::ENQUEUE_TO_START, "pgwake_enqueue_to_start_seconds");
/// ```
pub const ENQUEUE_TO_START: &str = "pgwake_enqueue_to_start_seconds";
/// Histogram, seconds: handler run time (labels `kind`, `queue`).
///
/// ```
/// assert_eq!(pgwake::metrics::HANDLER_DURATION, "pgwake_handler_duration_seconds");
/// ```
pub const HANDLER_DURATION: &str = "pgwake_handler_duration_seconds";
/// Histogram, seconds: one result-recording transaction (label `kind`).
///
/// ```
/// assert_eq!(pgwake::metrics::COMPLETION_DURATION, "pgwake_completion_duration_seconds");
/// ```
pub const COMPLETION_DURATION: &str = "pgwake_completion_duration_seconds";
/// Counter: tasks whose handler succeeded and whose result was recorded
/// (labels `kind`, `queue`).
///
/// ```
/// assert_eq!(pgwake::metrics::TASKS_COMPLETED, "pgwake_tasks_completed_total");
/// ```
pub const TASKS_COMPLETED: &str = "pgwake_tasks_completed_total";
/// Counter: handlers that returned an error (labels `kind`, `queue`).
///
/// ```
/// assert_eq!(pgwake::metrics::HANDLER_FAILURES, "pgwake_handler_failures_total");
/// ```
pub const HANDLER_FAILURES: &str = "pgwake_handler_failures_total";
/// Counter: handlers that panicked (labels `kind`, `queue`).
///
/// ```
/// assert_eq!(pgwake::metrics::HANDLER_PANICS, "pgwake_handler_panics_total");
/// ```
pub const HANDLER_PANICS: &str = "pgwake_handler_panics_total";
/// Counter: lease extensions by heartbeats (label `kind`).
///
/// ```
/// assert_eq!(pgwake::metrics::LEASE_EXTENSIONS, "pgwake_lease_extensions_total");
/// ```
pub const LEASE_EXTENSIONS: &str = "pgwake_lease_extensions_total";
/// Counter: leases lost before the result was recorded (label `kind`).
///
/// ```
/// assert_eq!(pgwake::metrics::LEASES_LOST, "pgwake_leases_lost_total");
/// ```
pub const LEASES_LOST: &str = "pgwake_leases_lost_total";
/// Counter: results that could not be recorded after retries (label `kind`).
///
/// ```
/// assert_eq!(pgwake::metrics::RESULTS_NOT_RECORDED, "pgwake_results_not_recorded_total");
/// ```
pub const RESULTS_NOT_RECORDED: &str = "pgwake_results_not_recorded_total";
/// Gauge: 1 while the listener of `channel` listens and its notifications are
/// delivered, else 0 (label `channel`).
///
/// ```
/// assert_eq!(pgwake::metrics::LISTENER_LISTENING, "pgwake_listener_listening");
/// ```
pub const LISTENER_LISTENING: &str = "pgwake_listener_listening";
/// Counter: successful `LISTEN`s after a failure or loss (label `channel`).
///
/// ```
/// assert_eq!(pgwake::metrics::LISTENER_RECONNECTS, "pgwake_listener_reconnects_total");
/// ```
pub const LISTENER_RECONNECTS: &str = "pgwake_listener_reconnects_total";
/// Counter: delivery probes that did not come back in time or could not be
/// sent (label `channel`).
///
/// ```
/// assert_eq!(pgwake::metrics::LISTENER_PROBE_FAILURES, "pgwake_listener_probe_failures_total");
/// ```
pub const LISTENER_PROBE_FAILURES: &str = "pgwake_listener_probe_failures_total";
/// Counter: NOTIFYs sent by this process's notifier (label `channel`).
///
/// ```
/// assert_eq!(pgwake::metrics::NOTIFICATIONS_SENT, "pgwake_notifications_sent_total");
/// ```
pub const NOTIFICATIONS_SENT: &str = "pgwake_notifications_sent_total";
/// Counter: finished executions removed by this process's retention, while
/// it was the maintainer (no labels).
///
/// ```
/// assert_eq!(pgwake::metrics::RETENTION_REMOVED, "pgwake_retention_removed_total");
/// ```
pub const RETENTION_REMOVED: &str = "pgwake_retention_removed_total";
/// Gauge: the fraction (0 to 1) of PostgreSQL's notification queue in use.
///
/// ```
/// assert_eq!(pgwake::metrics::NOTIFICATION_QUEUE_USAGE, "pgwake_notification_queue_usage");
/// ```
pub const NOTIFICATION_QUEUE_USAGE: &str = "pgwake_notification_queue_usage";

/// How often the notifier samples [`NOTIFICATION_QUEUE_USAGE`].
///
/// ```
/// use std::time::Duration;
/// assert_eq!(pgwake::metrics::NOTIFICATION_QUEUE_SAMPLE_EVERY, Duration::from_secs(10));
/// ```
pub const NOTIFICATION_QUEUE_SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[cfg(feature = "metrics")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Counter,
    Gauge,
    Histogram,
}

/// One metric as [`describe`] registers it.
#[cfg(feature = "metrics")]
struct Metric {
    name: &'static str,
    kind: Type,
    unit: Option<Unit>,
    help: &'static str,
}

#[cfg(feature = "metrics")]
const fn counter_def(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Type::Counter,
        unit: Some(Unit::Count),
        help,
    }
}

#[cfg(feature = "metrics")]
const fn seconds_def(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Type::Histogram,
        unit: Some(Unit::Seconds),
        help,
    }
}

#[cfg(feature = "metrics")]
const fn gauge_def(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        kind: Type::Gauge,
        unit: None,
        help,
    }
}

/// Every metric pgwake records, in the order of the table above.
#[cfg(feature = "metrics")]
const METRICS: &[Metric] = &[
    counter_def(NOTIFICATIONS_RECEIVED, "Notifications received by this process's listener, including those then dropped."),
    counter_def(NOTIFICATIONS_DROPPED, "Received notifications that woke nobody: invalid_payload, unserved_queue."),
    counter_def(WAKEUPS, "Wake-ups delivered to workers, per queue, by reason: notification, resync, local, more_work."),
    counter_def(POLLS, "Polls (claim queries) by workers; queue is the worker's queues joined with ','."),
    counter_def(EMPTY_POLLS, "Polls that claimed nothing."),
    counter_def(POLL_FAILURES, "Polls that failed and are retried after a backoff."),
    seconds_def(CLAIM_DURATION, "Round trip of one successful claim statement, without the wait for a pooled connection."),
    seconds_def(ENQUEUE_TO_START, "From the task's ready time in the database (timestamp, or visible_at if later) to its handler's start; negative clock differences count as zero."),
    seconds_def(HANDLER_DURATION, "How long handlers ran, to their return or panic."),
    seconds_def(COMPLETION_DURATION, "One successful result-recording transaction, BEGIN to COMMIT; a batch of activity results is one sample."),
    counter_def(TASKS_COMPLETED, "Tasks whose handler succeeded and whose result was recorded."),
    counter_def(HANDLER_FAILURES, "Handlers that returned an error."),
    counter_def(HANDLER_PANICS, "Handlers that panicked (caught and handled as a failure)."),
    counter_def(LEASE_EXTENSIONS, "Leases extended by a running task's heartbeat."),
    counter_def(LEASES_LOST, "Leases found lost by a heartbeat or when recording the result; the work was discarded."),
    counter_def(RESULTS_NOT_RECORDED, "Results that could not be recorded after retries; the task runs again after its lease expires."),
    gauge_def(LISTENER_LISTENING, "1 while the listener of the channel is listening and its delivery probe came back, else 0."),
    counter_def(LISTENER_RECONNECTS, "Successful LISTENs after one or more failed attempts or a lost connection."),
    counter_def(LISTENER_PROBE_FAILURES, "Delivery probes that did not come back within listener_probe_timeout or could not be sent: notifications are not delivered to the listener."),
    counter_def(NOTIFICATIONS_SENT, "NOTIFYs sent by this process's notifier for its own writes (one per queue per send)."),
    counter_def(RETENTION_REMOVED, "Finished executions removed by this process's retention while it was the maintainer."),
    gauge_def(NOTIFICATION_QUEUE_USAGE, "Fraction (0 to 1) of PostgreSQL's notification queue in use, server-wide, from pg_notification_queue_usage()."),
];

/// Registers the description and unit of every pgwake metric with the
/// installed recorder. Call it once, after installing the recorder; it is
/// harmless to call again, and metrics are recorded whether or not it is
/// called. Without the `metrics` feature it does nothing.
///
/// ```
/// // After installing a recorder; without one, this does nothing.
/// pgwake::metrics::describe();
/// ```
pub fn describe() {
    #[cfg(feature = "metrics")]
    for m in METRICS {
        match (m.kind, m.unit) {
            (Type::Counter, Some(unit)) => ::metrics::describe_counter!(m.name, unit, m.help),
            (Type::Counter, None) => ::metrics::describe_counter!(m.name, m.help),
            (Type::Gauge, Some(unit)) => ::metrics::describe_gauge!(m.name, unit, m.help),
            (Type::Gauge, None) => ::metrics::describe_gauge!(m.name, m.help),
            (Type::Histogram, Some(unit)) => ::metrics::describe_histogram!(m.name, unit, m.help),
            (Type::Histogram, None) => ::metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// The reasons of [`NOTIFICATIONS_DROPPED`].
pub(crate) const DROP_INVALID_PAYLOAD: &str = "invalid_payload";
pub(crate) const DROP_UNSERVED_QUEUE: &str = "unserved_queue";

fn kind_label(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Workflow => "workflow",
        TaskKind::Activity => "activity",
    }
}

fn reason_label(reason: WakeReason) -> &'static str {
    match reason {
        WakeReason::Notification => "notification",
        WakeReason::Resync => "resync",
        WakeReason::Local => "local",
        WakeReason::MoreWork => "more_work",
    }
}

/// A worker's queue set as one label value.
fn queue_set(queues: &[Queue]) -> String {
    queues
        .iter()
        .map(Queue::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

fn seconds_since(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

// Listener.

pub(crate) fn notification_received(channel: &str) {
    counter!(NOTIFICATIONS_RECEIVED, "channel" => channel.to_owned()).increment(1);
}

pub(crate) fn notification_dropped(channel: &str, reason: &'static str) {
    counter!(NOTIFICATIONS_DROPPED, "channel" => channel.to_owned(), "reason" => reason)
        .increment(1);
}

/// The listener's delivery probe came back: it listens.
pub(crate) fn listener_up(channel: &str) {
    gauge!(LISTENER_LISTENING, "channel" => channel.to_owned()).set(1.0);
}

/// A `LISTEN` succeeded after a failure or a loss.
pub(crate) fn listener_reconnected(channel: &str) {
    counter!(LISTENER_RECONNECTS, "channel" => channel.to_owned()).increment(1);
}

pub(crate) fn probe_failed(channel: &str) {
    counter!(LISTENER_PROBE_FAILURES, "channel" => channel.to_owned()).increment(1);
}

pub(crate) fn listener_down(channel: &str) {
    gauge!(LISTENER_LISTENING, "channel" => channel.to_owned()).set(0.0);
}

// Router.

pub(crate) fn wakeups(kind: TaskKind, queues: &[Queue], reason: WakeReason) {
    for queue in queues {
        counter!(WAKEUPS, "kind" => kind_label(kind), "queue" => queue.as_str().to_owned(), "reason" => reason_label(reason))
            .increment(1);
    }
}

// Worker.

pub(crate) fn poll(kind: TaskKind, queues: &[Queue]) {
    counter!(POLLS, "kind" => kind_label(kind), "queue" => queue_set(queues)).increment(1);
}

pub(crate) fn empty_poll(kind: TaskKind, queues: &[Queue]) {
    counter!(EMPTY_POLLS, "kind" => kind_label(kind), "queue" => queue_set(queues)).increment(1);
}

pub(crate) fn poll_failed(kind: TaskKind, queues: &[Queue]) {
    counter!(POLL_FAILURES, "kind" => kind_label(kind), "queue" => queue_set(queues)).increment(1);
}

/// `now - ready_at` in seconds, zero when the database's clock is ahead.
fn since_ready(ready_at: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(ready_at)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Records an activity handler's start; returns the instant to pass to
/// [`handler_ended`].
pub(crate) fn activity_started(task: &ActivityTask) -> Instant {
    histogram!(ENQUEUE_TO_START, "kind" => "activity", "queue" => task.queue.as_str().to_owned())
        .record(since_ready(task.enqueued_at));
    Instant::now()
}

/// Records a workflow handler's start: its oldest new event became ready
/// at its `timestamp`, or at its `visible_at` when later (a timer).
pub(crate) fn workflow_started(task: &WorkflowTask) -> Instant {
    if let Some(event) = task.new_events.first() {
        let ready_at = event
            .visible_at
            .map_or(event.timestamp, |v| v.max(event.timestamp));
        histogram!(ENQUEUE_TO_START, "kind" => "workflow", "queue" => task.queue.as_str().to_owned())
            .record(since_ready(ready_at));
    }
    Instant::now()
}

/// Records how a handler ended: `result` is its output wrapped in the
/// result of `catch_unwind`.
pub(crate) fn handler_ended<T, E, P>(
    kind: TaskKind,
    queue: &Queue,
    started: Instant,
    result: &Result<Result<T, E>, P>,
) {
    let (kind, queue) = (kind_label(kind), queue.as_str().to_owned());
    histogram!(HANDLER_DURATION, "kind" => kind, "queue" => queue.clone())
        .record(seconds_since(started));
    match result {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => counter!(HANDLER_FAILURES, "kind" => kind, "queue" => queue).increment(1),
        Err(_) => counter!(HANDLER_PANICS, "kind" => kind, "queue" => queue).increment(1),
    }
}

pub(crate) fn task_completed(kind: TaskKind, queue: &Queue) {
    counter!(TASKS_COMPLETED, "kind" => kind_label(kind), "queue" => queue.as_str().to_owned())
        .increment(1);
}

pub(crate) fn lease_extended(kind: TaskKind) {
    counter!(LEASE_EXTENSIONS, "kind" => kind_label(kind)).increment(1);
}

pub(crate) fn lease_lost(kind: TaskKind) {
    counter!(LEASES_LOST, "kind" => kind_label(kind)).increment(1);
}

pub(crate) fn result_not_recorded(kind: TaskKind) {
    counter!(RESULTS_NOT_RECORDED, "kind" => kind_label(kind)).increment(1);
}

// Store.

pub(crate) fn claim_duration(kind: TaskKind, started: Instant) {
    histogram!(CLAIM_DURATION, "kind" => kind_label(kind)).record(seconds_since(started));
}

pub(crate) fn completion_duration(kind: TaskKind, started: Instant) {
    histogram!(COMPLETION_DURATION, "kind" => kind_label(kind)).record(seconds_since(started));
}

// Maintainer.

/// Counts `executions` removed by one retention batch.
pub(crate) fn retention_removed(executions: u64) {
    if executions > 0 {
        counter!(RETENTION_REMOVED).increment(executions);
    }
}

// Notifier.

/// Counts a sent batch of `(channel, queue)` NOTIFYs.
pub(crate) fn notifications_sent(batch: &[(String, String)]) {
    for (channel, _) in batch {
        counter!(NOTIFICATIONS_SENT, "channel" => channel.clone()).increment(1);
    }
}

/// Reads `pg_notification_queue_usage()` on `client` into its gauge.
pub(crate) async fn sample_notification_queue_usage(client: Rc<tokio_postgres::Client>) {
    match client
        .query_one("SELECT pg_notification_queue_usage()", &[])
        .await
    {
        Ok(row) => gauge!(NOTIFICATION_QUEUE_USAGE).set(row.get::<_, f64>(0)),
        Err(err) => {
            tracing::debug!(error = %crate::error::ErrorChain(&err), "could not sample the notification queue's usage")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use ::metrics::{
        Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
    };

    use super::*;

    /// Names and units, in the order described.
    type Described = Arc<Mutex<Vec<(String, Option<Unit>)>>>;

    /// Keeps what was described.
    #[derive(Default)]
    struct Descriptions(Described);

    impl Descriptions {
        fn push(&self, key: KeyName, unit: Option<Unit>) {
            self.0
                .lock()
                .unwrap()
                .push((key.as_str().to_string(), unit));
        }
    }

    impl Recorder for Descriptions {
        fn describe_counter(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
            self.push(key, unit);
        }
        fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
            self.push(key, unit);
        }
        fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, _: SharedString) {
            self.push(key, unit);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn describe_covers_every_metric_of_the_table_once() {
        let recorder = Descriptions::default();
        let described = recorder.0.clone();
        ::metrics::with_local_recorder(&recorder, describe);
        let described = described.lock().unwrap().clone();
        let names: Vec<&str> = described.iter().map(|(n, _)| n.as_str()).collect();
        // The rows of the table in this module's documentation.
        let source = include_str!("metrics.rs");
        let table: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `pgwake_"))
            .map(|rest| rest.split('`').next().unwrap())
            .collect();
        assert_eq!(table.len(), METRICS.len(), "table rows vs metrics");
        for (row, name) in table.iter().zip(&names) {
            assert_eq!(format!("pgwake_{row}"), *name, "table order");
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a metric described twice");
        for (name, unit) in &described {
            if name.ends_with("_seconds") {
                assert_eq!(*unit, Some(Unit::Seconds), "{name}");
            }
            if name.ends_with("_total") {
                assert_eq!(*unit, Some(Unit::Count), "{name}");
            }
        }
    }

    #[test]
    fn the_table_states_each_metrics_type() {
        let source = include_str!("metrics.rs");
        for m in METRICS {
            let row = source
                .lines()
                .find(|l| l.starts_with(&format!("//! | `{}` |", m.name)))
                .unwrap_or_else(|| panic!("{} has no row", m.name));
            let stated = row.split('|').nth(2).unwrap().trim();
            let expected = match m.kind {
                Type::Counter => "counter",
                Type::Gauge => "gauge",
                Type::Histogram => "histogram",
            };
            assert_eq!(stated, expected, "{}", m.name);
        }
    }

    #[test]
    fn a_task_ready_in_the_future_waited_zero() {
        let ahead = SystemTime::now() + Duration::from_secs(5);
        assert_eq!(since_ready(ahead), 0.0);
        let behind = SystemTime::now() - Duration::from_secs(2);
        assert!(since_ready(behind) >= 2.0);
    }
}
