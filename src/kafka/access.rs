//! How a cluster is reached, as settings: `security.protocol`, `ssl.*`, `sasl.*` and
//! `proxy.url` after the config has parsed them. Plain data: reading the PEM files and
//! building the TLS configuration is [`super::tls`]'s.

/// How one cluster is reached: `security.protocol`, `ssl.*`, `sasl.*` and `proxy.url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// TLS (`SSL` and `SASL_SSL`).
    pub ssl: Option<SslSettings>,
    /// SASL authentication (`SASL_PLAINTEXT` and `SASL_SSL`).
    pub sasl: Option<SaslSettings>,
    /// `host:port` of the SOCKS5 proxy every connection goes through.
    pub proxy: Option<String>,
}

/// A SASL mechanism kafka-direct speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// RFC 4616: user and password sent as they are (use it with TLS).
    Plain,
    /// RFC 7677.
    ScramSha256,
    /// SCRAM with SHA-512.
    ScramSha512,
    /// RFC 7628: an OAuth 2 bearer token, from a token endpoint ([`OAuthSettings`]).
    OAuthBearer,
}

impl SaslMechanism {
    /// The mechanism's name on the wire and in `sasl.mechanism`.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::OAuthBearer => "OAUTHBEARER",
        }
    }
}

/// SASL credentials of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslSettings {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// The user (for Event Hubs, `$ConnectionString`); with OAUTHBEARER, the OAuth
    /// client id (`sasl.oauthbearer.client.id`).
    pub username: String,
    /// The password (resolved if it was a reference); with OAUTHBEARER, the client
    /// secret (`sasl.oauthbearer.client.secret`).
    pub password: Secret,
    /// With OAUTHBEARER and `sasl.oauthbearer.method = oidc`: the token endpoint.
    pub oauth: Option<OAuthSettings>,
    /// With OAUTHBEARER and `sasl.oauthbearer.method = aws_msk_iam`: Amazon MSK's IAM
    /// tokens (`username` then describes them; `password` is empty).
    pub msk_iam: Option<crate::kafka::msk_iam::MskIamSettings>,
}

/// OAUTHBEARER's token source: the client-credentials grant at a token endpoint
/// (`sasl.oauthbearer.*`, librdkafka's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthSettings {
    /// `sasl.oauthbearer.token.endpoint.url`.
    pub token_endpoint: String,
    /// `sasl.oauthbearer.scope`, if set.
    pub scope: Option<String>,
    /// `sasl.oauthbearer.extensions`: `key=value` pairs sent to the broker beside the
    /// token (Confluent Cloud's `logicalCluster`, `identityPoolId`).
    pub extensions: Vec<(String, String)>,
}

/// TLS settings of one cluster (docs/configuration.md, `ssl.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SslSettings {
    /// CA certificates: a PEM file or inline PEM; `None`: the system trust store.
    pub ca_location: Option<String>,
    /// Client certificate chain (mutual TLS).
    pub certificate_location: Option<String>,
    /// Its private key (a path or the key itself: never printed).
    pub key_location: Option<Secret>,
    /// Whether the broker's certificate must name the address connected to.
    pub verify_hostname: bool,
}

/// What a secret is shown as.
pub const HIDDEN: &str = "[hidden]";

/// A secret value: its `Debug` output is [`HIDDEN`], so printing a config never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl Secret {
    /// The value itself, for the one place that must compare or send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(HIDDEN)
    }
}

/// A setting of [`Access`] that cannot be used; the config reports it under the key's
/// full name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// A required key is absent: the key, and what to put there.
    #[error("missing required key `{0}`: {1}")]
    Missing(String, &'static str),
    /// A value that cannot be used: the key, the value given (secrets as [`HIDDEN`]),
    /// and what the key accepts.
    #[error("invalid value {1:?} for `{0}`: expected {2}")]
    Invalid(String, String, String),
}
