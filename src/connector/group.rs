//! The connector's consumer group on the external cluster (`group.id`): where the lag
//! tools of the source's operators (kafka-consumer-groups, Burrow, kafka-lag-exporter)
//! see kafka-direct's position.
//!
//! What is committed is the stored position of each partition: the next source offset
//! not yet stored in the internal cluster (or the dead-letter topic), committed every
//! `offset.flush.interval.ms` and once at a clean stop, as a consumer outside the group
//! commits (generation -1), with metadata naming kafka-direct and the connector.
//!
//! The group is read at each start:
//! - a partition without a WAL position starts from the group's offset when it has one
//!   (before `auto.offset.reset`); the internal topic's tail is looked at first and wins,
//!   so a group offset never makes a record stored twice;
//! - an offset that does not carry kafka-direct's metadata was set by someone else
//!   (`kafka-consumer-groups --reset-offsets` while the connector was stopped): it is
//!   followed as an offset change through the API is, and recorded in the state until
//!   kafka-direct's own commit replaces it in the group, so a crash before that does not
//!   follow it twice.
//!
//! While the connector runs, an offset set by someone else is overwritten at the next
//! commit, with an error naming it: positions move only while a connector is stopped.
//!
//! A group that cannot be read or written (no Group ACL, a broker without the group
//! APIs) never stops replication: a warning names the missing permission, once.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tracing::{error, info, warn};

use crate::config::ConnectorConfig;
use crate::kafka::cluster::{Cluster, ClusterError};
use crate::kafka::group::{Committed, GroupClient};
use crate::metrics::PartitionMetrics;
use crate::record::SourcePartition;
use crate::state::State;
use crate::wal::{Wal, WalError};

