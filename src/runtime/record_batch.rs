//! When a worker records the activity results waiting in its buffer: a
//! small pure rule, unit-tested exhaustively below, that the worker actor
//! follows.
//!
//! Recording each result as its handler returns splits every batch: the
//! first result of a claim of 100 goes alone, its freed slot is claimed
//! alone, and claims and recordings average a third of a batch. Waiting for
//! the batch's other handlers (bounded by a short window, so that one slow
//! handler does not hold up the others' results) keeps both whole, and a
//! result with no handler left running beside it is recorded at once: the
//! single task's latency does not change.

use std::time::Duration;

/// The most results recorded in one transaction.
pub(crate) const MAX_RECORD_BATCH: usize = 500;

/// What the worker knows when a result arrives or a recording ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Buffer {
    /// Results waiting to be recorded.
    pub(crate) waiting: usize,
    /// How long the oldest of them has waited.
    pub(crate) oldest_waited: Duration,
    /// Handlers of this worker still running: results likely to follow.
    pub(crate) handlers_running: usize,
    /// A recording is under way, or a failed one waits for its retry.
    pub(crate) busy: bool,
}

/// What to do with the waiting results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Record them now, in one transaction.
    Now,
    /// Record them after this delay unless something ends the wait sooner
    /// (the last running handler returning, the batch filling up).
    After(Duration),
    /// Nothing to do now: nothing waits, or the recording under way (or its
    /// retry) takes what waits when it ends.
    Wait,
}

/// Decides when the waiting results are recorded: at once when no other
/// handler is running (no company is coming) or the batch is full, after
/// `window` at most otherwise.
pub(crate) fn when_to_flush(buffer: Buffer, window: Duration) -> Flush {
    if buffer.busy || buffer.waiting == 0 {
        Flush::Wait
    } else if buffer.handlers_running == 0
        || buffer.waiting >= MAX_RECORD_BATCH
        || buffer.oldest_waited >= window
    {
        Flush::Now
    } else {
        Flush::After(window - buffer.oldest_waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(2);

    #[test]
    fn every_buffer_gets_the_rule_and_no_result_waits_past_the_window() {
        let waits = [
            Duration::ZERO,
            Duration::from_micros(500),
            WINDOW,
            Duration::from_secs(1),
        ];
        for waiting in [0, 1, 2, MAX_RECORD_BATCH - 1, MAX_RECORD_BATCH, 10_000] {
            for oldest_waited in waits {
                for handlers_running in [0, 1, 99] {
                    for busy in [false, true] {
                        let buffer = Buffer {
                            waiting,
                            oldest_waited,
                            handlers_running,
                            busy,
                        };
                        let flush = when_to_flush(buffer, WINDOW);
                        let due = handlers_running == 0
                            || waiting >= MAX_RECORD_BATCH
                            || oldest_waited >= WINDOW;
                        let expected = if busy || waiting == 0 {
                            Flush::Wait
                        } else if due {
                            Flush::Now
                        } else {
                            Flush::After(WINDOW - oldest_waited)
                        };
                        assert_eq!(flush, expected, "{buffer:?}");
                        if let Flush::After(delay) = flush {
                            assert!(delay > Duration::ZERO && oldest_waited + delay <= WINDOW);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_lone_result_is_recorded_at_once() {
        let lone = Buffer {
            waiting: 1,
            oldest_waited: Duration::ZERO,
            handlers_running: 0,
            busy: false,
        };
        assert_eq!(when_to_flush(lone, WINDOW), Flush::Now);
    }

    #[test]
    fn the_first_result_of_a_batch_waits_for_the_others() {
        let first = Buffer {
            waiting: 1,
            oldest_waited: Duration::ZERO,
            handlers_running: 99,
            busy: false,
        };
        assert_eq!(when_to_flush(first, WINDOW), Flush::After(WINDOW));
        let last = Buffer {
            waiting: 100,
            handlers_running: 0,
            ..first
        };
        assert_eq!(when_to_flush(last, WINDOW), Flush::Now);
    }
}
