//! `kafka-direct check`: the steps a support engineer would take before blaming the
//! service, each with a finding and, when something is wrong, what to do.
//!
//! 1. config (loaded by the caller; a bad key ends the check there);
//! 2. connectivity of each bootstrap server of both clusters: DNS, TCP + ApiVersions, and
//!    whether every broker the cluster *advertises* is reachable from here;
//! 3. security, per cluster: PLAINTEXT, or TLS (handshake, certificate summary and
//!    expiry) and SASL (the mechanism, the user, what the broker offers), the SOCKS5
//!    proxy, and a warning for PLAIN sent without TLS;
//! 4. the configured topics: existence (else the closest names), partitions, leaders,
//!    offsets, what `auto.offset.reset` means for them;
//! 5. the connector's consumer group: readable (DESCRIBE), committable (READ on the
//!    group and the topics, checked without committing), offsets set by another client;
//! 6. a sample of each topic's values against the configured format;
//! 7. the internal cluster: idempotent produce offered or not, internal topics and the
//!    dead-letter topic present or creatable.
//!
//! Only a finding that stops the service from running is a failure; a finding that
//! makes it copy less than expected is a warning.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use kafka_protocol::messages::MetadataResponse;
use serde_json::Value;

use crate::config::{closest, Format, OffsetReset, ServiceConfig};
use crate::format::schema::{Fit, Schema};
use crate::format::{Formatter, Verdict};
use crate::kafka::cluster::Cluster;
use crate::kafka::connection::{topic_partitions, Connection, WireError};
use crate::kafka::fetch::PartitionReader;
use crate::kafka::group::GroupClient;
use crate::kafka::tls::CertificateSummary;
use crate::record::SourceRecord;

/// Values sampled per topic for the format step.
pub const SAMPLE: usize = 100;
/// Bound on each network step.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How a finding reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but probably not as the user expects.
    Warn,
    /// Stops the service from running.
    Fail,
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The step: config, external, internal, security, topics, group, format.
    pub step: &'static str,
    /// Ok, warn or fail.
    pub status: Status,
    /// What was found.
    pub finding: String,
    /// What to do, for a warning or a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The checklist.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Report {
    /// Whether everything needed to run passed.
    pub passed: bool,
    /// The findings, in the order they were made.
    pub findings: Vec<Finding>,
}

impl Report {
    fn add(&mut self, step: &'static str, status: Status, finding: String, fix: Option<String>) {
        self.findings.push(Finding {
            step,
            status,
            finding,
            fix,
        });
        self.passed = self.findings.iter().all(|f| f.status != Status::Fail);
    }

    fn ok(&mut self, step: &'static str, finding: String) {
        self.add(step, Status::Ok, finding, None);
    }

    fn warn(&mut self, step: &'static str, finding: String, fix: impl Into<String>) {
        self.add(step, Status::Warn, finding, Some(fix.into()));
    }

    fn fail(&mut self, step: &'static str, finding: String, fix: impl Into<String>) {
        self.add(step, Status::Fail, finding, Some(fix.into()));
    }

    /// A report of a config that did not load.
    pub fn bad_config(message: String) -> Self {
        let mut report = Report::default();
        report.fail(
            "config",
            message,
            "fix the key named above (`kafka-direct keys` lists every key with its default and accepted values)",
        );
        report
    }

    /// The checklist as text: `✔`, `!` or `✘`, the step, the finding, and `→ fix`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let mark = match f.status {
                Status::Ok => "✔",
                Status::Warn => "!",
                Status::Fail => "✘",
            };
            out.push_str(&format!("{mark} {:<9} {}\n", f.step, f.finding));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("  {:<9} → {fix}\n", ""));
            }
        }
        let (fails, warns) = self
            .findings
            .iter()
            .fold((0, 0), |(f, w), x| match x.status {
                Status::Fail => (f + 1, w),
                Status::Warn => (f, w + 1),
                Status::Ok => (f, w),
            });
        out.push_str(&if self.passed {
            format!("ready to run ({warns} warnings)\n")
        } else {
            format!("not ready: {fails} failed, {warns} warnings\n")
        });
        out
    }
}

/// The connector `run` checks (it returns early when the file declares none).
fn declared(config: &ServiceConfig) -> &crate::config::ConnectorConfig {
    config
        .connector
        .as_ref()
        .expect("check::run returns before any step when no connector is declared")
}

