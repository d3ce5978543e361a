//! `GET /metrics`: the connectors' counters and histograms in the OpenMetrics text format
//! (which Prometheus scrapes), encoded by `prometheus-client`.
//!
//! Counters live in [`PartitionMetrics`] as plain atomics, updated on the hot path
//! without any registry; a [`Collector`] reads them at scrape time. Histograms are
//! `prometheus-client`'s own, shared with the tasks that observe them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::connector::{ClusterRole, ConnectorHandle, ConnectorState};
use crate::format::ErrorKind;
use crate::metrics::{PartitionMetrics, TaskState};
use crate::wal::Wal;

/// The exposition text of every connector (and the WAL they share).
pub fn render(connectors: &[Arc<ConnectorHandle>], wal: &Wal) -> String {
    let mut registry = Registry::with_prefix("kafka_direct");
    registry.register(
        "wal_sync_seconds",
        "Duration of WAL group commits (sled flush, plus fsync with wal.sync=fsync)",
        wal.sync_seconds().clone(),
    );
    registry.register_collector(Box::new(Snapshot {
        connectors: connectors.to_vec(),
        wal: wal.clone(),
    }));
    for c in connectors {
        let sub =
            registry.sub_registry_with_label(("connector".into(), c.config().name.clone().into()));
        sub.register(
            "fetch_seconds",
            "Duration of fetch requests to the external cluster",
            c.latencies.fetch.clone(),
        );
        sub.register(
            "produce_seconds",
            "Duration of produce requests to the internal cluster, sent to acknowledged",
            c.latencies.produce.clone(),
        );
        sub.register(
            "end_to_end_seconds",
            "Age of each forwarded record when the internal cluster acknowledged it (source record timestamp to acknowledgement)",
            c.latencies.end_to_end.clone(),
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

#[derive(Debug)]
struct Snapshot {
    connectors: Vec<Arc<ConnectorHandle>>,
    wal: Wal,
}

type Labels = Vec<(&'static str, String)>;

fn partition_labels(connector: &str, p: &PartitionMetrics) -> Labels {
    vec![
        ("connector", connector.to_owned()),
        ("topic", p.partition.topic.clone()),
        ("partition", p.partition.partition.to_string()),
    ]
}

/// Counter per partition, read from an atomic.
type CounterOf = fn(&PartitionMetrics) -> u64;
/// Gauge per partition.
type GaugeOf = fn(&PartitionMetrics) -> i64;

const COUNTERS: &[(&str, &str, CounterOf)] = &[
    ("records_fetched", "Records committed to the WAL", |p| {
        p.fetched_records.load(Ordering::Relaxed)
    }),
    (
        "bytes_fetched",
        "Bytes (key, value, headers) committed to the WAL",
        |p| p.fetched_bytes.load(Ordering::Relaxed),
    ),
    (
        "records_forwarded",
        "Records acknowledged by the internal cluster",
        |p| p.forwarded_records.load(Ordering::Relaxed),
    ),
    (
        "bytes_forwarded",
        "Bytes (key, value, headers) acknowledged by the internal cluster",
        |p| p.forwarded_bytes.load(Ordering::Relaxed),
    ),
    (
        "records_aborted_skipped",
        "Records of aborted transactions dropped by the fetcher",
        |p| p.aborted_records.load(Ordering::Relaxed),
    ),
    (
        "skipped_offsets",
        "Source offsets skipped because retention or DeleteRecords removed them before they were copied",
        |p| p.skipped_offsets.load(Ordering::Relaxed),
    ),
    (
        "unexpected_produce_offsets",
        "Produce acknowledgements at an offset other than the expected partition end (another writer, or a request stored twice)",
        |p| p.unexpected_produce_offsets.load(Ordering::Relaxed),
    ),
    (
        "produce_resent_batches",
        "Batches sent again with their producer id, epoch and sequence numbers after an unknown outcome (the broker stores each once)",
        |p| p.resent_batches.load(Ordering::Relaxed),
    ),
    (
        "produce_deduplicated_batches",
        "Re-sent batches the broker answered as already stored (DUPLICATE_SEQUENCE_NUMBER)",
        |p| p.deduplicated_batches.load(Ordering::Relaxed),
    ),
    (
        "producer_resets",
        "Producer sessions renewed (next epoch or new producer id) after the broker lost or refused their sequence state",
        |p| p.producer_resets.load(Ordering::Relaxed),
    ),
];

const GAUGES: &[(&str, &str, GaugeOf)] = &[
    (
        "partition_lag_records",
        "Source high watermark minus the next offset to fetch",
        PartitionMetrics::source_lag,
    ),
    (
        "wal_backlog_records",
        "Source offsets fetched into the WAL and not yet forwarded",
        PartitionMetrics::wal_backlog,
    ),
    (
        "source_high_watermark",
        "Source partition high watermark at the last fetch (-1 before the first)",
        |p| p.source_high_watermark.load(Ordering::Relaxed),
    ),
    (
        "fetched_next_offset",
        "Next source offset to fetch (-1 before it is known)",
        |p| p.fetched_next.load(Ordering::Relaxed),
    ),
    (
        "forwarded_next_offset",
        "Next source offset to forward (-1 before it is known)",
        |p| p.forwarded_next.load(Ordering::Relaxed),
    ),
    (
        "produce_in_doubt",
        "1 while a produce's outcome is unknown and the internal tail has not been re-read",
        |p| p.produce_in_doubt.load(Ordering::Relaxed) as i64,
    ),
];

type Parts = [(String, Vec<Arc<PartitionMetrics>>)];

/// One metric family with a sample per partition of every connector, and per value of
/// one more label when `samples` gives several.
fn partition_family(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help, counter): (&str, &str, bool),
    parts: &Parts,
    samples: impl Fn(&PartitionMetrics) -> Vec<(Option<(&'static str, String)>, i64)>,
) -> Result<(), std::fmt::Error> {
    let kind = if counter {
        MetricType::Counter
    } else {
        MetricType::Gauge
    };
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (connector, ps) in parts {
        for p in ps {
            for (extra, value) in samples(p) {
                let mut labels = partition_labels(connector, p);
                labels.extend(extra);
                let sample = family.encode_family(&labels)?;
                if counter {
                    ConstCounter::new(value.max(0) as u64).encode(sample)?;
                } else {
                    ConstGauge::new(value).encode(sample)?;
                }
            }
        }
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let parts: Vec<(String, Vec<Arc<PartitionMetrics>>)> = self
            .connectors
            .iter()
            .map(|c| (c.config().name.clone(), c.partitions()))
            .collect();
        for (name, help, value) in COUNTERS {
            partition_family(&mut encoder, (name, help, true), &parts, |p| {
                vec![(None, value(p) as i64)]
            })?;
        }
        partition_family(
            &mut encoder,
            (
                "records_dead_lettered",
                "Records sent to the dead-letter topic, by error kind",
                true,
            ),
            &parts,
            |p| {
                ErrorKind::ALL
                    .iter()
                    .map(|kind| {
                        let n = p.dead_lettered[kind.index()].load(Ordering::Relaxed);
                        (Some(("kind", kind.name().to_owned())), n as i64)
                    })
                    .collect()
            },
        )?;
        partition_family(
            &mut encoder,
            (
                "errors",
                "Failed requests that were retried, by kind (fetch: to the external cluster; produce: to the internal cluster, produce requests, tail reads and producer ids; dead_letter_produce)",
                true,
            ),
            &parts,
            |p| {
                [
                    ("fetch", &p.fetch_errors),
                    ("produce", &p.produce_errors),
                    ("dead_letter_produce", &p.dead_letter_errors),
                ]
                .iter()
                .map(|(kind, n)| {
                    (
                        Some(("kind", (*kind).to_owned())),
                        n.load(Ordering::Relaxed) as i64,
                    )
                })
                .collect()
            },
        )?;
        for (name, help, value) in GAUGES {
            partition_family(&mut encoder, (name, help, false), &parts, |p| {
                vec![(None, value(p))]
            })?;
        }
        partition_family(
            &mut encoder,
            (
                "task_state",
                "1 for the state each partition's tasks are in",
                false,
            ),
            &parts,
            |p| {
                let now = p.state();
                TaskState::ALL
                    .iter()
                    .map(|state| {
                        (
                            Some(("state", state.name().to_owned())),
                            (*state == now) as i64,
                        )
                    })
                    .collect()
            },
        )?;
        let mut family = encoder.encode_descriptor(
            "connector_state",
            "1 for the state each connector is in",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.connectors {
            let now = c.state();
            for state in ConnectorState::ALL {
                let labels: Labels = vec![
                    ("connector", c.config().name.clone()),
                    ("state", state.name().to_owned()),
                ];
                ConstGauge::new((state == now) as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "waiting_for_cluster",
            "1 while the connector's start waits for this cluster (external or internal) to answer; partitions with a stored position spool into the WAL meanwhile",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.connectors {
            let now = c.waiting_for();
            for cluster in ClusterRole::ALL {
                let labels: Labels = vec![
                    ("connector", c.config().name.clone()),
                    ("cluster", cluster.name().to_owned()),
                ];
                ConstGauge::new((now == Some(cluster)) as i64)
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        let family = encoder.encode_descriptor(
            "wal_bytes",
            "Encoded bytes of the WAL's unforwarded entries (what wal.max.bytes caps)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.wal.used_bytes() as i64).encode(family)?;
        let family = encoder.encode_descriptor(
            "wal_disk_bytes",
            "Bytes the WAL's files take on disk",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.wal.size_on_disk() as i64).encode(family)?;
        let mut family = encoder.encode_descriptor(
            "sasl_reauthentications",
            "SASL re-authentications (KIP-368) on open connections, per broker address, since start: brokers that limit a session's lifetime (connections.max.reauth.ms, an OAUTHBEARER token's expiry) close connections that do not",
            None,
            MetricType::Counter,
        )?;
        for (broker, count) in crate::kafka::connection::reauthentications() {
            let labels: Labels = vec![("broker", broker)];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
