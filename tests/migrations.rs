//! The schema and its migrator, against a real PostgreSQL.

mod support;

use pgwake::migrate::{self, DownSteps, MIGRATIONS};
use pgwake::testing::fresh_empty_database;
use pgwake::MigrateError;
use support::{connect, drain_until_sentinel, listen};

/// go-workflows' columns, `table.column type [not null]`, in table order:
/// the schema of versions 1 to 4.
const GO_WORKFLOWS_COLUMNS: &str = "\
activities.id bigint not null
activities.activity_id character varying(128) not null
activities.instance_id character varying(128) not null
activities.execution_id character varying(128) not null
activities.event_type integer not null
activities.queue character varying(128) not null default ''::character varying
activities.timestamp timestamp with time zone not null
activities.schedule_event_id bigint not null
activities.visible_at timestamp with time zone
activities.locked_until timestamp with time zone
activities.worker character varying(64)
attributes.id bigint not null
attributes.event_id character varying(128) not null
attributes.instance_id character varying(128) not null
attributes.execution_id character varying(128) not null
attributes.data bytea not null
history.id bigint not null
history.event_id character varying(128) not null
history.sequence_id bigint not null
history.instance_id character varying(128) not null
history.execution_id character varying(128) not null
history.event_type integer not null
history.timestamp timestamp with time zone not null
history.schedule_event_id bigint not null
history.visible_at timestamp with time zone
instances.id bigint not null
instances.instance_id character varying(128) not null
instances.execution_id character varying(128) not null
instances.parent_instance_id character varying(128)
instances.parent_execution_id character varying(128)
instances.parent_schedule_event_id numeric
instances.metadata bytea
instances.state integer not null
instances.queue character varying(128) not null default ''::character varying
instances.created_at timestamp with time zone not null default CURRENT_TIMESTAMP
instances.completed_at timestamp with time zone
instances.locked_until timestamp with time zone
instances.sticky_until timestamp with time zone
instances.worker character varying(64)
pending_events.id bigint not null
pending_events.event_id character varying(128) not null
pending_events.sequence_id bigint not null
pending_events.instance_id character varying(128) not null
pending_events.execution_id character varying(128) not null
pending_events.event_type integer not null
pending_events.timestamp timestamp with time zone not null
pending_events.schedule_event_id bigint not null
pending_events.visible_at timestamp with time zone";

/// The indexes of 000001, `table(columns)` with `unique` / `primary`.
const EXPECTED_INDEXES_V1: &[&str] = &[
    "activities(id) primary",
    "activities(instance_id,execution_id,activity_id,worker) unique",
    "activities(locked_until,queue)",
    "attributes(event_id)",
    "attributes(id) primary",
    "attributes(instance_id,execution_id,event_id) unique",
    "history(id) primary",
    "history(instance_id,execution_id)",
    "history(instance_id,execution_id,sequence_id)",
    "instances(completed_at,locked_until,sticky_until,worker,queue)",
    "instances(id) primary",
    "instances(instance_id,execution_id) unique",
    "instances(parent_instance_id,parent_execution_id)",
    "pending_events(id) primary",
    "pending_events(instance_id,execution_id)",
    "pending_events(instance_id,execution_id,visible_at,schedule_event_id)",
];

/// The columns at the newest version (7 adds functions, 8 indexes, no
/// columns).
fn expected_columns() -> String {
    columns_at(13)
}

