-- A pending event names the queue of its instance, so that a workflow claim
-- walks its own queues' events only.
--
-- Why: go-workflows' pending_events has no queue: an event belongs to the
-- queue of its instance. A claim walked the ready events of every queue in
-- id order and kept those of its own queues, so a claim on a quiet queue read
-- every older event of another queue's backlog first (30.6 ms with 100,000
-- instances waiting on another queue; every event read).
--
-- pgwake's writers fill the column. Any other writer (go-workflows itself,
-- psql) leaves it unset, and the trigger below fills it from the instance:
-- through TG_TABLE_SCHEMA, as the notification triggers of migration 4 read
-- `instances`, whatever the writer's search_path. An event inserted before
-- its instance is visible (the same statement, say) keeps a NULL queue;
-- claims look for those too (a partial index holds them, empty in practice),
-- so no event is ever left unclaimed for want of a queue.
ALTER TABLE pending_events ADD COLUMN IF NOT EXISTS queue VARCHAR(128);

UPDATE pending_events pe SET queue = i.queue
  FROM instances i
 WHERE i.instance_id = pe.instance_id AND i.execution_id = pe.execution_id
   AND pe.queue IS NULL;

CREATE FUNCTION pgwake_pending_event_queue() RETURNS trigger AS $$
BEGIN
  EXECUTE format(
      'SELECT queue FROM %I.instances WHERE instance_id = $1 AND execution_id = $2',
      TG_TABLE_SCHEMA)
    INTO NEW.queue
    USING NEW.instance_id, NEW.execution_id;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER pgwake_pending_event_queue
  BEFORE INSERT ON pending_events
  FOR EACH ROW WHEN (NEW.queue IS NULL)
  EXECUTE FUNCTION pgwake_pending_event_queue();

-- Events visible at once, per queue in the claim's order; timers per queue
-- in due order; events whose queue is unknown.
CREATE INDEX IF NOT EXISTS idx_pending_events_queue_id_ready
  ON pending_events (queue, id) WHERE visible_at IS NULL;
CREATE INDEX IF NOT EXISTS idx_pending_events_queue_visible_at
  ON pending_events (queue, visible_at) WHERE visible_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_pending_events_unqueued
  ON pending_events (id) WHERE queue IS NULL;

-- The claim's walk of migration 8, across queues: nothing reads it now, and
-- every event paid for it.
DROP INDEX IF EXISTS idx_pending_events_id_visible;

-- Migration 3's timers across queues, walked by a poll's next due time in
-- time order (bounded at 100, then answering early): each queue's next
-- timer is now the first entry of its part of the index above. Left in
-- place, the planner could still walk it for a queue's timers that came due.
DROP INDEX IF EXISTS idx_pending_events_visible_at;
