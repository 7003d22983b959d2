//! The `schedules` table's statements: the user's changes ([`Schedules`])
//! and the maintainer's firing ([`fire_due_schedules`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio_postgres::Row;

use super::spec::{decide_overlap, instance_id, plan_firing, OverlapDecision, ScheduleSpec};
use super::{Schedule, ScheduleError, ScheduleInfo};
use crate::error::StoreError;
use crate::store::{db, Queue, Store};
use crate::workflow::{Client, StartOptions};

/// The columns every reader of a schedule row selects, in this order.
const COLUMNS: &str = "name, cron, interval_seconds, time_zone, workflow, input::text, queue,
     overlap, catch_up, paused, next_fire_at, last_fire_at, last_instance_id, created_at, updated_at";

/// Adds a schedule or replaces the one of that name (keeping whether it is
/// paused and what it last fired). Locks the one row, and only it.
const UPSERT: &str = "INSERT INTO schedules
       (name, cron, interval_seconds, time_zone, workflow, input, queue, overlap, catch_up, next_fire_at)
     VALUES ($1, $2, $3, $4, $5, $6::text::jsonb, $7, $8, $9, $10)
     ON CONFLICT (name) DO UPDATE SET
       cron = EXCLUDED.cron, interval_seconds = EXCLUDED.interval_seconds,
       time_zone = EXCLUDED.time_zone, workflow = EXCLUDED.workflow, input = EXCLUDED.input,
       queue = EXCLUDED.queue, overlap = EXCLUDED.overlap, catch_up = EXCLUDED.catch_up,
       next_fire_at = EXCLUDED.next_fire_at, updated_at = now()
     RETURNING (xmax = 0)";

/// The most schedules one tick fires: a backlog of more waits a tick
/// rather than holding the maintainer in one long run.
const MAX_FIRINGS_PER_TICK: usize = 1000;

/// Adds, lists, pauses, resumes and removes schedules (the maintainer
/// fires them; see the [module](super) documentation). Each call is one
/// short statement or transaction under the store's deadline
/// ([`StoreOptions::operation_timeout`](crate::StoreOptions::operation_timeout)).
#[derive(Debug, Clone)]
pub struct Schedules {
    store: Store,
}

impl Schedules {
    /// Schedules of `store`'s database (migrated to version 10 or later).
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// Adds `schedule`, or replaces the one of its name; returns `true`
    /// when it was added. Its next fire time is the first after now
    /// (database clock); a replaced schedule stays paused if it was.
    ///
    /// # Errors
    /// A database failure or timeout ([`ScheduleError::Store`]), a payload
    /// larger than the store accepts.
    pub async fn upsert(&self, schedule: &Schedule) -> Result<bool, ScheduleError> {
        let input = self.store.encode(&schedule.input)?;
        let input = String::from_utf8(input).unwrap_or_else(|_| "null".into());
        // The first fire time is computed on the database clock, as the
        // firings compare fire times with it.
        let now: SystemTime = self
            .store
            .bounded("reading the database clock", async {
                let client = self.store.client().await?;
                let row = client
                    .query_one("SELECT now()", &[])
                    .await
                    .map_err(db("reading the database clock"))?;
                Ok(row.get(0))
            })
            .await?;
        let next = first_fire_after(&schedule.spec, now)?;
        let added = self
            .store
            .bounded("adding a schedule", async {
                let client = self.store.client().await?;
                let interval = schedule
                    .spec
                    .interval()
                    .map(|i| i64::try_from(i.as_secs()).unwrap_or(i64::MAX));
                let row = client
                    .query_one(
                        UPSERT,
                        &[
                            &schedule.name,
                            &schedule.spec.cron_expression(),
                            &interval,
                            &schedule.spec.time_zone(),
                            &schedule.workflow,
                            &input,
                            &schedule.queue.as_str(),
                            &schedule.overlap.as_str(),
                            &schedule.catch_up.as_str(),
                            &SystemTime::from(next),
                        ],
                    )
                    .await
                    .map_err(db("adding a schedule"))?;
                Ok(row.get::<_, bool>(0))
            })
            .await?;
        tracing::info!(schedule = %schedule.name, spec = %schedule.spec, added, "schedule saved");
        Ok(added)
    }