/// The columns at `version` (5 or later): go-workflows' and, after each
/// table's last one, the `lease_id` of migration 5, then on `instances` the
/// `task_attempts` and `last_task_error` of migration 6, and on
/// `pending_events` the `queue` of migration 13.
fn columns_at(version: i64) -> String {
    GO_WORKFLOWS_COLUMNS
        .lines()
        .flat_map(|line| {
            let added: &[&str] = match line {
                "activities.worker character varying(64)" => &["activities.lease_id bigint"],
                "instances.worker character varying(64)" if version >= 6 => &[
                    "instances.lease_id bigint",
                    "instances.task_attempts integer not null default 0",
                    "instances.last_task_error text",
                ],
                "instances.worker character varying(64)" => &["instances.lease_id bigint"],
                "pending_events.visible_at timestamp with time zone" if version >= 13 => {
                    &["pending_events.queue character varying(128)"]
                }
                _ => &[],
            };
            std::iter::once(line).chain(added.iter().copied())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const TABLES: &str = "'instances','pending_events','history','activities','attributes'";

async fn columns(client: &tokio_postgres::Client) -> String {
    let rows = client
        .query(
            &format!(
                "SELECT c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                        || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                        || COALESCE(' default ' || CASE WHEN pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'
                                                        THEN NULL ELSE pg_get_expr(d.adbin, d.adrelid) END, '')
                   FROM pg_attribute a
                   JOIN pg_class c ON c.oid = a.attrelid
                   JOIN pg_namespace n ON n.oid = c.relnamespace
                   LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                  WHERE n.nspname = current_schema() AND c.relname IN ({TABLES})
                    AND a.attnum > 0 AND NOT a.attisdropped
                  ORDER BY c.relname, a.attnum"
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn indexes(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            &format!(
                "SELECT t.relname || '(' || string_agg(a.attname, ',' ORDER BY k.ord) || ')'
                        || CASE WHEN ix.indisprimary THEN ' primary'
                                WHEN ix.indisunique THEN ' unique' ELSE '' END
                   FROM pg_index ix
                   JOIN pg_class t ON t.oid = ix.indrelid
                   JOIN pg_namespace n ON n.oid = t.relnamespace
                  CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
                   JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
                  WHERE n.nspname = current_schema() AND t.relname IN ({TABLES})
                  GROUP BY t.relname, ix.indexrelid, ix.indisprimary, ix.indisunique
                  ORDER BY 1"
            ),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn triggers(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT c.relname || ':' || t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
              WHERE NOT t.tgisinternal ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn functions(client: &tokio_postgres::Client) -> Vec<String> {
    let rows = client
        .query(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = current_schema() ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn table_count(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            &format!(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname IN ({TABLES})"
            ),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[actix_rt::test]
async fn up_to_newest_then_down_to_zero_then_up_again() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;

    let report = migrate::up(&mut client, None).await.unwrap();
    assert_eq!(report.from, None);
    assert_eq!(report.to, Some(migrate::newest_version()));
    assert_eq!(
        report.applied,
        MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert_eq!(columns(&client).await, expected_columns());
    // go-workflows' indexes but the one migration 8 drops (a prefix of
    // another), the claim's partial indexes of migrations 3 and 8, and the
    // dashboard's of migration 9.
    let newest_indexes = indexes(&client).await;
    for index in EXPECTED_INDEXES_V1 {
        let dropped = *index == "pending_events(instance_id,execution_id)";
        assert_eq!(
            newest_indexes.contains(&index.to_string()),
            !dropped,
            "{index} at the newest version"
        );
    }
    for index in [
        "activities(queue,id)",
        "activities(queue,visible_at)",
        "pending_events(id)",
        "pending_events(queue,id)",
        "pending_events(queue,visible_at)",
        "instances(instance_id)",
        "instances(created_at,id)",
        "activities(queue,locked_until)",
    ] {
        assert!(
            newest_indexes.contains(&index.to_string()),
            "missing index {index}"
        );
    }
    assert_eq!(
        triggers(&client).await,
        [
            "activities:pgwake_activities_notify",
            "pending_events:pgwake_pending_event_queue",
            "pending_events:pgwake_pending_events_notify"
        ]
    );
    assert_eq!(
        functions(&client).await,
        [
            "pgwake_cancel_workflow",
            "pgwake_enqueue_activity",
            "pgwake_notify_activity_tasks",
            "pgwake_notify_workflow_tasks",
            "pgwake_pending_event_queue",
            "pgwake_require",
            "pgwake_signal_workflow",
            "pgwake_start_workflow"
        ]
    );

    // Down to 12: migration 13's queue of pending events, its trigger and
    // indexes go, and migration 8's walk across queues comes back; to 11:
    // migration 12's per-queue lease index; to 10: migration 11's check
    // function.
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(12));
    assert_eq!(columns(&client).await, columns_at(12));
    let indexes_at_12 = indexes(&client).await;
    assert!(!indexes_at_12.contains(&"pending_events(queue,id)".to_string()));
    assert!(indexes_at_12.contains(&"pending_events(id)".to_string()));
    assert!(indexes_at_12.contains(&"pending_events(visible_at)".to_string()));
    assert_eq!(
        triggers(&client).await,
        [
            "activities:pgwake_activities_notify",
            "pending_events:pgwake_pending_events_notify"
        ]
    );
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(11));
    assert!(!indexes(&client)
        .await
        .contains(&"activities(queue,locked_until)".to_string()));
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(10));
    assert!(!functions(&client)
        .await
        .contains(&"pgwake_require".to_string()));
    migrate::up(&mut client, None).await.unwrap();

    // Down to 8: migration 9's dashboard indexes go, migration 8's stay.
    let steps_to_8 = u32::try_from(migrate::newest_version() - 8).unwrap();
    let report = migrate::down(&mut client, DownSteps::Steps(steps_to_8))
        .await
        .unwrap();
    assert_eq!(report.to, Some(8));
    let indexes_at_8 = indexes(&client).await;
    assert!(!indexes_at_8.contains(&"instances(instance_id)".to_string()));
    assert!(!indexes_at_8.contains(&"instances(created_at,id)".to_string()));
    assert!(indexes_at_8.contains(&"activities(queue,id)".to_string()));
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(7));
    let indexes_at_7 = indexes(&client).await;
    assert!(indexes_at_7.contains(&"pending_events(instance_id,execution_id)".to_string()));
    assert!(!indexes_at_7.contains(&"activities(queue,id)".to_string()));
    assert!(!indexes_at_7.contains(&"pending_events(id)".to_string()));
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(6));
    assert_eq!(columns(&client).await, columns_at(6));
    assert_eq!(
        functions(&client).await,
        [
            "pgwake_notify_activity_tasks",
            "pgwake_notify_workflow_tasks"
        ]
    );
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(5));
    assert_eq!(columns(&client).await, columns_at(5));
    let report = migrate::down(&mut client, DownSteps::Steps(1))
        .await
        .unwrap();
    assert_eq!(report.to, Some(4));
    assert_eq!(columns(&client).await, GO_WORKFLOWS_COLUMNS);

    let report = migrate::down(&mut client, DownSteps::All).await.unwrap();
    assert_eq!(report.to, None);
    assert_eq!(table_count(&client).await, 0);
    assert!(triggers(&client).await.is_empty());
    assert!(
        functions(&client).await.is_empty(),
        "functions left: {:?}",
        functions(&client).await
    );
    let status = migrate::status(&client).await.unwrap();
    assert_eq!((status.version, status.dirty), (None, false));

    migrate::up(&mut client, None).await.unwrap();
    assert_eq!(columns(&client).await, expected_columns());
    assert_eq!(
        triggers(&client).await,
        [
            "activities:pgwake_activities_notify",
            "pending_events:pgwake_pending_event_queue",
            "pending_events:pgwake_pending_events_notify"
        ]
    );
    migrate::check(&client).await.unwrap();
}

#[actix_rt::test]
async fn version_one_has_exactly_the_go_workflows_indexes_and_no_triggers() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    migrate::up(&mut client, Some(1)).await.unwrap();
    assert_eq!(indexes(&client).await, EXPECTED_INDEXES_V1);
    assert!(triggers(&client).await.is_empty());
}

#[actix_rt::test]
async fn eight_concurrent_ups_on_a_fresh_database_all_succeed() {
    let database = fresh_empty_database().await.unwrap();
    let runs = (0..8).map(|_| {
        let url = database.url().to_string();
        async move {
            let mut client = connect(&url).await;
            migrate::up(&mut client, None).await
        }
    });
    let results = futures::future::join_all(runs).await;
    let applied: usize = results
        .into_iter()
        .map(|result| result.expect("every concurrent up succeeds").applied.len())
        .sum();
    assert_eq!(
        applied,
        MIGRATIONS.len(),
        "each migration applied exactly once in all"
    );

    let client = connect(database.url()).await;
    let status = migrate::status(&client).await.unwrap();
    assert_eq!(status.version, Some(migrate::newest_version()));
    assert!(!status.dirty);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[actix_rt::test]
async fn a_dirty_database_is_refused_until_forced() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    migrate::up(&mut client, Some(1)).await.unwrap();
    // What a process killed in the middle of step 2 leaves behind.
    client
        .batch_execute("UPDATE schema_migrations SET version = 2, dirty = true")
        .await
        .unwrap();

    let err = migrate::up(&mut client, None).await.unwrap_err();
    assert!(matches!(err, MigrateError::Dirty { version: 2 }), "{err:?}");
    assert!(err.to_string().contains("pgwake migrate force"), "{err}");
    assert!(matches!(
        migrate::down(&mut client, DownSteps::Steps(1)).await,
        Err(MigrateError::Dirty { .. })
    ));
    assert!(matches!(
        migrate::check(&client).await,
        Err(MigrateError::Dirty { .. })
    ));

    // A person checks: step 2 never ran. They record version 1, and go on.
    migrate::force(&mut client, 1).await.unwrap();
    let status = migrate::status(&client).await.unwrap();
    assert_eq!((status.version, status.dirty), (Some(1), false));
    migrate::up(&mut client, None).await.unwrap();
    migrate::check(&client).await.unwrap();
}

#[actix_rt::test]
async fn a_failing_step_is_rolled_back_and_leaves_the_database_clean() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    migrate::up(&mut client, Some(1)).await.unwrap();
    // Someone created a trigger of the same name by hand: step 2 collides.
    client
        .batch_execute(
            "CREATE FUNCTION hand_made() RETURNS trigger AS $$ BEGIN RETURN NULL; END $$ LANGUAGE plpgsql;
             CREATE TRIGGER activities_notify_activity_task AFTER INSERT ON activities
               FOR EACH ROW EXECUTE FUNCTION hand_made();",
        )
        .await
        .unwrap();

    let err = migrate::up(&mut client, None).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::StepFailed { version: 2, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("already exists"),
        "the server's reason is shown: {err}"
    );

    let status = migrate::status(&client).await.unwrap();
    assert_eq!((status.version, status.dirty), (Some(1), false));
    assert!(
        !functions(&client)
            .await
            .contains(&"notify_workflow_task".to_string()),
        "step 2 was rolled back"
    );
}

#[actix_rt::test]
async fn a_database_left_at_version_one_by_go_workflows_is_upgraded() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    // What golang-migrate leaves after go-workflows applies its first file.
    client.batch_execute(MIGRATIONS[0].up_sql).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE schema_migrations (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL);
             INSERT INTO schema_migrations VALUES (1, false);",
        )
        .await
        .unwrap();

    let report = migrate::up(&mut client, None).await.unwrap();
    assert_eq!(report.from, Some(1));
    assert_eq!(report.to, Some(migrate::newest_version()));
    assert_eq!(
        triggers(&client).await,
        [
            "activities:pgwake_activities_notify",
            "pending_events:pgwake_pending_event_queue",
            "pending_events:pgwake_pending_events_notify"
        ]
    );
}

