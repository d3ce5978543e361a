//! Secured brokers for the TLS and SASL tests: a test CA (rcgen; no key is committed),
//! stunnel (Debian) terminating TLS in front of a plaintext broker that advertises
//! stunnel's port, a broker that requires SASL/SCRAM (scripts/sasl-broker), and kcat
//! reading and writing through them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// stunnel terminating TLS on `port` for the plaintext listener on `backend`
/// (mutual TLS with `client_ca`).
pub struct Stunnel {
    child: Child,
    pub port: u16,
    _conf: tempfile::TempDir,
}

impl Stunnel {
    pub fn front(
        port: u16,
        backend: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Self {
        let stunnel_bin = run_script("install-stunnel");
        let conf = tempfile::tempdir().unwrap();
        let mut text = format!(
            "foreground = yes\npid =\ndebug = 3\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{backend}\ncert = {}\nkey = {}\n",
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
        let child = Command::new(stunnel_bin)
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child = listening(child, port, Duration::from_secs(10)).expect("stunnel listens");
        Self {
            child,
            port,
            _conf: conf,
        }
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tansu broker behind a stunnel TLS listener (mutual TLS with `client_ca`).
pub struct TlsBroker {
    pub broker: Broker,
    tls: Stunnel,
}

impl TlsBroker {
    pub fn start(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Self {
        let port = free_port();
        let broker = Broker::start_advertising(Some(port));
        let tls = Stunnel::front(port, broker.port, cert, key, client_ca);
        Self { broker, tls }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls.port)
    }
}

/// A broker that requires SASL/SCRAM (scripts/sasl-broker), its users and topics made
/// at start: `user:NAME:PASSWORD:scram256|scram512`, `topic:NAME:PARTITIONS`.
pub struct SaslBroker {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
}

impl SaslBroker {
    /// Advertises `advertised` (a TLS terminator's port) or its own port.
    pub fn start(advertised: Option<u16>, setup: &[&str]) -> Self {
        run_script("install-sasl-broker");
        for _ in 0..5 {
            let port = free_port();
            let data = tempfile::tempdir().unwrap();
            let child = Command::new(repo_root().join("scripts/sasl-broker"))
                .arg(port.to_string())
                .arg(data.path())
                .arg(advertised.unwrap_or(port).to_string())
                .args(setup)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if let Some(child) = listening_after_setup(child, port, data.path()) {
                return Self {
                    child,
                    port,
                    _data: data,
                };
            }
        }
        panic!("could not start a SASL broker");
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for SaslBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the broker that scripts/sasl-broker `exec`s listens: the set-up run
/// (if any) has stopped once DIR/ready exists.
fn listening_after_setup(mut child: Child, port: u16, data: &Path) -> Option<Child> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !data.join("ready").exists() {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SASL broker set-up did not finish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    listening(child, port, Duration::from_secs(20))
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

/// Creates a topic through the broker's own CLI on its plaintext port (the broker
/// advertises the TLS port, which a plaintext client cannot use).
pub fn create(tls: &TlsBroker, topic: &str, partitions: i32) {
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