    /// Every schedule, by name.
    ///
    /// # Errors
    /// A database failure or timeout, or a row this version cannot read.
    pub async fn list(&self) -> Result<Vec<ScheduleInfo>, ScheduleError> {
        let rows = self
            .store
            .bounded("listing schedules", async {
                let client = self.store.client().await?;
                client
                    .query(
                        &format!("SELECT {COLUMNS} FROM schedules ORDER BY name"),
                        &[],
                    )
                    .await
                    .map_err(db("listing schedules"))
            })
            .await?;
        rows.iter().map(info_from_row).collect()
    }

    /// Stops `name` from firing until [`resume`](Self::resume)d; pausing a
    /// paused schedule changes nothing.
    ///
    /// # Errors
    /// [`ScheduleError::NotFound`], a database failure or timeout.
    pub async fn pause(&self, name: &str) -> Result<(), ScheduleError> {
        let changed = self
            .store
            .bounded("pausing a schedule", async {
                let client = self.store.client().await?;
                client
                    .execute(
                        "UPDATE schedules SET paused = true, updated_at = now() WHERE name = $1",
                        &[&name],
                    )
                    .await
                    .map_err(db("pausing a schedule"))
            })
            .await?;
        found(changed, name)
    }

    /// Lets a paused `name` fire again, from its first fire time after now:
    /// the fire times that passed while it was paused are not caught up.
    /// Resuming a running schedule changes nothing.
    ///
    /// # Errors
    /// [`ScheduleError::NotFound`], a database failure or timeout.
    pub async fn resume(&self, name: &str) -> Result<(), ScheduleError> {
        self.store
            .bounded("resuming a schedule", async {
                let mut client = self.store.client().await?;
                let tx = client
                    .transaction()
                    .await
                    .map_err(db("starting a transaction"))?;
                // Locks the schedule's row only, so that a concurrent
                // firing (which skips locked rows) cannot interleave.
                let row = tx
                    .query_opt(
                        &format!(
                            "SELECT {COLUMNS}, now() FROM schedules WHERE name = $1 FOR UPDATE"
                        ),
                        &[&name],
                    )
                    .await
                    .map_err(db("reading a schedule"))?;
                let Some(row) = row else {
                    return Ok(Err(ScheduleError::NotFound { name: name.into() }));
                };
                let info = match info_from_row(&row) {
                    Ok(info) => info,
                    Err(err) => return Ok(Err(err)),
                };
                if info.paused {
                    let now: SystemTime = row.get(15);
                    let next = match first_fire_after(&info.spec, now) {
                        Ok(next) => next,
                        Err(err) => return Ok(Err(err)),
                    };
                    tx.execute(
                        "UPDATE schedules SET paused = false, next_fire_at = $2, updated_at = now()
                          WHERE name = $1",
                        &[&name, &SystemTime::from(next)],
                    )
                    .await
                    .map_err(db("resuming a schedule"))?;
                }
                tx.commit().await.map_err(db("committing the resume"))?;
                Ok(Ok(()))
            })
            .await?
    }

    /// Removes `name`; the instances it started are left as they are.
    ///
    /// # Errors
    /// [`ScheduleError::NotFound`], a database failure or timeout.
    pub async fn remove(&self, name: &str) -> Result<(), ScheduleError> {
        let removed = self
            .store
            .bounded("removing a schedule", async {
                let client = self.store.client().await?;
                client
                    .execute("DELETE FROM schedules WHERE name = $1", &[&name])
                    .await
                    .map_err(db("removing a schedule"))
            })
            .await?;
        found(removed, name)
    }
}

fn found(rows: u64, name: &str) -> Result<(), ScheduleError> {
    if rows == 0 {
        Err(ScheduleError::NotFound { name: name.into() })
    } else {
        Ok(())
    }
}

/// The spec's first fire time after `now`. A spec without one is refused
/// when it is parsed; here that means a database clock past the year 5000.
fn first_fire_after(spec: &ScheduleSpec, now: SystemTime) -> Result<DateTime<Utc>, ScheduleError> {
    spec.next_after_utc(DateTime::<Utc>::from(now))
        .ok_or_else(|| ScheduleError::InvalidCron {
            expression: spec.to_string(),
            reason: "it has no fire time after the database's clock".into(),
        })
}

