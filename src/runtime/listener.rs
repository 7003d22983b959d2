//! The `ListenerActor`: one per channel, on a dedicated connection, turning
//! notifications into wake-ups and connection loss into a restart.

use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio_postgres::{AsyncMessage, Client};

use super::backoff::Backoff;
use super::health::{HealthBoard, ListenerState};
use super::messages::{ListenerStateChanged, StopListening, TaskAvailable, TaskKind, WakeReason};
use super::router::QueueRouter;
use crate::connection::ConnectionConfig;
use crate::store::Queue;

/// Settings a listener needs.
#[derive(Debug, Clone)]
pub(crate) struct ListenerSettings {
    pub(crate) kind: TaskKind,
    pub(crate) channel: String,
    pub(crate) connection: ConnectionConfig,
    pub(crate) ping_after: Duration,
    pub(crate) ping_timeout: Duration,
    pub(crate) backoff: Backoff,
    /// How long a connection must stay up before the backoff starts over.
    pub(crate) stable_after: Duration,
}

/// Owns one connection that `LISTEN`s on one channel.
///
/// Any error, the end of the connection's stream, or a ping unanswered
/// within its timeout is a loss: the actor stops and its [`Supervisor`]
/// restarts it, which drops the old connection; it reconnects after a
/// jittered exponential backoff that resets once `LISTEN` succeeds. After
/// every successful `LISTEN` it publishes a resync, because notifications
/// sent while it was away are gone.
///
/// The runtime starts one per channel and owns it; its health reports it:
///
/// ```
/// # fn example(runtime: pgwake::RuntimeHandle) {
/// for listener in runtime.health().listeners {
///     println!("{} ({:?}): {:?} for {:?}, {} reconnects", listener.channel,
///         listener.kind, listener.state, listener.for_how_long, listener.reconnects);
/// }
/// # }
/// ```
pub struct ListenerActor {
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
}

impl std::fmt::Debug for ListenerActor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerActor")
            .field("channel", &self.settings.channel)
            .field("failures", &self.failures)
            .field("connected", &self.client.is_some())
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
        }
    }

    fn set_state(&self, state: ListenerState) {
        self.health
            .set_listener(self.settings.kind, &self.settings.channel, state);
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.set_state(ListenerState::Connecting);
        #[cfg(feature = "metrics")]
        crate::metrics::listener_down(&self.settings.channel);
        tracing::debug!(channel = %self.settings.channel, server = %self.settings.connection, "listener connecting");
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

    fn listen(&mut self, ctx: &mut Context<Self>) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let sql = format!("LISTEN {}", quote_identifier(&self.settings.channel));
        // Spawned, not waited for: the connection's stream must keep being
        // polled for the LISTEN to complete.
        ctx.spawn(
            async move { client.batch_execute(&sql).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(()) => act.listening(ctx),
                    Err(err) => act.lose(ctx, &crate::error::ErrorChain(&err).to_string()),
                }),
        );
    }

    fn listening(&mut self, ctx: &mut Context<Self>) {
        let reconnected = self.failures > 0;
        // The backoff starts over only once the connection has stayed up a
        // while: a session killed right after each LISTEN must not make
        // this listener reconnect (and every worker resync) every 100 ms.
        if reconnected {
            ctx.run_later(self.settings.stable_after, |act, _| act.failures = 0);
        }
        self.last_traffic = Instant::now();
        self.set_state(ListenerState::Listening);
        tracing::info!(channel = %self.settings.channel, reconnected, "listening");
        #[cfg(feature = "metrics")]
        crate::metrics::listener_up(&self.settings.channel, reconnected);
        self.router.do_send(ListenerStateChanged {
            kind: self.settings.kind,
            listening: true,
        });
        self.router.do_send(TaskAvailable {
            kind: self.settings.kind,
            queue: None,
            reason: WakeReason::Resync,
        });
        let check_every = (self.settings.ping_after / 2).max(Duration::from_millis(50));
        ctx.run_interval(check_every, |act, ctx| act.ping_if_idle(ctx));
    }

    fn ping_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.ping_in_flight || self.last_traffic.elapsed() < self.settings.ping_after {
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
        #[cfg(feature = "metrics")]
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
        // The old connection went with the context's streams; start clean.
        self.client = None;
        self.ping_in_flight = false;
        self.lost = false;
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
                #[cfg(feature = "metrics")]
                crate::metrics::notification_received(&self.settings.channel);
                // No filter on the sender's pid: behind a pooler, pids are
                // shared, and another writer's NOTIFY can carry our own
                // notifier's. An echo of our own costs one empty claim.
                let payload = notification.payload();
                let queue = if payload.is_empty() {
                    None
                } else {
                    match Queue::new(payload) {
                        Ok(queue) => Some(queue),
                        Err(_) => {
                            tracing::debug!(channel = %self.settings.channel, len = payload.len(), "notification with an invalid queue name dropped");
                            #[cfg(feature = "metrics")]
                            crate::metrics::notification_dropped(
                                &self.settings.channel,
                                crate::metrics::DROP_INVALID_PAYLOAD,
                            );
                            return;
                        }
                    }
                };
                self.router.do_send(TaskAvailable {
                    kind: self.settings.kind,
                    queue,
                    reason: WakeReason::Notification,
                });
            }
            Ok(AsyncMessage::Notice(notice)) => {
                tracing::debug!(channel = %self.settings.channel, notice = %notice, "server notice");
            }
            Ok(_) => {}
            Err(err) => self.lose(ctx, &crate::error::ErrorChain(&err).to_string()),
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
        #[cfg(feature = "metrics")]
        crate::metrics::listener_down(&self.settings.channel);
        ctx.stop();
    }
}

/// `"name"`, with inner quotes doubled: channel names may hold a dot.
pub(crate) fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
