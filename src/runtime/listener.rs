//! The `ListenerActor`: one per channel, on a dedicated connection, turning
//! notifications into wake-ups and connection loss into a restart, and
//! checking that notifications really reach that connection.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::{AsyncMessage, Client};

use super::backoff::Backoff;
use super::health::{HealthBoard, ListenerState};
use super::messages::{ListenerStateChanged, StopListening, TaskAvailable, TaskKind, WakeReason};
use super::router::QueueRouter;
use crate::connection::ConnectionConfig;
use crate::error::ErrorChain;
use crate::store::Queue;

/// Settings a listener needs.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSettings {
    pub(crate) kind: TaskKind,
    pub(crate) channel: String,
    pub(crate) connection: ConnectionConfig,
    pub(crate) ping_after: Duration,
    pub(crate) ping_timeout: Duration,
    /// How long a delivery probe may take to come back.
    pub(crate) probe_timeout: Duration,
    pub(crate) backoff: Backoff,
    /// How long a connection must stay up before the backoff starts over.
    pub(crate) stable_after: Duration,
}

/// Owns one connection that `LISTEN`s on one channel.
///
/// Any error, the end of the connection's stream, or a ping (or `LISTEN`)
/// unanswered within its timeout is a loss: the actor stops and its
/// [`Supervisor`] restarts it, which drops the old connection; it reconnects
/// after a jittered exponential backoff that resets once `LISTEN` succeeds.
/// After every successful `LISTEN` it publishes a resync at once, because
/// notifications sent while it was away are gone.
///
/// # Delivery self-check
/// A successful `LISTEN` does not prove that notifications arrive: behind a
/// transaction-mode pooler (PgBouncer) the `LISTEN` ran on a server backend
/// that went back to the pool, and a proxy may drop the asynchronous
/// messages that carry notifications. So after every `LISTEN`, first or
/// after a reconnect, the listener also listens on a private probe channel
/// and sends a `NOTIFY` on it from a short-lived connection of its own; it
/// reports [`ListenerState::Listening`] only once that probe comes back
/// within `listener_probe_timeout`. Otherwise it reports
/// [`ListenerState::NotDelivering`], its workers poll every
/// `fallback_while_degraded` as when it is down, it warns once, and it probes
/// again every `listener_ping_after` until a probe comes back.
///
/// The runtime starts one per channel and owns it; users see it only
/// through [`Health::listeners`](crate::Health::listeners).
pub(crate) struct ListenerActor {
    settings: ListenerSettings,
    router: Addr<QueueRouter>,
    health: HealthBoard,
    /// Failed attempts in a row; survives restarts, reset once a
    /// connection has stayed up for `stable_after`.
    failures: u32,
    client: Option<Rc<Client>>,
    last_traffic: Instant,
    ping_in_flight: bool,
    /// This incarnation already reported its loss.
    lost: bool,
    shut_down: bool,
    /// The private channel this connection's delivery probes travel on,
    /// new for every connection (see [`ListenerActor::listen`]).
    probe_channel: String,
    /// The delivery self-check; survives restarts, so that a listener stuck
    /// behind a pooler warns once, not after every reconnect.
    delivery: DeliveryCheck,
    /// This connection's `LISTEN` followed a failure, and its first
    /// confirmed delivery has not been reported yet.
    reconnected: bool,
}

impl std::fmt::Debug for ListenerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerActor")
            .field("channel", &self.settings.channel)
            .field("failures", &self.failures)
            .field("connected", &self.client.is_some())
            .field("delivery", &self.delivery)
            .finish()
    }
}

impl ListenerActor {
    pub(crate) fn new(
        settings: ListenerSettings,
        router: Addr<QueueRouter>,
        health: HealthBoard,
    ) -> Self {
        Self {
            settings,
            router,
            health,
            failures: 0,
            client: None,
            last_traffic: Instant::now(),
            ping_in_flight: false,
            lost: false,
            shut_down: false,
            probe_channel: String::new(),
            delivery: DeliveryCheck::default(),
            reconnected: false,
        }
    }

