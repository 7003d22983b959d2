-- Back to 000002's row-level triggers: the same names and bodies as its up
-- file, so that version 3 is the same schema whichever way it was reached.
DROP TRIGGER IF EXISTS pgwake_activities_notify ON activities;
DROP TRIGGER IF EXISTS pgwake_pending_events_notify ON pending_events;
DROP FUNCTION IF EXISTS pgwake_notify_activity_tasks();
DROP FUNCTION IF EXISTS pgwake_notify_workflow_tasks();

-- A pending event carries no queue of its own: it belongs to the queue of its
-- instance, found through the unique (instance_id, execution_id) index.
CREATE OR REPLACE FUNCTION notify_workflow_task() RETURNS trigger AS $$
DECLARE
  instance_queue varchar(128);
BEGIN
  SELECT queue INTO instance_queue
    FROM instances
   WHERE instance_id = NEW.instance_id AND execution_id = NEW.execution_id;
  PERFORM pg_notify('workflow_tasks', COALESCE(instance_queue, ''));
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER pending_events_notify_workflow_task
  AFTER INSERT ON pending_events
  FOR EACH ROW EXECUTE FUNCTION notify_workflow_task();

CREATE OR REPLACE FUNCTION notify_activity_task() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('activity_tasks', NEW.queue);
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER activities_notify_activity_task
  AFTER INSERT ON activities
  FOR EACH ROW EXECUTE FUNCTION notify_activity_task();
