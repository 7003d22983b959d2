//! When a schedule fires: the pure computation of fire times (cron in a
//! time zone, or a fixed interval) and of what one firing does after
//! downtime (the catch-up policy). No database, no clock: every function
//! takes the time it reasons about, so the tests cover DST changes and
//! long outages exactly.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::ScheduleError;

/// The longest interval accepted: 366 days (a yearly schedule is a cron
/// expression's job).
const MAX_INTERVAL_SECS: u64 = 366 * 86_400;

/// How far past a DST fold the next cron occurrence is searched, second by
/// second (see [`ScheduleSpec::next_after`]): longer than any fold.
const FOLD_SEARCH_SECS: i64 = 3 * 3600;

/// How many missed fire times a catch-up walks at most before it jumps to
/// the present (a cron schedule every second down for a year).
const MAX_CATCH_UP_STEPS: u32 = 10_000;

/// When a schedule fires: a cron expression read in a time zone, or a
/// fixed interval.
///
/// Cron expressions have 5 fields (minute hour day-of-month month
/// day-of-week) or 6 (seconds first), with `*`, lists, ranges, steps, names
/// (`MON`, `JAN`), `L`, `W` and `#`, as the `croner` crate reads them. They
/// are evaluated in the schedule's IANA time zone (default `UTC`): `0 9 * *
/// *` in `Europe/Paris` fires at 09:00 Paris time all year. Across a DST
/// change a local time that does not exist (the spring gap) fires at the
/// first instant after the gap, and a local time that happens twice (the
/// autumn fold) fires once, at its first occurrence.
///
/// A fixed interval of `n` seconds fires at every multiple of `n` seconds
/// since the Unix epoch (UTC): `every 1h` fires on the hour, whoever
/// computes it and whenever the schedule was added. Its time zone is kept
/// but plays no part.
///
/// ```
/// use std::time::Duration;
/// use pgwake::schedule::ScheduleSpec;
/// let nightly = ScheduleSpec::cron("0 3 * * *", "Europe/Paris")?;
/// let often = ScheduleSpec::every(Duration::from_secs(30))?;
/// assert_eq!(nightly.to_string(), "cron 0 3 * * * in Europe/Paris");
/// assert_eq!(often.to_string(), "every 30s");
/// assert!(ScheduleSpec::cron("0 3 * *", "UTC").is_err());
/// assert!(ScheduleSpec::cron("0 3 * * *", "Mars/Olympus").is_err());
/// # Ok::<(), pgwake::schedule::ScheduleError>(())
/// ```
#[derive(Debug, Clone)]
pub struct ScheduleSpec {
    kind: SpecKind,
    time_zone: Tz,
}

#[derive(Debug, Clone)]
enum SpecKind {
    Cron {
        expression: String,
        // Boxed: a parsed pattern is ~250 bytes, an interval 8.
        parsed: Box<croner::Cron>,
    },
    Every {
        secs: u64,
    },
}

impl PartialEq for ScheduleSpec {
    fn eq(&self, other: &Self) -> bool {
        self.time_zone == other.time_zone
            && match (&self.kind, &other.kind) {
                (SpecKind::Cron { expression: a, .. }, SpecKind::Cron { expression: b, .. }) => {
                    a == b
                }
                (SpecKind::Every { secs: a }, SpecKind::Every { secs: b }) => a == b,
                _ => false,
            }
    }
}

impl Eq for ScheduleSpec {}

impl ScheduleSpec {
    /// A cron expression evaluated in the IANA time zone `time_zone` (e.g.
    /// `"UTC"`, `"America/New_York"`).
    ///
    /// # Errors
    /// [`ScheduleError::InvalidCron`] for an expression `croner` refuses
    /// or one that never fires (`0 0 30 2 *`: February 30th);
    /// [`ScheduleError::UnknownTimeZone`] for a zone not in the IANA
    /// database.
    pub fn cron(expression: &str, time_zone: &str) -> Result<Self, ScheduleError> {
        let time_zone = parse_time_zone(time_zone)?;
        let expression = expression.trim().to_string();
        let parsed = croner::Cron::new(&expression)
            .with_seconds_optional()
            .parse()
            .map_err(|err| ScheduleError::InvalidCron {
                expression: expression.clone(),
                reason: err.to_string(),
            })?;
        let spec = Self {
            kind: SpecKind::Cron {
                expression,
                parsed: Box::new(parsed),
            },
            time_zone,
        };
        // Refused now rather than at its first firing: a pattern that
        // parses may still never match a date.
        if let Err(reason) = spec.try_next_after(Utc.timestamp_opt(0, 0).unwrap()) {
            let SpecKind::Cron { expression, .. } = spec.kind else {
                unreachable!("built as cron above")
            };
            return Err(ScheduleError::InvalidCron { expression, reason });
        }
        Ok(spec)
    }

