//! The statement-level notification triggers of migration 000004, against a
//! real PostgreSQL: what a writer that is not pgwake (psql, go-workflows)
//! wakes, and how pgwake's own writers opt out.
//!
//! PostgreSQL collapses identical (channel, payload) notifications sent in
//! one transaction, so a listener cannot tell one NOTIFY per queue from one
//! per row; where that matters the tests also check, in the catalog, that
//! the triggers fire once per statement.

mod support;

use pgwake::migrate::{self, DownSteps};
use pgwake::testing::{fresh_database, fresh_empty_database};
use support::{connect, drain_until_sentinel, listen, Received};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::Client;

const PROBE: &str = "probe";

/// A listener on the public schema's channels (and the probe).
async fn listen_public(url: &str) -> (Client, UnboundedReceiver<Received>) {
    listen(url, &["workflow_tasks", "activity_tasks", PROBE]).await
}

/// Every notification committed so far, as (channel, payload), sorted: the
/// triggers send one per distinct queue in no particular order.
async fn drained(
    notifier: &Client,
    received: &mut UnboundedReceiver<Received>,
) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = drain_until_sentinel(notifier, received, PROBE)
        .await
        .into_iter()
        .map(|r| (r.channel, r.payload))
        .collect();
    seen.sort();
    seen
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = expected
        .iter()
        .map(|(channel, payload)| (channel.to_string(), payload.to_string()))
        .collect();
    pairs.sort();
    pairs
}

/// Inserts instances `(instance_id, queue)`, all with execution `e1`
/// (`instances` has no trigger: this notifies nothing).
async fn insert_instances(client: &Client, instances: &[(&str, &str)]) {
    for (instance_id, queue) in instances {
        client
            .execute(
                "INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ($1, 'e1', 0, $2)",
                &[instance_id, queue],
            )
            .await
            .unwrap();
    }
}

/// One pending event row for `INSERT INTO pending_events ... VALUES`.
fn event_row(event_id: &str, instance_id: &str, visible_at: &str) -> String {
    format!("('{event_id}', '{instance_id}', 'e1', 1, now(), {visible_at})")
}

fn insert_events_sql(rows: &[String]) -> String {
    format!(
        "INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp, visible_at) VALUES {}",
        rows.join(", ")
    )
}

/// One activity row for `INSERT INTO activities ... VALUES`.
fn activity_row(activity_id: &str, queue: &str, visible_at: &str) -> String {
    format!("('{activity_id}', 'i1', 'e1', 11, '{queue}', now(), {visible_at})")
}

fn insert_activities_sql(rows: &[String]) -> String {
    format!(
        "INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp, visible_at) VALUES {}",
        rows.join(", ")
    )
}

/// The user triggers of the current schema's tables, `table:name level`,
/// where level is `row` or `statement`.
async fn triggers(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname || ':' || t.tgname || ' '
                    || CASE WHEN t.tgtype & 1 = 1 THEN 'row' ELSE 'statement' END
               FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT t.tgisinternal AND n.nspname = current_schema()
              ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The full definitions of the current schema's triggers and functions:
/// equal lists mean the same notification schema.
async fn trigger_and_function_definitions(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT pg_get_triggerdef(t.oid)
               FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE NOT t.tgisinternal AND n.nspname = current_schema()
             UNION ALL
             SELECT pg_get_functiondef(p.oid)
               FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = current_schema()
             ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The triggers at the newest version: the statement-level notification
/// triggers, and the row-level one of migration 13 that names a pending
/// event's queue (it notifies nothing).
const STATEMENT_LEVEL_TRIGGERS: [&str; 3] = [
    "activities:pgwake_activities_notify statement",
    "pending_events:pgwake_pending_event_queue row",
    "pending_events:pgwake_pending_events_notify statement",
];

#[actix_rt::test]
async fn a_plain_insert_notifies_the_queue_of_the_row() {
    let database = fresh_database().await.unwrap();
    let client = connect(database.url()).await;
    assert_eq!(triggers(&client).await, STATEMENT_LEVEL_TRIGGERS);
    insert_instances(&client, &[("i1", "q1")]).await;
    let (_listener, mut received) = listen_public(database.url()).await;

    client
        .batch_execute(&insert_events_sql(&[event_row("ev1", "i1", "NULL")]))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("workflow_tasks", "q1")]),
        "a pending event wakes its instance's queue"
    );

    client
        .batch_execute(&insert_activities_sql(&[activity_row("a1", "q2", "NULL")]))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("activity_tasks", "q2")]),
        "an activity wakes its own queue"
    );
}

