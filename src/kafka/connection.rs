//! One broker connection, for every message kafka-direct sends itself: Fetch,
//! ListOffsets and Produce (the fetch and produce paths), Metadata (leader lookup, the
//! external cluster's topic listing), CreatePartitions, DescribeConfigs, and `check`'s
//! probes.
//!
//! Owns: the transport under it (TCP or SOCKS5, TLS, from [`super::tls`]), ApiVersions
//! and the choice, per API, of the highest version both sides support, SASL
//! (SaslHandshake + SaslAuthenticate, rsasl computing PLAIN and SCRAM), framing (a
//! big-endian length prefix, a request header, a correlation id checked on every
//! response) and leader lookup. Messages are encoded and decoded by the `kafka-protocol`
//! crate. rskafka 0.6 cannot fetch a record whose header value is null, hides
//! transaction markers and the aborted-transactions list, and retries produce requests
//! inside one call; hence this connection (docs/ARCHITECTURE.md, the fetch path).
//!
//! A broker that gives the SASL session a lifetime (SaslAuthenticate's
//! `session_lifetime_ms`: `connections.max.reauth.ms`, or an OAUTHBEARER token's expiry)
//! closes the connection at the first request after it ends. The connection
//! re-authenticates before (KIP-368), at a random point between 85 % and 95 % of the
//! lifetime as Kafka's Java client does: the next request sent after that point first
//! reads the answers still in flight (kept for their `receive`), then repeats
//! SaslHandshake and SaslAuthenticate on the same connection. A connection left idle
//! past the end of its session is opened again instead, before the request.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::access::{SaslMechanism, SaslSettings};

/// Largest response accepted (a larger length prefix means a broken stream).
const MAX_RESPONSE_BYTES: usize = 256 << 20;

/// A failure on one broker connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (unknown CA, name mismatch, expired certificate, client
    /// certificate refused, or a plaintext listener).
    #[error("TLS handshake with {addr} failed: {source}{}", tls_hint(source))]
    Handshake {
        /// `host:port`.
        addr: String,
        /// What rustls reported.
        source: std::io::Error,
    },
    /// The SOCKS5 proxy could not be reached or refused to connect to the broker.
    #[error("cannot reach {addr} through the SOCKS5 proxy {proxy}: {reason}")]
    Proxy {
        /// `host:port` of the broker.
        addr: String,
        /// `host:port` of the proxy.
        proxy: String,
        /// What failed.
        reason: String,
    },
    /// SASL authentication failed: wrong credentials, a mechanism the broker does not
    /// enable, or a broker that hung up during the exchange. The password is never part
    /// of the message.
    #[error("SASL {mechanism} authentication of user {user:?} with {addr} failed: {reason}")]
    Sasl {
        /// `host:port`.
        addr: String,
        /// The mechanism.
        mechanism: &'static str,
        /// The user.
        user: String,
        /// The broker's answer, and what to check.
        reason: String,
    },
    /// A plaintext connection broke at its first request.
    #[error("connection to {addr} broke at the first request ({source}): is the listener TLS? then set security.protocol=SSL")]
    FirstRequest {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The connection broke while sending or receiving.
    #[error("connection to {addr} broke: {source}")]
    Io {
        /// `host:port`.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A request could not be encoded or a response decoded.
    #[error("{api:?} with {addr}: {reason}")]
    Codec {
        /// `host:port`.
        addr: String,
        /// The API.
        api: ApiKey,
        /// What went wrong.
        reason: String,
    },
    /// No OAUTHBEARER token could be had for a connection to `addr`: the token endpoint
    /// did not answer (transient: the next connection asks again).
    #[error("no OAUTHBEARER token for {addr}: {reason}")]
    TokenEndpoint {
        /// `host:port` of the broker.
        addr: String,
        /// What failed, naming the endpoint.
        reason: String,
    },
    /// The broker does not offer a version of an API that we speak.
    #[error("{addr} offers {api:?} versions {offered}, kafka-direct needs one of {needed}")]
    Unsupported {
        /// `host:port`.
        addr: String,
        /// The API.
        api: ApiKey,
        /// The broker's range, or "none".
        offered: String,
        /// Our range.
        needed: String,
    },
}

impl WireError {
    /// Whether reconnecting later can succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, WireError::Unsupported { .. } | WireError::Sasl { .. })
    }

    /// The same failure once more, for each of several requests that one connection's
    /// failure failed (an OS error is copied as its kind and message).
    pub fn duplicate(&self) -> WireError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            WireError::Connect { addr, source } => WireError::Connect {
                addr: addr.clone(),
                source: io(source),
            },
            WireError::Handshake { addr, source } => WireError::Handshake {
                addr: addr.clone(),
                source: io(source),
            },
            WireError::Proxy {
                addr,
                proxy,
                reason,
            } => WireError::Proxy {
                addr: addr.clone(),
                proxy: proxy.clone(),
                reason: reason.clone(),
            },
            WireError::Sasl {
                addr,
                mechanism,
                user,
                reason,
            } => WireError::Sasl {
                addr: addr.clone(),
                mechanism,
                user: user.clone(),
                reason: reason.clone(),
            },
            WireError::FirstRequest { addr, source } => WireError::FirstRequest {
                addr: addr.clone(),
                source: io(source),
            },
            WireError::TokenEndpoint { addr, reason } => WireError::TokenEndpoint {
                addr: addr.clone(),
                reason: reason.clone(),
            },
            WireError::Io { addr, source } => WireError::Io {
                addr: addr.clone(),
                source: io(source),
            },
            WireError::Codec { addr, api, reason } => WireError::Codec {
                addr: addr.clone(),
                api: *api,
                reason: reason.clone(),
            },
            WireError::Unsupported {
                addr,
                api,
                offered,
                needed,
            } => WireError::Unsupported {
                addr: addr.clone(),
                api: *api,
                offered: offered.clone(),
                needed: needed.clone(),
            },
        }
    }
}

/// One connection to one broker.
pub struct Connection {
    addr: String,
    reader: BufReader<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    writer: Box<dyn AsyncWrite + Send + Sync + Unpin>,
    client_id: StrBytes,
    correlation_id: i32,
    versions: BTreeMap<i16, (i16, i16)>,
    certificates: Vec<rustls_pki_types::CertificateDer<'static>>,
    sasl_offered: Vec<String>,
    /// How it was opened: what a re-authentication or a reopening uses again.
    transport: crate::kafka::tls::Transport,
    session: Session,
    /// Requests sent whose answers are not read from the socket yet.
    in_flight: usize,
    /// Answers read ahead of their `receive` (before a re-authentication), oldest first.
    read_ahead: VecDeque<Bytes>,
}

