//! Connectors: what one is, what runs for it, and the service's list of them.
//!
//! - [`definition`]: the durable definition and what the API sees of it: the config,
//!   the target state (running, paused, stopped; kept in the WAL's state), the gate the
//!   tasks wait at while paused, the partition counters and the throughput history;
//! - [`runtime`]: the running tasks: list the partitions (this shard's), create the
//!   internal and dead-letter topics, the start-up tail check, one fetcher and one
//!   forwarder per partition, their supervision, metadata refresh, stop and restart,
//!   and offset changes with their barriers. [`ConnectorRuntime::set_target`] is the one
//!   way to change a target: it stores it, then starts or stops the tasks;
//! - [`catalog`]: the connectors of a service: the file's and those created through
//!   the API (their settings kept in the WAL's state), create, change, delete;
//! - [`topics`]: creating the internal and dead-letter topics.

pub mod catalog;
pub mod definition;
pub mod runtime;
pub mod topics;

pub use catalog::Connectors;
pub use definition::{ConnectorHandle, ConnectorState, Target};
pub use runtime::{ConnectorRuntime, Context, ControlError, RunEnd};