#[actix_rt::test]
async fn defer_notify_on_in_the_transaction_notifies_nothing() {
    let database = fresh_database().await.unwrap();
    let client = connect(database.url()).await;
    insert_instances(&client, &[("i1", "q1")]).await;
    let (_listener, mut received) = listen_public(database.url()).await;

    client
        .batch_execute(&format!(
            "BEGIN;
             SET LOCAL pgwake.defer_notify = on;
             {};
             {};
             COMMIT;",
            insert_events_sql(&[event_row("ev1", "i1", "NULL")]),
            insert_activities_sql(&[activity_row("a1", "q2", "NULL")]),
        ))
        .await
        .unwrap();
    let seen = drained(&client, &mut received).await;
    assert!(
        seen.is_empty(),
        "deferred writes notify nothing, got {seen:?}"
    );

    let committed: i64 = client
        .query_one(
            "SELECT (SELECT count(*) FROM pending_events) + (SELECT count(*) FROM activities)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(committed, 2, "the rows themselves were written");
}

#[actix_rt::test]
async fn defer_notify_is_transaction_local_and_only_on_defers() {
    let database = fresh_database().await.unwrap();
    let client = connect(database.url()).await;
    let (_listener, mut received) = listen_public(database.url()).await;

    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL pgwake.defer_notify = on; {}; COMMIT;",
            insert_activities_sql(&[activity_row("a1", "deferred", "NULL")]),
        ))
        .await
        .unwrap();
    // The next transaction on the same connection: the setting is gone.
    client
        .batch_execute(&insert_activities_sql(&[activity_row(
            "a2", "next", "NULL",
        )]))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("activity_tasks", "next")])
    );

    // Only the exact value `on` defers; anything else still wakes workers.
    for (n, value) in ["off", "", "yes", "true"].iter().enumerate() {
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL pgwake.defer_notify = '{value}'; {}; COMMIT;",
                insert_activities_sql(&[activity_row(&format!("b{n}"), &format!("q{n}"), "NULL")]),
            ))
            .await
            .unwrap();
        assert_eq!(
            drained(&client, &mut received).await,
            pairs(&[("activity_tasks", &format!("q{n}"))]),
            "pgwake.defer_notify = '{value}' notifies"
        );
    }
}

#[actix_rt::test]
async fn a_multi_row_insert_notifies_once_per_distinct_queue() {
    let database = fresh_database().await.unwrap();
    let client = connect(database.url()).await;
    insert_instances(&client, &[("i1", "wq1"), ("i2", "wq2"), ("i3", "wq1")]).await;
    let (_listener, mut received) = listen_public(database.url()).await;

    let activities: Vec<String> = (0..5)
        .map(|n| activity_row(&format!("a{n}"), &format!("aq{}", n % 2), "NULL"))
        .collect();
    client
        .batch_execute(&insert_activities_sql(&activities))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("activity_tasks", "aq0"), ("activity_tasks", "aq1")]),
        "5 activities on 2 queues: 2 notifications"
    );

    client
        .batch_execute(&insert_events_sql(&[
            event_row("ev1", "i1", "NULL"),
            event_row("ev2", "i2", "NULL"),
            event_row("ev3", "i3", "NULL"),
            event_row("ev4", "i1", "NULL"),
        ]))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("workflow_tasks", "wq1"), ("workflow_tasks", "wq2")]),
        "4 events for instances of 2 queues: 2 notifications"
    );

    // PostgreSQL would collapse a per-row trigger's duplicates too; what
    // saves the work is that the triggers fire once per statement.
    assert_eq!(triggers(&client).await, STATEMENT_LEVEL_TRIGGERS);
}

