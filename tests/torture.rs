//! The torture harness (docs/reliability.md): real brokers with durable storage, the
//! service as a child process killed with SIGKILL at random moments while records keep
//! arriving, both brokers restarted, the internal broker held down for a while, the
//! service cut off from the internal broker by a proxy that drops all traffic (a
//! network partition longer than `request.timeout.ms`); then an independent reader
//! (plain rskafka, not the service's code) counts lost, duplicated, reordered and
//! damaged records. All four must be 0.
//!
//! `cargo test --test torture` runs the short profile (CI). Options, after `--`:
//! `--records N --partitions P --kills K --broker-restarts R --outage-secs S
//! --network-cuts C --cut-secs T --cluster-size 1|3 --seed X`.
//!
//! With `--cluster-size 3` (Apache Kafka only) both clusters are three nodes, topics
//! have replication factor 3 and `min.insync.replicas` 2: a broker restart kills the
//! leader of a random partition (source or internal) so that leadership moves, and the
//! outage takes two internal nodes of three down (no quorum, no in-sync majority). Each
//! internal node is reached through a proxy of its own, all cut together.
//! A failing run prints its seed; `--seed` replays the same schedule of faults.

#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::Compression;
use rskafka::record::{Record, RecordAndOffset};

const TOPIC: &str = "torture";
const INTERNAL_TOPIC: &str = "int.torture";

#[derive(Debug, Clone)]
struct Profile {
    records: usize,
    partitions: i32,
    kills: usize,
    broker_restarts: usize,
    outage_secs: u64,
    network_cuts: usize,
    cut_secs: u64,
    cluster_size: usize,
    seed: u64,
}

impl Profile {
    /// The profile from the command line, or `None` when a test-name filter given to
    /// `cargo test` does not select this harness.
    fn from_args() -> Option<Self> {
        let mut p = Profile {
            records: 100_000,
            partitions: 4,
            kills: 20,
            broker_restarts: 2,
            outage_secs: 10,
            network_cuts: 1,
            // Longer than the service's request.timeout.ms here (10 s): its requests
            // time out while the cut lasts.
            cut_secs: 15,
            cluster_size: 1,
            seed: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64,
        };
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut filters = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| -> u64 {
                let v = it.next().unwrap_or_else(|| panic!("{name} needs a value"));
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}: `{v}` is not a number"))
            };
            match arg.as_str() {
                "--records" => p.records = value(arg) as usize,
                "--partitions" => p.partitions = value(arg) as i32,
                "--kills" => p.kills = value(arg) as usize,
                "--broker-restarts" => p.broker_restarts = value(arg) as usize,
                "--outage-secs" => p.outage_secs = value(arg),
                "--network-cuts" => p.network_cuts = value(arg) as usize,
                "--cut-secs" => p.cut_secs = value(arg),
                "--cluster-size" => p.cluster_size = value(arg) as usize,
                "--seed" => p.seed = value(arg),
                // Other flags are the test runner's (--nocapture, --test-threads=N…).
                flag if flag.starts_with('-') => {}
                filter => filters.push(filter.to_string()),
            }
        }
        assert!(
            p.partitions > 0 && p.records >= p.partitions as usize,
            "need at least one record per partition"
        );
        assert!(
            p.cluster_size == 1 || (p.cluster_size == 3 && platform() == Platform::Kafka),
            "--cluster-size is 1, or 3 on Apache Kafka"
        );
        let selected = filters.is_empty() || filters.iter().any(|f| "torture".contains(f.as_str()));
        selected.then_some(p)
    }
}

