DROP INDEX IF EXISTS idx_activities_queue_visible_at;
DROP INDEX IF EXISTS idx_pending_events_visible_at;
