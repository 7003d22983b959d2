CREATE INDEX IF NOT EXISTS idx_pending_events_inid_exid ON pending_events (instance_id, execution_id);
DROP INDEX IF EXISTS idx_pending_events_id_visible;
DROP INDEX IF EXISTS idx_activities_queue_id_ready;
