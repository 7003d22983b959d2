-- A claim whose cost does not grow with the backlog or with other queues.
--
-- Activities ready to run (never leased, never scheduled for later) in the
-- claim's order, per queue: a claim walks its queue's oldest ready rows and
-- stops after its batch, whatever else the table holds (a backlog on another
-- queue, thousands of leased rows on its own). Partial, so the index holds
-- the ready rows only: a claimed row leaves it with the claim. Leases that
-- ran out and activities scheduled for later that came due are found
-- through the indexes of migrations 1 and 3.
CREATE INDEX IF NOT EXISTS idx_activities_queue_id_ready
  ON activities (queue, id) WHERE locked_until IS NULL AND visible_at IS NULL;

-- Pending events visible at once, in the workflow claim's order: the claim
-- no longer walks timers that are not due (they are found from now() on
-- through idx_pending_events_visible_at).
CREATE INDEX IF NOT EXISTS idx_pending_events_id_visible
  ON pending_events (id) WHERE visible_at IS NULL;

-- A strict prefix of idx_pending_events_inid_exid_visible_at_schedule_event_id:
-- every lookup it served, by pgwake or go-workflows, the longer index serves,
-- and each pending event paid for both.
DROP INDEX IF EXISTS idx_pending_events_inid_exid;