/// Runs steps 2 to 6 for a loaded config.
pub async fn run(config: &ServiceConfig) -> Report {
    let mut report = Report::default();
    if let Err(e) = config.file_connector() {
        return Report::bad_config(e.to_string());
    }
    report.ok(
        "config",
        format!(
            "every key is valid (connector {}, {} topics)",
            declared(config).name,
            declared(config).topics.len()
        ),
    );
    // The config was loaded, so its TLS material reads.
    let (Ok(external_transport), Ok(internal_transport)) = (
        crate::service::external_transport(declared(config)),
        crate::service::internal_transport(config),
    ) else {
        return Report::bad_config("TLS material could not be read".into());
    };
    let external = connect(
        &mut report,
        "external",
        "connector.kafka.bootstrap.servers",
        &declared(config).bootstrap_servers,
        &external_transport,
    )
    .await;
    let internal = connect(
        &mut report,
        "internal",
        "internal.bootstrap.servers",
        &config.internal_bootstrap_servers,
        &internal_transport,
    )
    .await;
    for (cluster, transport, answer) in [
        ("external", &external_transport, &external),
        ("internal", &internal_transport, &internal),
    ] {
        if let Some(proxy) = transport.proxy() {
            report.ok(
                "security",
                format!("{cluster} cluster: connections go through the SOCKS5 proxy {proxy}"),
            );
        }
        let sasl = transport.sasl();
        if let Some(sasl) = sasl.filter(|s| !transport.is_tls() && s.mechanism.name() == "PLAIN") {
            report.warn(
                "security",
                format!("{cluster} cluster: SASL_PLAINTEXT with PLAIN sends the password of {:?} unencrypted", sasl.username),
                "use SASL_SSL, or a SCRAM mechanism, unless the network is trusted",
            );
        }
        let Some(answer) = answer else {
            continue;
        };
        let mut passed = Vec::new();
        if transport.is_tls() {
            passed.push("TLS handshake and certificate verification passed".to_owned());
            certificates(&mut report, cluster, &answer.chain);
        }
        if let Some(sasl) = sasl {
            // OAUTHBEARER: the token step before the broker's.
            if let Some(oauth) = &sasl.oauth {
                let left = crate::kafka::oauth::cached_lifetime(oauth, &sasl.username)
                    .map_or_else(|| "unknown".to_owned(), |d| format!("{} s", d.as_secs()));
                passed.push(format!(
                    "token for client {:?} obtained from {} (it expires in {left})",
                    sasl.username, oauth.token_endpoint
                ));
            }
            if let Some(iam) = &sasl.msk_iam {
                if let Some((signed_for, left)) = crate::kafka::msk_iam::cached_token(iam) {
                    passed.push(format!(
                        "MSK IAM token signed ({signed_for}; it expires in {} s)",
                        left.as_secs()
                    ));
                }
            }
            passed.push(format!(
                "SASL {} authentication as {:?} passed (the broker offers {}){}",
                sasl.mechanism.name(),
                sasl.username,
                answer.sasl_offered.join(", "),
                match answer.session_lifetime {
                    Some(lifetime) => format!(
                        "; the broker ends the session after {:.1} s: kafka-direct re-authenticates before",
                        lifetime.as_secs_f64()
                    ),
                    None => String::new(),
                }
            ));
        }
        report.ok(
            "security",
            if passed.is_empty() {
                format!("{cluster} cluster: PLAINTEXT (no TLS, no authentication)")
            } else {
                format!("{cluster} cluster: {}", passed.join("; "))
            },
        );
    }
    let Some(Answer {
        metadata: external, ..
    }) = external
    else {
        return report;
    };
    let cluster = Cluster {
        role: "external",
        key: "connector.kafka.bootstrap.servers",
        servers: declared(config).bootstrap_servers.clone(),
        timeout: STEP_TIMEOUT,
        internal_retries: false,
        client_id: format!("kafka-direct-check-{}", declared(config).name),
        transport: external_transport.clone(),
    };
    let partitions = topics(&mut report, config, &external, &cluster).await;
    let deployment = crate::connector::group::deployment_of(
        internal
            .as_ref()
            .and_then(|a| a.metadata.cluster_id.as_ref().map(|id| id.to_string())),
        &config.internal_bootstrap_servers,
        declared(config),
    );
    group(&mut report, config, &cluster, &partitions, &deployment).await;
    for (topic, count) in &partitions {
        format(&mut report, config, &cluster, topic, *count).await;
    }
    if let Some(Answer {
        metadata: internal,
        idempotence,
        ..
    }) = internal
    {
        produce_path(&mut report, config, idempotence);
        internal_topics(&mut report, config, &internal, &partitions);
    }
    report
}