#[actix_rt::test]
async fn a_database_newer_than_this_binary_is_refused() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    migrate::up(&mut client, None).await.unwrap();
    client
        .batch_execute("UPDATE schema_migrations SET version = 999")
        .await
        .unwrap();
    let err = migrate::up(&mut client, None).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::NewerThanKnown { version: 999, .. }),
        "{err:?}"
    );
    assert!(matches!(
        migrate::check(&client).await,
        Err(MigrateError::NewerThanKnown { .. })
    ));
}

#[actix_rt::test]
async fn unknown_versions_are_refused_before_anything_changes() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    let err = migrate::up(&mut client, Some(42)).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::UnknownVersion { version: 42, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("known versions"), "{err}");
    assert!(matches!(
        migrate::force(&mut client, 42).await,
        Err(MigrateError::UnknownVersion { .. })
    ));
    assert_eq!(migrate::status(&client).await.unwrap().version, None);
    assert!(matches!(
        migrate::check(&client).await,
        Err(MigrateError::NotMigrated { found: None, .. })
    ));
}

#[actix_rt::test]
async fn up_to_a_version_below_the_current_one_points_to_down() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    migrate::up(&mut client, None).await.unwrap();
    let err = migrate::up(&mut client, Some(1)).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::TargetBelowCurrent { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("pgwake migrate down"));
}

