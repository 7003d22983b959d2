//! The `QueueRouter`: forwards each wake-up only to the workers of its
//! queue. pgwake's own workers are *asked*: the router offers a wake-up to
//! one worker at a time, idle ones first, and a worker that cannot take it
//! (every slot taken, stopping, or gone) declines, so the router offers it
//! to the next. One that nobody takes is owed to the first worker that
//! reports idle. The router keeps only hints (who was idle last), never the
//! truth about a worker's slots: that lives in the worker's own
//! [`WakeState`](super::wake::WakeState).

use std::collections::{BTreeMap, HashSet, VecDeque};

use actix::prelude::*;

use super::health::HealthBoard;
use super::messages::{
    ListenerStateChanged, MoreWorkLikely, OfferWake, RegisterOwnWorker, RegisterWorker,
    TaskAvailable, TaskKind, UnregisterWorker, WakePolicy, WakeReason, WorkerIdle,
};
use crate::store::Queue;

/// How a registration is woken.
enum Target {
    /// pgwake's own workers: offered a wake-up, they answer.
    Asked {
        offers: Recipient<OfferWake>,
        /// A hint only: it reported idle, or took the last offer.
        believed_free: bool,
    },
    /// Users' actors: told, by their [`WakePolicy`].
    Told {
        recipient: Recipient<TaskAvailable>,
        policy: WakePolicy,
        /// Woken, and not yet reported idle again (for `WhenIdle`).
        busy: bool,
    },
}

struct Registration {
    kind: TaskKind,
    queues: Vec<Queue>,
    target: Target,
    listener_state: Option<Recipient<ListenerStateChanged>>,
}

impl Registration {
    fn serves(&self, kind: TaskKind, queue: Option<&Queue>) -> bool {
        self.kind == kind && queue.is_none_or(|q| self.queues.contains(q))
    }

    fn connected(&self) -> bool {
        match &self.target {
            Target::Asked { offers, .. } => offers.connected(),
            Target::Told { recipient, .. } => recipient.connected(),
        }
    }
}

