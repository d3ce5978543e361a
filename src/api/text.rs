//! Tables a person can read, from the API's JSON answers (`kafka-direct status`,
//! `kafka-direct offsets get`).

use serde_json::Value;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One block per connector of a `GET /connectors?expand=status` answer: its state, then
/// one row per partition.
pub fn status_table(expanded: &Value) -> String {
    let mut out = String::new();
    let Some(connectors) = expanded.as_object() else {
        return out;
    };
    if connectors.is_empty() {
        out.push_str("no connectors\n");
    }
    for (name, entry) in connectors {
        let status = &entry["status"];
        out.push_str(&format!(
            "connector {name}: {} (worker {})\n",
            cell(&status["connector"]["state"]),
            cell(&status["connector"]["worker_id"]),
        ));
        let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
        if tasks.is_empty() {
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
        for t in &tasks {
            out.push_str(&format!(
                "  {:<32} {:<9} {:>12} {:>12} {:>12} {:>10} {:>10} {:>12}\n",
                format!("{}/{}", cell(&t["topic"]), cell(&t["partition"])),
                cell(&t["state"]),
                cell(&t["high_watermark"]),
                cell(&t["fetched_next"]),
                cell(&t["forwarded_next"]),
                cell(&t["lag"]),
                cell(&t["wal_backlog"]),
                cell(&t["records_dead_lettered"]),
            ));
            if let Some(trace) = t["trace"].as_str() {
                out.push_str(&format!("    error: {trace}\n"));
            }
        }
    }
    out
}

/// A `GET /connectors/{name}/offsets` answer as `topic/partition  offset` rows.
pub fn offsets_table(offsets: &Value) -> String {
    let mut rows: Vec<(String, i64, String)> = offsets["offsets"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|o| {
                    (
                        cell(&o["partition"]["kafka_topic"]),
                        o["partition"]["kafka_partition"].as_i64().unwrap_or(-1),
                        cell(&o["offset"]["kafka_offset"]),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
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
        let text = status_table(&json!({"c": {"status": {
        "connector": {"state": "RUNNING", "worker_id": "127.0.0.1:8083"},
        "tasks": [
            {"topic": "orders", "partition": 0, "state": "RUNNING", "high_watermark": 10,
             "fetched_next": 10, "forwarded_next": 8, "lag": 0, "wal_backlog": 2,
             "records_dead_lettered": 0},
            {"topic": "orders", "partition": 1, "state": "FAILED", "high_watermark": null,
             "fetched_next": null, "forwarded_next": null, "lag": 0, "wal_backlog": 0,
             "records_dead_lettered": 0, "trace": "topic deleted"},
        ]}}}));
        assert!(text.starts_with("connector c: RUNNING (worker 127.0.0.1:8083)\n"));
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[2].contains("orders/0") && rows[2].contains("RUNNING"));
        assert!(rows[3].contains("orders/1") && rows[3].contains(" - "));
        assert_eq!(rows[4].trim(), "error: topic deleted");
    }

    #[test]
    fn offsets_rows_are_sorted() {
        let text = offsets_table(&json!({"offsets": [
            {"partition": {"kafka_topic": "b", "kafka_partition": 0}, "offset": {"kafka_offset": 5}},
            {"partition": {"kafka_topic": "a", "kafka_partition": 1}, "offset": {"kafka_offset": 7}},
        ]}));
        let rows: Vec<&str> = text.lines().collect();
        assert!(rows[1].starts_with("a/1") && rows[1].ends_with('7'));
        assert!(rows[2].starts_with("b/0") && rows[2].ends_with('5'));
    }
}
