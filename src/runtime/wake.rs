//! A worker's wake-up state: one small pure type that decides when a worker
//! claims, what it answers when the router offers it a wake-up, and what it
//! does after each claim. River's "fetch when slots are available", with no
//! second copy of the state anywhere: the router asks, the worker answers.
//!
//! The worker actor feeds it events (an offered wake-up, its own timer, a
//! claim's end, a slot freed, slots reserved for tasks another worker hands
//! over, shutdown) and carries out what it returns. It is unit-tested
//! exhaustively below, without a database or actors.

/// What a worker answers when offered a wake-up, and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Accepted: claim up to `max` tasks now.
    Started {
        /// Free slots, the most the claim may take.
        max: usize,
    },
    /// Accepted: a claim is under way; another follows it if it leaves room.
    Coalesced,
    /// Declined: every slot is taken (or the worker is stopping). The
    /// router offers the wake-up to another worker, or keeps it owed.
    Declined,
}

impl Offer {
    /// Whether the router may consider the wake-up delivered.
    pub(crate) fn accepted(self) -> bool {
        !matches!(self, Offer::Declined)
    }
}

/// What a worker does after a claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterClaim {
    /// Claim again at once, up to `max`: the batch was full, or a wake-up
    /// came meanwhile.
    ClaimAgain {
        /// Free slots.
        max: usize,
    },
    /// Every slot is taken and more work is likely: the router should give
    /// the queues' next wake-ups to other workers.
    Full,
    /// The batch was full, and the few slots free since are not worth a
    /// claim of their own yet: claim after a short window (the timer of
    /// [`Refill::Soon`]), by when more are likely free.
    RefillSoon,
    /// Nothing more to claim: tell the router it is idle and sleep until the
    /// next wake-up, its fallback or the next due time.
    Idle,
    /// The claim failed: retry after a backoff.
    RetryLater,
    /// Stopping: do nothing more.
    Stopped,
}

/// What a worker does when slots become free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refill {
    /// Claim now, up to `max`.
    Now {
        /// Free slots.
        max: usize,
    },
    /// Few slots are free while others still run: claim when its timer
    /// fires, a short window later, so that results finishing one by one
    /// do not split the next batch into claims of one task.
    Soon,
    /// Nothing: a claim is under way (its end decides), or stopping.
    Nothing,
}

/// How a claim ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimEnd {
    /// It claimed this many tasks (possibly none).
    Claimed(usize),
    /// It claimed this many tasks, and saw nothing else waiting: what a
    /// claim that may take fewer than it asked for while more waits (one
    /// task per instance) reports when its queues held no other work.
    Drained(usize),
    /// It claimed this many tasks, and saw more waiting than it took,
    /// however many it took.
    More(usize),
    /// It failed (the database, a deadline).
    Failed,
}

/// Where a worker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Phase {
    /// Not claiming: sleeping until a wake-up, its timer or a free slot.
    Idle,
    /// A claim for up to `requested` tasks is under way.
    Claiming {
        /// What the claim asked for.
        requested: usize,
        /// A wake-up was accepted meanwhile: claim again after.
        again: bool,
        /// Slots were freed meanwhile: their tasks' queues may hold more
        /// than the claim saw, so look once more after it, in a batch.
        freed: bool,
    },
    /// Shutting down: claims nothing more.
    Stopped,
}

/// One worker's wake-up state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct WakeState {
    concurrency: usize,
    /// The fewest free slots worth a claim while other tasks run.
    min_refill: usize,
    running: usize,
    phase: Phase,
    /// The last claim found the queues drained (it took fewer tasks than it
    /// asked for), and nothing since says otherwise: a freed slot then needs
    /// no claim, since work written later is offered to the worker, which
    /// has room to accept it. A claim that ends otherwise, or an offer
    /// declined for want of room (the router gave that wake-up to another
    /// worker or owes it to one reporting idle, which this one cannot tell
    /// apart), clears it: freed slots then claim.
    drained: bool,
}

impl WakeState {
    /// A worker with `concurrency` slots, none used, idle, whose claims
    /// take batches: freed slots are claimed once half of them are free.
    pub(crate) fn new(concurrency: usize) -> Self {
        Self {
            concurrency,
            min_refill: concurrency.div_ceil(2),
            running: 0,
            phase: Phase::Idle,
            drained: false,
        }
    }

