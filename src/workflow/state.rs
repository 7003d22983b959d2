//! What a replay knows: the commands the code created, the scheduling
//! events the history recorded, how the two are matched, the buffered
//! signals, and the workflow's clock and random source.
//!
//! Commands are matched to recorded scheduling events per kind, in order:
//! the n-th activity the code schedules is the n-th `ActivityScheduled` of
//! the history, whichever of the two is seen first (a side effect's value
//! is recorded after the activities its code scheduled right after it, so
//! either may come first). A name that differs is non-determinism.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use serde_json::Value;

use super::command::{
    ActivityCommand, InvalidTransition, Retry, SideEffectCommand, State, TimerCommand,
};
use super::error::{ActivityError, ReplayError};
use crate::store::{Event, EventType, InstanceRef};

/// What applying one event asks of the executor.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The execution started with this input: create the workflow's future.
    Started(Value),
    /// The execution was asked to cancel.
    Canceled,
    /// Nothing beyond the state change.
    Recorded,
}

/// The replay's state, shared by the context, the futures the code awaits,
/// and the executor (one thread, never borrowed across a poll).
#[derive(Debug)]
pub(crate) struct ReplayState {
    pub(crate) instance: InstanceRef,
    /// The time of the last event the code reacts to (never the clock).
    pub(crate) now: SystemTime,
    /// Whether recorded history is still being replayed.
    pub(crate) replaying: bool,
    random_counter: u64,
    pub(crate) activities: Vec<ActivityCommand>,
    activity_events: Vec<(i64, String)>,
    activities_matched: usize,
    pub(crate) timers: Vec<TimerCommand>,
    timer_events: Vec<i64>,
    timer_cursor: usize,
    timers_matched: usize,
    pub(crate) side_effects: Vec<SideEffectCommand>,
    side_effect_events: Vec<(i64, Value)>,
    side_effects_matched: usize,
    signals: HashMap<String, VecDeque<Value>>,
    /// The running backoff timers of retried activities: timer index to
    /// the index of the attempt that failed.
    retry_timers: HashMap<usize, usize>,
    /// The first non-determinism found while the code ran (it cannot be
    /// returned to the code), reported by the executor after the poll.
    pub(crate) error: Option<ReplayError>,
}

impl ReplayState {
    pub(crate) fn new(instance: InstanceRef) -> Self {
        Self {
            instance,
            now: SystemTime::UNIX_EPOCH,
            replaying: true,
            random_counter: 0,
            activities: Vec::new(),
            activity_events: Vec::new(),
            activities_matched: 0,
            timers: Vec::new(),
            timer_events: Vec::new(),
            timer_cursor: 0,
            timers_matched: 0,
            side_effects: Vec::new(),
            side_effect_events: Vec::new(),
            side_effects_matched: 0,
            signals: HashMap::new(),
            retry_timers: HashMap::new(),
            error: None,
        }
    }

    fn fail(&mut self, error: ReplayError) {
        self.error.get_or_insert(error);
    }

    /// The code schedules an activity; returns its index.
    pub(crate) fn add_activity(&mut self, command: ActivityCommand) -> usize {
        self.activities.push(command);
        if let Err(err) = self.match_activities() {
            self.fail(err);
        }
        self.activities.len() - 1
    }

    /// The result the workflow sees for the activity it scheduled at
    /// `index`: the last attempt's, once no retry is running.
    pub(crate) fn activity_result(&self, index: usize) -> Option<&Result<Value, ActivityError>> {
        let mut index = index;
        loop {
            match self.activities[index].retried {
                None => return self.activities[index].result(),
                Some(Retry::Waiting(_)) => return None,
                Some(Retry::Attempted(next)) => index = next,
            }
        }
    }

    /// The code starts a timer; returns its index.
    pub(crate) fn add_timer(&mut self, command: TimerCommand) -> usize {
        self.timers.push(command);
        if let Err(err) = self.match_timers() {
            self.fail(err);
        }
        self.timers.len() - 1
    }

