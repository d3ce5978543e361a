//! The service: opens the WAL, connects to the internal cluster, serves the API, starts
//! its connectors (one fetcher and one forwarder per source partition, see
//! `crate::connector`), and owns shutdown.
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

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{ConfigError, ConnectorConfig, RawConfig, ServiceConfig};
use crate::connector::ConnectorState;
use crate::forward::dead_letter::DeadLetterError;
use crate::kafka::cluster::{Cluster, ClusterError};
use crate::kafka::tls::Transport;
use crate::metrics::{PartitionMetrics, TaskState};
use crate::stop::{Reason, Stop};
use crate::wal::{Wal, WalError, WalOptions};

pub(crate) use crate::connector::{ConnectorRuntime, Connectors, Context, ControlError, RunEnd};

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
    /// TLS material could not be read (the config was valid when loaded).
    #[error("{0}")]
    Config(String),
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

/// Warns at start when a cluster's certificates are not checked against their
/// addresses (`ssl.endpoint.identification.algorithm=none`); the external cluster's
/// warning names its connector.
pub(crate) fn warn_if_names_unchecked(access: &crate::config::Access, connector: Option<&str>) {
    if access.ssl.as_ref().is_some_and(|ssl| !ssl.verify_hostname) {
        match connector {
            Some(name) => warn!(connector = %name, "connector.ssl.endpoint.identification.algorithm=none: the external brokers' certificates are not checked against their addresses"),
            None => warn!("internal.ssl.endpoint.identification.algorithm=none: the internal brokers' certificates are not checked against their addresses"),
        }
    }
}

/// The service config `raw` describes, with every cluster's TLS material read: a bad
/// PEM file or key is refused here, before anything starts (`run`, `validate`, `check`).
pub fn configure(raw: &RawConfig) -> Result<ServiceConfig, ConfigError> {
    let config = raw.build()?;
    if let Some(connector) = &config.connector {
        external_transport(connector)?;
    }
    internal_transport(&config)?;
    Ok(config)
}

/// How the internal cluster is reached (reads the `internal.ssl.*` PEM files).
pub(crate) fn internal_transport(config: &ServiceConfig) -> Result<Transport, ConfigError> {
    Ok(Transport::new(&config.internal_access, "internal.")?)
}

/// How a connector's external cluster is reached (reads its `ssl.*` PEM files).
pub(crate) fn external_transport(connector: &ConnectorConfig) -> Result<Transport, ConfigError> {
    Ok(Transport::new(&connector.access, "connector.")?)
}

/// Runs the service until `shutdown` resolves (exit 0) or every connector's partitions
/// failed.
pub async fn run(
    config: ServiceConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    let (wal, settle) = open_wal(&config).await?;
    let internal = internal_cluster(&config).map_err(|e| ServiceError::Config(e.to_string()))?;

    let (ended, mut ends) = mpsc::unbounded_channel();
    let producers = crate::kafka::producers::Producers::new(
        internal.clone(),
        config.internal_max_in_flight,
        config.connections_per_broker,
    );
    let ctx = Arc::new(Context {
        config: config.clone(),
        wal: wal.clone(),
        internal,
        producers,
        stop: Stop::new(),
        ended,
    });
    let connectors = Arc::new(Connectors::open(
        Arc::clone(&ctx),
        config.connector.clone(),
        settle,
    )?);
    if connectors.all().is_empty() {
        info!(
            "no connector declared in the config file or stored: create one with POST /connectors"
        );
    }

    // The API answers from here on (/health at once, /ready once every task works), and
    // stops after the final flush.
    let api_stop = CancellationToken::new();
    let _api_stop_on_return = api_stop.clone().drop_guard();
    if let Some(address) = &config.api_listen {
        crate::api::serve(
            address,
            config.api_token.clone(),
            Arc::clone(&connectors),
            wal.clone(),
            api_stop.clone(),
        )
        .await?;
    }

    // The file's connector starts in the foreground: a service that cannot start it
    // exits with the reason. Connectors created through the API start in the
    // background, each failure shown in its status.
    for runtime in connectors.all() {
        if connectors.is_declared(&runtime.handle.config().name) {
            runtime.start().await?;
        } else {
            Connectors::start_in_background(runtime);
        }
    }
    let progress_stop = CancellationToken::new();
    spawn_sampler(
        config.ui_sample_interval,
        Arc::clone(&connectors),
        progress_stop.clone(),
    );
    let progress = spawn_progress(
        config.progress_interval,
        Arc::clone(&connectors),
        wal.clone(),
        progress_stop.clone(),
    );

    let failure = wait_for_an_end(shutdown, &ctx.stop, &connectors, &mut ends).await;
    let mut stop_error = None;
    for c in connectors.all() {
        if let Err(e) = c.stop().await {
            stop_error.get_or_insert(e);
        }
    }
    let storage_failure = ctx
        .stop
        .reason()
        .map(|Reason::StorageFailed(detail)| detail);
    if let (Some(e), None) = (stop_error, &storage_failure) {
        return Err(e.into());
    }
    progress_stop.cancel();
    let _ = progress.await;
    if let Some(detail) = storage_failure {
        // No final flush: after a failed write sled's flush never returns, and sled
        // flushes when its last handle is dropped, so one handle is kept until exit.
        std::mem::forget(wal.clone());
        return Err(ServiceError::WalStorage { detail });
    }
    if connectors.all().iter().all(|c| c.clean()) {
        wal.mark_clean_stop()?;
    }
    let wal_for_sync = wal.clone();
    tokio::task::spawn_blocking(move || wal_for_sync.sync_blocking())
        .await
        .expect("the final WAL flush does not panic")?;
    let partitions = connectors.partitions();
    log_progress(&partitions, &wal, Duration::ZERO, &mut BTreeMap::new());
    if let Some(first) = failure {
        return Err(ServiceError::AllFailed(first));
    }
    let failed = partitions
        .iter()
        .filter(|m| m.state() == TaskState::Failed)
        .count();
    info!(
        failed_partitions = failed,
        "stopped; checkpoints are flushed"
    );
    Ok(())
}