/// The metadata kafka-direct commits with its offsets.
pub(crate) fn metadata(connector: &str) -> String {
    format!(
        "kafka-direct {} connector={connector}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Whether an offset was committed by kafka-direct (by its metadata).
pub(crate) fn is_ours(committed: &Committed) -> bool {
    committed.metadata.starts_with("kafka-direct ")
}

/// What a refusal of the group's calls means for the user, when it is one.
pub(crate) fn refusal_hint(e: &ClusterError, group: &str) -> Option<String> {
    match e.broker_error()? {
        ResponseError::GroupAuthorizationFailed => Some(format!(
            "the external cluster refuses group {group} to this principal: grant it READ and DESCRIBE on Group:{group} (kafka-acls --add --allow-principal User:<user> --operation Read --operation Describe --group {group}), or set connector.group.id to a group it may use"
        )),
        ResponseError::TopicAuthorizationFailed => Some(format!(
            "committing to group {group} needs READ on the topics (the principal can fetch them only with it: check the topic ACLs)"
        )),
        ResponseError::InvalidGroupId => Some(format!(
            "the external cluster refuses {group:?} as a group id: set connector.group.id"
        )),
        _ => None,
    }
}

/// The connector's group and what kafka-direct last committed to it.
#[derive(Debug)]
pub(crate) struct SourceGroup {
    client: GroupClient,
    connector: String,
    metadata: String,
    /// The last offset committed per partition.
    committed: BTreeMap<SourcePartition, i64>,
    /// A failure was logged as a warning; the next ones go to debug until a call works.
    warned: bool,
}

impl SourceGroup {
    /// The group of `connector` on its external cluster.
    pub(crate) fn new(cluster: Cluster, connector: &ConnectorConfig) -> Self {
        Self {
            client: GroupClient::new(cluster, connector.group_id.clone()),
            connector: connector.name.clone(),
            metadata: metadata(&connector.name),
            committed: BTreeMap::new(),
            warned: false,
        }
    }

    /// The group's id.
    pub(crate) fn id(&self) -> &str {
        self.client.group()
    }

    /// The group's committed offsets of `topics`; empty, with a warning, when the group
    /// cannot be read.
    pub(crate) async fn read(&mut self, topics: &[String]) -> BTreeMap<SourcePartition, Committed> {
        match self.client.committed(topics).await {
            Ok(committed) => {
                self.warned = false;
                committed
            }
            Err(e) => {
                self.failed("reading", &e);
                BTreeMap::new()
            }
        }
    }

    fn failed(&mut self, doing: &str, e: &ClusterError) {
        let group = self.client.group().to_owned();
        let hint = refusal_hint(e, &group).unwrap_or_else(|| {
            "replication goes on; the group is tried again at the next commit".into()
        });
        if self.warned {
            tracing::debug!(connector = %self.connector, %group, error = %e, "{doing} the connector's consumer group failed again");
        } else {
            self.warned = true;
            warn!(connector = %self.connector, %group, error = %e, "{doing} the connector's consumer group on the external cluster failed: lag tools do not see kafka-direct's position ({hint})");
        }
    }

    /// The partitions of `committed` whose offset someone else set, and that this
    /// connector has a position for in the WAL: offset changes to follow at this start.
    /// An offset already followed at an earlier start (recorded in the state, and not yet
    /// replaced in the group by kafka-direct's own commit) is not followed again.
    pub(crate) fn resets_to_follow(
        &self,
        wal: &Wal,
        committed: &BTreeMap<SourcePartition, Committed>,
        owned: &[SourcePartition],
    ) -> Result<Vec<(SourcePartition, i64)>, WalError> {
        let mut follow = Vec::new();
        for partition in owned {
            let Some(c) = committed.get(partition) else {
                continue;
            };
            if is_ours(c) {
                continue;
            }
            if State::of(wal).group_reset(&self.connector, partition)? == Some(c.offset) {
                continue;
            }
            let log = wal.partition(&self.connector, partition)?;
            let checkpoints = log.checkpoints()?;
            if checkpoints.fetched_next.is_none() && checkpoints.forwarded_next.is_none() {
                continue; // no position: the group's offset is its start anyway
            }
            follow.push((partition.clone(), c.offset));
        }
        Ok(follow)
    }

    /// Commits the stored position of each of `partitions` that changed since the last
    /// commit (all of them after an offset set by someone else). Failures are logged;
    /// replication never waits for the group.
    pub(crate) async fn flush(&mut self, wal: &Wal, partitions: &[Arc<PartitionMetrics>]) {
        let positions: BTreeMap<SourcePartition, i64> = partitions
            .iter()
            .map(|p| {
                (
                    p.partition.clone(),
                    p.forwarded_next.load(Ordering::Relaxed),
                )
            })
            .filter(|(_, next)| *next >= 0)
            .collect();
        if positions.is_empty() {
            return;
        }
        let topics: Vec<String> = {
            let mut t: Vec<String> = positions.keys().map(|p| p.topic.clone()).collect();
            t.dedup();
            t
        };
        let current = match self.client.committed(&topics).await {
            Ok(current) => current,
            Err(e) => {
                self.failed("reading", &e);
                return;
            }
        };
        for (partition, c) in &current {
            if !is_ours(c) && positions.contains_key(partition) {
                let followed = State::of(wal)
                    .group_reset(&self.connector, partition)
                    .ok()
                    .flatten();
                if followed != Some(c.offset) {
                    error!(connector = %self.connector, group = %self.client.group(), %partition, offset = c.offset,
                        "the connector's group offset was set by another client while the connector runs: kafka-direct overwrites it with its own position. To move the connector, stop it (PUT /connectors/<name>/stop), then reset the group or PATCH its offsets, and resume it");
                }
                self.committed.remove(partition);
            }
        }
        let changed: BTreeMap<SourcePartition, i64> = positions
            .into_iter()
            .filter(|(p, next)| {
                self.committed.get(p) != Some(next)
                    || current.get(p).map(|c| c.offset) != Some(*next)
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        match self.client.commit(&changed, &self.metadata).await {
            Ok(()) => {
                if self.warned {
                    info!(connector = %self.connector, group = %self.client.group(), "committing to the connector's consumer group works again");
                }
                self.warned = false;
                for (partition, next) in changed {
                    // The group now holds kafka-direct's offset: an offset followed at
                    // the start is no longer in it.
                    let _ = State::of(wal).set_group_reset(&self.connector, &partition, None);
                    self.committed.insert(partition, next);
                }
            }
            Err(e) => self.failed("committing to", &e),
        }
    }
}
