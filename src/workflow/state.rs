//! What a replay knows: the commands the code created, the scheduling
//! events the history recorded, how the two are matched, the buffered
//! signals, whether the execution was canceled, and the workflow's clock
//! and random source.
//!
//! Commands are matched to recorded scheduling events per kind, in order:
//! the n-th activity the code schedules is the n-th `ActivityScheduled` of
//! the history, whichever of the two is seen first (a side effect's value
//! is recorded after the activities its code scheduled right after it, so
//! either may come first). A name that differs is non-determinism. A
//! command canceled before it was ever recorded is skipped: the history
//! never held it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::task::Waker;
use std::time::SystemTime;

use serde_json::Value;

use super::command::{
    ActivityCommand, InvalidTransition, Retry, SideEffectCommand, SignalCommand, State,
    SubWorkflowCommand, TimerCommand,
};
use super::error::{stored_text, ActivityError, ReplayError, WorkflowError};
use crate::store::{Event, EventType, InstanceRef};

/// What applying one event asks of the executor.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The execution started with this input: create the workflow's future.
    Started(Value),
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
    /// Whether the execution was asked to cancel (`WorkflowExecutionCanceled`).
    pub(crate) canceled: bool,
    /// The input of the next execution, once the code asked to continue as new.
    pub(crate) continue_as_new: Option<Value>,
    random_counter: u64,
    pub(crate) activities: Vec<ActivityCommand>,
    activity_events: Vec<(i64, String)>,
    activity_cursor: usize,
    activities_matched: usize,
    pub(crate) timers: Vec<TimerCommand>,
    timer_events: Vec<i64>,
    timer_cursor: usize,
    timers_matched: usize,
    pub(crate) side_effects: Vec<SideEffectCommand>,
    side_effect_events: Vec<(i64, Value)>,
    side_effects_matched: usize,
    pub(crate) sub_workflows: Vec<SubWorkflowCommand>,
    /// `SubWorkflowScheduled` events: sequence id, workflow name, instance id.
    sub_workflow_events: Vec<(i64, String, String)>,
    sub_workflow_cursor: usize,
    sub_workflows_matched: usize,
    /// How many default sub-workflow ids were handed out.
    sub_workflow_ids: u64,
    /// The signals the code sent to other instances.
    pub(crate) sent_signals: Vec<SignalCommand>,
    /// How many of them the history reported (`SignalSent`/`SignalNotDelivered`).
    sent_signals_reported: usize,
    signals: HashMap<String, VecDeque<Value>>,
    /// The change ids the history holds a `Patched` marker for.
    recorded_patches: HashSet<String>,
    /// What each change id asked about answered in this run.
    patch_answers: HashMap<String, bool>,
    /// The markers this run owes the history, in the order asked.
    pub(crate) new_patches: Vec<String>,
    /// The running backoff timers of retried activities: timer index to
    /// the index of the attempt that failed.
    retry_timers: HashMap<usize, usize>,
    /// Commands by the sequence id of their scheduling event, so that an
    /// answer finds its command in constant time.
    activity_by_schedule: HashMap<i64, usize>,
    timer_by_schedule: HashMap<i64, usize>,
    sub_workflow_by_schedule: HashMap<i64, usize>,
    /// The timers and sub-workflows whose cancellation the code asked for
    /// once they were scheduled (each once), in order.
    timer_cancels: Vec<usize>,
    sub_workflow_cancels: Vec<usize>,
    /// The first non-determinism found while the code ran (it cannot be
    /// returned to the code), reported by the executor after the poll.
    pub(crate) error: Option<ReplayError>,
    /// The wakers of the futures polled since the last event.
    pub(crate) wakers: Vec<Waker>,
}

