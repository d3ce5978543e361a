//! End-to-end throughput benchmark against real brokers (docs/benchmarks.md).
//!
//! `scripts/bench [OPTIONS]` (or `cargo bench --bench e2e -- [OPTIONS]`) starts two local
//! brokers, preloads a source topic, and measures in the same run: `kcat -P` alone, the
//! ceiling (Kafka's consumer and producer perf tests, on Kafka), `kcat -C` alone, a
//! `kcat -C | kcat -P` pipe (one pipe, and one per partition), MirrorMaker 2 at least
//! once and exactly once (on Kafka), and kafka-direct with `wal.sync=fsync` and
//! `wal.sync=flush`; then the end-to-end latency at
//! a fixed rate, read by an independent consumer (kcat), and kafka-direct's own share of
//! it (a second consumer reads the source topic meanwhile; each record's arrival there is
//! subtracted from its arrival in the internal topic). `--spool N` runs the spool test
//! instead: the internal broker stopped while N records are fetched into the WAL.
//!
//! Every figure comes from this run: wall time, records counted at the destination broker,
//! CPU time and peak RSS from the kernel (`wait4`), latency from kcat's timestamps.
#![allow(clippy::disallowed_methods)] // a benchmark driver: blocking waits are the point

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use common::{connections_to, create_topic, end_offset, kcat, progress_field, Broker, DelayProxy};

/// MirrorMaker 2's `tasks.max`: the partitions, up to this.
const MM2_MAX_TASKS: i32 = 64;
/// The most partitions the pipe-per-partition row runs for.
const MAX_PIPES: i32 = 64;

#[derive(Parser, Debug, Serialize, Clone)]
#[command(about = "kafka-direct end-to-end benchmark (docs/benchmarks.md)")]
struct Args {
    /// Records preloaded into the source topic.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Partitions of the source topic.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Value size in bytes (keys are 9 bytes more).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Seconds of the latency phase (0 skips it).
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Records/s of the latency phase; default: half of kafka-direct's (fsync) measured rate.
    #[arg(long)]
    latency_rate: Option<u64>,
    /// Runs the spool test with this many records instead of the throughput comparison.
    #[arg(long)]
    spool: Option<u64>,
    /// Runs the restart test instead of the throughput comparison: the preloaded topic
    /// copied, then the service stopped (SIGTERM, then kill -9) and started again, timed
    /// until every partition's start-up tail check is done.
    #[arg(long)]
    restart: bool,
    /// Where the results go as JSON (default: target/bench/e2e-<mode>.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Extra service configuration line for every kafka-direct run, `key=value`
    /// (repeatable), e.g. `--set fetch.max.wait.ms=100`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Keeps the work directory (service configs and logs) and prints where it is.
    #[arg(long)]
    keep: bool,
    /// One more kafka-direct run (wal.sync=fsync) with this setting too, `key=value`
    /// (repeatable, all in that one run), e.g. `--compare internal.enable.idempotence=false`
    /// to measure the produce path without the idempotent producer's pipelining.
    #[arg(long = "compare", value_name = "KEY=VALUE")]
    compare: Vec<String>,
    /// Puts the internal broker behind a proxy that delays each direction by this many
    /// milliseconds (a remote internal cluster: the round trip is twice it). Every
    /// replicator's produce traffic goes through it.
    #[arg(long, default_value_t = 0)]
    internal_delay_ms: u64,
    /// Leaves out the rows that run on the JVM (Kafka's perf tools, MirrorMaker 2);
    /// they are left out on tansu anyway.
    #[arg(long)]
    no_jvm_peers: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One measured replicator (or one-sided kcat run).
#[derive(Serialize, Debug, Default)]
struct Row {
    name: String,
    records: u64,
    bytes: u64,
    seconds: f64,
    records_per_sec: f64,
    mb_per_sec: f64,
    /// Seconds until the first record reached the destination (replicators only).
    first_record_seconds: Option<f64>,
    /// Records/s once running: between 10 % and 90 % of the records arriving at the
    /// destination (replicators), or the tool's own figure, which leaves out its start
    /// (Kafka's perf tools). The ratios are of this figure, so that a JVM's start-up does not
    /// count against it.
    steady_records_per_sec: f64,
    /// The rate a Kafka perf tool reported itself.
    tool_records_per_sec: Option<f64>,
    ratio_to_kcat_pipe: Option<f64>,
    ratio_to_ceiling: Option<f64>,
    ratio_to_mm2_eos: Option<f64>,
    cpu_seconds: f64,
    /// Process CPU (user + system, the JVM's included, start-up included) per GB of
    /// key and value bytes moved.
    cpu_seconds_per_gb: f64,
    peak_rss_mb: f64,
    /// The most TCP connections held at once to the source broker and to the internal
    /// one (replicators that run as one process: MirrorMaker 2 and kafka-direct).
    connections: Option<[usize; 2]>,
}

#[derive(Serialize, Debug)]
struct Latency {
    name: String,
    rate: u64,
    records: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Latency {
    /// The percentiles of `delays_ms` (one per record; at least one).
    fn of(name: &str, rate: u64, mut delays_ms: Vec<f64>) -> Self {
        delays_ms.sort_by(f64::total_cmp);
        let pct = |q: f64| delays_ms[((delays_ms.len() - 1) as f64 * q).round() as usize];
        Self {
            name: name.to_owned(),
            rate,
            records: delays_ms.len(),
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: *delays_ms.last().expect("records"),
        }
    }
}

/// CPU time and peak RSS of a reaped child, from the kernel.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    cpu_seconds: f64,
    peak_rss_mb: f64,
}

impl std::ops::Add for Usage {
    type Output = Usage;
    fn add(self, o: Usage) -> Usage {
        Usage {
            cpu_seconds: self.cpu_seconds + o.cpu_seconds,
            peak_rss_mb: self.peak_rss_mb + o.peak_rss_mb,
        }
    }
}

/// Waits for `child` with `wait4`, which also returns its resource usage.
fn reap(child: Child, what: &str) -> Result<Usage> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI call with valid out-pointers; `rusage` is plain old data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(
        got == pid,
        "wait4 on {what}: {}",
        std::io::Error::last_os_error()
    );
    std::mem::forget(child); // reaped above; dropping it would not, but be explicit
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
            || libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM
            // a JVM stopped by SIGTERM exits with 128 + 15
            || libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 128 + libc::SIGTERM,
        "{what} failed (wait status {status:#x})"
    );
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Usage {
        cpu_seconds: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_rss_mb: usage.ru_maxrss as f64 / 1024.0, // kB on Linux
    })
}

/// Current resident set of a running process, in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Samples a running process's connections to the two brokers every 200 ms, keeping
/// the most seen at once; `stop` returns them.
struct ConnectionSampler {
    done: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<[usize; 2]>,
}

impl ConnectionSampler {
    fn start(pid: u32, ports: [Vec<u16>; 2]) -> Self {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let thread = std::thread::spawn(move || {
            let mut most = [0; 2];
            while !stop.load(Ordering::Relaxed) {
                let now = connections_to(pid, &ports);
                most = [most[0].max(now[0]), most[1].max(now[1])];
                std::thread::sleep(Duration::from_millis(200));
            }
            most
        });
        Self { done, thread }
    }