/// A record whose value carries its partition, sequence number and a CRC-32 of its
/// payload, with a key (sometimes null), headers and a distinct timestamp.
fn torture_record(partition: i32, seq: usize) -> Record {
    let size = (seq * 7919) % 3000;
    let payload: Vec<u8> = (0..size).map(|j| ((j + seq) % 251) as u8).collect();
    let mut headers = BTreeMap::new();
    headers.insert("seq".to_owned(), seq.to_string().into_bytes());
    if seq % 4 == 0 {
        headers.insert("empty".to_owned(), Vec::new());
    }
    Record {
        key: (seq % 13 != 0).then(|| format!("key-{partition}-{seq}").into_bytes()),
        value: (seq % 17 != 3).then(|| {
            let mut v = format!(
                "p{partition}-seq{seq}-crc{:08x}-",
                crc32fast::hash(&payload)
            )
            .into_bytes();
            v.extend(&payload);
            v
        }),
        headers,
        timestamp: Utc
            .timestamp_millis_opt(1_700_000_000_000 + seq as i64)
            .unwrap(),
    }
}

/// Whether a value still matches the checksum it carries.
fn value_intact(value: &[u8]) -> bool {
    let Some(dash) = value
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'-')
        .nth(2)
        .map(|(i, _)| i)
    else {
        return false;
    };
    let head = String::from_utf8_lossy(&value[..dash]);
    let Some(crc) = head.rsplit("-crc").next() else {
        return false;
    };
    u32::from_str_radix(crc, 16).ok() == Some(crc32fast::hash(&value[dash + 1..]))
}

#[derive(Debug, Default, Clone, Copy)]
struct Faults {
    lost: usize,
    duplicated: usize,
    reordered: usize,
    damaged: usize,
}

impl Faults {
    fn add(&mut self, o: Faults) {
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.damaged += o.damaged;
    }

    fn none(&self) -> bool {
        self.lost + self.duplicated + self.reordered + self.damaged == 0
    }
}

/// Compares one partition's source records with their copies, by source offset.
fn count_faults(source: &[RecordAndOffset], copies: &[RecordAndOffset]) -> Faults {
    let mut faults = Faults::default();
    let by_offset: HashMap<i64, &Record> = source.iter().map(|r| (r.offset, &r.record)).collect();
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut last = -1i64;
    for copy in copies {
        let Some(offset) = copy
            .record
            .headers
            .get(SOURCE_OFFSET_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok())
        else {
            faults.damaged += 1;
            continue;
        };
        *seen.entry(offset).or_default() += 1;
        if offset <= last {
            if seen[&offset] == 1 {
                faults.reordered += 1;
            }
        } else {
            last = offset;
        }
        let Some(original) = by_offset.get(&offset) else {
            faults.damaged += 1; // a copy of a record the source does not have
            continue;
        };
        let mut headers = copy.record.headers.clone();
        headers.retain(|k, _| !k.starts_with("kafka-direct.source."));
        let intact = copy.record.key == original.key
            && copy.record.value == original.value
            && copy.record.value.as_deref().is_none_or(value_intact)
            && headers == original.headers
            && copy.record.timestamp == original.timestamp;
        if !intact {
            faults.damaged += 1;
        }
    }
    faults.duplicated = seen.values().map(|&n| n.saturating_sub(1)).sum();
    faults.lost = source
        .iter()
        .filter(|r| !seen.contains_key(&r.offset))
        .count();
    faults
}

enum Fault {
    KillService,
    RestartSource,
    RestartInternal,
    InternalOutage,
    CutInternal,
}

