//! Writing and reading events with their attributes: the SQL every
//! operation shares.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use tokio_postgres::Row;

use super::db;
use super::model::{Event, EventType, InstanceRef};
use crate::error::StoreError;

/// An event about to be written.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) event_id: String,
    pub(crate) event_type: EventType,
    pub(crate) schedule_event_id: i64,
    /// Invisible until this long after the commit's `now()`.
    pub(crate) visible_after: Option<Duration>,
    /// JSON bytes, already size-checked.
    pub(crate) data: Vec<u8>,
}

impl NewEvent {
    pub(crate) fn new(event_type: EventType, schedule_event_id: i64, data: Vec<u8>) -> Self {
        Self {
            event_id: super::new_id(),
            event_type,
            schedule_event_id,
            visible_after: None,
            data,
        }
    }
}

/// Inserts pending events with their attributes, in one statement: `$1`,
/// `$2` the execution, `$3..$7` the [`EventColumns`] (ids, types,
/// scheduling ids, delays, data). Each event names its instance's queue,
/// looked up once (migration 13: the claim's walks are per queue; an
/// instance not visible yet leaves it NULL, which claims look for too).
/// Takes no row locks on existing rows.
pub(crate) const INSERT_PENDING_SQL: &str = "WITH input AS (
   SELECT * FROM unnest($3::text[], $4::int[], $5::bigint[], $6::float8[], $7::bytea[])
            WITH ORDINALITY AS t(event_id, event_type, schedule_event_id, delay_secs, data, ord)
 ), attrs AS (
   INSERT INTO attributes (event_id, instance_id, execution_id, data)
   SELECT event_id, $1, $2, data FROM input
 )
 INSERT INTO pending_events
   (event_id, instance_id, execution_id, event_type, timestamp, schedule_event_id, visible_at,
    queue)
 SELECT event_id, $1, $2, event_type, now(), schedule_event_id,
        now() + make_interval(secs => delay_secs),
        (SELECT i.queue FROM instances i WHERE i.instance_id = $1 AND i.execution_id = $2)
   FROM input ORDER BY ord";

/// Appends events to an execution's history with their attributes, in one
/// statement: `$1`, `$2` the execution, `$3` the first sequence id, `$4..$7`
/// the [`EventColumns`]' ids, types, scheduling ids and data. Takes no row
/// locks on existing rows.
pub(crate) const APPEND_HISTORY_SQL: &str = "WITH input AS (
   SELECT * FROM unnest($4::text[], $5::int[], $6::bigint[], $7::bytea[])
            WITH ORDINALITY AS t(event_id, event_type, schedule_event_id, data, ord)
 ), attrs AS (
   INSERT INTO attributes (event_id, instance_id, execution_id, data)
   SELECT event_id, $1, $2, data FROM input
 )
 INSERT INTO history
   (event_id, sequence_id, instance_id, execution_id, event_type, timestamp, schedule_event_id)
 SELECT event_id, $3 + ord - 1, $1, $2, event_type, now(), schedule_event_id
   FROM input ORDER BY ord";

/// Inserts `events` as pending events of `instance` (in order) with their
/// attributes, in one statement. Takes no row locks on existing rows.
pub(crate) async fn insert_pending(
    client: &impl GenericClient,
    instance: &InstanceRef,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let c = EventColumns::of(events);
    client
        .execute(
            &client
                .prepare_cached(INSERT_PENDING_SQL)
                .await
                .map_err(db("preparing a statement"))?,
            &[
                &instance.instance_id,
                &instance.execution_id,
                &c.ids,
                &c.types,
                &c.schedule_ids,
                &c.delays,
                &c.data,
            ],
        )
        .await
        .map_err(db("writing pending events"))?;
    Ok(())
}

/// Appends `events` to `instance`'s history with sequence ids
/// `first_sequence_id..`, with their attributes. Takes no row locks on
/// existing rows.
pub(crate) async fn append_history(
    client: &impl GenericClient,
    instance: &InstanceRef,
    first_sequence_id: i64,
    events: &[NewEvent],
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let c = EventColumns::of(events);
    client
        .execute(
            &client
                .prepare_cached(APPEND_HISTORY_SQL)
                .await
                .map_err(db("preparing a statement"))?,
            &[
                &instance.instance_id,
                &instance.execution_id,
                &first_sequence_id,
                &c.ids,
                &c.types,
                &c.schedule_ids,
                &c.data,
            ],
        )
        .await
        .map_err(db("appending to the history"))?;
    Ok(())
}

/// Events as the column arrays [`INSERT_PENDING_SQL`] and
/// [`APPEND_HISTORY_SQL`] take.
pub(crate) struct EventColumns {
    pub(crate) ids: Vec<String>,
    pub(crate) types: Vec<i32>,
    pub(crate) schedule_ids: Vec<i64>,
    /// Seconds after the commit's `now()` before the event is visible.
    pub(crate) delays: Vec<Option<f64>>,
    pub(crate) data: Vec<Vec<u8>>,
}

impl EventColumns {
    pub(crate) fn of(events: &[NewEvent]) -> Self {
        Self {
            ids: events.iter().map(|e| e.event_id.clone()).collect(),
            types: events.iter().map(|e| e.event_type.code()).collect(),
            schedule_ids: events.iter().map(|e| e.schedule_event_id).collect(),
            delays: events
                .iter()
                .map(|e| e.visible_after.map(|d| d.as_secs_f64()))
                .collect(),
            data: events.iter().map(|e| e.data.clone()).collect(),
        }
    }
}

/// The columns [`event_from_row`] reads, for `pending_events` or `history`
/// aliased `e`, joined to `attributes` aliased `a`.
pub(crate) const EVENT_COLUMNS: &str =
    "e.event_id, e.sequence_id, e.event_type, e.timestamp, e.schedule_event_id, e.visible_at, a.data";

/// The join that brings an event's attributes.
pub(crate) const ATTRIBUTES_JOIN: &str = "LEFT JOIN attributes a
    ON a.instance_id = e.instance_id AND a.execution_id = e.execution_id AND a.event_id = e.event_id";

pub(crate) fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    event_from_row_at(row, 0)
}

/// [`event_from_row`] for [`EVENT_COLUMNS`] starting at column `first`.
pub(crate) fn event_from_row_at(row: &Row, first: usize) -> Result<Event, StoreError> {
    let code: i32 = row.get(first + 2);
    let data: Option<Vec<u8>> = row.get(first + 6);
    let attributes = match data {
        Some(bytes) if !bytes.is_empty() => serde_json::from_slice(&bytes)?,
        _ => serde_json::Value::Null,
    };
    Ok(Event {
        event_id: row.get(first),
        sequence_id: row.get(first + 1),
        // Event types that are neither go-workflows' nor pgwake's own are
        // not written by pgwake; read them as the nearest meaning rather than
        // failing a claim.
        event_type: EventType::from_code(code).unwrap_or(EventType::SideEffectResult),
        timestamp: row.get(first + 3),
        schedule_event_id: row.get(first + 4),
        visible_at: row.get(first + 5),
        attributes,
    })
}