    fn stop(self) -> [usize; 2] {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("sampler thread")
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_message(what.to_owned());
    bar.set_style(
        ProgressStyle::with_template(
            "  {msg:<34} [{bar:30}] {pos:>9}/{len:9} {per_sec:>14} {elapsed:>4}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// The generated records: 9-byte key, `size`-byte value, tab-separated lines for kcat.
fn write_records(path: &Path, n: u64, size: usize) -> Result<u64> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = fastrand::Rng::with_seed(7);
    let mut value = vec![0u8; size];
    for i in 0..n {
        for b in value.iter_mut() {
            *b = alphabet[rng.usize(..alphabet.len())];
        }
        write!(out, "k{:08}\t", i % 100_000_000)?;
        out.write_all(&value)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(n * (9 + size as u64))
}

/// kcat arguments that read the preloaded source topic once, as `key<TAB>value` lines.
const CONSUME_SOURCE: [&str; 8] = [
    "-C",
    "-t",
    "bench",
    "-o",
    "beginning",
    "-e",
    "-f",
    "%k\t%s\n",
];

fn kcat_cmd(broker: &str) -> Command {
    let mut cmd = Command::new(kcat());
    // librdkafka's configuration warnings would break the progress bars: kcat's stderr
    // goes to a log file (failures are caught by exit status and by counting records).
    let log = common::repo_root().join("target/bench/kcat-stderr.log");
    let _ = std::fs::create_dir_all(log.parent().expect("has a parent"));
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log);
    cmd.args(["-b", broker, "-q"])
        .stderr(stderr.map(Stdio::from).unwrap_or_else(|_| Stdio::inherit()));
    cmd
}

/// Counts the lines a child writes to stdout, on a thread.
fn count_lines(child: &mut Child, counter: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    let mut out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
            counter.fetch_add(lines as u64, Ordering::Relaxed);
        }
    })
}

/// Sum of the high watermarks of `topic`'s partitions.
async fn total_end(addr: &str, topic: &str, partitions: i32) -> i64 {
    let mut total = 0;
    for p in 0..partitions {
        total += end_offset(addr, topic, p).await;
    }
    total
}

/// How the records arrived at a replicator's destination.
#[derive(Debug, Clone, Copy)]
struct Course {
    /// Seconds from the start until the first record arrived.
    first: f64,
    /// Records/s between 10 % and 90 % of them arriving: the rate once running, without
    /// the start (a JVM's, a connector's) or the tail.
    steady: f64,
}

/// Follows a destination's record count as it is polled, into a [`Course`].
struct CourseTracker {
    records: u64,
    started: Instant,
    /// (seconds since the start, records there) at each poll.
    polls: Vec<(f64, u64)>,
}

impl CourseTracker {
    /// From now on (none arrived yet); times are counted from `started`.
    fn new(records: u64, started: Instant) -> Self {
        Self {
            records,
            started,
            polls: vec![(started.elapsed().as_secs_f64(), 0)],
        }
    }

    fn saw(&mut self, count: u64) {
        self.polls
            .push((self.started.elapsed().as_secs_f64(), count));
    }

    /// Whether the count has not changed for `limit` (or since the tracker began).
    fn stalled(&self, limit: Duration) -> bool {
        let (now, count) = *self.polls.last().expect("seeded");
        let since = self
            .polls
            .iter()
            .rev()
            .take_while(|&&(_, c)| c == count)
            .last()
            .map_or(now, |&(t, _)| t);
        now - since > limit.as_secs_f64()
    }

    /// When the count reached `x`, interpolated between the two polls around it.
    fn crossed(&self, x: f64) -> f64 {
        let i = self
            .polls
            .iter()
            .position(|&(_, c)| c as f64 >= x)
            .unwrap_or(self.polls.len() - 1);
        let (t1, c1) = self.polls[i];
        let Some(&(t0, c0)) = i.checked_sub(1).map(|i| &self.polls[i]) else {
            return t1;
        };
        t0 + (t1 - t0) * (x - c0 as f64) / (c1 as f64 - c0 as f64).max(1.0)
    }

    fn course(&self) -> Course {
        let first = self
            .polls
            .iter()
            .find(|&&(_, c)| c > 0)
            .map_or(0.0, |&(t, _)| t);
        let n = self.records as f64;
        let span = self.crossed(0.9 * n) - self.crossed(0.1 * n);
        Course {
            first,
            steady: 0.8 * n / span.max(1e-3),
        }
    }
}

struct Bench {
    args: Args,
    external: Broker,
    internal: Broker,
    /// The internal broker's delaying proxy (`--internal-delay-ms`).
    delay: Option<DelayProxy>,
    work: tempfile::TempDir,
    records_file: PathBuf,
    payload_bytes: u64,
}

impl Bench {
    /// Two brokers, the source topic, and the file of `args.records` records to preload.
    async fn prepare(args: Args) -> Result<Self> {
        let external = Broker::start();
        let (internal, delay) = if args.internal_delay_ms > 0 {
            let (port, listener) = DelayProxy::bind().await;
            let internal = Broker::start_advertising(Some(port));
            let one_way = Duration::from_millis(args.internal_delay_ms);
            let proxy = DelayProxy::start(listener, internal.port, one_way);
            (internal, Some(proxy))
        } else {
            (Broker::start(), None)
        };
        create_topic(&external.addr(), "bench", args.partitions).await;
        let work = work_dir(&args)?;
        let records_file = work.path().join("records.txt");
        let payload_bytes = write_records(&records_file, args.records, args.size)?;
        Ok(Self {
            args,
            external,
            internal,
            delay,
            work,
            records_file,
            payload_bytes,
        })
    }

    fn row(&self, name: &str, seconds: f64, usage: Usage, course: Option<Course>) -> Row {
        let records_per_sec = self.args.records as f64 / seconds;
        Row {
            name: name.to_owned(),
            records: self.args.records,
            bytes: self.payload_bytes,
            seconds,
            records_per_sec,
            mb_per_sec: self.payload_bytes as f64 / seconds / 1e6,
            first_record_seconds: course.map(|c| c.first),
            steady_records_per_sec: course.map_or(records_per_sec, |c| c.steady),
            tool_records_per_sec: None,
            ratio_to_kcat_pipe: None,
            ratio_to_ceiling: None,
            ratio_to_mm2_eos: None,
            cpu_seconds: usage.cpu_seconds,
            cpu_seconds_per_gb: usage.cpu_seconds / (self.payload_bytes as f64 / 1e9),
            peak_rss_mb: usage.peak_rss_mb,
            connections: None,
        }
    }

    /// The ports a client's connections to the source and to the internal cluster go to
    /// (the internal broker's, and its delaying proxy's).
    fn broker_ports(&self) -> [Vec<u16>; 2] {
        let mut internal = vec![self.internal.port];
        internal.extend(self.delay.as_ref().map(|proxy| proxy.port));
        [vec![self.external.port], internal]
    }