    /// A worker whose tasks are few per wake-up and each worth starting at
    /// once (workflow tasks: a step's decision waits for its claim): a
    /// freed slot is claimed at once, not kept for a fuller batch; a claim
    /// still takes every free slot's task in one statement.
    pub(crate) fn refilling_at_once(concurrency: usize) -> Self {
        Self {
            min_refill: 1,
            ..Self::new(concurrency)
        }
    }

    /// Slots taken by claimed tasks not finished yet.
    pub(crate) fn running(&self) -> usize {
        self.running
    }

    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    fn free(&self) -> usize {
        self.concurrency.saturating_sub(self.running)
    }

    /// Starts a claim if there is room and none is under way.
    fn try_start(&mut self) -> Option<usize> {
        match self.phase {
            Phase::Idle if self.free() > 0 => {
                let max = self.free();
                self.phase = Phase::Claiming {
                    requested: max,
                    again: false,
                    freed: false,
                };
                Some(max)
            }
            _ => None,
        }
    }

    /// The router offers a wake-up for one of the worker's queues.
    pub(crate) fn offer(&mut self) -> Offer {
        let offer = self.answer_offer();
        if offer == Offer::Declined && self.phase != Phase::Stopped {
            self.drained = false;
        }
        offer
    }

    fn answer_offer(&mut self) -> Offer {
        match self.phase {
            Phase::Stopped => Offer::Declined,
            Phase::Claiming {
                requested, freed, ..
            } => {
                // The claim under way may fill every slot; accepting is right
                // only if room is left after it, else another worker must.
                if self.free() > requested {
                    self.phase = Phase::Claiming {
                        requested,
                        again: true,
                        freed,
                    };
                    Offer::Coalesced
                } else {
                    Offer::Declined
                }
            }
            Phase::Idle => match self.try_start() {
                Some(max) => Offer::Started { max },
                None => Offer::Declined,
            },
        }
    }

    /// The worker's own timer fired (fallback, due time, retry): claim if
    /// there is room and no claim is under way. `Some(max)` starts one.
    /// When it cannot, the due time is not forgotten: the next freed slot
    /// claims (`drained` is cleared).
    pub(crate) fn timer_fired(&mut self) -> Option<usize> {
        let started = self.try_start();
        if started.is_none() && self.phase != Phase::Stopped {
            self.drained = false;
        }
        started
    }

    /// Tasks finished and `count` slots are free: claim again, since the
    /// queue that filled the slots probably holds more, but in full
    /// batches: freed together (results recorded at once), they are filled
    /// by one claim; a few freed while most slots still run wait a short
    /// window for company ([`Refill::Soon`]), unless nothing else runs. No
    /// claim when the last one found the queues drained and no wake-up was
    /// declined since (`drained`): nothing says they hold more, and work
    /// written since is offered to this worker, which now has room for it.
    pub(crate) fn slots_freed(&mut self, count: usize) -> Refill {
        debug_assert!(self.running >= count, "slots freed that were never taken");
        if count == 0 {
            return Refill::Nothing;
        }
        self.running = self.running.saturating_sub(count);
        match self.phase {
            Phase::Claiming {
                requested, again, ..
            } => {
                // The claim under way decides at its end, knowing this.
                self.phase = Phase::Claiming {
                    requested,
                    again,
                    freed: true,
                };
                return Refill::Nothing;
            }
            Phase::Stopped => return Refill::Nothing,
            Phase::Idle if self.drained => return Refill::Nothing,
            Phase::Idle => {}
        }
        if self.refill_worthwhile() {
            self.try_start()
                .map_or(Refill::Nothing, |max| Refill::Now { max })
        } else {
            Refill::Soon
        }
    }

    /// Whether the free slots make a batch worth claiming now: at least
    /// `min_refill` (half of them for batch claims), or all of them (nothing
    /// else runs, so waiting gains nothing).
    fn refill_worthwhile(&self) -> bool {
        self.free() > 0 && (self.free() >= self.min_refill || self.running == 0)
    }

