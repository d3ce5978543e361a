//! A consumer group's committed offsets, as a standalone consumer keeps them: no group
//! membership, commits with generation -1 and no member id (Kafka accepts them for a
//! group without active members; it refuses them while members are in it). Used for
//! the connector's own group on the external cluster and for the groups kafka-direct
//! carries over to the internal cluster.
//!
//! The coordinator is found with FindCoordinator; a call answered NOT_COORDINATOR (the
//! group moved), COORDINATOR_LOAD_IN_PROGRESS or COORDINATOR_NOT_AVAILABLE drops the
//! connection and is asked again, the coordinator looked up again, within the
//! cluster's bound.

use std::collections::BTreeMap;

use kafka_protocol::messages::find_coordinator_request::FindCoordinatorRequest;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_delete_request::{
    OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::{
    GroupId, OffsetCommitRequest, OffsetDeleteRequest, OffsetFetchRequest,
};
use kafka_protocol::protocol::{Request, StrBytes};
use kafka_protocol::ResponseError;

use crate::kafka::cluster::{Cluster, ClusterError, WireFailure};
use crate::kafka::connection::{topic_name, Connection, WireError};
use crate::record::SourcePartition;

/// The pause before asking again while the coordinator moves or loads.
const COORDINATOR_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether `e` says the group's coordinator is moving, loading, or not made yet (the
/// first group call on a new cluster creates the offsets topic): asking again soon
/// succeeds.
fn coordinator_moving(e: &ClusterError) -> bool {
    matches!(
        e.broker_error(),
        Some(
            ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::NotCoordinator
        )
    )
}

/// What a group holds for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The next offset the group's consumer reads.
    pub offset: i64,
    /// The metadata string committed with it (empty when none).
    pub metadata: String,
}

/// One group on one cluster.
#[derive(Debug)]
pub struct GroupClient {
    cluster: Cluster,
    group: String,
    coordinator: Option<Connection>,
}

impl GroupClient {
    /// A client for `group` on `cluster`; connects on the first call.
    pub fn new(cluster: Cluster, group: impl Into<String>) -> Self {
        Self {
            cluster,
            group: group.into(),
            coordinator: None,
        }
    }

