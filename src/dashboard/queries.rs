//! The dashboard's own SQL: what [`Store`]'s methods do not read already.
//!
//! Every function runs under the store's deadline ([`Store::bounded`], so
//! a cut-off query discards its connection as the store's own do), reads
//! with plain `SELECT`s that take no row locks, and passes every value the
//! operator typed as a query parameter, never as SQL text. The one write,
//! [`retry_now`], locks a single `instances` row.

use std::time::SystemTime;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::StoreError;
use crate::store::stats::ACTIVITY_COUNTS_SQL;
use crate::store::{db, TouchedQueues};
use crate::{Queue, QueueStats, Store};

/// Rows on one page of the instances list.
pub(crate) const PAGE_SIZE: usize = 50;

/// Children listed on an instance's page; more are counted, not listed.
const MAX_CHILDREN: i64 = 200;

/// One queue's line on the overview.
#[derive(Debug, Default)]
pub(crate) struct QueueOverview {
    /// The counts [`Store::stats`] gives, read over active rows only.
    pub(crate) stats: QueueStats,
    /// Active instances whose workflow task a worker holds under a live lease.
    pub(crate) running_workflow_tasks: i64,
    /// Executions that ended in the last hour (completed, failed, canceled).
    pub(crate) finished_last_hour: i64,
    /// Those of them that ended with an error.
    pub(crate) failed_last_hour: i64,
}

/// The connections of one `application_name` listening for pgwake's channels.
#[derive(Debug)]
pub(crate) struct ListenerConnections {
    pub(crate) application_name: String,
    pub(crate) connections: i64,
    /// `pg_stat_activity.state` of each, joined (`idle`, `active` ...).
    pub(crate) states: String,
    /// How long the oldest has been connected, as PostgreSQL prints an interval.
    pub(crate) oldest_for: String,
}

/// Minutes the overview's chart covers, the current one included.
pub(crate) const CHART_MINUTES: usize = 30;

/// One minute of the overview's chart.
#[derive(Debug, Default, Clone)]
pub(crate) struct MinuteOfFinishes {
    /// The minute's start, in seconds since the Unix epoch (database clock).
    pub(crate) minute_start: i64,
    /// Executions that ended in it.
    pub(crate) finished: i64,
    /// Their mean time from creation to end, in seconds.
    pub(crate) mean_latency: Option<f64>,
}

/// Everything the overview shows.
#[derive(Debug)]
pub(crate) struct Overview {
    pub(crate) queues: Vec<QueueOverview>,
    /// The last [`CHART_MINUTES`] minutes, oldest first, every minute present.
    pub(crate) minutes: Vec<MinuteOfFinishes>,
    pub(crate) listeners: Vec<ListenerConnections>,
    /// `pg_notification_queue_usage()`: 0 to 1.
    pub(crate) notification_queue_usage: f64,
}

