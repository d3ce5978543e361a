//! Consumer group failover (`groups.sync`): the committed offsets of the source's
//! consumer groups, translated exactly ([`super::translate`]) and committed to the same
//! groups on the internal cluster, so that a consumer switched from the external
//! cluster to the internal one resumes where it stopped: it reads again only what it
//! had not committed, and skips nothing.
//!
//! Every `groups.sync.interval.ms`, for each source group matching `groups.sync` (the
//! connector's own group excepted): its offsets of the connector's topics (this
//! shard's partitions) are translated, and an internal group offset is moved only
//! forwards, and only while that group has no active members on the internal cluster
//! (the broker refuses a commit from outside the group then; a consumer that already
//! failed over owns its offsets). A source offset not copied yet waits for the next
//! round. The source commit's metadata goes with the offset.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::ResponseError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::translate::{self, Basis};
use super::{ConnectorHandle, Context};
use crate::kafka::cluster::Cluster;
use crate::kafka::group::{list_groups, Committed, GroupClient};
use crate::record::SourcePartition;

/// The groups of `patterns` (whole group ids), as one expression; `None` for none.
pub(crate) fn matcher(patterns: &[String]) -> Option<regex::Regex> {
    if patterns.is_empty() {
        return None;
    }
    let alternatives: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
    // Validated when the config was read.
    regex::Regex::new(&format!("^(?:{})$", alternatives.join("|"))).ok()
}

/// The offsets to commit to a group on the internal cluster (by internal topic and
/// partition): each translated offset above what the group holds there (never
/// backwards), with the source's metadata.
pub(crate) fn forward_only(
    translated: &BTreeMap<SourcePartition, (i64, String)>,
    internal: &BTreeMap<SourcePartition, Committed>,
) -> BTreeMap<SourcePartition, (i64, String)> {
    translated
        .iter()
        .filter(|(p, (offset, _))| internal.get(*p).is_none_or(|c| c.offset < *offset))
        .map(|(p, v)| (p.clone(), v.clone()))
        .collect()
}

/// One round's work for one group, kept between rounds so that an unchanged source
/// offset is not translated again.
#[derive(Debug, Default)]
struct Seen {
    /// Per partition: the source offset last translated and its internal offset.
    translated: BTreeMap<SourcePartition, (i64, i64)>,
    /// The internal group had active members at the last round (logged once).
    active: bool,
}

/// Syncs the groups of `handle`'s `groups.sync` until `cancel` fires.
pub(super) async fn sync_groups(
    ctx: Arc<Context>,
    handle: Arc<ConnectorHandle>,
    source: Cluster,
    cancel: CancellationToken,
) {
    let connector = handle.config();
    let Some(matcher) = matcher(&connector.groups_sync) else {
        return;
    };
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let mut tick = tokio::time::interval(connector.groups_sync_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let round = sync_round(&ctx, &handle, &source, &matcher, &mut seen);
        let done = tokio::select! {
            _ = cancel.cancelled() => return,
            done = round => done,
        };
        match done {
            Ok(()) if failing => {
                failing = false;
                info!(connector = %connector.name, "consumer group sync works again");
            }
            Ok(()) => {}
            Err(e) if !failing => {
                failing = true;
                warn!(connector = %connector.name, error = %e, "consumer group sync failed; tried again every groups.sync.interval.ms");
            }
            Err(e) => {
                debug!(connector = %connector.name, error = %e, "consumer group sync failed again")
            }
        }
    }
}

