//! Sub-workflows, signals between workflows, cancellation with cleanup and
//! `patched`, through `pgwake::workflow` against a real PostgreSQL (issue
//! #11): what go-workflows' end-to-end suite, ported in `e2e.rs`, does not
//! check. The Go cases themselves (`SubWorkflow/*`,
//! `Timer/CancelWorkflowInstance`, `ContinueAsNew/*`) are in `e2e.rs`.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, ClientError, StartOptions, WorkflowContext,
    WorkflowError, Workflows,
};
use pgwake::{EventType, Runtime, RuntimeConfig, RuntimeHandle};

const WAIT: Duration = Duration::from_secs(30);

async fn start(url: &str, workflows: &Workflows, activities: &Activities) -> RuntimeHandle {
    Runtime::builder(RuntimeConfig::new(url))
        .workflow_worker(workflows.worker(["default"]).concurrency(4))
        .activity_worker(activities.worker(["default"]).concurrency(4))
        .start()
        .await
        .unwrap()
}

async fn history_types(runtime: &RuntimeHandle, id: &str) -> Vec<EventType> {
    let snapshot = runtime.store().instance(id).await.unwrap().unwrap();
    snapshot.history.iter().map(|e| e.event_type).collect()
}

#[actix_rt::test]
async fn a_childs_typed_error_reaches_the_parent_with_its_kind_and_details() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new()
        .register("refuse", |_: WorkflowContext, _: ()| async move {
            Err::<(), _>(
                WorkflowError::new("declined", "no stock")
                    .with_details(serde_json::json!({"sku": 7})),
            )
        })
        .register("parent", |ctx: WorkflowContext, _: ()| async move {
            let refused = ctx.sub_workflow::<()>("refuse", &()).await.unwrap_err();
            Ok::<_, WorkflowError>((
                refused.kind().to_string(),
                refused.message().to_string(),
                refused.details()["sku"].clone(),
            ))
        });
    let runtime = start(database.url(), &workflows, &Activities::new()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("parent", "refused-parent", &(), StartOptions::default())
        .await
        .unwrap();
    let (kind, message, sku): (String, String, serde_json::Value) =
        client.result("refused-parent", WAIT).await.unwrap();
    assert_eq!(kind, "declined");
    assert_eq!(message, "no stock");
    assert_eq!(sku, 7);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_signal_to_an_instance_without_an_execution_fails_the_senders_future() {
    let database = fresh_database().await.unwrap();
    let workflows = Workflows::new().register("sender", |ctx: WorkflowContext, _: ()| async move {
        let err = ctx
            .signal_workflow("nobody-home", "ping", &1)
            .await
            .unwrap_err();
        Ok::<_, WorkflowError>((err.kind().to_string(), err.message().to_string()))
    });
    let runtime = start(database.url(), &workflows, &Activities::new()).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("sender", "lonely", &(), StartOptions::default())
        .await
        .unwrap();
    let (kind, message): (String, String) = client.result("lonely", WAIT).await.unwrap();
    assert_eq!(kind, "not_found");
    assert!(message.contains("nobody-home"), "{message}");
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_canceled_workflow_runs_its_cleanup_then_ends_canceled() {
    // go-workflows' `Timer/CancelWorkflowInstance` (in e2e.rs) ignores the
    // cancellation and completes; this workflow cleans up after it, then
    // lets the canceled error end it as canceled.
    let database = fresh_database().await.unwrap();
    let released = Arc::new(AtomicUsize::new(0));
    let counter = released.clone();
    let activities = Activities::new().register("release", move |_: ActivityContext, _: ()| {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ActivityError>(())
        }
    });
    let workflows =
        Workflows::new().register("cleans_up", |ctx: WorkflowContext, _: ()| async move {
            let mut go = ctx.signal_channel::<()>("go");
            let waited = go.recv().await;
            if ctx.is_cancelled() {
                let _: () = ctx.activity("release", &()).await?;
            }
            waited
        });
    let runtime = start(database.url(), &workflows, &activities).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("cleans_up", "tc-cleans", &(), StartOptions::default())
        .await
        .unwrap();
    support::eventually(WAIT, "the first task is done", || async {
        let snapshot = runtime
            .store()
            .instance("tc-cleans")
            .await
            .unwrap()
            .unwrap();
        !snapshot.history.is_empty()
    })
    .await;
    client.cancel("tc-cleans").await.unwrap();
    match client.result::<()>("tc-cleans", WAIT).await {
        Err(ClientError::Canceled { instance_id }) => assert_eq!(instance_id, "tc-cleans"),
        other => panic!("expected the workflow to end canceled, got {other:?}"),
    }
    assert_eq!(released.load(Ordering::SeqCst), 1);
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn patched_keeps_running_executions_on_the_old_branch_and_new_ones_on_the_new() {
    let database = fresh_database().await.unwrap();
    let activities = Activities::new()
        .register("old_step", |_: ActivityContext, _: ()| async move {
            Ok::<_, ActivityError>("old".to_string())
        })
        .register("new_step", |_: ActivityContext, _: ()| async move {
            Ok::<_, ActivityError>("new".to_string())
        });
    // Version 1: one step, then a signal.
    let v1 = Workflows::new().register("order", |ctx: WorkflowContext, _: ()| async move {
        let step: String = ctx.activity("old_step", &()).await?;
        ctx.signal_channel::<()>("go").recv().await?;
        Ok::<_, WorkflowError>(step)
    });
    let runtime = start(database.url(), &v1, &activities).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("order", "running-before", &(), StartOptions::default())
        .await
        .unwrap();
    support::eventually(WAIT, "the old step is done", || async {
        let snapshot = runtime
            .store()
            .instance("running-before")
            .await
            .unwrap()
            .unwrap();
        snapshot
            .history
            .iter()
            .any(|e| e.event_type == EventType::ActivityCompleted)
    })
    .await;
    runtime.shutdown(Duration::from_secs(5)).await;

    // Version 2, deployed while it runs.
    let v2 = Workflows::new().register("order", |ctx: WorkflowContext, _: ()| async move {
        let name = if ctx.patched("new-step") {
            "new_step"
        } else {
            "old_step"
        };
        let step: String = ctx.activity(name, &()).await?;
        ctx.signal_channel::<()>("go").recv().await?;
        Ok::<_, WorkflowError>(step)
    });
    let runtime = start(database.url(), &v2, &activities).await;
    let client = Client::new(runtime.store().clone());
    client
        .start("order", "started-after", &(), StartOptions::default())
        .await
        .unwrap();
    for id in ["running-before", "started-after"] {
        client.signal(id, "go", &()).await.unwrap();
    }
    assert_eq!(
        client
            .result::<String>("running-before", WAIT)
            .await
            .unwrap(),
        "old"
    );
    assert_eq!(
        client
            .result::<String>("started-after", WAIT)
            .await
            .unwrap(),
        "new"
    );
    assert!(history_types(&runtime, "started-after")
        .await
        .contains(&EventType::Patched));
    assert!(!history_types(&runtime, "running-before")
        .await
        .contains(&EventType::Patched));
    runtime.shutdown(Duration::from_secs(5)).await;
}
