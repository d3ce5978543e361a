//! The connector's consumer group on the external cluster (`group.id`): where the lag
//! tools of the source's operators (kafka-consumer-groups, Burrow, kafka-lag-exporter)
//! see kafka-direct's position.
//!
//! What is committed is the stored position of each partition: the next source offset
//! not yet stored in the internal cluster (or the dead-letter topic), committed every
//! `offset.flush.interval.ms` and once at a clean stop, as a consumer outside the group
//! commits (generation -1), with metadata naming kafka-direct, the connector and its
//! deployment (the internal cluster's id and `topic.prefix`): another deployment's
//! connector of the same name committing to the same group is told apart.
//!
//! The group is read at each start ([`SourceGroup::plan`]); each committed offset of a
//! partition this shard runs is, by its metadata:
//! - this deployment's: the start of a partition without a WAL position (before
//!   `auto.offset.reset`; the internal topic's tail is looked at first and wins);
//! - another deployment's: ignored, with a warning;
//! - anyone else's (`kafka-consumer-groups --reset-offsets`, an earlier consumer): an
//!   operator's choice, taken once: followed as an offset change through the API is for a
//!   partition with a position, the start of one without. It is then recorded in the
//!   state (`GroupReset`) until kafka-direct's own commit replaces it in the group, so a
//!   crash before that does not take it twice. Taken only while the group has no active
//!   members: a group with members is some application's, not this connector's.
//!
//! An offset recorded in the state is not taken again: that also covers what an offset
//! change through the API could not delete from the group.
//!
//! While the connector runs, an offset set by anyone else is overwritten at the next
//! commit, with an error naming it (positions move only while a connector is stopped),
//! and recorded as taken first: a start that could not read the group never leads a
//! later start to take an old offset.
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
use crate::state::{GroupCommits, State};
use crate::wal::{Wal, WalError};

/// Which deployment a connector is: the internal cluster's id (its servers when it
/// gives none) and the connector's `topic.prefix`. Shards of one deployment share it.
/// An internal cluster that does not answer is an error: guessing would take this
/// deployment's own offsets for another's.
pub(crate) async fn deployment(
    internal: &Cluster,
    connector: &ConnectorConfig,
) -> Result<String, ClusterError> {
    let id = crate::kafka::admin::cluster_id(internal).await?;
    Ok(deployment_of(id, &internal.servers, connector))
}

/// [`deployment`] from the internal cluster's id as already read.
pub(crate) fn deployment_of(
    cluster_id: Option<String>,
    servers: &[String],
    connector: &ConnectorConfig,
) -> String {
    let cluster = cluster_id
        .filter(|id| !id.is_empty())
        .unwrap_or_else(|| servers.join(","));
    format!("{cluster}/{}", connector.topic_prefix)
}

/// The metadata kafka-direct commits with its offsets.
pub(crate) fn metadata(connector: &str, deployment: &str) -> String {
    format!(
        "kafka-direct {} connector={connector} deployment={deployment}",
        env!("CARGO_PKG_VERSION")
    )
}

/// Who committed an offset, by its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// This connector of this deployment.
    Ours,
    /// kafka-direct, but another connector or deployment.
    OtherDeployment,
    /// Anyone else: Kafka's tools, a consumer.
    Other,
}

/// Who committed `committed`, for `connector` of `deployment`.
pub(crate) fn origin(committed: &Committed, connector: &str, deployment: &str) -> Origin {
    let m = &committed.metadata;
    if !m.starts_with("kafka-direct ") {
        Origin::Other
    } else if m.ends_with(&format!(" connector={connector} deployment={deployment}")) {
        Origin::Ours
    } else {
        Origin::OtherDeployment
    }
}

/// Records, durably, that `offsets` are about to be committed to `group`, before they
/// are sent: a start then knows its own offsets whatever metadata the broker kept.
/// What the group holds now (`current`) of kafka-direct's becomes the confirmed one;
/// offsets sent before whose answer was lost stay recorded (the last
/// [`GroupCommits::KEPT`]), since a delayed request may still land.
pub(crate) async fn record_sending(
    wal: &Wal,
    connector: &str,
    group: &str,
    metadata: &str,
    current: &BTreeMap<SourcePartition, Committed>,
    offsets: &BTreeMap<SourcePartition, i64>,
) -> Result<(), WalError> {
    let state = State::of(wal);
    for (partition, next) in offsets {
        let mut r = record_of(state, connector, partition, group)?;
        if let Some(held) = current.get(partition) {
            if held.metadata == metadata {
                r.metadata_kept = true;
            }
            if r.may_hold(held.offset) {
                r.confirmed = Some(held.offset);
                r.sent.retain(|s| *s != held.offset);
            }
        }
        r.sent.retain(|s| s != next);
        r.sent.push(*next);
        let over = r.sent.len().saturating_sub(GroupCommits::KEPT);
        r.sent.drain(..over);
        state.set_group_commits(connector, partition, Some(&r))?;
    }
    wal.commit().await
}

