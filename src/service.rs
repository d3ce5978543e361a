//! The service: opens the WAL, connects both clusters, starts one fetcher and one
//! forwarder per source partition, and owns shutdown.
//!
//! Start-up order per partition: the forwarder's tail check first, so the WAL's
//! checkpoints are aligned with what the internal partition already stores before
//! anything is fetched; then both tasks. Shutdown (the `shutdown` future resolving):
//! fetchers stop before their next fetch, forwarders after the produce in flight, then
//! the WAL is flushed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::{Cluster, ClusterError};
use crate::config::{Format, ServiceConfig};
use crate::control::ConnectorHandle;
use crate::format::registry::SchemaRegistry;
use crate::format::Formatter;
use crate::forward::dead_letter::{DeadLetterError, DeadLetterSender, DeadLetters};
use crate::forward::{Forwarder, SinkError};
use crate::metrics::{PartitionMetrics, TaskState};
use crate::record::SourcePartition;
use crate::source::{Fetcher, SourceError};
use crate::wal::{Wal, WalError, WalOptions};

/// Why the service could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The WAL could not be opened or flushed.
    #[error(transparent)]
    Wal(#[from] WalError),
    /// A cluster could not be reached or refused a start-up step.
    #[error("{0}")]
    Cluster(#[from] ClusterError),
    /// No configured topic exists on the external cluster.
    #[error("none of the configured topics ({wanted}) exists on the external cluster ({servers}); topics there: {found}")]
    NoTopics {
        /// Configured topics.
        wanted: String,
        /// The external servers.
        servers: String,
        /// What exists.
        found: String,
    },
    /// An internal topic exists with too few partitions.
    #[error("internal topic {topic} has {internal} partitions but source topic {source_topic} has {source_count}; add partitions to {topic} (each source partition is copied to the internal partition of the same number)")]
    PartitionMismatch {
        /// Internal topic.
        topic: String,
        /// Its partition count.
        internal: usize,
        /// Source topic.
        source_topic: String,
        /// Its partition count.
        source_count: usize,
    },
    /// Writing the WAL failed (disk full, I/O error): the whole process stops.
    #[error("writing the WAL failed ({detail}); kafka-direct stopped. Free space in data.dir (or set wal.max.bytes below the free space) and start it again: it resumes from its last checkpoints, losing and repeating nothing")]
    WalStorage {
        /// The first failure.
        detail: String,
    },
    /// The API could not listen.
    #[error(transparent)]
    Api(#[from] crate::api::ListenError),
    /// Every partition task stopped on an error.
    #[error("every partition stopped on an error; first: {0}")]
    AllFailed(String),
}

impl From<DeadLetterError> for ServiceError {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::Cluster(e) => ServiceError::Cluster(e),
            DeadLetterError::Wal(e) => ServiceError::Wal(e),
        }
    }
}

enum TaskEnd {
    Source(Result<(), SourceError>),
    Sink(Result<(), SinkError>),
}

