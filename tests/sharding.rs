//! Scale-out: three instances share one connector's partitions (`shard.index` /
//! `shard.count`), each with its own data dir. Every record arrives exactly once, no
//! partition is taken twice, and a crashed shard catches up on its own partitions.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use kafka_direct::cli::client::ApiClient;

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread")]
async fn three_shards_copy_every_record_once_and_no_partition_twice() {
    let partitions = 6;
    let p = Pipeline::new("sharded", partitions, &[]).await;
    p.produce_each(0, 100).await;
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut shards: Vec<Service> = (0..3)
        .map(|i| {
            let index = i.to_string();
            Service::configure(
                dirs[i].path(),
                ServiceConfig {
                    external: &p.external.addr(),
                    internal: &p.internal.addr(),
                    topics: "sharded",
                    extra: &[("shard.count", "3"), ("shard.index", &index)],
                },
            )
        })
        .collect();
    for s in &mut shards {
        s.start();
    }
    let background = produce_in_background_with(&p, 10, test_records_from_100);

    // Each shard runs a disjoint set of partitions; together, all of them.
    let mut owned: Vec<BTreeSet<i64>> = Vec::new();
    for s in &shards {
        let api = ApiClient::new(&s.api().await, None);
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            let client = api.clone();
            let status =
                tokio::task::spawn_blocking(move || client.get_json("/connectors/test/status"))
                    .await
                    .unwrap()
                    .unwrap();
            if status["connector"]["state"] == "RUNNING" {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "{status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let mine: BTreeSet<i64> = status["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["partition"].as_i64().unwrap())
            .collect();
        assert!(
            !mine.is_empty(),
            "a shard of 3 over 6 partitions owns some: {status}"
        );
        owned.push(mine);
    }
    let mut all = BTreeSet::new();
    for mine in &owned {
        for partition in mine {
            assert!(
                all.insert(*partition),
                "partition {partition} owned twice: {owned:?}"
            );
        }
    }
    assert_eq!(all, (0..partitions as i64).collect(), "{owned:?}");

    // A second process on a shard's data dir is refused: two writers of one internal
    // partition would break exactly-once.
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["run", "--config"])
        .arg(&shards[0].config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another kafka-direct process"),
        "{stderr}"
    );

    // A crashed shard restarts and catches up on its own partitions.
    shards[1].kill9();
    shards[1].start();
    background.await.unwrap();
    p.assert_replicated(0, WAIT).await;
    for s in &mut shards {
        assert!(
            s.terminate(Duration::from_secs(30)).success(),
            "{}",
            s.log_text()
        );
    }
}

/// Test records numbered after the 100 produced before the shards start.
fn test_records_from_100(partition: i32, first: usize, n: usize) -> Vec<rskafka::record::Record> {
    test_records(partition, 100 + first, n)
}
