//! Topic administration over our own connection to any broker of a cluster: a topic's
//! configs (DescribeConfigs), creating a topic with configs (CreateTopics) and changing
//! them (IncrementalAlterConfigs), and the cluster's id. CreateTopics goes to the broker
//! the metadata names as controller (a KRaft cluster names a broker, which forwards it).

use std::collections::BTreeMap;

use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    CreateTopicsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::kafka::cluster::{Cluster, ClusterError};
use crate::kafka::connection::{topic_name, Connection};

/// The resource type of a topic in DescribeConfigs and IncrementalAlterConfigs.
const TOPIC: i8 = 2;
/// The config source of a value set on the topic itself (`kafka-configs --alter`,
/// `kafka-topics --create --config`).
const TOPIC_CONFIG: i8 = 1;

/// A broker's refusal of an admin request: the error and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The error code.
    pub error: ResponseError,
    /// The broker's message (empty when none).
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.message.is_empty() {
            write!(f, "{:?}", self.error)
        } else {
            write!(
                f,
                "{:?}: {}",
                self.error,
                self.message.trim_end_matches('.')
            )
        }
    }
}

fn refusal(code: i16, message: Option<StrBytes>) -> Option<Refusal> {
    Some(Refusal {
        error: ResponseError::try_from_code(code)?,
        message: message.map(|m| m.to_string()).unwrap_or_default(),
    })
}