/// A row of [`COLUMNS`], read back into its types.
fn info_from_row(row: &Row) -> Result<ScheduleInfo, ScheduleError> {
    let cron: Option<String> = row.get(1);
    let interval: Option<i64> = row.get(2);
    let time_zone: String = row.get(3);
    let spec = match (cron, interval) {
        (Some(cron), _) => ScheduleSpec::cron(&cron, &time_zone)?,
        (None, Some(secs)) => ScheduleSpec::every(Duration::from_secs(secs.max(0) as u64))?
            .in_time_zone(&time_zone)?,
        (None, None) => {
            return Err(ScheduleError::InvalidCron {
                expression: String::new(),
                reason: "the row has neither a cron expression nor an interval".into(),
            })
        }
    };
    let input: String = row.get(5);
    Ok(ScheduleInfo {
        name: row.get(0),
        spec,
        workflow: row.get(4),
        input: serde_json::from_str(&input).unwrap_or(Value::Null),
        queue: row.get(6),
        overlap: row.get::<_, String>(7).parse()?,
        catch_up: row.get::<_, String>(8).parse()?,
        paused: row.get(9),
        next_fire_at: row.get(10),
        last_fire_at: row.get(11),
        last_instance_id: row.get(12),
        created_at: row.get(13),
        updated_at: row.get(14),
    })
}

/// What one firing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Fired {
    /// Started this instance.
    Started(String),
    /// The previous instance still runs and the overlap policy is skip.
    OverlapSkipped,
    /// The fire time was missed (catch-up skip): nothing started.
    Missed,
    /// An instance of the derived id exists already: nothing started.
    AlreadyStarted(String),
    /// The row could not be read (or has no fire time left): paused.
    Paused(String),
}

/// Fires every due schedule, one transaction each, while `leading` holds;
/// returns how many firings ran and the error that ended the run early.
///
/// A schedule whose firing fails (a database error, a timeout) is left out
/// of the rest of this run, logged, and retried at the next tick, so that
/// one failing schedule, always the most overdue, cannot hold up the
/// others.
pub(crate) async fn fire_due_schedules(
    store: &Store,
    grace: Duration,
    leading: &AtomicBool,
) -> (usize, Option<StoreError>) {
    let mut fired = 0;
    let mut failed: Vec<String> = Vec::new();
    while fired + failed.len() < MAX_FIRINGS_PER_TICK && leading.load(Ordering::Relaxed) {
        let mut picked = None;
        let result = store
            .bounded(
                "firing a schedule",
                fire_one(store, grace, &failed, &mut picked),
            )
            .await;
        match result {
            Ok(Some((name, outcome))) => {
                fired += 1;
                match &outcome {
                    Fired::Started(id) => {
                        tracing::debug!(schedule = %name, instance_id = %id, "schedule fired")
                    }
                    Fired::Paused(reason) => {
                        tracing::error!(schedule = %name, reason, "schedule paused: it cannot fire")
                    }
                    other => {
                        tracing::debug!(schedule = %name, outcome = ?other, "schedule fire time passed")
                    }
                }
            }
            Ok(None) => break,
            Err(err) => match picked {
                Some(name) => {
                    tracing::warn!(schedule = %name, error = %crate::error::ErrorChain(&err),
                        "firing a schedule failed; the next tick retries it");
                    failed.push(name);
                }
                None => return (fired, Some(err)),
            },
        }
    }
    (fired, None)
}

