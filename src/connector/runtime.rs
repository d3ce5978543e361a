//! One connector's tasks: started, stopped and restarted as a whole, by the service at
//! start-up and shutdown and by the API (stop, resume from stopped, restart), with the
//! offset changes that are allowed only while it is stopped.
//!
//! A start connects to the external cluster, lists the configured topics' partitions,
//! prepares the internal topics and the dead-letter topic, then runs one fetcher and one
//! forwarder per partition under a supervisor task, which collects their ends. A cluster
//! that does not answer is waited for, with backoff; while the internal one does not,
//! the partitions with a stored position are fetched into the WAL (the spool).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use kafka_protocol::ResponseError;

use super::group::{self, SourceGroup};
use super::topics::{
    ensure_dead_letter_topic, ensure_internal_topics, retry_start_up, sync_topic_configs,
};
use super::translate::{self, Translation};
use crate::config::{ConnectorConfig, Format, OffsetReset, ServiceConfig};
use crate::connector::{ClusterRole, ConnectorHandle, Target, Waiting};
use crate::format::Formatter;
use crate::forward::dead_letter::{self, DeadLetterSender, DeadLetters};
use crate::forward::{Forwarder, SinkError};
use crate::kafka::cluster::{Cluster, ClusterError};
use crate::kafka::group::GroupClient;
use crate::kafka::leaders::Leaders;
use crate::kafka::produce::PartitionWriter;
use crate::kafka::settle::Settling;
use crate::metrics::{PartitionMetrics, TaskState};
use crate::record::SourcePartition;
use crate::service::ServiceError;
use crate::source::{Fetcher, SourceError};
use crate::state::State;
use crate::stop::Stop;
use crate::wal::{Wal, WalError};

/// What every connector of the service shares.
#[derive(Debug)]
pub struct Context {
    /// The service's settings (internal cluster, tuning).
    pub config: ServiceConfig,
    /// The WAL.
    pub wal: Wal,
    /// The internal cluster.
    pub internal: Cluster,
    /// Its leaders' sessions, which every forwarder shares.
    pub producers: Arc<crate::kafka::producers::Producers>,
    /// Fires on a WAL storage failure: every task of every connector stops.
    pub stop: Stop,
    /// Each run's end, for the service's main loop.
    pub ended: mpsc::UnboundedSender<(String, RunEnd)>,
}

impl Context {}

/// How a run of a connector's tasks ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Stopped on request (shutdown, stop, restart).
    Stopped,
    /// Every task stopped on an error; the first one.
    AllFailed(String),
}

enum TaskEnd {
    Source(Result<(), SourceError>),
    Sink(Result<(), SinkError>),
}

struct Run {
    cancel: CancellationToken,
    /// Prepares the run (waiting for a cluster that does not answer, spooling
    /// meanwhile), then supervises its tasks; gives back what the stop finishes with
    /// once they started.
    task: tokio::task::JoinHandle<Option<Launched>>,
}

/// What a run whose tasks started leaves for its stop.
struct Launched {
    dead_letters: Option<Arc<DeadLetters>>,
    /// Commits the stored positions to the connector's group; ends with the run and
    /// gives the group back for the last commit.
    committer: tokio::task::JoinHandle<SourceGroup>,
    /// Carries the `groups.sync` groups over to the internal cluster.
    failover: tokio::task::JoinHandle<()>,
}

/// What a start found on the external cluster.
struct Discovered {
    source_cluster: Cluster,
    source_topics: BTreeMap<String, usize>,
    /// The configured topics' partitions that this shard runs.
    partitions: Vec<SourcePartition>,
}

/// What a run's tasks need from the internal cluster before they start.
struct Prepared {
    group: SourceGroup,
    /// The group's committed offsets: the starts of partitions without a position.
    group_offsets: BTreeMap<SourcePartition, i64>,
    dead_letters: Option<Arc<DeadLetters>>,
}

/// How far a start's first attempt got.
enum Begun {
    Prepared(Box<(Discovered, Prepared)>),
    /// The external cluster did not answer.
    WaitingForExternal(ServiceError),
    /// The internal cluster did not answer.
    WaitingForInternal(Box<Discovered>, ServiceError),
}

/// Whether a start that failed this way waits for the cluster and tries again: it did
/// not answer (a refusal, such as TLS or authentication, or a missing topic, is final).
fn waits_for_cluster(e: &ServiceError) -> bool {
    matches!(e, ServiceError::Cluster(c) if c.is_unanswered())
}

/// The fetchers that store a partition's records in the WAL while the internal cluster
/// does not answer (only for partitions with a stored position: where a partition
/// without one starts depends on what the internal topic holds).
struct Spool {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    leaders: Arc<Leaders>,
    metrics: BTreeMap<SourcePartition, Arc<PartitionMetrics>>,
}

impl Spool {
    /// Stops the fetchers, each after its WAL commit in progress; the metrics to go on
    /// with.
    async fn finish(
        mut self,
    ) -> (
        Arc<Leaders>,
        BTreeMap<SourcePartition, Arc<PartitionMetrics>>,
    ) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        (self.leaders, self.metrics)
    }
}

/// The in-doubt flags of a run's forwarders (one per partition, added as partitions
/// start).
type InDoubt = Arc<std::sync::Mutex<Vec<Arc<AtomicBool>>>>;

fn any_in_doubt(flags: &InDoubt) -> bool {
    flags
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|f| f.load(Ordering::Relaxed))
}

/// Why an API request on a connector's lifecycle or offsets was refused.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The request does not fit the connector's state or config (HTTP 400).
    #[error("{0}")]
    Refused(String),
    /// The request conflicts with another connector or with the config file (HTTP 409).
    #[error("{0}")]
    Conflict(String),
    /// No connector of that name (HTTP 404).
    #[error("connector {0} not found")]
    NotFound(String),
    /// Starting failed.
    #[error(transparent)]
    Service(Box<ServiceError>),
    /// The WAL failed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// The internal cluster failed.
    #[error(transparent)]
    Cluster(Box<ClusterError>),
}

impl From<ServiceError> for ControlError {
    fn from(e: ServiceError) -> Self {
        ControlError::Service(Box::new(e))
    }
}

impl From<ControlError> for ServiceError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Service(e) => *e,
            ControlError::Wal(e) => ServiceError::Wal(e),
            ControlError::Cluster(e) => ServiceError::Cluster(*e),
            refused => ServiceError::Config(refused.to_string()),
        }
    }
}

impl From<ClusterError> for ControlError {
    fn from(e: ClusterError) -> Self {
        ControlError::Cluster(Box::new(e))
    }
}