/// The SASL session of a connection, when the broker limits it (KIP-368).
#[derive(Debug, Clone, Copy, Default)]
struct Session {
    /// When to re-authenticate (85–95 % of the lifetime).
    renew_at: Option<Instant>,
    /// When the broker ends the session: the lifetime counted from before the
    /// authentication was sent, so a little early.
    ends_at: Option<Instant>,
    /// The lifetime the broker gave.
    lifetime: Option<Duration>,
}

impl Session {
    /// The session of an authentication sent at `started`, for a broker that answered
    /// `lifetime_ms` (0: no limit).
    fn new(started: Instant, lifetime_ms: i64) -> Self {
        if lifetime_ms <= 0 {
            return Self::default();
        }
        let lifetime = Duration::from_millis(lifetime_ms as u64);
        // A random share of the lifetime, as the Java client does, so that connections
        // opened together do not re-authenticate together.
        let share = 0.85 + 0.10 * (random_u64() % 1_000) as f64 / 1_000.0;
        Self {
            renew_at: Some(started + lifetime.mul_f64(share)),
            ends_at: Some(started + lifetime),
            lifetime: Some(lifetime),
        }
    }

    fn is_due(&self, now: Instant) -> bool {
        self.renew_at.is_some_and(|at| now >= at)
    }

    fn has_ended(&self, now: Instant) -> bool {
        self.ends_at.is_some_and(|at| now >= at)
    }
}

fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

/// Re-authentications per broker address since start, for `/metrics`.
static REAUTHENTICATIONS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// Re-authentications (KIP-368) per broker address since start.
pub fn reauthentications() -> Vec<(String, u64)> {
    REAUTHENTICATIONS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(addr, n)| (addr.clone(), *n))
        .collect()
}

/// A SASL failure with `addr` naming the mechanism and the user (never the password).
fn sasl_failure(addr: &str, sasl: &SaslSettings, reason: String) -> WireError {
    WireError::Sasl {
        addr: addr.to_owned(),
        mechanism: sasl.mechanism.name(),
        user: sasl.username.clone(),
        reason,
    }
}

/// A connection the broker closed during the SASL exchange, as a SASL failure saying
/// `when` and what to check (`hint`); other errors as they are.
fn hung_up(e: WireError, sasl: &SaslSettings, when: &str, hint: &str) -> WireError {
    match e {
        WireError::Io { addr, source } => sasl_failure(
            &addr,
            sasl,
            format!("the broker closed the connection {when} ({source}): {hint}"),
        ),
        other => other,
    }
}