    fn set_state(&self, state: ListenerState) {
        self.health
            .set_listener(self.settings.kind, &self.settings.channel, state);
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.set_state(ListenerState::Connecting);
        crate::metrics::listener_down(&self.settings.channel);
        tracing::debug!(channel = %self.settings.channel, server = %self.settings.connection, "listener connecting");
        self.probe_channel = probe_channel_name();
        let connection = self.settings.connection.clone();
        // Waiting here is right: nothing else can happen before we are connected.
        ctx.wait(
            async move { connection.connect_raw().await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok((client, mut connection)) => {
                        let messages =
                            futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                        ctx.add_stream(messages);
                        act.client = Some(Rc::new(client));
                        act.listen(ctx);
                    }
                    Err(err) => act.lose(ctx, &err.to_string()),
                }),
        );
    }

    /// `LISTEN` on the channel and on this connection's probe channel, in
    /// one statement: behind a transaction pooler both then land on the same
    /// server backend, so a probe that comes back vouches for the channel.
    ///
    /// The probe has a private channel, rather than a special payload on the
    /// real one, because every listener of every process on the real channel
    /// would receive that payload too, and drop it as an invalid queue name
    /// (counting it in their metrics); on a channel of its own nobody else
    /// sees it, and it is told apart by its channel, never parsed as a
    /// queue. The cost is one more `LISTEN` on this session, undone once
    /// delivery is confirmed.
    fn listen_sql(&self) -> String {
        format!(
            "LISTEN {}; LISTEN {}",
            quote_identifier(&self.settings.channel),
            quote_identifier(&self.probe_channel)
        )
    }

    fn listen(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let sql = self.listen_sql();
        let timeout = self.settings.ping_timeout;
        // Spawned, not waited for: the connection's stream must keep being
        // polled for the LISTEN to complete.
        ctx.spawn(
            async move { tokio::time::timeout(timeout, client.batch_execute(&sql)).await }
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Ok(())) => act.listened(ctx),
                    Ok(Err(err)) => act.lose(ctx, &ErrorChain(&err).to_string()),
                    Err(_) => act.lose(ctx, &format!("LISTEN not answered within {timeout:?}")),
                }),
        );
    }

    fn listened(&mut self, ctx: &mut Context<Self>) {
        let reconnected = self.failures > 0;
        // The backoff starts over only once the connection has stayed up a
        // while: a session killed right after each LISTEN must not make
        // this listener reconnect (and every worker resync) every 100 ms.
        if reconnected {
            ctx.run_later(self.settings.stable_after, |act, _| act.failures = 0);
        }
        self.reconnected = reconnected;
        self.last_traffic = Instant::now();
        if reconnected {
            crate::metrics::listener_reconnected(&self.settings.channel);
        }
        self.health.listen_succeeded(self.settings.kind);
        tracing::debug!(channel = %self.settings.channel, reconnected, "LISTEN succeeded; checking delivery");
        // At once, whatever the probe finds: what was written while we were
        // away is found by polling, and the workers poll now.
        self.router.do_send(TaskAvailable {
            kind: self.settings.kind,
            queue: None,
            reason: WakeReason::Resync,
        });
        let check_every = (self.settings.ping_after / 2).max(Duration::from_millis(50));
        ctx.run_interval(check_every, |act, ctx| act.ping_if_idle(ctx));
        self.probe(ctx, false);
    }

    /// Sends a delivery probe from a connection of its own, unless one is
    /// in flight; `relisten` first repeats the `LISTEN`s on the listening
    /// connection (for a re-probe: a path that was fixed may have lost them).
    ///
    /// Never from the listening connection itself: behind a pooler, its
    /// `NOTIFY` could run on the very backend that `LISTEN`ed and come back
    /// to it, while other writers' notifications are lost.
    fn probe(&mut self, ctx: &mut Context<Self>, relisten: bool) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let Some(sequence) = self.delivery.start() else {
            return;
        };
        let relisten = relisten.then(|| self.listen_sql());
        let notify = format!(
            "NOTIFY {}, '{}'",
            quote_identifier(&self.probe_channel),
            probe_payload(sequence)
        );
        let prober = self
            .settings
            .connection
            .with_application_name(&format!("pgwake-probe:{}", self.settings.channel));
        let (ping_timeout, probe_timeout) =
            (self.settings.ping_timeout, self.settings.probe_timeout);
        ctx.spawn(
            async move {
                if let Some(sql) = relisten {
                    match tokio::time::timeout(ping_timeout, client.batch_execute(&sql)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(err)) => {
                            return ProbeSent::ConnectionLost(ErrorChain(&err).to_string())
                        }
                        Err(_) => {
                            return ProbeSent::ConnectionLost(format!(
                                "LISTEN not answered within {ping_timeout:?}"
                            ))
                        }
                    }
                }
                match send_probe(&prober, &notify, probe_timeout).await {
                    Ok(()) => ProbeSent::Sent,
                    Err(reason) => ProbeSent::NotSent(reason),
                }
            }
            .into_actor(self)
            .map(move |sent, act, ctx| match sent {
                ProbeSent::ConnectionLost(reason) => act.lose(ctx, &reason),
                ProbeSent::NotSent(reason) => {
                    if let Some(verdict) = act.delivery.failed(sequence) {
                        act.concluded(ctx, verdict, Some(&reason));
                    }
                }
                // Committed: from now on it has `probe_timeout` to arrive (it
                // may already have, and concluded the probe).
                ProbeSent::Sent => {
                    ctx.run_later(probe_timeout, move |act, ctx| {
                        if let Some(verdict) = act.delivery.failed(sequence) {
                            act.concluded(ctx, verdict, None);
                        }
                    });
                }
            }),
        );
    }

    /// Acts on a probe's verdict; `not_sent` is why it could not be sent.
    fn concluded(&mut self, ctx: &mut Context<Self>, verdict: Verdict, not_sent: Option<&str>) {
        let channel = &self.settings.channel;
        match verdict {
            Verdict::Listening | Verdict::Recovered => {
                self.set_state(ListenerState::Listening);
                if verdict == Verdict::Recovered {
                    // No resync needed: while not delivering, every idle
                    // worker sleeps at most `fallback_while_degraded`, and
                    // its next poll finds what was written before now.
                    tracing::info!(channel = %channel, "notifications are delivered again; listening");
                } else {
                    tracing::info!(channel = %channel, reconnected = self.reconnected, "listening");
                }
                self.reconnected = false;
                crate::metrics::listener_up(channel);
                self.router.do_send(ListenerStateChanged {
                    kind: self.settings.kind,
                    listening: true,
                });
                self.unlisten_probe(ctx);
            }
            Verdict::StartedFailing | Verdict::StillFailing => {
                self.set_state(ListenerState::NotDelivering);
                crate::metrics::probe_failed(channel);
                let timeout = self.settings.probe_timeout;
                let server = &self.settings.connection;
                match (verdict, not_sent) {
                    (Verdict::StartedFailing, None) => tracing::warn!(
                        channel = %channel, server = %server, probe_timeout = ?timeout,
                        "notifications are not delivered to this listener: LISTEN succeeded, but a \
                         probe NOTIFY sent from another connection did not come back within \
                         listener_probe_timeout. Likely causes: the listener connects through a \
                         transaction- or statement-mode pooler (PgBouncer), a read replica, or a \
                         proxy that drops asynchronous messages. Fix: point listener_url at \
                         PostgreSQL itself (or a session-mode pooler), not a transaction pooler. \
                         Meanwhile workers poll every fallback_while_degraded, and the listener \
                         probes again every listener_ping_after"
                    ),
                    (Verdict::StartedFailing, Some(error)) => tracing::warn!(
                        channel = %channel, server = %server, error,
                        "could not send the delivery probe, so notifications to this listener are \
                         not confirmed. Likely causes: the server refuses new connections (e.g. \
                         too many clients) or is a read replica, where NOTIFY fails. Fix: point \
                         listener_url at the primary PostgreSQL itself, not a replica or a \
                         transaction pooler. Meanwhile workers poll every fallback_while_degraded, \
                         and the listener probes again every listener_ping_after"
                    ),
                    (_, error) => tracing::debug!(
                        channel = %channel, error, "delivery probe failed again"
                    ),
                }
                self.router.do_send(ListenerStateChanged {
                    kind: self.settings.kind,
                    listening: false,
                });
                ctx.run_later(self.settings.ping_after, |act, ctx| act.probe(ctx, true));
            }
        }
    }

    /// Stops listening on the probe channel once delivery is confirmed:
    /// nothing more is sent on it, and the session then listens to its one
    /// real channel, as `pg_listening_channels()` shows an operator.
    fn unlisten_probe(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let sql = format!("UNLISTEN {}", quote_identifier(&self.probe_channel));
        let timeout = self.settings.ping_timeout;
        ctx.spawn(
            async move { tokio::time::timeout(timeout, client.batch_execute(&sql)).await }
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Ok(())) => act.last_traffic = Instant::now(),
                    Ok(Err(err)) => act.lose(ctx, &ErrorChain(&err).to_string()),
                    Err(_) => act.lose(ctx, &format!("UNLISTEN not answered within {timeout:?}")),
                }),
        );
    }

    fn ping_if_idle(&mut self, ctx: &mut Context<Self>) {
        // No ping while a probe is out: behind a transaction pooler the ping
        // may run on the very backend that LISTENs for the probe, and carry
        // the probe back to us by chance, as if notifications were delivered.
        if self.ping_in_flight
            || self.delivery.awaiting()
            || self.last_traffic.elapsed() < self.settings.ping_after
        {
            return;
        }
        let Some(client) = self.client.clone() else {
            return;
        };
        self.ping_in_flight = true;
        let timeout = self.settings.ping_timeout;
        ctx.spawn(
            async move { tokio::time::timeout(timeout, client.simple_query("SELECT 1")).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.ping_in_flight = false;
                    match result {
                        Ok(Ok(_)) => act.last_traffic = Instant::now(),
                        Ok(Err(err)) => act.lose(ctx, &err.to_string()),
                        Err(_) => act.lose(ctx, &format!("ping not answered within {timeout:?}")),
                    }
                }),
        );
    }

    fn lose(&mut self, ctx: &mut Context<Self>, reason: &str) {
        if self.lost || self.shut_down {
            return;
        }
        self.lost = true;
        self.failures = self.failures.saturating_add(1);
        tracing::warn!(channel = %self.settings.channel, attempt = self.failures, error = reason, "listener lost its connection");
        crate::metrics::listener_down(&self.settings.channel);
        self.router.do_send(ListenerStateChanged {
            kind: self.settings.kind,
            listening: false,
        });
        ctx.stop();
    }
}