    /// A fixed interval: a whole number of seconds, from 1 s to 366 days.
    ///
    /// # Errors
    /// [`ScheduleError::InvalidInterval`] otherwise.
    pub fn every(interval: Duration) -> Result<Self, ScheduleError> {
        let secs = interval.as_secs();
        if interval.subsec_nanos() != 0 || secs == 0 || secs > MAX_INTERVAL_SECS {
            return Err(ScheduleError::InvalidInterval {
                interval,
                reason: format!(
                    "it must be a whole number of seconds from 1 to {MAX_INTERVAL_SECS} (366 days)"
                ),
            });
        }
        Ok(Self {
            kind: SpecKind::Every { secs },
            time_zone: Tz::UTC,
        })
    }

    /// The same spec read in another time zone (for an interval, kept for
    /// display only).
    ///
    /// # Errors
    /// [`ScheduleError::UnknownTimeZone`].
    pub fn in_time_zone(mut self, time_zone: &str) -> Result<Self, ScheduleError> {
        self.time_zone = parse_time_zone(time_zone)?;
        Ok(self)
    }

    /// The cron expression, if this is one.
    pub fn cron_expression(&self) -> Option<&str> {
        match &self.kind {
            SpecKind::Cron { expression, .. } => Some(expression),
            SpecKind::Every { .. } => None,
        }
    }

    /// The fixed interval, if this is one.
    pub fn interval(&self) -> Option<Duration> {
        match self.kind {
            SpecKind::Every { secs } => Some(Duration::from_secs(secs)),
            SpecKind::Cron { .. } => None,
        }
    }

    /// The IANA name of the time zone.
    pub fn time_zone(&self) -> &'static str {
        self.time_zone.name()
    }

    /// The first fire time strictly after `after`, or `None` if there is
    /// none before the year 5000.
    ///
    /// ```
    /// use std::time::{Duration, UNIX_EPOCH};
    /// let spec = pgwake::schedule::ScheduleSpec::every(Duration::from_secs(60))?;
    /// let at = UNIX_EPOCH + Duration::from_secs(1_800_000_030);
    /// assert_eq!(spec.next_after(at), Some(UNIX_EPOCH + Duration::from_secs(1_800_000_060)));
    /// # Ok::<(), pgwake::schedule::ScheduleError>(())
    /// ```
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        self.next_after_utc(DateTime::<Utc>::from(after))
            .map(SystemTime::from)
    }

    /// [`next_after`](Self::next_after) on chrono's UTC times, which the
    /// crate uses inside (chrono stays out of the public API).
    pub(crate) fn next_after_utc(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.try_next_after(after).ok()
    }

    fn try_next_after(&self, after: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
        match &self.kind {
            SpecKind::Every { secs } => {
                let secs = *secs as i64;
                let next = after.timestamp().div_euclid(secs).saturating_add(1) * secs;
                Utc.timestamp_opt(next, 0)
                    .single()
                    .ok_or_else(|| "out of the representable range".to_string())
            }
            SpecKind::Cron { parsed, .. } => {
                let local = after.with_timezone(&self.time_zone);
                let mut from = local;
                // croner maps a local time of an autumn fold to its first
                // instant; searching from inside the fold's second pass can
                // then answer a time before `after`. Those times have
                // fired in the first pass: step past the fold.
                for _ in 0..FOLD_SEARCH_SECS {
                    let next = parsed
                        .find_next_occurrence(&from, false)
                        .map_err(|err| err.to_string())?;
                    if next > local {
                        return Ok(next.with_timezone(&Utc));
                    }
                    from += chrono::Duration::seconds(1);
                }
                Err("no occurrence found past a daylight-saving fold".into())
            }
        }
    }
}