/// Reads the overview: per queue, the counts of [`Store::stats`], the
/// leased workflow tasks, and the executions finished and failed in the
/// last hour; and the listener connections PostgreSQL sees.
///
/// [`Store::stats`] counts over every row of `instances`, which takes
/// hundreds of milliseconds once a million finished executions are kept:
/// these statements read the active executions only, through the
/// `(completed_at, ...)` index of migration 1 (every end of an execution
/// sets `completed_at`), and the finished ones of the last hour.
pub(crate) async fn overview(store: &Store) -> Result<Overview, StoreError> {
    store
        .bounded("reading the dashboard overview", async {
            let client = store.client().await?;
            let active = client
                .query(
                    "SELECT i.queue, count(*),
                            count(*) FILTER (WHERE (i.locked_until IS NULL OR i.locked_until < now())
                              AND EXISTS (SELECT 1 FROM pending_events pe
                                           WHERE pe.instance_id = i.instance_id
                                             AND pe.execution_id = i.execution_id
                                             AND (pe.visible_at IS NULL OR pe.visible_at <= now()))),
                            count(*) FILTER (WHERE i.worker IS NOT NULL AND i.locked_until > now()),
                            count(*) FILTER (WHERE i.task_attempts > 0),
                            coalesce(sum((SELECT count(*) FROM pending_events pe
                                           WHERE pe.instance_id = i.instance_id
                                             AND pe.execution_id = i.execution_id
                                             AND pe.visible_at > now())), 0)::bigint
                       FROM instances i
                      WHERE i.completed_at IS NULL AND i.state = 0
                      GROUP BY i.queue",
                    &[],
                )
                .await
                .map_err(db("counting active instances"))?;
            // The activities table holds only activities not done yet.
            let activities = client
                .query(ACTIVITY_COUNTS_SQL, &[])
                .await
                .map_err(db("counting activities"))?;
            // Walks the (completed_at, ...) index over the last hour only.
            let finished = client
                .query(
                    &format!(
                        "SELECT i.queue, count(*), count(*) FILTER (WHERE EXISTS ({FAILED_FINISH}))
                           FROM instances i
                          WHERE i.completed_at > now() - interval '1 hour' AND i.state <> 0
                          GROUP BY i.queue"
                    ),
                    &[],
                )
                .await
                .map_err(db("counting finished instances"))?;
            // The same index, over the chart's minutes; the current minute
            // comes from the database's clock, as the ends' times do.
            let per_minute = client
                .query(
                    "SELECT extract(epoch FROM date_trunc('minute', completed_at))::bigint,
                            count(*),
                            avg(extract(epoch FROM completed_at - created_at))::float8
                       FROM instances
                      WHERE completed_at >= date_trunc('minute', now()) - make_interval(mins => $1)
                        AND state <> 0
                      GROUP BY 1",
                    &[&(i32::try_from(CHART_MINUTES).unwrap_or(30) - 1)],
                )
                .await
                .map_err(db("counting finishes per minute"))?;
            let current_minute: i64 = client
                .query_one(
                    "SELECT extract(epoch FROM date_trunc('minute', now()))::bigint",
                    &[],
                )
                .await
                .map_err(db("reading the database clock"))?
                .get(0);
            let mut minutes: Vec<MinuteOfFinishes> = (0..CHART_MINUTES)
                .rev()
                .map(|ago| MinuteOfFinishes {
                    minute_start: current_minute - 60 * i64::try_from(ago).unwrap_or(0),
                    ..MinuteOfFinishes::default()
                })
                .collect();
            for row in &per_minute {
                let minute_start: i64 = row.get(0);
                if let Some(minute) = minutes.iter_mut().find(|m| m.minute_start == minute_start) {
                    minute.finished = row.get(1);
                    minute.mean_latency = row.get(2);
                }
            }
            let listeners = client
                .query(
                    "SELECT application_name, count(*),
                            string_agg(coalesce(state, 'unknown'), ', ' ORDER BY backend_start),
                            max(now() - backend_start)::text
                       FROM pg_stat_activity
                      WHERE datname = current_database() AND application_name LIKE 'pgwake-listener:%'
                      GROUP BY application_name ORDER BY application_name",
                    &[],
                )
                .await
                .map_err(db("reading listener connections"))?;
            let usage: f64 = client
                .query_one("SELECT pg_notification_queue_usage()", &[])
                .await
                .map_err(db("reading the notification queue usage"))?
                .get(0);
            let mut queues: Vec<QueueOverview> = Vec::new();
            for row in &active {
                let entry = queue_entry(&mut queues, row.get(0));
                entry.stats.active_instances = row.get(1);
                entry.stats.claimable_workflow_tasks = row.get(2);
                entry.running_workflow_tasks = row.get(3);
                entry.stats.failing_workflow_tasks = row.get(4);
                entry.stats.scheduled_later += row.get::<_, i64>(5);
            }
            for row in &activities {
                let entry = queue_entry(&mut queues, row.get(0));
                entry.stats.ready_activities = row.get(1);
                entry.stats.running_activities = row.get(2);
                entry.stats.scheduled_later += row.get::<_, i64>(3);
            }
            for row in &finished {
                let entry = queue_entry(&mut queues, row.get(0));
                entry.finished_last_hour = row.get(1);
                entry.failed_last_hour = row.get(2);
            }
            queues.sort_by(|a, b| a.stats.queue.cmp(&b.stats.queue));
            Ok(Overview {
                queues,
                minutes,
                listeners: listeners
                    .iter()
                    .map(|row| ListenerConnections {
                        application_name: row.get(0),
                        connections: row.get(1),
                        states: row.get::<_, Option<String>>(2).unwrap_or_default(),
                        oldest_for: row.get::<_, Option<String>>(3).unwrap_or_default(),
                    })
                    .collect(),
                notification_queue_usage: usage,
            })
        })
        .await
}