/// A request sent on a [`Connection`] whose response is still to be read.
#[derive(Debug)]
#[must_use = "its response must be received before the next one"]
pub struct Sent<R> {
    correlation_id: i32,
    version: i16,
    request: std::marker::PhantomData<fn() -> R>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("addr", &self.addr)
            .field("correlation_id", &self.correlation_id)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Connects to `addr` (through the transport's proxy, if any), does the TLS
    /// handshake, asks which API versions the broker supports and authenticates.
    pub async fn open(
        addr: &str,
        client_id: &str,
        transport: &crate::kafka::tls::Transport,
    ) -> Result<Self, WireError> {
        let stream = match transport.proxy() {
            None => TcpStream::connect(addr)
                .await
                .map_err(|source| WireError::Connect {
                    addr: addr.to_string(),
                    source,
                })?,
            Some(proxy) => through_proxy(addr, proxy).await?,
        };
        // Requests are small and answered one at a time: do not let Nagle delay them.
        let _ = stream.set_nodelay(true);
        let ((read, write), certificates) =
            transport
                .wrap(addr, stream)
                .await
                .map_err(|source| WireError::Handshake {
                    addr: addr.to_string(),
                    source,
                })?;
        let mut conn = Self {
            addr: addr.to_string(),
            reader: BufReader::with_capacity(64 << 10, read),
            writer: write,
            client_id: StrBytes::from_string(client_id.to_string()),
            correlation_id: 0,
            versions: BTreeMap::new(),
            certificates,
            sasl_offered: Vec::new(),
            transport: transport.clone(),
            session: Session::default(),
            in_flight: 0,
            read_ahead: VecDeque::new(),
        };
        // Version 0 is understood by every broker; later versions only add fields we
        // do not need.
        // TLS 1.3 reports a refused client certificate at the first read, and a TLS
        // listener hangs up on a plaintext request: both show here.
        let response: ApiVersionsResponse = conn
            .call_now(&ApiVersionsRequest::default(), 0)
            .await
            .map_err(|e| match e {
                WireError::Io { addr, source } if transport.is_tls() => {
                    WireError::Handshake { addr, source }
                }
                WireError::Io { addr, source } => WireError::FirstRequest { addr, source },
                other => other,
            })?;
        if let Some(error) = kafka_protocol::ResponseError::try_from_code(response.error_code) {
            return Err(conn.codec_error(ApiKey::ApiVersions, format!("broker answered {error}")));
        }
        conn.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        if let Some(sasl) = transport.sasl() {
            conn.authenticate(sasl).await?;
        }
        Ok(conn)
    }

    /// SaslHandshake (v1: the exchange then goes in SaslAuthenticate requests), then as
    /// many SaslAuthenticate round trips as the mechanism needs; rsasl computes the
    /// messages and checks the server's proof (SCRAM).
    async fn authenticate(&mut self, sasl: &SaslSettings) -> Result<(), WireError> {
        let started = Instant::now();
        let mechanism = sasl.mechanism.name();
        let fail = |addr: &str, reason: String| sasl_failure(addr, sasl, reason);
        let hung_up = |e: WireError, when: &str, hint: &str| hung_up(e, sasl, when, hint);
        let version = self.version::<SaslHandshakeRequest>(1..=1)?;
        let handshake = self
            .call_now(
                &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism)),
                version,
            )
            .await
            .map_err(|e| {
                hung_up(
                    e,
                    "at the SASL handshake",
                    &format!("is {mechanism} enabled on this listener? (set sasl.mechanism to one the broker enables)"),
                )
            })?;
        self.sasl_offered = handshake
            .mechanisms
            .iter()
            .map(|m| m.as_str().to_owned())
            .collect();
        if handshake.error_code != 0 {
            let offered: Vec<&str> = handshake.mechanisms.iter().map(|m| m.as_str()).collect();
            return Err(fail(
                &self.addr,
                format!(
                    "the broker does not enable {mechanism}; it offers {}: set sasl.mechanism to one of them",
                    if offered.is_empty() { "none".into() } else { offered.join(", ") }
                ),
            ));
        }
        if sasl.mechanism == SaslMechanism::OAuthBearer {
            let lifetime_ms = self.authenticate_oauth(sasl).await?;
            self.session = Session::new(started, lifetime_ms);
            return Ok(());
        }
        let client = rsasl::config::SASLConfig::with_credentials(
            None,
            sasl.username.clone(),
            sasl.password.expose().to_owned(),
        )
        .map(rsasl::prelude::SASLClient::new)
        .map_err(|e| fail(&self.addr, format!("cannot set up the SASL client: {e}")))?;
        let name = rsasl::prelude::Mechname::parse(mechanism.as_bytes())
            .expect("our mechanism names are valid");
        let mut session = client
            .start_suggested(&[name])
            .map_err(|e| fail(&self.addr, format!("cannot start {mechanism}: {e}")))?;
        let version = self.version::<SaslAuthenticateRequest>(0..=2)?;
        let mut received: Option<bytes::Bytes> = None;
        let mut lifetime_ms = 0;
        loop {
            let mut message = Vec::new();
            let state = session
                .step(received.as_deref(), &mut message)
                .map_err(|e| {
                    fail(
                        &self.addr,
                        format!("the exchange failed ({e}): check sasl.username and sasl.password, and that the user exists for {mechanism}"),
                    )
                })?;
            if state.has_sent_message() {
                let response = self
                    .call_now(
                        &SaslAuthenticateRequest::default().with_auth_bytes(message.into()),
                        version,
                    )
                    .await
                    .map_err(|e| {
                        hung_up(
                            e,
                            "during authentication",
                            "check sasl.username and sasl.password, and that the user exists for this mechanism",
                        )
                    })?;
                if response.error_code != 0 {
                    let code = kafka_protocol::ResponseError::try_from_code(response.error_code)
                        .map_or_else(
                            || format!("error {}", response.error_code),
                            |e| format!("{e}"),
                        );
                    let said = response
                        .error_message
                        .as_ref()
                        .map(|m| format!(": {}", m.as_str()))
                        .unwrap_or_default();
                    return Err(fail(
                        &self.addr,
                        format!("the broker answered {code}{said}; check sasl.username and sasl.password"),
                    ));
                }
                lifetime_ms = response.session_lifetime_ms;
                received = Some(response.auth_bytes);
            }
            if state.is_finished() {
                self.session = Session::new(started, lifetime_ms);
                return Ok(());
            }
        }
    }

    /// OAUTHBEARER after the handshake: a token from the endpoint (or the cache) in one
    /// SaslAuthenticate. A broker that refuses the token answers with a JSON challenge
    /// (RFC 7628 §3.2.2), which the client acknowledges with `^A` to get the error.
    /// Returns the session lifetime the broker gave (0: none).
    async fn authenticate_oauth(&mut self, sasl: &SaslSettings) -> Result<i64, WireError> {
        let fail = |addr: &str, reason: String| sasl_failure(addr, sasl, reason);
        // The token, whether it was just made, the extensions to send, where it came
        // from (for messages) and what to check when the broker refuses it.
        let (token, fresh, extensions, source, check) = match (&sasl.msk_iam, &sasl.oauth) {
            (Some(iam), _) => {
                // Boxed: the AWS SDK's configuration loading is a large future, which
                // would otherwise be part of every connection's.
                let (token, fresh, signed_for) =
                    Box::pin(super::msk_iam::token(iam)).await.map_err(|e| {
                        if e.is_transient() {
                            WireError::TokenEndpoint {
                                addr: self.addr.clone(),
                                reason: e.to_string(),
                            }
                        } else {
                            fail(&self.addr, e.to_string())
                        }
                    })?;
                (
                    token,
                    fresh,
                    &[][..],
                    format!("the MSK IAM token ({signed_for})"),
                    "check that the credentials' IAM policy allows kafka-cluster:Connect on this cluster, and sasl.oauthbearer.aws.region",
                )
            }
            (None, Some(oauth)) => {
                let (token, fresh) = super::oauth::token(
                    oauth,
                    &sasl.username,
                    &sasl.password,
                    super::oauth::TIMEOUT,
                )
                .await
                .map_err(|e| match e {
                    super::oauth::OAuthError::Unreachable { .. }
                    | super::oauth::OAuthError::Busy { .. } => WireError::TokenEndpoint {
                        addr: self.addr.clone(),
                        reason: e.to_string(),
                    },
                    refused => fail(&self.addr, refused.to_string()),
                })?;
                (
                    token,
                    fresh,
                    oauth.extensions.as_slice(),
                    format!("the token from {}", oauth.token_endpoint),
                    "check the broker's token validation (issuer, audience, JWKS) and sasl.oauthbearer.scope",
                )
            }
            (None, None) => unreachable!("OAUTHBEARER has a token source"),
        };
        let forget = || match (&sasl.msk_iam, &sasl.oauth) {
            (Some(iam), _) => super::msk_iam::forget(iam),
            (None, Some(oauth)) => super::oauth::forget(oauth, &sasl.username),
            (None, None) => {}
        };
        let version = self.version::<SaslAuthenticateRequest>(0..=2)?;
        let message = super::oauth::initial_response(&token, extensions);
        let refused = |code: i16, said: Option<&StrBytes>, challenge: &str| {
            let code = kafka_protocol::ResponseError::try_from_code(code)
                .map_or_else(|| format!("error {code}"), |e| format!("{e}"));
            let said = said
                .map(|m| format!(": {}", m.as_str()))
                .unwrap_or_default();
            format!("the broker refused {source}{challenge} ({code}{said}); {check}")
        };
        let hint = format!("it may have refused {source}");
        let response = self
            .call_now(
                &SaslAuthenticateRequest::default().with_auth_bytes(message.into()),
                version,
            )
            .await
            .map_err(|e| hung_up(e, sasl, "during authentication", &hint))?;
        // A token from the cache that the broker refuses (revoked, or expired early):
        // dropped, and the next connection asks the endpoint for a new one; a token just
        // fetched that the broker refuses is a refusal.
        let addr = self.addr.clone();
        let refusal = |reason: String| {
            forget();
            if fresh {
                fail(&addr, reason)
            } else {
                WireError::TokenEndpoint {
                    addr: addr.clone(),
                    reason: format!(
                        "{reason}; it was a cached token: the next connection fetches a new one"
                    ),
                }
            }
        };
        if response.error_code != 0 {
            return Err(refusal(refused(
                response.error_code,
                response.error_message.as_ref(),
                "",
            )));
        }
        if response.auth_bytes.is_empty() {
            return Ok(response.session_lifetime_ms);
        }
        // A challenge: the server's error, as JSON.
        let challenge = format!(", saying {}", String::from_utf8_lossy(&response.auth_bytes));
        let after = self
            .call_now(
                &SaslAuthenticateRequest::default()
                    .with_auth_bytes(bytes::Bytes::from_static(b"\x01")),
                version,
            )
            .await;
        let (code, said) = match &after {
            Ok(r) => (r.error_code, r.error_message.clone()),
            Err(_) => (0, None),
        };
        Err(refusal(refused(code, said.as_ref(), &challenge)))
    }

    /// The certificate chain the broker presented (empty without TLS).
    pub fn peer_certificates(&self) -> &[rustls_pki_types::CertificateDer<'static>] {
        &self.certificates
    }

    /// The SASL mechanisms the broker listed in its SaslHandshake answer (empty without
    /// SASL). Kafka lists every mechanism the listener enables; some brokers list only
    /// the one asked for.
    pub fn sasl_offered(&self) -> &[String] {
        &self.sasl_offered
    }

    /// The broker's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The highest version of `R` that both the broker and kafka-direct (`ours`)
    /// support.
    pub fn version<R: Request>(
        &self,
        ours: std::ops::RangeInclusive<i16>,
    ) -> Result<i16, WireError> {
        let api = api_key::<R>();
        let lo = (*ours.start()).max(R::VERSIONS.min);
        let hi = (*ours.end()).min(R::VERSIONS.max);
        let unsupported = |offered: String| WireError::Unsupported {
            addr: self.addr.clone(),
            api,
            offered,
            needed: format!("{lo}..={hi}"),
        };
        let Some(&(broker_lo, broker_hi)) = self.versions.get(&R::KEY) else {
            return Err(unsupported("none".into()));
        };
        let version = hi.min(broker_hi);
        if version < lo.max(broker_lo) {
            return Err(unsupported(format!("{broker_lo}..={broker_hi}")));
        }
        Ok(version)
    }

    /// Sends one request and waits for its response.
    pub async fn call<R: Request + Sync>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, WireError>
    where
        R::Response: Send,
    {
        let sent = self.send(request, version).await?;
        self.receive(sent).await
    }

    /// [`Connection::call`] without renewing the session first (the SASL exchange
    /// itself, and ApiVersions before it).
    async fn call_now<R: Request + Sync>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, WireError>
    where
        R::Response: Send,
    {
        let sent = self.send_now(request, version).await?;
        // From the socket: answers read ahead wait for their own receive.
        let frame = read_frame(&mut self.reader, &self.addr, api_key::<R>()).await?;
        self.in_flight = self.in_flight.saturating_sub(1);
        decode_response(frame, &self.addr, sent)
    }

    /// Sends one request without waiting for its response: several may be in flight on
    /// a connection, and the broker answers them in the order they were sent, so each
    /// [`Connection::receive`] takes the oldest. Renews the SASL session first when it
    /// is due ([`Connection::renew_session`]).
    pub async fn send<R: Request + Sync>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<Sent<R>, WireError> {
        self.renew_session().await?;
        self.send_now(request, version).await
    }

    async fn send_now<R: Request + Sync>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<Sent<R>, WireError> {
        let sent = send_on(
            &mut self.writer,
            &self.addr,
            &self.client_id,
            &mut self.correlation_id,
            request,
            version,
        )
        .await?;
        self.in_flight += 1;
        Ok(sent)
    }

    /// Waits for the response to `sent`, which must be the oldest request in flight.
    pub async fn receive<R: Request>(&mut self, sent: Sent<R>) -> Result<R::Response, WireError>
    where
        R::Response: Send,
    {
        let frame = match self.read_ahead.pop_front() {
            Some(frame) => frame,
            None => {
                let frame = read_frame(&mut self.reader, &self.addr, api_key::<R>()).await?;
                self.in_flight = self.in_flight.saturating_sub(1);
                frame
            }
        };
        decode_response(frame, &self.addr, sent)
    }

    /// The lifetime the broker gave the SASL session, if it limits it.
    pub fn session_lifetime(&self) -> Option<Duration> {
        self.session.lifetime
    }

    /// Whether the SASL session is due for renewal ([`Connection::renew_session`]).
    pub fn session_due(&self) -> bool {
        self.session.is_due(Instant::now())
    }

    /// Renews the SASL session if it is due: re-authenticates on this connection
    /// (KIP-368) after reading ahead the answers in flight, or, when the session has
    /// already ended and nothing is in flight, opens the connection again.
    pub async fn renew_session(&mut self) -> Result<(), WireError> {
        let now = Instant::now();
        if !self.session.is_due(now) {
            return Ok(());
        }
        let Some(sasl) = self.transport.sasl().cloned() else {
            return Ok(());
        };
        if self.session.has_ended(now) && self.in_flight == 0 && self.read_ahead.is_empty() {
            tracing::debug!(addr = %self.addr, "the SASL session ended while the connection was idle: opening it again");
            let transport = self.transport.clone();
            *self = Connection::open(&self.addr, &self.client_id, &transport).await?;
            return Ok(());
        }
        while self.in_flight > 0 {
            let frame = read_frame(&mut self.reader, &self.addr, ApiKey::SaslHandshake).await?;
            self.read_ahead.push_back(frame);
            self.in_flight -= 1;
        }
        self.authenticate(&sasl).await?;
        *REAUTHENTICATIONS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(self.addr.clone())
            .or_default() += 1;
        tracing::debug!(addr = %self.addr, lifetime = ?self.session.lifetime, "re-authenticated");
        Ok(())
    }

    /// The connection as two halves, for a sender and a receiver that work at once
    /// (requests pipelined while the answers to earlier ones are read); nothing may be
    /// in flight. [`Outbound::join`] makes them one again.
    pub fn split(mut self) -> (Outbound, Inbound) {
        debug_assert!(self.in_flight == 0 && self.read_ahead.is_empty());
        let reader = std::mem::replace(
            &mut self.reader,
            BufReader::new(Box::new(tokio::io::empty())),
        );
        let inbound = Inbound {
            addr: self.addr.clone(),
            reader,
        };
        (Outbound { conn: self }, inbound)
    }

    /// Metadata of one topic (brokers and partition leaders), creating none: a broker
    /// with Kafka's default `auto.create.topics.enable=true` would otherwise create a
    /// missing or deleted topic with its defaults.
    pub async fn metadata(&mut self, topic: &str) -> Result<MetadataResponse, WireError> {
        let version = self.version::<MetadataRequest>(1..=12)?;
        let request = MetadataRequest::default()
            .with_topics(Some(vec![
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(topic_name(topic))),
            ]))
            .with_allow_auto_topic_creation(false);
        self.call(&request, version).await
    }

    /// Metadata of every topic, creating none (brokers, topics, partition leaders).
    pub async fn metadata_all(&mut self) -> Result<MetadataResponse, WireError> {
        let version = self.version::<MetadataRequest>(1..=12)?;
        let request = MetadataRequest::default()
            .with_topics(None)
            .with_allow_auto_topic_creation(false);
        self.call(&request, version).await
    }

    /// Grows `topic` to `count` partitions (CreatePartitions; the broker forwards it to
    /// the controller). `Ok(Err(..))` carries the broker's refusal and message.
    pub async fn create_partitions(
        &mut self,
        topic: &str,
        count: i32,
        timeout: Duration,
    ) -> Result<Result<(), String>, WireError> {
        use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
        use kafka_protocol::messages::CreatePartitionsRequest;
        let version = self.version::<CreatePartitionsRequest>(0..=3)?;
        let request = CreatePartitionsRequest::default()
            .with_topics(vec![CreatePartitionsTopic::default()
                .with_name(topic_name(topic))
                .with_count(count)
                // Null: the broker places the new partitions. An empty list (the
                // default) asks for no assignment and Kafka refuses it.
                .with_assignments(None)])
            .with_timeout_ms(timeout.as_millis().min(i32::MAX as u128) as i32);
        let response = self.call(&request, version).await?;
        for result in response.results {
            if let Some(error) = kafka_protocol::ResponseError::try_from_code(result.error_code) {
                let message = result
                    .error_message
                    .map(|m| m.trim_end_matches('.').to_string())
                    .unwrap_or_default();
                return Ok(Err(format!("{error:?} {message}").trim().to_owned()));
            }
        }
        Ok(Ok(()))
    }

    pub(crate) fn codec_error(&self, api: ApiKey, reason: String) -> WireError {
        codec_error(&self.addr, api, reason)
    }
}

