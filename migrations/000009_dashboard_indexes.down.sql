DROP INDEX IF EXISTS idx_instances_created_at;
DROP INDEX IF EXISTS idx_instances_instance_id_pattern;