/// Routes wake-ups from listeners and the notifier to registered workers.
///
/// A wake-up for a queue goes to every [`WakePolicy::Always`] recipient and
/// to one worker of that queue that can take it: pgwake's workers are asked
/// in turn (idle ones first, picked at random) until one accepts; your
/// [`WakePolicy::WhenIdle`] actors are told while they are idle. When none
/// can take it, the queue is remembered, and the first worker to report
/// [`WorkerIdle`] is woken for it: a notification that arrives while every
/// worker is full or mid-claim is never lost to the fallback timer, and one
/// offered to a worker that stopped goes to another.
///
/// The runtime starts it, and
/// [`RuntimeHandle::router`](crate::RuntimeHandle::router) gives its
/// address, which is why the type is public: register your own actors with
/// it (see [`actors`](super::actors)):
///
/// ```
/// use actix::prelude::*;
/// use pgwake::runtime::actors::{
///     QueueRouter, RegisterWorker, TaskAvailable, UnregisterWorker, WakePolicy,
/// };
/// # struct Mailer;
/// # impl Actor for Mailer { type Context = Context<Self>; }
/// # impl Handler<TaskAvailable> for Mailer {
/// #     type Result = ();
/// #     fn handle(&mut self, _: TaskAvailable, _: &mut Context<Self>) {}
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

    fn register(&mut self, registration: Registration) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        tracing::debug!(id, kind = ?registration.kind, queues = ?registration.queues, "worker registered");
        self.registrations.insert(id, registration);
        id
    }

    fn count_wakeup(
        &self,
        kind: TaskKind,
        queue: Option<&Queue>,
        queues: &[Queue],
        reason: WakeReason,
    ) {
        let counted: Vec<Queue> = match queue {
            Some(queue) => vec![queue.clone()],
            None => queues.to_vec(),
        };
        self.health.count(kind, &counted, |c| c.wakeups += 1);
        crate::metrics::wakeups(kind, &counted, reason);
    }

    /// Tells a user's actor; false when it is gone (then unregistered).
    fn tell(&mut self, id: u64, queue: Option<&Queue>, reason: WakeReason) -> bool {
        let Some(registration) = self.registrations.get_mut(&id) else {
            return false;
        };
        let Target::Told {
            recipient, busy, ..
        } = &mut registration.target
        else {
            return false;
        };
        if !recipient.connected() {
            self.registrations.remove(&id);
            return false;
        }
        *busy = true;
        let kind = registration.kind;
        recipient.do_send(TaskAvailable {
            kind,
            queue: queue.cloned(),
            reason,
        });
        let queues = registration.queues.clone();
        self.count_wakeup(kind, queue, &queues, reason);
        true
    }

    /// Offers a wake-up for `queue` to the first of `candidates` that takes
    /// it, one at a time; owed when none does.
    fn offer_next(
        &mut self,
        kind: TaskKind,
        queue: Queue,
        reason: WakeReason,
        mut candidates: VecDeque<u64>,
        ctx: &mut Context<Self>,
    ) {
        while let Some(id) = candidates.pop_front() {
            let Some(registration) = self.registrations.get_mut(&id) else {
                continue;
            };
            match &mut registration.target {
                Target::Told { busy: true, .. } => continue,
                Target::Told { .. } => {
                    if self.tell(id, Some(&queue), reason) {
                        return;
                    }
                }
                Target::Asked {
                    offers,
                    believed_free,
                } => {
                    // Not free for the next offer until it says so again.
                    *believed_free = false;
                    let offer = offers.send(OfferWake {
                        queue: Some(queue.clone()),
                        reason,
                    });
                    let queues = registration.queues.clone();
                    ctx.spawn(offer.into_actor(self).map(move |answer, act, ctx| {
                        match answer {
                            Ok(true) => {
                                act.count_wakeup(kind, Some(&queue), &queues, reason);
                            }
                            Ok(false) => act.offer_next(kind, queue, reason, candidates, ctx),
                            // Stopped: forget it, and give the wake-up to another.
                            Err(_) => {
                                act.registrations.remove(&id);
                                act.offer_next(kind, queue, reason, candidates, ctx);
                            }
                        }
                    }));
                    return;
                }
            }
        }
        tracing::trace!(?kind, %queue, "no worker could take a wake-up; owed to the next idle one");
        self.missed.insert((kind, queue));
    }

    /// The workers to offer a wake-up for `queue` to, in order: those
    /// believed free (shuffled, which spreads load without a cursor), then
    /// the others that are asked (they may have room by now).
    fn candidates(&self, kind: TaskKind, queue: &Queue) -> VecDeque<u64> {
        let mut free = Vec::new();
        let mut others = Vec::new();
        for (id, registration) in &self.registrations {
            if !registration.serves(kind, Some(queue)) {
                continue;
            }
            match &registration.target {
                Target::Asked { believed_free, .. } => {
                    if *believed_free {
                        free.push(*id);
                    } else {
                        others.push(*id);
                    }
                }
                Target::Told {
                    policy: WakePolicy::WhenIdle,
                    busy: false,
                    ..
                } => free.push(*id),
                Target::Told { .. } => {}
            }
        }
        fastrand::shuffle(&mut free);
        fastrand::shuffle(&mut others);
        free.into_iter().chain(others).collect()
    }

    fn route(
        &mut self,
        kind: TaskKind,
        queue: Option<&Queue>,
        reason: WakeReason,
        ctx: &mut Context<Self>,
    ) {
        self.registrations.retain(|_, r| r.connected());
        let always: Vec<u64> = self
            .registrations
            .iter()
            .filter(|(_, r)| r.serves(kind, queue))
            .filter(|(_, r)| {
                matches!(
                    r.target,
                    Target::Told {
                        policy: WakePolicy::Always,
                        ..
                    }
                )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &always {
            self.tell(*id, queue, reason);
        }
        let Some(queue) = queue else {
            // Every queue of the kind (a resync, or an empty payload): each
            // queue is offered like a notification, so one that no worker
            // can take now is owed, not dropped. Users' `WhenIdle` actors are
            // told once, for all their queues.
            let told: Vec<u64> = self
                .registrations
                .iter()
                .filter(|(_, r)| r.serves(kind, None))
                .filter(|(_, r)| {
                    matches!(
                        r.target,
                        Target::Told {
                            policy: WakePolicy::WhenIdle,
                            ..
                        }
                    )
                })
                .map(|(id, _)| *id)
                .collect();
            for id in told {
                self.tell(id, None, reason);
            }
            let mut queues: Vec<Queue> = self
                .registrations
                .values()
                .filter(|r| r.serves(kind, None) && matches!(r.target, Target::Asked { .. }))
                .flat_map(|r| r.queues.iter().cloned())
                .collect();
            queues.sort();
            queues.dedup();
            for queue in queues {
                let candidates = self.candidates(kind, &queue);
                self.offer_next(kind, queue, reason, candidates, ctx);
            }
            return;
        };
        let candidates = self.candidates(kind, queue);
        if candidates.is_empty() {
            let anyone = self.registrations.values().any(|r| {
                r.serves(kind, Some(queue))
                    && !matches!(
                        r.target,
                        Target::Told {
                            policy: WakePolicy::Always,
                            ..
                        }
                    )
            });
            if anyone {
                // Every user actor of the queue is busy: owed to the first idle one.
                self.missed.insert((kind, queue.clone()));
            } else if always.is_empty() {
                tracing::debug!(?kind, queue = %queue, "wake-up for a queue nobody serves dropped");
                self.count_unserved(kind, reason);
            }
            return;
        }
        self.offer_next(kind, queue.clone(), reason, candidates, ctx);
    }
}

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
        self.register(Registration {
            kind: msg.kind,
            queues: msg.queues,
            target: Target::Told {
                recipient: msg.recipient,
                policy: msg.policy,
                // A new worker polls on start, then reports idle.
                busy: msg.policy == WakePolicy::WhenIdle,
            },
            listener_state: msg.listener_state,
        })
    }
}