impl Actor for ListenerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.shut_down {
            self.set_state(ListenerState::Disabled);
            return;
        }
        if self.failures == 0 {
            self.connect(ctx);
            return;
        }
        let retry_in = self.settings.backoff.delay(self.failures);
        self.set_state(ListenerState::Backoff {
            attempt: self.failures,
            retry_in,
        });
        tracing::info!(channel = %self.settings.channel, attempt = self.failures, ?retry_in, "listener reconnecting after backoff");
        ctx.run_later(retry_in, |act, ctx| act.connect(ctx));
    }
}

impl Supervised for ListenerActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The old connection went with the context's streams and timers;
        // start clean (the delivery check keeps only whether it was failing).
        self.client = None;
        self.ping_in_flight = false;
        self.lost = false;
        self.delivery.connection_lost();
    }
}

impl StreamHandler<Result<AsyncMessage, tokio_postgres::Error>> for ListenerActor {
    fn handle(
        &mut self,
        item: Result<AsyncMessage, tokio_postgres::Error>,
        ctx: &mut Context<Self>,
    ) {
        match item {
            Ok(AsyncMessage::Notification(notification)) => {
                self.last_traffic = Instant::now();
                let incoming = classify(
                    notification.channel(),
                    notification.payload(),
                    &self.settings.channel,
                    &self.probe_channel,
                );
                match incoming {
                    Incoming::Probe => match self.delivery.delivered() {
                        Some(verdict) => self.concluded(ctx, verdict, None),
                        None => {
                            tracing::debug!(channel = %self.settings.channel, "late delivery probe ignored")
                        }
                    },
                    Incoming::Wake(queue) => {
                        crate::metrics::notification_received(&self.settings.channel);
                        self.router.do_send(TaskAvailable {
                            kind: self.settings.kind,
                            queue,
                            reason: WakeReason::Notification,
                        });
                    }
                    Incoming::InvalidPayload => {
                        {
                            crate::metrics::notification_received(&self.settings.channel);
                            crate::metrics::notification_dropped(
                                &self.settings.channel,
                                crate::metrics::DROP_INVALID_PAYLOAD,
                            );
                        }
                        tracing::debug!(channel = %self.settings.channel, len = notification.payload().len(), "notification with an invalid queue name dropped");
                    }
                    Incoming::Stray => {
                        tracing::debug!(channel = %self.settings.channel, from = notification.channel(), "notification on a channel no longer listened to ignored")
                    }
                }
            }
            Ok(AsyncMessage::Notice(notice)) => {
                tracing::debug!(channel = %self.settings.channel, notice = %notice, "server notice");
            }
            Ok(_) => {}
            Err(err) => self.lose(ctx, &ErrorChain(&err).to_string()),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.lose(ctx, "the server closed the connection");
    }
}

impl Handler<StopListening> for ListenerActor {
    type Result = ();

