-- Statement-level notification triggers, replacing 000002's row-level ones.
--
-- Why: NOTIFY takes a database-wide lock at commit and holds it through the
-- WAL flush, so every transaction that notifies commits alone instead of
-- sharing a flush with others (group commit). One NOTIFY per row made that
-- worst for batches; these triggers send one per distinct queue per
-- statement, and none at all when the writer asks to defer (below).
--
-- Deferring: pgwake's own writers run `SET LOCAL pgwake.defer_notify = on`
-- and notify after commit from a separate connection, debounced, so their
-- commits never take the lock. Any other writer (psql, another language,
-- go-workflows itself) leaves the setting unset and still wakes listeners.
-- Only the exact value 'on' defers: unset, empty or anything else notifies,
-- so a typo fails towards waking workers, never towards silence.
--
-- Only rows visible now (visible_at NULL or not after now(), the writing
-- transaction's start) notify: a row due later is found by the worker's
-- due-time timer, and waking workers early would only make them find
-- nothing to do.
--
-- Channel names, which listeners must compute the same way:
--   * tables in schema `public`: `workflow_tasks` and `activity_tasks`;
--   * tables in any other schema S: `S.workflow_tasks` and
--     `S.activity_tasks` (LISTEN must quote them: LISTEN "S.workflow_tasks"),
--     cut to at most 63 bytes, PostgreSQL's channel-name limit, at a
--     character boundary: `left(name, 63)`, then whole characters dropped
--     from the end while it is longer than 63 bytes (a multi-byte schema
--     name can make 63 characters more than 63 bytes). This is the prefix a
--     quoted identifier is truncated to, so `LISTEN "<full name>"` listens
--     on the same channel; a longer name would make pg_notify raise an
--     error and fail the writer's statement.
-- The payload is the queue name.
--
-- The functions read `instances` through TG_TABLE_SCHEMA rather than the
-- search_path, so a writer whose search_path differs from the migrator's
-- (or a database holding several copies of the tables) still joins the
-- instances table next to the pending_events it inserted into.

DROP TRIGGER IF EXISTS activities_notify_activity_task ON activities;
DROP TRIGGER IF EXISTS pending_events_notify_workflow_task ON pending_events;
DROP FUNCTION IF EXISTS notify_activity_task();
DROP FUNCTION IF EXISTS notify_workflow_task();

-- A pending event carries no queue of its own: it belongs to the queue of
-- its instance. An event whose instance does not exist notifies nothing, as
-- no worker could take it (workers find events through their instance).
CREATE FUNCTION pgwake_notify_workflow_tasks() RETURNS trigger AS $$
DECLARE
  channel text;
  queue_name text;
BEGIN
  IF current_setting('pgwake.defer_notify', true) = 'on' THEN
    RETURN NULL;
  END IF;
  -- Inlined rather than a shared function, which the writer's search_path
  -- might not find. See the top of this file for the rule.
  IF TG_TABLE_SCHEMA = 'public' THEN
    channel := 'workflow_tasks';
  ELSE
    channel := left(TG_TABLE_SCHEMA || '.workflow_tasks', 63);
    WHILE octet_length(channel) > 63 LOOP
      channel := left(channel, -1);
    END LOOP;
  END IF;
  -- Dynamic SQL so that `instances` is the one in the trigger's schema,
  -- whatever the writer's search_path; the transition table is visible to
  -- it as to static SQL.
  FOR queue_name IN EXECUTE format(
      'SELECT DISTINCT i.queue
         FROM pgwake_inserted_pending_events e
         JOIN %I.instances i
           ON i.instance_id = e.instance_id AND i.execution_id = e.execution_id
        WHERE e.visible_at IS NULL OR e.visible_at <= now()',
      TG_TABLE_SCHEMA)
  LOOP
    PERFORM pg_notify(channel, queue_name);
  END LOOP;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER pgwake_pending_events_notify
  AFTER INSERT ON pending_events
  REFERENCING NEW TABLE AS pgwake_inserted_pending_events
  FOR EACH STATEMENT EXECUTE FUNCTION pgwake_notify_workflow_tasks();

CREATE FUNCTION pgwake_notify_activity_tasks() RETURNS trigger AS $$
DECLARE
  channel text;
  queue_name text;
BEGIN
  IF current_setting('pgwake.defer_notify', true) = 'on' THEN
    RETURN NULL;
  END IF;
  -- The channel rule, inlined as in pgwake_notify_workflow_tasks().
  IF TG_TABLE_SCHEMA = 'public' THEN
    channel := 'activity_tasks';
  ELSE
    channel := left(TG_TABLE_SCHEMA || '.activity_tasks', 63);
    WHILE octet_length(channel) > 63 LOOP
      channel := left(channel, -1);
    END LOOP;
  END IF;
  FOR queue_name IN
    SELECT DISTINCT a.queue
      FROM pgwake_inserted_activities a
     WHERE a.visible_at IS NULL OR a.visible_at <= now()
  LOOP
    PERFORM pg_notify(channel, queue_name);
  END LOOP;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER pgwake_activities_notify
  AFTER INSERT ON activities
  REFERENCING NEW TABLE AS pgwake_inserted_activities
  FOR EACH STATEMENT EXECUTE FUNCTION pgwake_notify_activity_tasks();