impl Handler<RegisterOwnWorker> for QueueRouter {
    type Result = u64;

    fn handle(&mut self, msg: RegisterOwnWorker, _: &mut Context<Self>) -> u64 {
        self.register(Registration {
            kind: msg.kind,
            queues: msg.queues,
            // It claims on start, then reports idle.
            target: Target::Asked {
                offers: msg.offers,
                believed_free: false,
            },
            listener_state: Some(msg.listener_state),
        })
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

    fn handle(&mut self, msg: TaskAvailable, ctx: &mut Context<Self>) {
        self.route(msg.kind, msg.queue.as_ref(), msg.reason, ctx);
    }
}

impl Handler<WorkerIdle> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: WorkerIdle, ctx: &mut Context<Self>) {
        let Some(registration) = self.registrations.get_mut(&msg.id) else {
            return;
        };
        match &mut registration.target {
            Target::Asked { believed_free, .. } => *believed_free = true,
            Target::Told { busy, .. } => *busy = false,
        }
        let kind = registration.kind;
        let owed = registration
            .queues
            .iter()
            .find(|q| self.missed.contains(&(kind, (*q).clone())))
            .cloned();
        if let Some(queue) = owed {
            self.missed.remove(&(kind, queue.clone()));
            // Declined again (it filled meanwhile): owed again.
            self.offer_next(
                kind,
                queue,
                WakeReason::Notification,
                VecDeque::from([msg.id]),
                ctx,
            );
        }
    }
}

impl Handler<MoreWorkLikely> for QueueRouter {
    type Result = ();