/// One connector and, while it runs, its tasks.
#[derive(Debug)]
pub struct ConnectorRuntime {
    /// What the API shows and steers.
    pub handle: Arc<ConnectorHandle>,
    ctx: Arc<Context>,
    run: Mutex<Option<Run>>,
    /// Whether the next start must let the internal partitions' ends settle (a request
    /// of an earlier run may still be pending).
    settle: AtomicBool,
    /// Wakes the supervisor for a metadata refresh before its next tick.
    refresh: Arc<Notify>,
    /// The current (or last) run's forwarders' in-doubt flags.
    in_doubt: std::sync::Mutex<InDoubt>,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Run").finish_non_exhaustive()
    }
}

/// The internal offset below which records predate an offset change of `partition`
/// (0 when its offsets were never changed).
fn barrier(wal: &Wal, connector: &str, partition: &SourcePartition) -> Result<i64, WalError> {
    State::of(wal).barrier(connector, partition)
}

impl ConnectorRuntime {
    /// A connector, not started.
    pub fn new(handle: Arc<ConnectorHandle>, ctx: Arc<Context>, settle: bool) -> Self {
        Self {
            handle,
            ctx,
            run: Mutex::new(None),
            settle: AtomicBool::new(settle),
            refresh: Arc::new(Notify::new()),
            in_doubt: std::sync::Mutex::new(InDoubt::default()),
        }
    }

    /// Looks for new partitions (of topics added to the config) now.
    pub fn refresh_now(&self) {
        self.refresh.notify_one();
    }

    /// Starts the tasks unless the connector is stopped or already running.
    /// A failure to start is also kept in the handle (the status shows it) until a
    /// start succeeds. A cluster that does not answer is not a failure: the run waits
    /// for it in the background, retrying with backoff, its status saying so, and
    /// stores the records of partitions with a stored position in the WAL meanwhile.
    pub async fn start(self: &Arc<Self>) -> Result<(), ServiceError> {
        let mut run = self.run.lock().await;
        if run.is_some() || self.handle.target() == Target::Stopped {
            return Ok(());
        }
        match self.start_tasks().await {
            Ok(started) => {
                *run = Some(started);
                Ok(())
            }
            Err(e) => {
                self.handle.set_error(Some(e.to_string()));
                Err(e)
            }
        }
    }

    /// Stops the tasks (each after its produce in flight) and waits for them.
    pub async fn stop(&self) -> Result<(), WalError> {
        let mut run = self.run.lock().await;
        let Some(current) = run.take() else {
            return Ok(());
        };
        current.cancel.cancel();
        let launched = current.task.await.ok().flatten();
        self.handle.set_waiting(None);
        let Some(launched) = launched else {
            return Ok(());
        };
        let _ = launched.failover.await;
        if let Ok(mut group) = launched.committer.await {
            // Every forwarder has stopped: the positions are final.
            group.flush(&self.ctx.wal, &self.handle.partitions()).await;
        }
        if any_in_doubt(&self.run_in_doubt()) {
            self.settle.store(true, Ordering::Relaxed);
        } else if let Some(dlq) = &launched.dead_letters {
            dlq.persist()?;
        }
        Ok(())
    }

    /// Whether nothing of this connector may still be pending at the internal cluster:
    /// no produce in doubt, and no settle owed by an earlier crash or in-doubt stop.
    pub fn clean(&self) -> bool {
        !self.settle.load(Ordering::Relaxed) && !any_in_doubt(&self.run_in_doubt())
    }