/// The sending half of a split [`Connection`] (the rest of the connection but its
/// reader).
pub struct Outbound {
    conn: Connection,
}

/// The receiving half of a split [`Connection`].
pub struct Inbound {
    addr: String,
    reader: BufReader<Box<dyn AsyncRead + Send + Sync + Unpin>>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("addr", &self.conn.addr)
            .field("correlation_id", &self.conn.correlation_id)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Outbound {
    /// As [`Connection::send`], but never renewing the session: the other half reads
    /// the answers. When [`Outbound::session_due`] says so, let the reader answer what
    /// is in flight, [`Outbound::join`] the halves and renew the session.
    pub async fn send<R: Request + Sync>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<Sent<R>, WireError> {
        self.conn.send_now(request, version).await
    }

    /// As [`Connection::session_due`].
    pub fn session_due(&self) -> bool {
        self.conn.session_due()
    }

    /// The connection again, from its two halves, once `inbound` has read the answer
    /// of every request sent.
    pub fn join(self, inbound: Inbound) -> Connection {
        let mut conn = self.conn;
        conn.reader = inbound.reader;
        conn.in_flight = 0;
        conn
    }
}

impl Inbound {
    /// As [`Connection::receive`].
    pub async fn receive<R: Request>(&mut self, sent: Sent<R>) -> Result<R::Response, WireError>
    where
        R::Response: Send,
    {
        let frame = read_frame(&mut self.reader, &self.addr, api_key::<R>()).await?;
        decode_response(frame, &self.addr, sent)
    }
}

async fn send_on<R: Request + Sync>(
    writer: &mut (dyn AsyncWrite + Send + Sync + Unpin),
    addr: &str,
    client_id: &StrBytes,
    correlation_id: &mut i32,
    request: &R,
    version: i16,
) -> Result<Sent<R>, WireError> {
    let api = api_key::<R>();
    *correlation_id = correlation_id.wrapping_add(1);
    let header = RequestHeader::default()
        .with_request_api_key(R::KEY)
        .with_request_api_version(version)
        .with_correlation_id(*correlation_id)
        .with_client_id(Some(client_id.clone()));

    let mut frame = BytesMut::with_capacity(128);
    frame.put_i32(0);
    header
        .encode(&mut frame, api.request_header_version(version))
        .and_then(|()| request.encode(&mut frame, version))
        .map_err(|e| codec_error(addr, api, format!("cannot encode the request: {e}")))?;
    let len = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    writer
        .write_all(&frame)
        .await
        .map_err(|source| io_error(addr, source))?;
    Ok(Sent {
        correlation_id: *correlation_id,
        version,
        request: std::marker::PhantomData,
    })
}

/// One response frame (its header and body, without the length prefix), to a request of
/// `api` (named in errors).
async fn read_frame(
    reader: &mut BufReader<Box<dyn AsyncRead + Send + Sync + Unpin>>,
    addr: &str,
    api: ApiKey,
) -> Result<Bytes, WireError> {
    let len = reader
        .read_i32()
        .await
        .map_err(|source| io_error(addr, source))?;
    let [first, second, ..] = len.to_be_bytes();
    if (first == 0x15 || first == 0x16) && second == 0x03 {
        // A TLS record (an alert or a handshake), not a Kafka response: Kafka's TLS
        // listener answers a plaintext request this way.
        return Err(io_error(
            addr,
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the broker answered with a TLS record",
            ),
        ));
    }
    if len < 4 || len as usize > MAX_RESPONSE_BYTES {
        return Err(codec_error(
            addr,
            api,
            format!("response length {len} is out of range"),
        ));
    }
    let mut body = BytesMut::zeroed(len as usize);
    reader
        .read_exact(&mut body)
        .await
        .map_err(|source| io_error(addr, source))?;
    Ok(body.freeze())
}

