-- SQL functions that write what pgwake's Rust store writes, inside the
-- caller's transaction: sqlx, diesel, psql or another language can start a
-- workflow (or signal, cancel, enqueue) atomically with their own rows. The
-- public interface, documented in docs/sql.md:
--
--   pgwake_start_workflow(instance_id, workflow, input, queue) -> execution id
--   pgwake_signal_workflow(instance_id, signal, payload)       -> delivered?
--   pgwake_cancel_workflow(instance_id)                        -> requested?
--   pgwake_enqueue_activity(activity, input, queue)            -> activity id
--
-- The rows are the store's, byte for byte apart from the JSON text (below):
-- Store::create_instance as pgwake::workflow::Client::start calls it,
-- Store::signal_instance, Store::cancel_instance and Store::enqueue_activity.
-- Their inserts fire the notification triggers of migration 4 as any other
-- writer's do, so listeners are woken when the caller commits and never
-- before; these functions never set pgwake.defer_notify (a caller who set it
-- in its transaction silences the triggers, and wakes nobody).
--
-- Arguments are checked as the store checks them, with the same limits;
-- every refused argument is SQLSTATE 22023 (invalid_parameter_value), with
-- a message naming the function and the argument:
--   * instance ids: 1 to 128 bytes, no control characters (U+0000-U+001F,
--     U+007F-U+009F), as names.rs' check_id;
--   * queues: 1 to 128 of [A-Za-z0-9_.:-], as names.rs' Queue::new;
--   * workflow, signal and activity names: not NULL, not empty;
--   * JSON payloads, each as the store measures it (the input; the metadata
--     {"workflow"}; the signal's {"name", "payload"}; the activity's {"name",
--     "input", "queue"}): at most 1 MiB (1048576 bytes), the default of
--     StoreOptions::max_payload_bytes, measured on the bytes stored. A store
--     configured with another limit does not change this one.
--
-- JSON is stored as jsonb's text, in UTF-8, so it differs from serde_json's
-- in whitespace and key order only: every reader (serde_json, go's
-- encoding/json) reads the same value.
--
-- Schema: the functions are created next to the tables (the migration's
-- current schema) and each is pinned to `search_path = pg_catalog, <that
-- schema>, pg_temp` below, so they write to that schema's tables whatever
-- the caller's search_path; a caller outside it names them in full
-- (SELECT billing.pgwake_start_workflow(...)). They run with the caller's
-- privileges (SECURITY INVOKER): the grants on the tables that pgwake's
-- runtime needs are the grants they need.
--
-- Ids are gen_random_uuid() (built in since PostgreSQL 13), the same form as
-- the store's uuid v4 ids.

