//! The `QueueRouter`: forwards each wake-up only to the workers of its
//! queue, and to idle ones first, so that a burst of notifications wakes
//! each idle worker once instead of every worker once per notification.

use std::collections::{BTreeMap, HashSet};

use actix::prelude::*;

use super::health::HealthBoard;
use super::messages::{
    ListenerStateChanged, MoreWorkLikely, RegisterWorker, TaskAvailable, TaskKind,
    UnregisterWorker, WakePolicy, WakeReason, WorkerIdle,
};
use crate::store::Queue;

struct Registration {
    kind: TaskKind,
    queues: Vec<Queue>,
    recipient: Recipient<TaskAvailable>,
    policy: WakePolicy,
    listener_state: Option<Recipient<ListenerStateChanged>>,
    /// Woken, and not yet reported idle again.
    busy: bool,
}

/// Routes wake-ups from listeners and the notifier to registered workers.
///
/// A wake-up for a queue goes to one idle [`WakePolicy::WhenIdle`] worker of
/// that queue (picked at random, which spreads the load without a cursor)
/// and to every [`WakePolicy::Always`] recipient.
/// When no such worker is idle, the queue is remembered, and the first one
/// to report [`WorkerIdle`] is woken for it: a notification that arrives
/// while every worker is mid-poll is never lost to the fallback timer.
///
/// The runtime starts it; register your own actors through the handle:
///
/// ```
/// use actix::prelude::*;
/// use pgwake::runtime::{QueueRouter, RegisterWorker, UnregisterWorker, WakePolicy};
/// # struct Mailer;
/// # impl Actor for Mailer { type Context = Context<Self>; }
/// # impl Handler<pgwake::TaskAvailable> for Mailer {
/// #     type Result = ();
/// #     fn handle(&mut self, _: pgwake::TaskAvailable, _: &mut Context<Self>) {}
/// # }
/// # async fn example(runtime: pgwake::RuntimeHandle, mailer: Addr<Mailer>) -> Result<(), Box<dyn std::error::Error>> {
/// let router: &Addr<QueueRouter> = runtime.router();
/// let id = router.send(RegisterWorker {
///     kind: pgwake::TaskKind::Activity, queues: pgwake::queues(["emails"])?,
///     recipient: mailer.recipient(), policy: WakePolicy::Always, listener_state: None,
/// }).await?;
/// router.do_send(UnregisterWorker { id });
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct QueueRouter {
    registrations: BTreeMap<u64, Registration>,
    next_id: u64,
    /// Wake-ups that found no idle worker.
    missed: HashSet<(TaskKind, Queue)>,
    health: HealthBoard,
    /// Channel names by kind, read from the health board when first needed.
    #[cfg(feature = "metrics")]
    channels: std::collections::HashMap<TaskKind, String>,
}

impl std::fmt::Debug for QueueRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRouter")
            .field("registrations", &self.registrations.len())
            .field("missed", &self.missed.len())
            .finish()
    }
}

impl QueueRouter {
    pub(crate) fn new(health: HealthBoard) -> Self {
        Self {
            health,
            ..Self::default()
        }
    }

    fn wake(&mut self, id: u64, kind: TaskKind, queue: Option<&Queue>, reason: WakeReason) {
        let Some(registration) = self.registrations.get_mut(&id) else {
            return;
        };
        if !registration.recipient.connected() {
            self.registrations.remove(&id);
            return;
        }
        registration.busy = true;
        let counted: Vec<Queue> = match queue {
            Some(queue) => vec![queue.clone()],
            None => registration.queues.clone(),
        };
        self.health.count(kind, &counted, |c| c.wakeups += 1);
        #[cfg(feature = "metrics")]
        crate::metrics::wakeups(kind, &counted, reason);
        registration.recipient.do_send(TaskAvailable {
            kind,
            queue: queue.cloned(),
            reason,
        });
    }