    fn handle(&mut self, _: StopListening, ctx: &mut Context<Self>) {
        self.shut_down = true;
        self.set_state(ListenerState::Disabled);
        crate::metrics::listener_down(&self.settings.channel);
        ctx.stop();
    }
}

/// `"name"`, with inner quotes doubled: channel names may hold a dot.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A new private probe channel: `pgwake_probe_` and 32 hex digits, within
/// PostgreSQL's 63 bytes.
fn probe_channel_name() -> String {
    format!("pgwake_probe_{}", uuid::Uuid::new_v4().simple())
}

/// The payload of probe `sequence`. Its spaces make it an invalid queue
/// name, should it ever reach the queue path.
fn probe_payload(sequence: u64) -> String {
    format!("pgwake probe {sequence}")
}

/// Connects with `connection`, runs `notify`, and disconnects (dropping the
/// client ends its connection). The connection attempt is bounded by the
/// connection's `connect_timeout`, the `NOTIFY` by `timeout`.
async fn send_probe(
    connection: &ConnectionConfig,
    notify: &str,
    timeout: Duration,
) -> Result<(), String> {
    let client = connection
        .connect()
        .await
        .map_err(|err| ErrorChain(&err).to_string())?;
    match tokio::time::timeout(timeout, client.batch_execute(notify)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(ErrorChain(&err).to_string()),
        Err(_) => Err(format!(
            "the probe NOTIFY was not answered within {timeout:?}"
        )),
    }
}

/// How sending a probe ended.
#[derive(Debug)]
enum ProbeSent {
    /// Committed; it may be on its way.
    Sent,
    /// The probe's own connection or its `NOTIFY` failed.
    NotSent(String),
    /// Repeating the `LISTEN`s failed: the listening connection is lost.
    ConnectionLost(String),
}

/// What a notification on the listening connection is.
#[derive(Debug, PartialEq, Eq)]
enum Incoming {
    /// A delivery probe of this connection (never a queue, whatever its payload).
    Probe,
    /// Work on a queue, or on every queue of the channel (empty payload).
    Wake(Option<Queue>),
    /// On the channel, but its payload is not a valid queue name.
    InvalidPayload,
    /// On a channel this connection does not listen to now (a probe channel
    /// a pooled backend still listens to for an earlier connection).
    Stray,
}

fn classify(channel: &str, payload: &str, listened: &str, probe_channel: &str) -> Incoming {
    if channel == probe_channel {
        return Incoming::Probe;
    }
    if channel != listened {
        return Incoming::Stray;
    }
    // No filter on the sender's pid: behind a pooler, pids are shared, and
    // another writer's NOTIFY can carry our own notifier's. An echo of our
    // own costs one empty claim.
    if payload.is_empty() {
        return Incoming::Wake(None);
    }
    match Queue::new(payload) {
        Ok(queue) => Incoming::Wake(Some(queue)),
        Err(_) => Incoming::InvalidPayload,
    }
}

/// What a probe's conclusion means for the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Delivery confirmed, and the last probe had not failed: listening.
    Listening,
    /// Delivery confirmed after probes had failed: listening again; say so.
    Recovered,
    /// A probe failed where the last one had not: not delivering; warn.
    StartedFailing,
    /// A probe failed again (perhaps after a reconnect): already warned.
    StillFailing,
}

