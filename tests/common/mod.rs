//! Test kit: real brokers on free loopback ports, the service as a child process, and an
//! independent reader (plain rskafka, plus kcat) to check what arrived.
//!
//! Brokers come from `scripts/broker` (installed by `scripts/install-broker`); every
//! process started here is killed when its handle drops, even when a test fails.
#![allow(dead_code)]
// The process helpers are synchronous and short; the async tests use a multi-thread runtime.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::{Record, RecordAndOffset};

pub mod connect;
pub mod oidc;
pub mod secure;

pub const SOURCE_TOPIC_HEADER: &str = "kafka-direct.source.topic";
pub const SOURCE_PARTITION_HEADER: &str = "kafka-direct.source.partition";
pub const SOURCE_OFFSET_HEADER: &str = "kafka-direct.source.offset";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn run_script(name: &str) -> PathBuf {
    let out = Command::new(repo_root().join("scripts").join(name))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/{name}: {e}"));
    assert!(out.status.success(), "scripts/{name} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

static INSTALL: Once = Once::new();

/// Installs the brokers and kcat once per test binary.
pub fn install_tools() {
    INSTALL.call_once(|| {
        run_script("install-kafka");
        run_script("install-broker");
        run_script("install-kcat");
    });
}

/// Runs the kafka-direct CLI: (success, stdout followed by stderr).
pub fn cli(args: &[&str]) -> (bool, String) {
    cli_in_env(args, &[], &[])
}

/// As [`cli`], with `clear` removed from the environment, then `set` added to it.
pub fn cli_in_env(args: &[&str], set: &[(&str, &str)], clear: &[&str]) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kafka-direct"));
    command.args(args);
    for name in clear {
        command.env_remove(name);
    }
    let out = command.envs(set.iter().copied()).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs one of Apache Kafka's own command-line tools (scripts/kafka-tool, e.g.
/// `kafka-topics`) and returns its standard output; fails the test if it fails.
pub fn kafka_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(repo_root().join("scripts/kafka-tool"))
        .arg(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run scripts/kafka-tool {tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Debian's Chromium, installed on first use (for the status page test).
pub fn chromium() -> PathBuf {
    run_script("install-chromium")
}

pub fn kcat() -> PathBuf {
    install_tools();
    repo_root().join("target/kcat/kcat")
}

/// A test binary that runs past this has a test that hangs (a request rskafka waits on
/// for ever, a service that never exits): the kit's watchdog ends the binary then, so that
/// the suite goes on and reports it instead of running into CI's time limit.
/// `KAFKA_DIRECT_TEST_BINARY_MINUTES` sets it.
const BINARY_MINUTES: u64 = 20;

/// Starts the watchdog (once per binary, on first use of a broker or the service): past
/// [`BINARY_MINUTES`] it kills every process the binary started (brokers, services,
/// tools) and exits 101 with a line `scripts/test` counts as a failed test.
pub(crate) fn watchdog() {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let minutes = std::env::var("KAFKA_DIRECT_TEST_BINARY_MINUTES")
            .ok()
            .and_then(|m| m.parse().ok())
            .unwrap_or(BINARY_MINUTES);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(minutes * 60));
            // Past the test harness's capture of `eprintln!`, which would drop the line.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "test kit: watchdog: this test binary ran past {minutes} min, so a test hangs \
                 (see \"has been running for over 60 seconds\" above); its processes are \
                 killed and the binary fails"
            );
            kill_children();
            std::process::exit(101);
        });
    });
}

/// SIGKILL to every process whose parent is this one.
fn kill_children() {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // pid (comm) state ppid ...: comm may hold spaces, so read after its last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1));
        if ppid == Some(me.as_str()) {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
    }
}

/// A free loopback port, never one this process was given before: ports picked one after
/// the other for one broker (its listeners) must differ, and the kernel may hand out a
/// port again once its listener is closed.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// The broker the integration tests run against: Apache Kafka (the reference, default)
/// or tansu (`KAFKA_DIRECT_TEST_PLATFORM=tansu`, the second platform: scripts/test runs a
/// compatibility subset on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    Kafka,
    Tansu,
}

pub fn platform() -> Platform {
    match std::env::var("KAFKA_DIRECT_TEST_PLATFORM").as_deref() {
        Err(_) | Ok("") | Ok("kafka") => Platform::Kafka,
        Ok("tansu") => Platform::Tansu,
        Ok(other) => {
            panic!("KAFKA_DIRECT_TEST_PLATFORM={other}: the platforms are kafka and tansu")
        }
    }
}

/// How long a broker may take to start: a JVM on two busy cores takes seconds.
const BROKER_START: Duration = Duration::from_secs(90);

/// One broker on free loopback ports: its own (a test may pause, kill and restart it) or
/// shared by the tests of one binary ([`shared_brokers`]; a shared broker refuses to be
/// paused or killed).
pub struct Broker {
    child: std::sync::Mutex<Option<Child>>,
    pub port: u16,
    advertised: u16,
    kind: BrokerKind,
    shared: bool,
    starts: std::sync::atomic::AtomicUsize,
}

enum BrokerKind {
    /// tansu: in memory, or (durable) in an S3-compatible store.
    Tansu {
        storage: String,
        s3_endpoint: Option<String>,
    },
    /// Apache Kafka (scripts/kafka): its log on disk in `dir`, so it survives a restart.
    Kafka {
        dir: tempfile::TempDir,
        controller_port: u16,
        args: Vec<String>,
    },
}

static SHARED: std::sync::OnceLock<(Arc<Broker>, Arc<Broker>)> = std::sync::OnceLock::new();

/// The external and internal broker every test of this binary that breaks neither
/// shares (started on first use, in parallel; stopped when the binary exits). Each test
/// uses topic names of its own on them.
pub fn shared_brokers() -> (Arc<Broker>, Arc<Broker>) {
    let (external, internal) = SHARED.get_or_init(|| {
        let other = std::thread::spawn(Broker::start_shared);
        let external = Broker::start_shared();
        let internal = other.join().expect("the shared internal broker starts");
        // A static is never dropped: the pair is stopped, and a Kafka broker's log
        // removed, when the binary exits (else every test binary leaves its log behind).
        // SAFETY: `stop_shared` is an `extern "C" fn()` that does not unwind.
        unsafe { libc::atexit(stop_shared) };
        (Arc::new(external), Arc::new(internal))
    });
    (external.clone(), internal.clone())
}

extern "C" fn stop_shared() {
    let Some((external, internal)) = SHARED.get() else {
        return;
    };
    for broker in [external, internal] {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            broker.stop_child();
            if let BrokerKind::Kafka { dir, .. } = &broker.kind {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }));
    }
}

impl Broker {
    /// A broker of this test's own.
    pub fn start() -> Self {
        Self::start_advertising(None)
    }

    fn start_shared() -> Self {
        let mut broker = Self::start();
        broker.shared = true;
        broker
    }