async fn sync_round(
    ctx: &Context,
    handle: &ConnectorHandle,
    source: &Cluster,
    matcher: &regex::Regex,
    seen: &mut BTreeMap<String, Seen>,
) -> Result<(), String> {
    let connector = handle.config();
    let groups: Vec<String> = list_groups(source)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|g| matcher.is_match(g) && *g != connector.group_id)
        .collect();
    seen.retain(|g, _| groups.contains(g));
    let mut failed = Vec::new();
    for group in groups {
        let state = seen.entry(group.clone()).or_default();
        if let Err(e) = sync_group(ctx, handle, source, &group, state).await {
            failed.push(format!("group {group}: {e}"));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// One round for one source group.
async fn sync_group(
    ctx: &Context,
    handle: &ConnectorHandle,
    source: &Cluster,
    group: &str,
    state: &mut Seen,
) -> Result<(), String> {
    let connector = handle.config();
    // This shard's partitions of the connector's topics, as they run.
    let partitions: Vec<SourcePartition> = handle
        .partitions()
        .iter()
        .map(|m| m.partition.clone())
        .collect();
    let mut on_source = GroupClient::new(source.clone(), group.to_owned());
    let committed = on_source
        .committed(&partitions)
        .await
        .map_err(|e| e.to_string())?;
    // Keyed by the internal topic's partitions: the consumer that fails over reads
    // those, and its group's offsets there are theirs.
    let mut translated = BTreeMap::new();
    for (partition, c) in committed {
        if !ctx.config.owns(&partition) {
            continue;
        }
        let internal_partition = SourcePartition::new(
            connector.internal_topic(&partition.topic),
            partition.partition,
        );
        if let Some(&(offset, internal)) = state.translated.get(&partition) {
            if offset == c.offset {
                translated.insert(internal_partition, (internal, c.metadata));
                continue;
            }
        }
        let t = translate::of_connector(ctx, handle, &partition, c.offset)
            .await
            .map_err(|e| e.to_string())?;
        let Some(internal) = t.internal_offset.filter(|_| t.basis != Basis::NotCopiedYet) else {
            debug!(%group, %partition, offset = c.offset, "not copied yet: synced at a later round");
            continue;
        };
        state
            .translated
            .insert(partition.clone(), (c.offset, internal));
        translated.insert(internal_partition, (internal, c.metadata));
    }
    if translated.is_empty() {
        return Ok(());
    }
    let internal_partitions: Vec<SourcePartition> = translated.keys().cloned().collect();
    let mut on_internal = GroupClient::new(ctx.internal.clone(), group.to_owned());
    let held = on_internal
        .committed(&internal_partitions)
        .await
        .map_err(|e| e.to_string())?;
    let moves = forward_only(&translated, &held);
    if moves.is_empty() {
        return Ok(());
    }
    // One commit per metadata string (a commit carries one per partition, but the
    // client sends one for all; consumers rarely vary it).
    let mut by_metadata: BTreeMap<String, BTreeMap<SourcePartition, i64>> = BTreeMap::new();
    for (partition, (offset, metadata)) in &moves {
        by_metadata
            .entry(metadata.clone())
            .or_default()
            .insert(partition.clone(), *offset);
    }
    for (metadata, offsets) in by_metadata {
        match on_internal.commit(&offsets, &metadata).await {
            Ok(()) => {
                state.active = false;
                for (partition, offset) in &offsets {
                    info!(connector = %connector.name, %group, %partition, internal_offset = offset,
                        from = held.get(partition).map(|c| c.offset), "consumer group offset carried to the internal cluster");
                }
            }
            Err(e)
                if matches!(
                    e.broker_error(),
                    Some(
                        ResponseError::UnknownMemberId
                            | ResponseError::IllegalGeneration
                            | ResponseError::RebalanceInProgress
                    )
                ) =>
            {
                if !state.active {
                    state.active = true;
                    info!(connector = %connector.name, %group, "the group has active members on the internal cluster: its offsets there are theirs, and are no longer synced while they are");
                }
                break;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_whole_group_ids() {
        let m = matcher(&["orders-.*".into(), "billing".into()]).unwrap();
        assert!(m.is_match("orders-eu"));
        assert!(m.is_match("billing"));
        assert!(!m.is_match("billing-2"));
        assert!(!m.is_match("x-orders-eu"));
        assert!(matcher(&[]).is_none());
    }

    #[test]
    fn a_group_is_never_moved_backwards() {
        let p = |n| SourcePartition::new("t", n);
        let translated = BTreeMap::from([
            (p(0), (10, "m".to_owned())),
            (p(1), (5, String::new())),
            (p(2), (7, String::new())),
        ]);
        let held = BTreeMap::from([
            (
                p(0),
                Committed {
                    offset: 12,
                    metadata: String::new(),
                },
            ),
            (
                p(1),
                Committed {
                    offset: 4,
                    metadata: String::new(),
                },
            ),
        ]);
        let moves = forward_only(&translated, &held);
        assert_eq!(
            moves.keys().cloned().collect::<Vec<_>>(),
            vec![p(1), p(2)],
            "partition 0 is ahead on the internal cluster already"
        );
    }
}
