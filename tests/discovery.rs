//! Metadata refresh against real brokers: a configured topic created while the service
//! runs is copied from its earliest offset (even with auto.offset.reset=latest, so the
//! records written before it was noticed are not lost), and a deleted source topic
//! fails its tasks with a message saying so while the other topics go on.

mod common;

use std::time::Duration;

use common::*;
use kafka_direct::cli::client::ApiClient;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(90);

fn tasks_of<'a>(status: &'a Value, topic: &str) -> Vec<&'a Value> {
    status["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["topic"] == topic)
        .collect()
}

fn start(external: &Broker, internal: &Broker, dir: &std::path::Path, topics: &str) -> Service {
    let mut service = Service::configure(
        dir,
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics,
            extra: &[
                ("connector.auto.offset.reset", "latest"),
                ("topic.metadata.refresh.interval.ms", "300"),
            ],
        },
    );
    service.start();
    service
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_created_while_running_is_copied_from_its_earliest_offset() {
    let external = Broker::start();
    let internal = Broker::start();
    create_topic(&external.addr(), "present", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(&external, &internal, dir.path(), "present,later");
    let api = ApiClient::new(&service.api().await, None);
    wait_status(&api, "present running", |s| {
        tasks_of(s, "present")
            .iter()
            .all(|t| t["state"] == "RUNNING")
            && !tasks_of(s, "present").is_empty()
    })
    .await;
    assert!(service
        .log_text()
        .contains("it starts from its earliest offset once it exists"));

    // Created and written at once: the records land before the next refresh notices
    // the topic, and auto.offset.reset=latest would skip them.
    create_topic(&external.addr(), "later", 2).await;
    for p in 0..2 {
        let pc = partition_client(&external.addr(), "later", p).await;
        produce(&pc, test_records(p, 0, 40)).await;
    }
    let s = wait_status(&api, "later's partitions running", |s| {
        let later = tasks_of(s, "later");
        later.len() == 2 && later.iter().all(|t| t["state"] == "RUNNING")
    })
    .await;
    assert_eq!(s["tasks"].as_array().unwrap().len(), 3);
    for p in 0..2 {
        reach_end(&internal.addr(), "int.later", p, 40, WAIT)
            .await
            .unwrap_or_else(|now| panic!("int.later/{p} at {now}; log:\n{}", service.log_text()));
        let source = read_all(&external.addr(), "later", p).await;
        let copied = read_all(&internal.addr(), "int.later", p).await;
        assert_exactly_once(&source, &copied, "later", p);
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_source_topic_fails_its_tasks_and_the_others_go_on() {
    let external = Broker::start();
    let internal = Broker::start();
    create_topic(&external.addr(), "stays", 1).await;
    create_topic(&external.addr(), "goes", 2).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(&external, &internal, dir.path(), "stays,goes");
    let api = ApiClient::new(&service.api().await, None);
    wait_status(&api, "every task running", |s| {
        let tasks = s["tasks"].as_array().unwrap();
        tasks.len() == 3 && tasks.iter().all(|t| t["state"] == "RUNNING")
    })
    .await;

    client(&external.addr())
        .await
        .controller_client()
        .unwrap()
        .delete_topic("goes", 5000)
        .await
        .unwrap();
    let s = wait_status(&api, "goes's tasks failed", |s| {
        tasks_of(s, "goes").iter().all(|t| t["state"] == "FAILED")
    })
    .await;
    for task in tasks_of(&s, "goes") {
        assert!(
            task["trace"]
                .as_str()
                .unwrap()
                .contains("source topic goes no longer exists"),
            "{task}"
        );
    }
    assert_eq!(s["connector"]["state"], "RUNNING");

    // The other topic is still copied.
    let pc = partition_client(&external.addr(), "stays", 0).await;
    produce(&pc, test_records(0, 0, 25)).await;
    reach_end(&internal.addr(), "int.stays", 0, 25, WAIT)
        .await
        .unwrap_or_else(|now| panic!("int.stays/0 at {now}; log:\n{}", service.log_text()));
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// A new source topic whose internal topic exists already with fewer partitions: on a
/// broker that offers CreatePartitions (Kafka) the internal topic grows; on one that
/// does not (tansu 0.6) the task fails saying how to add them by hand.
#[tokio::test(flavor = "multi_thread")]
async fn a_new_partition_beyond_an_existing_internal_topic_is_added_or_fails_with_what_to_do() {
    let external = Broker::start();
    let internal = Broker::start();
    create_topic(&external.addr(), "present", 1).await;
    create_topic(&internal.addr(), "int.wider", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(&external, &internal, dir.path(), "present,wider");
    let api = ApiClient::new(&service.api().await, None);
    create_topic(&external.addr(), "wider", 2).await;
    match platform() {
        Platform::Kafka => {
            let s = wait_status(&api, "wider's partitions running", |s| {
                let wider = tasks_of(s, "wider");
                wider.len() == 2 && wider.iter().all(|t| t["state"] == "RUNNING")
            })
            .await;
            assert_eq!(tasks_of(&s, "wider").len(), 2, "{s:#}");
            let topics = client(&internal.addr()).await.list_topics().await.unwrap();
            let wider = topics.iter().find(|t| t.name == "int.wider").unwrap();
            assert_eq!(wider.partitions.len(), 2, "int.wider grown to 2 partitions");
        }
        Platform::Tansu => {
            let s = wait_status(&api, "wider's partitions listed, the second failed", |s| {
                let wider = tasks_of(s, "wider");
                wider.len() == 2 && wider[0]["state"] == "RUNNING" && wider[1]["state"] == "FAILED"
            })
            .await;
            let wider = tasks_of(&s, "wider");
            let trace = wider[1]["trace"].as_str().unwrap();
            assert!(
                trace.contains(
                    "internal topic int.wider has 1 partitions and source partition wider/1 needs 2"
                ) && trace.contains("Add them by hand"),
                "{trace}"
            );
        }
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
}

/// Partitions added to a source topic while the service runs (Kafka's own
/// `kafka-topics --alter --partitions`): kafka-direct adds them to the internal topic with
/// CreatePartitions and copies them from offset 0, even with `auto.offset.reset=latest`
/// (records written before they were noticed are not skipped).
#[tokio::test(flavor = "multi_thread")]
async fn partitions_added_to_a_source_topic_are_added_internally_and_copied_from_offset_0() {
    let (external, internal) = shared_brokers();
    create_topic(&external.addr(), "growing", 1).await;
    let first = partition_client(&external.addr(), "growing", 0).await;
    produce(&first, test_records(0, 0, 20)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = start(&external, &internal, dir.path(), "growing");
    let api = ApiClient::new(&service.api().await, None);
    wait_status(&api, "growing/0 running", |s| {
        tasks_of(s, "growing").len() == 1 && tasks_of(s, "growing")[0]["state"] == "RUNNING"
    })
    .await;
    kafka_tool(
        "kafka-topics",
        &[
            "--bootstrap-server",
            &external.addr(),
            "--alter",
            "--topic",
            "growing",
            "--partitions",
            "3",
        ],
    );
    for p in 1..3 {
        let pc = partition_client(&external.addr(), "growing", p).await;
        produce(&pc, test_records(p, 0, 15)).await;
    }
    let s = wait_status(&api, "growing's three partitions running", |s| {
        let tasks = tasks_of(s, "growing");
        tasks.len() == 3 && tasks.iter().all(|t| t["state"] == "RUNNING")
    })
    .await;
    assert_eq!(tasks_of(&s, "growing").len(), 3, "{s:#}");
    let topics = client(&internal.addr()).await.list_topics().await.unwrap();
    let grown = topics.iter().find(|t| t.name == "int.growing").unwrap();
    assert_eq!(grown.partitions.len(), 3, "int.growing's partitions");
    for p in 1..3 {
        reach_end(&internal.addr(), "int.growing", p, 15, WAIT)
            .await
            .unwrap_or_else(|now| panic!("int.growing/{p} at {now}; log:\n{}", service.log_text()));
        let source = read_all(&external.addr(), "growing", p).await;
        let copied = read_all(&internal.addr(), "int.growing", p).await;
        assert_exactly_once(&source, &copied, "growing", p);
    }
    // Kafka's own kafka-get-offsets sees the grown topic and its ends.
    let ends = kafka_tool(
        "kafka-get-offsets",
        &[
            "--bootstrap-server",
            &internal.addr(),
            "--topic",
            "int.growing",
        ],
    );
    let mut ends: Vec<&str> = ends.lines().collect();
    ends.sort();
    assert_eq!(
        ends,
        ["int.growing:0:0", "int.growing:1:15", "int.growing:2:15"]
    );
    assert!(
        service
            .log_text()
            .contains("added partitions to the internal topic"),
        "{}",
        service.log_text()
    );
    assert!(service.terminate(Duration::from_secs(30)).success());
}