impl ReplayState {
    pub(crate) fn new(instance: InstanceRef) -> Self {
        Self {
            instance,
            now: SystemTime::UNIX_EPOCH,
            replaying: true,
            canceled: false,
            continue_as_new: None,
            random_counter: 0,
            activities: Vec::new(),
            activity_events: Vec::new(),
            activity_cursor: 0,
            activities_matched: 0,
            timers: Vec::new(),
            timer_events: Vec::new(),
            timer_cursor: 0,
            timers_matched: 0,
            side_effects: Vec::new(),
            side_effect_events: Vec::new(),
            side_effects_matched: 0,
            sub_workflows: Vec::new(),
            sub_workflow_events: Vec::new(),
            sub_workflow_cursor: 0,
            sub_workflows_matched: 0,
            sub_workflow_ids: 0,
            sent_signals: Vec::new(),
            sent_signals_reported: 0,
            signals: HashMap::new(),
            recorded_patches: HashSet::new(),
            patch_answers: HashMap::new(),
            new_patches: Vec::new(),
            retry_timers: HashMap::new(),
            activity_by_schedule: HashMap::new(),
            timer_by_schedule: HashMap::new(),
            sub_workflow_by_schedule: HashMap::new(),
            timer_cancels: Vec::new(),
            sub_workflow_cancels: Vec::new(),
            error: None,
            wakers: Vec::new(),
        }
    }

    fn fail(&mut self, error: ReplayError) {
        self.error.get_or_insert(error);
    }