    fn run_in_doubt(&self) -> InDoubt {
        Arc::clone(&self.in_doubt.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Sets the target (durably), starting or stopping the tasks as it asks.
    pub async fn set_target(self: &Arc<Self>, target: Target) -> Result<(), ControlError> {
        self.handle.store_target(target).await?;
        match target {
            Target::Stopped => self.stop().await?,
            Target::Running | Target::Paused => self.start().await?,
        }
        Ok(())
    }

    /// Stops and starts the tasks again (a no-op for a stopped connector).
    pub async fn restart(self: &Arc<Self>) -> Result<(), ControlError> {
        self.stop().await?;
        self.start().await?;
        Ok(())
    }

    /// Moves the source positions of a stopped connector: each partition to the given
    /// offset, or with `None` back to `auto.offset.reset`. The WAL's unforwarded entries
    /// of those partitions are dropped. Records below the new position that the internal
    /// topic already holds are copied again on purpose: the internal partition's current
    /// end becomes a barrier below which the start-up tail check ignores what it finds.
    pub async fn alter_offsets(
        &self,
        changes: &[(SourcePartition, Option<i64>)],
    ) -> Result<(), ControlError> {
        let run = self.run.lock().await;
        let connector = self.handle.config();
        let name = &connector.name;
        if run.is_some() || self.handle.target() != Target::Stopped {
            return Err(ControlError::Refused(format!(
                "connector {name} is {}: offsets can be changed only while it is STOPPED (PUT /connectors/{name}/stop first)",
                self.handle.state().name()
            )));
        }
        for (partition, offset) in changes {
            if !connector.topics.contains(&partition.topic) {
                return Err(ControlError::Refused(format!(
                    "topic {} is not in connector {name}'s topic.include.list ({})",
                    partition.topic,
                    connector.topics.join(", ")
                )));
            }
            if offset.is_some_and(|o| o < 0) {
                return Err(ControlError::Refused(format!(
                    "offset {} for {partition} is negative",
                    offset.unwrap_or_default()
                )));
            }
        }
        // The group first: a partition set back to auto.offset.reset must not find an
        // offset of the group at its next start.
        let left = self.move_group(&connector, changes, true).await?;
        let settle = self.settle.load(Ordering::Relaxed);
        self.move_positions(&connector, changes, &left, settle)
            .await?;
        for (partition, offset) in changes {
            info!(connector = %name, %partition, offset = ?offset, "offset changed");
        }
        Ok(())
    }

    /// [`ConnectorRuntime::alter_offsets`] for a connector being deleted: its group is
    /// moved if it can be, and the deletion goes on if it cannot (the external cluster
    /// may be gone for good).
    pub async fn forget_offsets(
        &self,
        changes: &[(SourcePartition, Option<i64>)],
    ) -> Result<(), ControlError> {
        let run = self.run.lock().await;
        let connector = self.handle.config();
        if run.is_some() {
            return Err(ControlError::Refused(format!(
                "connector {} is running again: it is not deleted",
                connector.name
            )));
        }
        let left = self.move_group(&connector, changes, false).await?;
        let settle = self.settle.load(Ordering::Relaxed);
        self.move_positions(&connector, changes, &left, settle)
            .await
    }

    /// Moves the connector's group on the external cluster as `changes` say (committed
    /// with kafka-direct's metadata, or deleted for `None`). When that fails (no
    /// OffsetDelete on tansu 0.6, a missing ACL), returns what the group still holds of
    /// the changed partitions: recorded as taken, so no start uses it, and the group
    /// shows kafka-direct's position again after its next commit. Only when the group
    /// can be neither moved nor read, and the change is `required` and not a refusal of
    /// the group altogether, is the change refused.
    async fn move_group(
        &self,
        connector: &ConnectorConfig,
        changes: &[(SourcePartition, Option<i64>)],
        required: bool,
    ) -> Result<BTreeMap<SourcePartition, i64>, ControlError> {
        let cluster = match self.source_cluster(connector) {
            Ok(cluster) => cluster,
            Err(e) if !required => {
                warn!(connector = %connector.name, error = %e, "the external cluster cannot be reached: the connector's consumer group is left as it is");
                return Ok(BTreeMap::new());
            }
            Err(e) => return Err(ControlError::Refused(e)),
        };
        let deployment = group::deployment(&self.ctx.internal, connector).await?;
        let mut client = GroupClient::new(cluster, connector.group_id.clone());
        let commits: BTreeMap<SourcePartition, i64> = changes
            .iter()
            .filter_map(|(p, o)| Some((p.clone(), (*o)?)))
            .collect();
        let deletes: Vec<SourcePartition> = changes
            .iter()
            .filter(|(_, o)| o.is_none())
            .map(|(p, _)| p.clone())
            .collect();
        let metadata = group::metadata(&connector.name, &deployment);
        let changed: Vec<SourcePartition> = changes.iter().map(|(p, _)| p.clone()).collect();
        let wal = &self.ctx.wal;
        let group_id = &connector.group_id;
        // Nothing is sent without first reading what the group holds: kafka-direct's
        // record of its own commits must keep every offset the group may hold.
        let moved = match client.committed(&changed).await {
            Err(e) => Err(e),
            Ok(current) => {
                group::record_sending(
                    wal,
                    &connector.name,
                    group_id,
                    &metadata,
                    &current,
                    &commits,
                )
                .await?;
                match client.commit(&commits, &metadata).await {
                    Err(e) => Err(e),
                    Ok(()) => {
                        group::record_sent(wal, &connector.name, group_id, &commits)?;
                        let deleted = client.delete(&deletes).await;
                        if deleted.is_ok() {
                            for p in &deletes {
                                State::of(wal).set_group_commits(&connector.name, p, None)?;
                            }
                        }
                        deleted
                    }
                }
            }
        };
        let Err(e) = moved else {
            return Ok(BTreeMap::new());
        };
        let refused = e.broker_error() == Some(ResponseError::GroupAuthorizationFailed);
        // What the group still holds of the changed partitions is recorded as taken: no
        // start uses it (an offset this change replaces, or one it could not delete).
        let left = match client.committed(&changed).await {
            Ok(held) => held
                .into_iter()
                .filter(|(p, _)| changes.iter().any(|(c, _)| c == p))
                .map(|(p, c)| (p, c.offset))
                .collect(),
            Err(read) if required && !refused => {
                return Err(ControlError::Refused(format!(
                    "moving consumer group {} on the external cluster failed, and reading it too, so no offset was changed: {e}; {read}{}",
                    connector.group_id,
                    group::refusal_hint(&e, &connector.group_id)
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default()
                )))
            }
            Err(_) => BTreeMap::new(),
        };
        warn!(connector = %connector.name, group = %connector.group_id, error = %e,
            "the connector's consumer group was not moved with its offsets; what it holds of them is not used by any start ({})",
            group::refusal_hint(&e, &connector.group_id).unwrap_or_default());
        Ok(left)
    }

    /// The external cluster of `connector`, as its tasks reach it.
    fn source_cluster(&self, connector: &ConnectorConfig) -> Result<Cluster, String> {
        Ok(Cluster {
            role: "external",
            key: "connector.kafka.bootstrap.servers",
            servers: connector.bootstrap_servers.clone(),
            timeout: self.ctx.config.request_timeout,
            internal_retries: true,
            client_id: format!("kafka-direct-{}", connector.name),
            transport: crate::service::external_transport(connector).map_err(|e| e.to_string())?,
        })
    }

    /// Moves the WAL positions of `changes` (the connector is stopped or not started
    /// yet): each partition's internal end becomes its barrier, its unforwarded entries
    /// are dropped, and its dead-letter bookkeeping is forgotten; `taken` are group
    /// offsets no start may use (recorded in the state, the others cleared). Durable on
    /// return.
    async fn move_positions(
        &self,
        connector: &ConnectorConfig,
        changes: &[(SourcePartition, Option<i64>)],
        taken: &BTreeMap<SourcePartition, i64>,
        settle: bool,
    ) -> Result<(), ControlError> {
        let name = &connector.name;
        let wal = &self.ctx.wal;
        // After a crash or a stop with a produce in doubt, a request may still land: the
        // ends read below must have settled (`settle`).
        if connector.format != Format::Bytes {
            // Brings the dead-letter floors up to the topic's ends (and keeps them), so
            // that the dead letters of the changed partitions written so far are not
            // read again at the next start.
            let count =
                ensure_dead_letter_topic(&self.ctx.config, connector, &self.ctx.internal).await?;
            DeadLetters::open(
                self.ctx.internal.clone(),
                connector.dead_letter_topic.clone(),
                count,
                name.clone(),
                wal.clone(),
                settle,
                &self.ctx.stop.child_token(),
            )
            .await
            .map_err(ServiceError::from)?;
        }
        let internal_partitions = self.ctx.internal.topics("listing internal topics").await?;
        for (partition, offset) in changes {
            let internal_topic = connector.internal_topic(&partition.topic);
            let exists = internal_partitions
                .get(&internal_topic)
                .is_some_and(|&count| (partition.partition as usize) < count);
            let end = if exists {
                self.internal_end(&internal_topic, partition.partition, settle)
                    .await?
                    .ok_or_else(|| {
                        ControlError::Refused(format!(
                            "the service is stopping: the offset of {partition} was not changed"
                        ))
                    })?
            } else {
                0 // nothing copied yet: no barrier needed
            };
            State::of(wal).set_barrier(name, partition, end)?;
            State::of(wal).set_group_reset(name, partition, taken.get(partition).copied())?;
            wal.partition(name, partition)?.reset(*offset)?;
            info!(connector = %name, %partition, offset = ?offset, internal_barrier = end, "position moved");
        }
        let sources: Vec<SourcePartition> = changes.iter().map(|(p, _)| p.clone()).collect();
        dead_letter::forget(wal, name, &sources)?;
        wal.commit().await?;
        Ok(())
    }

    /// The internal offset of the first copy of source offset `offset` of `partition`
    /// or of the next source offset that has one (see [`translate`]).
    pub async fn translate(
        &self,
        partition: &SourcePartition,
        offset: i64,
    ) -> Result<Translation, ControlError> {
        translate::of_connector(&self.ctx, &self.handle, partition, offset).await
    }

    /// Every partition this connector has a log for in the WAL.
    pub fn logged_partitions(&self) -> Vec<SourcePartition> {
        self.ctx
            .wal
            .partitions()
            .into_iter()
            .filter(|(c, _)| *c == self.handle.config().name)
            .map(|(_, p)| p)
            .collect()
    }

    /// The end of an existing internal partition; with `settle`, once two reads
    /// [`SETTLE`](crate::kafka::settle::SETTLE) apart agree (`None`: the service stops
    /// before they do).
    async fn internal_end(
        &self,
        topic: &str,
        partition: i32,
        settle: bool,
    ) -> Result<Option<i64>, ClusterError> {
        let cluster = &self.ctx.internal;
        let mut writer = PartitionWriter::connect(cluster, topic, partition).await?;
        let earliest = writer.earliest(cluster).await?;
        let end = writer.high_watermark(cluster, earliest).await?;
        if !settle {
            return Ok(Some(end));
        }
        let stopping = self.ctx.stop.child_token();
        let mut settling = Settling::new(end);
        while settling.pause(&stopping).await {
            if settling.agrees(writer.high_watermark(cluster, earliest).await?) {
                return Ok(Some(settling.into_inner()));
            }
        }
        Ok(None)
    }

    /// Starts a run: its first attempt here, so that a refusal (configuration, TLS,
    /// authentication, no topic) reaches the caller; a cluster that does not answer
    /// leaves the run waiting for it in the background.
    async fn start_tasks(self: &Arc<Self>) -> Result<Run, ServiceError> {
        let begun = self.begin().await?;
        let cancel = self.ctx.stop.child_token();
        let this = Arc::clone(self);
        let stopping = cancel.clone();
        let task = tokio::spawn(async move {
            let (discovered, prepared, spooled) = match begun {
                Begun::Prepared(prepared) => {
                    let (discovered, prepared) = *prepared;
                    (discovered, prepared, None)
                }
                waiting => this.wait_for_clusters(waiting, &stopping).await?,
            };
            let (leaders, metrics) = match spooled {
                Some(spool) => spool.finish().await,
                None => (
                    Leaders::new(
                        discovered.source_cluster.clone(),
                        this.ctx.config.connections_per_broker,
                    ),
                    BTreeMap::new(),
                ),
            };
            match this.launch(discovered, prepared, leaders, metrics, stopping) {
                Ok((launched, supervised)) => {
                    supervised.await;
                    Some(launched)
                }
                Err(e) => {
                    this.fail_start(&e.into());
                    None
                }
            }
        });
        Ok(Run { cancel, task })
    }

    /// The first attempt of a start.
    async fn begin(&self) -> Result<Begun, ServiceError> {
        let discovered = match self.discover().await {
            Ok(discovered) => discovered,
            Err(e) if waits_for_cluster(&e) => return Ok(Begun::WaitingForExternal(e)),
            Err(e) => return Err(e),
        };
        // One look first, without retries: a cluster that does not answer at once is
        // waited for while the WAL spools, not retried here.
        let connector = self.handle.config();
        let deployment = match group::deployment(&self.ctx.internal, &connector).await {
            Ok(deployment) => deployment,
            Err(e) => {
                let e = ServiceError::from(e);
                if waits_for_cluster(&e) {
                    return Ok(Begun::WaitingForInternal(Box::new(discovered), e));
                }
                return Err(e);
            }
        };
        match self.prepare(&discovered, deployment).await {
            Ok(prepared) => Ok(Begun::Prepared(Box::new((discovered, prepared)))),
            Err(e) if waits_for_cluster(&e) => {
                Ok(Begun::WaitingForInternal(Box::new(discovered), e))
            }
            Err(e) => Err(e),
        }
    }

    /// Retries the start until both clusters answer, spooling once the external one
    /// does; `None` when the run was stopped meanwhile or the start failed for good.
    async fn wait_for_clusters(
        &self,
        begun: Begun,
        stopping: &CancellationToken,
    ) -> Option<(Discovered, Prepared, Option<Spool>)> {
        let connector = self.handle.config();
        let mut retry = crate::kafka::cluster::Retry::new(std::time::Duration::from_secs(30));
        let (mut discovered, mut last) = match begun {
            Begun::WaitingForExternal(e) => (None, e),
            Begun::WaitingForInternal(discovered, e) => (Some(*discovered), e),
            Begun::Prepared(..) => unreachable!("a prepared start does not wait"),
        };
        let mut spool: Option<Spool> = None;
        loop {
            let cluster = match &discovered {
                None => ClusterRole::External,
                Some(_) => ClusterRole::Internal,
            };
            let (role, key) = (cluster.name(), cluster.key());
            let delay = retry.delay();
            let spooling = spool.as_ref().map_or(0, |s| s.metrics.len());
            let waiting = format!(
                "waiting for the {role} cluster (key `{key}`), which does not answer: {last}; retrying every {}s at most{}",
                delay.as_secs().max(1),
                if spooling > 0 {
                    format!("; meanwhile {spooling} partition(s) with a stored position are fetched into the WAL")
                } else {
                    String::new()
                }
            );
            warn!(connector = %connector.name, error = %last, retry_in = ?delay, spooling, "waiting for the {role} cluster (key `{key}`) to answer");
            self.handle.set_error(None);
            self.handle.set_waiting(Some(Waiting {
                cluster,
                reason: waiting,
            }));
            tokio::select! {
                _ = stopping.cancelled() => {
                    if let Some(spool) = spool {
                        spool.finish().await;
                    }
                    return None;
                }
                _ = tokio::time::sleep(delay) => {}
            }
            let found = match discovered.take() {
                Some(found) => found,
                None => match self.discover().await {
                    Ok(found) => {
                        info!(connector = %connector.name, "the external cluster answers");
                        found
                    }
                    Err(e) if waits_for_cluster(&e) => {
                        last = e;
                        continue;
                    }
                    Err(e) => {
                        self.fail_start(&e);
                        return None;
                    }
                },
            };
            if spool.is_none() {
                match self.spool(&found, stopping) {
                    Ok(started) => spool = Some(started),
                    Err(e) => {
                        self.fail_start(&e.into());
                        return None;
                    }
                }
            }
            let deployment = match group::deployment(&self.ctx.internal, &connector).await {
                Ok(deployment) => deployment,
                Err(e) => {
                    let e = ServiceError::from(e);
                    if !waits_for_cluster(&e) {
                        self.fail_start(&e);
                        return None;
                    }
                    last = e;
                    discovered = Some(found);
                    continue;
                }
            };
            // The preparation may move positions (a group offset to follow): the
            // spool's fetchers stop first, and start again if it fails.
            info!(connector = %connector.name, "the internal cluster answers: preparing the internal topics");
            let spooled = match spool.take() {
                Some(s) => Some(s.finish().await),
                None => None,
            };
            match self.prepare(&found, deployment).await {
                Ok(prepared) => {
                    self.handle.set_waiting(None);
                    let spool = spooled.map(|(leaders, metrics)| Spool {
                        cancel: CancellationToken::new(),
                        tasks: JoinSet::new(),
                        leaders,
                        metrics,
                    });
                    return Some((found, prepared, spool));
                }
                Err(e) if waits_for_cluster(&e) => {
                    last = e;
                    discovered = Some(found);
                }
                Err(e) => {
                    self.fail_start(&e);
                    return None;
                }
            }
        }
    }

    /// A start that cannot succeed by waiting: shown in the status, logged, and
    /// reported to the service as the run's end.
    fn fail_start(&self, e: &ServiceError) {
        let name = self.handle.config().name.clone();
        self.handle.set_waiting(None);
        self.handle.set_error(Some(e.to_string()));
        error!(connector = %name, error = %e, "the connector could not start; fix the cause and POST /connectors/{name}/restart");
        let _ = self
            .ctx
            .ended
            .send((name, RunEnd::AllFailed(e.to_string())));
    }

    /// Starts a fetcher into the WAL for each partition of `discovered` that has a
    /// stored position.
    fn spool(
        &self,
        discovered: &Discovered,
        stopping: &CancellationToken,
    ) -> Result<Spool, WalError> {
        let ctx = &self.ctx;
        let config = &ctx.config;
        let connector = self.handle.config();
        let cancel = stopping.child_token();
        let leaders = Leaders::new(
            discovered.source_cluster.clone(),
            config.connections_per_broker,
        );
        let mut tasks = JoinSet::new();
        let mut metrics = BTreeMap::new();
        for partition in &discovered.partitions {
            let (writer, _) = ctx.wal.partition(&connector.name, partition)?.split();
            if writer.fetched_next()?.is_none() {
                continue;
            }
            let counters = Arc::new(PartitionMetrics::new(partition.clone()));
            let fetcher = Fetcher {
                cluster: discovered.source_cluster.clone(),
                leaders: Arc::clone(&leaders),
                log: writer,
                reset: connector.auto_offset_reset,
                group: (String::new(), None),
                max_bytes: config.fetch_max_bytes,
                max_wait: config.fetch_max_wait,
                forwarder_wake: Arc::new(Notify::new()),
                metrics: Arc::clone(&counters),
                latencies: self.handle.latencies.clone(),
                gate: self.handle.gate(),
                cancel: cancel.clone(),
            };
            let stop = ctx.stop.clone();
            let failed = Arc::clone(&counters);
            tasks.spawn(async move {
                if let Err(e) = fetcher.run().await {
                    failed.fail(e.to_string());
                    stop.if_storage_failed(e.wal_error());
                }
            });
            metrics.insert(partition.clone(), counters);
        }
        if !metrics.is_empty() {
            info!(connector = %connector.name, partitions = metrics.len(), "fetching into the WAL while the internal cluster does not answer");
            self.handle
                .set_partitions(metrics.values().cloned().collect());
        }
        Ok(Spool {
            cancel,
            tasks,
            leaders,
            metrics,
        })
    }

    /// The connector's partitions on the external cluster (this shard's).
    async fn discover(&self) -> Result<Discovered, ServiceError> {
        let config = &self.ctx.config;
        let connector = &*self.handle.config();
        let source_cluster = self
            .source_cluster(connector)
            .map_err(ServiceError::Config)?;
        crate::service::warn_if_names_unchecked(&connector.access, Some(&connector.name));
        let source_topics = source_cluster
            .topics("listing topics (key `connector.kafka.bootstrap.servers`)")
            .await?;
        info!(connector = %connector.name, external = %connector.bootstrap_servers.join(","), "connected to the external cluster");

        let mut partitions = Vec::new();
        for topic in &connector.topics {
            match source_topics.get(topic) {
                Some(&count) => partitions.extend(
                    (0..count as i32)
                        .map(|p| SourcePartition::new(topic, p))
                        .filter(|p| config.owns(p)),
                ),
                None => {
                    warn!(connector = %connector.name, %topic, "topic not found on the external cluster; it starts from its earliest offset once it exists (looked for every topic.metadata.refresh.interval.ms; check connector.topic.include.list)")
                }
            }
        }
        let found = connector
            .topics
            .iter()
            .any(|t| source_topics.contains_key(t));
        if !found {
            return Err(ServiceError::NoTopics {
                wanted: connector.topics.join(","),
                servers: connector.bootstrap_servers.join(","),
                found: source_topics.keys().cloned().collect::<Vec<_>>().join(","),
            });
        }
        Ok(Discovered {
            source_cluster,
            source_topics,
            partitions,
        })
    }

    /// What the tasks need from the internal cluster: the group's plan followed, the
    /// internal topics made, the dead-letter topic read.
    async fn prepare(
        &self,
        discovered: &Discovered,
        deployment: String,
    ) -> Result<Prepared, ServiceError> {
        let ctx = &self.ctx;
        let config = &ctx.config;
        let connector = &*self.handle.config();
        let wal = &ctx.wal;
        let settle = self.settle.load(Ordering::Relaxed);
        let Discovered {
            source_cluster,
            source_topics,
            partitions,
        } = discovered;
        let internal_cluster = &ctx.internal;
        // The connector's group (connector/group.rs): offsets set by someone else while
        // it was stopped are followed or taken as starts now, before anything runs.
        let mut group = SourceGroup::new(source_cluster.clone(), connector, deployment);
        let plan = group.plan(wal, partitions).await?;
        if !plan.follow.is_empty() {
            let changes: Vec<(SourcePartition, Option<i64>)> = plan
                .follow
                .iter()
                .map(|(p, o)| (p.clone(), Some(*o)))
                .collect();
            let taken: BTreeMap<SourcePartition, i64> = plan.follow.iter().cloned().collect();
            self.move_positions(connector, &changes, &taken, settle)
                .await
                .map_err(ServiceError::from)?;
            for (partition, offset) in &plan.follow {
                warn!(connector = %connector.name, group = %group.id(), %partition, offset,
                    "following the group's offset, set by another client while the connector was stopped: copying from it (records below the internal end are copied again, as after an offset change through the API)");
            }
        }
        if !plan.taken.is_empty() {
            for (partition, offset) in &plan.taken {
                State::of(wal).set_group_reset(&connector.name, partition, Some(*offset))?;
            }
            wal.commit().await?;
        }
        let group_offsets = plan.starts;

        // Each attempt re-lists the topics, so a topic created by an attempt whose answer
        // was lost is seen as existing.
        retry_start_up("preparing internal topics", || {
            ensure_internal_topics(
                config,
                connector,
                source_cluster,
                internal_cluster,
                source_topics,
            )
        })
        .await?;
        let existing: Vec<String> = connector
            .topics
            .iter()
            .filter(|t| source_topics.contains_key(*t))
            .cloned()
            .collect();
        sync_topic_configs(
            config,
            connector,
            source_cluster,
            internal_cluster,
            &existing,
        )
        .await;

        // The dead-letter topic is read before any forwarder starts: each one resumes
        // after the highest source offset it stored there or in its internal partition.
        let dead_letters = if connector.format == Format::Bytes {
            None
        } else {
            let dlq = retry_start_up("reading the dead-letter topic", || async {
                let count = ensure_dead_letter_topic(config, connector, internal_cluster).await?;
                Ok(DeadLetters::open(
                    internal_cluster.clone(),
                    connector.dead_letter_topic.clone(),
                    count,
                    connector.name.clone(),
                    wal.clone(),
                    settle,
                    &ctx.stop.child_token(),
                )
                .await?)
            })
            .await?;
            Some(Arc::new(dlq))
        };
        Ok(Prepared {
            group,
            group_offsets,
            dead_letters,
        })
    }

    /// Starts the tasks of a prepared run: one fetcher and forwarder per partition (with
    /// the counters of those that spooled), the group's committer, the groups' sync;
    /// the returned future supervises them until the run ends.
    fn launch(
        &self,
        discovered: Discovered,
        prepared: Prepared,
        leaders: Arc<Leaders>,
        mut spooled: BTreeMap<SourcePartition, Arc<PartitionMetrics>>,
        cancel: CancellationToken,
    ) -> Result<(Launched, impl std::future::Future<Output = ()>), WalError> {
        let ctx = &self.ctx;
        let config = &ctx.config;
        let connector = &*self.handle.config();
        let wal = &ctx.wal;
        let settle = self.settle.load(Ordering::Relaxed);
        let Prepared {
            group,
            group_offsets,
            dead_letters,
        } = prepared;
        let in_doubt = InDoubt::default();
        *self.in_doubt.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&in_doubt);
        let spawner = Spawner {
            handle: Arc::clone(&self.handle),
            ctx: Arc::clone(&self.ctx),
            source_cluster: discovered.source_cluster.clone(),
            leaders,
            dead_letters: dead_letters.clone(),
            settle,
            cancel: cancel.clone(),
            in_doubt,
            group_id: group.id().to_owned(),
            group_offsets,
        };
        let mut tasks = JoinSet::new();
        let mut running = BTreeMap::new();
        for partition in discovered.partitions {
            let metrics = spawner.spawn(
                &mut tasks,
                &partition,
                connector.auto_offset_reset,
                spooled.remove(&partition),
            )?;
            running.insert(partition, metrics);
        }
        self.handle
            .set_partitions(running.values().map(|r| Arc::clone(&r.metrics)).collect());
        self.handle.set_error(None);
        self.settle.store(false, Ordering::Relaxed);
        info!(connector = %connector.name, partitions = running.len(), topics = %connector.topics.join(","),
            shard = %format!("{}/{}", config.shard_index, config.shard_count), "replicating");

        let committer = tokio::spawn(commit_positions(
            group,
            Arc::clone(&self.handle),
            wal.clone(),
            connector.offset_flush_interval,
            cancel.clone(),
        ));
        let failover = tokio::spawn(super::failover::sync_groups(
            Arc::clone(&self.ctx),
            Arc::clone(&self.handle),
            discovered.source_cluster.clone(),
            cancel,
        ));
        let supervised = supervise(spawner, tasks, running, Arc::clone(&self.refresh));
        Ok((
            Launched {
                dead_letters,
                committer,
                failover,
            },
            supervised,
        ))
    }
}

/// A running partition, as the supervisor tracks it.
struct Running {
    metrics: Arc<PartitionMetrics>,
    /// Stops its fetcher only (its source topic was deleted): the forwarder drains what
    /// the WAL holds.
    stop_fetching: CancellationToken,
    /// No tasks yet: its internal partition could not be made (retried at each refresh).
    pending: bool,
}

/// What starting one partition's tasks needs.
struct Spawner {
    handle: Arc<ConnectorHandle>,
    ctx: Arc<Context>,
    source_cluster: Cluster,
    /// The external cluster's leaders, shared by every fetcher of the run.
    leaders: Arc<Leaders>,
    dead_letters: Option<Arc<DeadLetters>>,
    settle: bool,
    cancel: CancellationToken,
    in_doubt: InDoubt,
    /// The connector's group on the external cluster.
    group_id: String,
    /// Its committed offsets when the run started: the start of a partition without a
    /// position.
    group_offsets: BTreeMap<SourcePartition, i64>,
}

type Tasks = JoinSet<Result<TaskEnd, SinkError>>;

impl Spawner {
    /// Starts `partition`'s tail check, fetcher and forwarder; `reset` applies if the
    /// partition has no checkpoint.
    fn spawn(
        &self,
        tasks: &mut Tasks,
        partition: &SourcePartition,
        reset: OffsetReset,
        spooled: Option<Arc<PartitionMetrics>>,
    ) -> Result<Running, WalError> {
        let ctx = &self.ctx;
        let config = &ctx.config;
        let connector = &*self.handle.config();
        let wal = &ctx.wal;
        let (writer, reader) = wal.partition(&connector.name, partition)?.split();
        let metrics = spooled.unwrap_or_else(|| Arc::new(PartitionMetrics::new(partition.clone())));
        let wake = Arc::new(Notify::new());
        let internal_topic = connector.internal_topic(&partition.topic);
        let formatter = Formatter::new(
            connector.format,
            self.handle
                .registry
                .clone()
                .map(|r| (r, internal_topic.clone())),
        );
        let stop_fetching = self.cancel.child_token();
        let forwarder = Forwarder {
            cluster: ctx.internal.clone(),
            producers: Arc::clone(&ctx.producers),
            connected_at: std::sync::Mutex::new(None),
            formatter,
            dead_letters: self
                .dead_letters
                .clone()
                .map(|d| DeadLetterSender::new(d, partition.clone())),
            internal_topic,
            barrier: barrier(wal, &connector.name, partition)?,
            log: reader,
            forwarded_next: -1,
            in_doubt: {
                let flag = Arc::new(AtomicBool::new(false));
                self.in_doubt
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Arc::clone(&flag));
                flag
            },
            compression: config.internal_compression,
            max_records: config.forward_batch_max_records,
            max_bytes: config.forward_batch_max_bytes,
            idempotence: config.internal_idempotence,
            max_in_flight: config.internal_max_in_flight,
            wake: Arc::clone(&wake),
            metrics: Arc::clone(&metrics),
            latencies: self.handle.latencies.clone(),
            gate: self.handle.gate(),
            cancel: self.cancel.clone(),
        };
        let fetcher = Fetcher {
            cluster: self.source_cluster.clone(),
            leaders: Arc::clone(&self.leaders),
            log: writer,
            reset,
            group: (
                self.group_id.clone(),
                self.group_offsets.get(partition).copied(),
            ),
            max_bytes: config.fetch_max_bytes,
            max_wait: config.fetch_max_wait,
            forwarder_wake: wake,
            metrics: Arc::clone(&metrics),
            latencies: self.handle.latencies.clone(),
            gate: self.handle.gate(),
            cancel: stop_fetching.clone(),
        };
        let stop = ctx.stop.clone();
        let task_metrics = Arc::clone(&metrics);
        let settle = self.settle;
        tasks.spawn(async move {
            let end = run_partition(fetcher, forwarder, settle, stop).await;
            match &end {
                Ok(TaskEnd::Source(Err(e))) => task_metrics.fail(e.to_string()),
                Ok(TaskEnd::Sink(Err(e))) | Err(e) => task_metrics.fail(e.to_string()),
                Ok(_) => task_metrics.set_state(TaskState::Stopped),
            }
            end
        });
        Ok(Running {
            metrics,
            stop_fetching,
            pending: false,
        })
    }

