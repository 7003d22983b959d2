-- Leased activities per queue, in lease order: where a claim finds the
-- leases of its own queues that ran out, and a poll the next one to run
-- out, without walking the leases of every other queue. Through
-- idx_activities_locked_until (locked_until, queue) of migration 1 an idle
-- queue's claim read every lease of the other queues, one heap row each
-- (4.4 ms at 30,000; the cost grew with them). That index stays: it is
-- go-workflows' own, and its activity claim walks it. Partial: rows never
-- leased are not in it, so enqueueing writes no entry.
CREATE INDEX IF NOT EXISTS idx_activities_queue_locked_until
  ON activities (queue, locked_until) WHERE locked_until IS NOT NULL;
