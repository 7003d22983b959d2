DROP INDEX IF EXISTS idx_activities_queue_locked_until;
