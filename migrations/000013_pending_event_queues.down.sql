CREATE INDEX IF NOT EXISTS idx_pending_events_visible_at
  ON pending_events (visible_at) WHERE visible_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_pending_events_id_visible
  ON pending_events (id) WHERE visible_at IS NULL;
DROP INDEX IF EXISTS idx_pending_events_unqueued;
DROP INDEX IF EXISTS idx_pending_events_queue_visible_at;
DROP INDEX IF EXISTS idx_pending_events_queue_id_ready;
DROP TRIGGER IF EXISTS pgwake_pending_event_queue ON pending_events;
DROP FUNCTION IF EXISTS pgwake_pending_event_queue();
ALTER TABLE pending_events DROP COLUMN IF EXISTS queue;