    /// The claim under way ended.
    pub(crate) fn claim_ended(&mut self, end: ClaimEnd) -> AfterClaim {
        let Phase::Claiming {
            requested,
            again,
            freed,
        } = self.phase
        else {
            // Stopped meanwhile (or a stray end): only count what was claimed.
            if let ClaimEnd::Claimed(claimed)
            | ClaimEnd::Drained(claimed)
            | ClaimEnd::More(claimed) = end
            {
                self.running += claimed;
            }
            return AfterClaim::Stopped;
        };
        self.phase = Phase::Idle;
        self.drained = false;
        let (claimed, drained_queues) = match end {
            ClaimEnd::Failed => return AfterClaim::RetryLater,
            ClaimEnd::Claimed(claimed) => (claimed, claimed < requested),
            ClaimEnd::Drained(claimed) => (claimed, true),
            ClaimEnd::More(claimed) => (claimed, false),
        };
        self.running += claimed;
        if again {
            // A wake-up was accepted meanwhile: it is owed a claim, however
            // few slots are free.
            return match self.try_start() {
                Some(max) => AfterClaim::ClaimAgain { max },
                None => AfterClaim::Full,
            };
        }
        if drained_queues && !freed {
            // The queues were empty as of the claim: work written since is
            // announced by a wake-up.
            self.drained = true;
            return AfterClaim::Idle;
        }
        // A full batch (probably more waiting), or slots freed meanwhile
        // (their queues may have more than the claim saw: when unsure, look
        // once more), in a batch.
        if self.free() == 0 {
            AfterClaim::Full
        } else if self.refill_worthwhile() {
            self.try_start()
                .map_or(AfterClaim::Full, |max| AfterClaim::ClaimAgain { max })
        } else {
            AfterClaim::RefillSoon
        }
    }

    /// Another worker of this process asks for up to `wanted` slots for the
    /// tasks it will lease to this one (eager dispatch): grants those free
    /// beyond a claim under way (which may fill its request), none when
    /// stopping. Granted slots count as taken at once; those not filled
    /// come back through [`slots_freed`](Self::slots_freed).
    pub(crate) fn reserve(&mut self, wanted: usize) -> usize {
        let claiming = match self.phase {
            Phase::Stopped => return 0,
            Phase::Idle => 0,
            Phase::Claiming { requested, .. } => requested,
        };
        let granted = wanted.min(self.free().saturating_sub(claiming));
        self.running += granted;
        granted
    }

    /// Shutting down: no more claims; a claim under way still counts its
    /// tasks when it ends.
    pub(crate) fn stop(&mut self) {
        self.phase = Phase::Stopped;
    }

    /// Tasks given back or abandoned at shutdown free their slots without
    /// claiming again.
    pub(crate) fn released(&mut self, count: usize) {
        self.running = self.running.saturating_sub(count);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashSet, VecDeque};

    use super::*;

    #[derive(Debug, Clone, Copy)]
    enum Event {
        Offer,
        Timer,
        SlotsFreed(usize),
        ClaimEnded(ClaimEnd),
        Reserve(usize),
        Stop,
    }

    fn events(state: &WakeState) -> Vec<Event> {
        let mut events = vec![Event::Offer, Event::Timer, Event::Stop];
        for wanted in 1..=state.concurrency + 1 {
            events.push(Event::Reserve(wanted));
        }
        for count in 1..=state.running {
            events.push(Event::SlotsFreed(count));
        }
        if let Phase::Claiming { requested, .. } = state.phase {
            events.push(Event::ClaimEnded(ClaimEnd::Failed));
            for claimed in 0..=requested {
                events.push(Event::ClaimEnded(ClaimEnd::Claimed(claimed)));
                events.push(Event::ClaimEnded(ClaimEnd::Drained(claimed)));
                events.push(Event::ClaimEnded(ClaimEnd::More(claimed)));
            }
        }
        events
    }