/// kafka-direct's record of its commits to `group` for `partition` (empty when none,
/// or when it was of another group).
fn record_of(
    state: State<'_>,
    connector: &str,
    partition: &SourcePartition,
    group: &str,
) -> Result<GroupCommits, WalError> {
    Ok(state
        .group_commits(connector, partition)?
        .filter(|r| r.group == group)
        .unwrap_or_else(|| GroupCommits {
            group: group.to_owned(),
            ..GroupCommits::default()
        }))
}

/// Records that `group` answered for `offsets` (durable with the WAL's next commit).
pub(crate) fn record_sent(
    wal: &Wal,
    connector: &str,
    group: &str,
    offsets: &BTreeMap<SourcePartition, i64>,
) -> Result<(), WalError> {
    let state = State::of(wal);
    for (partition, next) in offsets {
        let mut r = record_of(state, connector, partition, group)?;
        r.confirmed = Some(*next);
        r.sent.retain(|s| s != next);
        state.set_group_commits(connector, partition, Some(&r))?;
    }
    Ok(())
}

/// What a refusal of the group's calls means for the user, when it is one.
pub(crate) fn refusal_hint(e: &ClusterError, group: &str) -> Option<String> {
    match e.broker_error()? {
        ResponseError::GroupAuthorizationFailed => Some(format!(
            "the external cluster refuses group {group} to this principal: grant it READ and DESCRIBE on Group:{group} (kafka-acls --add --allow-principal User:<user> --operation Read --operation Describe --group {group}; DELETE too for offset resets through the API), or set connector.group.id to a group it may use"
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

/// What the group says for this start.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Offsets set by someone else for partitions with a position: offset changes to
    /// make before anything runs.
    pub(crate) follow: Vec<(SourcePartition, i64)>,
    /// Where partitions without a position start.
    pub(crate) starts: BTreeMap<SourcePartition, i64>,
    /// Offsets set by someone else that this start took as starts or decided not to
    /// take (a group with members): recorded in the state before anything runs, so no
    /// later start takes them.
    pub(crate) taken: Vec<(SourcePartition, i64)>,
}

/// The connector's group and what kafka-direct last committed to it.
#[derive(Debug)]
pub(crate) struct SourceGroup {
    client: GroupClient,
    connector: String,
    deployment: String,
    metadata: String,
    /// The last offset committed per partition.
    committed: BTreeMap<SourcePartition, i64>,
    /// Whether the start read the group (for what the log says of an offset set by
    /// someone else that a commit overwrites).
    read_at_start: bool,
    /// A failure was logged as a warning; the next ones go to debug until a call works.
    warned: bool,
}

impl SourceGroup {
    /// The group of `connector` of `deployment` on its external cluster.
    pub(crate) fn new(cluster: Cluster, connector: &ConnectorConfig, deployment: String) -> Self {
        Self {
            client: GroupClient::new(cluster, connector.group_id.clone()),
            connector: connector.name.clone(),
            metadata: metadata(&connector.name, &deployment),
            deployment,
            committed: BTreeMap::new(),
            read_at_start: false,
            warned: false,
        }
    }

    /// The group's id.
    pub(crate) fn id(&self) -> &str {
        self.client.group()
    }

    /// Who committed `c` for `partition`: the metadata says it, unless it names no
    /// kafka-direct and the group was never seen to keep kafka-direct's metadata (tansu
    /// 0.6 drops it): then an offset kafka-direct recorded sending is its own.
    fn classify(
        &self,
        wal: &Wal,
        partition: &SourcePartition,
        c: &Committed,
    ) -> Result<Origin, WalError> {
        let by_metadata = origin(c, &self.connector, &self.deployment);
        if by_metadata != Origin::Other {
            return Ok(by_metadata);
        }
        let record = State::of(wal).group_commits(&self.connector, partition)?;
        Ok(match record {
            Some(r) if r.group == self.id() && !r.metadata_kept && r.may_hold(c.offset) => {
                Origin::Ours
            }
            _ => Origin::Other,
        })
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

    /// Reads the group and decides what its offsets mean for the start of `owned`
    /// (see the module's text). A group that cannot be read gives an empty plan, with a
    /// warning.
    pub(crate) async fn plan(
        &mut self,
        wal: &Wal,
        owned: &[SourcePartition],
    ) -> Result<Plan, WalError> {
        let committed = match self.client.committed(owned).await {
            Ok(committed) => {
                self.read_at_start = true;
                self.warned = false;
                committed
            }
            Err(e) => {
                self.failed("reading", &e);
                return Ok(Plan::default());
            }
        };
        let state = State::of(wal);
        let mut plan = Plan::default();
        let mut others = Vec::new();
        for partition in owned {
            let Some(c) = committed.get(partition) else {
                continue;
            };
            if state.group_reset(&self.connector, partition)? == Some(c.offset) {
                if self.classify(wal, partition, c)? == Origin::Other {
                    info!(connector = %self.connector, group = %self.id(), %partition, offset = c.offset,
                        "the group's offset was set by another client and taken (or refused) at an earlier start: not taken again (a reset to this same offset is indistinguishable from it; reset through the API instead)");
                }
                continue;
            }
            let log = wal.partition(&self.connector, partition)?;
            let checkpoints = log.checkpoints()?;
            let positioned =
                checkpoints.fetched_next.is_some() || checkpoints.forwarded_next.is_some();
            match self.classify(wal, partition, c)? {
                Origin::Ours if !positioned => {
                    plan.starts.insert(partition.clone(), c.offset);
                }
                Origin::Ours => {}
                Origin::OtherDeployment => {
                    warn!(connector = %self.connector, group = %self.id(), %partition, offset = c.offset, metadata = %c.metadata,
                        "the connector's group holds an offset committed by another kafka-direct deployment: it is neither followed nor used as a start, and kafka-direct overwrites it; give each deployment a connector.group.id of its own");
                }
                Origin::Other => others.push((partition.clone(), c.offset, positioned)),
            }
        }
        if others.is_empty() {
            return Ok(plan);
        }
        match self.client.is_empty().await {
            Ok(Some(true)) => {}
            answer => {
                let why = match answer {
                    Ok(Some(_)) => "it has active members".to_owned(),
                    Ok(None) => "it is not a classic group without members".to_owned(),
                    Err(e) => format!("describing it failed: {e}"),
                };
                warn!(connector = %self.connector, group = %self.id(), partitions = others.len(),
                    "the connector's group holds offsets set by another client, but {why}: they are not taken, now or later (is connector.group.id an application's group?)");
                plan.taken.extend(
                    others
                        .into_iter()
                        .map(|(partition, offset, _)| (partition, offset)),
                );
                return Ok(plan);
            }
        }
        for (partition, offset, positioned) in others {
            if positioned {
                plan.follow.push((partition, offset));
            } else {
                info!(connector = %self.connector, group = %self.id(), %partition, offset,
                    "no position yet: starting from the offset another client set in the connector's group");
                plan.starts.insert(partition.clone(), offset);
                plan.taken.push((partition, offset));
            }
        }
        Ok(plan)
    }

    /// Commits the stored position of each of `partitions` that changed since the last
    /// commit (and over an offset set by someone else). Failures are logged; replication
    /// never waits for the group.
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
        let partitions: Vec<SourcePartition> = positions.keys().cloned().collect();
        let current = match self.client.committed(&partitions).await {
            Ok(current) => current,
            Err(e) => {
                self.failed("reading", &e);
                return;
            }
        };
        for (partition, c) in &current {
            if !positions.contains_key(partition) {
                continue;
            }
            let taken = State::of(wal)
                .group_reset(&self.connector, partition)
                .ok()
                .flatten()
                == Some(c.offset);
            match self.classify(wal, partition, c).unwrap_or(Origin::Ours) {
                Origin::Ours => continue,
                Origin::Other if !taken => {
                    // Overwritten below; recorded first, so that no later start takes
                    // it if this commit is refused.
                    let _ =
                        State::of(wal).set_group_reset(&self.connector, partition, Some(c.offset));
                    if self.read_at_start {
                        error!(connector = %self.connector, group = %self.id(), %partition, offset = c.offset,
                            "the connector's group offset was set by another client while the connector runs: kafka-direct overwrites it with its own position. To move the connector, stop it (PUT /connectors/<name>/stop), then reset the group or PATCH its offsets, and resume it");
                    } else {
                        error!(connector = %self.connector, group = %self.id(), %partition, offset = c.offset,
                            "the connector's group holds an offset set by another client, and this start could not read the group: it is not taken, and kafka-direct overwrites it with its own position. To move the connector there, stop it and reset again");
                    }
                }
                _ => {}
            }
            self.committed.remove(partition);
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
        let group = self.id().to_owned();
        if let Err(e) = record_sending(
            wal,
            &self.connector,
            &group,
            &self.metadata,
            &current,
            &changed,
        )
        .await
        {
            warn!(connector = %self.connector, error = %e, "recording the commit to the connector's group failed: not committed");
            return;
        }
        match self.client.commit(&changed, &self.metadata).await {
            Ok(()) => {
                let _ = record_sent(wal, &self.connector, &group, &changed);
                if self.warned {
                    info!(connector = %self.connector, group = %self.id(), "committing to the connector's consumer group works again");
                }
                self.warned = false;
                for (partition, next) in changed {
                    // The group now holds kafka-direct's offset: an offset taken at the
                    // start is no longer in it.
                    let _ = State::of(wal).set_group_reset(&self.connector, &partition, None);
                    self.committed.insert(partition, next);
                }
            }
            Err(e) => self.failed("committing to", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_offset_the_group_may_hold_of_kafka_directs_is_recorded_as_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open_for_tests(dir.path());
        let p = SourcePartition::new("t", 0);
        let record = || State::of(&wal).group_commits("c", &p).unwrap().unwrap();
        let ours = |offset| record().may_hold(offset);
        let held = |offset, metadata: &str| {
            BTreeMap::from([(
                p.clone(),
                Committed {
                    offset,
                    metadata: metadata.to_owned(),
                },
            )])
        };
        let send = |current: BTreeMap<SourcePartition, Committed>, next| {
            let offsets = BTreeMap::from([(p.clone(), next)]);
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(record_sending(&wal, "c", "g", "m", &current, &offsets))
                .unwrap();
        };
        send(BTreeMap::new(), 10);
        assert!(ours(10) && !ours(9), "sent, before any answer");
        record_sent(&wal, "c", "g", &BTreeMap::from([(p.clone(), 10)])).unwrap();
        // 20's answer is lost, and 30's: the group holds 10, 20 or 30, and a delayed 20
        // may still land after 30.
        send(held(10, ""), 20);
        send(held(10, ""), 30);
        assert!(ours(10) && ours(20) && ours(30));
        // It held 30: 10 is no longer among what it can hold of kafka-direct's; 20 is.
        send(held(30, ""), 40);
        assert!(!ours(10) && ours(20) && ours(30) && ours(40));
        // Someone else set 5: overwritten; 5 is never taken for kafka-direct's.
        send(held(5, ""), 50);
        assert!(!ours(5) && ours(50));
        // Only the last few sent are kept.
        for next in 100..100 + GroupCommits::KEPT as i64 {
            send(held(5, ""), next);
        }
        assert!(!ours(20) && ours(100));
        assert!(!record().metadata_kept);
        // The group gave kafka-direct's metadata back: from now on the metadata decides.
        send(held(115, "m"), 200);
        assert!(record().metadata_kept);
    }

    #[test]
    fn offsets_are_told_apart_by_connector_and_deployment() {
        let c = |m: &str| Committed {
            offset: 1,
            metadata: m.to_owned(),
        };
        let ours = metadata("orders", "abc/ext");
        assert_eq!(origin(&c(&ours), "orders", "abc/ext"), Origin::Ours);
        let older = "kafka-direct 0.0.1 connector=orders deployment=abc/ext";
        assert_eq!(origin(&c(older), "orders", "abc/ext"), Origin::Ours);
        assert_eq!(
            origin(&c(&metadata("orders", "xyz/ext")), "orders", "abc/ext"),
            Origin::OtherDeployment
        );
        assert_eq!(
            origin(&c(&metadata("orders-eu", "abc/ext")), "orders", "abc/ext"),
            Origin::OtherDeployment
        );
        assert_eq!(origin(&c(""), "orders", "abc/ext"), Origin::Other);
        assert_eq!(origin(&c("app state"), "orders", "abc/ext"), Origin::Other);
    }
}