/// The response to `sent` in `body`, a frame read by [`read_frame`].
fn decode_response<R: Request>(
    mut body: Bytes,
    addr: &str,
    sent: Sent<R>,
) -> Result<R::Response, WireError>
where
    R::Response: Send,
{
    let api = api_key::<R>();
    let version = sent.version;
    let header = ResponseHeader::decode(&mut body, api.response_header_version(version))
        .map_err(|e| codec_error(addr, api, format!("bad response header: {e}")))?;
    if header.correlation_id != sent.correlation_id {
        return Err(codec_error(
            addr,
            api,
            format!(
                "response to request {} arrived while waiting for {}",
                header.correlation_id, sent.correlation_id
            ),
        ));
    }
    let response = R::Response::decode(&mut body, version)
        .map_err(|e| codec_error(addr, api, format!("cannot decode the response: {e}")))?;
    if body.has_remaining() {
        tracing::debug!(%addr, ?api, left = body.remaining(), "response has trailing bytes");
    }
    Ok(response)
}

fn io_error(addr: &str, source: std::io::Error) -> WireError {
    WireError::Io {
        addr: addr.to_owned(),
        source,
    }
}

fn codec_error(addr: &str, api: ApiKey, reason: String) -> WireError {
    WireError::Codec {
        addr: addr.to_owned(),
        api,
        reason,
    }
}

