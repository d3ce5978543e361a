//! Secured brokers for the TLS and SASL tests: a test CA (rcgen; no key is committed),
//! Apache Kafka brokers whose listeners require TLS, mutual TLS or SASL (PLAIN,
//! SCRAM-SHA-256/512), and kcat reading and writing through them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};

use super::*;

const WAIT: Duration = Duration::from_secs(90);

/// A CA, and certificates it signs, written as PEM files into a directory.
/// How long a test certificate is valid.
#[derive(Clone, Copy)]
pub enum Valid {
    /// rcgen's default: 1975 to 4096.
    Long,
    /// 2020 to 2021.
    Expired,
    /// From yesterday to this many days from now.
    ForDays(u64),
}

pub struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(name: &str) -> Self {
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

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `<name>.pem` and `<name>.key` for these names, valid as `valid` says.
    pub fn issue(&self, name: &str, names: &[&str], valid: Valid) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        match valid {
            Valid::Long => {}
            Valid::Expired => {
                params.not_before = date_time_ymd(2020, 1, 1);
                params.not_after = date_time_ymd(2021, 1, 1);
            }
            Valid::ForDays(days) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap();
                let epoch = date_time_ymd(1970, 1, 1);
                params.not_before = epoch + (now - Duration::from_secs(86_400));
                params.not_after = epoch + (now + Duration::from_secs(days * 86_400));
            }
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

/// An Apache Kafka broker with a secured listener (scripts/kafka --secure) beside its
/// plaintext one: the service and kcat use the secured one, the test kit creates topics
/// on the plaintext one.
pub struct SecureBroker {
    pub broker: Broker,
    pub secure_port: u16,
}

impl SecureBroker {
    /// `kind` is SASL_PLAINTEXT, SSL, MTLS or SASL_SSL; `tls` the server certificate and
    /// key (SSL kinds), `client_ca` the CA of client certificates (MTLS); `users` are
    /// SASL users of every mechanism in `mechanisms`.
    pub fn start(
        kind: &str,
        tls: Option<(&Path, &Path)>,
        client_ca: Option<&Path>,
        mechanisms: &str,
        users: &[(&str, &str)],
    ) -> Self {
        Self::start_with(kind, tls, client_ca, mechanisms, users, Vec::new())
    }

    /// As [`SecureBroker::start`], with more `scripts/kafka` options.
    pub fn start_with(
        kind: &str,
        tls: Option<(&Path, &Path)>,
        client_ca: Option<&Path>,
        mechanisms: &str,
        users: &[(&str, &str)],
        more: Vec<String>,
    ) -> Self {
        let secure_port = free_port();
        let mut args = vec![
            "--secure".to_owned(),
            format!("{kind}:{secure_port}"),
            "--mechanisms".to_owned(),
            mechanisms.to_owned(),
        ];
        if let Some((cert, key)) = tls {
            // Kafka's PEM key store: the PKCS#8 key and the certificate in one file.
            let store = cert.with_extension("keystore.pem");
            let text =
                std::fs::read_to_string(key).unwrap() + &std::fs::read_to_string(cert).unwrap();
            std::fs::write(&store, text).unwrap();
            args.extend(["--keystore".to_owned(), store.display().to_string()]);
        }
        if let Some(ca) = client_ca {
            args.extend(["--truststore".to_owned(), ca.display().to_string()]);
        }
        for (user, password) in users {
            args.extend(["--user".to_owned(), format!("{user}:{password}")]);
        }
        args.extend(more);
        Self {
            broker: Broker::start_kafka(None, &args),
            secure_port,
        }
    }

    /// The secured listener's address.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.secure_port)
    }

    /// Creates a topic on the plaintext listener.
    pub async fn create(&self, topic: &str, partitions: i32) {
        create_topic(&self.broker.addr(), topic, partitions).await;
    }
}

/// A Kafka broker whose secured listener speaks TLS (mutual TLS with `client_ca`).
pub struct TlsBroker;

impl TlsBroker {
    pub fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> SecureBroker {
        let kind = if client_ca.is_some() { "MTLS" } else { "SSL" };
        SecureBroker::start(kind, Some((cert, key)), client_ca, "PLAIN", &[])
    }
}

/// The SCRAM mechanisms Kafka offers (SCRAM users are made for both).
pub const SCRAM: &str = "SCRAM-SHA-256,SCRAM-SHA-512";

/// A Kafka broker whose secured listener requires SASL (over TLS with `tls`), offering
/// `mechanisms` to `users`.
pub struct SaslBroker;

impl SaslBroker {
    pub fn start(
        tls: Option<(&Path, &Path)>,
        mechanisms: &str,
        users: &[(&str, &str)],
    ) -> SecureBroker {
        let kind = if tls.is_some() {
            "SASL_SSL"
        } else {
            "SASL_PLAINTEXT"
        };
        SecureBroker::start(kind, tls, None, mechanisms, users)
    }
}

/// librdkafka's SASL settings for kcat (SASL_PLAINTEXT, or SASL_SSL with `ca`).
pub fn kcat_sasl(mechanism: &str, user: &str, password: &str, ca: Option<&Path>) -> Vec<String> {
    let mut args = vec![
        "-X".to_owned(),
        format!("sasl.mechanism={mechanism}"),
        "-X".to_owned(),
        format!("sasl.username={user}"),
        "-X".to_owned(),
        format!("sasl.password={password}"),
        "-X".to_owned(),
    ];
    match ca {
        Some(ca) => args.extend([
            "security.protocol=sasl_ssl".to_owned(),
            "-X".to_owned(),
            format!("ssl.ca.location={}", ca.display()),
        ]),
        None => args.push("security.protocol=sasl_plaintext".to_owned()),
    }
    args
}

/// librdkafka's TLS settings for kcat.
pub fn kcat_tls(ca: &Path, client: Option<(&Path, &Path)>) -> Vec<String> {
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
pub fn produce_tls(addr: &str, topic: &str, partition: i32, n: usize, tls: &[String]) {
    let lines: String = (0..n)
        .map(|i| format!("{topic}-{partition}-{i}\n"))
        .collect();
    let args: Vec<&str> = tls.iter().map(String::as_str).collect();
    kcat_produce(addr, topic, partition, &args, &lines);
}

/// (value, source offset header) of every record of a partition, read by kcat over TLS.
/// An error while the topic does not exist yet.
pub fn read_tls(
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
pub async fn assert_copied(
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

/// A Kafka broker whose secured listener (SASL_PLAINTEXT, or SASL_SSL with `tls`) takes
/// OAUTHBEARER tokens that Kafka's OIDC validator checks against `jwks_url`; `sets` are
/// more broker settings.
pub fn oauth_broker(jwks_url: &str, tls: Option<(&Path, &Path)>, sets: &[&str]) -> SecureBroker {
    let kind = if tls.is_some() {
        "SASL_SSL"
    } else {
        "SASL_PLAINTEXT"
    };
    let mut more = vec!["--oauth-jwks".to_owned(), jwks_url.to_owned()];
    for set in sets {
        more.extend(["--set".to_owned(), (*set).to_owned()]);
    }
    SecureBroker::start_with(kind, tls, None, "OAUTHBEARER", &[], more)
}

/// Writes `secret` to a file and returns the `${file:...}` reference to it.
pub fn file_reference(dir: &Path, name: &str, secret: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    format!("${{file:{}}}", path.display())
}
