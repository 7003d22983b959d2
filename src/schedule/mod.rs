//! Schedules: workflows started on a cron expression or a fixed interval,
//! by the database's elected maintainer.
//!
//! A schedule is a row of the `schedules` table (migration 10): a name, a
//! [`ScheduleSpec`] (cron in a time zone, or an interval), the workflow to
//! start with its input and queue, an [`OverlapPolicy`] and a
//! [`CatchUpPolicy`]. [`Schedules`] adds, lists, pauses, resumes and
//! removes them; `pgwake schedule ...` is the same from the command line.
//!
//! # Who fires them
//! The maintainer (see [`MaintainerConfig`](crate::runtime::MaintainerConfig)):
//! a runtime built with [`RuntimeBuilder::schedules`](crate::runtime::RuntimeBuilder::schedules)
//! takes part in the election and, while it leads, looks for due schedules
//! every [`ScheduleFiring::tick`] (default 1 s). A fire time therefore
//! starts its instance within one tick of coming due while a maintainer
//! runs; after the maintainer is lost, within the takeover bound plus one
//! tick, and the [`CatchUpPolicy`] says what happens to the fire times
//! that passed meanwhile.
//!
//! # Exactly once
//! Each firing is one transaction: it locks the schedule's row
//! (`FOR UPDATE SKIP LOCKED`), starts the instance through the workflow
//! layer's start path ([`Client::start_in`](crate::workflow::Client::start_in)),
//! and moves the row's next fire time past the fire time it handled. Both
//! commit together or not at all, so a fire time is consumed exactly once
//! whoever fires it, even two processes at once during a leadership change
//! (the second skips the locked row, then finds it no longer due). The
//! instance id is derived from the schedule and the fire time,
//! `schedule:<name>:<RFC 3339 UTC fire time>`, and a firing that finds an
//! instance of that id already (a schedule removed and added again within
//! the same fire time) starts nothing.
//!
//! ```no_run
//! use pgwake::schedule::{OverlapPolicy, Schedule, ScheduleSpec, Schedules};
//! # async fn example(store: pgwake::Store) -> Result<(), pgwake::schedule::ScheduleError> {
//! let schedules = Schedules::new(store);
//! let nightly = Schedule::new("nightly-report", ScheduleSpec::cron("0 3 * * *", "Europe/Paris")?, "report")?
//!     .input(serde_json::json!({ "kind": "daily" }))
//!     .overlap(OverlapPolicy::Skip);
//! schedules.upsert(&nightly).await?;
//! schedules.pause("nightly-report").await?;
//! for schedule in schedules.list().await? {
//!     println!("{} {} paused={}", schedule.name, schedule.spec, schedule.paused);
//! }
//! # Ok(()) }
//! ```

mod spec;
pub(crate) mod store;

use std::time::{Duration, SystemTime};

use serde_json::Value;

pub use spec::{CatchUpPolicy, OverlapPolicy, ScheduleSpec};
pub use store::Schedules;

use crate::error::StoreError;
use crate::store::names::check_id;
use crate::store::Queue;

/// The longest schedule name: what leaves room in the 128-byte instance id
/// for `schedule:`, `:` and the 20-byte fire time.
pub const MAX_NAME_BYTES: usize = 98;

/// The longest workflow name a schedule accepts.
const MAX_WORKFLOW_BYTES: usize = 256;

/// Why a schedule was refused, or could not be changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse, or never fires.
    #[error(
        "invalid cron expression {expression:?}: {reason}; write 5 fields (minute hour \
         day-of-month month day-of-week) or 6 (seconds first), e.g. \"0 3 * * *\""
    )]
    InvalidCron {
        /// The expression.
        expression: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not in the IANA database.
    #[error(
        "unknown time zone {name:?}: give an IANA zone name such as \"UTC\", \
         \"Europe/Paris\" or \"America/New_York\""
    )]
    UnknownTimeZone {
        /// The name given (shortened if long).
        name: String,
    },
    /// The interval is not a whole number of seconds in range.
    #[error("invalid interval {interval:?}: {reason}")]
    InvalidInterval {
        /// The interval given.
        interval: Duration,
        /// The rule it breaks.
        reason: String,
    },
    /// An overlap or catch-up policy name that is not one.
    #[error("invalid {what} policy {value:?}: expected {expected}")]
    InvalidPolicy {
        /// `overlap` or `catch-up`.
        what: &'static str,
        /// The name given.
        value: String,
        /// The names accepted.
        expected: &'static str,
    },
    /// No schedule has this name.
    #[error("no schedule named {name:?}: `pgwake schedule list` shows those that exist")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A name (schedule, workflow, queue) broke its rule, or the database
    /// failed; see [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A schedule to add or replace with [`Schedules::upsert`].