    /// The group's id.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The group's committed offsets of `partitions` (those without one are left
    /// out). A group that does not exist has none.
    pub async fn committed(
        &mut self,
        partitions: &[SourcePartition],
    ) -> Result<BTreeMap<SourcePartition, Committed>, ClusterError> {
        if partitions.is_empty() {
            return Ok(BTreeMap::new());
        }
        let deadline = tokio::time::Instant::now() + self.cluster.timeout;
        loop {
            match self.committed_once(partitions).await {
                Err(e) if coordinator_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(COORDINATOR_WAIT).await
                }
                answer => return answer,
            }
        }
    }

    async fn committed_once(
        &mut self,
        partitions: &[SourcePartition],
    ) -> Result<BTreeMap<SourcePartition, Committed>, ClusterError> {
        let what = format!("reading the committed offsets of group {}", self.group);
        // The partitions named (tansu 0.6 answers a request for all of them, null
        // topics, with a response it cannot encode).
        let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for p in partitions {
            topics.entry(&p.topic).or_default().push(p.partition);
        }
        let request = OffsetFetchRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_topics(Some(
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partition_indexes(ps)
                    })
                    .collect(),
            ));
        let response = self.call(&what, &request, 2..=7).await?;
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(self.failed(&what, error));
        }
        let mut committed = BTreeMap::new();
        for topic in response.topics {
            for p in topic.partitions {
                if let Some(error) = ResponseError::try_from_code(p.error_code) {
                    return Err(self.failed(&what, error));
                }
                if p.committed_offset < 0 {
                    continue;
                }
                committed.insert(
                    SourcePartition::new(topic.name.0.to_string(), p.partition_index),
                    Committed {
                        offset: p.committed_offset,
                        metadata: p.metadata.map(|m| m.to_string()).unwrap_or_default(),
                    },
                );
            }
        }
        Ok(committed)
    }

    /// Commits `offsets` with `metadata`, as a consumer outside the group (generation
    /// -1, no member id). Refused (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION) while the
    /// group has active members.
    pub async fn commit(
        &mut self,
        offsets: &BTreeMap<SourcePartition, i64>,
        metadata: &str,
    ) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + self.cluster.timeout;
        loop {
            match self.commit_once(offsets, metadata).await {
                Err(e) if coordinator_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(COORDINATOR_WAIT).await
                }
                answer => return answer,
            }
        }
    }

    async fn commit_once(
        &mut self,
        offsets: &BTreeMap<SourcePartition, i64>,
        metadata: &str,
    ) -> Result<(), ClusterError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let what = format!("committing offsets to group {}", self.group);
        let mut topics: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (partition, offset) in offsets {
            topics.entry(&partition.topic).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(partition.partition)
                    .with_committed_offset(*offset)
                    .with_committed_leader_epoch(-1)
                    .with_committed_metadata(Some(StrBytes::from_string(metadata.to_owned()))),
            );
        }
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_group_instance_id(None)
            .with_retention_time_ms(-1)
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let response = self.call(&what, &request, 2..=9).await?;
        let error = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find_map(|p| ResponseError::try_from_code(p.error_code));
        match error {
            Some(error) => Err(self.failed(&what, error)),
            None => Ok(()),
        }
    }

    /// Whether this principal may commit to the group and `topic`, without committing
    /// anything: an OffsetCommit for partition `missing` of `topic`, which must not
    /// exist. Kafka checks READ on the group, then READ on the topic, then the
    /// partition: the answer is GROUP_AUTHORIZATION_FAILED, TOPIC_AUTHORIZATION_FAILED
    /// or UNKNOWN_TOPIC_OR_PARTITION (allowed), and nothing reaches the group.
    pub async fn probe_commit(
        &mut self,
        topic: &str,
        missing: i32,
    ) -> Result<Option<ResponseError>, ClusterError> {
        let deadline = tokio::time::Instant::now() + self.cluster.timeout;
        loop {
            match self.probe_commit_once(topic, missing).await {
                Err(e) if coordinator_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(COORDINATOR_WAIT).await
                }
                answer => return answer,
            }
        }
    }

    async fn probe_commit_once(
        &mut self,
        topic: &str,
        missing: i32,
    ) -> Result<Option<ResponseError>, ClusterError> {
        let what = format!("checking the permission to commit to group {}", self.group);
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::from_static_str(""))
            .with_retention_time_ms(-1)
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(missing)
                    .with_committed_offset(0)
                    .with_committed_leader_epoch(-1)])]);
        let response = self.call(&what, &request, 2..=9).await?;
        Ok(response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .find_map(|p| ResponseError::try_from_code(p.error_code)))
    }

    /// Whether the group has no active members (DescribeGroups): `Some(true)` for an
    /// empty or unknown classic group, `Some(false)` with members or while it
    /// rebalances, `None` when the coordinator does not describe it as a classic group
    /// (a KIP-848 consumer group).
    pub async fn is_empty(&mut self) -> Result<Option<bool>, ClusterError> {
        use kafka_protocol::messages::DescribeGroupsRequest;
        let what = format!("describing group {}", self.group);
        let request = DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(StrBytes::from_string(self.group.clone()))]);
        let deadline = tokio::time::Instant::now() + self.cluster.timeout;
        loop {
            let described = self.call(&what, &request, 0..=5).await;
            let group = match described {
                Ok(response) => response.groups.into_iter().next(),
                Err(e) if coordinator_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(COORDINATOR_WAIT).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let Some(group) = group else {
                return Ok(None);
            };
            match ResponseError::try_from_code(group.error_code) {
                None => {
                    return Ok(Some(
                        group.members.is_empty()
                            && matches!(&*group.group_state, "Empty" | "Dead" | ""),
                    ))
                }
                Some(ResponseError::GroupIdNotFound) => return Ok(None),
                Some(error) => {
                    let e = self.failed(&what, error);
                    if coordinator_moving(&e) && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(COORDINATOR_WAIT).await;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    /// Removes the group's committed offsets of `partitions` (OffsetDelete), so that
    /// its next reader starts where its own policy says.
    pub async fn delete(&mut self, partitions: &[SourcePartition]) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + self.cluster.timeout;
        loop {
            match self.delete_once(partitions).await {
                Err(e) if coordinator_moving(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(COORDINATOR_WAIT).await
                }
                answer => return answer,
            }
        }
    }

    async fn delete_once(&mut self, partitions: &[SourcePartition]) -> Result<(), ClusterError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let what = format!("deleting committed offsets of group {}", self.group);
        let mut topics: BTreeMap<&str, Vec<OffsetDeleteRequestPartition>> = BTreeMap::new();
        for partition in partitions {
            topics.entry(&partition.topic).or_default().push(
                OffsetDeleteRequestPartition::default().with_partition_index(partition.partition),
            );
        }
        let request = OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.group.clone())))
            .with_topics(
                topics
                    .into_iter()
                    .map(|(t, partitions)| {
                        OffsetDeleteRequestTopic::default()
                            .with_name(topic_name(t))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let response = self.call(&what, &request, 0..=0).await?;
        let error = ResponseError::try_from_code(response.error_code).or_else(|| {
            response
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .find_map(|p| ResponseError::try_from_code(p.error_code))
        });
        match error {
            // Nothing committed: nothing to delete.
            Some(ResponseError::GroupIdNotFound) | None => Ok(()),
            Some(error) => Err(self.failed(&what, error)),
        }
    }

    fn failed(&mut self, what: &str, error: ResponseError) -> ClusterError {
        if matches!(
            error,
            ResponseError::NotCoordinator
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::CoordinatorNotAvailable
        ) {
            self.coordinator = None;
        }
        self.cluster.error(what, WireFailure::Broker(error))
    }

    /// Sends `request` to the coordinator (found first if there is none) and waits for
    /// the answer, bounded by the cluster's timeout; a failed connection is dropped.
    async fn call<R>(
        &mut self,
        what: &str,
        request: &R,
        versions: std::ops::RangeInclusive<i16>,
    ) -> Result<R::Response, ClusterError>
    where
        R: Request + Sync,
        R::Response: Send,
    {
        if self.coordinator.is_none() {
            self.coordinator = Some(self.find_coordinator(what).await?);
        }
        let conn = self.coordinator.as_mut().expect("connected above");
        let answered = self
            .cluster
            .bounded(what.to_owned(), async {
                let version = conn.version::<R>(versions)?;
                conn.call(request, version).await
            })
            .await;
        if answered.is_err() {
            self.coordinator = None;
        }
        answered
    }

    /// A connection to the group's coordinator, asking each bootstrap server in turn.
    async fn find_coordinator(&self, what: &str) -> Result<Connection, ClusterError> {
        const GROUP: i8 = 0;
        let cluster = &self.cluster;
        let mut last = None;
        for server in &cluster.servers {
            let found = cluster
                .bounded(what.to_owned(), async {
                    let mut conn =
                        Connection::open(server, &cluster.client_id, &cluster.transport).await?;
                    let version = conn.version::<FindCoordinatorRequest>(1..=6)?;
                    let key = StrBytes::from_string(self.group.clone());
                    let request = if version >= 4 {
                        FindCoordinatorRequest::default()
                            .with_key_type(GROUP)
                            .with_coordinator_keys(vec![key])
                    } else {
                        FindCoordinatorRequest::default()
                            .with_key(key)
                            .with_key_type(GROUP)
                    };
                    let response = conn.call(&request, version).await?;
                    let found = if version >= 4 {
                        response
                            .coordinators
                            .first()
                            .map(|c| (c.error_code, c.host.to_string(), c.port))
                            .unwrap_or((
                                ResponseError::CoordinatorNotAvailable.code(),
                                String::new(),
                                0,
                            ))
                    } else {
                        (
                            response.error_code,
                            response.host.to_string(),
                            response.port,
                        )
                    };
                    Ok::<_, WireError>((conn, found))
                })
                .await;
            match found {
                Ok((conn, (code, host, port))) => {
                    if let Some(error) = ResponseError::try_from_code(code) {
                        return Err(cluster.error(what, WireFailure::Broker(error)));
                    }
                    let addr = format!("{host}:{port}");
                    if addr == conn.addr() {
                        return Ok(conn);
                    }
                    drop(conn);
                    return cluster
                        .bounded(
                            what.to_owned(),
                            Connection::open(&addr, &cluster.client_id, &cluster.transport),
                        )
                        .await;
                }
                Err(e) if e.is_transient() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("a cluster has at least one server"))
    }
}

/// Every group of `cluster` (ListGroups asked of each broker: a broker lists the groups
/// it coordinates).
pub async fn list_groups(cluster: &Cluster) -> Result<Vec<String>, ClusterError> {
    use kafka_protocol::messages::ListGroupsRequest;
    let what = "listing consumer groups";
    let mut conn = crate::kafka::admin::any_broker(cluster, what).await?;
    let brokers: Vec<String> = crate::kafka::admin::brokers_metadata(cluster, &mut conn, what)
        .await?
        .brokers
        .iter()
        .map(|b| format!("{}:{}", b.host, b.port))
        .collect();
    let mut groups = Vec::new();
    for broker in brokers {
        let response = cluster
            .bounded(what, async {
                let mut conn =
                    Connection::open(&broker, &cluster.client_id, &cluster.transport).await?;
                let version = conn.version::<ListGroupsRequest>(0..=4)?;
                conn.call(&ListGroupsRequest::default(), version).await
            })
            .await?;
        if let Some(error) = ResponseError::try_from_code(response.error_code) {
            return Err(cluster.error(what, WireFailure::Broker(error)));
        }
        groups.extend(
            response
                .groups
                .into_iter()
                .map(|g| g.group_id.0.to_string()),
        );
    }
    groups.sort();
    groups.dedup();
    Ok(groups)
}
