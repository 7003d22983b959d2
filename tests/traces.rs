//! Trace context from the caller into its workflow (issue #16, item 4): a
//! `tracing` span around `Client::start`, exported through
//! tracing-opentelemetry, is the parent of the instance's `workflow_task`
//! and `activity` spans, and a sub-workflow's spans continue the parent's
//! trace, against a real PostgreSQL.
//!
//! One subscriber is installed for the whole binary (the runtime's actors
//! run on threads of their own, out of reach of a thread's default), so
//! each test picks its spans out of the shared exporter by instance id.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use pgwake::testing::fresh_database;
use pgwake::workflow::{
    Activities, ActivityContext, ActivityError, Client, StartOptions, SubWorkflowOptions,
    WorkflowContext, WorkflowError, Workflows,
};
use pgwake::{Runtime, RuntimeConfig, RuntimeHandle};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(30);

/// The provider and exporter behind the binary's global subscriber.
struct Tracing {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
}

fn otel() -> &'static Tracing {
    static TRACING: OnceLock<Tracing> = OnceLock::new();
    TRACING.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        // The simple processor exports each span as it ends: nothing is
        // left in a batch when the test reads the exporter.
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("pgwake-tests"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only subscriber of this test binary");
        Tracing { provider, exporter }
    })
}

/// The finished spans named `name` whose `instance_id` attribute is `instance`.
fn spans_of(name: &str, instance: &str) -> Vec<SpanData> {
    let tracing = otel();
    tracing.provider.force_flush().unwrap();
    tracing
        .exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.name == name)
        .filter(|span| {
            span.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "instance_id" && kv.value.as_str() == instance)
        })
        .collect()
}

async fn start(url: &str, workflows: &Workflows, activities: &Activities) -> RuntimeHandle {
    Runtime::builder(RuntimeConfig::new(url))
        .workflow_worker(workflows.worker(["default"]).concurrency(4))
        .activity_worker(activities.worker(["default"]).concurrency(4))
        .start()
        .await
        .unwrap()
}

fn registries() -> (Workflows, Activities) {
    let workflows = Workflows::new()
        .register("child", |ctx: WorkflowContext, n: u32| async move {
            let doubled: u32 = ctx.activity("double", &n).await?;
            Ok::<_, WorkflowError>(doubled)
        })
        .register("parent", |ctx: WorkflowContext, n: u32| async move {
            let doubled: u32 = ctx.activity("double", &n).await?;
            let child_id = format!("{}-child", ctx.instance().instance_id);
            let options = SubWorkflowOptions::default().instance_id(child_id);
            let again: u32 = ctx.sub_workflow_with("child", &doubled, options).await?;
            Ok::<_, WorkflowError>(again)
        });
    let activities = Activities::new()
        .register("double", |_: ActivityContext, n: u32| async move {
            Ok::<_, ActivityError>(n * 2)
        });
    (workflows, activities)
}

