-- Back to fencing by `locked_until` alone, which every claim still rewrites.
ALTER TABLE activities DROP COLUMN IF EXISTS lease_id;
ALTER TABLE instances DROP COLUMN IF EXISTS lease_id;
