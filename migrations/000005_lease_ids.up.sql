-- An immutable token per claim. The fencing token used to be the lease's
-- `locked_until`, which every extension moves: when the reply to an extension
-- was lost, the holder's next extension or its completion no longer matched
-- and was refused. Each claim now writes a fresh random `lease_id` that
-- extensions leave alone; extending, completing and releasing are fenced by
-- (id, worker, lease_id), and completing and releasing clear it.
--
-- Nullable and without a default: adding it rewrites nothing and holds the
-- table's lock only for an instant. go-workflows never reads it, and a
-- pgwake from before this version (fenced by `locked_until`, which every
-- claim still rewrites) keeps working beside it until it is upgraded.
ALTER TABLE activities ADD COLUMN IF NOT EXISTS lease_id bigint NULL;
ALTER TABLE instances ADD COLUMN IF NOT EXISTS lease_id bigint NULL;
