-- How often the workflow task of an instance has failed in a row, and why it
-- last did. A failing task (a panic, a history the code does not replay) used
-- to be retried every second forever, invisibly; now it backs off (1 s
-- doubling to 5 min, paced by `locked_until` with no worker) and the attempts
-- and the error are there for `describe` and `pgwake stats` to show. A
-- completed task resets both.
--
-- A constant default: since PostgreSQL 11 adding such a column rewrites
-- nothing and holds the table's lock only for an instant. go-workflows never
-- reads either column.
ALTER TABLE instances ADD COLUMN IF NOT EXISTS task_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS last_task_error text NULL;