/// Runs the service until `shutdown` resolves (exit 0) or every partition failed.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let connector = &config.connector;
    let data_dir = config.data_dir.clone();
    let options = WalOptions {
        sync: config.wal_sync,
        max_bytes: config.wal_max_bytes,
        cache_bytes: config.wal_cache_bytes,
    };
    let wal = tokio::task::spawn_blocking(move || Wal::open(&data_dir, options))
        .await
        .expect("opening the WAL does not panic")?;
    info!(data_dir = %config.data_dir.display(), wal_bytes = wal.used_bytes(), "WAL opened");
    // The start-up tail check waits for the internal partitions' ends to settle only if
    // a request of an earlier run may still be pending (docs/ARCHITECTURE.md).
    let settle = {
        let new = wal.is_new();
        let wal = wal.clone();
        let clean = tokio::task::spawn_blocking(move || wal.take_clean_stop())
            .await
            .expect("reading the clean-stop mark does not panic")?;
        let settle = !(clean || new);
        if settle {
            info!("the previous run did not stop cleanly: the start-up tail check waits for the internal partitions to settle");
        }
        settle
    };

    let registry = if connector.schemas_enable {
        Some(Arc::new(SchemaRegistry::open(&wal, &connector.name)?))
    } else {
        None
    };
    let handle = Arc::new(ConnectorHandle::open(
        connector.clone(),
        wal.clone(),
        registry.clone(),
    )?);
    // The API answers from here on (/health at once, /ready once every task works), and
    // stops after the final flush.
    let api_stop = CancellationToken::new();
    let _api_stop_on_return = api_stop.clone().drop_guard();
    if let Some(address) = &config.api_listen {
        crate::api::serve(
            address,
            config.api_token.clone(),
            vec![Arc::clone(&handle)],
            wal.clone(),
            api_stop.clone(),
        )
        .await?;
    }

    let source_cluster = Cluster {
        role: "external",
        key: "connector.kafka.bootstrap.servers",
        servers: connector.bootstrap_servers.clone(),
        timeout: config.request_timeout,
        internal_retries: true,
        client_id: format!("kafka-direct-{}", connector.name),
    };
    let internal_cluster = Cluster {
        role: "internal",
        key: "internal.bootstrap.servers",
        servers: config.internal_bootstrap_servers.clone(),
        timeout: config.request_timeout,
        internal_retries: false,
        client_id: format!("kafka-direct-{}", connector.name),
    };
    let source_client = source_cluster.connect().await?;
    let internal_client = internal_cluster.connect().await?;
    info!(external = %connector.bootstrap_servers.join(","), internal = %config.internal_bootstrap_servers.join(","), "connected to both clusters");

    let source_topics: BTreeMap<String, usize> = source_cluster
        .bounded("listing topics", source_client.list_topics())
        .await?
        .into_iter()
        .map(|t| (t.name, t.partitions.len()))
        .collect();
    let mut partitions = Vec::new();
    for topic in &connector.topics {
        match source_topics.get(topic) {
            Some(&count) => {
                partitions.extend((0..count as i32).map(|p| SourcePartition::new(topic, p)))
            }
            None => {
                error!(%topic, "topic not found on the external cluster; it is skipped (check connector.topic.include.list)")
            }
        }
    }
    if partitions.is_empty() {
        return Err(ServiceError::NoTopics {
            wanted: connector.topics.join(","),
            servers: connector.bootstrap_servers.join(","),
            found: source_topics.keys().cloned().collect::<Vec<_>>().join(","),
        });
    }
    // Each attempt re-lists the topics, so a topic created by an attempt whose answer was
    // lost is seen as existing.
    retry_start_up("preparing internal topics", || {
        ensure_internal_topics(&config, &internal_cluster, &internal_client, &source_topics)
    })
    .await?;

    // The dead-letter topic is read before any forwarder starts: each one resumes after
    // the highest source offset it stored there or in its internal partition.
    let dead_letters = if connector.format == Format::Bytes {
        None
    } else {
        let dlq = retry_start_up("reading the dead-letter topic", || async {
            let partitions =
                ensure_dead_letter_topic(&config, &internal_cluster, &internal_client).await?;
            Ok(DeadLetters::open(
                internal_cluster.clone(),
                connector.dead_letter_topic.clone(),
                partitions,
                connector.name.clone(),
                wal.clone(),
                settle,
            )
            .await?)
        })
        .await?;
        Some(Arc::new(dlq))
    };

    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut all_metrics = Vec::new();
    for partition in partitions {
        let log = wal.partition(&connector.name, &partition)?;
        let metrics = Arc::new(PartitionMetrics::new(partition.clone()));
        let wake = Arc::new(Notify::new());
        let internal_topic = connector.internal_topic(&partition.topic);
        let formatter = Formatter::new(
            connector.format,
            registry.clone().map(|r| (r, internal_topic.clone())),
        );
        let forwarder = Forwarder {
            cluster: internal_cluster.clone(),
            formatter,
            dead_letters: dead_letters
                .clone()
                .map(|d| DeadLetterSender::new(d, partition.clone())),
            internal_topic,
            log: log.clone(),
            wal: wal.clone(),
            compression: config.internal_compression,
            max_records: config.forward_batch_max_records,
            max_bytes: config.forward_batch_max_bytes,
            wake: Arc::clone(&wake),
            metrics: Arc::clone(&metrics),
            latencies: handle.latencies.clone(),
            gate: handle.gate(),
            cancel: cancel.clone(),
        };
        let fetcher = Fetcher {
            cluster: source_cluster.clone(),
            log: log.clone(),
            wal: wal.clone(),
            reset: connector.auto_offset_reset,
            max_bytes: config.fetch_max_bytes,
            max_wait: config.fetch_max_wait,
            forwarder_wake: wake,
            metrics: Arc::clone(&metrics),
            latencies: handle.latencies.clone(),
            gate: handle.gate(),
            cancel: cancel.clone(),
        };
        all_metrics.push(Arc::clone(&metrics));
        let cancel_all = cancel.clone();
        // Each partition starts on its own: one slow internal partition does not hold
        // the others back.
        let task_metrics = Arc::clone(&metrics);
        let task = async move {
            let mut leader = None;
            let Some(tail) = forwarder.read_start_tail(&mut leader, settle).await? else {
                return Ok(TaskEnd::Source(Ok(())));
            };
            if let Some(stored_next) = forwarder.frontier(&tail) {
                forwarder
                    .log
                    .resume_from(stored_next)
                    .map_err(|source| SinkError::Wal {
                        partition: forwarder.log.source_partition().clone(),
                        source,
                    })?;
                info!(partition = %forwarder.log.source_partition(), stored_next, "internal partition already stores everything below this source offset (or, for refused records, the dead-letter topic)");
            }
            let checkpoints = forwarder
                .log
                .checkpoints()
                .map_err(|source| SinkError::Wal {
                    partition: forwarder.log.source_partition().clone(),
                    source,
                })?;
            forwarder.metrics.forwarded_next.store(
                forwarder
                    .frontier(&tail)
                    .or(checkpoints.forwarded_next)
                    .unwrap_or(-1),
                Ordering::Relaxed,
            );
            forwarder.metrics.set_state(TaskState::Running);
            let fetch = tokio::spawn(fetcher.run());
            let forward = forwarder.run(tail, leader).await;
            if let Err(e) = &forward {
                if e.wal_error().is_some_and(WalError::is_storage_failure) {
                    cancel_all.cancel(); // as the fetcher does: sled refuses further writes
                }
            }
            let fetch = fetch.await.expect("the fetcher task does not panic");
            Ok::<_, SinkError>(match (fetch, forward) {
                (Ok(()), forward) => TaskEnd::Sink(forward),
                (fetch, _) => TaskEnd::Source(fetch),
            })
        };
        tasks.spawn(async move {
            let end = task.await;
            match &end {
                Ok(TaskEnd::Source(Err(e))) => task_metrics.fail(e.to_string()),
                Ok(TaskEnd::Sink(Err(e))) | Err(e) => task_metrics.fail(e.to_string()),
                Ok(_) => task_metrics.set_state(TaskState::Stopped),
            }
            end
        });
    }
    handle.set_partitions(all_metrics.clone());
    info!(partitions = all_metrics.len(), topics = %connector.topics.join(","), "replicating");

    let progress = spawn_progress(
        config.progress_interval,
        all_metrics.clone(),
        wal.clone(),
        cancel.clone(),
    );
    tokio::pin!(shutdown);
    let mut failures: Vec<String> = Vec::new();
    let mut storage_failure: Option<String> = None;
    let mut running = tasks.len();
    let mut shutting_down = false;
    while running > 0 {
        tokio::select! {
            _ = &mut shutdown, if !shutting_down => {
                info!("shutdown requested: finishing in-flight writes and produces");
                shutting_down = true;
                cancel.cancel();
            }
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                running -= 1;
                let end = joined.expect("partition tasks do not panic");
                let (failure, storage) = match &end {
                    Ok(TaskEnd::Source(Err(e))) => (Some(e.to_string()), e.wal_error()),
                    Ok(TaskEnd::Sink(Err(e))) | Err(e) => (Some(e.to_string()), e.wal_error()),
                    Ok(_) => (None, None),
                };
                if let Some(e) = storage.filter(|e| e.is_storage_failure()) {
                    if storage_failure.is_none() {
                        storage_failure = Some(e.to_string());
                        cancel.cancel();
                    }
                } else if let Some(f) = failure {
                    warn!(error = %f, "a partition stopped; the others go on");
                    failures.push(f);
                }
            }
        }
    }
    cancel.cancel();
    let _ = progress.await;
    if let Some(detail) = storage_failure {
        // No final flush: after a failed write sled's flush never returns, and sled
        // flushes when its last handle is dropped, so one handle is kept until exit.
        std::mem::forget(wal.clone());
        return Err(ServiceError::WalStorage { detail });
    }
    if all_metrics
        .iter()
        .all(|m| !m.produce_in_doubt.load(Ordering::Relaxed))
    {
        if let Some(dlq) = &dead_letters {
            dlq.persist()?;
        }
        wal.mark_clean_stop()?;
    }
    let wal_for_sync = wal.clone();
    tokio::task::spawn_blocking(move || wal_for_sync.sync_blocking())
        .await
        .expect("the final WAL flush does not panic")?;
    log_progress(&all_metrics, &wal, Duration::ZERO, &mut BTreeMap::new());
    if !shutting_down && !failures.is_empty() {
        return Err(ServiceError::AllFailed(failures.remove(0)));
    }
    info!(
        failed_partitions = failures.len(),
        "stopped; checkpoints are flushed"
    );
    Ok(())
}