-- Store::create_instance: one active execution per instance id, serialized
-- by the store's transaction-level advisory lock on the id (class "pgwa",
-- 0x70677761, and hashtext(instance_id)), so a start through SQL and one
-- through Rust exclude each other too. The lock is held until the caller's
-- transaction ends: a second start of the same id waits for it, then sees
-- the first one's row if it committed: in READ COMMITTED every statement
-- of this function reads the newest committed rows. Under REPEATABLE READ
-- or SERIALIZABLE it would read the caller's snapshot, which may predate a
-- concurrent start of the same id (SSI cannot catch it when that start ran
-- in READ COMMITTED, as the Rust store's do): two active executions. So it
-- refuses to run there, with SQLSTATE 25000 (invalid_transaction_state). If
-- the caller's transaction already holds locks another transaction waits
-- for while that one holds this id's lock, PostgreSQL's deadlock detector
-- ends one of them, as for any two locks.
CREATE FUNCTION pgwake_start_workflow(
  instance_id text,
  workflow text,
  input jsonb,
  queue text DEFAULT 'default'
) RETURNS text AS $$
DECLARE
  max_payload_bytes constant integer := 1048576;
  instance_lock_class constant integer := 1885828961; -- 0x70677761, "pgwa"
  new_execution_id text;
  start_event_id text;
  input_data bytea;
  metadata_data bytea;
BEGIN
  IF pgwake_start_workflow.instance_id IS NULL
     OR octet_length(pgwake_start_workflow.instance_id) NOT BETWEEN 1 AND 128
     OR pgwake_start_workflow.instance_id ~ E'[\\x01-\\x1f\\x7f-\\x9f]' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_start_workflow: invalid instance_id %s: it must be 1 to 128 bytes with no control characters',
        CASE WHEN pgwake_start_workflow.instance_id IS NULL THEN 'NULL'
             WHEN char_length(pgwake_start_workflow.instance_id) <= 40 THEN to_json(pgwake_start_workflow.instance_id)::text
             ELSE to_json(left(pgwake_start_workflow.instance_id, 40) || '...')::text
                  || format(' (%s bytes)', octet_length(pgwake_start_workflow.instance_id)) END);
  END IF;
  IF pgwake_start_workflow.workflow IS NULL OR pgwake_start_workflow.workflow = '' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = 'pgwake_start_workflow: workflow must name a registered workflow, not be NULL or empty';
  END IF;
  IF pgwake_start_workflow.queue IS NULL
     OR octet_length(pgwake_start_workflow.queue) NOT BETWEEN 1 AND 128
     OR pgwake_start_workflow.queue !~ '^[A-Za-z0-9_.:-]+$' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_start_workflow: invalid queue name %s: a queue name is 1 to 128 characters, each an ASCII letter, digit, ''_'', ''-'', ''.'' or '':''',
        CASE WHEN pgwake_start_workflow.queue IS NULL THEN 'NULL'
             WHEN char_length(pgwake_start_workflow.queue) <= 40 THEN to_json(pgwake_start_workflow.queue)::text
             ELSE to_json(left(pgwake_start_workflow.queue, 40) || '...')::text
                  || format(' (%s bytes)', octet_length(pgwake_start_workflow.queue)) END);
  END IF;
  -- What Client::start stores: the input as the start event's attributes
  -- (SQL NULL as JSON null), the workflow's name in the metadata.
  input_data := convert_to(COALESCE(pgwake_start_workflow.input, 'null'::jsonb)::text, 'UTF8');
  IF octet_length(input_data) > max_payload_bytes THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_start_workflow: input is %s bytes as stored JSON, more than the %s bytes pgwake accepts',
        octet_length(input_data), max_payload_bytes),
      HINT = 'Store large data elsewhere and pass a reference.';
  END IF;
  metadata_data := convert_to(jsonb_build_object('workflow', pgwake_start_workflow.workflow)::text, 'UTF8');
  IF octet_length(metadata_data) > max_payload_bytes THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_start_workflow: workflow makes the metadata ({"workflow"}) %s bytes as stored JSON, more than the %s bytes pgwake accepts',
        octet_length(metadata_data), max_payload_bytes);
  END IF;

  -- READ UNCOMMITTED is READ COMMITTED in PostgreSQL.
  IF current_setting('transaction_isolation') NOT IN ('read committed', 'read uncommitted') THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_transaction_state',
      MESSAGE = format('pgwake_start_workflow: must run in a READ COMMITTED transaction, not %s: '
        'under an older snapshot a concurrent start of instance %s could go unseen and run twice',
        upper(current_setting('transaction_isolation')), to_json(pgwake_start_workflow.instance_id)::text),
      HINT = 'Begin the transaction with BEGIN ISOLATION LEVEL READ COMMITTED (PostgreSQL''s default).';
  END IF;
  PERFORM pg_advisory_xact_lock(instance_lock_class, hashtext(pgwake_start_workflow.instance_id));
  IF EXISTS (SELECT 1 FROM instances i
              WHERE i.instance_id = pgwake_start_workflow.instance_id AND i.state = 0) THEN
    RAISE EXCEPTION USING
      ERRCODE = 'unique_violation',
      MESSAGE = format('pgwake_start_workflow: workflow instance %s already has an active execution',
        to_json(pgwake_start_workflow.instance_id)::text),
      HINT = 'One active execution per instance id: use another id, or start it again once this execution has finished.';
  END IF;

  new_execution_id := gen_random_uuid()::text;
  start_event_id := gen_random_uuid()::text;
  -- The instance first: the pending event's trigger finds its queue there.
  INSERT INTO instances (instance_id, execution_id, parent_instance_id, parent_execution_id,
                         parent_schedule_event_id, metadata, state, queue)
  VALUES (pgwake_start_workflow.instance_id, new_execution_id, NULL, NULL,
          NULL, metadata_data, 0, pgwake_start_workflow.queue);
  -- WorkflowExecutionStarted (1), as the store's insert_pending writes it.
  INSERT INTO attributes (event_id, instance_id, execution_id, data)
  VALUES (start_event_id, pgwake_start_workflow.instance_id, new_execution_id, input_data);
  INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                              schedule_event_id, visible_at)
  VALUES (start_event_id, pgwake_start_workflow.instance_id, new_execution_id, 1, now(), 0, NULL);
  RETURN new_execution_id;
END;
$$ LANGUAGE plpgsql VOLATILE;

-- Store::signal_instance: a SignalReceived event ({"name", "payload"}) for
-- the newest active execution, whose instances row it locks FOR SHARE (a
-- concurrent completion cannot finish it between the look-up and the
-- insert). No active execution (never started, finished, removed) is
-- `false` where the store reports NotFound: nothing is written.
CREATE FUNCTION pgwake_signal_workflow(
  instance_id text,
  signal text,
  payload jsonb
) RETURNS boolean AS $$
DECLARE
  max_payload_bytes constant integer := 1048576;
  signal_data bytea;
  active_execution_id text;
  signal_event_id text;
BEGIN
  IF pgwake_signal_workflow.instance_id IS NULL
     OR octet_length(pgwake_signal_workflow.instance_id) NOT BETWEEN 1 AND 128
     OR pgwake_signal_workflow.instance_id ~ E'[\\x01-\\x1f\\x7f-\\x9f]' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_signal_workflow: invalid instance_id %s: it must be 1 to 128 bytes with no control characters',
        CASE WHEN pgwake_signal_workflow.instance_id IS NULL THEN 'NULL'
             WHEN char_length(pgwake_signal_workflow.instance_id) <= 40 THEN to_json(pgwake_signal_workflow.instance_id)::text
             ELSE to_json(left(pgwake_signal_workflow.instance_id, 40) || '...')::text
                  || format(' (%s bytes)', octet_length(pgwake_signal_workflow.instance_id)) END);
  END IF;
  IF pgwake_signal_workflow.signal IS NULL OR pgwake_signal_workflow.signal = '' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = 'pgwake_signal_workflow: signal must name the signal, not be NULL or empty';
  END IF;
  signal_data := convert_to(jsonb_build_object(
      'name', pgwake_signal_workflow.signal,
      'payload', COALESCE(pgwake_signal_workflow.payload, 'null'::jsonb))::text, 'UTF8');
  IF octet_length(signal_data) > max_payload_bytes THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_signal_workflow: payload makes the signal ({"name", "payload"}) %s bytes as stored JSON, more than the %s bytes pgwake accepts',
        octet_length(signal_data), max_payload_bytes),
      HINT = 'Store large data elsewhere and pass a reference.';
  END IF;

  SELECT i.execution_id INTO active_execution_id
    FROM instances i
   WHERE i.instance_id = pgwake_signal_workflow.instance_id AND i.state = 0
   ORDER BY i.id DESC LIMIT 1
   FOR SHARE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  signal_event_id := gen_random_uuid()::text;
  -- SignalReceived (17).
  INSERT INTO attributes (event_id, instance_id, execution_id, data)
  VALUES (signal_event_id, pgwake_signal_workflow.instance_id, active_execution_id, signal_data);
  INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                              schedule_event_id, visible_at)
  VALUES (signal_event_id, pgwake_signal_workflow.instance_id, active_execution_id, 17, now(), 0, NULL);
  RETURN true;
END;
$$ LANGUAGE plpgsql VOLATILE;

-- Store::cancel_instance: a WorkflowExecutionCanceled event (attributes
-- JSON null) for the active execution, whose instances row it locks FOR
-- SHARE. No active execution is `false` and writes nothing, whether the
-- instance finished or never existed (the store tells those two apart:
-- AlreadyFinished and NotFound).
CREATE FUNCTION pgwake_cancel_workflow(
  instance_id text
) RETURNS boolean AS $$
DECLARE
  active_execution_id text;
  cancel_event_id text;
BEGIN
  IF pgwake_cancel_workflow.instance_id IS NULL
     OR octet_length(pgwake_cancel_workflow.instance_id) NOT BETWEEN 1 AND 128
     OR pgwake_cancel_workflow.instance_id ~ E'[\\x01-\\x1f\\x7f-\\x9f]' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_cancel_workflow: invalid instance_id %s: it must be 1 to 128 bytes with no control characters',
        CASE WHEN pgwake_cancel_workflow.instance_id IS NULL THEN 'NULL'
             WHEN char_length(pgwake_cancel_workflow.instance_id) <= 40 THEN to_json(pgwake_cancel_workflow.instance_id)::text
             ELSE to_json(left(pgwake_cancel_workflow.instance_id, 40) || '...')::text
                  || format(' (%s bytes)', octet_length(pgwake_cancel_workflow.instance_id)) END);
  END IF;

  SELECT i.execution_id INTO active_execution_id
    FROM instances i
   WHERE i.instance_id = pgwake_cancel_workflow.instance_id AND i.state = 0
   ORDER BY i.id DESC LIMIT 1
   FOR SHARE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  cancel_event_id := gen_random_uuid()::text;
  -- WorkflowExecutionCanceled (5).
  INSERT INTO attributes (event_id, instance_id, execution_id, data)
  VALUES (cancel_event_id, pgwake_cancel_workflow.instance_id, active_execution_id,
          convert_to('null', 'UTF8'));
  INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp,
                              schedule_event_id, visible_at)
  VALUES (cancel_event_id, pgwake_cancel_workflow.instance_id, active_execution_id, 5, now(), 0, NULL);
  RETURN true;
END;
$$ LANGUAGE plpgsql VOLATILE;

-- Store::enqueue_activity: a standalone activity (ActivityScheduled, 11,
-- with schedule_event_id 0 and no history event) with attributes {"name",
-- "input", "queue"}, run by any worker of its queue (Activities::worker
-- runs it as the activity registered under its name, with `input` as its
-- input). It belongs to no workflow: its instance_id and execution_id are
-- its own id, which no instance has, so its result is dropped once the
-- worker records it. Takes no locks on existing rows.
CREATE FUNCTION pgwake_enqueue_activity(
  activity text,
  input jsonb,
  queue text DEFAULT 'default'
) RETURNS text AS $$
DECLARE
  max_payload_bytes constant integer := 1048576;
  activity_data bytea;
  new_activity_id text;
BEGIN
  IF pgwake_enqueue_activity.activity IS NULL OR pgwake_enqueue_activity.activity = '' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = 'pgwake_enqueue_activity: activity must name a registered activity, not be NULL or empty';
  END IF;
  IF pgwake_enqueue_activity.queue IS NULL
     OR octet_length(pgwake_enqueue_activity.queue) NOT BETWEEN 1 AND 128
     OR pgwake_enqueue_activity.queue !~ '^[A-Za-z0-9_.:-]+$' THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_enqueue_activity: invalid queue name %s: a queue name is 1 to 128 characters, each an ASCII letter, digit, ''_'', ''-'', ''.'' or '':''',
        CASE WHEN pgwake_enqueue_activity.queue IS NULL THEN 'NULL'
             WHEN char_length(pgwake_enqueue_activity.queue) <= 40 THEN to_json(pgwake_enqueue_activity.queue)::text
             ELSE to_json(left(pgwake_enqueue_activity.queue, 40) || '...')::text
                  || format(' (%s bytes)', octet_length(pgwake_enqueue_activity.queue)) END);
  END IF;
  activity_data := convert_to(jsonb_build_object(
      'name', pgwake_enqueue_activity.activity,
      'input', COALESCE(pgwake_enqueue_activity.input, 'null'::jsonb),
      'queue', pgwake_enqueue_activity.queue)::text, 'UTF8');
  IF octet_length(activity_data) > max_payload_bytes THEN
    RAISE EXCEPTION USING
      ERRCODE = 'invalid_parameter_value',
      MESSAGE = format('pgwake_enqueue_activity: input makes the activity ({"name", "input", "queue"}) %s bytes as stored JSON, more than the %s bytes pgwake accepts',
        octet_length(activity_data), max_payload_bytes),
      HINT = 'Store large data elsewhere and pass a reference.';
  END IF;

  new_activity_id := gen_random_uuid()::text;
  INSERT INTO attributes (event_id, instance_id, execution_id, data)
  VALUES (new_activity_id, new_activity_id, new_activity_id, activity_data);
  INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp,
                          schedule_event_id)
  VALUES (new_activity_id, new_activity_id, new_activity_id, 11, pgwake_enqueue_activity.queue,
          now(), 0);
  RETURN new_activity_id;
END;
$$ LANGUAGE plpgsql VOLATILE;

-- Pinned to this schema (see the top of this file). pg_catalog first, so
-- that nothing in the schema shadows a built-in; pg_temp last, so that no
-- temporary table shadows pgwake's.
DO $$
BEGIN
  EXECUTE format('ALTER FUNCTION %I.pgwake_start_workflow(text, text, jsonb, text) SET search_path = pg_catalog, %I, pg_temp', current_schema(), current_schema());
  EXECUTE format('ALTER FUNCTION %I.pgwake_signal_workflow(text, text, jsonb) SET search_path = pg_catalog, %I, pg_temp', current_schema(), current_schema());
  EXECUTE format('ALTER FUNCTION %I.pgwake_cancel_workflow(text) SET search_path = pg_catalog, %I, pg_temp', current_schema(), current_schema());
  EXECUTE format('ALTER FUNCTION %I.pgwake_enqueue_activity(text, jsonb, text) SET search_path = pg_catalog, %I, pg_temp', current_schema(), current_schema());
END;
$$;
