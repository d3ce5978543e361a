//! Tables a person can read, from the API's answers (`kafka-direct status`,
//! `kafka-direct offsets get`), read through the types the server writes
//! ([`crate::api::types`]).

use serde::Deserialize;

use crate::api::types::{ConnectorStatus, Offsets};

/// One connector of a `GET /connectors?expand=status` answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Expanded {
    /// Its status (with `expand=status`).
    pub status: ConnectorStatus,
}

/// The connectors of a `GET /connectors?expand=status` answer, in its order.
pub fn expanded(answer: serde_json::Value) -> Result<Vec<(String, Expanded)>, serde_json::Error> {
    let connectors: serde_json::Map<String, serde_json::Value> = serde_json::from_value(answer)?;
    connectors
        .into_iter()
        .map(|(name, entry)| Ok((name, serde_json::from_value(entry)?)))
        .collect()
}

fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// One block per connector: its state, then one row per partition.
pub fn status_table(connectors: &[(String, Expanded)]) -> String {
    let mut out = String::new();
    if connectors.is_empty() {
        out.push_str("no connectors\n");
    }
    for (name, entry) in connectors {
        let status = &entry.status;
        out.push_str(&format!(
            "connector {name}: {} (worker {})\n",
            status.connector.state, status.connector.worker_id,
        ));
        if status.tasks.is_empty() {
            out.push_str("  no partitions yet\n");
            continue;
        }
        out.push_str(&format!(
            "  {:<32} {:<9} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}\n",
            "partition",
            "state",
            "high_wmark",
            "fetched",
            "forwarded",
            "lag",
            "backlog",
            "dead_letters"
        ));
        for t in &status.tasks {
            out.push_str(&format!(
                "  {:<32} {:<9} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}\n",
                format!("{}/{}", t.topic, t.partition),
                t.state,
                cell(t.high_watermark),
                cell(t.fetched_next),
                cell(t.forwarded_next),
                t.lag,
                t.wal_backlog,
                t.records_dead_lettered,
            ));
            if let Some(trace) = &t.trace {
                out.push_str(&format!("    error: {trace}\n"));
            }
        }
    }
    out
}

/// A `GET /connectors/{name}/offsets` answer as `topic/partition  offset` rows.
pub fn offsets_table(offsets: &Offsets) -> String {
    let mut rows: Vec<(&str, i32, i64)> = offsets
        .offsets
        .iter()
        .map(|o| {
            (
                o.partition.kafka_topic.as_str(),
                o.partition.kafka_partition,
                o.offset.kafka_offset,
            )
        })
        .collect();
    rows.sort();
    if rows.is_empty() {
        return "no offsets stored yet\n".to_owned();
    }
    let mut out = format!("{:<32} {:>14}\n", "partition", "next offset");
    for (topic, partition, offset) in rows {
        out.push_str(&format!(
            "{:<32} {offset:>14}\n",
            format!("{topic}/{partition}")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_rows_show_each_partition_and_its_error() {
        let text = status_table(
            &expanded(json!({"c": {"status": {
            "connector": {"state": "RUNNING", "worker_id": "127.0.0.1:8083"},
            "tasks": [
                {"topic": "orders", "partition": 0, "state": "RUNNING", "high_watermark": 10,
                 "fetched_next": 10, "forwarded_next": 8, "lag": 0, "wal_backlog": 2,
                 "records_dead_lettered": 0},
                {"topic": "orders", "partition": 1, "state": "FAILED", "high_watermark": null,
                 "fetched_next": null, "forwarded_next": null, "lag": 0, "wal_backlog": 0,
                 "records_dead_lettered": 0, "trace": "topic deleted"},
            ]}}}))
            .unwrap(),
        );
        assert!(text.starts_with("connector c: RUNNING (worker 127.0.0.1:8083)\n"));
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[2].contains("orders/0") && rows[2].contains("RUNNING"));
        assert!(rows[3].contains("orders/1") && rows[3].contains(" - "));
        assert_eq!(rows[4].trim(), "error: topic deleted");
    }

    #[test]
    fn offsets_rows_are_sorted() {
        let text = offsets_table(&serde_json::from_value(json!({"offsets": [
            {"partition": {"kafka_topic": "b", "kafka_partition": 0}, "offset": {"kafka_offset": 5}},
            {"partition": {"kafka_topic": "a", "kafka_partition": 1}, "offset": {"kafka_offset": 7}},
        ]})).unwrap());
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[1].starts_with("a/1") && rows[1].ends_with('7'));
        assert!(rows[2].starts_with("b/0") && rows[2].ends_with('5'));
    }
}
