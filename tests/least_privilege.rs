//! The runtime needs no more than this: use of the five tables and their
//! sequences, reading the schema version, and LISTEN (which needs no grant).
//! The README's security review quotes these grants.

mod support;

use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::{
    ActivityTask, ActivityWorker, EventType, NewInstance, Queue, Runtime, RuntimeConfig,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask, WorkflowWorker,
};
use serde_json::json;

/// The grants, as an operator would run them (the role name is the only variable).
const GRANTS: &str = "
    GRANT USAGE ON SCHEMA public TO pgwake_runtime;
    GRANT SELECT, INSERT, UPDATE, DELETE
       ON instances, pending_events, history, activities, attributes TO pgwake_runtime;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO pgwake_runtime;
    GRANT SELECT ON schema_migrations TO pgwake_runtime;";

#[actix_rt::test]
async fn the_runtime_runs_a_workflow_as_a_role_with_only_the_documented_grants() {
    let database = fresh_database().await.unwrap();
    let admin = support::connect(database.url()).await;
    // Roles are cluster-wide: another test run on a shared server may have made it.
    admin
        .batch_execute(
            "DO $$ BEGIN
               CREATE ROLE pgwake_runtime LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
             EXCEPTION WHEN duplicate_object THEN NULL;
             END $$",
        )
        .await
        .unwrap();
    admin.batch_execute(GRANTS).await.unwrap();
    let url = database
        .url()
        .replacen("postgres://postgres@", "postgres://pgwake_runtime@", 1);
    assert_ne!(url, database.url(), "the URL names the restricted role");

    let workflows = WorkflowWorker::new(["flows"], |task: WorkflowTask| async move {
        let mut decision = WorkflowCompletion::default();
        for event in &task.new_events {
            decision = match event.event_type {
                EventType::WorkflowExecutionStarted => {
                    decision.start_timer(Duration::from_millis(100), json!(null))
                }
                EventType::TimerFired => decision.schedule_activity("step", json!(1), None),
                EventType::ActivityCompleted => {
                    decision.finish(WorkflowOutcome::Completed(json!("ok")))
                }
                _ => decision,
            };
        }
        Ok::<_, String>(decision)
    });
    let activities = ActivityWorker::new(["flows"], |_: ActivityTask| async {
        Ok::<_, String>(json!(2))
    });
    let runtime = Runtime::builder(RuntimeConfig::new(&url))
        .workflow_worker(workflows)
        .activity_worker(activities)
        .start()
        .await
        .expect("the restricted role can start the runtime");
    runtime
        .store()
        .create_instance(NewInstance::new("restricted", Queue::new("flows").unwrap()))
        .await
        .unwrap();
    support::eventually(
        Duration::from_secs(10),
        "the workflow to finish",
        || async {
            let snapshot = runtime
                .store()
                .instance("restricted")
                .await
                .unwrap()
                .unwrap();
            snapshot.state == pgwake::InstanceState::Finished
        },
    )
    .await;
    assert!(runtime.health().all_listening(), "LISTEN needs no grant");
    runtime
        .store()
        .remove_instance("restricted")
        .await
        .expect("cleanup works with DELETE alone");

    // And it can do nothing else: no DDL, no reading other tables.
    let restricted = support::connect(&url).await;
    let err = restricted
        .batch_execute("DROP TABLE activities")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("db error"), "{err}");
    let err = restricted
        .batch_execute("CREATE TABLE sneaky (x int)")
        .await
        .unwrap_err();
    assert!(err.as_db_error().is_some(), "{err}");
    runtime.shutdown(Duration::from_secs(5)).await;
}