    /// The code asks for a side effect; returns its index. Live, it is
    /// computed at once; replaying, its value comes from the history.
    pub(crate) fn add_side_effect(&mut self, command: SideEffectCommand) -> usize {
        self.side_effects.push(command);
        let index = self.side_effects.len() - 1;
        if let Err(err) = self.match_side_effects() {
            self.fail(err);
        }
        if !self.replaying && self.side_effects[index].awaits_value() {
            if let Err(err) = self.side_effects[index].compute() {
                self.fail(inconsistent(err));
            }
        }
        index
    }

    /// The side effects created while replaying that the history does not
    /// hold (the code changed): computed now that replay is over. Returns
    /// whether any was.
    pub(crate) fn compute_unmatched_side_effects(&mut self) -> bool {
        let mut any = false;
        for command in &mut self.side_effects[self.side_effects_matched..] {
            if command.awaits_value()
                && command.state() == State::Pending
                && command.compute().is_ok()
            {
                any = true;
            }
        }
        any
    }

    /// The next buffered signal of `name`, if one arrived.
    pub(crate) fn take_signal(&mut self, name: &str) -> Option<Value> {
        self.signals.get_mut(name)?.pop_front()
    }

    /// A number derived from the execution id and how many were drawn:
    /// the same sequence on every replay.
    pub(crate) fn next_random(&mut self) -> u64 {
        self.random_counter += 1;
        let seed = self
            .instance
            .execution_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            });
        splitmix64(seed.wrapping_add(self.random_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
    }

    /// Applies one history or new event.
    pub(crate) fn apply(&mut self, event: &Event) -> Result<Applied, ReplayError> {
        use EventType as T;
        if matches!(
            event.event_type,
            T::WorkflowExecutionStarted
                | T::ActivityCompleted
                | T::ActivityFailed
                | T::TimerFired
                | T::SignalReceived
                | T::WorkflowExecutionCanceled
        ) {
            // A timer's event is written when the timer starts and becomes
            // visible when it fires: it happened then.
            self.now = event
                .visible_at
                .map_or(event.timestamp, |at| at.max(event.timestamp));
        }
        match event.event_type {
            T::WorkflowExecutionStarted => return Ok(Applied::Started(event.attributes.clone())),
            T::WorkflowExecutionCanceled => return Ok(Applied::Canceled),
            T::ActivityScheduled => {
                let name = event.attributes["name"].as_str().unwrap_or_default();
                self.activity_events
                    .push((event.sequence_id, name.to_string()));
                self.match_activities()?;
            }
            T::ActivityCompleted | T::ActivityFailed => {
                let result = if event.event_type == T::ActivityCompleted {
                    Ok(event.attributes["result"].clone())
                } else {
                    let stored = match &event.attributes["error"] {
                        Value::String(text) => text.clone(),
                        other => other.to_string(),
                    };
                    Err(ActivityError::from_stored(&stored))
                };
                let schedule = event.schedule_event_id;
                let Some(index) = self
                    .activities
                    .iter()
                    .position(|c| c.schedule_event_id() == Some(schedule))
                else {
                    return Err(self.unanswerable(event));
                };
                let command = &mut self.activities[index];
                let retried = match &result {
                    Err(err) if command.retry.retries(err, command.attempt) => {
                        Some(command.retry.delay_after(command.attempt))
                    }
                    _ => None,
                };
                command.resolve(result).map_err(inconsistent)?;
                // The workflow does not see a failure that is retried: the
                // backoff timer starts now, in the same place on every
                // replay, and the next attempt when it fires.
                if let Some(delay) = retried {
                    let timer = self.add_timer(TimerCommand::new(delay));
                    self.activities[index].retried = Some(Retry::Waiting(timer));
                    self.retry_timers.insert(timer, index);
                }
            }
            T::TimerScheduled => {
                self.timer_events.push(event.sequence_id);
                self.match_timers()?;
            }
            T::TimerFired => {
                let schedule = event.schedule_event_id;
                let Some(index) = self
                    .timers
                    .iter()
                    .position(|c| c.schedule_event_id() == Some(schedule))
                else {
                    return Err(self.unanswerable(event));
                };
                self.timers[index].fire().map_err(inconsistent)?;
                if let Some(failed) = self.retry_timers.remove(&index) {
                    let next = self.activities[failed].next_attempt();
                    let attempt = self.add_activity(next);
                    self.activities[failed].retried = Some(Retry::Attempted(attempt));
                }
            }
            T::TimerCanceled => {
                let schedule = event.schedule_event_id;
                let command = self
                    .timers
                    .iter_mut()
                    .find(|c| c.schedule_event_id() == Some(schedule));
                let canceled = command.map(TimerCommand::commit_cancel);
                if !matches!(canceled, Some(Ok(()))) {
                    return Err(ReplayError::NonDeterminism {
                        sequence_id: event.sequence_id,
                        recorded: format!("TimerCanceled of the timer at #{schedule}"),
                        scheduled: "no cancellation of it".into(),
                    });
                }
            }
            T::SideEffectResult => {
                self.side_effect_events
                    .push((event.sequence_id, event.attributes.clone()));
                self.match_side_effects()?;
            }
            T::SignalReceived => {
                let name = event.attributes["name"].as_str().unwrap_or_default();
                self.signals
                    .entry(name.to_string())
                    .or_default()
                    .push_back(event.attributes["payload"].clone());
            }
            _ => {}
        }
        Ok(Applied::Recorded)
    }

    /// An answer (`ActivityCompleted`, `TimerFired`) to a scheduling event
    /// no command was matched to.
    fn unanswerable(&self, event: &Event) -> ReplayError {
        let schedule = event.schedule_event_id;
        if let Some((_, name)) = self.activity_events.iter().find(|(s, _)| *s == schedule) {
            return nothing_scheduled(schedule, format!("ActivityScheduled '{name}'"));
        }
        if self.timer_events.contains(&schedule) {
            return nothing_scheduled(schedule, "TimerScheduled".into());
        }
        ReplayError::Inconsistent(format!(
            "{:?} at #{} answers #{schedule}, which schedules nothing",
            event.event_type, event.sequence_id
        ))
    }

    fn match_activities(&mut self) -> Result<(), ReplayError> {
        while self.activities_matched < self.activities.len()
            && self.activities_matched < self.activity_events.len()
        {
            let (sequence_id, recorded) = &self.activity_events[self.activities_matched];
            let command = &mut self.activities[self.activities_matched];
            if command.name != *recorded {
                return Err(ReplayError::NonDeterminism {
                    sequence_id: *sequence_id,
                    recorded: format!("ActivityScheduled '{recorded}'"),
                    scheduled: format!("'{}'", command.name),
                });
            }
            command.commit(*sequence_id).map_err(inconsistent)?;
            self.activities_matched += 1;
        }
        Ok(())
    }

    fn match_timers(&mut self) -> Result<(), ReplayError> {
        while self.timer_cursor < self.timers.len() && self.timers_matched < self.timer_events.len()
        {
            let command = &mut self.timers[self.timer_cursor];
            self.timer_cursor += 1;
            // Canceled before it was ever scheduled: never recorded.
            if command.state() == State::Canceled && command.schedule_event_id().is_none() {
                continue;
            }
            command
                .commit(self.timer_events[self.timers_matched])
                .map_err(inconsistent)?;
            self.timers_matched += 1;
        }
        Ok(())
    }

    fn match_side_effects(&mut self) -> Result<(), ReplayError> {
        while self.side_effects_matched < self.side_effects.len()
            && self.side_effects_matched < self.side_effect_events.len()
        {
            let (_, value) = &self.side_effect_events[self.side_effects_matched];
            self.side_effects[self.side_effects_matched]
                .commit(value.clone())
                .map_err(inconsistent)?;
            self.side_effects_matched += 1;
        }
        Ok(())
    }

    /// After the last event: a recorded scheduling event the code never
    /// reached is non-determinism.
    pub(crate) fn check_all_matched(&self) -> Result<(), ReplayError> {
        if let Some((sequence_id, name)) = self.activity_events.get(self.activities_matched) {
            return Err(nothing_scheduled(
                *sequence_id,
                format!("ActivityScheduled '{name}'"),
            ));
        }
        if let Some(sequence_id) = self.timer_events.get(self.timers_matched) {
            return Err(nothing_scheduled(*sequence_id, "TimerScheduled".into()));
        }
        if let Some((sequence_id, _)) = self.side_effect_events.get(self.side_effects_matched) {
            return Err(nothing_scheduled(*sequence_id, "SideEffectResult".into()));
        }
        Ok(())
    }
}

