//! The `Notifier`: after pgwake's own commits, wakes this process's workers
//! at once and sends one debounced NOTIFY per queue for the other processes,
//! from its own connection, outside every writer's transaction.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::Client;

use super::messages::{
    FlushNotifications, QueuesTouched, StopNotifying, TaskAvailable, TaskKind, WakeReason,
};
use super::router::QueueRouter;
use crate::connection::ConnectionConfig;
use crate::store::Queue;

/// Per queue: when it was last notified, and whether a touch is waiting
/// for the window's trailing edge.
#[derive(Debug, Default)]
struct Debounce {
    last_sent: Option<Instant>,
    /// A commit since the last NOTIFY waits for the trailing edge.
    waiting: bool,
    trailing_armed: bool,
}

/// Sends the NOTIFYs of pgwake's own writes, debounced per queue.
///
/// The first touch of a queue is notified at once (leading edge); touches
/// within `debounce` of a NOTIFY are notified once when the window ends
/// (trailing edge), so none is lost, and each process sends at most one
/// NOTIFY per queue per window whatever its write rate. A trailing NOTIFY is
/// always sent when a commit waits for it: a notification received after
/// our commit may have been sent before it, so receiving one proves nothing.
///
/// The runtime starts it; the store's commit hook and you reach it through
/// [`RuntimeHandle::notifier`](crate::RuntimeHandle::notifier), which is why
/// the type is public. You rarely send it [`QueuesTouched`] yourself:
/// writes through the store already do, and
/// [`RuntimeHandle::wake`](crate::RuntimeHandle::wake) does for those made in
/// your own transactions.
///
/// ```
/// use actix::prelude::*;
/// use pgwake::runtime::actors::{Notifier, QueuesTouched};
/// # fn example(runtime: pgwake::RuntimeHandle) -> Result<(), pgwake::StoreError> {
/// let notifier: &Addr<Notifier> = runtime.notifier();
/// let orders = vec![pgwake::Queue::new("orders")?];
/// notifier.do_send(QueuesTouched { workflow: orders, ..Default::default() });
/// # Ok(()) }
/// ```
pub struct Notifier {
    router: Addr<QueueRouter>,
    /// `None` in poll-only mode: local wake-ups only.
    connection: Option<ConnectionConfig>,
    channels: HashMap<TaskKind, String>,
    debounce: Duration,
    /// How long one NOTIFY may take before its connection is given up.
    deadline: Duration,
    sent: Arc<AtomicU64>,
    client: Option<Rc<Client>>,
    connecting: bool,
    sending: bool,
    windows: HashMap<(TaskKind, Queue), Debounce>,
    outbox: BTreeSet<(String, String)>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("connected", &self.client.is_some())
            .field("outbox", &self.outbox.len())
            .finish()
    }
}

impl Notifier {
    pub(crate) fn new(
        router: Addr<QueueRouter>,
        connection: Option<ConnectionConfig>,
        channels: HashMap<TaskKind, String>,
        debounce: Duration,
        deadline: Duration,
        sent: Arc<AtomicU64>,
    ) -> Self {
        Self {
            router,
            connection,
            channels,
            debounce,
            deadline,
            sent,
            client: None,
            connecting: false,
            sending: false,
            windows: HashMap::new(),
            outbox: BTreeSet::new(),
        }
    }

    fn touch(&mut self, kind: TaskKind, queue: Queue, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let debounce = self.debounce;
        let window = self.windows.entry((kind, queue.clone())).or_default();
        let open = window
            .last_sent
            .is_none_or(|sent| now.duration_since(sent) >= debounce);
        if open && !window.trailing_armed {
            window.last_sent = Some(now);
            self.enqueue(kind, &queue);
            self.flush(ctx);
            return;
        }
        window.waiting = true;
        if !window.trailing_armed {
            window.trailing_armed = true;
            let wait = window.last_sent.map_or(Duration::ZERO, |sent| {
                (sent + debounce).saturating_duration_since(now)
            });
            ctx.run_later(wait, move |act, ctx| act.trailing_edge(kind, queue, ctx));
        }
    }

    fn trailing_edge(&mut self, kind: TaskKind, queue: Queue, ctx: &mut Context<Self>) {
        let Some(window) = self.windows.get_mut(&(kind, queue.clone())) else {
            return;
        };
        window.trailing_armed = false;
        if !std::mem::take(&mut window.waiting) {
            return;
        }
        window.last_sent = Some(Instant::now());
        self.enqueue(kind, &queue);
        self.flush(ctx);
    }

