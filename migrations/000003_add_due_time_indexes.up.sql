-- Lets a worker find the next timer due on its queues by walking these
-- indexes from now() instead of scanning: partial, because most rows are
-- visible at once (visible_at IS NULL) and never need the index.
CREATE INDEX IF NOT EXISTS idx_pending_events_visible_at
  ON pending_events (visible_at) WHERE visible_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_activities_queue_visible_at
  ON activities (queue, visible_at) WHERE visible_at IS NOT NULL;
