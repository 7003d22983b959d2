-- The five tables of go-workflows' PostgreSQL backend, column for column.
-- One active execution per instance is enforced by the backend, not here.
CREATE TABLE IF NOT EXISTS instances (
  id bigserial NOT NULL PRIMARY KEY,
  instance_id varchar(128) NOT NULL,
  execution_id varchar(128) NOT NULL,
  parent_instance_id varchar(128) NULL,
  parent_execution_id varchar(128) NULL,
  parent_schedule_event_id numeric NULL,
  metadata bytea NULL,
  state int NOT NULL,
  queue varchar(128) DEFAULT '' NOT NULL,
  created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,
  completed_at timestamptz NULL,
  locked_until timestamptz NULL,
  sticky_until timestamptz NULL,
  worker varchar(64) NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_instances_instance_id_execution_id ON instances (instance_id, execution_id);
CREATE INDEX IF NOT EXISTS idx_instances_locked_until_completed_at ON instances (completed_at, locked_until, sticky_until, worker, queue);
CREATE INDEX IF NOT EXISTS idx_instances_parent_instance_id_parent_execution_id ON instances (parent_instance_id, parent_execution_id);

CREATE TABLE IF NOT EXISTS pending_events (
  id bigserial NOT NULL PRIMARY KEY,
  event_id varchar(128) NOT NULL,
  sequence_id bigserial NOT NULL,
  instance_id varchar(128) NOT NULL,
  execution_id varchar(128) NOT NULL,
  event_type int NOT NULL,
  timestamp timestamptz NOT NULL,
  schedule_event_id bigserial NOT NULL,
  visible_at timestamptz NULL
);

CREATE INDEX IF NOT EXISTS idx_pending_events_inid_exid ON pending_events (instance_id, execution_id);
CREATE INDEX IF NOT EXISTS idx_pending_events_inid_exid_visible_at_schedule_event_id ON pending_events (instance_id, execution_id, visible_at, schedule_event_id);

CREATE TABLE IF NOT EXISTS history (
  id bigserial NOT NULL PRIMARY KEY,
  event_id varchar(128) NOT NULL,
  sequence_id bigserial NOT NULL,
  instance_id varchar(128) NOT NULL,
  execution_id varchar(128) NOT NULL,
  event_type int NOT NULL,
  timestamp timestamptz NOT NULL,
  schedule_event_id bigserial NOT NULL,
  visible_at timestamptz NULL
);

CREATE INDEX IF NOT EXISTS idx_history_instance_id_execution_id ON history (instance_id, execution_id);
CREATE INDEX IF NOT EXISTS idx_history_instance_id_execution_id_sequence_id ON history (instance_id, execution_id, sequence_id);

CREATE TABLE IF NOT EXISTS activities (
  id bigserial NOT NULL PRIMARY KEY,
  activity_id varchar(128) NOT NULL,
  instance_id varchar(128) NOT NULL,
  execution_id varchar(128) NOT NULL,
  event_type int NOT NULL,
  queue varchar(128) DEFAULT '' NOT NULL,
  timestamp timestamptz NOT NULL,
  schedule_event_id bigserial NOT NULL,
  visible_at timestamptz NULL,
  locked_until timestamptz NULL,
  worker varchar(64) NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_activities_instance_id_execution_id_activity_id_worker ON activities (instance_id, execution_id, activity_id, worker);
CREATE INDEX IF NOT EXISTS idx_activities_locked_until ON activities (locked_until, queue);

CREATE TABLE IF NOT EXISTS attributes (
  id bigserial NOT NULL PRIMARY KEY,
  event_id varchar(128) NOT NULL,
  instance_id varchar(128) NOT NULL,
  execution_id varchar(128) NOT NULL,
  data bytea NOT NULL
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_attributes_instance_id_execution_id_event_id ON attributes (instance_id, execution_id, event_id);
CREATE INDEX IF NOT EXISTS idx_attributes_event_id ON attributes (event_id);
