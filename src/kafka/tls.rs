//! How a cluster is reached: TLS (the rustls client configuration built from a
//! cluster's `ssl.*` keys), SASL credentials and an optional SOCKS5 proxy: one
//! [`Transport`] per cluster, which every connection of [`crate::kafka::connection`] uses.
//!
//! The server is verified against `ssl.ca.location` or, without it, the system's trust
//! store; its name is checked unless `ssl.endpoint.identification.algorithm = none`.
//! `ssl.certificate.location` with `ssl.key.location` presents a client certificate
//! (mutual TLS). Each may be a file path or the PEM text itself.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::access::{Access, AccessError, SaslSettings, SslSettings, HIDDEN};

/// How a cluster is reached: plaintext or TLS, with or without SASL, directly or
/// through a SOCKS5 proxy.
#[derive(Clone, Default)]
pub struct Transport {
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<SaslSettings>,
    proxy: Option<String>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.protocol())?;
        if let Some(sasl) = &self.sasl {
            write!(f, " {} as {}", sasl.mechanism.name(), sasl.username)?;
        }
        if let Some(proxy) = &self.proxy {
            write!(f, " via socks5://{proxy}")?;
        }
        Ok(())
    }
}

/// The two halves of a connection, whatever its transport.
pub type Halves = (
    Box<dyn AsyncRead + Send + Sync + Unpin>,
    Box<dyn AsyncWrite + Send + Sync + Unpin>,
);

impl Transport {
    /// Plaintext, no authentication, no proxy.
    pub fn plaintext() -> Self {
        Self::default()
    }

    /// The transport `access` describes (keys named under `prefix`, e.g. `connector.`);
    /// reads the PEM material now, so that a bad file is refused at start.
    pub fn new(access: &Access, prefix: &str) -> Result<Self, AccessError> {
        let tls = match &access.ssl {
            Some(ssl) => Some(Arc::new(client_config(ssl, prefix)?)),
            None => None,
        };
        Ok(Self {
            tls,
            sasl: access.sasl.clone(),
            proxy: access.proxy.clone(),
        })
    }

    /// The Kafka name of the security protocol.
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The SASL credentials, if connections authenticate.
    pub fn sasl(&self) -> Option<&SaslSettings> {
        self.sasl.as_ref()
    }

    /// `host:port` of the SOCKS5 proxy, if any.
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// Wraps a connected socket to `addr` (`host:port`), doing the TLS handshake if any;
    /// also returns the certificate chain the broker presented (empty without TLS).
    pub async fn wrap(
        &self,
        addr: &str,
        stream: TcpStream,
    ) -> std::io::Result<(Halves, Vec<CertificateDer<'static>>)> {
        let Some(config) = &self.tls else {
            let (read, write) = stream.into_split();
            return Ok(((Box::new(read), Box::new(write)), Vec::new()));
        };
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned()).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{host}: {e}"))
        })?;
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let (read, write) = tokio::io::split(tls);
        Ok(((Box::new(read), Box::new(write)), chain))
    }
}

/// What `check` shows of one certificate a broker presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateSummary {
    /// The subject, e.g. `CN=kafka-1.example.com`.
    pub subject: String,
    /// The issuer.
    pub issuer: String,
    /// The last day it is valid (UTC), `YYYY-MM-DD`.
    pub not_after: String,
    /// Whole days from now until it expires (negative once expired).
    pub days_left: i64,
}

impl CertificateSummary {
    /// Reads a DER certificate; `None` if it does not parse (the TLS library accepted
    /// it, so this only loses the summary).
    pub fn of(der: &CertificateDer<'_>, now_unix: i64) -> Option<Self> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let not_after = cert.validity().not_after;
        Some(Self {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            not_after: not_after.to_datetime().date().to_string(),
            days_left: (not_after.timestamp() - now_unix).div_euclid(86_400),
        })
    }
}

fn bad(prefix: &str, key: &str, value: &str, expected: impl Into<String>) -> AccessError {
    AccessError::Invalid(
        format!("{prefix}{key}"),
        value.chars().take(80).collect(),
        expected.into(),
    )
}

/// PEM text: the value itself when it holds a PEM block, else the file it names.
fn pem(prefix: &str, key: &str, value: &str) -> Result<Vec<u8>, AccessError> {
    if value.contains("-----BEGIN") {
        return Ok(value.as_bytes().to_vec());
    }
    std::fs::read(value).map_err(|e| {
        bad(
            prefix,
            key,
            value,
            format!("a readable PEM file or inline PEM text ({e})"),
        )
    })
}

fn client_config(ssl: &SslSettings, prefix: &str) -> Result<rustls::ClientConfig, AccessError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &ssl.ca_location {
        Some(ca) => {
            let text = pem(prefix, "ssl.ca.location", ca)?;
            let mut found = 0;
            for cert in CertificateDer::pem_slice_iter(&text) {
                let cert = cert.map_err(|e| {
                    bad(
                        prefix,
                        "ssl.ca.location",
                        ca,
                        format!("PEM certificates ({e})"),
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    bad(
                        prefix,
                        "ssl.ca.location",
                        ca,
                        format!("CA certificates ({e})"),
                    )
                })?;
                found += 1;
            }
            if found == 0 {
                return Err(bad(
                    prefix,
                    "ssl.ca.location",
                    ca,
                    "at least one PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            for cert in system.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(AccessError::Missing(
                    format!("{prefix}ssl.ca.location"),
                    "the system trust store is empty or unreadable: give the CA certificate(s) that signed the brokers' certificates",
                ));
            }
        }
    }
    let roots = Arc::new(roots);
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
        .build()
        .map_err(|e| {
            bad(
                prefix,
                "ssl.ca.location",
                "",
                format!("usable CA certificates ({e})"),
            )
        })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let builder = if ssl.verify_hostname {
        builder.with_webpki_verifier(verifier)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(verifier)))
    };
    match (&ssl.certificate_location, &ssl.key_location) {
        (Some(cert), Some(key)) => {
            let text = pem(prefix, "ssl.certificate.location", cert)?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    bad(
                        prefix,
                        "ssl.certificate.location",
                        cert,
                        format!("PEM certificates ({e})"),
                    )
                })?;
            if chain.is_empty() {
                return Err(bad(
                    prefix,
                    "ssl.certificate.location",
                    cert,
                    "the client certificate chain in PEM",
                ));
            }
            let key_text = pem(prefix, "ssl.key.location", key.expose()).map_err(|e| match e {
                AccessError::Invalid(key, _, expected) => {
                    AccessError::Invalid(key, HIDDEN.into(), expected)
                }
                other => other,
            })?;
            // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
            let private = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
                bad(
                    prefix,
                    "ssl.key.location",
                    "[hidden]",
                    format!("an unencrypted PKCS#8, PKCS#1 or SEC1 private key in PEM ({e})"),
                )
            })?;
            builder.with_client_auth_cert(chain, private).map_err(|e| {
                bad(
                    prefix,
                    "ssl.key.location",
                    "[hidden]",
                    format!("the private key of ssl.certificate.location ({e})"),
                )
            })
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        (Some(_), None) => Err(AccessError::Missing(
            format!("{prefix}ssl.key.location"),
            "the private key of ssl.certificate.location (mutual TLS needs both)",
        )),
        (None, Some(_)) => Err(AccessError::Missing(
            format!("{prefix}ssl.certificate.location"),
            "the certificate of ssl.key.location (mutual TLS needs both)",
        )),
    }
}

/// Verifies the chain like webpki but accepts any server name
/// (`ssl.endpoint.identification.algorithm = none`).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