impl fmt::Display for ScheduleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            SpecKind::Cron { expression, .. } => {
                write!(f, "cron {expression} in {}", self.time_zone.name())
            }
            SpecKind::Every { secs } => write!(f, "every {secs}s"),
        }
    }
}

fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    name.parse::<Tz>()
        .map_err(|_| ScheduleError::UnknownTimeZone {
            name: name.chars().take(64).collect(),
        })
}

/// What a schedule does about fire times that passed while no maintainer
/// ran (every `pgwake work` process down, or a takeover under way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum CatchUpPolicy {
    /// Fire times more than [`ScheduleFiring::grace`](super::ScheduleFiring::grace)
    /// late are skipped: only a fire time that is on time starts an
    /// instance.
    SkipMissed,
    /// After downtime, start one instance, for the latest missed fire time;
    /// the earlier missed ones are skipped. The default.
    #[default]
    RunLastMissed,
}

impl CatchUpPolicy {
    /// The name stored and shown: `skip` or `last`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SkipMissed => "skip",
            Self::RunLastMissed => "last",
        }
    }
}

impl FromStr for CatchUpPolicy {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, ScheduleError> {
        match text {
            "skip" | "skip-missed" => Ok(Self::SkipMissed),
            "last" | "run-last-missed" => Ok(Self::RunLastMissed),
            other => Err(ScheduleError::InvalidPolicy {
                what: "catch-up",
                value: other.chars().take(64).collect(),
                expected: "skip or last",
            }),
        }
    }
}

/// What a firing does when the instance of the schedule's previous firing
/// is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OverlapPolicy {
    /// Start nothing for this fire time (it counts as fired). The default.
    #[default]
    Skip,
    /// Start the new instance anyway: several may run at once.
    Allow,
    /// Ask the previous instance to cancel, then start the new one.
    Cancel,
}

impl OverlapPolicy {
    /// The name stored and shown: `skip`, `allow` or `cancel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Skip => "skip",
            Self::Allow => "allow",
            Self::Cancel => "cancel",
        }
    }
}

impl FromStr for OverlapPolicy {
    type Err = ScheduleError;

    fn from_str(text: &str) -> Result<Self, ScheduleError> {
        match text {
            "skip" => Ok(Self::Skip),
            "allow" => Ok(Self::Allow),
            "cancel" => Ok(Self::Cancel),
            other => Err(ScheduleError::InvalidPolicy {
                what: "overlap",
                value: other.chars().take(64).collect(),
                expected: "skip, allow or cancel",
            }),
        }
    }
}

/// What one firing of a due schedule does: the fire time it starts an
/// instance for (if any), how many due fire times it skips, and the
/// schedule's next fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FiringPlan {
    /// The fire time to start an instance for.
    pub(crate) fire_at: Option<DateTime<Utc>>,
    /// Due fire times passed over (at least; a catch-up longer than
    /// [`MAX_CATCH_UP_STEPS`] counts those it walked).
    pub(crate) skipped: u32,
    /// The first fire time after `now`.
    pub(crate) next_fire_at: DateTime<Utc>,
}

