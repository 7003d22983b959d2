-- The dashboard's searches (issue #15) on a database of millions of
-- executions: an instance id prefix, and a creation-time range, each found
-- through an index instead of a walk over every execution.
--
-- text_pattern_ops compares bytes, whatever the database's collation, so a
-- prefix is one range of it (the unique index on (instance_id,
-- execution_id) serves a prefix only under the C collation). Each index
-- costs one entry per row version: instances rows are never updated in
-- place (HOT) anyway, since every claim changes indexed columns.
CREATE INDEX IF NOT EXISTS idx_instances_instance_id_pattern
  ON instances (instance_id text_pattern_ops);
CREATE INDEX IF NOT EXISTS idx_instances_created_at
  ON instances (created_at, id);
