//! Workflows as ordinary async Rust, replayed from their history.
//!
//! A workflow is an `async fn(WorkflowContext, I) -> Result<O, WorkflowError>`;
//! an activity an `async fn(ActivityContext, I) -> Result<O, ActivityError>`.
//! Register them by name ([`Workflows`], [`Activities`]), give their
//! workers to a [`Runtime`](crate::Runtime), and start and await them with a
//! [`Client`]. Each workflow task runs the workflow's code again from the
//! beginning over the recorded history (one event at a time, polling the
//! code after each), then over the task's new events; the commands the code
//! creates that the history does not hold yet become the task's decision,
//! applied by the store as any other decision (this layer sits on the
//! decider, which stays public).
//!
//! So workflow code must be deterministic: everything it learns from
//! outside comes through the context (activities, timers, signals,
//! [`side_effect`](WorkflowContext::side_effect), [`now`](WorkflowContext::now),
//! [`random_u64`](WorkflowContext::random_u64)). A history the code does not
//! replay (it scheduled `'refund'` where the history has `'charge'`) is a
//! [`ReplayError`]: the task fails and nothing is applied.
//!
//! ```no_run
//! use std::time::Duration;
//! use pgwake::workflow::{
//!     ActivityContext, ActivityError, Activities, Client, StartOptions, WorkflowContext,
//!     WorkflowError, Workflows,
//! };
//! use pgwake::{Runtime, RuntimeConfig};
//!
//! async fn signup(ctx: WorkflowContext, email: String) -> Result<bool, WorkflowError> {
//!     let user: String = ctx.activity("create_user", &email).await?;
//!     let mut confirmed = ctx.signal_channel::<bool>("confirmed");
//!     let mut expiry = ctx.timer(Duration::from_secs(5));
//!     let confirmed = futures::select_biased! {
//!         yes = confirmed.recv() => yes?,
//!         _ = expiry => false,
//!     };
//!     expiry.cancel();
//!     let _: () = ctx.activity("send_welcome", &(user, confirmed)).await?;
//!     Ok(confirmed)
//! }
//!
//! async fn create_user(_: ActivityContext, email: String) -> Result<String, ActivityError> {
//!     Ok(format!("user:{email}"))
//! }
//! async fn send_welcome(_: ActivityContext, _: (String, bool)) -> Result<(), ActivityError> {
//!     Ok(())
//! }
//!
//! # #[actix_rt::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let workflows = Workflows::new().register("signup", signup);
//! let activities = Activities::new()
//!     .register("create_user", create_user)
//!     .register("send_welcome", send_welcome);
//! let runtime = Runtime::builder(RuntimeConfig::new("postgres://postgres@localhost/app"))
//!     .workflow_worker(workflows.worker(["default"]))
//!     .activity_worker(activities.worker(["default"]))
//!     .start()
//!     .await?;
//! let client = Client::new(runtime.store().clone());
//! client.start("signup", "signup-7", &"ada@example.com", StartOptions::default()).await?;
//! client.signal("signup-7", "confirmed", &true).await?;
//! let confirmed: bool = client.result("signup-7", Duration::from_secs(30)).await?;
//! # Ok(()) }
//! ```
//!
//! Workflows compose: [`sub_workflow`](WorkflowContext::sub_workflow)
//! starts a child and gives its result, [`signal_workflow`](WorkflowContext::signal_workflow)
//! signals another instance, [`continue_as_new`](WorkflowContext::continue_as_new)
//! keeps a long-running workflow's history short, and
//! [`patched`](WorkflowContext::patched) lets the code change while
//! executions run. A canceled execution is not stopped: everything it waits
//! for ends with an error of kind `"canceled"` (see
//! [`cancelled`](WorkflowContext::cancelled)), and its code decides what to
//! clean up and how to end.
//!
//! [`WorkflowTester`] unit-tests a workflow without a database: mocked
//! activities, signals at virtual times, and a virtual clock.

mod client;
mod command;
mod context;
mod error;
mod executor;
mod registry;
mod retry;
mod state;
mod tester;

pub use client::{Client, Description, PendingActivity, PendingTimer, StartOptions};
pub use context::{
    ActivityFuture, ActivityOptions, Cancelled, SideEffect, SignalChannel, SignalRecv, SignalSent,
    Sleep, SubWorkflow, SubWorkflowOptions, Timer, WorkflowContext,
};
pub use error::{ActivityError, ClientError, ReplayError, WorkflowError};
pub use registry::{
    Activities, ActivityContext, Executor, Workflows, DEFAULT_CACHE_SIZE,
    DEFAULT_WORKFLOW_CONCURRENCY,
};
pub use retry::RetryPolicy;
pub use tester::{TesterError, WorkflowTester, MAX_TESTER_TASKS};