    /// Makes sure the internal topic of `partition` has it: creates the topic with as
    /// many partitions as its source topic (`source_count`), or grows it to that many
    /// with CreatePartitions.
    async fn prepare_internal(
        &self,
        partition: &SourcePartition,
        source_count: i32,
    ) -> Result<(), String> {
        let ctx = &self.ctx;
        let connector = &*self.handle.config();
        let internal = connector.internal_topic(&partition.topic);
        let wanted = source_count.max(partition.partition + 1);
        let existing = ctx
            .internal
            .topics("listing internal topics")
            .await
            .map_err(|e| e.to_string())?
            .get(&internal)
            .map(|&count| count as i32);
        match existing {
            Some(count) if count > partition.partition => Ok(()),
            None => {
                let sources = BTreeMap::from([(partition.topic.clone(), wanted as usize)]);
                ensure_internal_topics(
                    &ctx.config,
                    connector,
                    &self.source_cluster,
                    &ctx.internal,
                    &sources,
                )
                .await
                .map_err(|e| e.to_string())
            }
            Some(count) => {
                let refused = |detail: String| {
                    format!("internal topic {internal} has {count} partitions and source partition {partition} needs {}; adding partitions failed: {detail}. Add them by hand (kafka-topics --alter --partitions {wanted}); kafka-direct retries at each metadata refresh", partition.partition + 1)
                };
                let mut last = String::from("no internal server answered");
                for server in &ctx.internal.servers {
                    let attempt = async {
                        let mut conn = crate::kafka::connection::Connection::open(
                            server,
                            &ctx.internal.client_id,
                            &ctx.internal.transport,
                        )
                        .await?;
                        conn.create_partitions(&internal, wanted, ctx.config.request_timeout)
                            .await
                    };
                    match tokio::time::timeout(ctx.config.request_timeout, attempt).await {
                        Ok(Ok(Ok(()))) => {
                            info!(topic = %internal, partitions = wanted, "added partitions to the internal topic");
                            return Ok(());
                        }
                        Ok(Ok(Err(refusal))) => return Err(refused(refusal)),
                        Ok(Err(e)) => last = e.to_string(),
                        Err(_) => last = format!("{server} did not answer in time"),
                    }
                }
                Err(refused(last))
            }
        }
    }
}

