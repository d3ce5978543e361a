//! Start-up steps on the internal cluster: creating the internal and dead-letter topics,
//! and the internal topics' configs carried from their source topics.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use kafka_protocol::ResponseError;

use crate::config::{ConnectorConfig, ServiceConfig};
use crate::kafka::admin;
use crate::kafka::cluster::Cluster;
use crate::service::ServiceError;

/// Runs a start-up step on the internal cluster, retrying transient errors a few times:
/// its client has no internal retries (see cluster.rs), and a broken connection here
/// says nothing about the cluster being unusable.
pub(super) async fn retry_start_up<T, F, Fut>(what: &str, mut step: F) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ServiceError>>,
{
    let mut retry = crate::kafka::cluster::Retry::new(Duration::from_secs(5));
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

/// The topic configs an internal topic takes from its source topic, when set on the
/// source topic itself: those that say what the topic keeps and how long. Not carried:
/// `message.timestamp.type` (LogAppendTime on the copy would replace the source's
/// timestamps, which the copy keeps), `message.timestamp.before.max.ms` and
/// `.after.max.ms` (they would refuse old records a backfill copies), and what belongs
/// to the cluster rather than the data (`min.insync.replicas`, throttles, tiered
/// storage, `unclean.leader.election.enable`). `internal.topic.config.<name>` sets any
/// of those, and overrides what is carried.
pub const CARRIED_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "min.cleanable.dirty.ratio",
    "max.message.bytes",
    "compression.type",
    "segment.bytes",
    "segment.ms",
];

/// The carried configs that decide which records a topic keeps: an internal topic is
/// never created without them when its source sets them.
const RETENTION_CONFIGS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "delete.retention.ms",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
];