/// What to check for a failed handshake, from rustls's description of it.
fn tls_hint(e: &std::io::Error) -> &'static str {
    let text = e.to_string().to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&[
        "unknownissuer",
        "unknown issuer",
        "badsignature",
        "bad signature",
    ]) {
        " (the broker's certificate is not signed by ssl.ca.location or a system CA: set ssl.ca.location to the CA that signed it)"
    } else if has(&["notvalidforname", "not valid for name"]) {
        " (the certificate does not name this address: connect by a name it holds, or set ssl.endpoint.identification.algorithm=none)"
    } else if has(&["expired"]) {
        " (the broker's certificate has expired)"
    } else if has(&[
        "certificaterequired",
        "badcertificate",
        "unknownca",
        "handshake failure",
        "decrypterror",
    ]) {
        " (the broker refused the client certificate: check ssl.certificate.location and ssl.key.location)"
    } else if has(&["invalidcontenttype", "corrupt message", "eof", "reset"]) {
        " (is the listener TLS? a plaintext listener does not answer a TLS handshake)"
    } else {
        ""
    }
}

/// A topic name as the protocol crate spells it.
pub fn topic_name(topic: &str) -> kafka_protocol::messages::TopicName {
    kafka_protocol::messages::TopicName(StrBytes::from_string(topic.to_string()))
}

fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("every request type has a known API key")
}

/// Where the leader of `topic`/`partition` listens, asking each of `servers` in turn.
/// Returns a connection to the leader (reusing the bootstrap connection when it is
/// the leader).
pub async fn connect_leader(
    servers: &[String],
    client_id: &str,
    transport: &crate::kafka::tls::Transport,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Connection, LeaderError> {
    let (conn, metadata) =
        bootstrap_metadata(servers, client_id, transport, topic, timeout).await?;
    let leader = leader_address(&metadata, topic, partition)?;
    if leader == conn.addr() {
        return Ok(conn);
    }
    drop(conn);
    match tokio::time::timeout(timeout, Connection::open(&leader, client_id, transport)).await {
        Ok(result) => result.map_err(LeaderError::Wire),
        Err(_) => Err(LeaderError::Timeout(leader)),
    }
}

/// The metadata of `topic`, from the first of `servers` that answers within `timeout`,
/// and the connection that answered.
pub async fn bootstrap_metadata(
    servers: &[String],
    client_id: &str,
    transport: &crate::kafka::tls::Transport,
    topic: &str,
    timeout: Duration,
) -> Result<(Connection, MetadataResponse), LeaderError> {
    let mut last = None;
    for server in servers {
        let attempt = async {
            let mut conn = Connection::open(server, client_id, transport).await?;
            let metadata = conn.metadata(topic).await?;
            Ok::<_, WireError>((conn, metadata))
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(pair)) => return Ok(pair),
            Ok(Err(e)) => last = Some(LeaderError::Wire(e)),
            Err(_) => last = Some(LeaderError::Timeout(server.clone())),
        }
    }
    Err(last.unwrap_or(LeaderError::NoServers))
}

/// Why the leader of a partition could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// A connection failed.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A server did not answer in time.
    #[error("{0} did not answer in time")]
    Timeout(String),
    /// The broker answered the metadata request with an error.
    #[error("metadata of {topic}/{partition}: {error}")]
    Broker {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The broker's error.
        error: kafka_protocol::ResponseError,
    },
    /// The partition has no leader right now, or the metadata does not name it.
    #[error("{topic}/{partition} has no leader in the cluster's metadata")]
    NoLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// No bootstrap server was configured.
    #[error("no bootstrap server")]
    NoServers,
}

impl LeaderError {
    /// Whether asking again later can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            LeaderError::Wire(e) => e.is_transient(),
            LeaderError::Broker { error, .. } => error.is_retriable(),
            LeaderError::Timeout(_) | LeaderError::NoLeader { .. } => true,
            LeaderError::NoServers => false,
        }
    }
}

/// `host:port` of the leader of `topic`/`partition` in `metadata`.
pub(crate) fn leader_address(
    metadata: &MetadataResponse,
    topic: &str,
    partition: i32,
) -> Result<String, LeaderError> {
    leader_of(metadata, topic, partition).map(|(_, addr)| addr)
}

/// The node id and `host:port` of the leader of `topic`/`partition` in `metadata`.
pub(crate) fn leader_of(
    metadata: &MetadataResponse,
    topic: &str,
    partition: i32,
) -> Result<(i32, String), LeaderError> {
    let no_leader = || LeaderError::NoLeader {
        topic: topic.to_string(),
        partition,
    };
    let t = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| &*n.0 == topic))
        .ok_or_else(no_leader)?;
    let broker_error = |code| {
        kafka_protocol::ResponseError::try_from_code(code).map(|error| LeaderError::Broker {
            topic: topic.to_string(),
            partition,
            error,
        })
    };
    if let Some(e) = broker_error(t.error_code) {
        return Err(e);
    }
    let p = t
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .ok_or_else(no_leader)?;
    if let Some(e) = broker_error(p.error_code) {
        return Err(e);
    }
    let broker = metadata
        .brokers
        .iter()
        .find(|b| b.node_id == p.leader_id)
        .ok_or_else(no_leader)?;
    Ok((p.leader_id.0, format!("{}:{}", &*broker.host, broker.port)))
}

/// Partition count of each topic in a metadata answer.
pub fn topic_partitions(metadata: &MetadataResponse) -> BTreeMap<String, usize> {
    metadata
        .topics
        .iter()
        .filter_map(|t| Some((t.name.as_ref()?.0.to_string(), t.partitions.len())))
        .collect()
}