fn nothing_scheduled(sequence_id: i64, recorded: String) -> ReplayError {
    ReplayError::NonDeterminism {
        sequence_id,
        recorded,
        scheduled: "nothing".into(),
    }
}

fn inconsistent(err: InvalidTransition) -> ReplayError {
    ReplayError::Inconsistent(err.to_string())
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state() -> ReplayState {
        ReplayState::new(InstanceRef {
            instance_id: "i".into(),
            execution_id: "e".into(),
        })
    }

    fn event(sequence_id: i64, event_type: EventType, schedule: i64, attributes: Value) -> Event {
        Event {
            event_id: format!("ev-{sequence_id}"),
            sequence_id,
            event_type,
            timestamp: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(sequence_id as u64),
            schedule_event_id: schedule,
            visible_at: None,
            attributes,
        }
    }

    #[test]
    fn a_recorded_event_matches_a_command_created_later() {
        let mut s = state();
        s.apply(&event(
            2,
            EventType::ActivityScheduled,
            0,
            json!({"name": "a"}),
        ))
        .unwrap();
        let index = s.add_activity(ActivityCommand::new("a".into(), json!(null), None));
        assert!(s.error.is_none());
        assert_eq!(s.activities[index].schedule_event_id(), Some(2));
    }

    #[test]
    fn a_different_name_is_non_determinism_naming_both() {
        let mut s = state();
        s.add_activity(ActivityCommand::new("refund".into(), json!(null), None));
        let err = s
            .apply(&event(
                4,
                EventType::ActivityScheduled,
                0,
                json!({"name": "charge"}),
            ))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "non-determinism: history has ActivityScheduled 'charge' at #4, the code scheduled 'refund'"
        );
    }

    #[test]
    fn an_unreached_scheduling_event_is_non_determinism() {
        let mut s = state();
        s.apply(&event(3, EventType::TimerScheduled, 0, json!(null)))
            .unwrap();
        assert!(matches!(
            s.check_all_matched(),
            Err(ReplayError::NonDeterminism { sequence_id: 3, .. })
        ));
    }

    #[test]
    fn a_timer_canceled_before_scheduling_is_skipped_by_matching() {
        let mut s = state();
        let dropped = s.add_timer(TimerCommand::new(std::time::Duration::from_secs(1)));
        s.timers[dropped].cancel();
        let kept = s.add_timer(TimerCommand::new(std::time::Duration::from_secs(2)));
        s.apply(&event(5, EventType::TimerScheduled, 0, json!(null)))
            .unwrap();
        assert_eq!(s.timers[kept].schedule_event_id(), Some(5));
        s.apply(&event(6, EventType::TimerFired, 5, json!(null)))
            .unwrap();
        assert_eq!(s.timers[kept].state(), State::Done);
    }

    #[test]
    fn an_activity_failure_is_read_back_typed_and_now_follows_answers() {
        let mut s = state();
        let i = s.add_activity(ActivityCommand::new("a".into(), json!(null), None));
        s.apply(&event(
            2,
            EventType::ActivityScheduled,
            0,
            json!({"name": "a"}),
        ))
        .unwrap();
        let stored = ActivityError::new("declined", "no").to_stored();
        s.apply(&event(
            3,
            EventType::ActivityFailed,
            2,
            json!({ "error": stored }),
        ))
        .unwrap();
        assert_eq!(
            s.activities[i]
                .result()
                .unwrap()
                .as_ref()
                .unwrap_err()
                .kind(),
            "declined"
        );
        assert_eq!(
            s.now,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(3)
        );
    }

    #[test]
    fn a_retried_failure_is_hidden_behind_a_timer_then_a_second_attempt() {
        use crate::workflow::RetryPolicy;
        let mut s = state();
        let policy = RetryPolicy::default()
            .max_attempts(2)
            .first_interval(std::time::Duration::from_secs(7));
        let i = s.add_activity(ActivityCommand::new("a".into(), json!(1), None).with_retry(policy));
        s.apply(&event(
            2,
            EventType::ActivityScheduled,
            0,
            json!({"name": "a"}),
        ))
        .unwrap();
        let failed = json!({ "error": ActivityError::new("timeout", "slow").to_stored() });
        s.apply(&event(3, EventType::ActivityFailed, 2, failed.clone()))
            .unwrap();
        assert!(s.activity_result(i).is_none());
        assert_eq!(s.timers.len(), 1);
        assert_eq!(s.timers[0].delay, std::time::Duration::from_secs(7));
        s.apply(&event(4, EventType::TimerScheduled, 0, json!(null)))
            .unwrap();
        s.apply(&event(5, EventType::TimerFired, 4, json!(null)))
            .unwrap();
        assert_eq!(s.activities.len(), 2);
        assert_eq!(s.activities[1].attempt, 2);
        assert_eq!(s.activities[1].input, json!(1));
        assert!(s.activity_result(i).is_none());
        s.apply(&event(
            6,
            EventType::ActivityScheduled,
            0,
            json!({"name": "a"}),
        ))
        .unwrap();
        s.apply(&event(7, EventType::ActivityFailed, 6, failed))
            .unwrap();
        // The last attempt's failure reaches the workflow; no more timers.
        assert_eq!(s.timers.len(), 1);
        assert_eq!(
            s.activity_result(i).unwrap().as_ref().unwrap_err().kind(),
            "timeout"
        );
        assert!(s.error.is_none());
        s.check_all_matched().unwrap();
    }

    #[test]
    fn a_recorded_retry_the_code_no_longer_asks_for_is_non_determinism() {
        let mut s = state();
        s.add_activity(ActivityCommand::new("a".into(), json!(1), None));
        s.apply(&event(
            2,
            EventType::ActivityScheduled,
            0,
            json!({"name": "a"}),
        ))
        .unwrap();
        let failed = json!({ "error": ActivityError::new("timeout", "slow").to_stored() });
        s.apply(&event(3, EventType::ActivityFailed, 2, failed))
            .unwrap();
        s.apply(&event(4, EventType::TimerScheduled, 0, json!(null)))
            .unwrap();
        assert!(matches!(
            s.check_all_matched(),
            Err(ReplayError::NonDeterminism { sequence_id: 4, .. })
        ));
    }

    #[test]
    fn signals_are_buffered_per_name_in_arrival_order() {
        let mut s = state();
        for (seq, payload) in [(2, 1), (3, 2)] {
            s.apply(&event(
                seq,
                EventType::SignalReceived,
                0,
                json!({"name": "n", "payload": payload}),
            ))
            .unwrap();
        }
        assert_eq!(s.take_signal("n"), Some(json!(1)));
        assert_eq!(s.take_signal("n"), Some(json!(2)));
        assert_eq!(s.take_signal("n"), None);
        assert_eq!(s.take_signal("other"), None);
    }

    #[test]
    fn random_numbers_repeat_for_the_same_execution() {
        let (mut a, mut b) = (state(), state());
        let first: Vec<u64> = (0..3).map(|_| a.next_random()).collect();
        let again: Vec<u64> = (0..3).map(|_| b.next_random()).collect();
        assert_eq!(first, again);
        assert_ne!(first[0], first[1]);
    }

    #[test]
    fn a_side_effect_is_computed_live_and_read_back_on_replay() {
        let mut live = state();
        live.replaying = false;
        let i = live.add_side_effect(SideEffectCommand::new(Box::new(|| json!(7))));
        assert_eq!(live.side_effects[i].value(), Some(&json!(7)));

        let mut replay = state();
        let i = replay.add_side_effect(SideEffectCommand::new(Box::new(|| json!(8))));
        assert!(replay.side_effects[i].awaits_value());
        replay
            .apply(&event(4, EventType::SideEffectResult, 0, json!(7)))
            .unwrap();
        assert_eq!(replay.side_effects[i].value(), Some(&json!(7)));
    }
}