/// Starts the partitions that appeared in the external cluster's metadata since the
/// last look (new partitions of a topic, or a configured topic created meanwhile), from
/// the earliest offset whatever `auto.offset.reset` says: records written before they
/// were noticed must not be skipped. Stops fetching from partitions whose topic is gone.
async fn refresh(
    spawner: &Spawner,
    tasks: &mut Tasks,
    running: &mut BTreeMap<SourcePartition, Running>,
) {
    let connector = &*spawner.handle.config();
    let listed = spawner.source_cluster.topics("listing topics").await;
    let topics: BTreeMap<String, i32> = match listed {
        Ok(topics) => topics
            .into_iter()
            .map(|(name, count)| (name, count as i32))
            .collect(),
        Err(e) => {
            warn!(connector = %connector.name, error = %e, "reading the external cluster's metadata failed; new partitions are looked for again later");
            return;
        }
    };
    let mut changed = false;
    for (partition, run) in running.iter() {
        if !run.pending
            && !topics.contains_key(&partition.topic)
            && !run.stop_fetching.is_cancelled()
        {
            run.stop_fetching.cancel();
            run.metrics.fail(format!("source topic {} no longer exists on the external cluster (deleted?); fetching stopped, what the WAL holds is still forwarded", partition.topic));
            error!(connector = %connector.name, %partition, "source topic deleted: fetching stopped for this partition");
            changed = true;
        }
    }
    for topic in &connector.topics {
        let Some(&count) = topics.get(topic) else {
            continue;
        };
        for number in 0..count {
            let partition = SourcePartition::new(topic, number);
            if !spawner.ctx.config.owns(&partition)
                || running.get(&partition).is_some_and(|r| !r.pending)
            {
                continue;
            }
            changed = true;
            if let Err(message) = spawner.prepare_internal(&partition, count).await {
                warn!(connector = %connector.name, %partition, error = %message, "a new source partition cannot start yet");
                let metrics = Arc::new(PartitionMetrics::new(partition.clone()));
                metrics.fail(message);
                let pending = Running {
                    metrics,
                    stop_fetching: CancellationToken::new(),
                    pending: true,
                };
                running.insert(partition, pending);
                continue;
            }
            match spawner.spawn(tasks, &partition, OffsetReset::Earliest, None) {
                Ok(run) => {
                    info!(connector = %connector.name, %partition, "new source partition: replicating it from its earliest offset");
                    running.insert(partition, run);
                }
                Err(e) => {
                    error!(connector = %connector.name, %partition, error = %e, "starting a new source partition failed")
                }
            }
        }
    }
    if changed {
        spawner
            .handle
            .set_partitions(running.values().map(|r| Arc::clone(&r.metrics)).collect());
    }
    let existing: Vec<String> = connector
        .topics
        .iter()
        .filter(|t| topics.contains_key(*t))
        .cloned()
        .collect();
    sync_topic_configs(
        &spawner.ctx.config,
        connector,
        &spawner.source_cluster,
        &spawner.ctx.internal,
        &existing,
    )
    .await;
}