/// A TCP connection to `addr` tunnelled through the SOCKS5 proxy at `proxy` (no proxy
/// authentication; the proxy resolves the broker's name).
async fn through_proxy(addr: &str, proxy: &str) -> Result<TcpStream, WireError> {
    let fail = |reason: String| WireError::Proxy {
        addr: addr.to_owned(),
        proxy: proxy.to_owned(),
        reason,
    };
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(host, port)| {
            Some((
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>().ok()?,
            ))
        })
        .ok_or_else(|| fail("the broker address is not host:port".into()))?;
    let stream = TcpStream::connect(proxy).await.map_err(|e| {
        fail(format!(
            "cannot connect to the proxy ({e}); check proxy.url"
        ))
    })?;
    // Buffered: each SOCKS message leaves in one write (the crate flushes after each),
    // as proxies that read a message with a single read expect.
    let mut stream = tokio::io::BufStream::new(stream);
    async_socks5::connect(&mut stream, (host.to_owned(), port), None)
        .await
        .map_err(|e| fail(format!("the proxy did not open the tunnel: {e}")))?;
    Ok(stream.into_inner())
}

/// An in-process fake broker for unit tests: it frames requests and responses and lets
/// the test answer each request.
#[cfg(test)]
pub(crate) mod fake {
    use bytes::{BufMut, Bytes, BytesMut};
    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::{ApiKey, ResponseHeader};
    use kafka_protocol::protocol::{decode_request_header_from_buffer, Encodable};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// ApiVersions entries: (API, highest version; lowest 0).
    pub fn versions(apis: &[(ApiKey, i16)]) -> Vec<ApiVersion> {
        apis.iter()
            .map(|&(api, max)| {
                ApiVersion::default()
                    .with_api_key(api as i16)
                    .with_min_version(0)
                    .with_max_version(max)
            })
            .collect()
    }