/// The configs an internal topic should have: the carried ones of its source topic's
/// `source` configs, then the service's `internal.topic.config.*` over them.
pub fn internal_topic_configs(
    source: &BTreeMap<String, String>,
    overrides: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut configs: BTreeMap<String, String> = source
        .iter()
        .filter(|(k, _)| CARRIED_CONFIGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    configs.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
    configs
}

/// The values to set on an internal topic whose configs set on it are `current` so
/// that it has `wanted`. Nothing is removed: a config the source topic no longer sets
/// (or never set) keeps the value the internal topic has, which may be an operator's.
pub fn config_changes(
    current: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Creates `topic` with `partitions` partitions and `configs` on the internal cluster;
/// one that exists already (another shard, or an earlier attempt whose answer was
/// lost, made it) counts as created. A refusal of the configs is returned as it is
/// (the caller may try without the carried ones); any other is an error naming its
/// cause.
async fn try_create_topic(
    config: &ServiceConfig,
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    configs: &BTreeMap<String, String>,
) -> Result<Result<(), admin::Refusal>, ServiceError> {
    let created = admin::create_topic(
        cluster,
        topic,
        partitions,
        config.internal_replication_factor,
        configs,
    )
    .await?;
    match created {
        Ok(()) => Ok(Ok(())),
        Err(refused) if refused.error == ResponseError::TopicAlreadyExists => Ok(Ok(())),
        Err(refused) if refused.error == ResponseError::InvalidReplicationFactor => {
            Err(ServiceError::Config(format!(
                "creating internal topic {topic} with internal.replication.factor={} failed: {refused}. Set internal.replication.factor to at most the internal cluster's broker count (-1: the broker's default.replication.factor)",
                config.internal_replication_factor
            )))
        }
        Err(refused)
            if matches!(
                refused.error,
                ResponseError::InvalidConfig | ResponseError::PolicyViolation
            ) =>
        {
            Ok(Err(refused))
        }
        Err(refused) => Err(ServiceError::Config(format!(
            "creating internal topic {topic} failed: {refused}"
        ))),
    }
}

/// [`try_create_topic`], a refusal of the configs an error naming them.
async fn create_topic(
    config: &ServiceConfig,
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    configs: &BTreeMap<String, String>,
) -> Result<(), ServiceError> {
    try_create_topic(config, cluster, topic, partitions, configs)
        .await?
        .map_err(|refused| {
            ServiceError::Config(format!(
                "the internal cluster refused the configs of topic {topic} ({}): {refused}. Check the internal.topic.config.* keys (docs/configuration.md)",
                configs
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    await_leaders(cluster, topic, partitions).await;
    Ok(())
}

/// Waits, up to the cluster's request timeout, until metadata shows a leader for every
/// partition of a topic just created: a broker answers UnknownTopicOrPartition for a new
/// topic until the controller's change reaches it, which a loaded broker takes seconds
/// to do. Past the timeout the callers' own retries go on.
async fn await_leaders(cluster: &Cluster, topic: &str, partitions: i32) {
    use crate::kafka::connection::{bootstrap_metadata, leader_of, Connection, LeaderError};
    let deadline = tokio::time::Instant::now() + cluster.timeout;
    // One connection for every poll, opened again only after it fails.
    let mut conn: Option<Connection> = None;
    loop {
        let metadata = match conn.as_mut() {
            Some(open) => match tokio::time::timeout(cluster.timeout, open.metadata(topic)).await {
                Ok(Ok(metadata)) => Ok(metadata),
                Ok(Err(e)) => Err(LeaderError::Wire(e)),
                Err(_) => Err(LeaderError::Timeout(open.addr().to_string())),
            },
            None => bootstrap_metadata(
                &cluster.servers,
                &cluster.client_id,
                &cluster.transport,
                topic,
                cluster.timeout,
            )
            .await
            .map(|(open, metadata)| {
                conn = Some(open);
                metadata
            }),
        };
        let pending = match metadata {
            Ok(metadata) => {
                (0..partitions).find_map(|p| leader_of(&metadata, topic, p).err().map(|e| (p, e)))
            }
            Err(e) => {
                conn = None;
                Some((0, e))
            }
        };
        let Some((partition, error)) = pending else {
            return;
        };
        if tokio::time::Instant::now() >= deadline {
            warn!(%topic, partition, %error, "the topic just created has no leader in the internal cluster's metadata yet; going on");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The configs set on each of `topics` on the external cluster; empty, with a warning,
/// for a topic whose configs cannot be read (then only `internal.topic.config.*`
/// applies).
async fn source_configs(
    source: &Cluster,
    topics: &[String],
) -> BTreeMap<String, BTreeMap<String, String>> {
    match admin::topic_configs(source, topics).await {
        Ok(read) => read
            .into_iter()
            .filter_map(|(topic, configs)| match configs {
                Ok(configs) => Some((topic, configs)),
                Err(refused) => {
                    warn!(%topic, error = %refused, "the source topic's configs cannot be read (DescribeConfigs; a principal needs DESCRIBE_CONFIGS on the topic): its internal topic gets the internal cluster's defaults and internal.topic.config.* only");
                    None
                }
            })
            .collect(),
        Err(e) => {
            warn!(topics = %topics.join(","), error = %e, "the source topics' configs cannot be read: internal topics get the internal cluster's defaults and internal.topic.config.* only");
            BTreeMap::new()
        }
    }
}

/// Sets on `connector`'s existing internal topics of `topics` the carried configs their
/// source topics set now (and `internal.topic.config.*`) where they differ, logging each
/// change. Runs at each start and each metadata refresh; failures are logged, never
/// fatal.
pub(super) async fn sync_topic_configs(
    config: &ServiceConfig,
    connector: &ConnectorConfig,
    source: &Cluster,
    internal: &Cluster,
    topics: &[String],
) {
    if topics.is_empty() {
        return;
    }
    let from_source = match admin::topic_configs(source, topics).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(error = %e, "reading the source topics' configs failed; synced at the next refresh");
            return;
        }
    };
    let internal_topics: Vec<String> = topics.iter().map(|t| connector.internal_topic(t)).collect();
    let on_internal = match admin::topic_configs(internal, &internal_topics).await {
        Ok(read) => read,
        Err(e) => {
            tracing::debug!(error = %e, "reading the internal topics' configs failed; synced at the next refresh");
            return;
        }
    };
    for topic in topics {
        let Some(Ok(source_configs)) = from_source.get(topic) else {
            continue;
        };
        let internal_topic = connector.internal_topic(topic);
        let Some(Ok(current)) = on_internal.get(&internal_topic) else {
            continue;
        };
        let wanted = internal_topic_configs(source_configs, &config.internal_topic_configs);
        // A value is set once per process: a broker that takes topic configs without
        // keeping them (tansu 0.6) is not asked again at every refresh, and an operator
        // who changes a carried value on the internal topic afterwards keeps it until
        // the source's value changes.
        static APPLIED: std::sync::Mutex<std::collections::BTreeSet<(String, String, String)>> =
            std::sync::Mutex::new(std::collections::BTreeSet::new());
        let set: BTreeMap<String, String> = {
            let applied = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
            config_changes(current, &wanted)
                .into_iter()
                .filter(|(k, v)| !applied.contains(&(internal_topic.clone(), k.clone(), v.clone())))
                .collect()
        };
        if set.is_empty() {
            continue;
        }
        // All at once, and one by one after a refusal: one value the internal cluster
        // refuses does not hold back the others.
        let mut attempts = vec![set.clone()];
        if set.len() > 1 {
            attempts.extend(
                set.iter()
                    .map(|(k, v)| BTreeMap::from([(k.clone(), v.clone())])),
            );
        }
        for (i, attempt) in attempts.iter().enumerate() {
            match admin::alter_topic_configs(internal, &internal_topic, attempt).await {
                Ok(Ok(())) => {
                    let mut applied = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
                    for (k, v) in attempt {
                        applied.insert((internal_topic.clone(), k.clone(), v.clone()));
                        info!(topic = %internal_topic, config = %k, from = current.get(k).map(String::as_str).unwrap_or("(default)"), to = %v, "internal topic config changed to follow its source topic (or internal.topic.config.*)");
                    }
                    if i == 0 {
                        break;
                    }
                }
                Ok(Err(refused)) if i == 0 && attempts.len() > 1 => {
                    tracing::debug!(topic = %internal_topic, error = %refused, "changing the internal topic's configs at once was refused: one by one");
                }
                Ok(Err(refused)) => {
                    // Once per topic and refusal: the sync asks again at every refresh.
                    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
                        std::sync::Mutex::new(std::collections::BTreeSet::new());
                    let first = WARNED
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(format!("{internal_topic} {refused}"));
                    let wanted = attempt
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    if first {
                        warn!(topic = %internal_topic, configs = %wanted, error = %refused, "the internal cluster refused to change the internal topic's configs to follow its source topic (asked again at each metadata refresh, logged once)")
                    } else {
                        tracing::debug!(topic = %internal_topic, configs = %wanted, error = %refused, "the internal topic's configs still cannot follow its source topic")
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = %internal_topic, error = %e, "changing the internal topic's configs failed; tried again at the next refresh");
                    break;
                }
            }
        }
    }
}

/// Creates the dead-letter topic (one partition) unless it exists; returns its
/// partition count.
pub(super) async fn ensure_dead_letter_topic(
    config: &ServiceConfig,
    connector: &ConnectorConfig,
    cluster: &Cluster,
) -> Result<i32, ServiceError> {
    let topic = &connector.dead_letter_topic;
    if let Some(&count) = cluster.topics("listing internal topics").await?.get(topic) {
        return Ok(count as i32);
    }
    create_topic(config, cluster, topic, 1, &BTreeMap::new()).await?;
    info!(%topic, "created the dead-letter topic");
    Ok(1)
}

/// Creates the internal topics missing for `connector`'s source topics, with as many
/// partitions as their source and the source's carried configs
/// ([`internal_topic_configs`]); refuses an existing one with fewer partitions.
pub(super) async fn ensure_internal_topics(
    config: &ServiceConfig,
    connector: &ConnectorConfig,
    source: &Cluster,
    cluster: &Cluster,
    source_topics: &BTreeMap<String, usize>,
) -> Result<(), ServiceError> {
    let existing = cluster.topics("listing internal topics").await?;
    let missing: Vec<String> = connector
        .topics
        .iter()
        .filter(|t| {
            source_topics.contains_key(*t) && !existing.contains_key(&connector.internal_topic(t))
        })
        .cloned()
        .collect();
    let carried = if missing.is_empty() {
        BTreeMap::new()
    } else {
        source_configs(source, &missing).await
    };
    for topic in &connector.topics {
        let Some(&source_count) = source_topics.get(topic) else {
            continue;
        };
        let internal = connector.internal_topic(topic);
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
                let mut configs = internal_topic_configs(
                    carried.get(topic).unwrap_or(&BTreeMap::new()),
                    &config.internal_topic_configs,
                );
                let created =
                    try_create_topic(config, cluster, &internal, source_count as i32, &configs)
                        .await?;
                if let Err(refused) = created {
                    // A carried value the internal cluster refuses (a limit of its own,
                    // an older version) does not stop the copy, but what decides which
                    // records the topic keeps must be there: the topic is made with
                    // those (and `internal.topic.config.*`) only, or not at all.
                    let kept: BTreeMap<String, String> = configs
                        .iter()
                        .filter(|(k, _)| {
                            RETENTION_CONFIGS.contains(&k.as_str())
                                || config.internal_topic_configs.contains_key(*k)
                        })
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    warn!(topic = %internal, error = %refused,
                        carried = %configs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        kept = %kept.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                        "the internal cluster refused the internal topic's carried configs: creating it with the retention and compaction ones only");
                    configs = kept;
                    create_topic(config, cluster, &internal, source_count as i32, &configs).await?;
                }
                info!(topic = %internal, partitions = source_count,
                    configs = %configs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","),
                    "created internal topic");
            }
        }
    }
    Ok(())
}