/// Picks one due schedule, if any, and fires it, in one transaction.
///
/// Locks: the schedule's row (`FOR UPDATE SKIP LOCKED`: a row another
/// firing, or a user's resume, holds is left for the next tick), then
/// whatever starting (and, for the cancel policy, canceling) an instance
/// locks: a share lock on the previous instance's row, the advisory lock
/// of the new instance id. No other transaction locks a schedule row
/// after an instance row or an instance id, so no cycle can form.
///
/// `excluded`: schedules whose firing failed earlier in this run;
/// `picked` is set to the schedule's name as soon as one is locked.
async fn fire_one(
    store: &Store,
    grace: Duration,
    excluded: &[String],
    picked: &mut Option<String>,
) -> Result<Option<(String, Fired)>, StoreError> {
    let mut client = store.client().await?;
    let tx = store.begin_write(&mut client).await?;
    let row = tx
        .query_opt(
            &format!(
                "SELECT {COLUMNS}, now() FROM schedules
                  WHERE NOT paused AND next_fire_at <= now() AND name <> ALL($1::varchar[])
                  ORDER BY next_fire_at LIMIT 1 FOR UPDATE SKIP LOCKED"
            ),
            &[&excluded],
        )
        .await
        .map_err(db("finding a due schedule"))?;
    let Some(row) = row else {
        return Ok(None);
    };
    let name: String = row.get(0);
    *picked = Some(name.clone());
    let now = DateTime::<Utc>::from(row.get::<_, SystemTime>(15));
    // A row that no firing can ever start (written by hand, or refused by
    // a later version) is paused rather than retried every tick.
    let readable = info_from_row(&row).and_then(|info| {
        let queue = Queue::new(info.queue.as_str())?;
        Ok((info, queue))
    });
    let (info, queue) = match readable {
        Ok(readable) => readable,
        Err(err) => {
            pause_in(&tx, &name).await?;
            tx.commit().await.map_err(db("committing a firing"))?;
            return Ok(Some((name, Fired::Paused(err.to_string()))));
        }
    };
    let due = DateTime::<Utc>::from(info.next_fire_at);
    let Some(plan) = plan_firing(&info.spec, info.catch_up, due, now, grace) else {
        pause_in(&tx, &name).await?;
        tx.commit().await.map_err(db("committing a firing"))?;
        return Ok(Some((name, Fired::Paused("no fire time is left".into()))));
    };
    let mut tokens = Vec::new();
    let mut started = None;
    let outcome = match plan.fire_at {
        None => Fired::Missed,
        Some(fire_at) => {
            let id = instance_id(&name, fire_at);
            let exists: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM instances WHERE instance_id = $1)",
                    &[&id],
                )
                .await
                .map_err(db("looking for the firing's instance"))?
                .get(0);
            let previous_active = match &info.last_instance_id {
                Some(previous) => tx
                    .query_one(
                        "SELECT EXISTS (SELECT 1 FROM instances WHERE instance_id = $1 AND state = 0)",
                        &[previous],
                    )
                    .await
                    .map_err(db("looking for the previous firing's instance"))?
                    .get::<_, bool>(0),
                None => false,
            };
            match decide_overlap(info.overlap, exists, previous_active) {
                OverlapDecision::AlreadyStarted => Fired::AlreadyStarted(id),
                OverlapDecision::SkipOverlapping => Fired::OverlapSkipped,
                decision => {
                    if let (OverlapDecision::CancelPreviousThenStart, Some(previous)) =
                        (decision, &info.last_instance_id)
                    {
                        let (_, token) = store.cancel_instance_in(&tx, previous).await?;
                        tokens.push(token);
                    }
                    let (_, token) = Client::new(store.clone())
                        .start_in(
                            &tx,
                            &info.workflow,
                            &id,
                            &info.input,
                            StartOptions::default().queue(queue),
                        )
                        .await
                        // A JSON value always serializes: only the store
                        // can fail here.
                        .map_err(|err| match err {
                            crate::workflow::ClientError::Store(err) => err,
                            other => StoreError::Pool(other.to_string()),
                        })?;
                    tokens.push(token);
                    started = Some(id.clone());
                    Fired::Started(id)
                }
            }
        }
    };
    tx.execute(
        "UPDATE schedules SET next_fire_at = $2,
                last_fire_at = COALESCE($3, last_fire_at),
                last_instance_id = COALESCE($4, last_instance_id),
                updated_at = now()
          WHERE name = $1",
        &[
            &name,
            &SystemTime::from(plan.next_fire_at),
            &plan.fire_at.map(SystemTime::from),
            &started,
        ],
    )
    .await
    .map_err(db("moving the schedule's next fire time"))?;
    tx.commit().await.map_err(db("committing a firing"))?;
    for token in tokens {
        store.wake(token);
    }
    if plan.skipped > 0 {
        tracing::info!(schedule = %name, skipped = plan.skipped, catch_up = info.catch_up.as_str(), "missed fire times skipped");
    }
    Ok(Some((name, outcome)))
}

async fn pause_in(tx: &deadpool_postgres::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE schedules SET paused = true, updated_at = now() WHERE name = $1",
        &[&name],
    )
    .await
    .map_err(db("pausing a schedule that cannot fire"))?;
    Ok(())
}