    /// A broker that tells clients to connect to `advertised_port` (a proxy's).
    pub fn start_advertising(advertised_port: Option<u16>) -> Self {
        match platform() {
            Platform::Kafka => Self::start_kafka(advertised_port, &[]),
            Platform::Tansu => Self::start_tansu("memory://tansu/", None, advertised_port),
        }
    }

    /// A broker whose data survives [`Broker::kill9`] and [`Broker::start_again`]:
    /// Kafka's log is on disk; tansu keeps it in `store` (bucket `bucket`).
    pub fn start_durable(store: &ObjectStore, bucket: &str) -> Self {
        Self::start_durable_advertising(store, bucket, None)
    }

    /// A durable broker ([`Broker::start_durable`]) that tells clients to connect to
    /// `advertised_port` (a proxy's).
    pub fn start_durable_advertising(
        store: &ObjectStore,
        bucket: &str,
        advertised_port: Option<u16>,
    ) -> Self {
        match platform() {
            Platform::Kafka => Self::start_kafka(advertised_port, &[]),
            Platform::Tansu => Self::start_tansu(
                &format!("s3://{bucket}/"),
                Some(store.endpoint()),
                advertised_port,
            ),
        }
    }

    /// An Apache Kafka broker started with these more `scripts/kafka` options (a
    /// secured listener, users, settings).
    pub fn start_kafka(advertised: Option<u16>, args: &[String]) -> Self {
        for _ in 0..5 {
            let (port, controller_port) = (free_port(), free_port());
            let advertised = advertised.unwrap_or(port);
            let dir = tempfile::tempdir().unwrap();
            if let Some(child) = spawn_kafka(port, controller_port, dir.path(), advertised, args, 1)
            {
                return Self::kafka(child, port, advertised, dir, controller_port, args.to_vec());
            } // else: a port taken in between, try others
        }
        panic!("could not start an Apache Kafka broker (scripts/kafka)");
    }

    /// The handle of a Kafka broker that serves (started once).
    fn kafka(
        child: Child,
        port: u16,
        advertised: u16,
        dir: tempfile::TempDir,
        controller_port: u16,
        args: Vec<String>,
    ) -> Self {
        Self {
            child: std::sync::Mutex::new(Some(child)),
            port,
            advertised,
            kind: BrokerKind::Kafka {
                dir,
                controller_port,
                args,
            },
            shared: false,
            starts: 1.into(),
        }
    }

    fn start_tansu(storage: &str, s3_endpoint: Option<String>, advertised: Option<u16>) -> Self {
        install_tools();
        for _ in 0..5 {
            let port = free_port();
            let advertised = advertised.unwrap_or(port);
            let spawned = spawn_tansu(port, storage, s3_endpoint.as_deref(), advertised);
            if let Some(child) = spawned {
                return Self {
                    child: std::sync::Mutex::new(Some(child)),
                    port,
                    advertised,
                    kind: BrokerKind::Tansu {
                        storage: storage.to_string(),
                        s3_endpoint,
                    },
                    shared: false,
                    starts: 1.into(),
                };
            } // else: port taken in between, try another
        }
        panic!("could not start a broker");
    }

    fn own(&self, what: &str) {
        assert!(
            !self.shared,
            "a test that {what} a broker needs brokers of its own (Pipeline::isolated, Broker::start), not the shared ones"
        );
    }

    /// Kills the broker at once (SIGKILL), as a crash would.
    pub fn kill9(&self) {
        self.own("kills");
        self.stop_child();
    }