#[actix_rt::test]
async fn triggers_notify_the_queue_and_stop_after_down_to_version_one() {
    let database = fresh_empty_database().await.unwrap();
    let mut client = connect(database.url()).await;
    migrate::up(&mut client, None).await.unwrap();
    let (_listener, mut received) = listen(
        database.url(),
        &["workflow_tasks", "activity_tasks", "probe"],
    )
    .await;

    client
        .batch_execute(
            "INSERT INTO instances (instance_id, execution_id, state, queue) VALUES ('i1', 'e1', 0, 'q1');
             INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
               VALUES ('ev1', 'i1', 'e1', 1, now());
             INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
               VALUES ('a1', 'i1', 'e1', 11, 'q2', now());",
        )
        .await
        .unwrap();
    let seen = drain_until_sentinel(&client, &mut received, "probe").await;
    let seen: Vec<(String, String)> = seen.into_iter().map(|r| (r.channel, r.payload)).collect();
    assert_eq!(
        seen,
        [
            ("workflow_tasks".to_string(), "q1".to_string()),
            ("activity_tasks".to_string(), "q2".to_string())
        ]
    );

    migrate::down(
        &mut client,
        DownSteps::Steps(migrate::newest_version() as u32 - 1),
    )
    .await
    .unwrap();
    assert_eq!(migrate::status(&client).await.unwrap().version, Some(1));
    client
        .batch_execute(
            "INSERT INTO pending_events (event_id, instance_id, execution_id, event_type, timestamp)
               VALUES ('ev2', 'i1', 'e1', 17, now());
             INSERT INTO activities (activity_id, instance_id, execution_id, event_type, queue, timestamp)
               VALUES ('a2', 'i1', 'e1', 11, 'q2', now());",
        )
        .await
        .unwrap();
    let seen = drain_until_sentinel(&client, &mut received, "probe").await;
    assert!(
        seen.is_empty(),
        "no notification at version 1, got {seen:?}"
    );
}