/// The line of `queue`, added at its first count.
fn queue_entry(queues: &mut Vec<QueueOverview>, queue: String) -> &mut QueueOverview {
    let index = match queues.iter().position(|q| q.stats.queue == queue) {
        Some(index) => index,
        None => {
            let mut entry = QueueOverview::default();
            entry.stats.queue = queue;
            queues.push(entry);
            queues.len() - 1
        }
    };
    &mut queues[index]
}

/// Which instances the list shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StateFilter {
    Active,
    ContinuedAsNew,
    Finished,
    /// Active, with a workflow task that failed and waits for its retry.
    Stuck,
}

impl StateFilter {
    /// The filter named in a URL (`active`, `continued`, `finished`, `stuck`).
    pub(crate) fn parse(name: &str) -> Option<Self> {
        match name {
            "active" => Some(Self::Active),
            "continued" => Some(Self::ContinuedAsNew),
            "finished" => Some(Self::Finished),
            "stuck" => Some(Self::Stuck),
            _ => None,
        }
    }
}

/// The filters of the instances list, and where the page starts.
#[derive(Debug, Default, Clone)]
pub(crate) struct InstanceFilter {
    pub(crate) state: Option<StateFilter>,
    pub(crate) queue: Option<String>,
    pub(crate) workflow: Option<String>,
    pub(crate) id_prefix: Option<String>,
    /// Times as the operator typed them; PostgreSQL reads them (UTC unless
    /// they carry an offset) and refuses a malformed one (SQLSTATE class 22).
    pub(crate) created_after: Option<String>,
    pub(crate) created_before: Option<String>,
    pub(crate) finished_after: Option<String>,
    pub(crate) finished_before: Option<String>,
    /// Keyset paging: only rows whose `instances.id` is below this one.
    pub(crate) before_row: Option<i64>,
}

/// One execution in the instances list.
#[derive(Debug)]
pub(crate) struct InstanceListRow {
    pub(crate) instance_id: String,
    pub(crate) queue: String,
    pub(crate) state: i32,
    pub(crate) workflow: Option<String>,
    pub(crate) created_at: SystemTime,
    pub(crate) completed_at: Option<SystemTime>,
    pub(crate) task_attempts: i32,
    pub(crate) last_task_error: Option<String>,
    /// Finished with an error.
    pub(crate) failed: bool,
}

/// One page of the instances list, newest first.
#[derive(Debug)]
pub(crate) struct InstanceListPage {
    pub(crate) rows: Vec<InstanceListRow>,
    /// Where the next page starts, when there is one.
    pub(crate) next_before_row: Option<i64>,
}

