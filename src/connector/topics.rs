//! Start-up steps on the internal cluster: creating the internal and dead-letter topics.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::{ConnectorConfig, ServiceConfig};
use crate::kafka::cluster::{Cluster, ClusterError};
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
    let created = cluster
        .bounded(
            format!("creating topic {topic}"),
            controller.create_topic(
                topic.to_owned(),
                partitions,
                config.internal_replication_factor,
                config.request_timeout.as_millis() as i32,
            ),
        )
        .await;
    match created {
        // Another shard (or an earlier attempt whose answer was lost) created it.
        Err(e)
            if e.protocol_error()
                == Some(rskafka::client::error::ProtocolError::TopicAlreadyExists) =>
        {
            Ok(())
        }
        other => Ok(other?),
    }
}

/// Creates the dead-letter topic (one partition) unless it exists; returns its
/// partition count.
pub(super) async fn ensure_dead_letter_topic(
    config: &ServiceConfig,
    connector: &ConnectorConfig,
    cluster: &Cluster,
    client: &rskafka::client::Client,
) -> Result<i32, ServiceError> {
    let topic = &connector.dead_letter_topic;
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

/// Creates the internal topics missing for `connector`'s source topics, with as many
/// partitions as their source; refuses an existing one with fewer.
pub(super) async fn ensure_internal_topics(
    config: &ServiceConfig,
    connector: &ConnectorConfig,
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
                create_topic(config, cluster, client, &internal, source_count as i32).await?;
                info!(topic = %internal, partitions = source_count, "created internal topic");
            }
        }
    }
    Ok(())
}