/// Runs a start-up step on the internal cluster, retrying transient errors a few times:
/// its client has no internal retries (see cluster.rs), and a broken connection here
/// says nothing about the cluster being unusable.
async fn retry_start_up<T, F, Fut>(what: &str, mut step: F) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    let mut retry = crate::cluster::Retry::new(Duration::from_secs(5));
    let mut attempts = 0;
    loop {
        match step().await {
            Err(ServiceError::Cluster(e)) if e.is_transient() && attempts < 5 => {
                attempts += 1;
                let delay = retry.delay();
                warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
            }
            result => return result,
        }
    }
}

/// Creates `topic` with `partitions` partitions on the internal cluster.
async fn create_topic(
    config: &ServiceConfig,
    cluster: &Cluster,
    client: &rskafka::client::Client,
    topic: &str,
    partitions: i32,
) -> Result<(), ServiceError> {
    let controller = client
        .controller_client()
        .map_err(|source| ClusterError::Client {
            what: "finding the controller".into(),
            role: cluster.role,
            servers: cluster.servers.join(","),
            source,
        })?;
    cluster
        .bounded(
            format!("creating topic {topic}"),
            controller.create_topic(
                topic.to_owned(),
                partitions,
                config.internal_replication_factor,
                config.request_timeout.as_millis() as i32,
            ),
        )
        .await?;
    Ok(())
}

