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
/// A web dashboard of queues, instances and their histories, with operator
/// actions, mountable in an actix-web app (the `dashboard` feature).
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod error;
mod kinds;
pub mod metrics;
pub mod migrate;
pub mod runtime;
pub mod schedule;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod trace_context;
pub mod workflow;

/// The PostgreSQL driver pgwake is built on, re-exported so that the types
/// pgwake's signatures use are always of pgwake's version: its `Client`
/// ([`ConnectionConfig::connect`], the [`migrate`] functions, your own
/// queries), `Config` ([`ConnectionConfig::postgres_config`]), `Error` (the
/// source of [`ConnectError`] and [`StoreError`] database errors) and
/// `AsyncMessage` ([`connection::RawConnection::poll_message`]). Deliberate:
/// wrapping them would hide what users already know how to use.
pub use tokio_postgres;

/// The connection pool pgwake's [`Store`] runs on, re-exported for the same
/// reason: its `Pool` ([`Store::new`], [`Store::pool`]) and `Transaction`,
/// the caller's transaction of the transactional writes
/// ([`workflow::Client::start_in`], [`Store::create_instance_in`] ...).
pub use deadpool_postgres;

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
