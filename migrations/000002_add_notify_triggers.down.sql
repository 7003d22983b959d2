DROP TRIGGER IF EXISTS activities_notify_activity_task ON activities;
DROP TRIGGER IF EXISTS pending_events_notify_workflow_task ON pending_events;
DROP FUNCTION IF EXISTS notify_activity_task();
DROP FUNCTION IF EXISTS notify_workflow_task();
