//! Who waits in this process for an instance's execution to end: a
//! decision that ends one wakes its waiters right after its commit, so a
//! client of the same store learns the result without polling.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The waiters, by instance id; shared by a store's clones.
#[derive(Debug, Default)]
pub(crate) struct Finishes {
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

impl Finishes {
    /// Starts waiting for `instance_id`. Until the subscription is
    /// dropped, every end of one of its executions wakes it.
    pub(crate) fn subscribe(self: &Arc<Self>, instance_id: &str) -> FinishSubscription {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let entry = waiting
            .entry(instance_id.to_string())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        FinishSubscription {
            finishes: self.clone(),
            instance_id: instance_id.to_string(),
            notify: entry.0.clone(),
        }
    }

    /// An execution of `instance_id` ended (committed).
    pub(crate) fn ended(&self, instance_id: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((notify, _)) = waiting.get(instance_id) {
            notify.notify_waiters();
        }
    }
}

/// A subscription from [`Finishes::subscribe`].
#[derive(Debug)]
pub(crate) struct FinishSubscription {
    finishes: Arc<Finishes>,
    instance_id: String,
    notify: Arc<Notify>,
}

impl FinishSubscription {
    /// What to await for the next end; registered at once, so an end that
    /// comes between this call and the await is not missed.
    pub(crate) fn next_end(&self) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
        let mut notified = Box::pin(self.notify.notified());
        notified.as_mut().enable();
        notified
    }
}

impl Drop for FinishSubscription {
    fn drop(&mut self) {
        let mut waiting = self
            .finishes
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = waiting.get_mut(&self.instance_id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                waiting.remove(&self.instance_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn an_end_wakes_the_subscribers_of_that_instance_only() {
        let finishes = Arc::new(Finishes::default());
        let a = finishes.subscribe("a");
        let b = finishes.subscribe("b");
        let (a_end, b_end) = (a.next_end(), b.next_end());
        // Registered before the end: not missed.
        finishes.ended("a");
        tokio::time::timeout(Duration::from_secs(5), a_end)
            .await
            .expect("woken");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), b_end)
                .await
                .is_err(),
            "b did not end"
        );
    }

    #[test]
    fn dropped_subscriptions_leave_nothing_behind() {
        let finishes = Arc::new(Finishes::default());
        let first = finishes.subscribe("a");
        let second = finishes.subscribe("a");
        drop(first);
        assert_eq!(finishes.waiting.lock().unwrap().len(), 1);
        drop(second);
        assert!(finishes.waiting.lock().unwrap().is_empty());
        finishes.ended("a");
    }
}
