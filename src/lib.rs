#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod connection;
pub mod error;
pub mod migrate;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use connection::ConnectionConfig;
pub use error::{ConnectError, MigrateError, StoreError};
pub use store::{
    queues, ActivityTask, CancelOutcome, Event, EventType, InstanceRef, InstanceSnapshot,
    InstanceState, Lease, NewInstance, Queue, QueueStats, Store, StoreOptions, WorkerId,
    WorkflowCompletion, WorkflowOutcome, WorkflowTask,
};