/// Commits the stored positions to the connector's group every `interval` until the
/// run ends; returns the group for the last commit.
async fn commit_positions(
    mut group: SourceGroup,
    handle: Arc<ConnectorHandle>,
    wal: Wal,
    interval: std::time::Duration,
    cancel: CancellationToken,
) -> SourceGroup {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return group,
            _ = tick.tick() => group.flush(&wal, &handle.partitions()).await,
        }
    }
}

/// One partition: the start-up tail check, then its fetcher and forwarder.
async fn run_partition(
    fetcher: Fetcher,
    mut forwarder: Forwarder,
    settle: bool,
    stop: Stop,
) -> Result<TaskEnd, SinkError> {
    let mut leader = None;
    let Some(tail) = forwarder.read_start_tail(&mut leader, settle).await? else {
        return Ok(TaskEnd::Source(Ok(())));
    };
    let wal_err = |source| SinkError::Wal {
        partition: forwarder.log.source_partition().clone(),
        source,
    };
    if let Some(stored_next) = forwarder.frontier(&tail) {
        if let (group, Some(offset)) = &fetcher.group {
            if forwarder
                .log
                .checkpoints()
                .map_err(wal_err)?
                .fetched_next
                .is_none()
            {
                warn!(partition = %forwarder.log.source_partition(), %group, group_offset = offset, stored_next,
                    "the internal topic already holds this partition's records: it goes on after them, not from the group's offset");
            }
        }
        forwarder.log.resume_from(stored_next).map_err(wal_err)?;
        info!(partition = %forwarder.log.source_partition(), stored_next, "internal partition already stores everything below this source offset (or, for refused records, the dead-letter topic)");
    }
    let checkpoints = forwarder.log.checkpoints().map_err(wal_err)?;
    let forwarded_next = forwarder
        .frontier(&tail)
        .or(checkpoints.forwarded_next)
        .unwrap_or(-1);
    forwarder.set_forwarded_next(forwarded_next);
    forwarder.metrics.set_state(TaskState::Running);
    let fetch_metrics = Arc::clone(&forwarder.metrics);
    let fetch_stop = stop.clone();
    let fetch = tokio::spawn(async move {
        let fetched = fetcher.run().await;
        if let Err(e) = &fetched {
            // The status says so at once: the forwarder goes on with what the WAL holds
            // and ends only when stopped.
            fetch_metrics.fail(e.to_string());
            fetch_stop.if_storage_failed(e.wal_error());
        }
        fetched
    });
    let forward = forwarder.run(tail, leader).await;
    if let Err(e) = &forward {
        // As the fetcher does, before waiting for it: its own token would not fire.
        stop.if_storage_failed(e.wal_error());
    }
    let fetch = fetch.await.expect("the fetcher task does not panic");
    Ok(match (fetch, forward) {
        (Ok(()), forward) => TaskEnd::Sink(forward),
        (fetch, _) => TaskEnd::Source(fetch),
    })
}