    /// One of Kafka's own tools (scripts/kafka-tool), its output to `log`.
    fn kafka_tool(&self, tool: &str, log: &Path) -> Result<Command> {
        let mut cmd = Command::new(common::repo_root().join("scripts/kafka-tool"));
        let out = std::fs::File::create(log)?;
        cmd.arg(tool)
            .stdout(out.try_clone()?)
            .stderr(out)
            // Kafka's own scripts' JVM options and heaps: 2 GB for MirrorMaker 2 (its
            // connect-mirror-maker.sh), 1 GB for the perf tests.
            .env("KAFKA_DIRECT_TOOL_PERFORMANCE", "1")
            .env(
                "KAFKA_DIRECT_TOOL_HEAP",
                if tool == "connect-mirror-maker" {
                    "2g"
                } else {
                    "1g"
                },
            );
        Ok(cmd)
    }

    /// The consuming half of the ceiling: `kafka-consumer-perf-test` reads the source
    /// topic (the Java consumer's defaults: 50 MB fetches, 1 MB per partition).
    fn ceiling_consume(&self) -> Result<Row> {
        let log = self.work.path().join("consumer-perf-test.log");
        let name = "ceiling: kafka-consumer-perf-test";
        let started = Instant::now();
        let child = self
            .kafka_tool("kafka-consumer-perf-test", &log)?
            .args(["--bootstrap-server", &self.external.addr()])
            .args(["--topic", "bench", "--group", "bench-ceiling"])
            .args(["--messages", &self.args.records.to_string()])
            .args(["--timeout", "60000"])
            .spawn()?;
        let spinner = bar(self.args.records, name);
        spinner.enable_steady_tick(Duration::from_millis(200));
        let usage = reap(child, name).with_context(|| log_tail(&log))?;
        let seconds = started.elapsed().as_secs_f64();
        spinner.finish_and_clear();
        // start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg,
        // nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
        let text = std::fs::read_to_string(&log)?;
        let fields: Vec<&str> = text
            .lines()
            .rev()
            .find(|l| l.split(',').count() >= 10)
            .with_context(|| format!("no result line: {}", log_tail(&log)))?
            .split(',')
            .map(str::trim)
            .collect();
        let consumed: u64 = fields[4].parse().context("data.consumed.in.nMsg")?;
        ensure!(
            consumed == self.args.records,
            "{name} read {consumed} records, not {}",
            self.args.records
        );
        let mut row = self.row(name, seconds, usage, None);
        row.steady_records_per_sec = fields[9].parse().context("fetch.nMsg.sec")?;
        row.tool_records_per_sec = Some(row.steady_records_per_sec);
        Ok(row)
    }

