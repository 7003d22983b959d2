//! When this process last received a notification per queue: lets the
//! notifier skip a NOTIFY the other processes have no need of.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::messages::TaskKind;
use crate::store::Queue;

#[derive(Debug, Clone, Default)]
pub(crate) struct NotificationLedger(Arc<Mutex<HashMap<(TaskKind, Queue), Instant>>>);

impl NotificationLedger {
    pub(crate) fn record(&self, kind: TaskKind, queue: &Queue) {
        let mut guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard.insert((kind, queue.clone()), Instant::now());
    }

    /// Whether a notification for `queue` arrived after `since`: every
    /// listening process received it too, after our commit, so they are
    /// awake and will see our rows.
    pub(crate) fn received_since(&self, kind: TaskKind, queue: &Queue, since: Instant) -> bool {
        let guard = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        guard
            .get(&(kind, queue.clone()))
            .is_some_and(|at| *at > since)
    }
}