fn main() {
    let Some(profile) = Profile::from_args() else {
        eprintln!("torture: not selected by the test-name filter");
        return;
    };
    eprintln!("torture: {profile:?}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let ok = runtime.block_on(run(profile));
    // The line the test runner prints, so suite totals (scripts/test) count this run.
    let (passed, failed) = if ok { (1, 0) } else { (0, 1) };
    let result = if ok { "ok" } else { "FAILED" };
    println!("test result: {result}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out");
    std::process::exit(if ok { 0 } else { 1 });
}

async fn run(p: Profile) -> bool {
    let started = Instant::now();
    let say =
        |what: String| eprintln!("torture [{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let mut rng = fastrand::Rng::with_seed(p.seed);

    let store = ObjectStore::start();
    let mut rig = Rig::start(&p, &store).await;
    rig.service.start();

    // The schedule of faults, shuffled with the seed.
    let mut plan: Vec<Fault> = (0..p.kills).map(|_| Fault::KillService).collect();
    for i in 0..p.broker_restarts {
        plan.push(if i % 2 == 0 {
            Fault::RestartSource
        } else {
            Fault::RestartInternal
        });
    }
    if p.outage_secs > 0 {
        plan.push(Fault::InternalOutage);
    }
    plan.extend((0..p.network_cuts).map(|_| Fault::CutInternal));
    rng.shuffle(&mut plan);

    // Records arrive all through the faults: one chunk per partition per step.
    let per_partition = p.records / p.partitions as usize;
    let chunk = 250usize;
    let steps = per_partition.div_ceil(chunk);
    // In a cluster, a leader's restart takes seconds more (finding the leader with
    // Kafka's tool, waiting for leadership to move, the node's start).
    let restart_cost = if p.cluster_size > 1 { 12 } else { 0 };
    let fault_time = Duration::from_secs_f64(plan.len() as f64 * 1.4)
        + Duration::from_secs(p.outage_secs + p.network_cuts as u64 * p.cut_secs)
        + Duration::from_secs(restart_cost * (p.broker_restarts as u64 + 2));
    let pace = fault_time / steps.max(1) as u32;
    let produced = Arc::new(AtomicU64::new(0));
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (addr, produced, producing) = (
            rig.external.bootstrap(),
            produced.clone(),
            producing.clone(),
        );
        let partitions = p.partitions;
        tokio::spawn(async move {
            for step in 0..steps {
                let range = step * chunk..((step + 1) * chunk).min(per_partition);
                for partition in 0..partitions {
                    let records: Vec<Record> = range
                        .clone()
                        .map(|seq| torture_record(partition, seq))
                        .collect();
                    produce_until_stored(&addr, partition, records).await;
                    produced.fetch_add(range.len() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(pace).await;
            }
            producing.store(false, Ordering::Relaxed);
        })
    };

    let (mut kills, mut restarts, mut outage) = (0, 0, Duration::ZERO);
    let (mut cuts, mut cut_timeouts, mut cut_errors, mut cuts_in_doubt) = (0, 0, 0, 0);
    for fault in plan {
        let gap = Duration::from_millis(rng.u64(300..2500));
        tokio::time::sleep(gap).await;
        match fault {
            Fault::KillService => {
                rig.service.kill9();
                kills += 1;
                tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
                rig.service.start();
                say(format!(
                    "kill -9 #{kills} of the service after {gap:?}; restarted"
                ));
            }
            Fault::RestartSource => {
                let partition = rng.i32(0..p.partitions);
                let done = rig.external.restart_leader(TOPIC, partition).await;
                restarts += 1;
                say(format!("source: {done}"));
            }
            Fault::RestartInternal => {
                let partition = rng.i32(0..p.partitions);
                let done = rig.internal.restart_leader(INTERNAL_TOPIC, partition).await;
                restarts += 1;
                say(format!("internal: {done}"));
            }
            Fault::InternalOutage => {
                let secs = Duration::from_secs(p.outage_secs);
                let down = rig.internal.take_down();
                say(format!("internal cluster down for {secs:?}: {down}"));
                tokio::time::sleep(secs).await;
                rig.internal.bring_back();
                outage += secs;
                say(format!(
                    "internal broker back; {} records produced so far",
                    produced.load(Ordering::Relaxed)
                ));
            }
            Fault::CutInternal => {
                let secs = Duration::from_secs(p.cut_secs);
                let logged = rig.service.log_text().len();
                let errors_before = produce_errors(&rig.service.metrics().await);
                rig.cut();
                say(format!(
                    "network cut: the service's traffic to the internal broker dropped for {secs:?}"
                ));
                tokio::time::sleep(secs).await;
                // What the service said while cut off: its requests timing out.
                let log = rig.service.log_text();
                let timeouts: Vec<&str> = log[logged..]
                    .lines()
                    .filter(|l| l.contains("timed out") || l.contains("did not answer"))
                    .collect();
                let felt = timeouts.len();
                // And what an operator's alert sees (docs/operations.md).
                let metrics = rig.service.metrics().await;
                let counted = produce_errors(&metrics).saturating_sub(errors_before);
                let in_doubt = metrics
                    .lines()
                    .filter(|l| l.starts_with("kafka_direct_produce_in_doubt{"))
                    .any(|l| l.ends_with(" 1"));
                if let Some(first) = timeouts.first() {
                    say(format!("the service, cut off: {first}"));
                }
                rig.heal();
                cuts += 1;
                cut_timeouts += felt;
                cut_errors += counted;
                cuts_in_doubt += usize::from(in_doubt);
                say(format!(
                    "network cut healed; while it lasted the service logged {felt} timeouts, counted {counted} in kafka_direct_errors_total{{kind=\"produce\"}}, and kafka_direct_produce_in_doubt was {}",
                    u8::from(in_doubt)
                ));
            }
        }
    }
    producer.await.unwrap();
    assert!(!producing.load(Ordering::Relaxed));
    say(format!(
        "faults done; {} records produced; waiting for the copy to catch up",
        produced.load(Ordering::Relaxed)
    ));

    // Caught up: each internal partition's last record is a copy of its source
    // partition's last record. (Ends cannot be compared: a broker killed while storing a
    // produce may leave a gap of offsets in the source.) The wait lasts as long as the
    // copy moves (the S3-backed test broker is slow with much data) and gives up after
    // 180 s without progress.
    let mut last_source = Vec::new();
    for partition in 0..p.partitions {
        last_source.push(end_offset(&rig.external.bootstrap(), TOPIC, partition).await - 1);
    }
    let mut copied = vec![None; last_source.len()];
    let mut moved = Instant::now();
    loop {
        let mut behind = Vec::new();
        for (partition, &last) in last_source.iter().enumerate() {
            let now = last_copied_source_offset(&rig.internal.bootstrap(), partition as i32).await;
            if now != copied[partition] {
                copied[partition] = now;
                moved = Instant::now();
            }
            if now != Some(last) {
                behind.push(partition);
            }
        }
        if behind.is_empty() {
            say("caught up".into());
            break;
        }
        if moved.elapsed() > Duration::from_secs(180) {
            say(format!(
                "no progress for 180 s; partitions not caught up: {behind:?}"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut faults = Faults::default();
    let mut source_records = 0;
    for partition in 0..p.partitions {
        let source = read_all(&rig.external.bootstrap(), TOPIC, partition).await;
        let copies = read_all(&rig.internal.bootstrap(), INTERNAL_TOPIC, partition).await;
        let f = count_faults(&source, &copies);
        if !f.none() {
            say(format!(
                "partition {partition}: {} source records, {} copies, {f:?}",
                source.len(),
                copies.len()
            ));
        }
        source_records += source.len();
        faults.add(f);
    }
    let unexpected = rig.service.progress_field("unexpected_produce_offsets");
    let clean_exit = rig.service.terminate(Duration::from_secs(60)).success();
    println!(
        "torture: records={source_records} partitions={} cluster_size={} kills={kills} broker_restarts={restarts} outage_secs={} network_cuts={cuts} cut_secs={} cut_timeouts={cut_timeouts} cut_produce_errors={cut_errors} cuts_in_doubt={cuts_in_doubt} elapsed_secs={:.0} lost={} duplicated={} reordered={} damaged={} unexpected_produce_offsets={} seed={}",
        p.partitions,
        p.cluster_size,
        outage.as_secs(),
        p.cut_secs,
        started.elapsed().as_secs_f64(),
        faults.lost,
        faults.duplicated,
        faults.reordered,
        faults.damaged,
        unexpected.map_or("?".into(), |u| u.to_string()),
        p.seed,
    );
    // A cut the service did not notice did not cut anything: the run proves nothing
    // about network partitions.
    let cut_felt = cuts == 0 || cut_timeouts > 0;
    if !cut_felt {
        eprintln!(
            "torture: {cuts} network cuts of {} s and no timeout in the service's log meanwhile: the proxy did not cut the service off",
            p.cut_secs
        );
    }
    // Each cut must show where an operator looks: the internal side's error counter (the
    // in-doubt gauge is 1 only if a produce was in flight when the cut began: reported).
    let cut_seen = cut_errors >= cuts as u64;
    if cut_felt && !cut_seen {
        eprintln!(
            "torture: {cuts} network cuts and {cut_errors} errors counted in kafka_direct_errors_total{{kind=\"produce\"}} meanwhile: a cut must show there"
        );
    }
    if !faults.none() || !clean_exit || !cut_felt || !cut_seen {
        // The service's whole log, kept past the run's temporary directory.
        let kept = repo_root().join(format!("target/tmp/torture-service-{}.log", p.seed));
        let _ = std::fs::create_dir_all(kept.parent().unwrap());
        let _ = std::fs::copy(&rig.service.log, &kept);
        eprintln!(
            "torture FAILED (replay with --seed {}); clean exit: {clean_exit}; service log kept at {}; its end:\n{}",
            p.seed,
            kept.display(),
            tail(&rig.service.log_text(), 80)
        );
        return false;
    }
    true
}

/// Produces `records` to the source, retrying through broker restarts. A retry may
/// store a chunk twice in the source: the check compares copies with the source
/// offset by offset, so that does not matter.
async fn produce_until_stored(addr: &str, partition: i32, records: Vec<Record>) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let attempt = async {
            let client =
                rskafka::client::ClientBuilder::new(addr.split(',').map(str::to_owned).collect())
                    .build()
                    .await?;
            let pc = client
                .partition_client(
                    TOPIC,
                    partition,
                    rskafka::client::partition::UnknownTopicHandling::Retry,
                )
                .await?;
            pc.produce(records.clone(), Compression::NoCompression)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok(_)) => return,
            _ if Instant::now() > deadline => panic!("the source broker refused records for 300 s"),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// The sum of `kafka_direct_errors_total{kind="produce"}` over partitions, in a
/// `/metrics` text.
fn produce_errors(metrics: &str) -> u64 {
    counter_sum_where(metrics, "errors", r#"kind="produce""#)
}

/// The source offset named by the last record of an internal partition.
async fn last_copied_source_offset(addr: &str, partition: i32) -> Option<i64> {
    let end = end_offset(addr, INTERNAL_TOPIC, partition).await;
    if end == 0 {
        return None;
    }
    let pc = partition_client(addr, INTERNAL_TOPIC, partition).await;
    let (records, _) = pc.fetch_records(end - 1, 1..4_000_000, 500).await.ok()?;
    let last = records.iter().find(|r| r.offset == end - 1)?;
    std::str::from_utf8(last.record.headers.get(SOURCE_OFFSET_HEADER)?)
        .ok()?
        .parse()
        .ok()
}

/// The service, the two clusters, and the proxies between the service and the internal
/// one.
struct Rig {
    service: Service,
    external: Side,
    internal: Side,
    firewalls: Vec<FirewallProxy>,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(p: &Profile, store: &ObjectStore) -> Self {
        // The service reaches each internal node only through a proxy (the node
        // advertises its port), so cutting the proxies partitions it from that cluster.
        let mut bound = Vec::new();
        for _ in 0..p.cluster_size {
            bound.push(FirewallProxy::bind().await);
        }
        let (external, internal) = if p.cluster_size == 1 {
            let bucket = |side: &str| format!("kd-{side}-{}", p.seed % 100_000);
            let external = Broker::start_durable(store, &bucket("external"));
            let internal =
                Broker::start_durable_advertising(store, &bucket("internal"), Some(bound[0].0));
            (
                Side {
                    nodes: vec![external],
                },
                Side {
                    nodes: vec![internal],
                },
            )
        } else {
            let external = KafkaCluster::start(p.cluster_size);
            let advertised: Vec<Option<u16>> = bound.iter().map(|(port, _)| Some(*port)).collect();
            let internal = KafkaCluster::start_advertising(&advertised);
            (
                Side {
                    nodes: external.nodes,
                },
                Side {
                    nodes: internal.nodes,
                },
            )
        };
        let firewalls = bound
            .into_iter()
            .zip(&internal.nodes)
            .map(|((_, listener), node)| FirewallProxy::start(listener, node.port))
            .collect();
        if p.cluster_size == 1 {
            create_topic(&external.bootstrap(), TOPIC, p.partitions).await;
        } else {
            create_topic_with_configs(
                &external.bootstrap(),
                TOPIC,
                p.partitions,
                &["min.insync.replicas=2"],
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let factor = p.cluster_size.to_string();
        let service = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &external.bootstrap(),
                internal: &internal.advertised(),
                topics: TOPIC,
                // The S3-backed test broker slows down as data grows: a longer bound per
                // call.
                extra: &[
                    ("progress.interval.ms", "1000"),
                    ("request.timeout.ms", "10000"),
                    ("internal.replication.factor", &factor),
                ],
            },
        );
        Self {
            service,
            external,
            internal,
            firewalls,
            _dir: dir,
        }
    }

    fn cut(&self) {
        self.firewalls.iter().for_each(FirewallProxy::cut);
    }

    fn heal(&self) {
        self.firewalls.iter().for_each(FirewallProxy::heal);
    }
}

/// One cluster: a durable broker, or three Kafka nodes.
struct Side {
    nodes: Vec<Broker>,
}

impl Side {
    /// Every node's own address, comma-separated (the test's clients).
    fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(Broker::addr).collect();
        addrs.join(",")
    }

    /// Every node's advertised address (its proxy's), comma-separated (the service's).
    fn advertised(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(Broker::advertised_addr).collect();
        addrs.join(",")
    }

    /// Kills (SIGKILL) the node leading `topic/partition` and starts it again: the only
    /// node, or, in a cluster, the leader, whose leadership moves to another replica.
    async fn restart_leader(&self, topic: &str, partition: i32) -> String {
        if self.nodes.len() == 1 {
            self.nodes[0].kill9();
            self.nodes[0].start_again();
            return "broker killed and restarted".into();
        }
        let leader = leader_of(&self.bootstrap(), topic, partition).await;
        let node = &self.nodes[(leader - 1) as usize];
        node.kill9();
        let others: Vec<String> = (1..=self.nodes.len() as i32)
            .filter(|n| *n != leader)
            .map(|n| self.nodes[(n - 1) as usize].addr())
            .collect();
        // Until the controller notices the node gone (its session, 2.5 s here), the
        // metadata still names it.
        let deadline = Instant::now() + Duration::from_secs(60);
        let moved = loop {
            let now = leader_of(&others.join(","), topic, partition).await;
            if now != leader || Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        node.start_again();
        format!("node {leader}, leader of {topic}/{partition}, killed (leadership moved to node {moved}) and restarted")
    }

    /// The cluster unavailable: the only node killed, or two nodes of three (no
    /// controller quorum, fewer in-sync replicas than `min.insync.replicas`).
    fn take_down(&self) -> String {
        let down = self.nodes.len().min(2);
        for node in &self.nodes[..down] {
            node.kill9();
        }
        format!("{down} of {} nodes killed", self.nodes.len())
    }

    /// Starts the nodes [`Side::take_down`] killed, one after the other (with the node
    /// left, the first one restarted makes a quorum again).
    fn bring_back(&self) {
        let down = self.nodes.len().min(2);
        for node in &self.nodes[..down] {
            node.start_again();
        }
    }
}
