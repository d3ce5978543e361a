//! A connector's definition and what the API sees of it: its config, its partitions'
//! counters and latencies, and the target state (running, paused or stopped) its tasks
//! follow, shared by the runtime, which runs it, and the API, which shows and steers it.
//!
//! The target is durable: it is kept in the WAL's state ([`crate::state`]), so a paused
//! connector stays paused across a restart of the service, as in Kafka Connect.

use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use tracing::info;

use crate::config::ConnectorConfig;
use crate::format::registry::SchemaRegistry;
use crate::metrics::{Latencies, PartitionMetrics, TaskState};
use crate::state::State;
use crate::stop::Gate;
use crate::wal::{Wal, WalError};

pub use crate::state::Target;

/// The connector's state as the API reports it (Kafka Connect's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorState {
    /// Partitions not known yet (the service is starting).
    Unassigned,
    /// Running (some tasks may have failed: see the task list).
    Running,
    /// Paused on request.
    Paused,
    /// Every task failed.
    Failed,
    /// Stopped on request: no tasks.
    Stopped,
}

impl ConnectorState {
    /// Every state.
    pub const ALL: [ConnectorState; 5] = [
        ConnectorState::Unassigned,
        ConnectorState::Running,
        ConnectorState::Paused,
        ConnectorState::Failed,
        ConnectorState::Stopped,
    ];

    /// The API's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            ConnectorState::Unassigned => "UNASSIGNED",
            ConnectorState::Running => "RUNNING",
            ConnectorState::Paused => "PAUSED",
            ConnectorState::Failed => "FAILED",
            ConnectorState::Stopped => "STOPPED",
        }
    }
}

/// One of the two clusters a connector talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterRole {
    /// The source (`connector.kafka.bootstrap.servers`).
    External,
    /// The destination (`internal.bootstrap.servers`).
    Internal,
}

impl ClusterRole {
    pub const ALL: [ClusterRole; 2] = [ClusterRole::External, ClusterRole::Internal];

    /// `external` or `internal`, as logs and metric labels name it.
    pub fn name(self) -> &'static str {
        match self {
            ClusterRole::External => "external",
            ClusterRole::Internal => "internal",
        }
    }

    /// The key that names its bootstrap servers.
    pub fn key(self) -> &'static str {
        match self {
            ClusterRole::External => "connector.kafka.bootstrap.servers",
            ClusterRole::Internal => "internal.bootstrap.servers",
        }
    }
}

/// A start waiting for a cluster that does not answer.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub cluster: ClusterRole,
    /// What the status and `/ready` show.
    pub reason: String,
}

/// One connector as the service runs it.
#[derive(Debug)]
pub struct ConnectorHandle {
    /// Its config (replaced when topics are added at run time).
    config: RwLock<Arc<ConnectorConfig>>,
    /// Why it could not start, if it could not.
    error: std::sync::Mutex<Option<String>>,
    /// Which cluster a start waits for, and why, while it does.
    waiting: std::sync::Mutex<Option<Waiting>>,
    /// The WAL it writes (checkpoints, sizes).
    pub wal: Wal,
    /// Its latency histograms.
    pub latencies: Latencies,
    /// Its schema registry, when `schemas.enable` is set.
    pub registry: Option<Arc<SchemaRegistry>>,
    /// `None` until the first start listed them.
    partitions: RwLock<Option<Vec<Arc<PartitionMetrics>>>>,
    /// Forwarded-record totals sampled over the last minutes (the status page's chart).
    history: std::sync::Mutex<std::collections::VecDeque<Sample>>,
    target: watch::Sender<Target>,
}

impl ConnectorHandle {
    /// The handle of `config`'s connector, paused if it was paused when the service
    /// last ran.
    pub fn open(
        config: ConnectorConfig,
        wal: Wal,
        registry: Option<Arc<SchemaRegistry>>,
    ) -> Result<Self, WalError> {
        let target = State::of(&wal).target(&config.name)?;
        if target != Target::Running {
            info!(connector = %config.name, ?target, "the connector was {} when the service last ran; it stays so until resumed (PUT /connectors/{}/resume)", if target == Target::Paused { "paused" } else { "stopped" }, config.name);
        }
        Ok(Self {
            config: RwLock::new(Arc::new(config)),
            error: std::sync::Mutex::new(None),
            waiting: std::sync::Mutex::new(None),
            wal,
            latencies: Latencies::new(),
            registry,
            partitions: RwLock::new(None),
            history: std::sync::Mutex::new(std::collections::VecDeque::new()),
            target: watch::channel(target).0,
        })
    }

