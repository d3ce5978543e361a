//! TLS against a real broker: the test broker speaks plaintext only, so stunnel (Debian)
//! terminates TLS in front of it and the broker advertises stunnel's port; every client
//! connection, rskafka's and our own, goes through the TLS listener. Certificates are
//! made here with rcgen, fresh for each test (no key is committed).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

const WAIT: Duration = Duration::from_secs(90);

/// A CA, and certificates it signs, written as PEM files into a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct names: a leaf named like its issuer looks self-signed to OpenSSL.
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pki = Self {
            dir: tempfile::tempdir().unwrap(),
            ca,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<name>.pem` and `<name>.key` for these names, valid now unless `expired`.
    fn issue(&self, name: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let (pem, key_file) = (
            self.path(&format!("{name}.pem")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (pem, key_file)
    }
}

/// A tansu broker behind a stunnel TLS listener (mutual TLS with `client_ca`).
struct TlsBroker {
    broker: Broker,
    stunnel: Child,
    port: u16,
    _conf: tempfile::TempDir,
}

impl TlsBroker {
    fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let stunnel_bin = {
            let out = Command::new(repo_root().join("scripts/install-stunnel"))
                .stderr(Stdio::inherit())
                .output()
                .unwrap();
            assert!(out.status.success());
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let broker = Broker::start_advertising(Some(port));
        let conf = tempfile::tempdir().unwrap();
        let mut text = format!(
            "foreground = yes\npid =\ndebug = 3\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{}\ncert = {}\nkey = {}\n",
            broker.port,
            cert.display(),
            key.display()
        );
        if let Some(ca) = client_ca {
            text.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            ));
        }
        let file = conf.path().join("stunnel.conf");
        std::fs::write(&file, text).unwrap();
        let stunnel = Command::new(stunnel_bin)
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stunnel = listening(stunnel, port, Duration::from_secs(10)).expect("stunnel listens");
        Self {
            broker,
            stunnel,
            port,
            _conf: conf,
        }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

/// Creates a topic through the broker's own CLI on its plaintext port (the broker
/// advertises the TLS port, which a plaintext client cannot use).
fn create(tls: &TlsBroker, topic: &str, partitions: i32) {
    install_tools();
    let status = Command::new(repo_root().join("target/brokers/tansu"))
        .args([
            "topic",
            "create",
            topic,
            "--partitions",
            &partitions.to_string(),
        ])
        .args(["--broker", &format!("tcp://{}", tls.broker.addr())])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "tansu topic create {topic}");
}

/// librdkafka's TLS settings for kcat.
fn kcat_tls(ca: &Path, client: Option<(&Path, &Path)>) -> Vec<String> {
    let mut args = vec![
        "-X".to_owned(),
        "security.protocol=ssl".to_owned(),
        "-X".to_owned(),
        format!("ssl.ca.location={}", ca.display()),
    ];
    if let Some((cert, key)) = client {
        args.extend([
            "-X".to_owned(),
            format!("ssl.certificate.location={}", cert.display()),
            "-X".to_owned(),
            format!("ssl.key.location={}", key.display()),
        ]);
    }
    args
}

/// `n` records written by kcat over TLS: values `<topic>-<partition>-<i>`.
fn produce_tls(addr: &str, topic: &str, partition: i32, n: usize, tls: &[String]) {
    let lines: String = (0..n)
        .map(|i| format!("{topic}-{partition}-{i}\n"))
        .collect();
    let args: Vec<&str> = tls.iter().map(String::as_str).collect();
    kcat_produce(addr, topic, partition, &args, &lines);
}

/// (value, source offset header) of every record of a partition, read by kcat over TLS.
/// An error while the topic does not exist yet.
fn read_tls(
    addr: &str,
    topic: &str,
    partition: i32,
    tls: &[String],
) -> Result<Vec<(String, i64)>, String> {
    let out = Command::new(kcat())
        .args(["-C", "-b", addr, "-t", topic, "-p", &partition.to_string()])
        .args(tls)
        .args(["-o", "beginning", "-e", "-q", "-f", "%s|%h\n"])
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (value, headers) = line.split_once('|').unwrap();
            let offset = headers
                .split(',')
                .find_map(|h| h.strip_prefix(&format!("{SOURCE_OFFSET_HEADER}=")))
                .unwrap_or_else(|| panic!("no source offset in {line}"))
                .parse()
                .unwrap();
            (value.to_owned(), offset)
        })
        .collect())
}

/// Waits until an internal partition read over TLS holds `n` records, then checks they
/// are the source's, once each, in order.
async fn assert_copied(
    addr: &str,
    topic: &str,
    source: &str,
    partition: i32,
    n: usize,
    tls: &[String],
) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let copied = match read_tls(addr, topic, partition, tls) {
            Ok(copied) => copied,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{topic}/{partition}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        };
        if copied.len() >= n {
            let expected: Vec<(String, i64)> = (0..n)
                .map(|i| (format!("{source}-{partition}-{i}"), i as i64))
                .collect();
            assert_eq!(copied, expected, "{topic}/{partition}");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{topic}/{partition}: {} of {n} records",
            copied.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// `kafka-direct check` with this config: (exit success, output).
fn check(config: &Path) -> (bool, String) {
    cli(&["check", "--config", config.to_str().unwrap()])
}

#[tokio::test(flavor = "multi_thread")]
async fn ssl_on_both_clusters_replicates_exactly_once() {
    let pki = Pki::new("kafka-direct test CA");
    let (cert, key) = pki.issue("server", &["127.0.0.1", "localhost"], false);
    let external = TlsBroker::start(&cert, &key, None);
    let internal = TlsBroker::start(&cert, &key, None);
    let ca_path = pki.path("ca.pem");
    let tls = kcat_tls(&ca_path, None);
    create(&external, "secure", 2);
    for p in 0..2 {
        produce_tls(&external.addr(), "secure", p, 150, &tls);
    }
    let ca = ca_path.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "secure",
            extra: &[
                ("connector.security.protocol", "SSL"),
                ("connector.ssl.ca.location", ca),
                ("internal.security.protocol", "SSL"),
                ("internal.ssl.ca.location", ca),
            ],
        },
    );
    let (ok, text) = check(&service.config);
    assert!(ok, "{text}");
    assert!(
        text.contains("external cluster: TLS handshake and certificate verification passed"),
        "{text}"
    );
    service.start();
    for p in 0..2 {
        assert_copied(&internal.addr(), "int.secure", "secure", p, 150, &tls).await;
    }
    assert!(service.terminate(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_with_an_inline_client_key_replicates_and_without_it_is_refused() {
    let pki = Pki::new("kafka-direct test CA");
    let (cert, key) = pki.issue("server", &["127.0.0.1"], false);
    let (client_cert, client_key) = pki.issue("client", &["kafka-direct"], false);
    let external = TlsBroker::start(&cert, &key, Some(&pki.path("ca.pem")));
    let internal = Broker::start();
    let ca = pki.path("ca.pem");
    create(&external, "mutual", 1);
    produce_tls(
        &external.addr(),
        "mutual",
        0,
        60,
        &kcat_tls(&ca, Some((&client_cert, &client_key))),
    );
    // Inline PEM; in the TOML basic string the test kit writes, newlines are escaped.
    let inline_key = std::fs::read_to_string(&client_key)
        .unwrap()
        .replace('\n', "\\n");
    let client_cert_text = client_cert.to_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let base = [
        ("connector.security.protocol", "SSL"),
        ("connector.ssl.ca.location", ca.to_str().unwrap()),
    ];
    // Without a client certificate the broker refuses the handshake.
    let refused = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "mutual",
            extra: &base,
        },
    );
    let (ok, text) = check(&refused.config);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("TLS handshake with {} failed", external.addr())),
        "{text}"
    );

    let mut extra = base.to_vec();
    extra.push(("connector.ssl.certificate.location", &client_cert_text));
    extra.push(("connector.ssl.key.location", &inline_key));
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &external.addr(),
            internal: &internal.addr(),
            topics: "mutual",
            extra: &extra,
        },
    );
    service.start();
    assert_copied(&internal.addr(), "int.mutual", "mutual", 0, 60, &[]).await;
    assert!(service.terminate(Duration::from_secs(30)).success());
    // The key is secret: not in the log, not in `validate`'s printout.
    assert!(!service.log_text().contains("PRIVATE KEY"));
    let out = Command::new(env!("CARGO_BIN_EXE_kafka-direct"))
        .args(["validate", "--config"])
        .arg(&service.config)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains("PRIVATE KEY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tls_failure_is_named_with_what_to_do() {
    let pki = Pki::new("kafka-direct test CA");
    let other = Pki::new("another CA");
    let (good, good_key) = pki.issue("good", &["127.0.0.1"], false);
    let (wrong_name, wrong_name_key) = pki.issue("wrong-name", &["kafka.example.com"], false);
    let (expired, expired_key) = pki.issue("expired", &["127.0.0.1"], true);
    let good_broker = TlsBroker::start(&good, &good_key, None);
    let wrong_name_broker = TlsBroker::start(&wrong_name, &wrong_name_key, None);
    let expired_broker = TlsBroker::start(&expired, &expired_key, None);
    let internal = Broker::start();
    let plain = Broker::start();
    let ca = pki.path("ca.pem");
    let other_ca = other.path("ca.pem");
    // (server, connector keys, what the message must say)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            good_broker.addr(),
            vec![("connector.ssl.ca.location", other_ca.to_str().unwrap())],
            "not signed by ssl.ca.location",
        ),
        (
            wrong_name_broker.addr(),
            vec![("connector.ssl.ca.location", ca.to_str().unwrap())],
            "the certificate does not name this address",
        ),
        (
            expired_broker.addr(),
            vec![("connector.ssl.ca.location", ca.to_str().unwrap())],
            "has expired",
        ),
        (
            plain.addr(),
            vec![("connector.ssl.ca.location", ca.to_str().unwrap())],
            "is the listener TLS?",
        ),
    ];
    for (server, mut extra, needle) in cases {
        extra.push(("connector.security.protocol", "SSL"));
        let dir = tempfile::tempdir().unwrap();
        let mut service = Service::configure(
            dir.path(),
            ServiceConfig {
                external: &server,
                internal: &internal.addr(),
                topics: "t",
                extra: &extra,
            },
        );
        let (ok, text) = check(&service.config);
        assert!(!ok, "{text}");
        assert!(
            (text.contains(&format!("TLS handshake with {server} failed"))
                || text.contains(&format!(
                    "{server} (127.0.0.1): no answer to the TLS handshake"
                )))
                && text.contains(needle),
            "{needle}: {text}"
        );
        // `run` stops with the cause too, in bounded time.
        service.start();
        let status = service.wait_exit(Duration::from_secs(60));
        assert!(!status.success());
        let log = service.log_text();
        assert!(log.contains(&server), "{log}");
    }

    // A name mismatch is accepted only with the loudly named key, which warns.
    let dir = tempfile::tempdir().unwrap();
    let service = Service::configure(
        dir.path(),
        ServiceConfig {
            external: &wrong_name_broker.addr(),
            internal: &internal.addr(),
            topics: "t",
            extra: &[
                ("connector.security.protocol", "SSL"),
                ("connector.ssl.ca.location", ca.to_str().unwrap()),
                ("connector.ssl.endpoint.identification.algorithm", "none"),
            ],
        },
    );
    let (_, text) = check(&service.config);
    assert!(
        text.contains("external cluster: TLS handshake and certificate verification passed"),
        "{text}"
    );
    let mut service = service;
    service.start();
    service.wait_exit(Duration::from_secs(60)); // no topic t: it stops after connecting
    let log = service.log_text();
    assert!(
        log.contains("certificates are not checked against their addresses"),
        "{log}"
    );
    assert!(
        log.contains("none of the configured topics (t) exists"),
        "{log}"
    );
}