    fn handle(&mut self, msg: MoreWorkLikely, ctx: &mut Context<Self>) {
        for queue in &msg.queues {
            self.route(msg.kind, Some(queue), WakeReason::MoreWork, ctx);
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    /// A worker that answers offers as told and records them.
    struct Answering {
        name: &'static str,
        accepts: bool,
        offers: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Actor for Answering {
        type Context = Context<Self>;
    }

    impl Handler<OfferWake> for Answering {
        type Result = bool;

        fn handle(&mut self, _: OfferWake, _: &mut Context<Self>) -> bool {
            self.offers.lock().unwrap().push(self.name);
            self.accepts
        }
    }

    impl Handler<ListenerStateChanged> for Answering {
        type Result = ();

        fn handle(&mut self, _: ListenerStateChanged, _: &mut Context<Self>) {}
    }

    async fn register(router: &Addr<QueueRouter>, worker: &Addr<Answering>) -> u64 {
        router
            .send(RegisterOwnWorker {
                kind: TaskKind::Activity,
                queues: vec![Queue::new("q").unwrap()],
                offers: worker.clone().recipient(),
                listener_state: worker.clone().recipient(),
            })
            .await
            .unwrap()
    }

    fn notification() -> TaskAvailable {
        TaskAvailable {
            kind: TaskKind::Activity,
            queue: Some(Queue::new("q").unwrap()),
            reason: WakeReason::Notification,
        }
    }

    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[actix::test]
    async fn a_declined_wake_up_goes_to_the_next_worker_and_then_is_owed() {
        let router = QueueRouter::new(HealthBoard::default()).start();
        let offers = Arc::new(Mutex::new(Vec::new()));
        let full = Answering {
            name: "full",
            accepts: false,
            offers: offers.clone(),
        }
        .start();
        let idle = Answering {
            name: "idle",
            accepts: true,
            offers: offers.clone(),
        }
        .start();
        let (full_id, _) = (
            register(&router, &full).await,
            register(&router, &idle).await,
        );
        // The full one reported idle last, so it is asked first.
        router.send(WorkerIdle { id: full_id }).await.unwrap();
        router.send(notification()).await.unwrap();
        settle().await;
        assert_eq!(*offers.lock().unwrap(), ["full", "idle"]);

        // Nobody takes it: owed, and offered to the next worker reporting idle.
        idle.send(Stop).await.unwrap();
        offers.lock().unwrap().clear();
        router.send(notification()).await.unwrap();
        settle().await;
        assert_eq!(*offers.lock().unwrap(), ["full"]);
        let late = Answering {
            name: "late",
            accepts: true,
            offers: offers.clone(),
        }
        .start();
        let late_id = register(&router, &late).await;
        router.send(WorkerIdle { id: late_id }).await.unwrap();
        settle().await;
        assert_eq!(*offers.lock().unwrap(), ["full", "late"]);
    }

    #[actix::test]
    async fn a_wake_up_offered_to_a_stopped_worker_goes_to_another() {
        let router = QueueRouter::new(HealthBoard::default()).start();
        let offers = Arc::new(Mutex::new(Vec::new()));
        let gone = Answering {
            name: "gone",
            accepts: true,
            offers: offers.clone(),
        }
        .start();
        let alive = Answering {
            name: "alive",
            accepts: true,
            offers: offers.clone(),
        }
        .start();
        let gone_id = register(&router, &gone).await;
        register(&router, &alive).await;
        router.send(WorkerIdle { id: gone_id }).await.unwrap();
        gone.send(Stop).await.unwrap();
        router.send(notification()).await.unwrap();
        settle().await;
        assert_eq!(*offers.lock().unwrap(), ["alive"]);
    }

    /// Stops the actor it is sent to.
    #[derive(Message)]
    #[rtype(result = "()")]
    struct Stop;

    impl Handler<Stop> for Answering {
        type Result = ();

        fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
            ctx.stop();
        }
    }
}
