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
//! - [`failover`]: `groups.sync`: source consumer groups' offsets translated and
//!   committed to the same groups on the internal cluster;
//! - [`group`]: the connector's consumer group on the external cluster: stored
//!   positions committed for lag tools, read at each start;
//! - [`topics`]: creating the internal and dead-letter topics, and carrying their
//!   source topics' configs;
//! - [`translate`]: exact offset translation, source offset to internal offset, by
//!   bisecting the internal partition.

pub mod catalog;
pub mod definition;
pub mod failover;
pub mod group;
pub mod runtime;
pub mod topics;
pub mod translate;

pub use catalog::Connectors;
pub use definition::{ClusterRole, ConnectorHandle, ConnectorState, Target, Waiting};
pub use runtime::{ConnectorRuntime, Context, ControlError, RunEnd};