/// One page of executions matching `filter`, newest first: by creation
/// (the primary key), or by finish time when the filter is on it.
///
/// Keyset paging: the statement walks `instances_pkey` backwards from
/// `before_row` (or the `(completed_at, ...)` index from that row's finish
/// time) and stops after one row more than a page, so a page costs the
/// same on the thousandth page as on the first (OFFSET would read every
/// row before it). Filters that match few rows make the walk longer; none
/// makes it read a row twice.
pub(crate) async fn instances(
    store: &Store,
    filter: &InstanceFilter,
) -> Result<InstanceListPage, StoreError> {
    store
        .bounded("listing instances", async {
            let mut client = store.client().await?;
            // The operator's times are read in UTC, the zone the pages show.
            let tx = client
                .transaction()
                .await
                .map_err(db("starting a transaction"))?;
            tx.batch_execute("SET LOCAL TimeZone = 'UTC'")
                .await
                .map_err(db("setting the time zone"))?;
            // The workflow's name is in the metadata as `{"workflow": name}`,
            // JSON that another writer may have stored differently: the
            // statement matches the name's JSON string in the bytes, and the
            // exact key is checked below, once the metadata is parsed.
            let workflow_needle: Option<Vec<u8>> = filter
                .workflow
                .as_ref()
                .map(serde_json::to_vec)
                .transpose()?;
            let limit = i64::try_from(PAGE_SIZE + 1).unwrap_or(51);
            // Each filter adds a constant condition and its value as a
            // parameter: the statement holds only the filters in use, so
            // the planner sees each query as it is (an `$n IS NULL OR ...`
            // for every filter would hide which indexes can serve it).
            let mut conditions = Conditions::default();
            // With a finish-time filter the rows come in finish order, from
            // the (completed_at, ...) index: in primary key order the
            // planner, taking finish times as spread evenly over the key,
            // walked past most of a million rows to reach a day long ago.
            // Likewise in creation order, from migration 9's (created_at,
            // id) index, with a creation-time filter.
            let order = if filter.finished_after.is_some() || filter.finished_before.is_some() {
                ListOrder::Finished
            } else if filter.created_after.is_some() || filter.created_before.is_some() {
                ListOrder::Created
            } else {
                ListOrder::Id
            };
            match (&filter.before_row, order) {
                (Some(before_row), ListOrder::Id) => conditions.add("id < $v", before_row),
                // The page's last row gives the time to go on from; the
                // first condition is the row comparison's index-friendly
                // half.
                (Some(before_row), ListOrder::Finished) => conditions.add(
                    "completed_at <= (SELECT completed_at FROM instances WHERE id = $v)
                     AND (completed_at, id) < (SELECT completed_at, id FROM instances WHERE id = $v)",
                    before_row,
                ),
                (Some(before_row), ListOrder::Created) => conditions.add(
                    "created_at <= (SELECT created_at FROM instances WHERE id = $v)
                     AND (created_at, id) < (SELECT created_at, id FROM instances WHERE id = $v)",
                    before_row,
                ),
                (None, _) => {}
            }
            match filter.state {
                // Only active executions lack a `completed_at` (every end
                // of an execution sets it): the condition lets the planner
                // take them from the (completed_at, ...) index of migration
                // 1 instead of walking past every finished one.
                Some(StateFilter::Active) => {
                    conditions.add_fixed("completed_at IS NULL AND state = 0");
                }
                Some(StateFilter::Stuck) => {
                    conditions.add_fixed("completed_at IS NULL AND state = 0 AND task_attempts > 0")
                }
                Some(StateFilter::ContinuedAsNew) => conditions.add_fixed("state = 1"),
                Some(StateFilter::Finished) => conditions.add_fixed("state = 2"),
                None => {}
            }
            if let Some(queue) = &filter.queue {
                conditions.add("queue = $v", queue);
            }
            // The ids with a prefix are one range of migration 9's
            // byte-order index: from the prefix to the prefix with its last
            // character's successor. starts_with stays the exact test.
            let prefix_end = filter.id_prefix.as_deref().and_then(prefix_upper_bound);
            if let Some(prefix) = &filter.id_prefix {
                conditions.add("starts_with(instance_id, $v)", prefix);
                conditions.add("instance_id ~>=~ $v", prefix);
            }
            if let Some(end) = &prefix_end {
                conditions.add("instance_id ~<~ $v", end);
            }
            if let Some(needle) = &workflow_needle {
                conditions.add("position($v::bytea IN metadata) > 0", needle);
            }
            if let Some(after) = &filter.created_after {
                conditions.add("created_at >= $v::text::timestamptz", after);
            }
            if let Some(before) = &filter.created_before {
                conditions.add("created_at < $v::text::timestamptz", before);
            }
            if let Some(after) = &filter.finished_after {
                conditions.add("completed_at >= $v::text::timestamptz", after);
            }
            if let Some(before) = &filter.finished_before {
                conditions.add("completed_at < $v::text::timestamptz", before);
            }
            conditions.params.push(&limit);
            let sql = format!(
                "SELECT id, instance_id, queue, state, metadata, created_at, completed_at,
                        task_attempts, last_task_error,
                        state <> 0 AND EXISTS ({FAILED_FINISH}) AS failed
                   FROM instances i {} {}
                  ORDER BY {}
                  LIMIT ${}",
                if conditions.sql.is_empty() {
                    ""
                } else {
                    "WHERE"
                },
                conditions.sql.join(" AND "),
                match order {
                    ListOrder::Finished => "completed_at DESC, id DESC",
                    ListOrder::Created => "created_at DESC, id DESC",
                    ListOrder::Id => "id DESC",
                },
                conditions.params.len()
            );
            let rows = tx
                .query(&sql, &conditions.params)
                .await
                .map_err(db("listing instances"))?;
            tx.commit().await.map_err(db("ending the read"))?;
            let more = rows.len() > PAGE_SIZE;
            let page = &rows[..rows.len().min(PAGE_SIZE)];
            let next_before_row = more.then(|| page.last().map(|row| row.get(0))).flatten();
            let rows = page
                .iter()
                .map(list_row)
                .filter(|row| match &filter.workflow {
                    Some(name) => row.workflow.as_deref() == Some(name.as_str()),
                    None => true,
                })
                .collect();
            Ok(InstanceListPage {
                rows,
                next_before_row,
            })
        })
        .await
}

