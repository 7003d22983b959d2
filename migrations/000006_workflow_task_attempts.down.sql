-- Back to retrying a failing workflow task every second, invisibly. An
-- instance backing off when this runs is retried once its `locked_until`
-- passes, which a pgwake from before this version reads as a lease.
ALTER TABLE instances DROP COLUMN IF EXISTS last_task_error;
ALTER TABLE instances DROP COLUMN IF EXISTS task_attempts;