/// Plans the firing of a schedule whose next fire time `due` is at or
/// before `now` (both on the database clock).
///
/// The due fire times are `due` and every later one up to `now`; the
/// latest of them is the one that may start an instance:
/// * [`CatchUpPolicy::RunLastMissed`]\: always;
/// * [`CatchUpPolicy::SkipMissed`]\: only when it is at most `grace` late
///   (the maintainer passes its firing tick plus the store's deadline),
///   that is, when it was not missed.
///
/// `None` when the spec has no fire time after `now`.
pub(crate) fn plan_firing(
    spec: &ScheduleSpec,
    catch_up: CatchUpPolicy,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> Option<FiringPlan> {
    let mut latest = due;
    let mut skipped = 0u32;
    let mut next = spec.next_after_utc(latest)?;
    while next <= now {
        if skipped >= MAX_CATCH_UP_STEPS {
            // A very long outage: jump. The latest due time is the last
            // fire time before the first one after `now`, which an interval
            // computes directly; for cron the walk so far is a lower bound.
            let first_after = spec.next_after_utc(now)?;
            if let Some(interval) = spec.interval() {
                let previous = first_after - chrono::Duration::from_std(interval).ok()?;
                latest = previous.max(latest);
            }
            next = first_after;
            break;
        }
        latest = next;
        skipped += 1;
        next = spec.next_after_utc(latest)?;
    }
    let late = (now - latest).to_std().unwrap_or_default();
    let fire_at = match catch_up {
        CatchUpPolicy::RunLastMissed => Some(latest),
        CatchUpPolicy::SkipMissed if late <= grace => Some(latest),
        CatchUpPolicy::SkipMissed => {
            skipped += 1;
            None
        }
    };
    Some(FiringPlan {
        fire_at,
        skipped,
        next_fire_at: next,
    })
}

/// What a firing does about its fire time, once it knows whether the
/// derived instance id exists and whether the previous firing's instance
/// is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverlapDecision {
    /// Start the instance.
    Start,
    /// Request the previous instance's cancel, then start the instance.
    CancelPreviousThenStart,
    /// Start nothing: the previous instance runs and the policy is skip.
    SkipOverlapping,
    /// Start nothing: an instance of this fire time's id exists already
    /// (whatever the policy: that fire time has its instance).
    AlreadyStarted,
}

/// Decides a firing's fate; the fire time is consumed in every case.
pub(crate) fn decide_overlap(
    policy: OverlapPolicy,
    id_exists: bool,
    previous_active: bool,
) -> OverlapDecision {
    match (id_exists, previous_active, policy) {
        (true, _, _) => OverlapDecision::AlreadyStarted,
        (false, false, _) | (false, true, OverlapPolicy::Allow) => OverlapDecision::Start,
        (false, true, OverlapPolicy::Skip) => OverlapDecision::SkipOverlapping,
        (false, true, OverlapPolicy::Cancel) => OverlapDecision::CancelPreviousThenStart,
    }
}