#[actix_rt::test]
async fn rows_visible_only_later_notify_nothing() {
    let database = fresh_database().await.unwrap();
    let client = connect(database.url()).await;
    insert_instances(&client, &[("i1", "wq1"), ("i2", "wq2"), ("i3", "wq3")]).await;
    let (_listener, mut received) = listen_public(database.url()).await;
    let later = "now() + interval '1 hour'";
    let earlier = "now() - interval '1 minute'";

    client
        .batch_execute(&insert_events_sql(&[
            event_row("ev1", "i1", later),
            event_row("ev2", "i2", later),
        ]))
        .await
        .unwrap();
    client
        .batch_execute(&insert_activities_sql(&[
            activity_row("a1", "aq1", later),
            activity_row("a2", "aq2", later),
        ]))
        .await
        .unwrap();
    let seen = drained(&client, &mut received).await;
    assert!(
        seen.is_empty(),
        "rows due later are the timer's business, got {seen:?}"
    );

    // One statement mixing rows due later with rows visible now (NULL, or a
    // visible_at already passed): only the latter's queues are woken.
    client
        .batch_execute(&insert_events_sql(&[
            event_row("ev3", "i1", later),
            event_row("ev4", "i2", "NULL"),
            event_row("ev5", "i3", earlier),
        ]))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("workflow_tasks", "wq2"), ("workflow_tasks", "wq3")])
    );
    client
        .batch_execute(&insert_activities_sql(&[
            activity_row("a3", "aq1", later),
            activity_row("a4", "aq2", "NULL"),
            activity_row("a5", "aq3", earlier),
            activity_row("a6", "aq4", later),
        ]))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("activity_tasks", "aq2"), ("activity_tasks", "aq3")])
    );
}

#[actix_rt::test]
async fn tables_in_another_schema_notify_on_schema_qualified_channels() {
    let database = fresh_empty_database().await.unwrap();
    // The same tables in public and in tenant_a, with the same instance ids
    // on different queues: the trigger must read tenant_a's instances.
    let mut public = connect(database.url()).await;
    migrate::up(&mut public, None).await.unwrap();
    let mut tenant = connect(database.url()).await;
    tenant
        .batch_execute("CREATE SCHEMA tenant_a; SET search_path = tenant_a")
        .await
        .unwrap();
    migrate::up(&mut tenant, None).await.unwrap();
    assert_eq!(triggers(&tenant).await, STATEMENT_LEVEL_TRIGGERS);
    insert_instances(&public, &[("i1", "public-q")]).await;
    insert_instances(&tenant, &[("i1", "tenant-q")]).await;
    let (_listener, mut received) = listen(
        database.url(),
        &[
            "\"tenant_a.workflow_tasks\"",
            "\"tenant_a.activity_tasks\"",
            "workflow_tasks",
            "activity_tasks",
            PROBE,
        ],
    )
    .await;

    // A writer whose search_path finds the tables.
    tenant
        .batch_execute(&insert_events_sql(&[event_row("ev1", "i1", "NULL")]))
        .await
        .unwrap();
    tenant
        .batch_execute(&insert_activities_sql(&[activity_row("a1", "aq", "NULL")]))
        .await
        .unwrap();
    // A writer with the default search_path (public first), naming the
    // tables in full: the instance is still looked up in tenant_a.
    public
        .batch_execute(
            "INSERT INTO tenant_a.pending_events (event_id, instance_id, execution_id, event_type, timestamp)
               VALUES ('ev2', 'i1', 'e1', 1, now());
             INSERT INTO tenant_a.activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
               VALUES ('a2', 'i1', 'e1', 11, 'aq2', now());",
        )
        .await
        .unwrap();

    let seen: Vec<(String, String)> = drain_until_sentinel(&public, &mut received, PROBE)
        .await
        .into_iter()
        .map(|r| (r.channel, r.payload))
        .collect();
    assert_eq!(
        seen,
        [
            ("tenant_a.workflow_tasks", "tenant-q"),
            ("tenant_a.activity_tasks", "aq"),
            ("tenant_a.workflow_tasks", "tenant-q"),
            ("tenant_a.activity_tasks", "aq2"),
        ]
        .map(|(c, p)| (c.to_string(), p.to_string())),
        "only the schema's own channels, with tenant_a's queue"
    );
}

/// The rule of 000004: `<schema>.<base>`, cut to at most 63 bytes at a
/// character boundary (which is also how PostgreSQL truncates the quoted
/// identifier a listener passes to LISTEN).
fn channel_for(schema: &str, base: &str) -> String {
    let mut channel = format!("{schema}.{base}");
    while channel.len() > 63 {
        channel.pop();
    }
    channel
}