///
/// ```
/// use pgwake::schedule::{CatchUpPolicy, OverlapPolicy, Schedule, ScheduleSpec};
/// let every_minute = ScheduleSpec::every(std::time::Duration::from_secs(60))?;
/// let schedule = Schedule::new("sync", every_minute, "sync-accounts")?
///     .queue(pgwake::Queue::new("sync")?)
///     .overlap(OverlapPolicy::Cancel)
///     .catch_up(CatchUpPolicy::SkipMissed);
/// assert_eq!(schedule.name(), "sync");
/// assert!(Schedule::new("a\nb", ScheduleSpec::every(std::time::Duration::from_secs(1))?, "w").is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub(crate) name: String,
    pub(crate) spec: ScheduleSpec,
    pub(crate) workflow: String,
    pub(crate) input: Value,
    pub(crate) queue: Queue,
    pub(crate) overlap: OverlapPolicy,
    pub(crate) catch_up: CatchUpPolicy,
}

impl Schedule {
    /// Starts `workflow` on `spec`, with a `null` input on the `default`
    /// queue, [`OverlapPolicy::Skip`] and [`CatchUpPolicy::RunLastMissed`].
    ///
    /// # Errors
    /// [`ScheduleError::Store`] with [`StoreError::InvalidId`] for a name
    /// that is empty, longer than [`MAX_NAME_BYTES`] or holds control
    /// characters, or such a workflow name.
    pub fn new(
        name: impl Into<String>,
        spec: ScheduleSpec,
        workflow: impl Into<String>,
    ) -> Result<Self, ScheduleError> {
        let (name, workflow) = (name.into(), workflow.into());
        check_id("schedule name", &name, MAX_NAME_BYTES)?;
        check_id("workflow name", &workflow, MAX_WORKFLOW_BYTES)?;
        Ok(Self {
            name,
            spec,
            workflow,
            input: Value::Null,
            queue: Queue::default(),
            overlap: OverlapPolicy::default(),
            catch_up: CatchUpPolicy::default(),
        })
    }

    /// The input each started instance gets.
    pub fn input(mut self, input: Value) -> Self {
        self.input = input;
        self
    }

    /// The queue of the started instances' workflow tasks.
    pub fn queue(mut self, queue: Queue) -> Self {
        self.queue = queue;
        self
    }

    /// What a firing does while the previous firing's instance runs.
    pub fn overlap(mut self, overlap: OverlapPolicy) -> Self {
        self.overlap = overlap;
        self
    }

    /// What happens to fire times missed while no maintainer ran.
    pub fn catch_up(mut self, catch_up: CatchUpPolicy) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A schedule as stored, from [`Schedules::list`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// When it fires.
    pub spec: ScheduleSpec,
    /// The workflow it starts.
    pub workflow: String,
    /// The input of each instance.
    pub input: Value,
    /// The queue of each instance.
    pub queue: String,
    /// Its overlap policy.
    pub overlap: OverlapPolicy,
    /// Its catch-up policy.
    pub catch_up: CatchUpPolicy,
    /// Paused schedules do not fire.
    pub paused: bool,
    /// Its next fire time (database clock).
    pub next_fire_at: SystemTime,
    /// The last fire time handled (an instance started, or skipped by the
    /// overlap policy).
    pub last_fire_at: Option<SystemTime>,
    /// The instance id of the last instance it started.
    pub last_instance_id: Option<String>,
    /// When it was added.
    pub created_at: SystemTime,
    /// When it was last changed (by a user or a firing).
    pub updated_at: SystemTime,
}

/// How the maintainer fires schedules: given to
/// [`RuntimeBuilder::schedules`](crate::runtime::RuntimeBuilder::schedules).
///
/// Non-exhaustive: start from [`ScheduleFiring::default`] and assign the
/// fields to change.
///
/// ```
/// let mut firing = pgwake::schedule::ScheduleFiring::default();
/// firing.tick = std::time::Duration::from_millis(500);
/// assert!(firing.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ScheduleFiring {
    /// How often the maintainer looks for due schedules: a fire time starts
    /// its instance at most this late (plus the firing's own time) while a
    /// maintainer runs. Default 1 s.
    pub tick: Duration,
    /// How late a fire time may be and still count as on time for
    /// [`CatchUpPolicy::SkipMissed`]. Default 5 s.
    pub grace: Duration,
}

impl Default for ScheduleFiring {
    /// A tick of 1 s, a grace of 5 s.
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            grace: Duration::from_secs(5),
        }
    }
}

impl ScheduleFiring {
    /// Checks the tick.
    ///
    /// # Errors
    /// [`BuildError::Setting`](crate::BuildError::Setting) for a zero tick.
    pub fn validate(&self) -> Result<(), crate::BuildError> {
        if self.tick.is_zero() {
            return Err(crate::BuildError::Setting {
                name: "schedules.tick",
                reason: "must be longer than zero".into(),
            });
        }
        Ok(())
    }
}