    fn stop_child(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports and storage (after [`Broker::kill9`]).
    pub fn start_again(&self) {
        self.own("restarts");
        let run = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let spawned = match &self.kind {
                BrokerKind::Tansu {
                    storage,
                    s3_endpoint,
                } => spawn_tansu(self.port, storage, s3_endpoint.as_deref(), self.advertised),
                BrokerKind::Kafka {
                    dir,
                    controller_port,
                    args,
                } => spawn_kafka(
                    self.port,
                    *controller_port,
                    dir.path(),
                    self.advertised,
                    args,
                    run,
                ),
            };
            if let Some(child) = spawned {
                *self.child.lock().unwrap() = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker on port {} does not start again",
                self.port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The address clients are told to connect to: a proxy's when the broker has one.
    pub fn advertised_addr(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    fn pid(&self) -> u32 {
        self.child
            .lock()
            .unwrap()
            .as_ref()
            .expect("broker running")
            .id()
    }

    /// Stops the broker's process (SIGSTOP): it holds its connections and answers nothing.
    pub fn pause(&self) {
        self.own("pauses");
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop_child();
    }
}

/// Apache Kafka brokers on this machine forming one cluster (each node broker and
/// controller, a quorum of all): for leader changes. Each node is its own [`Broker`], so
/// a test can kill and restart one; node ids are 1, 2, 3, ...
pub struct KafkaCluster {
    pub nodes: Vec<Broker>,
}

impl KafkaCluster {
    pub fn start(n: usize) -> Self {
        Self::start_advertising(&vec![None; n])
    }

    /// A cluster of one node per entry of `advertised`, each node advertising that port
    /// (a proxy's) instead of its own when given.
    pub fn start_advertising(advertised: &[Option<u16>]) -> Self {
        // A port chosen free can be taken by another process's connection before its
        // node binds it: then the node exits, its peers wait for it in vain, and the
        // whole cluster starts again on other ports.
        for _ in 0..3 {
            if let Some(cluster) = Self::launch(advertised) {
                return cluster;
            }
        }
        panic!(
            "could not start a Kafka cluster of {} nodes: ports taken three times",
            advertised.len()
        );
    }

    /// One try of [`KafkaCluster::start_advertising`]: `None` if a node exited because
    /// its port was taken (the others are stopped).
    fn launch(advertised: &[Option<u16>]) -> Option<Self> {
        let n = advertised.len();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect();
        // A Kafka Uuid: 16 bytes in unpadded base64url, not starting with '-'.
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut cluster_id: String = (0..21)
            .map(|_| alphabet[fastrand::usize(..64)] as char)
            .collect();
        cluster_id.insert(0, alphabet[fastrand::usize(..62)] as char);
        // 22 characters carry 132 bits; the last one's low 4 bits must be zero.
        cluster_id.pop();
        cluster_id.push(alphabet[fastrand::usize(..4) * 16] as char);
        let mut launched: Vec<(Child, tempfile::TempDir, Vec<String>, u16)> = ports
            .iter()
            .enumerate()
            .map(|(i, (port, controller))| {
                let dir = tempfile::tempdir().unwrap();
                let args = vec![
                    "--node-id".to_owned(),
                    (i + 1).to_string(),
                    "--voters".to_owned(),
                    voters.join(","),
                    "--cluster-id".to_owned(),
                    cluster_id.clone(),
                ];
                let shown = advertised[i].unwrap_or(*port);
                let child = launch_kafka(*port, *controller, dir.path(), shown, &args, 1);
                (child, dir, args, shown)
            })
            .collect();
        // Every node together: one that exits is seen at once, not after its peers gave
        // up waiting for it.
        let log = |dir: &tempfile::TempDir| {
            std::fs::read_to_string(dir.path().join("broker-1.log")).unwrap_or_default()
        };
        let deadline = Instant::now() + BROKER_START;
        loop {
            if launched
                .iter()
                .all(|(_, dir, _, _)| log(dir).contains("Kafka Server started"))
            {
                break;
            }
            let exited = launched
                .iter_mut()
                .enumerate()
                .find_map(|(i, (child, dir, _, _))| {
                    matches!(child.try_wait(), Ok(Some(_))).then(|| (i + 1, log(dir)))
                });
            if let Some((id, text)) = exited {
                for (child, ..) in &mut launched {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                if text.contains("Address already in use") {
                    return None;
                }
                panic!("node {id} of the Kafka cluster exited before it started; its log:\n{text}");
            }
            if Instant::now() > deadline {
                let waiting: Vec<String> = launched
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, dir, _, _))| !log(dir).contains("Kafka Server started"))
                    .map(|(i, (_, dir, _, _))| format!("node {}: {}", i + 1, tail(&log(dir), 30)))
                    .collect();
                for (child, ..) in &mut launched {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                panic!(
                    "the Kafka cluster did not start within {BROKER_START:?}; the nodes not started, their logs' ends:\n{}",
                    waiting.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let nodes = launched
            .into_iter()
            .zip(&ports)
            .map(|((child, dir, args, shown), (port, controller))| {
                Broker::kafka(child, *port, shown, dir, *controller, args)
            })
            .collect();
        Some(Self { nodes })
    }

    /// Every node's address, comma-separated.
    pub fn bootstrap(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(Broker::addr).collect();
        addrs.join(",")
    }

    /// The node with this id (1-based).
    pub fn node(&self, id: i32) -> &Broker {
        &self.nodes[(id - 1) as usize]
    }

    /// The addresses of every node but `id`, comma-separated (after `id` was killed).
    pub fn bootstrap_without(&self, id: i32) -> String {
        let addrs: Vec<String> = (1..=self.nodes.len() as i32)
            .filter(|n| *n != id)
            .map(|n| self.node(n).addr())
            .collect();
        addrs.join(",")
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The id of the node leading `topic/partition`, as Kafka's own `kafka-topics
/// --describe` reports it (once it has one).
pub async fn leader_of(bootstrap: &str, topic: &str, partition: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let described = kafka_tool(
            "kafka-topics",
            &[
                "--bootstrap-server",
                bootstrap,
                "--describe",
                "--topic",
                topic,
            ],
        );
        let leader = described.lines().find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let at = |name: &str| {
                fields
                    .iter()
                    .position(|f| *f == name)
                    .and_then(|i| fields.get(i + 1))
            };
            (at("Partition:")? == &partition.to_string().as_str())
                .then(|| at("Leader:")?.parse::<i32>().ok())
                .flatten()
        });
        if let Some(leader) = leader.filter(|id| *id > 0) {
            return leader;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition} has no leader: {described}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Runs scripts/kafka (logging to `dir/broker-RUN.log`) and waits until the broker
/// serves; `None` if it exited first (a port taken), a failure past [`BROKER_START`].
fn spawn_kafka(
    port: u16,
    controller_port: u16,
    dir: &Path,
    advertised: u16,
    args: &[String],
    run: usize,
) -> Option<Child> {
    let child = launch_kafka(port, controller_port, dir, advertised, args, run);
    kafka_serving(child, port, dir, run)
}

/// Starts scripts/kafka without waiting for the broker (see [`kafka_serving`]).
fn launch_kafka(
    port: u16,
    controller_port: u16,
    dir: &Path,
    advertised: u16,
    args: &[String],
    run: usize,
) -> Child {
    watchdog();
    let log = dir.join(format!("broker-{run}.log"));
    let out = std::fs::File::create(&log).unwrap();
    Command::new(repo_root().join("scripts/kafka"))
        .args(["--port", &port.to_string()])
        .args(["--controller-port", &controller_port.to_string()])
        .args(["--advertised-port", &advertised.to_string()])
        .arg("--dir")
        .arg(dir.join("node"))
        // The broker goes with this test binary, however the binary ends.
        .args(["--watch", &std::process::id().to_string()])
        // The test records carry fixed timestamps of 2023, which time-based retention
        // (7 days by default) would delete within minutes; a test of retention sets it
        // on its topic.
        .args(["--set", "log.retention.ms=-1"])
        .args(args)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("scripts/kafka starts")
}

/// Waits until the broker `launch_kafka` started serves; `None` if it exited first
/// because a port was taken, a failure past [`BROKER_START`] or on any other exit.
fn kafka_serving(mut child: Child, port: u16, dir: &Path, run: usize) -> Option<Child> {
    let log = dir.join(format!("broker-{run}.log"));
    let deadline = Instant::now() + BROKER_START;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("Kafka Server started") {
            return Some(child);
        }
        if let Ok(Some(status)) = child.try_wait() {
            if text.contains("Address already in use") {
                return None;
            }
            panic!("scripts/kafka exited ({status}) before the broker started; its log:\n{text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Kafka broker on port {port} did not start within {BROKER_START:?}; its log:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs scripts/broker and waits until it accepts connections; `None` if it exited.
fn spawn_tansu(
    port: u16,
    storage: &str,
    s3_endpoint: Option<&str>,
    advertised: u16,
) -> Option<Child> {
    watchdog();
    let mut cmd = Command::new(repo_root().join("scripts/broker"));
    cmd.args([
        port.to_string(),
        storage.to_string(),
        advertised.to_string(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if let Some(endpoint) = s3_endpoint {
        cmd.env("KAFKA_DIRECT_S3_ENDPOINT", endpoint);
    }
    let child = cmd.spawn().expect("scripts/broker starts");
    listening(child, port, Duration::from_secs(20))
}

/// Waits until `child` accepts connections on `port`; `None` (and the child stopped) if
/// it exited or did not listen within `within`.
pub fn listening(mut child: Child, port: u16, within: Duration) -> Option<Child> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A local S3-compatible store (scripts/s3) holding durable tansu brokers' data (on
/// Apache Kafka, which keeps its log on disk, nothing runs).
pub struct ObjectStore {
    child: Option<Child>,
    pub port: u16,
}

impl ObjectStore {
    pub fn start() -> Self {
        if platform() == Platform::Kafka {
            return Self {
                child: None,
                port: 0,
            };
        }
        run_script("install-s3");
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new(repo_root().join("scripts/s3"))
                .arg(port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("scripts/s3 starts");
            if let Some(child) = listening(child, port, Duration::from_secs(30)) {
                return Self {
                    child: Some(child),
                    port,
                };
            } // else: port taken in between, try another
        }
        panic!("could not start the S3-compatible store");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Accepts connections on `listener` and hands each, with a new connection to the broker
/// on `broker_port`, to `pair` (the proxies' common part).
fn relay(
    listener: tokio::net::TcpListener,
    broker_port: u16,
    pair: impl Fn(tokio::net::TcpStream, tokio::net::TcpStream) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(broker) = tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
            else {
                continue;
            };
            pair(client, broker);
        }
    })
}

/// A TCP proxy in front of a broker that can drop a connection after the broker received
/// a request but before its response reaches the client: the outcome the client sees is
/// unknown while the broker may have acted on the request.
pub struct CuttingProxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub cuts_done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    /// Listens on a free port; connect it to a broker with [`CuttingProxy::forward_to`].
    pub async fn bind() -> (Self, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Self {
            port,
            cut: Default::default(),
            cuts_done: Default::default(),
            task: tokio::spawn(async {}),
        };
        (proxy, listener)
    }

    /// Starts relaying connections from `listener` to the broker on `broker_port`.
    pub fn forward_to(&mut self, listener: tokio::net::TcpListener, broker_port: u16) {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (cut, done) = (self.cut.clone(), self.cuts_done.clone());
        self.task = relay(listener, broker_port, move |client, broker| {
            let (cut, done) = (cut.clone(), done.clone());
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut broker_rx, mut broker_tx) = broker.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_rx, &mut broker_tx).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match broker_rx.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // A response is on its way back: swallow it and close, if asked to.
                    if cut
                        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1))
                        .is_ok()
                    {
                        done.fetch_add(1, Ordering::SeqCst);
                        return; // drops both halves: the client sees a broken connection
                    }
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        });
    }

    /// Cuts the next `n` responses (one per connection that answers next).
    ///
    /// Cuts asked for while earlier ones wait for a response do not add up: a client that
    /// backs off sends nothing for seconds, and cuts piled up meanwhile would break every
    /// connection after it, the test's own reads included.
    pub fn cut_next(&self, n: usize) {
        self.cut.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Cuts nothing more (before a test reads through the proxy to check the result).
    pub fn stop_cutting(&self) {
        self.cut.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy in front of a broker that delays every byte by the same time in each
/// direction, without limiting throughput: a remote cluster's round trip (twice the
/// delay) on loopback, where the kernel here has no netem.
pub struct DelayProxy {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free port; the broker behind it must advertise that port
    /// ([`Broker::start_advertising`]).
    pub async fn bind() -> (u16, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener.local_addr().unwrap().port(), listener)
    }

    /// Relays connections from `listener` to the broker on `broker_port`, each byte
    /// `one_way` later than it arrived.
    pub fn start(listener: tokio::net::TcpListener, broker_port: u16, one_way: Duration) -> Self {
        let port = listener.local_addr().unwrap().port();
        let task = relay(listener, broker_port, move |client, broker| {
            let _ = client.set_nodelay(true);
            let _ = broker.set_nodelay(true);
            let (client_rx, client_tx) = client.into_split();
            let (broker_rx, broker_tx) = broker.into_split();
            tokio::spawn(Self::delay_line(client_rx, broker_tx, one_way));
            tokio::spawn(Self::delay_line(broker_rx, client_tx, one_way));
        });
        Self { port, task }
    }

    async fn delay_line(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tx, mut rx) =
            tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        let writer = tokio::spawn(async move {
            while let Some((due, bytes)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            let _ = to.shutdown().await;
        });
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = tokio::time::Instant::now() + delay;
                    if tx.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        drop(tx);
        let _ = writer.await;
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP proxy in front of a broker that a test cuts like a firewall that drops
/// packets: while cut it forwards nothing either way and connects nothing new, and it
/// closes nothing, so a client sees requests go unanswered, not a refused or reset
/// connection. What was sent meanwhile (requests, closes) goes on when the cut heals,
/// as TCP's retransmissions deliver it after a network partition.
///
/// The kernel completes a connection's handshake before the proxy sees it: a client
/// that connects while the cut lasts is connected, and its first request hangs.
pub struct FirewallProxy {
    pub port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FirewallProxy {
    /// Listens on a free port; the broker behind it must advertise that port
    /// ([`Broker::start_durable_advertising`]).
    pub async fn bind() -> (u16, tokio::net::TcpListener) {
        DelayProxy::bind().await
    }

    /// Relays connections from `listener` to the broker on `broker_port` (not cut).
    pub fn start(listener: tokio::net::TcpListener, broker_port: u16) -> Self {
        let port = listener.local_addr().unwrap().port();
        let (cut, open) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut open = open.clone();
                tokio::spawn(async move {
                    if !Self::opened(&mut open).await {
                        return;
                    }
                    let Ok(broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", broker_port)).await
                    else {
                        return; // the client sees its connection close, as with no broker
                    };
                    let (client_rx, client_tx) = client.into_split();
                    let (broker_rx, broker_tx) = broker.into_split();
                    tokio::spawn(Self::line(client_rx, broker_tx, open.clone()));
                    tokio::spawn(Self::line(broker_rx, client_tx, open));
                });
            }
        });
        Self { port, cut, task }
    }

    /// Stops forwarding, on every connection, until [`FirewallProxy::heal`].
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Waits until no cut holds the connection; false once the proxy is gone.
    async fn opened(open: &mut tokio::sync::watch::Receiver<bool>) -> bool {
        open.wait_for(|cut| !*cut).await.is_ok()
    }

    async fn line(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut open: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if !Self::opened(&mut open).await {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Bytes read as the cut began wait for it to heal.
            if !Self::opened(&mut open).await || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
        // A close crosses no cut either.
        if Self::opened(&mut open).await {
            let _ = to.shutdown().await;
        }
    }
}

impl Drop for FirewallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn client(addr: &str) -> Client {
    tokio::time::timeout(
        Duration::from_secs(20),
        ClientBuilder::new(addr.split(',').map(str::to_owned).collect()).build(),
    )
    .await
    .expect("test client connects in time")
    .expect("test client connects")
}

/// Creates `topic` with `configs` (`key=value`) with Kafka's own kafka-topics.
pub fn create_topic_with_configs(addr: &str, topic: &str, partitions: i32, configs: &[&str]) {
    let partitions = partitions.to_string();
    let mut args = vec![
        "--bootstrap-server",
        addr,
        "--create",
        "--topic",
        topic,
        "--partitions",
        &partitions,
    ];
    for config in configs {
        args.extend(["--config", config]);
    }
    kafka_tool("kafka-topics", &args);
}

pub async fn create_topic(addr: &str, topic: &str, partitions: i32) {
    let c = client(addr).await;
    // rskafka retries a request without an answer for ever: a hung test tells nothing.
    tokio::time::timeout(
        Duration::from_secs(60),
        c.controller_client()
            .unwrap()
            .create_topic(topic, partitions, 1, 5_000),
    )
    .await
    .unwrap_or_else(|_| panic!("creating topic {topic} on {addr}: no answer within 60 s"))
    .unwrap_or_else(|e| {
        panic!("creating topic {topic} on {addr}: {e} (the tests of one binary share brokers: is the name used by another test?)")
    });
}

/// A client of one partition, its leader found within [`bounded`]'s tries: rskafka
/// looks for a leader for ever, and a metadata request sent just after a broker was
/// paused and resumed can go unanswered.
pub async fn partition_client(addr: &str, topic: &str, partition: i32) -> PartitionClient {
    bounded(
        &format!("the leader of {topic}/{partition} at {addr}"),
        || async move {
            client(addr)
                .await
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .unwrap()
        },
    )
    .await
}

/// Deterministic test records: varied sizes, some null keys and values, headers.
pub fn test_records(partition: i32, start: usize, n: usize) -> Vec<Record> {
    (start..start + n)
        .map(|i| {
            let mut headers = BTreeMap::new();
            if i % 3 != 0 {
                headers.insert(
                    "trace".to_owned(),
                    format!("t-{partition}-{i}").into_bytes(),
                );
            }
            if i % 5 == 0 {
                headers.insert("empty".to_owned(), Vec::new());
            }
            let size = (i * 37) % 1500;
            Record {
                key: (i % 7 != 0).then(|| format!("key-{i}").into_bytes()),
                value: (i % 11 != 5).then(|| {
                    let mut v = format!("p{partition}-seq{i}-").into_bytes();
                    v.extend((0..size).map(|j| (j % 251) as u8));
                    v
                }),
                headers,
                timestamp: Utc
                    .timestamp_millis_opt(1_700_000_000_000 + i as i64)
                    .unwrap(),
            }
        })
        .collect()
}

/// [`test_records`] stamped with the current time: records a broker keeps its
/// producer state for (Kafka forgets an idempotent producer `producer.id.expiration.ms`
/// after the timestamp of its last batch, a day by default; `test_records` are from 2023).
pub fn recent_records(partition: i32, start: usize, n: usize) -> Vec<Record> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let now = Utc.timestamp_millis_opt(now_ms).unwrap();
    test_records(partition, start, n)
        .into_iter()
        .map(|r| Record {
            timestamp: now,
            ..r
        })
        .collect()
}

/// Bounds a background producer that is never told to stop (a test gone wrong): at
/// least 40 s of producing, 20 ms between batches.
pub const MAX_BACKGROUND_BATCHES: usize = 2000;

/// Produces `batches` rounds of 100 records to every partition in the background, 20 ms
/// apart; `records(partition, first, n)` makes each round's records.
pub fn produce_in_background_with(
    p: &Pipeline,
    batches: usize,
    records: fn(i32, usize, usize) -> Vec<Record>,
) -> tokio::task::JoinHandle<()> {
    produce_in_background_until(p, batches, records, Arc::new(AtomicBool::new(true)))
}

/// As [`produce_in_background_with`], going on after `batches` batches until `stop` is
/// set (at most [`MAX_BACKGROUND_BATCHES`]): for a test whose steps must all happen
/// while records still arrive, however long they take.
pub fn produce_in_background_until(
    p: &Pipeline,
    batches: usize,
    records: fn(i32, usize, usize) -> Vec<Record>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (addr, topic, partitions) = (p.external.addr(), p.topic, p.partitions);
    tokio::spawn(async move {
        let mut clients = Vec::new();
        for partition in 0..partitions {
            clients.push(partition_client(&addr, topic, partition).await);
        }
        for b in 0..MAX_BACKGROUND_BATCHES.max(batches) {
            if b >= batches && stop.load(Ordering::SeqCst) {
                break;
            }
            for (partition, pc) in clients.iter().enumerate() {
                produce(pc, records(partition as i32, b * 100, 100)).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
}

/// Produces `records` in requests of at most 200 records and (but for a single record)
/// 900 KiB, within Kafka's default max.message.bytes.
pub async fn produce(pc: &PartitionClient, records: Vec<Record>) {
    let mut chunk: Vec<Record> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = record.approximate_size();
        if !chunk.is_empty() && (chunk.len() == 200 || bytes + size > 900 << 10) {
            pc.produce(std::mem::take(&mut chunk), Compression::NoCompression)
                .await
                .unwrap();
            bytes = 0;
        }
        bytes += size;
        chunk.push(record);
    }
    if !chunk.is_empty() {
        pc.produce(chunk, Compression::NoCompression).await.unwrap();
    }
}

/// As [`produce`], with each request bounded: rskafka has no request timeout, and a
/// produce sent just after the broker was paused and resumed once went unanswered for
/// good. A request without an answer within 15 s is sent again on a new client unless
/// the partition's end shows it was stored (nothing else writes to the partition while
/// this runs), at most six times.
pub async fn produce_bounded(addr: &str, topic: &str, partition: i32, records: Vec<Record>) {
    let mut chunks: Vec<Vec<Record>> = vec![Vec::new()];
    let mut bytes = 0;
    for record in records {
        let size = record.approximate_size();
        let last = chunks.last_mut().unwrap();
        if !last.is_empty() && (last.len() == 200 || bytes + size > 900 << 10) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        chunks.last_mut().unwrap().push(record);
    }
    let mut end = end_offset(addr, topic, partition).await;
    let mut pc = partition_client(addr, topic, partition).await;
    for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
        let n = chunk.len() as i64;
        let mut attempts = 0;
        loop {
            let sent = tokio::time::timeout(
                Duration::from_secs(15),
                pc.produce(chunk.clone(), Compression::NoCompression),
            )
            .await;
            let Err(_) = sent else {
                sent.unwrap().unwrap();
                break;
            };
            // The request may still be held by the broker: its connection goes, and the
            // end is read until two reads 2 s apart agree before deciding.
            drop(pc);
            let mut settled = end_offset(addr, topic, partition).await;
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let again = end_offset(addr, topic, partition).await;
                if again == settled {
                    break;
                }
                settled = again;
            }
            pc = partition_client(addr, topic, partition).await;
            if settled >= end + n {
                break;
            }
            attempts += 1;
            assert!(
                attempts < 6,
                "producing to {topic}/{partition}: no answer, six times"
            );
            eprintln!("producing to {topic}/{partition}: no answer within 15 s; sending again on a new connection");
        }
        end += n;
    }
}

/// Runs one of the kit's reads on a fresh rskafka client, again when it gets no answer
/// within 15 s (rskafka has no request timeout; a request once went unanswered after
/// the broker had been stopped and continued), at most six times.
async fn bounded<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    for _ in 0..6 {
        match tokio::time::timeout(Duration::from_secs(15), call()).await {
            Ok(value) => return value,
            Err(_) => eprintln!("{what}: no answer within 15 s; asking again on a new connection"),
        }
    }
    panic!("{what}: no answer in six tries");
}

/// Every record of a partition, read with plain rskafka (not the service's code).
pub async fn read_all(addr: &str, topic: &str, partition: i32) -> Vec<RecordAndOffset> {
    bounded(&format!("reading {topic}/{partition} at {addr}"), || {
        read_all_once(addr, topic, partition)
    })
    .await
}

async fn read_all_once(addr: &str, topic: &str, partition: i32) -> Vec<RecordAndOffset> {
    let pc = partition_client(addr, topic, partition).await;
    // From 0, not ListOffsets(earliest): tansu answers that with the batch stored first,
    // which skips a partition's first batch when two produces raced to store it (no
    // test removes records, so 0 is always the start).
    let mut offset = 0;
    let mut out = Vec::new();
    loop {
        let (records, hw) = pc.fetch_records(offset, 1..4_000_000, 50).await.unwrap();
        if let Some(last) = records.last() {
            offset = last.offset + 1;
        }
        out.extend(records);
        if offset >= hw {
            return out;
        }
    }
}

/// High watermark of a partition: ListOffsets (latest) on Kafka; on tansu, where
/// ListOffsets is not exact, from a fetch.
pub async fn end_offset(addr: &str, topic: &str, partition: i32) -> i64 {
    bounded(&format!("the end of {topic}/{partition} at {addr}"), || {
        end_offset_once(addr, topic, partition)
    })
    .await
}

async fn end_offset_once(addr: &str, topic: &str, partition: i32) -> i64 {
    let pc = partition_client(addr, topic, partition).await;
    if platform() == Platform::Kafka {
        return pc.get_offset(OffsetAt::Latest).await.unwrap();
    }
    let earliest = pc.get_offset(OffsetAt::Earliest).await.unwrap();
    pc.fetch_records(earliest, 1..1, 1).await.unwrap().1
}

pub async fn wait_for_end(addr: &str, topic: &str, partition: i32, end: i64, within: Duration) {
    if let Err(now) = reach_end(addr, topic, partition, end, within).await {
        panic!("{topic}/{partition} reached offset {now}, not {end}, within {within:?}");
    }
}

/// Waits until the partition's end is at least `end`; `Err(current end)` past `within`.
pub async fn reach_end(
    addr: &str,
    topic: &str,
    partition: i32,
    end: i64,
    within: Duration,
) -> Result<(), i64> {
    let deadline = Instant::now() + within;
    loop {
        let now = end_offset(addr, topic, partition).await;
        if now >= end {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Checks that `internal` holds each record of `source` exactly once, in order, intact.
pub fn assert_exactly_once(
    source: &[RecordAndOffset],
    internal: &[RecordAndOffset],
    topic: &str,
    partition: i32,
) {
    let offsets: Vec<i64> = internal
        .iter()
        .map(|r| {
            let raw = r
                .record
                .headers
                .get(SOURCE_OFFSET_HEADER)
                .expect("source offset header");
            String::from_utf8(raw.clone()).unwrap().parse().unwrap()
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let duplicated = offsets.iter().filter(|o| !seen.insert(**o)).count();
    let source_offsets: std::collections::HashSet<i64> = source.iter().map(|r| r.offset).collect();
    let lost = source_offsets.iter().filter(|o| !seen.contains(o)).count();
    let reordered = offsets.windows(2).filter(|w| w[0] >= w[1]).count();
    assert_eq!(
        (lost, duplicated, reordered),
        (0, 0, 0),
        "{topic}/{partition}: lost / duplicated / reordered (source {} records, internal {})",
        source.len(),
        internal.len()
    );
    for (s, i) in source.iter().zip(internal) {
        assert_eq!(
            s.record.key, i.record.key,
            "key of source offset {}",
            s.offset
        );
        assert_eq!(
            s.record.value, i.record.value,
            "value of source offset {}",
            s.offset
        );
        assert_eq!(
            s.record.timestamp, i.record.timestamp,
            "timestamp of source offset {}",
            s.offset
        );
        let mut expected = s.record.headers.clone();
        expected.insert(SOURCE_TOPIC_HEADER.into(), topic.as_bytes().to_vec());
        expected.insert(
            SOURCE_PARTITION_HEADER.into(),
            partition.to_string().into_bytes(),
        );
        expected.insert(
            SOURCE_OFFSET_HEADER.into(),
            s.offset.to_string().into_bytes(),
        );
        assert_eq!(
            expected, i.record.headers,
            "headers of source offset {}",
            s.offset
        );
    }
}

/// The service binary running as a child process, logging to a file.
pub struct Service {
    child: Option<Child>,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub config: PathBuf,
    runs: usize,
}

pub struct ServiceConfig<'a> {
    pub external: &'a str,
    pub internal: &'a str,
    pub topics: &'a str,
    pub extra: &'a [(&'a str, &'a str)],
}

impl Service {
    /// Writes a config into `dir` (the data dir lives there too).
    pub fn configure(dir: &Path, cfg: ServiceConfig<'_>) -> Self {
        let mut text = format!(
            "data.dir = \"{}\"\ninternal.bootstrap.servers = \"{}\"\nprogress.interval.ms = 200\nfetch.max.wait.ms = 100\n",
            dir.join("data").display(),
            cfg.internal
        );
        if !cfg.extra.iter().any(|(k, _)| *k == "request.timeout.ms") {
            text.push_str("request.timeout.ms = 3000\n");
        }
        // Tests run side by side: each API takes a free port (`Service::api`).
        if !cfg.extra.iter().any(|(k, _)| *k == "api.listen") {
            text.push_str("api.listen = \"127.0.0.1:0\"\n");
        }
        let mut connector = format!(
            "[connector]\nname = \"test\"\nkafka.bootstrap.servers = \"{}\"\ntopic.prefix = \"int\"\ntopic.include.list = \"{}\"\n",
            cfg.external, cfg.topics
        );
        // The test records carry binary values: copied as bytes unless a test chooses
        // a format.
        if !cfg.extra.iter().any(|(k, _)| *k == "connector.format") {
            connector.push_str("format = \"bytes\"\n");
        }
        for (k, v) in cfg.extra {
            match k.strip_prefix("connector.") {
                Some(k) => connector.push_str(&format!("\"{k}\" = \"{v}\"\n")),
                None => text.push_str(&format!("\"{k}\" = \"{v}\"\n")),
            }
        }
        text.push_str(&connector);
        let config = dir.join("kafka-direct.toml");
        std::fs::write(&config, text).unwrap();
        Self {
            child: None,
            dir: dir.to_owned(),
            log: dir.join("service.log"),
            config,
            runs: 0,
        }
    }

    /// `kafka-direct COMMAND --config <this service's config>` (`check`, `validate`):
    /// (exit success, output).
    pub fn cli(&self, command: &str) -> (bool, String) {
        cli(&[command, "--config", self.config.to_str().unwrap()])
    }

    /// As [`Service::cli`], with `clear` removed from the environment, then `set` added.
    pub fn cli_in_env(
        &self,
        command: &str,
        set: &[(&str, &str)],
        clear: &[&str],
    ) -> (bool, String) {
        cli_in_env(
            &[command, "--config", self.config.to_str().unwrap()],
            set,
            clear,
        )
    }

    /// `check` fails, its output holding every one of `needles`; then `run` exits with a
    /// failure (within 60 s), its log holding `logged`. Returns `check`'s output and
    /// the log, for more checks.
    pub fn assert_refused_at_start(&mut self, needles: &[&str], logged: &str) -> (String, String) {
        let (ok, text) = self.cli("check");
        assert!(!ok, "{text}");
        for needle in needles {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        self.start();
        assert!(!self.wait_exit(Duration::from_secs(60)).success());
        let log = self.log_text();
        assert!(log.contains(logged), "{logged}: {log}");
        (text, log)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "service already running");
        watchdog();
        self.runs += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env(
                "RUST_LOG",
                std::env::var("KAFKA_DIRECT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("service running").id()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("service running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (bounded).
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        signal(self.pid(), "TERM");
        self.wait_exit(within)
    }

    /// Waits for the service to exit (bounded); kills it and fails the test past `within`.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("service running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "service still running after {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            f.read_to_string(&mut s).unwrap();
        }
        s
    }

    /// The last `progress` line's figures: (fetched, forwarded, wal_bytes).
    pub fn last_progress(&self) -> Option<(u64, u64, u64)> {
        Some((
            self.progress_field("fetched")?,
            self.progress_field("forwarded")?,
            self.progress_field("wal_bytes")?,
        ))
    }

    /// One figure of the last `progress` line.
    pub fn progress_field(&self, name: &str) -> Option<u64> {
        progress_field(&self.log_text(), name)
    }

    /// Polls the log until `pred` holds on its text.
    pub async fn wait_log(&self, what: &str, within: Duration, pred: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + within;
        while !pred(&self.log_text()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// `http://host:port` of the API of the current run, from its "API listening" line.
    /// The service's `/metrics` text.
    pub async fn metrics(&self) -> String {
        let api = kafka_direct::cli::client::ApiClient::new(&self.api().await, None);
        tokio::task::spawn_blocking(move || api.call("GET", "/metrics").expect("the API answers").1)
            .await
            .unwrap()
    }

    pub async fn api(&self) -> String {
        let marker = "API listening address=";
        let runs = self.runs;
        self.wait_log("the API to listen", Duration::from_secs(30), |log| {
            log.matches(marker).count() >= runs
        })
        .await;
        let log = self.log_text();
        let at = log.rfind(marker).unwrap() + marker.len();
        let address: String = log[at..]
            .chars()
            .take_while(|c| !c.is_whitespace())
            .collect();
        format!("http://{address}")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            // A failing test's temporary directory goes with it: keep the service's
            // log where the failure can be studied, and show its end.
            let text = self.log_text();
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
                "failed-service-{}-{}.log",
                std::process::id(),
                self.dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("service")
            ));
            let _ = std::fs::write(&kept, &text);
            let tail: Vec<&str> = text.lines().rev().take(150).collect();
            eprintln!(
                "service log kept at {}; its last {} lines:",
                kept.display(),
                tail.len()
            );
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
}

/// One figure of the last `progress` line of a service log.
pub fn progress_field(log: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(" progress "))?;
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// The sum of every series of counter `name` (without `kafka_direct_` and `_total`) in
/// a `/metrics` text.
pub fn counter_sum(metrics: &str, name: &str) -> u64 {
    counter_sum_where(metrics, name, "")
}

/// As [`counter_sum`], over the series whose labels contain `label` (`kind="fetch"`).
pub fn counter_sum_where(metrics: &str, name: &str, label: &str) -> u64 {
    let series = format!("kafka_direct_{name}_total{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&series) && l.contains(label))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Produces `lines` (one record each) with kcat, adding `args` (codec, headers, key
/// delimiter) to `kcat -P`.
pub fn kcat_produce(addr: &str, topic: &str, partition: i32, args: &[&str], lines: &str) {
    use std::io::Write;
    let mut kcat = std::process::Command::new(kcat())
        .args(["-P", "-b", addr, "-t", topic, "-p", &partition.to_string()])
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kcat.stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = kcat.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "kcat -P {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs tests/support/transactions.py: librdkafka's transactional producer writes
/// `steps` (`commit:N`, `abort:N`, `plain:N`) to one partition.
pub fn produce_transactions(addr: &str, topic: &str, partition: i32, steps: &[&str]) {
    let root = repo_root();
    let status = std::process::Command::new("python3")
        .arg(root.join("tests/support/transactions.py"))
        .args([addr, topic, &partition.to_string()])
        .args(steps)
        .env("PYTHONPATH", root.join("target/kcat/python"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "transactions.py {steps:?} failed");
}

/// A transaction left open by tests/support/transactions.py (`hold:N`): its records are
/// written, and it ends when the test says so.
pub struct HeldTransaction {
    child: Child,
}

impl HeldTransaction {
    /// Opens a transaction of `n` records (values `0-hold-<i>`) on one partition and
    /// returns once they are written.
    pub fn open(addr: &str, topic: &str, partition: i32, n: usize) -> Self {
        use std::io::BufRead;
        let root = repo_root();
        let mut child = Command::new("python3")
            .arg(root.join("tests/support/transactions.py"))
            .args([addr, topic, &partition.to_string(), &format!("hold:{n}")])
            .env("PYTHONPATH", root.join("target/kcat/python"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "open",
            "transactions.py hold:{n} did not open its transaction"
        );
        Self { child }
    }

    pub fn commit(mut self) {
        use std::io::Write;
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"commit\n")
            .unwrap();
        assert!(
            self.child.wait().unwrap().success(),
            "committing the held transaction failed"
        );
    }

    pub fn abort(mut self) {
        drop(self.child.stdin.take());
        assert!(
            self.child.wait().unwrap().success(),
            "aborting the held transaction failed"
        );
    }
}

/// Values of a partition read by kcat (an independent client), in offset order.
pub fn kcat_read(addr: &str, topic: &str, partition: i32, format: &str) -> Vec<String> {
    let out = std::process::Command::new(kcat())
        .args(["-C", "-b", addr, "-t", topic, "-p", &partition.to_string()])
        .args(["-e", "-q", "-f", &format!("{format}\n")])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "kcat -C failed");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Two brokers, a source topic, and a configured (not yet started) service.
pub struct Pipeline {
    pub external: Arc<Broker>,
    pub internal: Arc<Broker>,
    pub service: Service,
    pub topic: &'static str,
    pub partitions: i32,
    _dir: tempfile::TempDir,
}

impl Pipeline {
    /// On the binary's shared brokers ([`shared_brokers`]): `topic` must be a name no
    /// other test of the binary uses.
    pub async fn new(topic: &'static str, partitions: i32, extra: &[(&str, &str)]) -> Self {
        let (external, internal) = shared_brokers();
        Self::on(topic, partitions, extra, external, internal).await
    }

    /// As [`Pipeline::new`], on brokers of its own: for a test that pauses, kills or
    /// restarts one.
    pub async fn isolated(topic: &'static str, partitions: i32, extra: &[(&str, &str)]) -> Self {
        Self::with_brokers(topic, partitions, extra, Broker::start(), Broker::start()).await
    }

    /// As [`Pipeline::new`], with a given internal broker (for example one behind a proxy).
    pub async fn with_internal(
        topic: &'static str,
        partitions: i32,
        extra: &[(&str, &str)],
        internal: Broker,
    ) -> Self {
        let (external, _) = shared_brokers();
        Self::on(topic, partitions, extra, external, Arc::new(internal)).await
    }

    /// As [`Pipeline::new`], with given brokers (for example durable ones). The service
    /// bootstraps from the addresses they advertise, so a proxy in front of one carries
    /// all of the service's traffic to it.
    pub async fn with_brokers(
        topic: &'static str,
        partitions: i32,
        extra: &[(&str, &str)],
        external: Broker,
        internal: Broker,
    ) -> Self {
        let addrs = (external.advertised_addr(), internal.advertised_addr());
        Self::on_via(
            topic,
            partitions,
            extra,
            Arc::new(external),
            Arc::new(internal),
            addrs,
        )
        .await
    }

    async fn on(
        topic: &'static str,
        partitions: i32,
        extra: &[(&str, &str)],
        external: Arc<Broker>,
        internal: Arc<Broker>,
    ) -> Self {
        let (external_addr, internal_addr) = (external.addr(), internal.addr());
        Self::on_via(
            topic,
            partitions,
            extra,
            external,
            internal,
            (external_addr, internal_addr),
        )
        .await
    }

    /// As [`Pipeline::on`], the service bootstrapping from `service_addrs` (external,
    /// internal).
    async fn on_via(
        topic: &'static str,
        partitions: i32,
        extra: &[(&str, &str)],
        external: Arc<Broker>,
        internal: Arc<Broker>,
        service_addrs: (String, String),
    ) -> Self {
        create_topic(&external.addr(), topic, partitions).await;
        let dir = tempfile::tempdir().unwrap();
        let service = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &service_addrs.0,
                internal: &service_addrs.1,
                topics: topic,
                extra,
            },
        );
        Self {
            external,
            internal,
            service,
            topic,
            partitions,
            _dir: dir,
        }
    }

    pub fn internal_topic(&self) -> String {
        format!("int.{}", self.topic)
    }

    /// Produces `n` test records to every partition, numbered from `start`.
    pub async fn produce_each(&self, start: usize, n: usize) {
        for p in 0..self.partitions {
            produce_bounded(
                &self.external.addr(),
                self.topic,
                p,
                test_records(p, start, n),
            )
            .await;
        }
    }

    /// Waits until every internal partition caught up with its source partition, then
    /// checks each holds every source record from `skip` on exactly once, intact.
    pub async fn assert_replicated(&self, skip: usize, within: Duration) {
        for p in 0..self.partitions {
            let end = end_offset(&self.external.addr(), self.topic, p).await;
            let target = end - skip as i64;
            let reached = reach_end(
                &self.internal.addr(),
                &self.internal_topic(),
                p,
                target,
                within,
            )
            .await;
            if let Err(now) = reached {
                panic!(
                    "{}/{p} reached offset {now}, not {target}, within {within:?}; service log:\n{}",
                    self.internal_topic(),
                    self.service.log_text()
                );
            }
            let source = read_all(&self.external.addr(), self.topic, p).await;
            let copied = read_all(&self.internal.addr(), &self.internal_topic(), p).await;
            assert_exactly_once(&source[skip..], &copied, self.topic, p);
        }
    }
}

/// The source offset header of every record of an internal partition, in order.
pub async fn copied_source_offsets(addr: &str, topic: &str, partition: i32) -> Vec<i64> {
    read_all(addr, topic, partition)
        .await
        .iter()
        .map(|r| {
            let v = r
                .record
                .headers
                .get(SOURCE_OFFSET_HEADER)
                .expect("source offset header");
            std::str::from_utf8(v).unwrap().parse().unwrap()
        })
        .collect()
}

/// The status of connector `test` from the service's API.
pub async fn connector_status(api: &kafka_direct::cli::client::ApiClient) -> serde_json::Value {
    let api = api.clone();
    tokio::task::spawn_blocking(move || api.get_json("/connectors/test/status").unwrap())
        .await
        .unwrap()
}

/// Polls the status of connector `test` until `pred` holds (90 s at most).
pub async fn wait_status(
    api: &kafka_direct::cli::client::ApiClient,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = connector_status(api).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `kafka-direct wal stats --json` of a stopped service: (topic, partition) → fetched_next.
pub fn wal_fetched_next(data_dir: &Path) -> BTreeMap<(String, i32), Option<i64>> {
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["wal", "stats", "--json", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wal stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    stats
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                (
                    s["topic"].as_str().unwrap().to_owned(),
                    s["partition"].as_i64().unwrap() as i32,
                ),
                s["fetched_next"].as_i64(),
            )
        })
        .collect()
}

/// A group's committed offsets of `topic` as `kafka-consumer-groups --describe` prints
/// them (partition → CURRENT-OFFSET, `None` for "-"); empty when the group does not
/// exist.
pub fn described(addr: &str, group: &str, topic: &str) -> BTreeMap<i32, Option<i64>> {
    let out = Command::new(repo_root().join("scripts/kafka-tool"))
        .args([
            "kafka-consumer-groups",
            "--bootstrap-server",
            addr,
            "--describe",
            "--group",
            group,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID HOST CLIENT-ID
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|cols| cols.len() >= 6 && cols[0] == group && cols[1] == topic)
        .map(|cols| (cols[2].parse().unwrap(), cols[3].parse().ok()))
        .collect()
}

/// `method path` on a blocking thread: (status, body).
pub async fn api_call(
    api: &kafka_direct::cli::client::ApiClient,
    method: &'static str,
    path: &str,
) -> (u16, String) {
    let api = api.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || api.call(method, &path).expect("the API answers"))
        .await
        .unwrap()
}

pub async fn api_get(api: &kafka_direct::cli::client::ApiClient, path: &str) -> serde_json::Value {
    let (status, body) = api_call(api, "GET", path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// `method path` with a JSON body: (status, body).
pub async fn api_send(
    api: &kafka_direct::cli::client::ApiClient,
    method: &'static str,
    path: &str,
    body: serde_json::Value,
) -> (u16, String) {
    let api = api.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        api.send(method, &path, Some(&body))
            .expect("the API answers")
    })
    .await
    .unwrap()
}

/// The established TCP connections process `pid` holds to each of `ports` (its socket
/// fds matched against the kernel's TCP tables by inode).
pub fn connections_to(pid: u32, ports: &[Vec<u16>; 2]) -> [usize; 2] {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut counts = [0; 2];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            let remote_port = f[2]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            for (i, ports) in ports.iter().enumerate() {
                if remote_port.is_some_and(|p| ports.contains(&p)) {
                    counts[i] += 1;
                }
            }
        }
    }
    counts
}