/// Creates the dead-letter topic (one partition) unless it exists; returns its
/// partition count.
async fn ensure_dead_letter_topic(
    config: &ServiceConfig,
    cluster: &Cluster,
    client: &rskafka::client::Client,
) -> Result<i32, ServiceError> {
    let topic = &config.connector.dead_letter_topic;
    let existing = cluster
        .bounded("listing internal topics", client.list_topics())
        .await?
        .into_iter()
        .find(|t| &t.name == topic);
    if let Some(t) = existing {
        return Ok(t.partitions.len() as i32);
    }
    create_topic(config, cluster, client, topic, 1).await?;
    info!(%topic, "created the dead-letter topic");
    Ok(1)
}

async fn ensure_internal_topics(
    config: &ServiceConfig,
    cluster: &Cluster,
    client: &rskafka::client::Client,
    source_topics: &BTreeMap<String, usize>,
) -> Result<(), ServiceError> {
    let existing: BTreeMap<String, usize> = cluster
        .bounded("listing internal topics", client.list_topics())
        .await?
        .into_iter()
        .map(|t| (t.name, t.partitions.len()))
        .collect();
    for topic in &config.connector.topics {
        let Some(&source_count) = source_topics.get(topic) else {
            continue;
        };
        let internal = config.connector.internal_topic(topic);
        match existing.get(&internal) {
            Some(&count) if count >= source_count => {}
            Some(&count) => {
                return Err(ServiceError::PartitionMismatch {
                    topic: internal,
                    internal: count,
                    source_topic: topic.clone(),
                    source_count,
                })
            }
            None => {
                create_topic(config, cluster, client, &internal, source_count as i32).await?;
                info!(topic = %internal, partitions = source_count, "created internal topic");
            }
        }
    }
    Ok(())
}

fn spawn_progress(
    interval: Duration,
    metrics: Vec<Arc<PartitionMetrics>>,
    wal: Wal,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if interval.is_zero() {
            return;
        }
        let mut last = BTreeMap::new();
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => log_progress(&metrics, &wal, interval, &mut last),
            }
        }
    })
}

fn log_progress(
    metrics: &[Arc<PartitionMetrics>],
    wal: &Wal,
    interval: Duration,
    last: &mut BTreeMap<&'static str, (u64, Instant)>,
) {
    let fetched: u64 = metrics
        .iter()
        .map(|m| m.fetched_records.load(Ordering::Relaxed))
        .sum();
    let forwarded: u64 = metrics
        .iter()
        .map(|m| m.forwarded_records.load(Ordering::Relaxed))
        .sum();
    let lag: i64 = metrics.iter().map(|m| m.lag()).sum();
    let unexpected: u64 = metrics
        .iter()
        .map(|m| m.unexpected_produce_offsets.load(Ordering::Relaxed))
        .sum();
    let aborted: u64 = metrics
        .iter()
        .map(|m| m.aborted_records.load(Ordering::Relaxed))
        .sum();
    let dead_lettered: u64 = metrics.iter().map(|m| m.dead_lettered_total()).sum();
    let now = Instant::now();
    let rate = match last.insert("forwarded", (forwarded, now)) {
        Some((before, at)) if !interval.is_zero() => {
            (forwarded - before) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
        }
        _ => 0.0,
    };
    info!(
        fetched,
        forwarded,
        dead_lettered,
        lag,
        wal_bytes = wal.used_bytes(),
        forward_rate = format!("{rate:.0}/s"),
        unexpected_produce_offsets = unexpected,
        aborted_skipped = aborted,
        "progress"
    );
}