    fn enqueue(&mut self, kind: TaskKind, queue: &Queue) {
        if let Some(channel) = self.channels.get(&kind) {
            self.outbox
                .insert((channel.clone(), queue.as_str().to_string()));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.sending || self.outbox.is_empty() {
            return;
        }
        // A connection already known dead (its server crashed or failed
        // over) is replaced now, not after a failed send and a 1 s pause.
        if self
            .client
            .as_ref()
            .is_some_and(|client| client.is_closed())
        {
            self.client = None;
        }
        let Some(client) = self.client.clone() else {
            self.connect(ctx);
            return;
        };
        self.sending = true;
        let batch: Vec<(String, String)> = std::mem::take(&mut self.outbox).into_iter().collect();
        let channels: Vec<String> = batch.iter().map(|(c, _)| c.clone()).collect();
        let queues: Vec<String> = batch.iter().map(|(_, q)| q.clone()).collect();
        // One statement, one transaction that writes nothing: no WAL flush,
        // and the commit lock is held by this connection only, for microseconds.
        // Bounded: a silent connection must not stop every later NOTIFY.
        let deadline = self.deadline;
        let send = async move {
            let sql = "SELECT pg_notify(c, q) FROM unnest($1::text[], $2::text[]) AS t(c, q)";
            match tokio::time::timeout(deadline, client.execute(sql, &[&channels, &queues])).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(err)) => Err(crate::error::ErrorChain(&err).to_string()),
                Err(_) => Err(format!("no answer within {deadline:?}")),
            }
        };
        ctx.spawn(send.into_actor(self).map(move |result, act, ctx| {
            act.sending = false;
            match result {
                Ok(()) => {
                    act.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    crate::metrics::notifications_sent(&batch);
                    act.flush(ctx);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "NOTIFY failed; retrying on a new connection");
                    act.client = None;
                    act.outbox.extend(batch);
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.flush(ctx));
                }
            }
        }));
    }

    #[cfg(feature = "metrics")]
    fn sample_queue_usage(&mut self, ctx: &mut Context<Self>) {
        if let Some(client) = self.client.clone() {
            ctx.spawn(crate::metrics::sample_notification_queue_usage(client).into_actor(self));
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let Some(config) = self.connection.clone() else {
            self.outbox.clear();
            return;
        };
        if self.connecting {
            return;
        }
        self.connecting = true;
        let connect = async move { config.connect().await };
        ctx.spawn(connect.into_actor(self).map(|result, act, ctx| {
            act.connecting = false;
            match result {
                Ok(client) => {
                    act.client = Some(Rc::new(client));
                    #[cfg(feature = "metrics")]
                    act.sample_queue_usage(ctx);
                    act.flush(ctx);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "notifier could not connect; retrying in 1 s");
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.flush(ctx));
                }
            }
        }));
    }
}

impl Actor for Notifier {
    type Context = Context<Self>;

    /// With the `metrics` feature, samples the notification queue's usage
    /// every `NOTIFICATION_QUEUE_SAMPLE_EVERY` while connected.
    #[cfg(feature = "metrics")]
    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(
            crate::metrics::NOTIFICATION_QUEUE_SAMPLE_EVERY,
            |act, ctx| act.sample_queue_usage(ctx),
        );
    }
}

impl Handler<QueuesTouched> for Notifier {
    type Result = ();

    fn handle(&mut self, msg: QueuesTouched, ctx: &mut Context<Self>) {
        let touched = msg
            .workflow
            .into_iter()
            .map(|q| (TaskKind::Workflow, q))
            .chain(msg.activity.into_iter().map(|q| (TaskKind::Activity, q)));
        for (kind, queue) in touched {
            // This process's workers first, with no database round trip.
            self.router.do_send(TaskAvailable {
                kind,
                queue: Some(queue.clone()),
                reason: WakeReason::Local,
            });
            if self.connection.is_some() {
                self.touch(kind, queue, ctx);
            }
        }
    }
}

impl Handler<FlushNotifications> for Notifier {
    type Result = usize;

    fn handle(&mut self, _: FlushNotifications, ctx: &mut Context<Self>) -> usize {
        let waiting: Vec<(TaskKind, Queue)> = self
            .windows
            .iter_mut()
            .filter_map(|(key, window)| std::mem::take(&mut window.waiting).then(|| key.clone()))
            .collect();
        for (kind, queue) in waiting {
            self.enqueue(kind, &queue);
        }
        self.flush(ctx);
        self.outbox.len() + usize::from(self.sending)
    }
}

impl Handler<StopNotifying> for Notifier {
    type Result = ();

    fn handle(&mut self, _: StopNotifying, ctx: &mut Context<Self>) {
        if !self.outbox.is_empty() {
            tracing::warn!(
                unsent = self.outbox.len(),
                "notifier stopped with NOTIFYs unsent; other processes find that work at their next poll"
            );
        }
        ctx.stop();
    }
}