/// The delivery self-check's bookkeeping: which probe is awaited, and
/// whether the last one failed. Pure, so that the races between a probe's
/// arrival, its deadline and its sending are tested without a database.
#[derive(Debug, Default)]
struct DeliveryCheck {
    /// The last concluded probe failed (kept across reconnects).
    failing: bool,
    /// The number of the last probe started.
    last_started: u64,
    /// The probe awaiting its conclusion.
    in_flight: Option<u64>,
}

impl DeliveryCheck {
    /// Starts a probe: its number, or `None` while another is in flight.
    fn start(&mut self) -> Option<u64> {
        if self.in_flight.is_some() {
            return None;
        }
        self.last_started += 1;
        self.in_flight = Some(self.last_started);
        Some(self.last_started)
    }

    /// Whether a probe is awaiting its conclusion.
    fn awaiting(&self) -> bool {
        self.in_flight.is_some()
    }

    /// A probe arrived on this connection's probe channel: it concludes the
    /// probe in flight, whatever its number (any probe of this connection
    /// that arrives proves delivery). `None` when none is in flight.
    fn delivered(&mut self) -> Option<Verdict> {
        self.in_flight.take()?;
        let verdict = if self.failing {
            Verdict::Recovered
        } else {
            Verdict::Listening
        };
        self.failing = false;
        Some(verdict)
    }

