-- Back to version 6: the SQL functions go; rows they wrote stay, as any
-- other writer's do.
DROP FUNCTION IF EXISTS pgwake_enqueue_activity(text, jsonb, text);
DROP FUNCTION IF EXISTS pgwake_cancel_workflow(text);
DROP FUNCTION IF EXISTS pgwake_signal_workflow(text, text, jsonb);
DROP FUNCTION IF EXISTS pgwake_start_workflow(text, text, jsonb, text);