fn describe_ip(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => "loopback",
        IpAddr::V4(v4) if v4.is_private() || v4.is_link_local() => "private network",
        IpAddr::V6(v6) if v6.is_loopback() => "loopback",
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => "private network",
        _ => "public",
    }
}

fn looks_internal(host: &str) -> bool {
    host == "localhost"
        || [
            ".internal",
            ".local",
            ".localdomain",
            ".svc",
            ".cluster.local",
            ".lan",
        ]
        .iter()
        .any(|suffix| host.ends_with(suffix))
}

async fn resolve(addr: &str) -> Result<Vec<SocketAddr>, String> {
    match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host(addr)).await {
        Ok(Ok(found)) => Ok(found.collect()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {STEP_TIMEOUT:?}")),
    }
}

/// What the first server of a cluster that answered said: its metadata, the certificate
/// chain it presented and the SASL mechanisms it listed.
struct Answer {
    metadata: MetadataResponse,
    chain: Vec<CertificateSummary>,
    sasl_offered: Vec<String>,
    /// Whether the broker offers InitProducerId (an idempotent producer).
    idempotence: bool,
    /// The SASL session's lifetime, if the broker limits it (KIP-368).
    session_lifetime: Option<std::time::Duration>,
}

/// Step 2 for one cluster: the metadata of the first server that answers.
async fn connect(
    report: &mut Report,
    step: &'static str,
    key: &str,
    servers: &[String],
    transport: &crate::kafka::tls::Transport,
) -> Option<Answer> {
    let mut metadata = None;
    for server in servers {
        let host = server.rsplit_once(':').map_or(server.as_str(), |(h, _)| h);
        let addrs = match resolve(server).await {
            Ok(a) if !a.is_empty() => a,
            // Through a proxy, the proxy resolves the name.
            _ if transport.proxy().is_some() => {
                vec![SocketAddr::from(([0, 0, 0, 0], 0))]
            }
            result => {
                let why = result.err().unwrap_or_else(|| "no address".into());
                report.fail(step, format!("{server}: the name {host} does not resolve ({why})"),
                    format!("check the host name in {key}, and this machine's DNS (is it a name only known inside the cluster's network?)"));
                continue;
            }
        };
        let ip = addrs[0].ip();
        let started = Instant::now();
        let conn = tokio::time::timeout(STEP_TIMEOUT, async {
            let mut conn = Connection::open(server, "kafka-direct-check", transport).await?;
            let metadata = conn.metadata_all().await?;
            let idempotence = conn
                .version::<kafka_protocol::messages::InitProducerIdRequest>(0..=4)
                .is_ok();
            Ok::<_, crate::kafka::connection::WireError>((
                metadata,
                conn.peer_certificates().to_vec(),
                conn.sasl_offered().to_vec(),
                idempotence,
                conn.session_lifetime(),
            ))
        })
        .await;
        let (answer, chain, offered, idempotence, session_lifetime) = match conn {
            Ok(Ok(answered)) => answered,
            Ok(Err(e)) => {
                let fix = match &e {
                    WireError::Sasl { .. } => "check sasl.mechanism and its credentials, sasl.username and sasl.password or sasl.oauthbearer.* (a ${env:NAME} reference must name a set variable); the line above says what the broker or the token endpoint answered".to_owned(),
                    WireError::TokenEndpoint { .. } if transport.sasl().is_some_and(|s| s.msk_iam.is_some()) => "give this host AWS credentials where the AWS SDK looks for them (the line above lists each source it tried)".to_owned(),
                    WireError::TokenEndpoint { .. } => "check sasl.oauthbearer.token.endpoint.url, and that this host reaches it".to_owned(),
                    WireError::Proxy { .. } => "check proxy.url, and that the proxy may reach this broker".to_owned(),
                    WireError::Handshake { .. } => "check ssl.ca.location, the broker's certificate and the TLS port; the line above names the cause".to_owned(),
                    _ => format!("check the port in {key} and that a Kafka listener runs there (connection refused: nothing listens; a timeout: a firewall or a wrong address)"),
                };
                report.fail(
                    step,
                    format!("{server} ({ip}, {}): {e}", describe_ip(ip)),
                    fix,
                );
                continue;
            }
            Err(_) => {
                report.fail(
                    step,
                    if transport.is_tls() {
                        format!("{server} ({ip}): no answer to the TLS handshake within {STEP_TIMEOUT:?}: is the listener TLS?")
                    } else {
                        format!("{server} ({ip}): no answer within {STEP_TIMEOUT:?}")
                    },
                    if transport.is_tls() {
                        format!("a plaintext listener waits silently for a TLS client: use the broker's TLS port in {key}, or security.protocol=PLAINTEXT")
                    } else {
                        format!("check {key}: a firewall, a wrong address, or a TLS listener (then set security.protocol=SSL)")
                    },
                );
                continue;
            }
        };
        let mut line = format!(
            "{server} resolves to {ip} ({}), answers in {} ms",
            describe_ip(ip),
            started.elapsed().as_millis()
        );
        if looks_internal(host) && describe_ip(ip) == "public" {
            line.push_str(&format!("; {host} looks like an internal name"));
        }
        report.ok(step, line);
        // The brokers the cluster advertises are where clients really connect.
        let remote = describe_ip(ip) != "loopback";
        for broker in &answer.brokers {
            let advertised = format!("{}:{}", &*broker.host, broker.port);
            let reachable = match resolve(&advertised).await {
                Ok(found) => match found.first() {
                    Some(a) => {
                        tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(a))
                            .await
                            .map_err(|_| format!("no answer within {STEP_TIMEOUT:?}"))
                            .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                    }
                    None => Err("no address".into()),
                },
                Err(e) => Err(format!("does not resolve: {e}")),
            };
            let loopback_from_remote =
                remote && (broker.host.as_str() == "localhost" || broker.host.starts_with("127."));
            match reachable {
                Ok(()) if !loopback_from_remote => report.ok(
                    step,
                    format!("broker {} advertises {advertised}: reachable from here", broker.node_id.0),
                ),
                result => report.fail(
                    step,
                    format!(
                        "broker {} advertises {advertised}, which this machine cannot use ({})",
                        broker.node_id.0,
                        match result {
                            Err(e) => e,
                            Ok(()) => "a loopback address advertised by a remote broker".into(),
                        }
                    ),
                    "clients connect to the advertised address, not to the bootstrap one: set the broker's advertised.listeners to an address reachable from here (the usual cause of \"works inside, times out outside\")",
                ),
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let chain = chain
            .iter()
            .filter_map(|der| CertificateSummary::of(der, now))
            .collect();
        metadata = Some(Answer {
            metadata: answer,
            chain,
            sasl_offered: offered,
            idempotence,
            session_lifetime,
        });
        break;
    }
    metadata
}

/// Step 3, TLS: the chain the broker presented, and a warning for a certificate that
/// expires within 30 days (the broker is refused once it has).
fn certificates(report: &mut Report, cluster: &str, chain: &[CertificateSummary]) {
    for (i, cert) in chain.iter().enumerate() {
        let role = if i == 0 {
            "broker certificate"
        } else {
            "issuer certificate"
        };
        let finding = format!(
            "{cluster} cluster: {role} {} issued by {}, valid until {} ({} days left)",
            cert.subject, cert.issuer, cert.not_after, cert.days_left
        );
        if cert.days_left < 30 {
            report.warn(
                "security",
                finding,
                "renew it before then: once it expires, the TLS handshake fails and nothing is copied",
            );
        } else {
            report.ok("security", finding);
        }
    }
}

/// Step 4: the configured topics. Returns the partition count of those that exist.
async fn topics(
    report: &mut Report,
    config: &ServiceConfig,
    metadata: &MetadataResponse,
    cluster: &Cluster,
) -> BTreeMap<String, usize> {
    let existing = topic_partitions(metadata);
    let mut found = BTreeMap::new();
    for topic in &declared(config).topics {
        let Some(&count) = existing.get(topic) else {
            let near = closest(topic, existing.keys().map(String::as_str))
                .map(|t| format!("; did you mean `{t}`?"))
                .unwrap_or_default();
            let others: Vec<&str> = existing
                .keys()
                .filter(|t| !t.starts_with("__"))
                .map(String::as_str)
                .take(20)
                .collect();
            let there = if others.is_empty() {
                "the cluster has no topics".to_owned()
            } else {
                format!("topics there: {}", others.join(", "))
            };
            report.fail(
                "topics",
                format!("{topic} does not exist on the external cluster{near} ({there})"),
                "fix connector.topic.include.list (names are case-sensitive)",
            );
            continue;
        };
        found.insert(topic.clone(), count);
        let mut records = 0i64;
        let mut problems = Vec::new();
        for partition in 0..count as i32 {
            let offsets = async {
                let mut reader = PartitionReader::connect(cluster, topic, partition).await?;
                let earliest = reader.earliest(cluster).await?;
                let end = reader.fetch(cluster, earliest, 1, 1).await?.high_watermark;
                Ok::<_, crate::kafka::cluster::ClusterError>((earliest, end))
            };
            match offsets.await {
                Ok((earliest, end)) => records += (end - earliest).max(0),
                Err(e) => problems.push(format!("partition {partition}: {e}")),
            }
        }
        if !problems.is_empty() {
            report.fail(
                "topics",
                format!("{topic}: {}", problems.join("; ")),
                "a partition without a reachable leader cannot be copied: check the brokers' health",
            );
            continue;
        }
        report.ok(
            "topics",
            format!(
                "{topic}: {count} partitions, every leader answers, {records} record{} available",
                if records == 1 { "" } else { "s" }
            ),
        );
        match (declared(config).auto_offset_reset, records) {
            (_, 0) => report.warn(
                "topics",
                format!("{topic} is empty: nothing arrives until producers write to it"),
                "produce to the topic, or check that producers write to this cluster and topic",
            ),
            (OffsetReset::Latest, n) => report.warn(
                "topics",
                format!("auto.offset.reset=latest: the {n} records already in {topic} are not copied (for partitions without a checkpoint); nothing arrives until producers write"),
                "set connector.auto.offset.reset=earliest to copy what the topic holds",
            ),
            (OffsetReset::None, _) => report.warn(
                "topics",
                format!("auto.offset.reset=none: partitions of {topic} without a checkpoint or an offset set through the API will not start, and a partition whose position is removed by retention stops"),
                "set connector.auto.offset.reset=earliest, or set offsets through the API before the first start (docs/api.md)",
            ),
            (OffsetReset::Earliest, _) => {}
        }
    }
    found
}

/// The connector's consumer group on the external cluster: whether this principal may
/// read it (DESCRIBE) and commit to it (READ on the group and the topics), without
/// changing it.
async fn group(
    report: &mut Report,
    config: &ServiceConfig,
    cluster: &Cluster,
    partitions: &BTreeMap<String, usize>,
    deployment: &str,
) {
    use crate::connector::group::{origin, refusal_hint, Origin};
    let connector = declared(config);
    let id = &connector.group_id;
    let mut client = GroupClient::new(cluster.clone(), id.clone());
    let fix = |e: &crate::kafka::cluster::ClusterError| {
        refusal_hint(e, id)
            .unwrap_or_else(|| "replication does not need the group; lag tools do".into())
    };
    let all: Vec<crate::record::SourcePartition> = partitions
        .iter()
        .flat_map(|(t, &n)| (0..n as i32).map(move |p| crate::record::SourcePartition::new(t, p)))
        .collect();
    match client.committed(&all).await {
        Ok(committed) => {
            let count = |o: Origin| {
                committed
                    .values()
                    .filter(|c| origin(c, &connector.name, deployment) == o)
                    .count()
            };
            let (ours, elsewhere) = (count(Origin::Ours), count(Origin::OtherDeployment));
            let others = committed.len() - ours - elsewhere;
            let mut finding = format!(
                "consumer group {id} can be read: {} partition{} committed",
                committed.len(),
                if committed.len() == 1 { "" } else { "s" }
            );
            if !committed.is_empty() {
                finding.push_str(&format!(" ({ours} by this connector, {others} by another client)"));
            }
            report.ok("group", finding);
            if elsewhere > 0 {
                report.warn(
                    "group",
                    format!("{elsewhere} offset{} of group {id} were committed by another kafka-direct deployment (another internal cluster or topic.prefix, or another connector): they are ignored and overwritten", if elsewhere == 1 { "" } else { "s" }),
                    "give each deployment a connector.group.id of its own",
                );
            }
            if others > 0 {
                report.warn(
                    "group",
                    format!("{others} offset{} of group {id} were set by another client: the next start takes them (a partition with a position goes back or forward to them as after an offset change; records the internal topic holds above them are copied again)", if others == 1 { "" } else { "s" }),
                    "expected after kafka-consumer-groups --reset-offsets; otherwise set connector.group.id to a group of kafka-direct's own",
                );
            }
        }
        Err(e) => report.warn(
            "group",
            format!("consumer group {id} cannot be read: {e}; replication goes on, lag tools do not see kafka-direct's position"),
            fix(&e),
        ),
    }
    let Some((topic, &count)) = partitions.iter().next() else {
        return;
    };
    match client.probe_commit(topic, count as i32).await {
        Ok(Some(kafka_protocol::ResponseError::UnknownTopicOrPartition)) | Ok(None) => report.ok(
            "group",
            format!("this principal may commit to group {id} (READ on the group and on {topic})"),
        ),
        Ok(Some(error)) => {
            let e = cluster.error(
                format!("committing to group {id}"),
                crate::kafka::cluster::WireFailure::Broker(error),
            );
            report.warn(
                "group",
                format!("this principal may not commit to group {id}: {error:?}; replication goes on, lag tools do not see kafka-direct's position"),
                fix(&e),
            )
        }
        Err(e) => report.warn(
            "group",
            format!("committing to group {id} could not be checked: {e}"),
            fix(&e),
        ),
    }
}

/// Up to [`SAMPLE`] records of `topic`, from the start of each partition in turn.
async fn sample(
    cluster: &Cluster,
    topic: &str,
    partitions: usize,
) -> Result<Vec<(i32, SourceRecord)>, crate::kafka::cluster::ClusterError> {
    let mut out = Vec::new();
    for partition in 0..partitions as i32 {
        let mut reader = PartitionReader::connect(cluster, topic, partition).await?;
        let mut offset = reader.earliest(cluster).await?;
        while out.len() < SAMPLE {
            let fetched = reader.fetch(cluster, offset, 1 << 20, 100).await?;
            let records = fetched.decoded.batch.records;
            let Some(last) = records.last() else { break };
            offset = last.offset + 1;
            let take = SAMPLE - out.len();
            out.extend(records.into_iter().take(take).map(|r| (partition, r)));
            if offset >= fetched.high_watermark {
                break;
            }
        }
        if out.len() >= SAMPLE {
            break;
        }
    }
    Ok(out)
}

/// Step 5: a sample of the topic's values against the configured format.
async fn format(
    report: &mut Report,
    config: &ServiceConfig,
    cluster: &Cluster,
    topic: &str,
    partitions: usize,
) {
    let connector = declared(config);
    if connector.format == Format::Bytes {
        report.ok(
            "format",
            format!("{topic}: format=bytes, values are copied unchecked"),
        );
        return;
    }
    let records = match sample(cluster, topic, partitions).await {
        Ok(r) => r,
        Err(e) => {
            report.warn(
                "format",
                format!("{topic}: could not read a sample: {e}"),
                "run check again; see the topics step",
            );
            return;
        }
    };
    if records.is_empty() {
        return;
    }
    // The syntax check is the service's own; the schema check runs on a private copy
    // of the rules (the registry lives in the WAL, which a running service holds).
    let syntax = Formatter::new(connector.format, None);
    let mut schema: Option<Schema> = None;
    let mut versions = 0;
    let mut bad = Vec::new();
    for (partition, record) in &records {
        let verdict = syntax.check(record).expect("no registry, no storage error");
        let reason = match verdict {
            Verdict::Reject(why) => Some(format!("{}: {}", why.kind.name(), why.message)),
            _ if connector.schemas_enable => {
                let value: Option<Value> = record
                    .value
                    .as_deref()
                    .map(|v| serde_json::from_slice(v).expect("checked above"));
                match (value, &schema) {
                    (None, _) => None,
                    (Some(v), None) => match Schema::infer_record(&v) {
                        Ok(s) => {
                            schema = Some(s);
                            versions = 1;
                            None
                        }
                        Err(m) => Some(format!("SchemaMismatch: {m}")),
                    },
                    (Some(v), Some(s)) => match s.check(&v) {
                        Ok(Fit::Fits) => None,
                        Ok(Fit::NeedsEvolution) => {
                            schema = s.evolve(&v).ok();
                            versions += 1;
                            None
                        }
                        Err(m) => Some(format!("SchemaMismatch: {m}")),
                    },
                }
            }
            _ => None,
        };
        if let Some(reason) = reason {
            bad.push((*partition, record, reason));
        }
    }
    let n = records.len();
    let what = match (connector.format, connector.schemas_enable) {
        (Format::Json, true) => "JSON objects that fit one evolving schema",
        (Format::Json, false) => "valid JSON",
        _ => "UTF-8 text",
    };
    let good = n - bad.len();
    let Some((partition, record, reason)) = bad.first() else {
        let mut line = format!("{topic}: {good} of {n} sampled values are {what}");
        if connector.schemas_enable && versions > 1 {
            line.push_str(&format!(
                " ({versions} schema versions: fields were added along the way)"
            ));
        }
        report.ok("format", line);
        return;
    };
    let shown: String = String::from_utf8_lossy(record.value.as_deref().unwrap_or_default())
        .chars()
        .take(120)
        .collect();
    let finding = format!(
        "{topic}: {} of {n} sampled values are not {what} and would go to the dead-letter topic {}; e.g. partition {partition} offset {}: {shown:?}: {reason}",
        bad.len(),
        connector.dead_letter_topic,
        record.offset
    );
    let fix = match (connector.format, good) {
        (Format::Json, 0) => "the topic does not hold JSON: set connector.format=string for text or bytes for binary data",
        (Format::String, 0) => "the topic holds binary values: set connector.format=bytes (Avro, Protobuf…)",
        _ if connector.schemas_enable => "fields change type between records: fix the producers, send the Connect envelope with your own schema, or turn schemas.enable off",
        _ => "the dead-letter topic will receive these; fix the producers if they should not exist",
    };
    if good == 0 {
        report.fail("format", finding, fix);
    } else {
        report.warn("format", finding, fix);
    }
}

/// Step 6: how the internal cluster will be written: as an idempotent producer where it
/// offers InitProducerId.
fn produce_path(report: &mut Report, config: &ServiceConfig, offered: bool) {
    let settle = "one produce request in flight per partition, and after a lost answer the internal partition's tail is read until two reads 1.5 s apart agree";
    match (config.internal_idempotence, offered) {
        (true, true) => report.ok(
            "internal",
            format!(
                "the brokers offer InitProducerId: produce is idempotent (the broker stores a re-sent batch once), up to {} requests in flight per partition",
                config.internal_max_in_flight
            ),
        ),
        (true, false) => report.warn(
            "internal",
            format!("the brokers do not offer InitProducerId (no idempotent producer): {settle}"),
            "nothing to change for correctness; a broker with idempotence (Kafka 0.11 and later) is faster after failures and with a distant internal cluster",
        ),
        (false, _) => report.ok(
            "internal",
            format!("internal.enable.idempotence=false: {settle}"),
        ),
    }
}

/// Step 6: internal topics and the dead-letter topic.
fn internal_topics(
    report: &mut Report,
    config: &ServiceConfig,
    metadata: &MetadataResponse,
    partitions: &BTreeMap<String, usize>,
) {
    let existing = topic_partitions(metadata);
    let connector = declared(config);
    for (topic, &count) in partitions {
        let internal = connector.internal_topic(topic);
        match existing.get(&internal) {
            Some(&n) if n >= count => report.ok("internal", format!("{internal} exists with {n} partitions (source: {count})")),
            Some(&n) => report.fail(
                "internal",
                format!("{internal} has {n} partitions but {topic} has {count}: each source partition is copied to the internal partition of the same number"),
                format!("add partitions to {internal} (kafka-topics --alter --partitions {count})"),
            ),
            None => report.ok("internal", format!("{internal} will be created with {count} partitions")),
        }
    }
    if connector.format != Format::Bytes {
        let dlq = &connector.dead_letter_topic;
        match existing.get(dlq) {
            Some(n) => report.ok(
                "internal",
                format!("dead-letter topic {dlq} exists with {n} partitions"),
            ),
            None => report.ok(
                "internal",
                format!("dead-letter topic {dlq} will be created with 1 partition"),
            ),
        }
    }
}