    /// Probe `sequence` could not be sent, or its deadline passed: it fails,
    /// unless it already concluded (`None`).
    fn failed(&mut self, sequence: u64) -> Option<Verdict> {
        if self.in_flight != Some(sequence) {
            return None;
        }
        self.in_flight = None;
        let verdict = if self.failing {
            Verdict::StillFailing
        } else {
            Verdict::StartedFailing
        };
        self.failing = true;
        Some(verdict)
    }

    /// The connection is gone, and with it the probe in flight; whether
    /// probes were failing is kept.
    fn connection_lost(&mut self) {
        self.in_flight = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_that_arrives_means_listening() {
        let mut check = DeliveryCheck::default();
        let first = check.start().unwrap();
        assert_eq!(check.delivered(), Some(Verdict::Listening));
        // Its deadline passes later: it concluded already.
        assert_eq!(check.failed(first), None);
    }

    #[test]
    fn a_probe_past_its_deadline_warns_once_then_recovers() {
        let mut check = DeliveryCheck::default();
        let first = check.start().unwrap();
        assert_eq!(check.failed(first), Some(Verdict::StartedFailing));
        let second = check.start().unwrap();
        assert_ne!(first, second);
        assert_eq!(check.failed(second), Some(Verdict::StillFailing));
        check.start().unwrap();
        assert_eq!(check.delivered(), Some(Verdict::Recovered));
        // Failing anew after recovering is a new transition: warn again.
        let fourth = check.start().unwrap();
        assert_eq!(check.failed(fourth), Some(Verdict::StartedFailing));
    }

    #[test]
    fn a_reconnect_behind_the_same_pooler_does_not_warn_again() {
        let mut check = DeliveryCheck::default();
        let first = check.start().unwrap();
        assert_eq!(check.failed(first), Some(Verdict::StartedFailing));
        let second = check.start().unwrap();
        check.connection_lost();
        // The lost connection's deadline would find nothing in flight.
        assert_eq!(check.failed(second), None);
        let third = check.start().unwrap();
        assert_eq!(check.failed(third), Some(Verdict::StillFailing));
    }

    #[test]
    fn one_probe_at_a_time_and_late_arrivals_are_ignored() {
        let mut check = DeliveryCheck::default();
        assert!(!check.awaiting());
        let first = check.start().unwrap();
        assert!(check.awaiting());
        assert_eq!(check.start(), None, "a second probe while one is in flight");
        assert_eq!(check.failed(first), Some(Verdict::StartedFailing));
        // The failed probe arrives after its deadline, with none in flight.
        assert_eq!(check.delivered(), None);
        // A probe that arrives before its NOTIFY's reply concludes it; the
        // reply's deadline then finds nothing to fail.
        let second = check.start().unwrap();
        assert_eq!(check.delivered(), Some(Verdict::Recovered));
        assert_eq!(check.failed(second), None);
    }

    #[test]
    fn a_probe_is_never_taken_for_a_queue() {
        let probe = probe_channel_name();
        assert!(
            probe.len() <= 63,
            "{probe} exceeds PostgreSQL's identifier length"
        );
        assert_ne!(
            probe,
            probe_channel_name(),
            "one probe channel per connection"
        );
        for payload in [probe_payload(1), "emails".to_string(), String::new()] {
            assert_eq!(
                classify(&probe, &payload, "activity_tasks", &probe),
                Incoming::Probe
            );
        }
        // Even on the real channel a probe's payload is no queue name.
        assert!(Queue::new(probe_payload(7)).is_err());
        assert_eq!(
            classify(
                "activity_tasks",
                &probe_payload(7),
                "activity_tasks",
                &probe
            ),
            Incoming::InvalidPayload
        );
        // An earlier connection's probe channel, still listened to by a
        // pooled backend, wakes nobody.
        assert_eq!(
            classify(&probe_channel_name(), "emails", "activity_tasks", &probe),
            Incoming::Stray
        );
    }

    #[test]
    fn notifications_on_the_channel_wake_their_queue_or_all() {
        let probe = probe_channel_name();
        assert_eq!(
            classify(
                "billing.activity_tasks",
                "emails",
                "billing.activity_tasks",
                &probe
            ),
            Incoming::Wake(Some(Queue::new("emails").unwrap()))
        );
        assert_eq!(
            classify("activity_tasks", "", "activity_tasks", &probe),
            Incoming::Wake(None)
        );
    }
}