    fn route(&mut self, kind: TaskKind, queue: Option<&Queue>, reason: WakeReason) {
        let serving: Vec<(u64, WakePolicy, bool)> = self
            .registrations
            .iter()
            .filter(|(_, r)| r.kind == kind && queue.is_none_or(|q| r.queues.contains(q)))
            .map(|(id, r)| (*id, r.policy, r.busy))
            .collect();
        if serving.is_empty() {
            tracing::debug!(?kind, queue = ?queue.map(Queue::as_str), "wake-up for a queue nobody serves dropped");
            #[cfg(feature = "metrics")]
            self.count_unserved(kind, reason);
            return;
        }
        let Some(queue) = queue else {
            // Every queue of the kind: a resync, or an empty payload. Every
            // worker polls once; nothing is remembered as missed any more.
            self.missed.retain(|(k, _)| *k != kind);
            for (id, _, _) in serving {
                self.wake(id, kind, None, reason);
            }
            return;
        };
        for (id, _, _) in serving.iter().filter(|(_, p, _)| *p == WakePolicy::Always) {
            self.wake(*id, kind, Some(queue), reason);
        }
        let idle: Vec<u64> = serving
            .iter()
            .filter(|(_, p, busy)| *p == WakePolicy::WhenIdle && !busy)
            .map(|(id, _, _)| *id)
            .collect();
        match idle.get(fastrand::usize(..idle.len().max(1))) {
            Some(id) => self.wake(*id, kind, Some(queue), reason),
            None if serving.iter().any(|(_, p, _)| *p == WakePolicy::WhenIdle) => {
                self.missed.insert((kind, queue.clone()));
            }
            None => {}
        }
    }
}

#[cfg(feature = "metrics")]
impl QueueRouter {
    /// Counts a notification for a queue nobody here serves as dropped, on
    /// its kind's channel.
    fn count_unserved(&mut self, kind: TaskKind, reason: WakeReason) {
        if reason != WakeReason::Notification {
            return;
        }
        let health = &self.health;
        let channel = self.channels.entry(kind).or_insert_with(|| {
            let listeners = health.snapshot().listeners;
            listeners
                .into_iter()
                .find(|l| l.kind == kind)
                .map_or_else(|| kind.base_channel().to_string(), |l| l.channel)
        });
        crate::metrics::notification_dropped(channel, crate::metrics::DROP_UNSERVED_QUEUE);
    }
}

impl Actor for QueueRouter {
    type Context = Context<Self>;
}

impl Handler<RegisterWorker> for QueueRouter {
    type Result = u64;

    fn handle(&mut self, msg: RegisterWorker, _: &mut Context<Self>) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        tracing::debug!(id, kind = ?msg.kind, queues = ?msg.queues, "worker registered");
        self.registrations.insert(
            id,
            Registration {
                kind: msg.kind,
                queues: msg.queues,
                recipient: msg.recipient,
                policy: msg.policy,
                listener_state: msg.listener_state,
                // A new worker polls on start, then reports idle.
                busy: msg.policy == WakePolicy::WhenIdle,
            },
        );
        id
    }
}

impl Handler<UnregisterWorker> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: UnregisterWorker, _: &mut Context<Self>) {
        self.registrations.remove(&msg.id);
    }
}

impl Handler<TaskAvailable> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: TaskAvailable, _: &mut Context<Self>) {
        self.route(msg.kind, msg.queue.as_ref(), msg.reason);
    }
}

impl Handler<WorkerIdle> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: WorkerIdle, _: &mut Context<Self>) {
        let Some(registration) = self.registrations.get_mut(&msg.id) else {
            return;
        };
        registration.busy = false;
        let kind = registration.kind;
        let owed = registration
            .queues
            .iter()
            .find(|q| self.missed.contains(&(kind, (*q).clone())))
            .cloned();
        if let Some(queue) = owed {
            self.missed.remove(&(kind, queue.clone()));
            self.wake(msg.id, kind, Some(&queue), WakeReason::Notification);
        }
    }
}

impl Handler<MoreWorkLikely> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: MoreWorkLikely, _: &mut Context<Self>) {
        for queue in &msg.queues {
            self.route(msg.kind, Some(queue), WakeReason::MoreWork);
        }
    }
}

impl Handler<ListenerStateChanged> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: ListenerStateChanged, _: &mut Context<Self>) {
        for registration in self.registrations.values().filter(|r| r.kind == msg.kind) {
            if let Some(recipient) = &registration.listener_state {
                recipient.do_send(msg.clone());
            }
        }
    }
}