    /// Applies `event`, checking what must hold of every transition.
    fn step(before: &WakeState, event: Event) -> WakeState {
        let mut after = before.clone();
        let free_before = before.free();
        match event {
            Event::Offer => {
                let offer = after.offer();
                match offer {
                    Offer::Started { max } => {
                        assert_eq!(before.phase, Phase::Idle, "{before:?}");
                        assert!(max > 0 && max == free_before, "{before:?} -> {offer:?}");
                    }
                    Offer::Coalesced => {
                        // Accepted while claiming only if room is left after
                        // the claim, and then a second claim is promised.
                        let Phase::Claiming { requested, .. } = before.phase else {
                            panic!("coalesced while not claiming: {before:?}");
                        };
                        assert!(free_before > requested);
                        assert!(matches!(after.phase, Phase::Claiming { again: true, .. }));
                    }
                    Offer::Declined => {
                        // Declined only when it could not take the work:
                        // stopped, full, or a claim under way that may fill it.
                        let could_not = match before.phase {
                            Phase::Stopped => true,
                            Phase::Idle => free_before == 0,
                            Phase::Claiming { requested, .. } => free_before <= requested,
                        };
                        assert!(could_not, "declined with room: {before:?}");
                        // Remembered (while not stopping), nothing else.
                        let mut remembered = before.clone();
                        remembered.drained &= before.phase == Phase::Stopped;
                        assert_eq!(after, remembered, "a declined offer changes nothing else");
                    }
                }
            }
            Event::Timer => {
                let started = after.timer_fired();
                assert_eq!(
                    started.is_some(),
                    before.phase == Phase::Idle && free_before > 0,
                    "{before:?}"
                );
                // A due time it could not claim for makes a freed slot claim.
                if started.is_none() && before.phase != Phase::Stopped {
                    assert!(!after.drained, "{before:?}");
                }
            }
            Event::SlotsFreed(count) => {
                let refill = after.slots_freed(count);
                assert_eq!(after.running, before.running - count);
                let free = free_before + count;
                match refill {
                    Refill::Now { max } => {
                        // One claim fills every freed slot, and only a batch
                        // worth it: half the slots, or all of them.
                        assert_eq!(before.phase, Phase::Idle, "{before:?}");
                        assert_eq!(max, free, "{before:?}");
                        assert!(max >= after.min_refill || after.running == 0);
                    }
                    Refill::Soon => {
                        assert_eq!(before.phase, Phase::Idle, "{before:?}");
                        assert!(free < after.min_refill && after.running > 0);
                        // Its timer then claims them: never left unclaimed.
                        assert_eq!(after.clone().timer_fired(), Some(free));
                    }
                    // Idle, only when its last claim found the queues drained
                    // and it declined nothing since.
                    Refill::Nothing => {
                        assert!(before.phase != Phase::Idle || before.drained, "{before:?}")
                    }
                }
                // A claim under way is told, to look once more after it.
                if let Phase::Claiming {
                    requested, again, ..
                } = before.phase
                {
                    assert_eq!(
                        after.phase,
                        Phase::Claiming {
                            requested,
                            again,
                            freed: true
                        }
                    );
                }
            }
            Event::ClaimEnded(end) => {
                let Phase::Claiming {
                    requested,
                    again,
                    freed,
                } = before.phase
                else {
                    unreachable!("only offered while claiming");
                };
                let next = after.claim_ended(end);
                match (end, next) {
                    (ClaimEnd::Failed, AfterClaim::RetryLater) => {
                        assert_eq!(after.running, before.running);
                        assert_eq!(after.phase, Phase::Idle);
                    }
                    (ClaimEnd::Claimed(n) | ClaimEnd::Drained(n) | ClaimEnd::More(n), next) => {
                        assert_eq!(after.running, before.running + n);
                        assert!(after.running <= after.concurrency, "over capacity");
                        // More is likely after a full batch (unless the claim
                        // saw nothing else), a wake-up owed, or slots freed.
                        let full = n == requested && matches!(end, ClaimEnd::Claimed(_))
                            || matches!(end, ClaimEnd::More(_));
                        let more = full || again || freed;
                        match next {
                            AfterClaim::ClaimAgain { max } => {
                                assert!(more && max == after.free() && max > 0);
                                // A wake-up owed, or a batch worth claiming.
                                assert!(
                                    again || max >= after.min_refill || after.running == 0,
                                    "{before:?} {end:?}"
                                );
                                assert!(matches!(after.phase, Phase::Claiming { .. }));
                            }
                            AfterClaim::Full => {
                                assert!(more && after.free() == 0, "{before:?} {end:?}");
                                assert_eq!(after.phase, Phase::Idle);
                            }
                            AfterClaim::RefillSoon => {
                                // Never with a wake-up owed; its timer claims.
                                assert!(!again && (full || freed), "{before:?} {end:?}");
                                assert!(after.free() > 0 && after.free() < after.min_refill);
                                assert_eq!(after.clone().timer_fired(), Some(after.free()));
                            }
                            AfterClaim::Idle => {
                                assert!(!more);
                                assert_eq!(after.phase, Phase::Idle);
                                // And a freed slot then claims only if a
                                // wake-up is declined first.
                                assert!(after.drained);
                            }
                            other => panic!("{before:?} {end:?} -> {other:?}"),
                        }
                    }
                    (end, next) => panic!("{before:?} {end:?} -> {next:?}"),
                }
            }
            Event::Reserve(wanted) => {
                let granted = after.reserve(wanted);
                let claiming = match before.phase {
                    Phase::Claiming { requested, .. } => requested,
                    _ => 0,
                };
                // As many as asked while room is left beyond the claim
                // under way, never into it, none when stopping; taken at once.
                let room = free_before.saturating_sub(claiming);
                let expected = if before.phase == Phase::Stopped {
                    0
                } else {
                    wanted.min(room)
                };
                assert_eq!(granted, expected, "{before:?} {event:?}");
                assert_eq!(after.running, before.running + granted);
                assert_eq!(after.phase, before.phase, "a reservation claims nothing");
            }
            Event::Stop => {
                after.stop();
                assert_eq!(after.phase, Phase::Stopped);
                assert_eq!(after.offer(), Offer::Declined);
                assert_eq!(after.timer_fired(), None);
            }
        }
        assert!(after.running <= after.concurrency, "{before:?} {event:?}");
        if let Phase::Claiming { requested, .. } = after.phase {
            assert!(requested > 0 && after.running + requested <= after.concurrency);
        }
        after
    }