    /// Its current config.
    pub fn config(&self) -> Arc<ConnectorConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the config (the tasks read it at their next start or refresh).
    pub fn set_config(&self, config: ConnectorConfig) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(config);
    }

    /// Records why the connector could not start (`None`: it started).
    pub fn set_error(&self, error: Option<String>) {
        *self.error.lock().unwrap_or_else(|e| e.into_inner()) = error;
    }

    /// Why the connector could not start, if it could not.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Records that the start waits for a cluster that does not answer (`None` once
    /// it does).
    pub fn set_waiting(&self, waiting: Option<Waiting>) {
        *self.waiting.lock().unwrap_or_else(|e| e.into_inner()) = waiting;
    }

    /// Why the start waits for a cluster, while it does.
    pub fn waiting(&self) -> Option<String> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|w| w.reason.clone())
    }

    /// Which cluster the start waits for, while it does.
    pub fn waiting_for(&self) -> Option<ClusterRole> {
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|w| w.cluster)
    }

    /// Publishes the partitions once they are known.
    pub fn set_partitions(&self, partitions: Vec<Arc<PartitionMetrics>>) {
        *self.partitions.write().unwrap_or_else(|e| e.into_inner()) = Some(partitions);
    }

    /// The partitions' counters (empty while starting).
    pub fn partitions(&self) -> Vec<Arc<PartitionMetrics>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Whether the partitions were listed (the first start got that far).
    fn assigned(&self) -> bool {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// What the tasks should be doing.
    pub fn target(&self) -> Target {
        *self.target.borrow()
    }

    /// A gate the connector's tasks wait at while it is paused.
    pub fn gate(&self) -> Gate {
        Gate::new(self.target.subscribe())
    }

    /// Stores the target, durably first (a pause acknowledged by the API survives a
    /// crash), and opens or closes the gate. The tasks are started or stopped by
    /// [`super::ConnectorRuntime::set_target`], the one caller.
    pub(super) async fn store_target(&self, target: Target) -> Result<(), WalError> {
        let name = self.config().name.clone();
        State::of(&self.wal).set_target(&name, target)?;
        self.wal.commit().await?;
        if self.target.send_replace(target) != target {
            info!(connector = %name, ?target, "connector target changed");
        }
        Ok(())
    }

    /// The connector's state, from its target and its tasks' states.
    pub fn state(&self) -> ConnectorState {
        if self.target() == Target::Stopped {
            return ConnectorState::Stopped;
        }
        if self.error().is_some() {
            return ConnectorState::Failed;
        }
        if !self.assigned() || self.waiting().is_some() {
            return ConnectorState::Unassigned;
        }
        let partitions = self.partitions();
        if !partitions.is_empty() && partitions.iter().all(|p| p.state() == TaskState::Failed) {
            return ConnectorState::Failed;
        }
        match self.target() {
            Target::Running => ConnectorState::Running,
            Target::Paused | Target::Stopped => ConnectorState::Paused,
        }
    }

    /// Whether every running task has fetched and forwarded at least once (or has
    /// nothing to forward), so the pipeline is proven end to end. A stopped connector
    /// is ready: it has nothing to do.
    pub fn ready(&self) -> bool {
        if self.target() == Target::Stopped {
            return true;
        }
        self.assigned()
            && self.waiting().is_none()
            && self.partitions().iter().all(|p| match p.state() {
                TaskState::Running => {
                    p.fetched_once.load(std::sync::atomic::Ordering::Relaxed)
                        && p.forwarder_ready.load(std::sync::atomic::Ordering::Relaxed)
                }
                TaskState::Starting => false,
                TaskState::Paused | TaskState::Failed | TaskState::Stopped => true,
            })
    }
}

/// Records forwarded by a connector up to a moment (its partitions' counters summed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// Records acknowledged by the internal cluster since the service started.
    pub forwarded: u64,
}

/// How many samples [`ConnectorHandle::sample`] keeps (at one per 5 s: 6 minutes).
pub const HISTORY: usize = 72;

impl ConnectorHandle {
    /// Records the forwarded total now, keeping the last [`HISTORY`] samples.
    pub fn sample(&self) {
        let forwarded = self
            .partitions()
            .iter()
            .map(|p| {
                p.forwarded_records
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or_default();
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history.push_back(Sample { at, forwarded });
        while history.len() > HISTORY {
            history.pop_front();
        }
    }

    /// Forwarding rates between consecutive samples: (seconds since the epoch at the end
    /// of the interval, records per second). A counter that went down (the tasks were
    /// restarted) counts from zero.
    pub fn throughput(&self) -> Vec<(f64, f64)> {
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        history
            .iter()
            .zip(history.iter().skip(1))
            .map(|(a, b)| {
                let records = if b.forwarded >= a.forwarded {
                    b.forwarded - a.forwarded
                } else {
                    b.forwarded
                };
                (b.at, records as f64 / (b.at - a.at).max(1e-3))
            })
            .collect()
    }
}
