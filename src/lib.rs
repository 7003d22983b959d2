#![doc = include_str!("../docs/crate.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod config;
pub mod connection;
pub mod error;
mod kinds;
pub mod metrics;
pub mod migrate;
pub mod runtime;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod workflow;

pub use config::RuntimeConfig;
pub use connection::ConnectionConfig;
pub use error::{BuildError, ConnectError, MigrateError, RuntimeError, StoreError};
pub use runtime::{
    ActivityWorker, Health, ListenerHealth, ListenerState, QueueCounters, Runtime, RuntimeBuilder,
    RuntimeHandle, ShutdownReport, TaskKind, WorkerHealth, WorkflowWorker,
};
pub use store::{
    queues, ActivityTask, CancelOutcome, Event, EventType, InstanceRef, InstanceSnapshot,
    InstanceState, Lease, NewInstance, Queue, QueueStats, Store, StoreOptions, WakeToken, WorkerId,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask,
};

// The README's examples are compiled and run as doctests too; the crate's
// front page is the short guide above.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