    #[test]
    fn every_reachable_state_and_event_keeps_the_invariants() {
        for (concurrency, start) in
            (1..=4).flat_map(|c| [(c, WakeState::new(c)), (c, WakeState::refilling_at_once(c))])
        {
            let mut seen = HashSet::new();
            let mut queue = VecDeque::from([start]);
            while let Some(state) = queue.pop_front() {
                if !seen.insert(state.clone()) {
                    continue;
                }
                for event in events(&state) {
                    queue.push_back(step(&state, event));
                }
            }
            // Every (running, phase) combination the worker can be in.
            assert!(
                seen.len() > concurrency * 3,
                "{concurrency}: {}",
                seen.len()
            );
        }
    }

    #[test]
    fn an_idle_worker_with_room_always_accepts_and_claims() {
        let mut state = WakeState::new(2);
        assert_eq!(state.offer(), Offer::Started { max: 2 });
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(0)), AfterClaim::Idle);
        assert_eq!(state.offer(), Offer::Started { max: 2 });
    }

    #[test]
    fn a_full_worker_declines_so_the_router_asks_another() {
        // Filled from its own timer: the case where the old router, which
        // thought it idle, handed it a wake-up that was then lost.
        let mut state = WakeState::new(1);
        assert_eq!(state.timer_fired(), Some(1));
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(1)), AfterClaim::Full);
        assert_eq!(state.offer(), Offer::Declined);
        assert_eq!(state.slots_freed(1), Refill::Now { max: 1 });
    }

    #[test]
    fn a_claim_that_will_fill_every_slot_declines_further_offers() {
        let mut state = WakeState::new(3);
        state.running = 1;
        assert_eq!(state.offer(), Offer::Started { max: 2 });
        assert_eq!(state.offer(), Offer::Declined);
        // A slot freed meanwhile leaves room after the claim: accept then.
        assert_eq!(state.slots_freed(1), Refill::Nothing);
        assert_eq!(state.offer(), Offer::Coalesced);
        assert_eq!(
            state.claim_ended(ClaimEnd::Claimed(0)),
            AfterClaim::ClaimAgain { max: 3 }
        );
    }

    #[test]
    fn a_wake_up_accepted_during_a_claim_is_never_dropped() {
        let mut state = WakeState::new(4);
        state.running = 2;
        assert_eq!(state.timer_fired(), Some(2));
        state.slots_freed(1);
        assert_eq!(state.offer(), Offer::Coalesced);
        // The claim found one task of the two it asked for: two slots are
        // left, and the promise holds although the batch was not full.
        assert_eq!(
            state.claim_ended(ClaimEnd::Claimed(1)),
            AfterClaim::ClaimAgain { max: 2 }
        );
    }

    #[test]
    fn slots_freed_together_are_filled_by_one_claim() {
        let mut state = WakeState::new(100);
        assert_eq!(state.timer_fired(), Some(100));
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(100)), AfterClaim::Full);
        // A batch of 60 results recorded at once: one claim for 60, not 60
        // claims of one task each.
        assert_eq!(state.slots_freed(60), Refill::Now { max: 60 });
        assert_eq!(state.slots_freed(0), Refill::Nothing);
    }

    #[test]
    fn a_few_slots_freed_while_most_run_wait_for_a_fuller_batch() {
        let mut state = WakeState::new(100);
        assert_eq!(state.timer_fired(), Some(100));
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(100)), AfterClaim::Full);
        // The first result alone: not a claim of one task.
        assert_eq!(state.slots_freed(1), Refill::Soon);
        assert_eq!(state.slots_freed(48), Refill::Soon);
        // Half the slots free: claim them all.
        assert_eq!(state.slots_freed(1), Refill::Now { max: 50 });
        // A full batch back while ten more finished: ten free, refill soon.
        state.slots_freed(10);
        assert_eq!(
            state.claim_ended(ClaimEnd::Claimed(50)),
            AfterClaim::RefillSoon
        );
        assert_eq!(state.timer_fired(), Some(10));
    }

    #[test]
    fn a_worker_refilling_at_once_claims_each_freed_slot_at_once() {
        let mut state = WakeState::refilling_at_once(4);
        assert_eq!(state.timer_fired(), Some(4));
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(4)), AfterClaim::Full);
        // One slot of four freed: claimed now, not kept for a fuller batch.
        assert_eq!(state.slots_freed(1), Refill::Now { max: 1 });
    }

    #[test]
    fn a_claim_that_saw_more_than_it_took_claims_again_with_the_slots_left() {
        let mut state = WakeState::refilling_at_once(8);
        assert_eq!(state.timer_fired(), Some(8));
        // Three instances taken (the events first in line were theirs),
        // others wait: the five slots left claim at once.
        assert_eq!(
            state.claim_ended(ClaimEnd::More(3)),
            AfterClaim::ClaimAgain { max: 5 }
        );
        // Fewer than asked with nothing said: the queues were drained.
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(2)), AfterClaim::Idle);
        assert_eq!(state.slots_freed(1), Refill::Nothing);
    }

    #[test]
    fn a_worker_refilling_at_once_owes_a_wake_up_during_a_claim_the_next_claim() {
        let mut state = WakeState::refilling_at_once(8);
        state.running = 6;
        assert_eq!(state.offer(), Offer::Started { max: 2 });
        // The claim may fill both free slots: declined, another worker takes it.
        assert_eq!(state.offer(), Offer::Declined);
        state.slots_freed(1);
        // Now room is left beyond the claim: owed the next claim.
        assert_eq!(state.offer(), Offer::Coalesced);
        assert_eq!(
            state.claim_ended(ClaimEnd::Drained(2)),
            AfterClaim::ClaimAgain { max: 1 }
        );
    }

    #[test]
    fn a_task_that_was_all_there_was_frees_its_slot_without_a_claim() {
        let mut state = WakeState::new(100);
        assert_eq!(state.timer_fired(), Some(100));
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(1)), AfterClaim::Idle);
        // One task was all there was: nothing says more came, and what
        // comes is offered to the worker, which has room.
        assert_eq!(state.slots_freed(1), Refill::Nothing);
        assert_eq!(state.offer(), Offer::Started { max: 100 });
    }

    #[test]
    fn a_wake_up_during_a_claim_is_owed_a_claim_however_few_slots_are_free() {
        let mut state = WakeState::new(100);
        state.running = 98;
        assert_eq!(state.timer_fired(), Some(2));
        state.slots_freed(1);
        assert_eq!(state.offer(), Offer::Coalesced);
        assert_eq!(
            state.claim_ended(ClaimEnd::Claimed(2)),
            AfterClaim::ClaimAgain { max: 1 }
        );
    }

    #[test]
    fn slots_reserved_for_eager_activities_are_taken_until_freed() {
        let mut state = WakeState::new(4);
        assert_eq!(state.reserve(3), 3);
        assert_eq!(state.running(), 3);
        // Only one slot is left for a claim, and no more for a reservation.
        assert_eq!(state.offer(), Offer::Started { max: 1 });
        assert_eq!(state.reserve(1), 0);
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(0)), AfterClaim::Idle);
        // The decision filled two of its three: the third comes back (no
        // claim: the queues were drained as of the last one).
        assert_eq!(state.slots_freed(1), Refill::Nothing);
        // A claim under way may fill its request: not reserved meanwhile.
        assert_eq!(state.offer(), Offer::Started { max: 2 });
        assert_eq!(state.reserve(5), 0);
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(0)), AfterClaim::Idle);
        assert_eq!(state.reserve(5), 2);
        state.stop();
        assert_eq!(state.reserve(1), 0);
    }

    #[test]
    fn a_single_claim_that_saw_nothing_else_leaves_the_freed_slot_unclaimed() {
        let mut state = WakeState::refilling_at_once(1);
        assert_eq!(state.timer_fired(), Some(1));
        // Its one slot filled: without more evidence, the slot it frees
        // looks again...
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(1)), AfterClaim::Full);
        assert_eq!(state.slots_freed(1), Refill::Now { max: 1 });
        // ...but not when the claim saw no other work.
        assert_eq!(state.claim_ended(ClaimEnd::Drained(1)), AfterClaim::Idle);
        assert_eq!(state.slots_freed(1), Refill::Nothing);
    }

    #[test]
    fn a_timer_that_fires_while_every_slot_is_taken_makes_the_next_freed_slot_claim() {
        let mut state = WakeState::refilling_at_once(1);
        assert_eq!(state.timer_fired(), Some(1));
        assert_eq!(state.claim_ended(ClaimEnd::Drained(1)), AfterClaim::Idle);
        // A retry comes due while the only slot runs a task...
        assert_eq!(state.timer_fired(), None);
        // ...and is claimed when it frees.
        assert_eq!(state.slots_freed(1), Refill::Now { max: 1 });
    }

    #[test]
    fn a_slot_freed_after_the_queues_drained_claims_only_if_a_wake_up_was_declined() {
        let mut state = WakeState::new(2);
        assert_eq!(state.reserve(2), 2);
        assert_eq!(state.offer(), Offer::Declined);
        // A wake-up declined for want of room: the freed slot claims.
        assert_eq!(state.slots_freed(1), Refill::Now { max: 1 });
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(0)), AfterClaim::Idle);
        // The queues were drained as of that claim: the next slot freed
        // needs no claim (work written since is offered, and accepted).
        assert_eq!(state.slots_freed(1), Refill::Nothing);
        assert_eq!(state.running(), 0);
        assert_eq!(state.offer(), Offer::Started { max: 2 });
    }

    #[test]
    fn a_failed_claim_retries_later_and_a_stopped_worker_does_nothing() {
        let mut state = WakeState::new(1);
        assert_eq!(state.timer_fired(), Some(1));
        assert_eq!(state.claim_ended(ClaimEnd::Failed), AfterClaim::RetryLater);
        assert_eq!(state.timer_fired(), Some(1));
        state.stop();
        assert_eq!(state.claim_ended(ClaimEnd::Claimed(1)), AfterClaim::Stopped);
        assert_eq!(state.running(), 1);
        assert_eq!(state.offer(), Offer::Declined);
        assert_eq!(state.slots_freed(1), Refill::Nothing);
        state.released(5);
        assert_eq!(state.running(), 0);
    }
}