/// The finish event of execution `i` when it holds an error. pgwake writes
/// a failure's finish event as serde_json's `{"error":...}`, so a prefix
/// test on the bytes finds it without parsing attributes another writer may
/// have stored differently.
const FAILED_FINISH: &str = "SELECT 1 FROM history h JOIN attributes a
        ON a.instance_id = h.instance_id AND a.execution_id = h.execution_id
       AND a.event_id = h.event_id
     WHERE h.instance_id = i.instance_id AND h.execution_id = i.execution_id
       AND h.event_type = 2
       AND substring(a.data FROM 1 FOR 9) = convert_to('{\"error\":', 'UTF8')";

/// The order of the instances list, newest first.
#[derive(Debug, Clone, Copy)]
enum ListOrder {
    /// By row id: creation order, the primary key.
    Id,
    /// By creation time, when the list is filtered on it.
    Created,
    /// By finish time, when the list is filtered on it.
    Finished,
}

/// The least string greater than every string that starts with `prefix`,
/// in byte (and so code point) order: the prefix with its last character
/// replaced by the next one. None when there is no such character (the
/// prefix ends with U+10FFFF) or the prefix is empty: the range is then
/// open-ended.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    let last = chars.pop()?;
    let next = (u32::from(last) + 1..=0x10FFFF).find_map(char::from_u32)?;
    chars.push(next);
    Some(chars.into_iter().collect())
}

/// The conditions of a statement and their parameters, numbered in the
/// order they are added. Conditions are constants of this file; what the
/// operator typed only ever travels as a parameter.
#[derive(Default)]
struct Conditions<'a> {
    sql: Vec<String>,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> Conditions<'a> {
    /// `condition` with `$v` standing for `param`.
    fn add(&mut self, condition: &'static str, param: &'a (dyn ToSql + Sync)) {
        self.params.push(param);
        self.sql
            .push(condition.replace("$v", &format!("${}", self.params.len())));
    }

    /// A condition without a parameter.
    fn add_fixed(&mut self, condition: &'static str) {
        self.sql.push(condition.to_string());
    }
}

fn list_row(row: &Row) -> InstanceListRow {
    let metadata: Option<Vec<u8>> = row.get(4);
    InstanceListRow {
        instance_id: row.get(1),
        queue: row.get(2),
        state: row.get(3),
        workflow: metadata.as_deref().and_then(workflow_name),
        created_at: row.get(5),
        completed_at: row.get(6),
        task_attempts: row.get(7),
        last_task_error: row.get(8),
        failed: row.get(9),
    }
}