#[actix_rt::test]
async fn a_long_multibyte_schema_name_is_cut_to_63_bytes_not_63_characters() {
    // 30 two-byte characters: the full channel name is 45 characters but 75
    // bytes, which pg_notify would refuse (failing the writer's INSERT).
    let schema = "ü".repeat(30);
    let database = fresh_empty_database().await.unwrap();
    let mut tenant = connect(database.url()).await;
    tenant
        .batch_execute(&format!(
            "CREATE SCHEMA \"{schema}\"; SET search_path = \"{schema}\""
        ))
        .await
        .unwrap();
    migrate::up(&mut tenant, None).await.unwrap();
    insert_instances(&tenant, &[("i1", "q1")]).await;
    let workflow_channel = channel_for(&schema, "workflow_tasks");
    let activity_channel = channel_for(&schema, "activity_tasks");
    assert_eq!(workflow_channel.len(), 63);
    assert!(
        format!("{schema}.workflow_tasks").chars().count() <= 63,
        "cutting at 63 characters alone would keep the whole name"
    );
    // Listening on the full names, as a listener following the rule would.
    let (_listener, mut received) = listen(
        database.url(),
        &[
            &format!("\"{schema}.workflow_tasks\""),
            &format!("\"{schema}.activity_tasks\""),
            PROBE,
        ],
    )
    .await;

    tenant
        .batch_execute(&insert_events_sql(&[event_row("ev1", "i1", "NULL")]))
        .await
        .unwrap();
    tenant
        .batch_execute(&insert_activities_sql(&[activity_row("a1", "q2", "NULL")]))
        .await
        .unwrap();
    let seen: Vec<(String, String)> = drain_until_sentinel(&tenant, &mut received, PROBE)
        .await
        .into_iter()
        .map(|r| (r.channel, r.payload))
        .collect();
    assert_eq!(
        seen,
        [
            (workflow_channel, "q1".to_string()),
            (activity_channel, "q2".to_string())
        ]
    );
}

#[actix_rt::test]
async fn down_to_version_three_restores_the_row_level_triggers_and_up_brings_back_these() {
    let database = fresh_database().await.unwrap();
    let mut client = connect(database.url()).await;
    insert_instances(&client, &[("i1", "q1")]).await;
    let (_listener, mut received) = listen_public(database.url()).await;

    // Down through every version above 4 (none of them touches the
    // triggers), and 4.
    let newest = migrate::newest_version();
    let above_three: Vec<i64> = (4..=newest).collect();
    let report = migrate::down(
        &mut client,
        DownSteps::Steps(above_three.len().try_into().unwrap()),
    )
    .await
    .unwrap();
    let mut newest_first = above_three.clone();
    newest_first.reverse();
    assert_eq!(report.applied, newest_first);
    assert_eq!(report.to, Some(3));
    assert_eq!(
        triggers(&client).await,
        [
            "activities:activities_notify_activity_task row",
            "pending_events:pending_events_notify_workflow_task row"
        ]
    );
    // Exactly the schema of a database migrated straight to version 3.
    let reference = fresh_empty_database().await.unwrap();
    let mut reference_client = connect(reference.url()).await;
    migrate::up(&mut reference_client, Some(3)).await.unwrap();
    assert_eq!(
        trigger_and_function_definitions(&client).await,
        trigger_and_function_definitions(&reference_client).await
    );

    // A plain insert still notifies, and so does a "deferred" one: 000002
    // knows nothing of the setting.
    client
        .batch_execute(&format!(
            "{}; BEGIN; SET LOCAL pgwake.defer_notify = on; {}; COMMIT;",
            insert_events_sql(&[event_row("ev1", "i1", "NULL")]),
            insert_activities_sql(&[activity_row("a1", "q2", "NULL")]),
        ))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("workflow_tasks", "q1"), ("activity_tasks", "q2")])
    );

    let report = migrate::up(&mut client, None).await.unwrap();
    assert_eq!(report.applied, above_three);
    assert_eq!(triggers(&client).await, STATEMENT_LEVEL_TRIGGERS);
    let up_again = trigger_and_function_definitions(&client).await;
    let fresh = fresh_database().await.unwrap();
    assert_eq!(
        up_again,
        trigger_and_function_definitions(&connect(fresh.url()).await).await,
        "down then up gives the newest schema again"
    );
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL pgwake.defer_notify = on; {}; COMMIT; {};",
            insert_activities_sql(&[activity_row("a2", "deferred", "NULL")]),
            insert_events_sql(&[event_row("ev2", "i1", "NULL")]),
        ))
        .await
        .unwrap();
    assert_eq!(
        drained(&client, &mut received).await,
        pairs(&[("workflow_tasks", "q1")]),
        "the statement-level triggers, which honour the setting, are back"
    );
}