    /// Listens on a free loopback port and serves every connection made to it:
    /// `answer(own address, api, version, request body, out)` encodes the response body
    /// into `out`. Returns the address.
    pub async fn broker<F>(answer: F) -> std::net::SocketAddr
    where
        F: FnMut(std::net::SocketAddr, ApiKey, i16, Bytes, &mut BytesMut) + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = std::sync::Arc::new(std::sync::Mutex::new(answer));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, addr, std::sync::Arc::clone(&answer)));
            }
        });
        addr
    }

    async fn serve<F>(
        mut stream: tokio::net::TcpStream,
        addr: std::net::SocketAddr,
        answer: std::sync::Arc<std::sync::Mutex<F>>,
    ) where
        F: FnMut(std::net::SocketAddr, ApiKey, i16, Bytes, &mut BytesMut) + Send + 'static,
    {
        loop {
            let Ok(len) = stream.read_i32().await else {
                return;
            };
            let mut body = BytesMut::zeroed(len as usize);
            stream.read_exact(&mut body).await.unwrap();
            let mut body = body.freeze();
            let header = decode_request_header_from_buffer(&mut body).unwrap();
            let api = ApiKey::try_from(header.request_api_key).unwrap();
            let version = header.request_api_version;
            let mut out = BytesMut::new();
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut out, api.response_header_version(version))
                .unwrap();
            (answer.lock().unwrap())(addr, api, version, body, &mut out);
            let mut frame = BytesMut::new();
            frame.put_i32(out.len() as i32);
            frame.put(out);
            if stream.write_all(&frame).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::BrokerId;

    fn metadata(leader: i32, partition_error: i16) -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(StrBytes::from_static_str("b1"))
                    .with_port(9092),
                MetadataResponseBroker::default()
                    .with_node_id(BrokerId(2))
                    .with_host(StrBytes::from_static_str("b2"))
                    .with_port(9093),
            ])
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(topic_name("t")))
                .with_partitions(vec![MetadataResponsePartition::default()
                    .with_partition_index(3)
                    .with_leader_id(BrokerId(leader))
                    .with_error_code(partition_error)])])
    }

    #[test]
    fn leader_address_names_the_leading_broker() {
        assert_eq!(leader_address(&metadata(2, 0), "t", 3).unwrap(), "b2:9093");
    }

    #[test]
    fn missing_leader_and_broker_errors_are_reported() {
        assert!(matches!(
            leader_address(&metadata(7, 0), "t", 3),
            Err(LeaderError::NoLeader { .. })
        ));
        assert!(matches!(
            leader_address(&metadata(1, 0), "t", 4),
            Err(LeaderError::NoLeader { .. })
        ));
        // LEADER_NOT_AVAILABLE (5) is retriable.
        let e = leader_address(&metadata(1, 5), "t", 3).unwrap_err();
        assert!(e.is_transient(), "{e}");
    }

    mod sasl {
        use std::sync::{Arc, Mutex};

        use bytes::Bytes;
        use kafka_protocol::messages::{SaslAuthenticateResponse, SaslHandshakeResponse};
        use kafka_protocol::protocol::Decodable;

        use super::super::fake;
        use super::*;
        use crate::kafka::access::{Access, SaslMechanism, Secret};
        use crate::kafka::tls::Transport;

        /// A broker enabling `enabled`, whose only user is alice/secret (PLAIN); it
        /// records the authentication bytes it received.
        async fn sasl_broker(enabled: &'static str, seen: Arc<Mutex<Vec<Bytes>>>) -> String {
            fake::broker(move |_, api, version, mut body, out| match api {
                ApiKey::ApiVersions => ApiVersionsResponse::default()
                    .with_api_keys(fake::versions(&[
                        (ApiKey::SaslHandshake, 1),
                        (ApiKey::SaslAuthenticate, 2),
                    ]))
                    .encode(out, version)
                    .unwrap(),
                ApiKey::SaslHandshake => {
                    let request = SaslHandshakeRequest::decode(&mut body, version).unwrap();
                    let code = if request.mechanism.as_str() == enabled {
                        0
                    } else {
                        33
                    };
                    SaslHandshakeResponse::default()
                        .with_error_code(code)
                        .with_mechanisms(vec![StrBytes::from_static_str(enabled)])
                        .encode(out, version)
                        .unwrap()
                }
                ApiKey::SaslAuthenticate => {
                    let request = SaslAuthenticateRequest::decode(&mut body, version).unwrap();
                    let good = request.auth_bytes.as_ref() == b"\0alice\0secret";
                    seen.lock().unwrap().push(request.auth_bytes);
                    let mut response = SaslAuthenticateResponse::default();
                    if !good {
                        response = response.with_error_code(58).with_error_message(Some(
                            StrBytes::from_static_str("Invalid username or password"),
                        ));
                    }
                    response.encode(out, version).unwrap()
                }
                other => panic!("unexpected {other:?}"),
            })
            .await
            .to_string()
        }

        fn plain(password: &str) -> Transport {
            let access = Access {
                sasl: Some(crate::kafka::access::SaslSettings {
                    mechanism: SaslMechanism::Plain,
                    username: "alice".into(),
                    password: Secret(password.into()),
                    oauth: None,
                    msk_iam: None,
                }),
                ..Access::default()
            };
            Transport::new(&access, "connector.").unwrap()
        }

        #[tokio::test]
        async fn plain_sends_user_and_password_as_rfc_4616_says() {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let addr = sasl_broker("PLAIN", Arc::clone(&seen)).await;
            Connection::open(&addr, "test", &plain("secret"))
                .await
                .unwrap();
            assert_eq!(
                seen.lock().unwrap().as_slice(),
                [Bytes::from_static(b"\0alice\0secret")]
            );
        }

        #[tokio::test]
        async fn a_refused_password_names_mechanism_user_and_broker_never_the_password() {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let addr = sasl_broker("PLAIN", seen).await;
            let e = Connection::open(&addr, "test", &plain("hunter2"))
                .await
                .unwrap_err();
            let text = e.to_string();
            assert!(!e.is_transient());
            assert!(
                text.contains(&format!(
                    "SASL PLAIN authentication of user \"alice\" with {addr} failed"
                )) && text.contains("Invalid username or password")
                    && !text.contains("hunter2"),
                "{text}"
            );
        }

        /// A PLAIN broker that gives every session `lifetime_ms` and answers Metadata
        /// empty; it records the APIs it was asked, in order.
        async fn limiting_broker(lifetime_ms: i64, asked: Arc<Mutex<Vec<ApiKey>>>) -> String {
            fake::broker(move |_, api, version, _, out| {
                asked.lock().unwrap().push(api);
                match api {
                    ApiKey::ApiVersions => ApiVersionsResponse::default()
                        .with_api_keys(fake::versions(&[
                            (ApiKey::SaslHandshake, 1),
                            (ApiKey::SaslAuthenticate, 2),
                            (ApiKey::Metadata, 12),
                        ]))
                        .encode(out, version)
                        .unwrap(),
                    ApiKey::SaslHandshake => SaslHandshakeResponse::default()
                        .with_mechanisms(vec![StrBytes::from_static_str("PLAIN")])
                        .encode(out, version)
                        .unwrap(),
                    ApiKey::SaslAuthenticate => SaslAuthenticateResponse::default()
                        .with_session_lifetime_ms(lifetime_ms)
                        .encode(out, version)
                        .unwrap(),
                    ApiKey::Metadata => MetadataResponse::default().encode(out, version).unwrap(),
                    other => panic!("unexpected {other:?}"),
                }
            })
            .await
            .to_string()
        }

        fn renewals(addr: &str) -> u64 {
            reauthentications()
                .into_iter()
                .find(|(a, _)| a == addr)
                .map_or(0, |(_, n)| n)
        }

        const AUTHENTICATE: [ApiKey; 2] = [ApiKey::SaslHandshake, ApiKey::SaslAuthenticate];

        #[tokio::test]
        async fn a_session_due_is_renewed_on_the_connection_after_the_answers_in_flight() {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let addr = limiting_broker(400, Arc::clone(&asked)).await;
            let mut conn = Connection::open(&addr, "test", &plain("secret"))
                .await
                .unwrap();
            assert_eq!(conn.session_lifetime(), Some(Duration::from_millis(400)));
            let version = conn.version::<MetadataRequest>(1..=12).unwrap();
            let request = MetadataRequest::default().with_topics(Some(vec![]));
            let first = conn.send(&request, version).await.unwrap();
            let second = conn.send(&request, version).await.unwrap();
            assert!(!conn.session_due());
            // Past 95 % of the lifetime: due whatever the random share.
            tokio::time::sleep(Duration::from_millis(385)).await;
            assert!(conn.session_due());
            let third = conn.send(&request, version).await.unwrap();
            // The answers come back in order, the two read ahead first (each receive
            // checks its correlation id).
            conn.receive(first).await.unwrap();
            conn.receive(second).await.unwrap();
            conn.receive(third).await.unwrap();
            assert!(!conn.session_due());
            let expected = [
                &[ApiKey::ApiVersions][..],
                &AUTHENTICATE,
                &[ApiKey::Metadata, ApiKey::Metadata],
                &AUTHENTICATE,
                &[ApiKey::Metadata],
            ]
            .concat();
            assert_eq!(*asked.lock().unwrap(), expected);
            assert_eq!(renewals(&addr), 1);
        }

        #[tokio::test]
        async fn a_connection_idle_past_its_session_is_opened_again_before_the_request() {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let addr = limiting_broker(200, Arc::clone(&asked)).await;
            let mut conn = Connection::open(&addr, "test", &plain("secret"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            conn.metadata_all().await.unwrap();
            let opening = [&[ApiKey::ApiVersions][..], &AUTHENTICATE].concat();
            let expected = [&opening[..], &opening, &[ApiKey::Metadata]].concat();
            assert_eq!(*asked.lock().unwrap(), expected);
            assert_eq!(renewals(&addr), 0);
        }

        #[tokio::test]
        async fn a_broker_without_a_session_lifetime_is_never_asked_again() {
            let asked = Arc::new(Mutex::new(Vec::new()));
            let addr = limiting_broker(0, Arc::clone(&asked)).await;
            let mut conn = Connection::open(&addr, "test", &plain("secret"))
                .await
                .unwrap();
            assert_eq!(conn.session_lifetime(), None);
            tokio::time::sleep(Duration::from_millis(50)).await;
            conn.metadata_all().await.unwrap();
            conn.metadata_all().await.unwrap();
            assert_eq!(asked.lock().unwrap().len(), 5);
        }

        #[tokio::test]
        async fn a_mechanism_the_broker_does_not_enable_lists_the_ones_it_does() {
            let seen = Arc::new(Mutex::new(Vec::new()));
            let addr = sasl_broker("SCRAM-SHA-512", Arc::clone(&seen)).await;
            let text = Connection::open(&addr, "test", &plain("secret"))
                .await
                .unwrap_err()
                .to_string();
            assert!(
                text.contains("does not enable PLAIN; it offers SCRAM-SHA-512"),
                "{text}"
            );
            assert!(seen.lock().unwrap().is_empty(), "no credentials were sent");
        }
    }
}
#[cfg(test)]
mod size {
    /// Every start-up, fetch and produce path holds a connection attempt in its future:
    /// one that grows (the AWS SDK's configuration loading was 11 KiB of it, before it
    /// was boxed) makes the futures of whole tasks overflow a worker thread's stack
    /// in debug builds.
    #[test]
    fn a_connection_attempt_stays_small() {
        let transport = crate::kafka::tls::Transport::default();
        let attempt = super::Connection::open("127.0.0.1:1", "test", &transport);
        let size = std::mem::size_of_val(&attempt);
        assert!(size < 4096, "Connection::open's future takes {size} bytes");
    }
}