/// The workflow's name in an execution's metadata (`{"workflow": name}`, as
/// `workflow::Client::start` and `pgwake_start_workflow` write it); `None`
/// for metadata of another shape.
pub(crate) fn workflow_name(metadata: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(metadata).ok()?;
    value.get("workflow")?.as_str().map(str::to_string)
}

/// An activity of an execution that has not delivered its result yet.
#[derive(Debug)]
pub(crate) struct ActivityInFlight {
    pub(crate) activity_id: String,
    pub(crate) queue: String,
    pub(crate) scheduled_at: SystemTime,
    pub(crate) visible_at: Option<SystemTime>,
    pub(crate) locked_until: Option<SystemTime>,
    pub(crate) worker: Option<String>,
    /// Its attributes (`{"name", "input", ...}`), when found.
    pub(crate) attributes: Option<serde_json::Value>,
}

impl ActivityInFlight {
    /// Which attempt this is: the retry layer puts the number of an attempt
    /// after the first in its input as `pgwake_attempt`.
    pub(crate) fn attempt(&self) -> u64 {
        self.attributes
            .as_ref()
            .and_then(|a| a.get("input"))
            .and_then(|input| input.get("pgwake_attempt"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(1)
    }

    /// The activity's name, when its attributes carry one.
    pub(crate) fn name(&self) -> Option<&str> {
        self.attributes.as_ref()?.get("name")?.as_str()
    }
}

/// A child execution (a sub-workflow) of the execution shown.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) instance_id: String,
    pub(crate) state: i32,
    pub(crate) created_at: SystemTime,
    /// Finished with an error.
    pub(crate) failed: bool,
}

/// What an instance's page shows beyond [`Store::instance`]'s snapshot.
#[derive(Debug, Default)]
pub(crate) struct InstanceDetails {
    pub(crate) parent_instance_id: Option<String>,
    pub(crate) locked_until: Option<SystemTime>,
    pub(crate) worker: Option<String>,
    pub(crate) activities: Vec<ActivityInFlight>,
    pub(crate) children: Vec<Child>,
    /// Children beyond those listed.
    pub(crate) more_children: bool,
}

/// The execution's lease, parent, children and activities in flight. Each
/// statement walks an index on `(instance_id, execution_id)` or
/// `(parent_instance_id, parent_execution_id)`.
pub(crate) async fn instance_details(
    store: &Store,
    instance_id: &str,
    execution_id: &str,
) -> Result<InstanceDetails, StoreError> {
    store
        .bounded("reading an instance's details", async {
            let client = store.client().await?;
            let own = client
                .query_opt(
                    "SELECT parent_instance_id, locked_until, worker FROM instances
                      WHERE instance_id = $1 AND execution_id = $2",
                    &[&instance_id, &execution_id],
                )
                .await
                .map_err(db("reading the instance's lease"))?;
            let children = client
                .query(
                    &format!(
                        "SELECT instance_id, state, created_at,
                                state <> 0 AND EXISTS ({FAILED_FINISH})
                           FROM instances i
                          WHERE parent_instance_id = $1 AND parent_execution_id = $2
                          ORDER BY id LIMIT $3"
                    ),
                    &[&instance_id, &execution_id, &(MAX_CHILDREN + 1)],
                )
                .await
                .map_err(db("reading the instance's children"))?;
            let activities = client
                .query(
                    "SELECT ac.activity_id, ac.queue, ac.timestamp, ac.visible_at, ac.locked_until,
                            ac.worker, at.data
                       FROM activities ac
                       LEFT JOIN attributes at
                         ON at.instance_id = ac.instance_id AND at.execution_id = ac.execution_id
                        AND at.event_id = ac.activity_id
                      WHERE ac.instance_id = $1 AND ac.execution_id = $2
                      ORDER BY ac.id",
                    &[&instance_id, &execution_id],
                )
                .await
                .map_err(db("reading the instance's activities"))?;
            let mut details = InstanceDetails::default();
            if let Some(own) = own {
                details.parent_instance_id = own.get(0);
                details.locked_until = own.get(1);
                details.worker = own.get(2);
            }
            details.more_children = children.len() > MAX_CHILDREN as usize;
            details.children = children
                .iter()
                .take(MAX_CHILDREN as usize)
                .map(|row| Child {
                    instance_id: row.get(0),
                    state: row.get(1),
                    created_at: row.get(2),
                    failed: row.get(3),
                })
                .collect();
            details.activities = activities
                .iter()
                .map(|row| ActivityInFlight {
                    activity_id: row.get(0),
                    queue: row.get(1),
                    scheduled_at: row.get(2),
                    visible_at: row.get(3),
                    locked_until: row.get(4),
                    worker: row.get(5),
                    attributes: row
                        .get::<_, Option<Vec<u8>>>(6)
                        .and_then(|data| serde_json::from_slice(&data).ok()),
                })
                .collect();
            Ok(details)
        })
        .await
}

/// Makes the failing workflow task of the active execution of
/// `instance_id` claimable now, undoing only the backoff
/// `fail_workflow_task` set (a `locked_until` ahead with no worker): the
/// attempt count and the last error stay, so a task that fails again backs
/// off from where it was. Returns whether there was such a task to retry.
///
/// Locks the one `instances` row it updates, and nothing else, so it cannot
/// deadlock. A task that a worker holds (a `worker` set) is left alone.
pub(crate) async fn retry_now(store: &Store, instance_id: &str) -> Result<bool, StoreError> {
    store
        .bounded("retrying a workflow task now", async {
            let mut client = store.client().await?;
            let tx = store.begin_write(&mut client).await?;
            let row = tx
                .query_opt(
                    "UPDATE instances SET locked_until = NULL
                      WHERE instance_id = $1 AND state = 0 AND task_attempts > 0
                        AND worker IS NULL AND locked_until > now()
                      RETURNING queue",
                    &[&instance_id],
                )
                .await
                .map_err(db("clearing the retry delay"))?;
            let Some(row) = row else {
                return Ok(false);
            };
            let queue: String = row.get(0);
            // Workers of other processes sleep until the old due time: wake
            // them on the channel the insert triggers of migration 4 use for
            // this schema (`workflow_tasks` in `public`).
            tx.execute(
                "SELECT pg_notify(CASE WHEN current_schema() = 'public' THEN 'workflow_tasks'
                                       ELSE left(current_schema() || '.workflow_tasks', 63) END, $1)",
                &[&queue],
            )
            .await
            .map_err(db("announcing the retry"))?;
            // This process's workers, when the store belongs to a runtime,
            // are told by the commit (again later if its outcome is in
            // doubt), as for every other write of the store.
            let mut touched = TouchedQueues::default();
            touched.workflow.extend(Queue::new(queue).ok());
            store
                .commit_write(tx, touched, "committing the retry")
                .await?;
            Ok(true)
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn a_prefix_range_holds_exactly_the_strings_with_that_prefix() {
        assert_eq!(prefix_upper_bound("order-4"), Some("order-5".to_string()));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}"), None);
        // Surrogates are not characters: the successor skips them.
        assert_eq!(
            prefix_upper_bound("a\u{D7FF}"),
            Some("a\u{E000}".to_string())
        );
        let candidates = [
            "",
            "o",
            "order",
            "order-4",
            "order-40",
            "order-4\u{10FFFF}x",
            "order-5",
            "order-3z",
            "order-4é",
            "ordes",
            "p",
            "\u{10FFFF}",
        ];
        for prefix in ["order-4", "o", "é", "a\u{D7FF}"] {
            let end = prefix_upper_bound(prefix).expect("a successor exists");
            for candidate in candidates {
                // Byte order, as text_pattern_ops compares.
                let in_range = candidate.as_bytes() >= prefix.as_bytes()
                    && candidate.as_bytes() < end.as_bytes();
                assert_eq!(
                    in_range,
                    candidate.starts_with(prefix),
                    "{candidate:?} against the prefix {prefix:?}"
                );
            }
        }
    }
}
