//! What a user sees when the configuration or the network is wrong.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn run_with(
    dir: &std::path::Path,
    text: &str,
    args: &[&str],
) -> (std::process::ExitStatus, String, Duration) {
    let config = dir.join("c.toml");
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["run", "--config"])
        .arg(&config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

fn config(dir: &std::path::Path, external: &str, internal: &str) -> String {
    format!(
        "data.dir = \"{}\"\ninternal.bootstrap.servers = \"{internal}\"\nrequest.timeout.ms = 3000\napi.listen = \"127.0.0.1:0\"\n[connector]\nname = \"c\"\nkafka.bootstrap.servers = \"{external}\"\ntopic.prefix = \"int\"\ntopic.include.list = \"t\"\n",
        dir.join("data").display()
    )
}

#[test]
fn bad_values_exit_2_naming_the_key_and_accepted_values() {
    let dir = tempfile::tempdir().unwrap();
    let text = config(dir.path(), "127.0.0.1:1", "127.0.0.1:2");
    for (set, needles) in [
        (
            "connector.auto.offset.reset=oldest",
            vec!["connector.auto.offset.reset", "earliest, latest"],
        ),
        ("wal.sync=never", vec!["wal.sync", "fsync, flush"]),
        (
            "connector.kafka.bootstrap.servers=nohostport",
            vec!["connector.kafka.bootstrap.servers", "host:port"],
        ),
        (
            "connector.topic.prefx=a",
            vec!["unknown key `connector.topic.prefx`"],
        ),
    ] {
        let (status, stderr, _) = run_with(dir.path(), &text, &["--set", set]);
        assert_eq!(status.code(), Some(2), "{set}: {stderr}");
        for needle in needles {
            assert!(
                stderr.contains(needle),
                "{set}: {stderr:?} lacks {needle:?}"
            );
        }
    }
    let (status, stderr, _) = run_with(dir.path(), "data.dir = \"x\"\n", &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("missing required key"), "{stderr}");
}

/// A cluster down at start is waited for, not a crash loop: the service stays up, its
/// log naming the address and the key within seconds, and stops cleanly on SIGTERM.
#[test]
#[allow(clippy::disallowed_methods)] // a plain test thread: no runtime to block
fn unreachable_external_cluster_is_waited_for_naming_the_address() {
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let internal = Broker::start();
    let text = config(dir.path(), &format!("127.0.0.1:{port}"), &internal.addr());
    let config = dir.path().join("c.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !read().contains("waiting for the external cluster") {
        assert!(child.try_wait().unwrap().is_none(), "exited: {}", read());
        assert!(Instant::now() < deadline, "no wait logged: {}", read());
        std::thread::sleep(Duration::from_millis(100));
    }
    let logged = read();
    assert!(logged.contains(&format!("127.0.0.1:{port}")), "{logged}");
    assert!(
        logged.contains("connector.kafka.bootstrap.servers"),
        "{logged}"
    );
    signal(child.id(), "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM ignored: {}", read());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{}", read());
}

#[test]
fn missing_source_topic_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (external, internal) = (Broker::start(), Broker::start());
    let text = config(dir.path(), &external.addr(), &internal.addr());
    let (status, stderr, _) = run_with(dir.path(), &text, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("topic not found on the external cluster") && stderr.contains("topic=t"),
        "{stderr}"
    );
}

#[test]
fn second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _held = kafka_direct::wal::Wal::open(
        &dir.path().join("data"),
        kafka_direct::wal::WalOptions {
            sync: kafka_direct::wal::SyncPolicy::Flush,
            max_bytes: 1 << 20,
            cache_bytes: 1 << 20,
        },
    )
    .unwrap();
    let (external, internal) = (Broker::start(), Broker::start());
    let text = config(dir.path(), &external.addr(), &internal.addr());
    let (status, stderr, _) = run_with(dir.path(), &text, &[]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("in use by another kafka-direct process"),
        "{stderr}"
    );
}