/// The instance id of `schedule`'s firing at `fire_at`:
/// `schedule:<name>:<RFC 3339 UTC, whole seconds>`, e.g.
/// `schedule:nightly:2026-03-29T01:00:00Z`.
pub(crate) fn instance_id(schedule: &str, fire_at: DateTime<Utc>) -> String {
    format!(
        "schedule:{schedule}:{}",
        fire_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_daily_cron_keeps_its_local_hour_across_both_dst_changes() {
        let spec = ScheduleSpec::cron("0 9 * * *", "Europe/Paris").unwrap();
        // Winter: UTC+1; summer (from 2026-03-29): UTC+2; winter again
        // from 2026-10-25.
        assert_eq!(
            spec.next_after_utc(utc(2026, 3, 28, 12, 0, 0)),
            Some(utc(2026, 3, 29, 7, 0, 0))
        );
        assert_eq!(
            spec.next_after_utc(utc(2026, 3, 27, 12, 0, 0)),
            Some(utc(2026, 3, 28, 8, 0, 0))
        );
        assert_eq!(
            spec.next_after_utc(utc(2026, 10, 24, 12, 0, 0)),
            Some(utc(2026, 10, 25, 8, 0, 0))
        );
    }

    #[test]
    fn a_local_time_in_the_spring_gap_fires_just_after_it() {
        // 02:30 does not exist in Paris on 2026-03-29 (02:00 -> 03:00).
        let spec = ScheduleSpec::cron("30 2 * * *", "Europe/Paris").unwrap();
        let fire = spec.next_after_utc(utc(2026, 3, 28, 12, 0, 0)).unwrap();
        assert_eq!(fire, utc(2026, 3, 29, 1, 0, 0), "03:00 CEST");
        assert_eq!(
            spec.next_after_utc(fire),
            Some(utc(2026, 3, 30, 0, 30, 0)),
            "02:30 CEST the day after"
        );
    }

    #[test]
    fn a_local_time_in_the_autumn_fold_fires_once() {
        // 02:30 happens twice in Paris on 2026-10-25 (03:00 CEST -> 02:00 CET).
        let spec = ScheduleSpec::cron("30 2 * * *", "Europe/Paris").unwrap();
        let first = spec.next_after_utc(utc(2026, 10, 24, 12, 0, 0)).unwrap();
        assert_eq!(first, utc(2026, 10, 25, 0, 30, 0), "02:30 CEST");
        assert_eq!(
            spec.next_after_utc(first),
            Some(utc(2026, 10, 26, 1, 30, 0)),
            "not 02:30 CET the same night"
        );
        // From inside the fold's second pass, too.
        assert_eq!(
            spec.next_after_utc(utc(2026, 10, 25, 1, 45, 0)),
            Some(utc(2026, 10, 26, 1, 30, 0))
        );
    }

    #[test]
    fn an_hourly_cron_in_new_york_skips_no_hour_of_the_fall_back_night() {
        let spec = ScheduleSpec::cron("0 * * * *", "America/New_York").unwrap();
        let mut at = utc(2026, 11, 1, 4, 30, 0); // 00:30 EDT
        let mut fires = Vec::new();
        for _ in 0..4 {
            at = spec.next_after_utc(at).unwrap();
            fires.push(at);
        }
        // 01:00 EDT, then 01:00 EST is the same local time (fired once),
        // 02:00 EST, 03:00 EST.
        assert_eq!(
            fires,
            [
                utc(2026, 11, 1, 5, 0, 0),
                utc(2026, 11, 1, 7, 0, 0),
                utc(2026, 11, 1, 8, 0, 0),
                utc(2026, 11, 1, 9, 0, 0)
            ]
        );
    }

    #[test]
    fn six_field_crons_have_seconds() {
        let spec = ScheduleSpec::cron("*/15 * * * * *", "UTC").unwrap();
        assert_eq!(
            spec.next_after_utc(utc(2026, 1, 1, 0, 0, 14)),
            Some(utc(2026, 1, 1, 0, 0, 15))
        );
        assert_eq!(
            spec.next_after_utc(utc(2026, 1, 1, 0, 0, 15)),
            Some(utc(2026, 1, 1, 0, 0, 30))
        );
    }

    #[test]
    fn intervals_fire_on_multiples_of_their_length_since_the_epoch() {
        let spec = ScheduleSpec::every(secs(3600)).unwrap();
        assert_eq!(
            spec.next_after_utc(utc(2026, 5, 1, 10, 0, 0)),
            Some(utc(2026, 5, 1, 11, 0, 0))
        );
        assert_eq!(
            spec.next_after_utc(utc(2026, 5, 1, 10, 59, 59)),
            Some(utc(2026, 5, 1, 11, 0, 0))
        );
        let every_second = ScheduleSpec::every(secs(1)).unwrap();
        assert_eq!(
            every_second.next_after_utc(utc(2026, 5, 1, 10, 0, 0)),
            Some(utc(2026, 5, 1, 10, 0, 1))
        );
    }

    #[test]
    fn bad_specs_are_refused_with_what_is_wrong() {
        for bad in ["", "* * *", "61 * * * *", "0 0 30 2 *", "hello"] {
            assert!(
                matches!(
                    ScheduleSpec::cron(bad, "UTC"),
                    Err(ScheduleError::InvalidCron { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ScheduleSpec::cron("* * * * *", "Europe/Atlantis"),
            Err(ScheduleError::UnknownTimeZone { .. })
        ));
        for bad in [
            Duration::ZERO,
            Duration::from_millis(1500),
            secs(400 * 86_400),
        ] {
            assert!(matches!(
                ScheduleSpec::every(bad),
                Err(ScheduleError::InvalidInterval { .. })
            ));
        }
        assert!("sometimes".parse::<OverlapPolicy>().is_err());
        assert!("never".parse::<CatchUpPolicy>().is_err());
    }

    #[test]
    fn an_on_time_firing_fires_its_due_time_under_both_policies() {
        let spec = ScheduleSpec::every(secs(60)).unwrap();
        let due = utc(2026, 1, 1, 0, 1, 0);
        let now = due + chrono::Duration::milliseconds(300);
        for catch_up in [CatchUpPolicy::SkipMissed, CatchUpPolicy::RunLastMissed] {
            assert_eq!(
                plan_firing(&spec, catch_up, due, now, secs(5)),
                Some(FiringPlan {
                    fire_at: Some(due),
                    skipped: 0,
                    next_fire_at: utc(2026, 1, 1, 0, 2, 0)
                }),
                "{catch_up:?}"
            );
        }
    }

    #[test]
    fn after_downtime_run_last_missed_fires_the_latest_due_time_once() {
        let spec = ScheduleSpec::every(secs(60)).unwrap();
        let due = utc(2026, 1, 1, 0, 1, 0);
        let now = utc(2026, 1, 1, 0, 10, 30);
        assert_eq!(
            plan_firing(&spec, CatchUpPolicy::RunLastMissed, due, now, secs(5)),
            Some(FiringPlan {
                fire_at: Some(utc(2026, 1, 1, 0, 10, 0)),
                skipped: 9,
                next_fire_at: utc(2026, 1, 1, 0, 11, 0)
            })
        );
    }

    #[test]
    fn after_downtime_skip_missed_fires_nothing_late() {
        let spec = ScheduleSpec::every(secs(60)).unwrap();
        let due = utc(2026, 1, 1, 0, 1, 0);
        let now = utc(2026, 1, 1, 0, 10, 30);
        assert_eq!(
            plan_firing(&spec, CatchUpPolicy::SkipMissed, due, now, secs(5)),
            Some(FiringPlan {
                fire_at: None,
                skipped: 10,
                next_fire_at: utc(2026, 1, 1, 0, 11, 0)
            })
        );
        // The latest due time within the grace is not missed.
        let now = utc(2026, 1, 1, 0, 10, 2);
        assert_eq!(
            plan_firing(&spec, CatchUpPolicy::SkipMissed, due, now, secs(5)).map(|p| p.fire_at),
            Some(Some(utc(2026, 1, 1, 0, 10, 0)))
        );
    }

    #[test]
    fn a_year_long_outage_of_a_per_second_schedule_jumps_to_the_present() {
        let spec = ScheduleSpec::every(secs(1)).unwrap();
        let due = utc(2025, 1, 1, 0, 0, 0);
        let now = utc(2026, 1, 1, 0, 0, 0) + chrono::Duration::milliseconds(500);
        let plan = plan_firing(&spec, CatchUpPolicy::RunLastMissed, due, now, secs(5)).unwrap();
        assert_eq!(plan.fire_at, Some(utc(2026, 1, 1, 0, 0, 0)));
        assert_eq!(plan.next_fire_at, utc(2026, 1, 1, 0, 0, 1));
        let plan = plan_firing(&spec, CatchUpPolicy::SkipMissed, due, now, secs(5)).unwrap();
        assert_eq!(plan.fire_at, Some(utc(2026, 1, 1, 0, 0, 0)));
    }

    #[test]
    fn every_overlap_case_decides_as_the_policy_says() {
        use OverlapDecision as D;
        for policy in [
            OverlapPolicy::Skip,
            OverlapPolicy::Allow,
            OverlapPolicy::Cancel,
        ] {
            for id_exists in [false, true] {
                for previous_active in [false, true] {
                    let expected = match (id_exists, previous_active, policy) {
                        (true, _, _) => D::AlreadyStarted,
                        (false, false, _) => D::Start,
                        (false, true, OverlapPolicy::Skip) => D::SkipOverlapping,
                        (false, true, OverlapPolicy::Allow) => D::Start,
                        (false, true, OverlapPolicy::Cancel) => D::CancelPreviousThenStart,
                    };
                    assert_eq!(
                        decide_overlap(policy, id_exists, previous_active),
                        expected,
                        "{policy:?}, id exists: {id_exists}, previous active: {previous_active}"
                    );
                }
            }
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for policy in [
            OverlapPolicy::Skip,
            OverlapPolicy::Allow,
            OverlapPolicy::Cancel,
        ] {
            assert_eq!(policy.as_str().parse::<OverlapPolicy>().unwrap(), policy);
        }
        for policy in [CatchUpPolicy::SkipMissed, CatchUpPolicy::RunLastMissed] {
            assert_eq!(policy.as_str().parse::<CatchUpPolicy>().unwrap(), policy);
        }
    }

    #[test]
    fn instance_ids_name_the_schedule_and_the_utc_fire_time() {
        assert_eq!(
            instance_id("nightly", utc(2026, 3, 29, 1, 0, 0)),
            "schedule:nightly:2026-03-29T01:00:00Z"
        );
    }
}