#[actix_rt::test]
async fn a_trace_around_start_holds_the_workflow_activity_and_child_spans() {
    otel();
    let database = fresh_database().await.unwrap();
    let (workflows, activities) = registries();
    let runtime = start(database.url(), &workflows, &activities).await;
    let client = Client::new(runtime.store().clone());

    let request = tracing::info_span!("request");
    let request_cx = request.context();
    let (trace_id, request_id) = {
        let span = request_cx.span();
        (
            span.span_context().trace_id(),
            span.span_context().span_id(),
        )
    };
    assert_ne!(trace_id, TraceId::INVALID, "the test's subscriber is on");
    client
        .start("parent", "traced", &3u32, StartOptions::default())
        .instrument(request)
        .await
        .unwrap();
    let result: u32 = client.result("traced", WAIT).await.unwrap();
    assert_eq!(result, 12);

    // The caller's context is stored next to the workflow's name.
    let metadata = runtime
        .store()
        .instance("traced")
        .await
        .unwrap()
        .unwrap()
        .metadata;
    let metadata = metadata.unwrap();
    assert_eq!(metadata["workflow"], "parent");
    assert_eq!(
        metadata["traceparent"],
        format!("00-{trace_id}-{request_id}-01")
    );

    let parent_tasks = spans_of("workflow_task", "traced");
    let parent_activities = spans_of("activity", "traced");
    let child_tasks = spans_of("workflow_task", "traced-child");
    let child_activities = spans_of("activity", "traced-child");
    // Start, activity done, child done: at least three tasks; a task may
    // also be retried, never fewer.
    assert!(parent_tasks.len() >= 3, "{parent_tasks:#?}");
    assert!(child_tasks.len() >= 2, "{child_tasks:#?}");
    assert_eq!(parent_activities.len(), 1, "{parent_activities:#?}");
    assert_eq!(child_activities.len(), 1, "{child_activities:#?}");
    for span in parent_tasks
        .iter()
        .chain(&parent_activities)
        .chain(&child_tasks)
        .chain(&child_activities)
    {
        assert_eq!(span.span_context.trace_id(), trace_id, "{span:#?}");
        assert!(span.parent_span_is_remote, "{span:#?}");
    }
    // The parent's spans hang under the request ...
    for span in parent_tasks.iter().chain(&parent_activities) {
        assert_eq!(span.parent_span_id, request_id, "{span:#?}");
    }
    // ... the child's under the parent's task that started it.
    let parent_task_ids: Vec<SpanId> = parent_tasks
        .iter()
        .map(|s| s.span_context.span_id())
        .collect();
    let starter = child_tasks[0].parent_span_id;
    assert!(parent_task_ids.contains(&starter), "{child_tasks:#?}");
    for span in child_tasks.iter().chain(&child_activities) {
        assert_eq!(span.parent_span_id, starter, "{span:#?}");
    }
    let activity = &parent_activities[0];
    let attribute = |key: &str| {
        activity
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attribute("name").as_deref(), Some("double"));
    let workflow = |span: &SpanData| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == "workflow")
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(workflow(&parent_tasks[0]).as_deref(), Some("parent"));
    assert_eq!(workflow(&child_tasks[0]).as_deref(), Some("child"));
    assert_eq!(attribute("attempt").as_deref(), Some("1"));
    runtime.shutdown(Duration::from_secs(5)).await;
}

#[actix_rt::test]
async fn a_start_outside_any_span_stores_no_trace_and_its_spans_start_their_own() {
    otel();
    let database = fresh_database().await.unwrap();
    let (workflows, activities) = registries();
    let runtime = start(database.url(), &workflows, &activities).await;
    let client = Client::new(runtime.store().clone());

    client
        .start("parent", "untraced", &1u32, StartOptions::default())
        .await
        .unwrap();
    let result: u32 = client.result("untraced", WAIT).await.unwrap();
    assert_eq!(result, 4);

    let store = runtime.store();
    let metadata = store
        .instance("untraced")
        .await
        .unwrap()
        .unwrap()
        .metadata
        .unwrap();
    let keys: Vec<&String> = metadata.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["workflow"], "{metadata}");
    // With nothing to restore, each span of the parent roots a trace of its
    // own ...
    let parent_tasks = spans_of("workflow_task", "untraced");
    assert!(!parent_tasks.is_empty());
    for span in parent_tasks.iter().chain(&spans_of("activity", "untraced")) {
        assert_eq!(span.parent_span_id, SpanId::INVALID, "{span:#?}");
    }
    // ... and the child's continue the trace of the parent's task that
    // started it, whose context its metadata holds.
    let child = store
        .instance("untraced-child")
        .await
        .unwrap()
        .unwrap()
        .metadata
        .unwrap();
    let starter = parent_tasks
        .iter()
        .find(|s| {
            child["traceparent"]
                == format!(
                    "00-{}-{}-01",
                    s.span_context.trace_id(),
                    s.span_context.span_id()
                )
        })
        .unwrap_or_else(|| panic!("{child} names none of {parent_tasks:#?}"));
    let child_tasks = spans_of("workflow_task", "untraced-child");
    assert!(!child_tasks.is_empty());
    for span in child_tasks
        .iter()
        .chain(&spans_of("activity", "untraced-child"))
    {
        assert_eq!(
            span.span_context.trace_id(),
            starter.span_context.trace_id()
        );
        assert_eq!(span.parent_span_id, starter.span_context.span_id());
    }
    runtime.shutdown(Duration::from_secs(5)).await;
}