/// A connection to the first server of `cluster` that answers.
pub(crate) async fn any_broker(cluster: &Cluster, what: &str) -> Result<Connection, ClusterError> {
    let mut last = None;
    for server in &cluster.servers {
        let opened = cluster
            .bounded(
                what.to_owned(),
                Connection::open(server, &cluster.client_id, &cluster.transport),
            )
            .await;
        match opened {
            Ok(conn) => return Ok(conn),
            Err(e) if e.is_transient() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("a cluster has at least one server"))
}

/// The cluster's metadata without topics: its id, its controller, its brokers.
pub(crate) async fn brokers_metadata(
    cluster: &Cluster,
    conn: &mut Connection,
    what: &str,
) -> Result<kafka_protocol::messages::MetadataResponse, ClusterError> {
    use kafka_protocol::messages::MetadataRequest;
    cluster
        .bounded(what.to_owned(), async {
            let version = conn.version::<MetadataRequest>(1..=12)?;
            let request = MetadataRequest::default()
                .with_topics(Some(Vec::new()))
                .with_allow_auto_topic_creation(false);
            conn.call(&request, version).await
        })
        .await
}

/// The cluster's id (Metadata v2 and later; `None` when the broker gives none).
pub async fn cluster_id(cluster: &Cluster) -> Result<Option<String>, ClusterError> {
    let what = "reading the cluster id";
    let mut conn = any_broker(cluster, what).await?;
    let metadata = brokers_metadata(cluster, &mut conn, what).await?;
    Ok(metadata
        .cluster_id
        .map(|id| id.to_string())
        .filter(|id| !id.is_empty()))
}

/// A connection to the cluster's controller as its metadata names it, or to any broker
/// when it names none (a KRaft cluster names a broker, which forwards to the controller;
/// a ZooKeeper-mode cluster names the controller, the only broker that creates topics).
async fn controller(cluster: &Cluster, what: &str) -> Result<Connection, ClusterError> {
    let mut conn = any_broker(cluster, what).await?;
    let metadata = brokers_metadata(cluster, &mut conn, what).await?;
    let addr = metadata
        .brokers
        .iter()
        .find(|b| b.node_id == metadata.controller_id)
        .map(|b| format!("{}:{}", b.host, b.port));
    match addr {
        Some(addr) if addr != conn.addr() => {
            cluster
                .bounded(
                    what.to_owned(),
                    Connection::open(&addr, &cluster.client_id, &cluster.transport),
                )
                .await
        }
        _ => Ok(conn),
    }
}

/// The configs set on each of `topics` itself (not the broker's defaults), by topic;
/// a topic the broker refuses to describe (missing, not authorized) has its refusal.
pub async fn topic_configs(
    cluster: &Cluster,
    topics: &[String],
) -> Result<BTreeMap<String, Result<BTreeMap<String, String>, Refusal>>, ClusterError> {
    let what = format!("reading the configs of topics {}", topics.join(","));
    let mut conn = any_broker(cluster, &what).await?;
    let request = DescribeConfigsRequest::default().with_resources(
        topics
            .iter()
            .map(|t| {
                DescribeConfigsResource::default()
                    .with_resource_type(TOPIC)
                    .with_resource_name(StrBytes::from_string(t.clone()))
                    .with_configuration_keys(None)
            })
            .collect(),
    );
    let response = cluster
        .bounded(what, async {
            let version = conn.version::<DescribeConfigsRequest>(1..=4)?;
            conn.call(&request, version).await
        })
        .await?;
    let mut out = BTreeMap::new();
    for result in response.results {
        let topic = result.resource_name.to_string();
        let configs = match refusal(result.error_code, result.error_message) {
            Some(refused) => Err(refused),
            None => Ok(result
                .configs
                .into_iter()
                .filter(|c| c.config_source == TOPIC_CONFIG && !c.is_sensitive)
                .filter_map(|c| Some((c.name.to_string(), c.value?.to_string())))
                .collect()),
        };
        out.insert(topic, configs);
    }
    Ok(out)
}

/// Creates `topic` with `partitions` partitions, `replication_factor` replicas (-1: the
/// broker's default) and `configs`. `Ok(Err(..))` carries the broker's refusal
/// (TOPIC_ALREADY_EXISTS among them).
pub async fn create_topic(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &BTreeMap<String, String>,
) -> Result<Result<(), Refusal>, ClusterError> {
    let what = format!("creating topic {topic}");
    let mut conn = controller(cluster, &what).await?;
    let request = CreateTopicsRequest::default()
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic_name(topic))
            .with_num_partitions(partitions)
            .with_replication_factor(replication_factor)
            .with_configs(
                configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(StrBytes::from_string(k.clone()))
                            .with_value(Some(StrBytes::from_string(v.clone())))
                    })
                    .collect(),
            )])
        .with_timeout_ms(cluster.timeout.as_millis().min(i32::MAX as u128) as i32);
    let response = cluster
        .bounded(what, async {
            let version = conn.version::<CreateTopicsRequest>(2..=7)?;
            conn.call(&request, version).await
        })
        .await?;
    Ok(
        match response
            .topics
            .into_iter()
            .find_map(|t| refusal(t.error_code, t.error_message))
        {
            Some(refused) => Err(refused),
            None => Ok(()),
        },
    )
}

/// Sets the configs `set` on `topic` (others are left as they are).
pub async fn alter_topic_configs(
    cluster: &Cluster,
    topic: &str,
    set: &BTreeMap<String, String>,
) -> Result<Result<(), Refusal>, ClusterError> {
    const SET: i8 = 0;
    let what = format!("changing the configs of topic {topic}");
    let mut conn = any_broker(cluster, &what).await?;
    let configs = set
        .iter()
        .map(|(k, v)| {
            AlterableConfig::default()
                .with_name(StrBytes::from_string(k.clone()))
                .with_config_operation(SET)
                .with_value(Some(StrBytes::from_string(v.clone())))
        })
        .collect();
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(TOPIC)
            .with_resource_name(StrBytes::from_string(topic.to_owned()))
            .with_configs(configs),
    ]);
    let response = cluster
        .bounded(what, async {
            let version = conn.version::<IncrementalAlterConfigsRequest>(0..=1)?;
            conn.call(&request, version).await
        })
        .await?;
    Ok(
        match response
            .responses
            .into_iter()
            .find_map(|r| refusal(r.error_code, r.error_message))
        {
            Some(refused) => Err(refused),
            None => Ok(()),
        },
    )
}