    /// The producing half of the ceiling: `kafka-producer-perf-test` writes as many
    /// records of the same size to a new internal topic, acks=all and idempotent (as
    /// kafka-direct produces), 256 KiB batches, linger 5 ms, no compression.
    async fn ceiling_produce(&self) -> Result<Row> {
        let topic = "ceiling.bench";
        create_topic(&self.internal.addr(), topic, self.args.partitions).await;
        let log = self.work.path().join("producer-perf-test.log");
        let name = "ceiling: kafka-producer-perf-test";
        let started = Instant::now();
        let child = self
            .kafka_tool("kafka-producer-perf-test", &log)?
            .args(["--topic", topic, "--throughput", "-1"])
            .args(["--num-records", &self.args.records.to_string()])
            .args(["--record-size", &(self.args.size + 9).to_string()])
            .arg("--producer-props")
            .arg(format!("bootstrap.servers={}", self.internal.addr()))
            .args(["acks=all", "enable.idempotence=true", "linger.ms=5"])
            .args(["batch.size=262144", "compression.type=none"])
            .spawn()?;
        let progress = bar(self.args.records, name);
        let watch = self.watch_destination(topic, &progress, started).await;
        let usage = tokio::task::spawn_blocking(move || reap(child, "kafka-producer-perf-test"))
            .await?
            .with_context(|| log_tail(&log))?;
        let seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let course = watch.with_context(|| log_tail(&log))?;
        // "N records sent, R records/sec (M MB/sec), ..."
        let text = std::fs::read_to_string(&log)?;
        let rate = text
            .lines()
            .rev()
            .find_map(|l| {
                let (sent, rest) = l.split_once(" records sent, ")?;
                sent.trim().parse::<u64>().ok()?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .with_context(|| format!("no result line: {}", log_tail(&log)))?;
        // The steady rate as a replicator's is timed (the tool's own figure covers its
        // ramp and its close too); the tool's is kept beside it.
        let mut row = self.row(name, seconds, usage, None);
        row.steady_records_per_sec = course.steady;
        row.tool_records_per_sec = Some(rate);
        Ok(row)
    }

    /// MirrorMaker 2 in dedicated mode (`connect-mirror-maker`, one node) copying the
    /// source topic into `<alias>.bench`, tuned as its users tune it for throughput
    /// (docs/benchmarks.md lists the settings); exactly once with `eos`
    /// (`exactly.once.source.support=enabled`, KIP-618). The destination topic is
    /// created beforehand with the source's partitions. Exactly once, the destination
    /// holds transaction markers too: the run ends when an independent read_committed
    /// consumer (kcat) has read every record, and a second read counts them exactly.
    async fn mirror_maker(&self, eos: bool) -> Result<Row> {
        let alias = if eos { "eos" } else { "alo" };
        let target = format!("{alias}-target");
        let dest = format!("{alias}.bench");
        let p = self.args.partitions;
        create_topic(&self.internal.addr(), &dest, p).await;
        // A task per partition, up to MM2_MAX_TASKS: each task is a consumer and a
        // producer of its own, and nobody runs a thousand of them on one node.
        let tasks = p.min(MM2_MAX_TASKS);
        let dir = self.work.path().join(format!("mm2-{alias}"));
        std::fs::create_dir_all(&dir)?;
        let mut props = format!(
            "clusters = {alias}, {target}\n\
             {alias}.bootstrap.servers = {external}\n\
             {target}.bootstrap.servers = {internal}\n\
             {alias}->{target}.enabled = true\n\
             {target}->{alias}.enabled = false\n\
             {alias}->{target}.topics = bench\n\
             tasks.max = {tasks}\n\
             replication.factor = 1\n\
             checkpoints.topic.replication.factor = 1\n\
             heartbeats.topic.replication.factor = 1\n\
             offset-syncs.topic.replication.factor = 1\n\
             offset.storage.replication.factor = 1\n\
             status.storage.replication.factor = 1\n\
             config.storage.replication.factor = 1\n\
             sync.topic.acls.enabled = false\n\
             {alias}.consumer.max.poll.records = 2000\n\
             {alias}.consumer.fetch.max.bytes = 52428800\n\
             {alias}.consumer.max.partition.fetch.bytes = 1048576\n\
             {target}.producer.batch.size = 262144\n\
             {target}.producer.linger.ms = 5\n\
             {target}.producer.compression.type = none\n\
             {target}.producer.acks = all\n\
             {target}.producer.enable.idempotence = true\n\
             {target}.producer.max.in.flight.requests.per.connection = 5\n\
             {target}.producer.max.request.size = 4194304\n\
             {target}.offset.flush.timeout.ms = 10000\n",
            external = self.external.addr(),
            internal = self.internal.addr(),
        );
        if eos {
            props.push_str(&format!(
                "{target}.exactly.once.source.support = enabled\n\
                 dedicated.mode.enable.internal.rest = true\n\
                 listeners = http://127.0.0.1:{}\n",
                common::free_port()
            ));
        }
        let config = dir.join("mm2.properties");
        std::fs::write(&config, props)?;
        let log = dir.join("mm2.log");
        let name = if eos {
            "MirrorMaker 2, exactly once"
        } else {
            "MirrorMaker 2, at least once"
        };
        let started = Instant::now();
        let child = self
            .kafka_tool("connect-mirror-maker", &log)?
            .arg(&config)
            .args(["--clusters", &target])
            .spawn()?;
        let sampler = ConnectionSampler::start(child.id(), self.broker_ports());
        let progress = bar(self.args.records, name);
        let course = if eos {
            self.read_committed(&dest, &progress, started).await
        } else {
            self.watch_destination(&dest, &progress, started).await
        };
        let seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let connections = sampler.stop();
        let pid = child.id();
        common::signal(pid, "TERM");
        let usage = tokio::task::spawn_blocking(move || reap(child, "connect-mirror-maker"))
            .await?
            .with_context(|| log_tail(&log))?;
        let course = course.with_context(|| log_tail(&log))?;
        if eos {
            let got = self.count_committed(&dest)?;
            ensure!(
                got == self.args.records,
                "{dest} holds {got} committed records, not {}",
                self.args.records
            );
            // Transactions leave a marker per partition per commit: without any, the
            // run was not exactly once.
            let end = total_end(&self.internal.addr(), &dest, p).await;
            ensure!(
                end > self.args.records as i64,
                "{dest} ends at {end} with no transaction markers: MirrorMaker 2 did not write transactions"
            );
        }
        let mut row = self.row(name, seconds, usage, Some(course));
        row.connections = Some(connections);
        Ok(row)
    }

    /// Reads `dest` read_committed with kcat until it has read every record; returns how
    /// they arrived. Fails if the count stops growing for 60 s.
    async fn read_committed(
        &self,
        dest: &str,
        progress: &ProgressBar,
        started: Instant,
    ) -> Result<Course> {
        let mut child = kcat_cmd(&self.internal.addr())
            .args(["-C", "-t", dest, "-o", "beginning", "-f", "\n"])
            .args(["-X", "isolation.level=read_committed"])
            .args(["-c", &self.args.records.to_string()])
            .stdout(Stdio::piped())
            .spawn()?;
        let counter = Arc::new(AtomicU64::new(0));
        let reader = count_lines(&mut child, counter.clone());
        let mut course = CourseTracker::new(self.args.records, started);
        while !reader.is_finished() {
            let now = counter.load(Ordering::Relaxed);
            progress.set_position(now);
            course.saw(now);
            if course.stalled(Duration::from_secs(60)) {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{dest}: read_committed stopped at {now} records");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        reap(child, "kcat -C (read_committed)")?;
        let got = counter.load(Ordering::Relaxed);
        ensure!(
            got == self.args.records,
            "{dest}: read {got} of {} records",
            self.args.records
        );
        Ok(course.course())
    }

    /// The records of `dest` a read_committed consumer sees, to its end.
    fn count_committed(&self, dest: &str) -> Result<u64> {
        let mut child = kcat_cmd(&self.internal.addr())
            .args(["-C", "-t", dest, "-o", "beginning", "-e", "-f", "\n"])
            .args(["-X", "isolation.level=read_committed"])
            .stdout(Stdio::piped())
            .spawn()?;
        let counter = Arc::new(AtomicU64::new(0));
        count_lines(&mut child, counter.clone())
            .join()
            .expect("reader thread");
        reap(child, "kcat -C (count)")?;
        Ok(counter.load(Ordering::Relaxed))
    }

    /// `kcat -P` of the generated records into the source topic (the preload itself).
    fn kcat_produce(&self) -> Result<Row> {
        let started = Instant::now();
        let child = kcat_cmd(&self.external.addr())
            .args(["-P", "-t", "bench", "-K", "\t", "-l"])
            .arg(&self.records_file)
            .spawn()?;
        let spinner = bar(self.args.records, "kcat -P (preload, produce alone)");
        spinner.enable_steady_tick(Duration::from_millis(200));
        let usage = reap(child, "kcat -P")?;
        let seconds = started.elapsed().as_secs_f64();
        spinner.finish_and_clear();
        Ok(self.row("kcat -P (produce alone)", seconds, usage, None))
    }

    /// `kcat -C` of the whole source topic, to a line counter.
    fn kcat_consume(&self) -> Result<Row> {
        let started = Instant::now();
        let mut child = kcat_cmd(&self.external.addr())
            .args(CONSUME_SOURCE)
            .stdout(Stdio::piped())
            .spawn()?;
        let counter = Arc::new(AtomicU64::new(0));
        let reader = count_lines(&mut child, counter.clone());
        let progress = bar(self.args.records, "kcat -C (consume alone)");
        while !reader.is_finished() {
            progress.set_position(counter.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        let usage = reap(child, "kcat -C")?;
        let seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let got = counter.load(Ordering::Relaxed);
        ensure!(
            got == self.args.records,
            "kcat -C read {got} records, not {}",
            self.args.records
        );
        Ok(self.row("kcat -C (consume alone)", seconds, usage, None))
    }

    /// Whether the pipe-per-partition row runs: not for more than [`MAX_PIPES`]
    /// partitions (two kcat processes each).
    fn pipes_per_partition(&self) -> bool {
        self.args.partitions <= MAX_PIPES
    }

    /// `kcat -C | kcat -P` into `dest`: one pipe for the topic, or one per partition.
    async fn kcat_pipe(&self, dest: &str, per_partition: bool) -> Result<Row> {
        let p = self.args.partitions;
        create_topic(&self.internal.addr(), dest, p).await;
        let started = Instant::now();
        let mut children = Vec::new();
        let pipes: Vec<Option<i32>> = if per_partition {
            (0..p).map(Some).collect()
        } else {
            vec![None]
        };
        for partition in pipes {
            let mut consume = kcat_cmd(&self.external.addr());
            consume.args(CONSUME_SOURCE);
            let mut produce = kcat_cmd(&self.internal.addr());
            produce.args(["-P", "-t", dest, "-K", "\t"]);
            if let Some(partition) = partition {
                consume.args(["-p", &partition.to_string()]);
                produce.args(["-p", &partition.to_string()]);
            }
            let mut consumer = consume.stdout(Stdio::piped()).spawn()?;
            let stdout = consumer.stdout.take().expect("piped");
            let producer = produce.stdin(Stdio::from(stdout)).spawn()?;
            children.push((consumer, producer));
        }
        let name = if per_partition {
            format!("kcat -C | kcat -P, {p} pipes (1/partition)")
        } else {
            "kcat -C | kcat -P (one pipe)".to_owned()
        };
        let progress = bar(self.args.records, &name);
        let watch = self.watch_destination(dest, &progress, started);
        let mut usage = Usage::default();
        let reaped = tokio::task::spawn_blocking(move || -> Result<Usage> {
            let mut usage = Usage::default();
            for (consumer, producer) in children {
                usage = usage + reap(consumer, "kcat -C of the pipe")?;
                usage = usage + reap(producer, "kcat -P of the pipe")?;
            }
            Ok(usage)
        });
        let course = watch.await?;
        usage = usage + reaped.await??;
        let seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        // `kcat -P` reads its input in blocks and sends in bursts: the records do not
        // arrive at a steady rate to time, so a pipe's steady figure is its wall rate.
        let course = Course {
            steady: self.args.records as f64 / seconds,
            ..course
        };
        Ok(self.row(&name, seconds, usage, Some(course)))
    }

    /// Polls the destination topic's total end until it holds every record; returns how
    /// they arrived. Fails if it stops growing for 60 s.
    async fn watch_destination(
        &self,
        dest: &str,
        progress: &ProgressBar,
        started: Instant,
    ) -> Result<Course> {
        let target = self.args.records as i64;
        let mut course = CourseTracker::new(self.args.records, started);
        loop {
            let now = total_end(&self.internal.addr(), dest, self.args.partitions).await;
            progress.set_position(now as u64);
            course.saw(now.max(0) as u64);
            if now >= target {
                ensure!(
                    now == target,
                    "{dest} holds {now} records, more than {target}"
                );
                return Ok(course.course());
            }
            if course.stalled(Duration::from_secs(60)) {
                bail!("{dest} stopped at {now} of {target} records");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The service's config for one run; `extra` lines are appended to the service part.
    fn service_config(&self, dir: &Path, prefix: &str, topic: &str, extra: &str) -> PathBuf {
        // `extra` holds `key = "value"` lines; --set overrides them.
        let mut lines: Vec<(String, String)> = extra
            .lines()
            .filter_map(|l| l.split_once(" = "))
            .map(|(k, v)| {
                (
                    k.trim_matches('"').to_owned(),
                    v.trim_matches('"').to_owned(),
                )
            })
            .collect();
        for setting in &self.args.settings {
            let (key, value) = setting.split_once('=').expect("--set takes key=value");
            lines.retain(|(k, _)| k != key);
            lines.push((key.to_owned(), value.to_owned()));
        }
        let extra: String = lines
            .iter()
            .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
            .collect();
        let text = format!(
            "data.dir = \"{}\"\ninternal.bootstrap.servers = \"{}\"\nprogress.interval.ms = 100\napi.listen = \"127.0.0.1:0\"\n{extra}\n\
             [connector]\nname = \"bench-{prefix}\"\nkafka.bootstrap.servers = \"{}\"\n\
             topic.prefix = \"{prefix}\"\ntopic.include.list = \"{topic}\"\nauto.offset.reset = \"earliest\"\n",
            dir.join("data").display(),
            self.internal.addr(),
            self.external.addr(),
        );
        let path = dir.join("kafka-direct.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn spawn_service(&self, config: &Path, log: &Path) -> Result<Child> {
        // KAFKA_DIRECT_BENCH_WRAP runs the service under a profiler, e.g.
        // "perf record -F 999 -g -o target/bench/perf.data --" (docs/benchmarks.md).
        let wrap = std::env::var("KAFKA_DIRECT_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut cmd = Command::new(program);
                cmd.args(words).arg(env!("CARGO_BIN_EXE_kafka-direct"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_kafka-direct")),
        };
        Ok(cmd
            .args(["run", "--config"])
            .arg(config)
            .env(
                "RUST_LOG",
                std::env::var("KAFKA_DIRECT_BENCH_RUST_LOG")
                    .unwrap_or_else(|_| "info,rskafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?)
            .spawn()?)
    }

    /// " (+N settings)" when --set changed the service's configuration.
    fn settings_note(&self) -> String {
        match self.args.settings.len() {
            0 => String::new(),
            n => format!(" (+{n} --set)"),
        }
    }

    /// kafka-direct replicating the preloaded topic into `<prefix>.bench`.
    async fn kafka_direct(&self, prefix: &str, sync: &str) -> Result<Row> {
        let dir = self.work.path().join(prefix);
        std::fs::create_dir_all(&dir)?;
        let mut extra = format!("wal.sync = \"{sync}\"\n");
        let mut note = self.settings_note();
        if prefix == "compare" {
            for setting in &self.args.compare {
                let (key, value) = setting.split_once('=').expect("--compare takes key=value");
                extra.push_str(&format!("{key} = \"{value}\"\n"));
                note.push_str(&format!(", {key}={value}"));
            }
        }
        let config = self.service_config(&dir, prefix, "bench", &extra);
        let log = dir.join("service.log");
        let started = Instant::now();
        let child = self.spawn_service(&config, &log)?;
        let pid = child.id();
        let sampler = ConnectionSampler::start(pid, self.broker_ports());
        let name = format!("kafka-direct, wal.sync={sync}{note}");
        let progress = bar(self.args.records, &name);
        let dest = format!("{prefix}.bench");
        // Polling before the service created the topic would let the broker auto-create it.
        started_up(&log).await?;
        let course = self.watch_destination(&dest, &progress, started).await;
        let seconds = started.elapsed().as_secs_f64();
        progress.finish_and_clear();
        let connections = sampler.stop();
        common::signal(pid, "TERM");
        let usage = tokio::task::spawn_blocking(move || reap(child, "kafka-direct")).await??;
        let course = course.with_context(|| log_tail(&log))?;
        let text = std::fs::read_to_string(&log)?;
        ensure!(
            progress_field(&text, "unexpected_produce_offsets") == Some(0),
            "kafka-direct reported unexpected produce offsets: {}",
            log_tail(&log)
        );
        let mut row = self.row(&name, seconds, usage, Some(course));
        row.connections = Some(connections);
        Ok(row)
    }

    /// Produces `rate` records/s for `latency_secs` into `src` while `replicator` runs,
    /// and reads them back with one independent kcat consumer per entry of `readers`
    /// (`(broker, topic)`), all started before the first record. Returns, per reader and
    /// per record after the warm-up, its arrival and create time in ms since the epoch.
    async fn latency(
        &self,
        name: &str,
        src: &str,
        readers: &[(&str, &str)],
        rate: u64,
        replicator: Vec<Child>,
    ) -> Result<Vec<Vec<Arrival>>> {
        let total = (rate * self.args.latency_secs) as usize;
        // The first second is a warm-up, not counted: the consumer's first fetches of a
        // new topic are slow to start (measured: p99 from 48 ms to 2.8 s between runs).
        let warm_up = rate as usize;
        let all = warm_up + total;
        let mut consumers = Vec::new();
        for &(broker, topic) in readers {
            consumers.push(arrivals(broker, topic, warm_up, all)?);
        }
        tokio::time::sleep(Duration::from_secs(3)).await; // let the consumers find their partitions
        let mut producer = kcat_cmd(&self.external.addr())
            .args(["-P", "-t", src, "-K", "\t", "-X", "linger.ms=1"])
            .stdin(Stdio::piped())
            .spawn()?;
        let mut stdin = producer.stdin.take().expect("piped");
        let progress = bar(all as u64, &format!("{name} @ {rate}/s"));
        let value: String = "v".repeat(self.args.size);
        let started = Instant::now();
        let tick = Duration::from_millis(10);
        let mut sent = 0usize;
        while sent < all {
            let due = ((started.elapsed().as_secs_f64() * rate as f64) as usize).min(all);
            let mut chunk = Vec::new();
            for i in sent..due {
                writeln!(chunk, "k{:08}\t{value}", i % 100_000_000)?;
            }
            stdin.write_all(&chunk)?;
            stdin.flush()?;
            sent = due;
            progress.set_position(sent as u64);
            tokio::time::sleep(tick).await;
        }
        drop(stdin);
        reap(producer, "kcat -P (latency producer)")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut waited = Vec::new();
        for (mut consumer, reader) in consumers {
            waited.push(
                tokio::task::spawn_blocking(move || {
                    while !reader.is_finished() && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    reader
                        .is_finished()
                        .then(|| reader.join().expect("reader thread"))
                })
                .await?,
            );
            let _ = consumer.kill();
            let _ = consumer.wait();
        }
        for mut child in replicator {
            let _ = child.kill();
            let _ = child.wait();
        }
        progress.finish_and_clear();
        let mut results = Vec::new();
        for (got, &(broker, topic)) in waited.into_iter().zip(readers) {
            let Some(got) = got else {
                let arrived = total_end(broker, topic, self.args.partitions).await;
                bail!("{name}: {arrived} of {all} records (sent {sent}) reached {topic} within 60 s of the last produce");
            };
            ensure!(
                got.len() == total,
                "{name}: read {} of {total} records from {topic}",
                got.len()
            );
            results.push(got);
        }
        Ok(results)
    }

    /// kafka-direct's latency, and its own share of it: a second consumer reads the
    /// source topic at the same time, and each record's arrival there is subtracted
    /// from its arrival in the internal topic (the same records, under the same load).
    async fn latency_kafka_direct(&self, rate: u64) -> Result<[Latency; 2]> {
        let p = self.args.partitions;
        create_topic(&self.external.addr(), "live", p).await;
        let dir = self.work.path().join("live");
        std::fs::create_dir_all(&dir)?;
        // The same broker wait as the independent consumer's (see `arrivals`): tansu
        // holds every fetch for its whole max wait when that is under 250 ms, even
        // when records are there (docs/compatibility.md).
        let config = self.service_config(&dir, "live", "live", "fetch.max.wait.ms = 5");
        let log = dir.join("service.log");
        let child = self.spawn_service(&config, &log)?;
        started_up(&log).await?;
        let name = format!("kafka-direct, wal.sync=fsync{}", self.settings_note());
        let (external, internal) = (self.external.addr(), self.internal.addr());
        let read = self
            .latency(
                &name,
                "live",
                &[(&internal, "live.live"), (&external, "live")],
                rate,
                vec![child],
            )
            .await?;
        let (at_internal, at_source) = (&read[0], &read[1]);
        let mut at_source_by_key = std::collections::HashMap::new();
        for a in at_source {
            at_source_by_key.insert(a.key, a.arrived_ms);
        }
        let own: Vec<f64> = at_internal
            .iter()
            .filter_map(|a| Some(a.arrived_ms - at_source_by_key.get(&a.key)?))
            .collect();
        ensure!(
            own.len() == at_internal.len(),
            "{name}: {} of {} records read in the internal topic were not read in the source topic",
            at_internal.len() - own.len(),
            at_internal.len()
        );
        Ok([
            Latency::of(&name, rate, end_to_end(at_internal)),
            Latency::of("  own share: internal - source arrival", rate, own),
        ])
    }

    /// The tools' and broker's own share: kcat -P to kcat -C on the same topic.
    async fn latency_broker(&self, rate: u64) -> Result<Latency> {
        create_topic(&self.external.addr(), "direct", self.args.partitions).await;
        let name = "no replicator (kcat -P to kcat -C, one broker)";
        let external = self.external.addr();
        let read = self
            .latency(name, "direct", &[(&external, "direct")], rate, Vec::new())
            .await?;
        Ok(Latency::of(name, rate, end_to_end(&read[0])))
    }
}

/// One record read back by a latency consumer.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// The record's number (its key).
    key: usize,
    /// When the consumer printed it, ms since the epoch.
    arrived_ms: f64,
    /// Its create time (set by the producer, kept by kafka-direct), ms since the epoch.
    created_ms: f64,
}

/// Source create time to arrival, per record.
fn end_to_end(arrivals: &[Arrival]) -> Vec<f64> {
    arrivals
        .iter()
        .map(|a| a.arrived_ms - a.created_ms)
        .collect()
}

/// Starts a kcat consumer of `topic` from the beginning and a thread collecting the
/// records numbered `warm_up` and above until `all` records were read.
fn arrivals(
    broker: &str,
    topic: &str,
    warm_up: usize,
    all: usize,
) -> Result<(Child, std::thread::JoinHandle<Vec<Arrival>>)> {
    // Each record's key (its number) and timestamp (the create time set by the
    // producer). A 5 ms broker wait: tansu holds every fetch for its whole max wait
    // under 250 ms, so librdkafka's default of 500 ms would measure the broker.
    let mut consumer = kcat_cmd(broker)
        .args(["-C", "-t", topic, "-o", "beginning", "-u", "-f", "%k %T\n"])
        .args(["-X", "fetch.wait.max.ms=5"])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = consumer.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut read = Vec::with_capacity(all - warm_up);
        let mut seen = 0;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let parsed = line.trim().split_once(' ').and_then(|(key, ts)| {
                Some((
                    key.strip_prefix('k')?.parse::<usize>().ok()?,
                    ts.parse::<f64>().ok()?,
                ))
            });
            if let Some((key, created_ms)) = parsed {
                seen += 1;
                if key >= warm_up {
                    read.push(Arrival {
                        key,
                        arrived_ms: now.as_secs_f64() * 1e3,
                        created_ms,
                    });
                }
            }
            if seen >= all {
                break;
            }
        }
        read
    });
    Ok((consumer, reader))
}

/// Waits for the service's first progress line: started, internal topics created.
async fn started_up(log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress_field(&std::fs::read_to_string(log)?, "forwarded").is_none() {
        ensure!(
            Instant::now() < deadline,
            "kafka-direct did not start: {}",
            log_tail(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<_> = text.lines().rev().take(20).collect();
    let lines: Vec<_> = lines.into_iter().rev().collect();
    format!("log {}, last lines:\n{}", log.display(), lines.join("\n"))
}

fn print_table(rows: &[Row]) {
    let pct = |x: Option<f64>| x.map(|x| format!("{:.0} %", x * 100.0)).unwrap_or_default();
    println!(
        "\n{:<40} {:>10} {:>7} {:>10} {:>8} {:>8} {:>8} {:>7} {:>9} {:>8} {:>9} {:>7} {:>9}",
        "run",
        "records/s",
        "MB/s",
        "steady/s",
        "vs ceil",
        "vs MM2eo",
        "vs pipe",
        "wall s",
        "1st rec s",
        "CPU s",
        "CPU s/GB",
        "RSS MB",
        "conns"
    );
    for r in rows {
        println!(
            "{:<40} {:>10.0} {:>7.1} {:>10.0} {:>8} {:>8} {:>8} {:>7.2} {:>9} {:>8.2} {:>9.1} {:>7.1} {:>9}",
            r.name,
            r.records_per_sec,
            r.mb_per_sec,
            r.steady_records_per_sec,
            pct(r.ratio_to_ceiling),
            pct(r.ratio_to_mm2_eos),
            pct(r.ratio_to_kcat_pipe),
            r.seconds,
            r.first_record_seconds
                .map(|x| format!("{x:.2}"))
                .unwrap_or_default(),
            r.cpu_seconds,
            r.cpu_seconds_per_gb,
            r.peak_rss_mb,
            r.connections
                .map(|[source, internal]| format!("{source}+{internal}"))
                .unwrap_or_default(),
        );
    }
}

/// The rates a replicator's row is compared with: the ceiling (the slower of Kafka's
/// consumer and producer perf tests' steady rates), MirrorMaker 2 exactly once's steady
/// rate, and the one kcat pipe's wall rate (as in the runs recorded before the steady
/// rate).
struct Peers {
    ceiling: Option<f64>,
    mm2_eos: Option<f64>,
    pipe: f64,
}

impl Peers {
    fn add_ratios(&self, rows: &mut [Row]) {
        for row in rows.iter_mut() {
            if row.first_record_seconds.is_none() {
                continue; // one-sided runs, not replicators
            }
            let steady = row.steady_records_per_sec;
            row.ratio_to_ceiling = self.ceiling.map(|c| steady / c);
            row.ratio_to_mm2_eos = self.mm2_eos.map(|m| steady / m);
            row.ratio_to_kcat_pipe = Some(row.records_per_sec / self.pipe);
        }
    }
}

async fn throughput(args: Args) -> Result<serde_json::Value> {
    let bench = Bench::prepare(args.clone()).await?;
    println!(
        "kafka-direct end-to-end benchmark: {} records of {} B values (+9 B keys), {} partitions; brokers {} -> {}",
        args.records,
        args.size,
        args.partitions,
        bench.external.addr(),
        bench.internal.addr()
    );
    if args.internal_delay_ms > 0 {
        println!(
            "the internal broker is behind a proxy adding {} ms to each round trip",
            2 * args.internal_delay_ms
        );
    }
    let mut rows = vec![bench.kcat_produce()?];
    let stored = total_end(&bench.external.addr(), "bench", args.partitions).await;
    ensure!(
        stored == args.records as i64,
        "source holds {stored} records after the preload"
    );
    let jvm_peers = !args.no_jvm_peers && common::platform() == common::Platform::Kafka;
    let mut ceiling = None;
    if jvm_peers {
        let (consume, produce) = (bench.ceiling_consume()?, bench.ceiling_produce().await?);
        ceiling = Some(
            consume
                .steady_records_per_sec
                .min(produce.steady_records_per_sec),
        );
        rows.extend([consume, produce]);
    }
    rows.push(bench.kcat_consume()?);
    let pipe = bench.kcat_pipe("pipe.bench", false).await?;
    let pipe_rate = pipe.records_per_sec;
    rows.push(pipe);
    if bench.pipes_per_partition() {
        rows.push(bench.kcat_pipe("pipes.bench", true).await?);
    }
    let mut mm2_eos = None;
    if jvm_peers {
        rows.push(bench.mirror_maker(false).await?);
        let eos = bench.mirror_maker(true).await?;
        mm2_eos = Some(eos.steady_records_per_sec);
        rows.push(eos);
    }
    let fsync = bench.kafka_direct("fsync", "fsync").await?;
    let fsync_rate = fsync.records_per_sec;
    rows.push(fsync);
    rows.push(bench.kafka_direct("flush", "flush").await?);
    if !args.compare.is_empty() {
        rows.push(bench.kafka_direct("compare", "fsync").await?);
    }
    let peers = Peers {
        ceiling,
        mm2_eos,
        pipe: pipe_rate,
    };
    peers.add_ratios(&mut rows);
    print_table(&rows);
    let mut latencies = Vec::new();
    if args.latency_secs > 0 {
        let rate = args.latency_rate.unwrap_or((fsync_rate / 2.0) as u64);
        latencies.push(bench.latency_broker(rate).await?);
        latencies.extend(bench.latency_kafka_direct(rate).await?);
        println!(
            "\n{:<40} {:>12} {:>9} {:>9} {:>9} {:>9}",
            "end-to-end latency", "records/s", "records", "p50 ms", "p99 ms", "max ms"
        );
        for l in &latencies {
            println!(
                "{:<40} {:>12} {:>9} {:>9.1} {:>9.1} {:>9.1}",
                l.name, l.rate, l.records, l.p50_ms, l.p99_ms, l.max_ms
            );
        }
    }
    Ok(serde_json::json!({ "throughput": rows, "latency": latencies }))
}

/// The restart test: kafka-direct copies the preloaded topic, is stopped with SIGTERM
/// and started again, then killed with SIGKILL and started again; each start is timed
/// until every partition's start-up tail check is done (its "already stores" line). After
/// a kill the internal partitions are read until two reads 1.5 s apart agree (the
/// previous process may have left requests in flight); after a clean stop they are not.
async fn restart(args: Args) -> Result<serde_json::Value> {
    let bench = Bench::prepare(args.clone()).await?;
    println!(
        "kafka-direct restart test: {} records of {} B values, {} partitions",
        args.records, args.size, args.partitions
    );
    bench.kcat_produce()?;
    let dir = bench.work.path().join("restart");
    std::fs::create_dir_all(&dir)?;
    let config = bench.service_config(&dir, "restart", "bench", "");
    let log = dir.join("service.log");
    let mut child = bench.spawn_service(&config, &log)?;
    started_up(&log).await?;
    let progress = bar(args.records, "first copy");
    bench
        .watch_destination("restart.bench", &progress, Instant::now())
        .await
        .with_context(|| log_tail(&log))?;
    progress.finish_and_clear();
    let marker = "internal partition already stores everything below";
    let mut starts = Vec::new();
    for (after, signal) in [("SIGTERM", "TERM"), ("kill -9", "KILL")] {
        common::signal(child.id(), signal);
        let reaped = tokio::task::spawn_blocking(move || reap(child, "kafka-direct")).await?;
        if signal == "TERM" {
            reaped?; // a clean stop exits 0; a killed process does not
        }
        let started = Instant::now();
        child = bench.spawn_service(&config, &log)?;
        loop {
            let text = std::fs::read_to_string(&log)?;
            if text.matches(marker).count() >= args.partitions as usize {
                let seconds = started.elapsed().as_secs_f64();
                let settled = text.contains("the previous run did not stop cleanly");
                println!(
                    "  start after {after:<8} {seconds:>6.2} s until the {} partitions' tail checks are done{}",
                    args.partitions,
                    if settled { " (settled: two reads 1.5 s apart)" } else { "" }
                );
                starts.push(
                    serde_json::json!({ "after": after, "seconds": seconds, "settled": settled }),
                );
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(300),
                "the tail checks did not finish: {}",
                log_tail(&log)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    common::signal(child.id(), "TERM");
    tokio::task::spawn_blocking(move || reap(child, "kafka-direct")).await??;
    Ok(serde_json::json!({ "starts": starts }))
}

/// The spool test: the internal broker stopped (SIGSTOP) while `n` records are fetched
/// into the WAL; RSS sampled all along; then the drain rate once the broker answers again.
async fn spool(args: Args, n: u64) -> Result<serde_json::Value> {
    let bench = Bench::prepare(Args {
        records: n,
        ..args.clone()
    })
    .await?;
    println!(
        "kafka-direct spool test: {n} records of {} B values, {} partitions, internal broker stopped while they are fetched",
        args.size, args.partitions
    );
    let dir = bench.work.path().join("spool");
    std::fs::create_dir_all(&dir)?;
    let config = bench.service_config(&dir, "spool", "bench", "wal.max.bytes = 68719476736");
    let log = dir.join("service.log");
    let child = bench.spawn_service(&config, &log)?;
    let pid = child.id();
    started_up(&log).await?;
    bench.internal.pause();
    let started = Instant::now();
    let producer = kcat_cmd(&bench.external.addr())
        .args(["-P", "-t", "bench", "-K", "\t", "-l"])
        .arg(&bench.records_file)
        .spawn()?;
    let preload = std::thread::spawn(move || {
        let usage = reap(producer, "kcat -P");
        (usage, started.elapsed().as_secs_f64())
    });
    let mut samples: Vec<(f64, u64, f64)> = Vec::new(); // (s, fetched, RSS MB)
    let progress = bar(n, "fetched into the WAL (internal down)");
    loop {
        let fetched = progress_field(&std::fs::read_to_string(&log)?, "fetched").unwrap_or(0);
        progress.set_position(fetched);
        if let Some(rss) = rss_mb(pid) {
            samples.push((started.elapsed().as_secs_f64(), fetched, rss));
        }
        if fetched >= n {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "spool stalled: {}",
            log_tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let fetch_seconds = started.elapsed().as_secs_f64();
    progress.finish_and_clear();
    let wal_bytes = progress_field(&std::fs::read_to_string(&log)?, "wal_bytes").unwrap_or(0);
    let disk = dir_size(&dir.join("data"));
    bench.internal.resume();
    let resumed = Instant::now();
    let progress = bar(n, "drained to the internal broker");
    let watch = bench.watch_destination("spool.bench", &progress, resumed);
    let sampler = async {
        loop {
            if let Some(rss) = rss_mb(pid) {
                let fetched = progress_field(
                    &std::fs::read_to_string(&log).unwrap_or_default(),
                    "fetched",
                )
                .unwrap_or(0);
                samples.push((started.elapsed().as_secs_f64(), fetched, rss));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let drained = tokio::select! {
        r = watch => r,
        _ = sampler => unreachable!("the sampler loops forever"),
    };
    let drain_seconds = resumed.elapsed().as_secs_f64();
    progress.finish_and_clear();
    common::signal(pid, "TERM");
    let usage = tokio::task::spawn_blocking(move || reap(child, "kafka-direct")).await??;
    drained.with_context(|| log_tail(&log))?;
    let sampled_peak = samples.iter().map(|s| s.2).fold(0.0, f64::max);
    let at = |share: f64| {
        samples
            .iter()
            .find(|s| s.1 as f64 >= share * n as f64)
            .map(|s| s.2)
            .unwrap_or_default()
    };
    let (preload_usage, preload_seconds) = preload.join().expect("preload thread");
    preload_usage?;
    println!(
        "\n  preload (kcat -P)            {:>10.0} records/s",
        n as f64 / preload_seconds
    );
    println!("  fetched into the WAL         {:>10.0} records/s ({n} in {fetch_seconds:.1} s, while being produced)", n as f64 / fetch_seconds);
    println!(
        "  WAL at the peak              {:>10.1} MB of entries, {:.1} MB on disk",
        wal_bytes as f64 / 1e6,
        disk as f64 / 1e6
    );
    println!(
        "  RSS at 10/50/100 % fetched   {:>10.1} / {:.1} / {:.1} MB",
        at(0.1),
        at(0.5),
        at(1.0)
    );
    println!(
        "  peak RSS (kernel, whole run) {:>10.1} MB (sampled peak {sampled_peak:.1} MB)",
        usage.peak_rss_mb
    );
    println!(
        "  drain after the broker is back {:>8.0} records/s ({n} in {drain_seconds:.1} s)",
        n as f64 / drain_seconds
    );
    println!(
        "  CPU                          {:>10.1} s",
        usage.cpu_seconds
    );
    Ok(serde_json::json!({
        "records": n,
        "fetch_seconds": fetch_seconds,
        "fetch_records_per_sec": n as f64 / fetch_seconds,
        "wal_entry_bytes": wal_bytes,
        "wal_disk_bytes": disk,
        "drain_seconds": drain_seconds,
        "drain_records_per_sec": n as f64 / drain_seconds,
        "peak_rss_mb": usage.peak_rss_mb,
        "cpu_seconds": usage.cpu_seconds,
        "rss_samples": samples.iter().map(|s| serde_json::json!({"t": s.0, "fetched": s.1, "rss_mb": s.2})).collect::<Vec<_>>(),
    }))
}

fn work_dir(args: &Args) -> Result<tempfile::TempDir> {
    let mut work = tempfile::Builder::new()
        .prefix("kafka-direct-bench")
        .tempdir()?;
    if args.keep {
        work.disable_cleanup(true);
        println!("work directory (kept): {}", work.path().display());
    }
    Ok(work)
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (mode, results) = match args.spool {
        Some(n) => ("spool", spool(args.clone(), n).await?),
        None if args.restart => ("restart", restart(args.clone()).await?),
        None => ("throughput", throughput(args.clone()).await?),
    };
    let json = args
        .json
        .clone()
        .unwrap_or_else(|| common::repo_root().join(format!("target/bench/e2e-{mode}.json")));
    if let Some(parent) = json.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let doc = serde_json::json!({
        "mode": mode,
        "args": args,
        "commit": commit,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "results": results,
    });
    std::fs::write(&json, serde_json::to_string_pretty(&doc)?)?;
    println!("\nresults written to {}", json.display());
    Ok(())
}