/// Runs until a shutdown is requested, the service's [`Stop`] fires, or every connector
/// failed; in the last case, the first failure.
async fn wait_for_an_end(
    shutdown: impl Future<Output = ()>,
    stop: &Stop,
    connectors: &Connectors,
    ends: &mut mpsc::UnboundedReceiver<(String, RunEnd)>,
) -> Option<String> {
    tokio::pin!(shutdown);
    let mut last_end: BTreeMap<String, RunEnd> = BTreeMap::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("shutdown requested: finishing in-flight writes and produces");
                return None;
            }
            _ = stop.stopped() => return None,
            Some((name, end)) = ends.recv() => {
                last_end.insert(name, end);
                let all = connectors.all();
                let failed: Vec<&String> = all
                    .iter()
                    .filter_map(|c| match last_end.get(&c.handle.config().name) {
                        Some(RunEnd::AllFailed(first)) if c.handle.state() == ConnectorState::Failed => Some(first),
                        _ => None,
                    })
                    .collect();
                if !all.is_empty() && failed.len() == all.len() {
                    return failed.first().map(|f| f.to_string());
                }
            }
        }
    }
}

/// Opens the WAL, and says whether the start-up tail check must wait for the internal
/// partitions' ends to settle: only if a request of an earlier run may still be pending
/// (docs/ARCHITECTURE.md).
async fn open_wal(config: &ServiceConfig) -> Result<(Wal, bool), ServiceError> {
    let data_dir = config.data_dir.clone();
    let options = WalOptions {
        sync: config.wal_sync,
        max_bytes: config.wal_max_bytes,
        cache_bytes: config.wal_cache_bytes,
    };
    let wal = tokio::task::spawn_blocking(move || crate::state::open(&data_dir, options))
        .await
        .expect("opening the WAL does not panic")?;
    info!(data_dir = %config.data_dir.display(), wal_bytes = wal.used_bytes(), "WAL opened");
    let new = wal.is_new();
    let marked = wal.clone();
    let clean = tokio::task::spawn_blocking(move || marked.take_clean_stop())
        .await
        .expect("reading the clean-stop mark does not panic")?;
    let settle = !(clean || new);
    if settle {
        info!("the previous run did not stop cleanly: the start-up tail check waits for the internal partitions to settle");
    }
    Ok((wal, settle))
}

/// The internal cluster, not connected yet: the connectors connect at their start,
/// and wait for it while it does not answer.
fn internal_cluster(config: &ServiceConfig) -> Result<Cluster, ConfigError> {
    let internal = Cluster {
        role: "internal",
        key: "internal.bootstrap.servers",
        servers: config.internal_bootstrap_servers.clone(),
        timeout: config.request_timeout,
        internal_retries: false,
        client_id: "kafka-direct".into(),
        transport: internal_transport(config)?,
    };
    warn_if_names_unchecked(&config.internal_access, None);
    Ok(internal)
}

/// Samples each connector's forwarded total for the status page's chart.
fn spawn_sampler(interval: Duration, connectors: Arc<Connectors>, cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {
                    for c in connectors.handles() {
                        c.sample();
                    }
                }
            }
        }
    });
}

fn spawn_progress(
    interval: Duration,
    connectors: Arc<Connectors>,
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
                _ = ticker.tick() => log_progress(&connectors.partitions(), &wal, interval, &mut last),
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
    let total = |counter: fn(&PartitionMetrics) -> &std::sync::atomic::AtomicU64| -> u64 {
        metrics
            .iter()
            .map(|m| counter(m).load(Ordering::Relaxed))
            .sum()
    };
    let fetched = total(|m| &m.fetched_records);
    let forwarded = total(|m| &m.forwarded_records);
    let lag: i64 = metrics.iter().map(|m| m.lag()).sum();
    let unexpected = total(|m| &m.unexpected_produce_offsets);
    let aborted = total(|m| &m.aborted_records);
    let dead_lettered: u64 = metrics.iter().map(|m| m.dead_lettered_total()).sum();
    let now = Instant::now();
    let rate = match last.insert("forwarded", (forwarded, now)) {
        Some((before, at)) if !interval.is_zero() => {
            // A connector restarted since (stop and resume) counts from 0 again.
            forwarded.saturating_sub(before) as f64 / now.duration_since(at).as_secs_f64().max(1e-3)
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
