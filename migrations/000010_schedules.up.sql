-- Schedules: workflows started on a cron expression or a fixed interval by
-- the elected maintainer (src/schedule). One row per schedule; a firing
-- locks its row (FOR UPDATE SKIP LOCKED), starts the instance and moves
-- next_fire_at in one transaction, so each fire time is consumed once.
CREATE TABLE schedules (
  name varchar(98) NOT NULL PRIMARY KEY,
  -- Exactly one of the two: a cron expression (evaluated in time_zone) or
  -- a fixed interval in whole seconds (fires on multiples since the epoch).
  cron text,
  interval_seconds bigint CHECK (interval_seconds > 0),
  time_zone text NOT NULL DEFAULT 'UTC',
  workflow text NOT NULL,
  input jsonb NOT NULL DEFAULT 'null',
  queue varchar(128) NOT NULL DEFAULT 'default',
  overlap text NOT NULL DEFAULT 'skip' CHECK (overlap IN ('skip', 'allow', 'cancel')),
  catch_up text NOT NULL DEFAULT 'last' CHECK (catch_up IN ('skip', 'last')),
  paused boolean NOT NULL DEFAULT false,
  next_fire_at timestamptz NOT NULL,
  last_fire_at timestamptz,
  last_instance_id varchar(128),
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CHECK ((cron IS NULL) <> (interval_seconds IS NULL))
);

-- The maintainer's question every tick: which unpaused schedules are due.
CREATE INDEX schedules_due_idx ON schedules (next_fire_at) WHERE NOT paused;