/// Collects a run's task ends and looks for new partitions at each metadata refresh;
/// reports the run's end to the service.
async fn supervise(
    spawner: Spawner,
    mut tasks: Tasks,
    mut running: BTreeMap<SourcePartition, Running>,
    refresh_now: Arc<Notify>,
) {
    let ctx = Arc::clone(&spawner.ctx);
    let connector = spawner.handle.config().name.clone();
    let mut refresh_tick = tokio::time::interval(ctx.config.metadata_refresh_interval);
    refresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh_tick.tick().await;
    let mut failures: Vec<String> = Vec::new();
    loop {
        let joined = tokio::select! {
            joined = tasks.join_next() => joined,
            _ = refresh_tick.tick(), if !spawner.cancel.is_cancelled() => {
                refresh(&spawner, &mut tasks, &mut running).await;
                continue;
            }
            _ = refresh_now.notified(), if !spawner.cancel.is_cancelled() => {
                refresh(&spawner, &mut tasks, &mut running).await;
                continue;
            }
        };
        let Some(joined) = joined else {
            if spawner.cancel.is_cancelled() || !failures.is_empty() {
                break;
            }
            // No task left and none failed (none could start yet, or this shard owns
            // no partition yet): keep looking.
            tokio::select! {
                _ = spawner.cancel.cancelled() => break,
                _ = refresh_tick.tick() => refresh(&spawner, &mut tasks, &mut running).await,
                _ = refresh_now.notified() => refresh(&spawner, &mut tasks, &mut running).await,
            }
            continue;
        };
        let end = joined.expect("partition tasks do not panic");
        let (failure, storage) = match &end {
            Ok(TaskEnd::Source(Err(e))) => (Some(e.to_string()), e.wal_error()),
            Ok(TaskEnd::Sink(Err(e))) | Err(e) => (Some(e.to_string()), e.wal_error()),
            Ok(_) => (None, None),
        };
        if ctx.stop.if_storage_failed(storage) {
            continue;
        }
        if let Some(f) = failure {
            warn!(%connector, error = %f, "a partition stopped; the others go on");
            failures.push(f);
        }
    }
    let all_failed = !running.is_empty()
        && running
            .values()
            .all(|r| r.metrics.state() == TaskState::Failed);
    let end = if !spawner.cancel.is_cancelled() && all_failed {
        let first = failures
            .into_iter()
            .next()
            .or_else(|| running.values().find_map(|r| r.metrics.error()))
            .unwrap_or_default();
        RunEnd::AllFailed(first)
    } else {
        RunEnd::Stopped
    };
    let _ = ctx.ended.send((connector, end));
}