    /// The `Patched` markers of the whole history, known before the code
    /// runs: the code asks about a change before its marker's position.
    pub(crate) fn with_recorded_patches<'a>(
        mut self,
        history: impl IntoIterator<Item = &'a Event>,
    ) -> Self {
        self.recorded_patches = history
            .into_iter()
            .filter(|e| e.event_type == EventType::Patched)
            .filter_map(|e| e.attributes["change_id"].as_str().map(str::to_string))
            .collect();
        self
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
    /// `index`: the last attempt's, once no retry is running; a canceled
    /// error once a retry's backoff timer was canceled.
    pub(crate) fn activity_result(&self, index: usize) -> Option<Result<Value, ActivityError>> {
        let mut index = index;
        loop {
            match self.activities[index].retried {
                None => return self.activities[index].result().cloned(),
                Some(Retry::Waiting(timer)) => {
                    return match self.timers[timer].state() {
                        State::Canceled | State::CancelPending => {
                            Some(Err(ActivityError::canceled("the workflow was canceled")))
                        }
                        _ => None,
                    }
                }
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

    /// The code starts a sub-workflow; returns its index.
    pub(crate) fn add_sub_workflow(&mut self, command: SubWorkflowCommand) -> usize {
        self.sub_workflows.push(command);
        if let Err(err) = self.match_sub_workflows() {
            self.fail(err);
        }
        self.sub_workflows.len() - 1
    }

    /// A sub-workflow id for the code that gave none: derived from this
    /// execution and how many were handed out, so the same on replay.
    pub(crate) fn next_sub_workflow_id(&mut self) -> String {
        self.sub_workflow_ids += 1;
        let seed = self.seed() ^ 0x5ab0_0000_0000_0000;
        let high = splitmix64(seed.wrapping_add(self.sub_workflow_ids.wrapping_mul(2)));
        let low = splitmix64(seed.wrapping_add(self.sub_workflow_ids.wrapping_mul(2) + 1));
        format_uuid(high, low)
    }

    /// The code signals another instance; returns the signal's index.
    pub(crate) fn add_sent_signal(&mut self, command: SignalCommand) -> usize {
        self.sent_signals.push(command);
        self.sent_signals.len() - 1
    }

    /// Whether the code takes the branch of change `change_id`: yes when
    /// the history holds its marker, or when the code reaches it live (the
    /// marker is then recorded); no when replaying a history from before
    /// the change. The same answer for the whole run.
    pub(crate) fn patched(&mut self, change_id: &str) -> bool {
        if let Some(answer) = self.patch_answers.get(change_id) {
            return *answer;
        }
        let answer = self.recorded_patches.contains(change_id) || !self.replaying;
        if answer && !self.recorded_patches.contains(change_id) {
            self.new_patches.push(change_id.to_string());
        }
        self.patch_answers.insert(change_id.to_string(), answer);
        answer
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

    fn seed(&self) -> u64 {
        self.instance
            .execution_id
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
                (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
    }

    /// A number derived from the execution id and how many were drawn:
    /// the same sequence on every replay.
    pub(crate) fn next_random(&mut self) -> u64 {
        self.random_counter += 1;
        splitmix64(
            self.seed()
                .wrapping_add(self.random_counter.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        )
    }

    /// A version 4 UUID from the next two random numbers.
    pub(crate) fn next_uuid(&mut self) -> String {
        let (high, low) = (self.next_random(), self.next_random());
        format_uuid(high, low)
    }

    /// The execution was asked to cancel: what it waits for ends with a
    /// canceled error (timers are canceled, running sub-workflows asked to
    /// cancel, activities abandoned); what its code starts afterwards, its
    /// cleanup, runs as usual.
    fn cancel(&mut self) {
        if std::mem::replace(&mut self.canceled, true) {
            return;
        }
        for index in 0..self.timers.len() {
            self.cancel_timer(index);
        }
        for activity in &mut self.activities {
            activity.cancel();
        }
        for index in 0..self.sub_workflows.len() {
            self.cancel_sub_workflow(index);
        }
    }

    /// The code cancels the timer at `index`.
    pub(crate) fn cancel_timer(&mut self, index: usize) {
        if self.timers[index].cancel() {
            self.timer_cancels.push(index);
        }
    }

    /// The code cancels the sub-workflow at `index`.
    pub(crate) fn cancel_sub_workflow(&mut self, index: usize) {
        if self.sub_workflows[index].cancel() {
            self.sub_workflow_cancels.push(index);
        }
    }

    /// The activities the code created that the history does not hold yet.
    pub(crate) fn unrecorded_activities(&self) -> impl Iterator<Item = &ActivityCommand> {
        self.activities[self.activity_cursor..]
            .iter()
            .filter(|a| a.state() == State::Pending)
    }

    /// The timers the code started that the history does not hold yet.
    pub(crate) fn unrecorded_timers(&self) -> impl Iterator<Item = &TimerCommand> {
        self.timers[self.timer_cursor..]
            .iter()
            .filter(|t| t.state() == State::Pending)
    }

    /// The sub-workflows the code started that the history does not hold yet.
    pub(crate) fn unrecorded_sub_workflows(&self) -> impl Iterator<Item = &SubWorkflowCommand> {
        self.sub_workflows[self.sub_workflow_cursor..]
            .iter()
            .filter(|s| s.state() == State::Pending)
    }

    /// The side effects computed live that the history does not hold yet.
    pub(crate) fn unrecorded_side_effects(&self) -> impl Iterator<Item = &Value> {
        self.side_effects[self.side_effects_matched..]
            .iter()
            .filter(|s| s.state() == State::Pending)
            .filter_map(SideEffectCommand::value)
    }

    /// The signals the code sent that no report answered yet.
    pub(crate) fn unreported_signals(&self) -> impl Iterator<Item = &SignalCommand> {
        self.sent_signals[self.sent_signals_reported..]
            .iter()
            .filter(|s| s.state() == State::Pending)
    }

    /// The timers whose cancellation is owed to the history.
    pub(crate) fn owed_timer_cancels(&self) -> impl Iterator<Item = &TimerCommand> {
        self.timer_cancels
            .iter()
            .map(|&index| &self.timers[index])
            .filter(|t| t.owes_cancel())
    }

    /// The sub-workflows whose cancel request is owed to the history.
    pub(crate) fn owed_sub_workflow_cancels(&self) -> impl Iterator<Item = &SubWorkflowCommand> {
        self.sub_workflow_cancels
            .iter()
            .map(|&index| &self.sub_workflows[index])
            .filter(|s| s.owes_cancel())
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
                | T::SubWorkflowCompleted
                | T::SubWorkflowFailed
                | T::SignalSent
                | T::SignalNotDelivered
        ) {
            // A timer's event is written when the timer starts and becomes
            // visible when it fires: it happened then.
            self.now = event
                .visible_at
                .map_or(event.timestamp, |at| at.max(event.timestamp));
        }
        match event.event_type {
            T::WorkflowExecutionStarted => return Ok(Applied::Started(event.attributes.clone())),
            T::WorkflowExecutionCanceled => self.cancel(),
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
                    Err(ActivityError::from_stored(&stored_text(
                        &event.attributes["error"],
                    )))
                };
                let Some(&index) = self.activity_by_schedule.get(&event.schedule_event_id) else {
                    return Err(self.unanswerable(event));
                };
                let command = &mut self.activities[index];
                let retried = match &result {
                    Err(err)
                        if command.result().is_none()
                            && command.retry.retries(err, command.attempt) =>
                    {
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
                let Some(&index) = self.timer_by_schedule.get(&event.schedule_event_id) else {
                    return Err(self.unanswerable(event));
                };
                self.timers[index].fire().map_err(inconsistent)?;
                if self.timers[index].state() == State::Done {
                    if let Some(failed) = self.retry_timers.remove(&index) {
                        let next = self.activities[failed].next_attempt();
                        let attempt = self.add_activity(next);
                        self.activities[failed].retried = Some(Retry::Attempted(attempt));
                    }
                }
            }
            T::TimerCanceled => {
                let schedule = event.schedule_event_id;
                let command = self
                    .timer_by_schedule
                    .get(&schedule)
                    .map(|&index| &mut self.timers[index]);
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
            T::SubWorkflowScheduled => {
                let attributes = &event.attributes;
                let name = attributes["metadata"]["workflow"]
                    .as_str()
                    .unwrap_or_default();
                let instance_id = attributes["instance_id"].as_str().unwrap_or_default();
                self.sub_workflow_events.push((
                    event.sequence_id,
                    name.to_string(),
                    instance_id.to_string(),
                ));
                self.match_sub_workflows()?;
            }
            T::SubWorkflowCompleted | T::SubWorkflowFailed => {
                let result = if event.event_type == T::SubWorkflowCompleted {
                    Ok(event.attributes["result"].clone())
                } else {
                    // The store reports a canceled child as the text
                    // "canceled", a refused one with "already_exists".
                    let stored = stored_text(&event.attributes["error"]);
                    Err(if event.attributes["already_exists"] == true {
                        WorkflowError::new("already_exists", stored).non_retryable()
                    } else if stored == "canceled" {
                        WorkflowError::canceled("the sub-workflow was canceled")
                    } else {
                        WorkflowError::from_stored(&stored)
                    })
                };
                let Some(&index) = self.sub_workflow_by_schedule.get(&event.schedule_event_id)
                else {
                    return Err(self.unanswerable(event));
                };
                self.sub_workflows[index]
                    .resolve(result)
                    .map_err(inconsistent)?;
            }
            T::SubWorkflowCancellationRequested => {
                let schedule = event.attributes["schedule_event_id"]
                    .as_i64()
                    .unwrap_or_default();
                let command = self
                    .sub_workflow_by_schedule
                    .get(&schedule)
                    .map(|&index| &mut self.sub_workflows[index]);
                if !matches!(command.map(SubWorkflowCommand::commit_cancel), Some(Ok(()))) {
                    return Err(ReplayError::NonDeterminism {
                        sequence_id: event.sequence_id,
                        recorded: format!(
                            "SubWorkflowCancellationRequested of the sub-workflow at #{schedule}"
                        ),
                        scheduled: "no cancellation of it".into(),
                    });
                }
            }
            T::SignalSent | T::SignalNotDelivered => {
                let target = event.attributes["instance_id"].as_str().unwrap_or_default();
                let name = event.attributes["name"].as_str().unwrap_or_default();
                let recorded = || format!("{:?} {name:?} to {target:?}", event.event_type);
                let Some(command) = self.sent_signals.get_mut(self.sent_signals_reported) else {
                    return Err(ReplayError::NonDeterminism {
                        sequence_id: event.sequence_id,
                        recorded: recorded(),
                        scheduled: "no signal".into(),
                    });
                };
                if command.instance_id != target || command.name != name {
                    return Err(ReplayError::NonDeterminism {
                        sequence_id: event.sequence_id,
                        recorded: recorded(),
                        scheduled: format!(
                            "signal {:?} to {:?}",
                            command.name, command.instance_id
                        ),
                    });
                }
                let reason = event.attributes["reason"].as_str().unwrap_or_default();
                command
                    .resolve(event.event_type == T::SignalSent, reason)
                    .map_err(inconsistent)?;
                self.sent_signals_reported += 1;
            }
            _ => {}
        }
        Ok(Applied::Recorded)
    }

    /// An answer (`ActivityCompleted`, `TimerFired` ...) to a scheduling
    /// event no command was matched to.
    fn unanswerable(&self, event: &Event) -> ReplayError {
        let schedule = event.schedule_event_id;
        if let Some((_, name)) = self.activity_events.iter().find(|(s, _)| *s == schedule) {
            return nothing_scheduled(schedule, format!("ActivityScheduled '{name}'"));
        }
        if self.timer_events.contains(&schedule) {
            return nothing_scheduled(schedule, "TimerScheduled".into());
        }
        if let Some((_, name, _)) = self
            .sub_workflow_events
            .iter()
            .find(|(s, _, _)| *s == schedule)
        {
            return nothing_scheduled(schedule, format!("SubWorkflowScheduled '{name}'"));
        }
        ReplayError::Inconsistent(format!(
            "{:?} at #{} answers #{schedule}, which schedules nothing",
            event.event_type, event.sequence_id
        ))
    }

    fn match_activities(&mut self) -> Result<(), ReplayError> {
        while self.activity_cursor < self.activities.len()
            && self.activities_matched < self.activity_events.len()
        {
            let command = &mut self.activities[self.activity_cursor];
            self.activity_cursor += 1;
            // Canceled before it was ever scheduled: never recorded.
            if command.state() == State::Canceled && command.schedule_event_id().is_none() {
                continue;
            }
            let (sequence_id, recorded) = &self.activity_events[self.activities_matched];
            if command.name != *recorded {
                return Err(ReplayError::NonDeterminism {
                    sequence_id: *sequence_id,
                    recorded: format!("ActivityScheduled '{recorded}'"),
                    scheduled: format!("'{}'", command.name),
                });
            }
            command.commit(*sequence_id).map_err(inconsistent)?;
            self.activity_by_schedule
                .insert(*sequence_id, self.activity_cursor - 1);
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
            let sequence_id = self.timer_events[self.timers_matched];
            command.commit(sequence_id).map_err(inconsistent)?;
            self.timer_by_schedule
                .insert(sequence_id, self.timer_cursor - 1);
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

    fn match_sub_workflows(&mut self) -> Result<(), ReplayError> {
        while self.sub_workflow_cursor < self.sub_workflows.len()
            && self.sub_workflows_matched < self.sub_workflow_events.len()
        {
            let command = &mut self.sub_workflows[self.sub_workflow_cursor];
            self.sub_workflow_cursor += 1;
            // Canceled before it was ever started: never recorded.
            if command.state() == State::Canceled && command.schedule_event_id().is_none() {
                continue;
            }
            let (sequence_id, name, instance_id) =
                &self.sub_workflow_events[self.sub_workflows_matched];
            if command.workflow != *name || command.instance_id != *instance_id {
                return Err(ReplayError::NonDeterminism {
                    sequence_id: *sequence_id,
                    recorded: format!("SubWorkflowScheduled '{name}' as {instance_id:?}"),
                    scheduled: format!("'{}' as {:?}", command.workflow, command.instance_id),
                });
            }
            command.commit(*sequence_id).map_err(inconsistent)?;
            self.sub_workflow_by_schedule
                .insert(*sequence_id, self.sub_workflow_cursor - 1);
            self.sub_workflows_matched += 1;
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
        if let Some((sequence_id, name, _)) =
            self.sub_workflow_events.get(self.sub_workflows_matched)
        {
            return Err(nothing_scheduled(
                *sequence_id,
                format!("SubWorkflowScheduled '{name}'"),
            ));
        }
        Ok(())
    }
}

fn format_uuid(high: u64, low: u64) -> String {
    // Version 4, variant 10xx: RFC 9562's layout for random UUIDs.
    let high = (high & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let low = (low & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xffff,
        low >> 48,
        low & 0xffff_ffff_ffff
    )
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
