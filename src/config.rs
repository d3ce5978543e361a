//! Service and connector configuration: loading, validation and defaults.
//!
//! A config file (TOML, or JSON when its name ends in `.json`) is flattened into
//! Kafka-style dotted keys, so `kafka.bootstrap.servers = "…"` under `[connector]` reads
//! as `connector.kafka.bootstrap.servers`. `--set key=value` overrides any key. Every
//! key is checked at load time: an unknown key or a bad value is refused with the key
//! named and the accepted values listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::kafka::access::{
    Access, AccessError, OAuthSettings, SaslMechanism, SaslSettings, Secret, SslSettings, HIDDEN,
};
pub use crate::kafka::produce::Compression;
use crate::wal::SyncPolicy;

impl From<AccessError> for ConfigError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Missing(key, hint) => ConfigError::Missing { key, hint },
            AccessError::Invalid(key, value, expected) => ConfigError::Invalid {
                key,
                value,
                expected,
            },
        }
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// The file is not valid TOML/JSON.
    #[error("config file {path} is not valid {format}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// TOML or JSON.
        format: &'static str,
        /// Parser message.
        message: String,
    },
    /// A `--set` argument without `=`.
    #[error("--set {0:?} is not of the form key=value")]
    BadOverride(String),
    /// A required key is absent.
    #[error("missing required key `{key}`: {hint}")]
    Missing {
        /// The key.
        key: String,
        /// What to put there.
        hint: &'static str,
    },
    /// A value outside what the key accepts.
    #[error("invalid value {value:?} for `{key}`: expected {expected}")]
    Invalid {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What the key accepts.
        expected: String,
    },
    /// A key this version does not know.
    #[error("unknown key `{key}`; {hint}")]
    Unknown {
        /// The key.
        key: String,
        /// The closest known key, or every accepted key.
        hint: String,
    },
    /// A value this version recognises but cannot act on yet.
    #[error("`{key}` = {value:?} is not supported yet: {reason}")]
    NotSupported {
        /// The key.
        key: String,
        /// The value given.
        value: String,
        /// What is supported.
        reason: &'static str,
    },
}

/// Value format of the source topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Bytes forwarded as they are, nothing checked.
    Bytes,
    /// UTF-8 text, forwarded as it is.
    String,
    /// JSON values.
    Json,
}

/// Where to start a partition that has no checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The oldest record still kept.
    Earliest,
    /// The end of the partition: only records written from now on.
    Latest,
    /// No automatic choice: a partition without a position, or whose position is no
    /// longer in the source partition (records removed by retention before they were
    /// copied), stops with an error until its offset is reset through the API.
    None,
}

/// One connector: which external topics to copy and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorConfig {
    /// Unique connector name.
    pub name: String,
    /// `host:port` of the external cluster's brokers.
    pub bootstrap_servers: Vec<String>,
    /// Prefix of internal topic names: `<prefix>.<topic>`.
    pub topic_prefix: String,
    /// External topics, `topic.include.list` then `topic.include.list.user.defined`.
    pub topics: Vec<String>,
    /// Value format.
    pub format: Format,
    /// Whether JSON values carry a schema.
    pub schemas_enable: bool,
    /// Start of a partition without checkpoint.
    pub auto_offset_reset: OffsetReset,
    /// Dead-letter topic on the internal cluster (`<topic.prefix>.dlq` by default).
    pub dead_letter_topic: String,
    /// The consumer group on the external cluster the connector commits its stored
    /// positions to (`kafka-direct-<name>` by default).
    pub group_id: String,
    /// How often the stored positions are committed to `group_id`.
    pub offset_flush_interval: Duration,
    /// Source consumer groups whose offsets are translated and committed to the same
    /// group on the internal cluster: regular expressions matching whole group ids.
    pub groups_sync: Vec<String>,
    /// How often those groups are synced.
    pub groups_sync_interval: Duration,
    /// The `connector.*` keys as given (without the prefix), secrets replaced by
    /// [`HIDDEN`]: what the API shows as the connector's config.
    pub settings: BTreeMap<String, String>,
    /// How the external cluster is reached (TLS, SASL, proxy).
    pub access: Access,
}

impl ServiceConfig {
    /// The connector the file declares, for commands that need one (`check`, `schemas`).
    pub fn file_connector(&self) -> Result<&ConnectorConfig, ConfigError> {
        self.connector.as_ref().ok_or(ConfigError::Missing {
            key: "connector.name".into(),
            hint: "this command needs a connector declared in the config file ([connector] with name, kafka.bootstrap.servers, topic.prefix, topic.include.list)",
        })
    }

    /// Whether this instance's shard runs `partition`.
    pub fn owns(&self, partition: &crate::record::SourcePartition) -> bool {
        partition.stable_hash() % u64::from(self.shard_count) == u64::from(self.shard_index)
    }
}

impl ConnectorConfig {
    /// Name of the internal topic a source topic is copied to.
    pub fn internal_topic(&self, source_topic: &str) -> String {
        format!("{}.{}", self.topic_prefix, source_topic)
    }
}

/// The whole service: where it keeps its WAL, the internal cluster, tuning, and the connector.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceConfig {
    /// Data dir holding the WAL.
    pub data_dir: PathBuf,
    /// `host:port` of the internal cluster's brokers.
    pub internal_bootstrap_servers: Vec<String>,
    /// Replication factor of internal topics the service creates (-1: broker default).
    pub internal_replication_factor: i16,
    /// Compression of produced batches.
    pub internal_compression: Compression,
    /// Topic configs set on every internal topic over those carried from its source
    /// (`internal.topic.config.<name>`).
    pub internal_topic_configs: BTreeMap<String, String>,
    /// How the internal cluster is reached (`internal.security.protocol`, ...).
    pub internal_access: Access,
    /// WAL cap in bytes of unforwarded entries.
    pub wal_max_bytes: u64,
    /// WAL durability.
    pub wal_sync: SyncPolicy,
    /// sled cache size.
    pub wal_cache_bytes: u64,
    /// Max bytes per partition fetch.
    pub fetch_max_bytes: i32,
    /// Max time the broker holds a fetch waiting for data.
    pub fetch_max_wait: Duration,
    /// Connections to each broker for fetching (external cluster) and for producing
    /// (internal cluster): the partitions a broker leads spread over them.
    pub connections_per_broker: usize,
    /// Max records per produce request.
    pub forward_batch_max_records: usize,
    /// Max bytes per produce request.
    pub forward_batch_max_bytes: usize,
    /// Whether the produce path uses an idempotent producer where the internal cluster
    /// offers one (`internal.enable.idempotence`).
    pub internal_idempotence: bool,
    /// Produce requests per partition in flight with idempotence (1 to 5).
    pub internal_max_in_flight: usize,
    /// Bound on every request to a broker.
    pub request_timeout: Duration,
    /// Interval of the progress log line.
    pub progress_interval: Duration,
    /// How often the external cluster's metadata is read for new partitions and for
    /// configured topics that appeared or disappeared.
    pub metadata_refresh_interval: Duration,
    /// This instance's shard: it runs the partitions whose stable hash modulo
    /// `shard_count` is `shard_index`.
    pub shard_index: u32,
    /// Number of instances sharing each connector's partitions.
    pub shard_count: u32,
    /// How often each connector's forwarded total is sampled for the status page's chart.
    pub ui_sample_interval: Duration,
    /// Address of the HTTP API (`None`: no API).
    pub api_listen: Option<String>,
    /// Bearer token every API request must carry (`None`: no token asked).
    pub api_token: Option<Secret>,
    /// The connector the file declares (`connector.*` keys), if any; more can be
    /// created through the API.
    pub connector: Option<ConnectorConfig>,
}

struct Key {
    name: &'static str,
    default: Option<&'static str>,
    doc: &'static str,
}

const SERVICE_KEYS: &[Key] = &[
    Key {
        name: "data.dir",
        default: None,
        doc: "directory of the WAL (one process at a time)",
    },
    Key {
        name: "internal.bootstrap.servers",
        default: None,
        doc: "host:port list of the internal cluster",
    },
    Key {
        name: "internal.replication.factor",
        default: Some("-1"),
        doc: "replication factor of created internal topics; -1 = broker default",
    },
    Key {
        name: "internal.security.protocol",
        default: Some("PLAINTEXT"),
        doc: "as connector.security.protocol, for the internal cluster",
    },
    Key {
        name: "internal.sasl.mechanism",
        default: Some("PLAIN"),
        doc: "as connector.sasl.mechanism, for the internal cluster",
    },
    Key {
        name: "internal.sasl.username",
        default: Some(""),
        doc: "as connector.sasl.username, for the internal cluster",
    },
    Key {
        name: "internal.sasl.password",
        default: Some(""),
        doc: "as connector.sasl.password, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.method",
        default: Some("oidc"),
        doc: "as connector.sasl.oauthbearer.method, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.aws.region",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.aws.region, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.aws.profile",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.aws.profile, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.token.endpoint.url",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.token.endpoint.url, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.client.id",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.client.id, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.client.secret",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.client.secret, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.scope",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.scope, for the internal cluster",
    },
    Key {
        name: "internal.sasl.oauthbearer.extensions",
        default: Some(""),
        doc: "as connector.sasl.oauthbearer.extensions, for the internal cluster",
    },
    Key {
        name: "internal.ssl.ca.location",
        default: Some(""),
        doc: "as connector.ssl.ca.location, for the internal cluster",
    },
    Key {
        name: "internal.ssl.certificate.location",
        default: Some(""),
        doc: "as connector.ssl.certificate.location, for the internal cluster",
    },
    Key {
        name: "internal.ssl.key.location",
        default: Some(""),
        doc: "as connector.ssl.key.location, for the internal cluster",
    },
    Key {
        name: "internal.ssl.endpoint.identification.algorithm",
        default: Some("https"),
        doc: "as connector.ssl.endpoint.identification.algorithm, for the internal cluster",
    },
    Key {
        name: "internal.compression",
        default: Some("none"),
        doc: "none | gzip | lz4 | snappy | zstd",
    },
    Key {
        name: "internal.topic.config.<name>",
        default: Some(""),
        doc: "a topic config set on every internal topic kafka-direct creates or syncs, over what the source topic has (e.g. internal.topic.config.retention.ms=2592000000)",
    },
    Key {
        name: "wal.max.bytes",
        default: Some("1073741824"),
        doc: "cap on unforwarded WAL bytes; fetchers wait above it",
    },
    Key {
        name: "wal.sync",
        default: Some("fsync"),
        doc: "fsync (survives power loss) | flush (survives a process crash)",
    },
    Key {
        name: "wal.cache.bytes",
        default: Some("67108864"),
        doc: "sled page cache",
    },
    Key {
        name: "fetch.max.bytes",
        default: Some("1048576"),
        doc: "max bytes per partition fetch",
    },
    Key {
        name: "fetch.max.wait.ms",
        default: Some("500"),
        doc: "how long a broker may hold a fetch for data",
    },
    Key {
        name: "connections.per.broker",
        default: Some("1"),
        doc: "connections to each broker for fetching (external) and for producing (internal), shared by the partitions it leads",
    },
    Key {
        name: "forward.batch.max.records",
        default: Some("10000"),
        doc: "max records per produce request",
    },
    Key {
        name: "forward.batch.max.bytes",
        default: Some("1048576"),
        doc: "max bytes per produce request",
    },
    Key {
        name: "internal.enable.idempotence",
        default: Some("true"),
        doc: "produce with an idempotent producer where the internal cluster offers one",
    },
    Key {
        name: "internal.max.in.flight.requests.per.connection",
        default: Some("5"),
        doc: "produce requests per partition in flight with idempotence (1 to 5)",
    },
    Key {
        name: "request.timeout.ms",
        default: Some("30000"),
        doc: "bound on every broker request",
    },
    Key {
        name: "progress.interval.ms",
        default: Some("5000"),
        doc: "interval of the progress log line; 0 = off",
    },
    Key {
        name: "topic.metadata.refresh.interval.ms",
        default: Some("30000"),
        doc: "how often new partitions (and configured topics created or deleted) are looked for; new ones start from earliest",
    },
    Key {
        name: "shard.count",
        default: Some("1"),
        doc: "instances sharing each connector's partitions (each with its own data.dir)",
    },
    Key {
        name: "shard.index",
        default: Some("0"),
        doc: "this instance's shard, 0 to shard.count-1 (a StatefulSet pod's ordinal)",
    },
    Key {
        name: "api.listen",
        default: Some("127.0.0.1:8083"),
        doc: "host:port of the HTTP API (REST, /metrics, /health); port 0 = any free port; none = no API",
    },
    Key {
        name: "ui.sample.interval.ms",
        default: Some("5000"),
        doc: "how often the status page (/ui) samples each connector's forwarded records for its chart (72 samples kept)",
    },
    Key {
        name: "api.token",
        default: Some(""),
        doc: "bearer token required on every API request (or the env var KAFKA_DIRECT_API_TOKEN); empty = none",
    },
];

/// Keys whose values are secrets: never printed, logged or returned by the API.
pub const SECRET_KEYS: &[&str] = &[
    "connector.sasl.password",
    "connector.sasl.oauthbearer.client.secret",
    "connector.ssl.key.location",
    "internal.sasl.password",
    "internal.sasl.oauthbearer.client.secret",
    "internal.ssl.key.location",
    "api.token",
];

/// Whether `value` is a `${env:NAME}` or `${file:/path}` reference (resolved when the
/// config is built; the reference itself is not secret and is shown as given).
pub fn is_reference(value: &str) -> bool {
    let value = value.trim();
    value.ends_with('}') && (value.starts_with("${env:") || value.starts_with("${file:"))
}

const CONNECTOR_KEYS: &[Key] = &[
    Key {
        name: "name",
        default: None,
        doc: "unique connector name",
    },
    Key {
        name: "kafka.bootstrap.servers",
        default: None,
        doc: "host:port list of the external cluster",
    },
    Key {
        name: "topic.prefix",
        default: None,
        doc: "prefix of internal topic names",
    },
    Key {
        name: "topic.include.list",
        default: Some(""),
        doc: "comma-separated external topics",
    },
    Key {
        name: "topic.include.list.user.defined",
        default: Some(""),
        doc: "more topics, appended",
    },
    Key {
        name: "format",
        default: Some("string"),
        doc: "string (UTF-8 checked) | json | bytes (copied unchecked)",
    },
    Key {
        name: "schemas.enable",
        default: Some("false"),
        doc: "true | false (json only)",
    },
    Key {
        name: "auto.offset.reset",
        default: Some("earliest"),
        doc: "earliest | latest | none: where a partition without a position starts, and where it goes on when its position was removed by retention before it was copied (none: it stops with an error naming the lost offsets)",
    },
    Key {
        name: "security.protocol",
        default: Some("PLAINTEXT"),
        doc: "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL",
    },
    Key {
        name: "sasl.mechanism",
        default: Some("PLAIN"),
        doc: "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 (with SASL_PLAINTEXT or SASL_SSL)",
    },
    Key {
        name: "sasl.username",
        default: Some(""),
        doc: "SASL user; may be a ${env:NAME} or ${file:/path} reference",
    },
    Key {
        name: "sasl.password",
        default: Some(""),
        doc: "SASL password, never printed; best given as ${env:NAME} or ${file:/path}",
    },
    Key {
        name: "sasl.oauthbearer.method",
        default: Some("oidc"),
        doc: "oidc: OAUTHBEARER tokens by the client-credentials grant at sasl.oauthbearer.token.endpoint.url; aws_msk_iam: Amazon MSK's IAM tokens, signed with the AWS SDK's default credentials",
    },
    Key {
        name: "sasl.oauthbearer.aws.region",
        default: Some(""),
        doc: "aws_msk_iam: the cluster's AWS region (e.g. us-east-1); default: the AWS SDK's region chain (AWS_REGION, the profile's region)",
    },
    Key {
        name: "sasl.oauthbearer.aws.profile",
        default: Some(""),
        doc: "aws_msk_iam: the profile of the shared AWS config and credentials files; default: AWS_PROFILE, else default",
    },
    Key {
        name: "sasl.oauthbearer.token.endpoint.url",
        default: Some(""),
        doc: "OAUTHBEARER: the OAuth token endpoint (http:// or https://)",
    },
    Key {
        name: "sasl.oauthbearer.client.id",
        default: Some(""),
        doc: "OAUTHBEARER: the OAuth client id; may be a ${env:NAME} or ${file:/path} reference",
    },
    Key {
        name: "sasl.oauthbearer.client.secret",
        default: Some(""),
        doc: "OAUTHBEARER: the OAuth client secret, never printed; best given as ${env:NAME} or ${file:/path}",
    },
    Key {
        name: "sasl.oauthbearer.scope",
        default: Some(""),
        doc: "OAUTHBEARER: the scope asked for (space-separated), if the endpoint wants one",
    },
    Key {
        name: "sasl.oauthbearer.extensions",
        default: Some(""),
        doc: "OAUTHBEARER: key=value,... sent to the broker beside the token (Confluent Cloud: logicalCluster=lkc-...,identityPoolId=pool-...)",
    },
    Key {
        name: "proxy.url",
        default: Some(""),
        doc: "socks5://host:port: reach the brokers through this SOCKS5 proxy (no proxy authentication)",
    },
    Key {
        name: "ssl.ca.location",
        default: Some(""),
        doc: "CA certificate(s) verifying the brokers, a PEM file or inline PEM; default: the system trust store",
    },
    Key {
        name: "ssl.certificate.location",
        default: Some(""),
        doc: "client certificate chain for mutual TLS, a PEM file or inline PEM",
    },
    Key {
        name: "ssl.key.location",
        default: Some(""),
        doc: "private key of ssl.certificate.location (PKCS#8, PKCS#1 or SEC1 PEM), a file or inline",
    },
    Key {
        name: "ssl.endpoint.identification.algorithm",
        default: Some("https"),
        doc: "https: the broker's certificate must name the address connected to; none: any name (logged as a warning)",
    },
    Key {
        name: "errors.deadletterqueue.topic.name",
        default: Some(""),
        doc: "dead-letter topic on the internal cluster (default <topic.prefix>.dlq)",
    },
    Key {
        name: "group.id",
        default: Some(""),
        doc: "consumer group on the external cluster holding the connector's stored positions, for lag tools (default kafka-direct-<name>)",
    },
    Key {
        name: "offset.flush.interval.ms",
        default: Some("5000"),
        doc: "how often the stored positions are committed to group.id (and once at a clean stop)",
    },
    Key {
        name: "groups.sync",
        default: Some(""),
        doc: "comma-separated regular expressions of source consumer groups whose committed offsets are translated exactly and committed to the same groups on the internal cluster, while those have no active members there (consumer failover)",
    },
    Key {
        name: "groups.sync.interval.ms",
        default: Some("10000"),
        doc: "how often groups.sync translates and commits",
    },
];

const CONNECTOR_PREFIX: &str = "connector.";

/// The prefix of the service keys that set topic configs of internal topics.
const TOPIC_CONFIG_PREFIX: &str = "internal.topic.config.";

/// Flat `key → value` view of a config file plus overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig(BTreeMap<String, String>);

impl RawConfig {
    /// Reads and flattens a TOML or JSON file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json_str(&text).map_err(|message| ConfigError::Syntax {
                path: path.to_owned(),
                format: "JSON",
                message,
            })
        } else {
            Self::from_toml_str(&text).map_err(|message| ConfigError::Syntax {
                path: path.to_owned(),
                format: "TOML",
                message,
            })
        }
    }

    /// Flattens JSON text. JSON maps onto TOML's data model (but for null), so one
    /// flattening serves both.
    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let value: toml::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self::from_value(&value))
    }

    /// Flattens TOML text.
    pub fn from_toml_str(text: &str) -> Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let mut message = e.to_string();
            if message.contains("attempted to extend") {
                message.push_str(
                    "hint: a key that extends another key must be quoted, e.g. \"topic.include.list.user.defined\" = \"more\"",
                );
            }
            message
        })?;
        Ok(Self::from_value(&toml::Value::Table(table)))
    }

    fn from_value(value: &toml::Value) -> Self {
        let mut out = BTreeMap::new();
        flatten_toml("", value, &mut out);
        Self(out)
    }

    /// Applies `key=value` overrides.
    pub fn apply_overrides(&mut self, overrides: &[String]) -> Result<(), ConfigError> {
        for item in overrides {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ConfigError::BadOverride(item.clone()))?;
            self.0
                .insert(key.trim().to_owned(), value.trim().to_owned());
        }
        Ok(())
    }

    /// Every key and value.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter()
    }

    /// The keys under `prefix` (given without it), secrets replaced by [`HIDDEN`].
    pub fn redacted(&self, prefix: &str) -> BTreeMap<String, String> {
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let short = k.strip_prefix(prefix)?;
                let value = if SECRET_KEYS.contains(&k.as_str()) && !is_reference(v) {
                    HIDDEN.to_owned()
                } else {
                    v.clone()
                };
                Some((short.to_owned(), value))
            })
            .collect()
    }

    /// Sets one key.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.0.insert(key.to_owned(), value.into());
    }

    /// Validates everything and builds the service config.
    pub fn build(&self) -> Result<ServiceConfig, ConfigError> {
        for key in self.0.keys() {
            let known = match key.strip_prefix(CONNECTOR_PREFIX) {
                Some(rest) => CONNECTOR_KEYS.iter().any(|k| k.name == rest),
                None => {
                    SERVICE_KEYS.iter().any(|k| k.name == key)
                        || key
                            .strip_prefix(TOPIC_CONFIG_PREFIX)
                            .is_some_and(|name| !name.is_empty() && !name.contains('<'))
                }
            };
            if !known {
                let known = known_keys();
                let hint = match closest(key, known.iter().map(String::as_str)) {
                    Some(k) => format!("did you mean `{k}`? (`kafka-direct keys` lists every key)"),
                    None => format!("known keys: {}", known.join(", ")),
                };
                return Err(ConfigError::Unknown {
                    key: key.clone(),
                    hint,
                });
            }
        }
        let s = Lookup {
            raw: self,
            prefix: "",
            keys: SERVICE_KEYS,
        };
        let c = Lookup {
            raw: self,
            prefix: CONNECTOR_PREFIX,
            keys: CONNECTOR_KEYS,
        };

        let declares_connector = self.0.keys().any(|k| k.starts_with(CONNECTOR_PREFIX));
        let connector = if declares_connector {
            Some(build_connector(&c)?)
        } else {
            None
        };
        let config = ServiceConfig {
            data_dir: PathBuf::from(
                s.required("data.dir", "a directory for the WAL, e.g. ./data")?,
            ),
            internal_bootstrap_servers: s.servers("internal.bootstrap.servers")?,
            internal_replication_factor: s.number(
                "internal.replication.factor",
                -1,
                i16::MAX as i64,
            )? as i16,
            internal_access: access(&s, "internal.")?,
            internal_compression: s.choice(
                "internal.compression",
                &[
                    ("none", Compression::None),
                    ("gzip", Compression::Gzip),
                    ("lz4", Compression::Lz4),
                    ("snappy", Compression::Snappy),
                    ("zstd", Compression::Zstd),
                ],
            )?,
            internal_topic_configs: self
                .0
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.strip_prefix(TOPIC_CONFIG_PREFIX)?.to_owned(), v.clone()))
                })
                .collect(),
            wal_max_bytes: s.number("wal.max.bytes", 1, i64::MAX)? as u64,
            wal_sync: s.choice(
                "wal.sync",
                &[("fsync", SyncPolicy::Fsync), ("flush", SyncPolicy::Flush)],
            )?,
            wal_cache_bytes: s.number("wal.cache.bytes", 1 << 20, i64::MAX)? as u64,
            fetch_max_bytes: s.number("fetch.max.bytes", 1024, 64 << 20)? as i32,
            fetch_max_wait: Duration::from_millis(s.number("fetch.max.wait.ms", 0, 60_000)? as u64),
            connections_per_broker: s.number("connections.per.broker", 1, 64)? as usize,
            forward_batch_max_records: s.number("forward.batch.max.records", 1, 1_000_000)?
                as usize,
            forward_batch_max_bytes: s.number("forward.batch.max.bytes", 1024, 64 << 20)? as usize,
            internal_idempotence: s.choice(
                "internal.enable.idempotence",
                &[("true", true), ("false", false)],
            )?,
            internal_max_in_flight: s.number(
                "internal.max.in.flight.requests.per.connection",
                1,
                5,
            )? as usize,
            request_timeout: Duration::from_millis(
                s.number("request.timeout.ms", 100, 3_600_000)? as u64
            ),
            progress_interval: Duration::from_millis(s.number(
                "progress.interval.ms",
                0,
                3_600_000,
            )? as u64),
            metadata_refresh_interval: Duration::from_millis(s.number(
                "topic.metadata.refresh.interval.ms",
                100,
                86_400_000,
            )? as u64),
            shard_count: s.number("shard.count", 1, 1024)? as u32,
            shard_index: {
                let count = s.number("shard.count", 1, 1024)?;
                s.number("shard.index", 0, count - 1)? as u32
            },
            ui_sample_interval: Duration::from_millis(s.number(
                "ui.sample.interval.ms",
                100,
                3_600_000,
            )? as u64),
            api_listen: api_listen(&s)?,
            api_token: Some(s.resolved("api.token")?)
                .filter(|t| !t.is_empty())
                .or_else(|| std::env::var("KAFKA_DIRECT_API_TOKEN").ok())
                .filter(|t| !t.is_empty())
                .map(Secret),
            connector,
        };
        Ok(config)
    }
}

fn build_connector(c: &Lookup<'_>) -> Result<ConnectorConfig, ConfigError> {
    let name = c.required("name", "a unique connector name, e.g. orders-mirror")?;
    if !name.chars().all(is_name_char) {
        return Err(c.invalid("name", &name, "letters, digits, '.', '_' and '-'"));
    }
    let topic_prefix = c.required(
        "topic.prefix",
        "the prefix of internal topic names, e.g. external",
    )?;
    check_topic_name(c, "topic.prefix", &topic_prefix)?;

    let mut topics: Vec<String> = Vec::new();
    for key in ["topic.include.list", "topic.include.list.user.defined"] {
        for topic in c
            .get(key)
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            check_topic_name(c, key, topic)?;
            if !topics.iter().any(|t| t == topic) {
                topics.push(topic.to_owned());
            }
        }
    }
    if topics.is_empty() {
        return Err(ConfigError::Missing {
            key: c.full("topic.include.list"),
            hint: "a comma-separated list of external topics to copy",
        });
    }

    let format = c.choice(
        "format",
        &[
            ("string", Format::String),
            ("json", Format::Json),
            ("bytes", Format::Bytes),
        ],
    )?;
    let schemas_enable = c.choice("schemas.enable", &[("false", false), ("true", true)])?;
    if schemas_enable && format != Format::Json {
        return Err(c.invalid("schemas.enable", "true", "false unless format=json"));
    }
    let access = access(c, "")?;
    let mut dlq = c.get("errors.deadletterqueue.topic.name");
    if dlq.is_empty() {
        dlq = format!("{topic_prefix}.dlq");
    } else {
        check_topic_name(c, "errors.deadletterqueue.topic.name", &dlq)?;
    }
    if let Some(topic) = topics.iter().find(|t| format!("{topic_prefix}.{t}") == dlq) {
        return Err(c.invalid(
            "errors.deadletterqueue.topic.name",
            &dlq,
            format!("a topic other than the internal topic of {topic}"),
        ));
    }

    let mut groups_sync = Vec::new();
    for pattern in c
        .get("groups.sync")
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if let Err(e) = regex::Regex::new(&format!("^(?:{pattern})$")) {
            return Err(c.invalid(
                "groups.sync",
                pattern,
                format!("a regular expression ({e})"),
            ));
        }
        groups_sync.push(pattern.to_owned());
    }
    let group_id = match c.get("group.id") {
        id if id.is_empty() => format!("kafka-direct-{name}"),
        id => id,
    };
    Ok(ConnectorConfig {
        name,
        bootstrap_servers: c.servers("kafka.bootstrap.servers")?,
        topic_prefix,
        topics,
        format,
        schemas_enable,
        auto_offset_reset: c.choice(
            "auto.offset.reset",
            &[
                ("earliest", OffsetReset::Earliest),
                ("latest", OffsetReset::Latest),
                ("none", OffsetReset::None),
            ],
        )?,
        dead_letter_topic: dlq,
        group_id,
        offset_flush_interval: Duration::from_millis(c.number(
            "offset.flush.interval.ms",
            100,
            86_400_000,
        )? as u64),
        groups_sync,
        groups_sync_interval: Duration::from_millis(c.number(
            "groups.sync.interval.ms",
            100,
            86_400_000,
        )? as u64),
        settings: c.raw.redacted(CONNECTOR_PREFIX),
        access,
    })
}

/// How a cluster is reached, from `<key_prefix>security.protocol`, `ssl.*`, `sasl.*`
/// and `proxy.url`. Keys that the protocol would ignore are refused, naming the
/// protocol that uses them.
fn access(c: &Lookup<'_>, key_prefix: &str) -> Result<Access, ConfigError> {
    let key = |k: &str| format!("{key_prefix}{k}");
    let protocol = c.get(&key("security.protocol"));
    let optional = |k: &str| Some(c.get(&key(k))).filter(|v| !v.is_empty());
    let (tls, sasl) = match protocol.to_ascii_uppercase().as_str() {
        "PLAINTEXT" => (false, false),
        "SSL" => (true, false),
        "SASL_PLAINTEXT" => (false, true),
        "SASL_SSL" => (true, true),
        _ => {
            return Err(c.invalid(
                &key("security.protocol"),
                &protocol,
                "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
            ))
        }
    };
    let unused = |keys: &[&str], instead: &str| -> Result<(), ConfigError> {
        match keys.iter().find(|k| optional(k).is_some()) {
            Some(k) => Err(c.invalid(
                &key("security.protocol"),
                &protocol,
                format!("{instead}, since {} is set", c.full(&key(k))),
            )),
            None => Ok(()),
        }
    };
    let ssl_keys = [
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
    ];
    if !tls {
        unused(&ssl_keys, if sasl { "SASL_SSL" } else { "SSL or SASL_SSL" })?;
    }
    if !sasl {
        unused(
            &["sasl.username", "sasl.password"],
            if tls {
                "SASL_SSL"
            } else {
                "SASL_PLAINTEXT or SASL_SSL"
            },
        )?;
    }
    let ssl = match tls {
        true => Some(SslSettings {
            ca_location: optional("ssl.ca.location"),
            certificate_location: optional("ssl.certificate.location"),
            key_location: Some(c.resolved(&key("ssl.key.location"))?)
                .filter(|v| !v.is_empty())
                .map(Secret),
            verify_hostname: c.choice(
                &key("ssl.endpoint.identification.algorithm"),
                &[("https", true), ("none", false)],
            )?,
        }),
        false => None,
    };
    let oauth_keys = [
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.extensions",
        "sasl.oauthbearer.aws.region",
        "sasl.oauthbearer.aws.profile",
    ];
    if !sasl {
        unused(
            &oauth_keys,
            if tls {
                "SASL_SSL"
            } else {
                "SASL_PLAINTEXT or SASL_SSL"
            },
        )?;
    }
    let mechanism = match sasl {
        true => c.choice(
            &key("sasl.mechanism"),
            &[
                ("PLAIN", SaslMechanism::Plain),
                ("SCRAM-SHA-256", SaslMechanism::ScramSha256),
                ("SCRAM-SHA-512", SaslMechanism::ScramSha512),
                ("OAUTHBEARER", SaslMechanism::OAuthBearer),
            ],
        )?,
        false => SaslMechanism::Plain,
    };
    if sasl && mechanism != SaslMechanism::OAuthBearer {
        if let Some(k) = oauth_keys.iter().find(|k| optional(k).is_some()) {
            return Err(c.invalid(
                &key("sasl.mechanism"),
                &c.get(&key("sasl.mechanism")),
                format!("OAUTHBEARER, since {} is set", c.full(&key(k))),
            ));
        }
    }
    let sasl = match sasl {
        true if mechanism == SaslMechanism::OAuthBearer => {
            unused_with_oauth(c, &key)?;
            Some(oauth_settings(c, &key)?)
        }
        true => Some(SaslSettings {
            mechanism,
            oauth: None,
            msk_iam: None,
            username: Some(c.resolved(&key("sasl.username"))?)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing {
                    key: c.full(&key("sasl.username")),
                    hint: "the SASL user (for Azure Event Hubs: $ConnectionString)",
                })?,
            password: Some(c.resolved(&key("sasl.password"))?)
                .filter(|v| !v.is_empty())
                .map(Secret)
                .ok_or(ConfigError::Missing {
                    key: c.full(&key("sasl.password")),
                    hint: "the SASL password, best as ${env:NAME} or ${file:/path}",
                })?,
        }),
        false => None,
    };
    Ok(Access {
        ssl,
        sasl,
        // The external cluster only: the internal one is reached directly.
        proxy: match key_prefix {
            "" => proxy(c, "proxy.url")?,
            _ => None,
        },
    })
}

/// `sasl.username` and `sasl.password` are PLAIN's and SCRAM's: refused with OAUTHBEARER.
fn unused_with_oauth(c: &Lookup<'_>, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    match ["sasl.username", "sasl.password"]
        .iter()
        .find(|k| !c.get(&key(k)).is_empty())
    {
        Some(k) => Err(c.invalid(
            &key("sasl.mechanism"),
            "OAUTHBEARER",
            format!(
                "PLAIN or SCRAM-SHA-256/512, since {} is set (OAUTHBEARER takes sasl.oauthbearer.client.id and sasl.oauthbearer.client.secret)",
                c.full(&key(k))
            ),
        )),
        None => Ok(()),
    }
}

/// OAUTHBEARER's keys (librdkafka's names): the client-credentials grant at
/// `sasl.oauthbearer.token.endpoint.url`.
fn oauth_settings(
    c: &Lookup<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<SaslSettings, ConfigError> {
    let method = c.get(&key("sasl.oauthbearer.method"));
    if method.eq_ignore_ascii_case("aws_msk_iam") {
        return msk_iam_settings(c, key);
    }
    if !method.eq_ignore_ascii_case("oidc") {
        return Err(c.invalid(
            &key("sasl.oauthbearer.method"),
            &method,
            "oidc (tokens by the client-credentials grant at sasl.oauthbearer.token.endpoint.url) or aws_msk_iam (Amazon MSK's IAM tokens)",
        ));
    }
    if let Some(k) = [
        "sasl.oauthbearer.aws.region",
        "sasl.oauthbearer.aws.profile",
    ]
    .iter()
    .find(|k| !c.get(&key(k)).is_empty())
    {
        return Err(c.invalid(
            &key("sasl.oauthbearer.method"),
            &method,
            format!("aws_msk_iam, since {} is set", c.full(&key(k))),
        ));
    }
    let required = |k: &str, hint: &'static str| -> Result<String, ConfigError> {
        Some(c.resolved(&key(k))?)
            .filter(|v| !v.is_empty())
            .ok_or(ConfigError::Missing {
                key: c.full(&key(k)),
                hint,
            })
    };
    let endpoint = required(
        "sasl.oauthbearer.token.endpoint.url",
        "the OAuth token endpoint, e.g. https://idp.example.com/oauth2/token",
    )?;
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err(c.invalid(
            &key("sasl.oauthbearer.token.endpoint.url"),
            &endpoint,
            "an http:// or https:// URL",
        ));
    }
    let client_id = required("sasl.oauthbearer.client.id", "the OAuth client id")?;
    let secret = required(
        "sasl.oauthbearer.client.secret",
        "the OAuth client secret, best as ${env:NAME} or ${file:/path}",
    )?;
    let scope = Some(c.get(&key("sasl.oauthbearer.scope"))).filter(|v| !v.is_empty());
    let mut extensions = Vec::new();
    let listed = c.get(&key("sasl.oauthbearer.extensions"));
    for pair in listed.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        // Kafka's rules: keys of letters, values of printable ASCII, spaces and tabs.
        let valid = pair.split_once('=').filter(|(k, v)| {
            !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphabetic())
                && k != &"auth"
                && !v.is_empty()
                && v.bytes()
                    .all(|b| (0x21..=0x7e).contains(&b) || b == b' ' || b == b'\t')
        });
        let Some((k, v)) = valid else {
            return Err(c.invalid(
                &key("sasl.oauthbearer.extensions"),
                &listed,
                format!("key=value pairs separated by commas, keys of letters only and not `auth`, values of printable ASCII (`{pair}` is not)"),
            ));
        };
        extensions.push((k.to_owned(), v.to_owned()));
    }
    Ok(SaslSettings {
        mechanism: SaslMechanism::OAuthBearer,
        username: client_id,
        password: Secret(secret),
        oauth: Some(OAuthSettings {
            token_endpoint: endpoint,
            scope,
            extensions,
        }),
        msk_iam: None,
    })
}

/// `sasl.oauthbearer.method = aws_msk_iam`: tokens signed with AWS credentials, so none
/// of the token endpoint's keys.
fn msk_iam_settings(
    c: &Lookup<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<SaslSettings, ConfigError> {
    let endpoint_keys = [
        "sasl.oauthbearer.token.endpoint.url",
        "sasl.oauthbearer.client.id",
        "sasl.oauthbearer.client.secret",
        "sasl.oauthbearer.scope",
        "sasl.oauthbearer.extensions",
    ];
    if let Some(k) = endpoint_keys.iter().find(|k| !c.get(&key(k)).is_empty()) {
        return Err(c.invalid(
            &key("sasl.oauthbearer.method"),
            "aws_msk_iam",
            format!(
                "oidc, since {} is set (aws_msk_iam signs its tokens with AWS credentials: no token endpoint, client or extensions)",
                c.full(&key(k))
            ),
        ));
    }
    let optional = |k: &str| Some(c.get(&key(k))).filter(|v| !v.is_empty());
    let region = optional("sasl.oauthbearer.aws.region");
    if let Some(r) = &region {
        let valid = !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(c.invalid(
                &key("sasl.oauthbearer.aws.region"),
                r,
                "an AWS region name, e.g. us-east-1",
            ));
        }
    }
    let settings = crate::kafka::msk_iam::MskIamSettings {
        region,
        profile: optional("sasl.oauthbearer.aws.profile"),
    };
    Ok(SaslSettings {
        mechanism: SaslMechanism::OAuthBearer,
        username: settings.describe(),
        password: Secret(String::new()),
        oauth: None,
        msk_iam: Some(settings),
    })
}

/// `proxy.url`: `socks5://host:port` (or `socks5h://`; names are resolved by the
/// proxy either way) as `host:port`.
fn proxy(c: &Lookup<'_>, key: &str) -> Result<Option<String>, ConfigError> {
    let url = c.get(key);
    if url.is_empty() {
        return Ok(None);
    }
    let Some(rest) = url
        .strip_prefix("socks5://")
        .or_else(|| url.strip_prefix("socks5h://"))
    else {
        return Err(c.invalid(
            key,
            &url,
            "socks5://host:port (only SOCKS5 proxies are supported)",
        ));
    };
    if rest.contains('@') {
        return Err(ConfigError::NotSupported {
            key: c.full(key),
            value: HIDDEN.into(),
            reason: "proxy authentication is not supported: use a proxy that accepts this host without credentials",
        });
    }
    let address = rest.trim_end_matches('/');
    let ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !ok {
        return Err(c.invalid(
            key,
            &url,
            "socks5://host:port, e.g. socks5://bastion.example.com:1080",
        ));
    }
    Ok(Some(address.to_owned()))
}

/// A connector's config given through the API: its keys without the `connector.`
/// prefix (a prefix is accepted too), validated as the file's `[connector]` section is.
pub fn connector_from_settings(
    name: &str,
    settings: &BTreeMap<String, String>,
) -> Result<ConnectorConfig, ConfigError> {
    let mut raw = RawConfig::default();
    for (key, value) in settings {
        let short = key.strip_prefix(CONNECTOR_PREFIX).unwrap_or(key);
        if short == "name" {
            if value != name {
                return Err(ConfigError::Invalid {
                    key: "name".into(),
                    value: value.clone(),
                    expected: format!("the connector's name, {name}"),
                });
            }
            continue;
        }
        if !CONNECTOR_KEYS.iter().any(|k| k.name == short) {
            let names = CONNECTOR_KEYS.iter().map(|k| k.name);
            let hint = match closest(short, names) {
                Some(k) => format!("did you mean `{k}`?"),
                None => format!(
                    "connector keys: {}",
                    CONNECTOR_KEYS
                        .iter()
                        .map(|k| k.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(ConfigError::Unknown {
                key: short.to_owned(),
                hint,
            });
        }
        raw.set(&format!("{CONNECTOR_PREFIX}{short}"), value.clone());
    }
    raw.set(&format!("{CONNECTOR_PREFIX}name"), name);
    let mut connector = build_connector(&Lookup {
        raw: &raw,
        prefix: CONNECTOR_PREFIX,
        keys: CONNECTOR_KEYS,
    })?;
    connector.settings.remove("name");
    connector.settings.insert("name".into(), name.to_owned());
    Ok(connector)
}

fn api_listen(s: &Lookup<'_>) -> Result<Option<String>, ConfigError> {
    let value = s.get("api.listen");
    if value.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !ok {
        return Err(s.invalid(
            "api.listen",
            &value,
            "host:port (e.g. 127.0.0.1:8083, or 0.0.0.0:8083 to listen on every interface), or none",
        ));
    }
    Ok(Some(value))
}

/// Characters Kafka allows in topic names; connector names use the same set.
fn is_name_char(ch: char) -> bool {
    ch.is_ascii_alphanumeric() || "._-".contains(ch)
}

fn check_topic_name(c: &Lookup<'_>, key: &str, topic: &str) -> Result<(), ConfigError> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic.chars().all(is_name_char);
    if valid {
        Ok(())
    } else {
        Err(c.invalid(
            key,
            topic,
            "Kafka topic names: 1 to 249 of letters, digits, '.', '_' and '-'",
        ))
    }
}

fn known_keys() -> Vec<String> {
    SERVICE_KEYS
        .iter()
        .map(|k| k.name.to_owned())
        .chain(
            CONNECTOR_KEYS
                .iter()
                .map(|k| format!("{CONNECTOR_PREFIX}{}", k.name)),
        )
        .collect()
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo
/// (at most a third of the word's length, and at most 4 edits).
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).clamp(1, 4);
    candidates
        .into_iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (insertions, deletions, substitutions), by characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Every key with its default and meaning, for `--help`-style listings and the docs.
pub fn describe_keys() -> Vec<(String, Option<&'static str>, &'static str)> {
    SERVICE_KEYS
        .iter()
        .map(|k| (k.name.to_owned(), k.default, k.doc))
        .chain(
            CONNECTOR_KEYS
                .iter()
                .map(|k| (format!("{CONNECTOR_PREFIX}{}", k.name), k.default, k.doc)),
        )
        .collect()
}

struct Lookup<'a> {
    raw: &'a RawConfig,
    prefix: &'static str,
    keys: &'static [Key],
}

impl Lookup<'_> {
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn get(&self, key: &str) -> String {
        match self.raw.0.get(&self.full(key)) {
            Some(v) => v.trim().to_owned(),
            None => self
                .keys
                .iter()
                .find(|k| k.name == key)
                .and_then(|k| k.default)
                .expect("every looked-up key is declared with a default or read with required()")
                .to_owned(),
        }
    }

    /// The value of `key` with a `${env:NAME}` or `${file:/path}` reference replaced by
    /// what it names (a file's trailing newline dropped). Errors name the key and the
    /// reference, never what it resolves to.
    fn resolved(&self, key: &str) -> Result<String, ConfigError> {
        let value = self.get(key);
        if !is_reference(&value) {
            return Ok(value);
        }
        let inner = &value[2..value.len() - 1];
        let bad = |expected: String| self.invalid(key, &value, expected);
        match inner.split_once(':') {
            Some(("env", name)) => std::env::var(name)
                .map_err(|_| bad(format!("environment variable {name} to be set (it is not)"))),
            Some(("file", path)) => std::fs::read_to_string(path)
                .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| bad(format!("a readable file at {path} ({e})"))),
            _ => unreachable!("is_reference accepts env: and file: only"),
        }
    }

    fn required(&self, key: &str, hint: &'static str) -> Result<String, ConfigError> {
        match self.raw.0.get(&self.full(key)).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => Ok(v.to_owned()),
            _ => Err(ConfigError::Missing {
                key: self.full(key),
                hint,
            }),
        }
    }

    fn invalid(&self, key: &str, value: &str, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: self.full(key),
            value: value.to_owned(),
            expected: expected.into(),
        }
    }

    fn number(&self, key: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        let value = self.get(key);
        value
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.invalid(key, &value, format!("an integer from {min} to {max}")))
    }

    fn choice<T: Copy>(&self, key: &str, accepted: &[(&str, T)]) -> Result<T, ConfigError> {
        let value = self.get(key);
        accepted
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&value))
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let names: Vec<_> = accepted.iter().map(|(n, _)| *n).collect();
                self.invalid(key, &value, format!("one of {}", names.join(", ")))
            })
    }

    fn servers(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let value = self.required(key, "a comma-separated list of host:port")?;
        let mut out = Vec::new();
        for server in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let ok = server.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !ok {
                return Err(self.invalid(key, server, "host:port, e.g. broker-1.example.com:9092"));
            }
            out.push(server.to_owned());
        }
        if out.is_empty() {
            return Err(ConfigError::Missing {
                key: self.full(key),
                hint: "a comma-separated list of host:port",
            });
        }
        Ok(out)
    }
}

fn flatten_toml(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        toml::Value::Table(t) => t.iter().for_each(|(k, v)| flatten_toml(&join(k), v, out)),
        toml::Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        toml::Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_owned(), parts.join(","));
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
data.dir = "/tmp/kd"
internal.bootstrap.servers = "127.0.0.1:9093"

[connector]
name = "orders-mirror"
kafka.bootstrap.servers = "127.0.0.1:9092, 127.0.0.2:9092"
topic.prefix = "ext"
topic.include.list = "orders,payments"
"topic.include.list.user.defined" = ["refunds", "orders"]
"#;

    fn load(text: &str, overrides: &[&str]) -> Result<ServiceConfig, ConfigError> {
        let mut raw = RawConfig::from_toml_str(text).unwrap();
        let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        raw.apply_overrides(&overrides)?;
        raw.build()
    }

    fn err(overrides: &[&str]) -> String {
        load(GOOD, overrides).unwrap_err().to_string()
    }

    #[test]
    fn good_file_gets_defaults_and_merged_topics() {
        let cfg = load(GOOD, &[]).unwrap();
        assert_eq!(
            cfg.connector.as_ref().unwrap().topics,
            vec!["orders", "payments", "refunds"]
        );
        assert_eq!(
            cfg.connector.as_ref().unwrap().bootstrap_servers,
            vec!["127.0.0.1:9092", "127.0.0.2:9092"]
        );
        assert_eq!(
            cfg.connector.as_ref().unwrap().auto_offset_reset,
            OffsetReset::Earliest
        );
        assert_eq!(
            cfg.connector.as_ref().unwrap().internal_topic("orders"),
            "ext.orders"
        );
        assert_eq!(cfg.wal_sync, SyncPolicy::Fsync);
        assert_eq!(cfg.request_timeout, Duration::from_secs(30));
    }

    #[test]
    fn json_file_flattens_like_toml() {
        let json = serde_json::to_string(&serde_json::json!({
            "data.dir": "/tmp/kd",
            "internal": {"bootstrap.servers": "127.0.0.1:9093"},
            "connector": {"name": "c", "kafka.bootstrap.servers": "h:1", "topic.prefix": "p",
                          "topic.include.list": ["a", "b"], "auto.offset.reset": "latest"}
        }))
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("service.json");
        std::fs::write(&path, json).unwrap();
        let cfg = RawConfig::from_file(&path).unwrap().build().unwrap();
        assert_eq!(cfg.connector.as_ref().unwrap().topics, vec!["a", "b"]);
        assert_eq!(
            cfg.connector.as_ref().unwrap().auto_offset_reset,
            OffsetReset::Latest
        );
    }

    #[test]
    fn overrides_win() {
        let cfg = load(
            GOOD,
            &["connector.auto.offset.reset=latest", "wal.sync=flush"],
        )
        .unwrap();
        assert_eq!(
            cfg.connector.as_ref().unwrap().auto_offset_reset,
            OffsetReset::Latest
        );
        assert_eq!(cfg.wal_sync, SyncPolicy::Flush);
    }

    #[test]
    fn a_file_without_connector_keys_declares_no_connector() {
        let raw = RawConfig::from_toml_str(
            "data.dir = \"/tmp/kd\"\ninternal.bootstrap.servers = \"127.0.0.1:9093\"\n",
        )
        .unwrap();
        let cfg = raw.build().unwrap();
        assert!(cfg.connector.is_none());
        assert!(cfg
            .file_connector()
            .unwrap_err()
            .to_string()
            .contains("connector.name"));
    }

    #[test]
    fn api_settings_are_validated_like_the_file_section() {
        let settings = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let good = settings(&[
            ("kafka.bootstrap.servers", "h:1"),
            ("connector.topic.prefix", "p"),
            ("topic.include.list", "a,b"),
            ("name", "c"),
        ]);
        let c = connector_from_settings("c", &good).unwrap();
        assert_eq!(c.topics, ["a", "b"]);
        assert_eq!(c.internal_topic("a"), "p.a");
        let mut typo = good.clone();
        typo.insert("auto.offset.rest".into(), "latest".into());
        let e = connector_from_settings("c", &typo).unwrap_err().to_string();
        assert!(e.contains("did you mean `auto.offset.reset`"), "{e}");
        let e = connector_from_settings("other", &good)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the connector's name, other"), "{e}");
        let mut missing = good.clone();
        missing.remove("topic.include.list");
        assert!(connector_from_settings("c", &missing).is_err());
    }

    #[test]
    fn each_bad_value_names_its_key_and_the_accepted_values() {
        let cases: &[(&str, &[&str])] = &[
            (
                "connector.auto.offset.reset=newest",
                &["connector.auto.offset.reset", "earliest, latest"],
            ),
            (
                "connector.format=avro",
                &["connector.format", "string, json, bytes"],
            ),
            ("wal.sync=sometimes", &["wal.sync", "fsync, flush"]),
            ("shard.index=1", &["shard.index", "from 0 to 0"]),
            ("api.listen=8083", &["api.listen", "host:port"]),
            ("wal.max.bytes=lots", &["wal.max.bytes", "an integer"]),
            (
                "fetch.max.wait.ms=-5",
                &["fetch.max.wait.ms", "from 0 to 60000"],
            ),
            (
                "connector.kafka.bootstrap.servers=broker",
                &["connector.kafka.bootstrap.servers", "host:port"],
            ),
            (
                "internal.bootstrap.servers=h:99999",
                &["internal.bootstrap.servers", "host:port"],
            ),
            (
                "connector.topic.include.list=ok,bad topic",
                &["connector.topic.include.list", "bad topic"],
            ),
            (
                "connector.security.protocol=TLS",
                &["connector.security.protocol", "SASL_SSL"],
            ),
            ("connector.name=a/b", &["connector.name"]),
            (
                "connector.schemas.enable=maybe",
                &["connector.schemas.enable", "false, true"],
            ),
            (
                "internal.compression=brotli",
                &["internal.compression", "zstd"],
            ),
        ];
        for (set, needles) in cases {
            let message = err(&[set]);
            for needle in *needles {
                assert!(
                    message.contains(needle),
                    "{set}: {message:?} lacks {needle:?}"
                );
            }
        }
    }

    #[test]
    fn edit_distance_and_closest() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(closest("ordres", ["orders", "payments"]), Some("orders"));
        assert_eq!(closest("xyz", ["orders", "payments"]), None);
    }

    #[test]
    fn missing_and_unknown_keys_are_named() {
        let message = load("[connector]\nname = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(message.contains("missing required key"), "{message}");
        let message = err(&["connector.topic.prefx=x"]);
        assert!(
            message.contains("unknown key `connector.topic.prefx`"),
            "{message}"
        );
        assert!(
            message.contains("did you mean `connector.topic.prefix`?"),
            "{message}"
        );
        let message = err(&["something.else.entirely=x"]);
        assert!(message.contains("known keys: data.dir"), "{message}");
        let message = err(&[
            "connector.topic.include.list=",
            "connector.topic.include.list.user.defined=",
        ]);
        assert!(
            message.contains("connector.topic.include.list"),
            "{message}"
        );
        assert!(matches!(
            RawConfig::default().apply_overrides(&["novalue".into()]),
            Err(ConfigError::BadOverride(_))
        ));
    }

    #[test]
    fn sasl_keys_need_a_sasl_protocol_and_are_never_echoed() {
        let message = err(&["connector.sasl.password=hunter2"]);
        assert!(
            message.contains("connector.security.protocol")
                && message.contains("SASL_PLAINTEXT or SASL_SSL")
                && !message.contains("hunter2"),
            "{message}"
        );
        let message = err(&["connector.security.protocol=SASL_SSL"]);
        assert!(message.contains("connector.sasl.username"), "{message}");
        let message = err(&[
            "connector.security.protocol=SASL_SSL",
            "connector.sasl.username=u",
        ]);
        assert!(message.contains("connector.sasl.password"), "{message}");
        let message = err(&[
            "connector.security.protocol=SASL_PLAINTEXT",
            "connector.sasl.mechanism=GSSAPI",
            "connector.sasl.username=u",
            "connector.sasl.password=hunter2",
        ]);
        assert!(
            message.contains("PLAIN, SCRAM-SHA-256, SCRAM-SHA-512") && !message.contains("hunter2"),
            "{message}"
        );
        // TLS keys with a protocol without TLS name the protocol that would use them.
        let message = err(&[
            "connector.security.protocol=SASL_PLAINTEXT",
            "connector.ssl.ca.location=/ca.pem",
        ]);
        assert!(message.contains("SASL_SSL"), "{message}");

        let cfg = load(
            GOOD,
            &[
                "internal.security.protocol=SASL_PLAINTEXT",
                "internal.sasl.mechanism=scram-sha-512",
                "internal.sasl.username=$ConnectionString",
                "internal.sasl.password=hunter2",
            ],
        )
        .unwrap();
        let sasl = cfg.internal_access.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        // Event Hubs' user name is not a reference: it passes untouched.
        assert_eq!(sasl.username, "$ConnectionString");
        assert_eq!(sasl.password.expose(), "hunter2");
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(
            format!("{:?}", crate::service::internal_transport(&cfg).unwrap()),
            "SASL_PLAINTEXT SCRAM-SHA-512 as $ConnectionString"
        );
    }

    #[test]
    fn msk_iam_takes_a_region_and_a_profile_and_no_token_endpoint() {
        let base = [
            "internal.security.protocol=SASL_SSL",
            "internal.sasl.mechanism=OAUTHBEARER",
            "internal.sasl.oauthbearer.method=aws_msk_iam",
        ];
        let cfg = load(
            GOOD,
            &[
                &base[..],
                &[
                    "internal.sasl.oauthbearer.aws.region=us-east-1",
                    "internal.sasl.oauthbearer.aws.profile=mirror",
                ],
            ]
            .concat(),
        )
        .unwrap();
        let sasl = cfg.internal_access.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::OAuthBearer);
        assert!(sasl.oauth.is_none());
        let iam = sasl.msk_iam.as_ref().unwrap();
        assert_eq!(iam.region.as_deref(), Some("us-east-1"));
        assert_eq!(iam.profile.as_deref(), Some("mirror"));
        // The region may come from the AWS chain.
        let cfg = load(GOOD, &base).unwrap();
        let iam = cfg.internal_access.sasl.unwrap().msk_iam.unwrap();
        assert_eq!((iam.region, iam.profile), (None, None));
        for (more, named) in [
            (
                "internal.sasl.oauthbearer.client.id=mirror",
                "internal.sasl.oauthbearer.client.id is set",
            ),
            (
                "internal.sasl.oauthbearer.aws.region=US East",
                "internal.sasl.oauthbearer.aws.region",
            ),
            ("internal.sasl.username=me", "internal.sasl.username"),
        ] {
            let message = load(GOOD, &[&base[..], &[more]].concat())
                .unwrap_err()
                .to_string();
            assert!(message.contains(named), "{more}: {message}");
        }
    }

    #[test]
    fn oauthbearer_takes_librdkafkas_keys_and_hides_the_client_secret() {
        let oauth = |more: &[&str]| -> Vec<String> {
            let mut keys = vec![
                "connector.security.protocol=SASL_SSL".to_owned(),
                "connector.sasl.mechanism=OAUTHBEARER".to_owned(),
                "connector.sasl.oauthbearer.token.endpoint.url=https://idp.example.com/token"
                    .to_owned(),
                "connector.sasl.oauthbearer.client.id=mirror".to_owned(),
                "connector.sasl.oauthbearer.client.secret=hunter2".to_owned(),
            ];
            keys.extend(more.iter().map(|k| (*k).to_owned()));
            keys
        };
        let keys = oauth(&[
            "connector.sasl.oauthbearer.scope=kafka read",
            "connector.sasl.oauthbearer.extensions=logicalCluster=lkc-1, identityPoolId=pool-2",
        ]);
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let cfg = load(GOOD, &keys).unwrap();
        let connector = cfg.connector.as_ref().unwrap();
        let sasl = connector.access.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, SaslMechanism::OAuthBearer);
        assert_eq!(sasl.username, "mirror");
        assert_eq!(sasl.password.expose(), "hunter2");
        let o = sasl.oauth.as_ref().unwrap();
        assert_eq!(o.token_endpoint, "https://idp.example.com/token");
        assert_eq!(o.scope.as_deref(), Some("kafka read"));
        assert_eq!(
            o.extensions,
            [
                ("logicalCluster".to_owned(), "lkc-1".to_owned()),
                ("identityPoolId".to_owned(), "pool-2".to_owned())
            ]
        );
        assert!(!format!("{cfg:?}").contains("hunter2"));
        assert_eq!(connector.settings["sasl.oauthbearer.client.secret"], HIDDEN);

        let refused = |more: &[&str]| {
            let keys = oauth(more);
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            let message = load(GOOD, &keys).unwrap_err().to_string();
            assert!(!message.contains("hunter2"), "{message}");
            message
        };
        let m = refused(&["connector.sasl.username=u"]);
        assert!(
            m.contains("connector.sasl.username") && m.contains("sasl.oauthbearer.client.id"),
            "{m}"
        );
        let m = refused(&["connector.sasl.oauthbearer.method=aws_msk_iam"]);
        assert!(
            m.contains("connector.sasl.oauthbearer.method")
                && m.contains("connector.sasl.oauthbearer.token.endpoint.url is set"),
            "{m}"
        );
        let m = refused(&["connector.sasl.oauthbearer.method=kerberos"]);
        assert!(
            m.contains("connector.sasl.oauthbearer.method") && m.contains("aws_msk_iam"),
            "{m}"
        );
        let m = refused(&["connector.sasl.oauthbearer.aws.region=us-east-1"]);
        assert!(
            m.contains("aws_msk_iam, since connector.sasl.oauthbearer.aws.region is set"),
            "{m}"
        );
        let m = refused(&["connector.sasl.oauthbearer.extensions=auth=x"]);
        assert!(m.contains("connector.sasl.oauthbearer.extensions"), "{m}");
        let m = refused(&["connector.sasl.oauthbearer.token.endpoint.url=idp.example.com/token"]);
        assert!(m.contains("http:// or https://"), "{m}");
        // The keys without OAUTHBEARER name the mechanism that uses them.
        let m = err(&[
            "connector.security.protocol=SASL_SSL",
            "connector.sasl.username=u",
            "connector.sasl.password=p",
            "connector.sasl.oauthbearer.client.id=mirror",
        ]);
        assert!(
            m.contains("OAUTHBEARER") && m.contains("connector.sasl.oauthbearer.client.id"),
            "{m}"
        );
        let m = err(&[
            "connector.security.protocol=SASL_SSL",
            "connector.sasl.mechanism=OAUTHBEARER",
            "connector.sasl.oauthbearer.token.endpoint.url=https://idp.example.com/token",
        ]);
        assert!(m.contains("connector.sasl.oauthbearer.client.id"), "{m}");
        let m = refused(&["connector.sasl.oauthbearer.extensions=logicalCluster="]);
        assert!(m.contains("printable ASCII"), "{m}");
        // Without SASL they name the protocol; a mechanism left over is not read.
        let m = err(&["connector.sasl.oauthbearer.client.id=mirror"]);
        assert!(
            m.contains("connector.security.protocol") && m.contains("SASL_PLAINTEXT or SASL_SSL"),
            "{m}"
        );
        load(GOOD, &["connector.sasl.mechanism=GSSAPI"]).unwrap();
    }

    #[test]
    fn secret_references_resolve_and_only_the_reference_is_shown() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "from-a-file\n").unwrap();
        // The variable is set for this process only; no other test reads it.
        std::env::set_var("KAFKA_DIRECT_TEST_SASL_PASSWORD", "from-the-env");
        let file_ref = format!("connector.sasl.password=${{file:{}}}", file.display());
        let cfg = load(
            GOOD,
            &[
                "connector.security.protocol=SASL_SSL",
                "connector.sasl.username=${env:KAFKA_DIRECT_TEST_SASL_PASSWORD}",
                &file_ref,
            ],
        )
        .unwrap();
        let connector = cfg.connector.unwrap();
        let sasl = connector.access.sasl.unwrap();
        assert_eq!(sasl.username, "from-the-env");
        assert_eq!(sasl.password.expose(), "from-a-file");
        // What the API shows: the reference (not secret), never the value.
        let shown = &connector.settings["sasl.password"];
        assert!(shown.starts_with("${file:"), "{shown}");

        let literal = load(
            GOOD,
            &[
                "connector.security.protocol=SASL_SSL",
                "connector.sasl.username=u",
                "connector.sasl.password=hunter2",
            ],
        )
        .unwrap();
        assert_eq!(literal.connector.unwrap().settings["sasl.password"], HIDDEN);

        let message = err(&[
            "connector.security.protocol=SASL_SSL",
            "connector.sasl.username=u",
            "connector.sasl.password=${env:KAFKA_DIRECT_TEST_UNSET_VARIABLE}",
        ]);
        assert!(
            message.contains("connector.sasl.password")
                && message.contains("environment variable KAFKA_DIRECT_TEST_UNSET_VARIABLE"),
            "{message}"
        );
        let message = err(&[
            "connector.security.protocol=SASL_SSL",
            "connector.sasl.username=u",
            "connector.sasl.password=${file:/nonexistent/kafka-direct-password}",
        ]);
        assert!(
            message.contains("/nonexistent/kafka-direct-password"),
            "{message}"
        );
    }

    #[test]
    fn proxy_url_takes_socks5_without_credentials() {
        let cfg = load(
            GOOD,
            &["connector.proxy.url=socks5://bastion.example.com:1080"],
        )
        .unwrap();
        assert_eq!(
            cfg.connector.unwrap().access.proxy.as_deref(),
            Some("bastion.example.com:1080")
        );
        let message = err(&["connector.proxy.url=http://bastion:3128"]);
        assert!(message.contains("socks5://host:port"), "{message}");
        let message = err(&["connector.proxy.url=socks5://bastion"]);
        assert!(message.contains("connector.proxy.url"), "{message}");
        assert!(err(&["internal.proxy.url=socks5://bastion:1080"]).contains("unknown key"));
        let message = err(&["connector.proxy.url=socks5://me:hunter2@bastion:1080"]);
        assert!(
            message.contains("proxy authentication") && !message.contains("hunter2"),
            "{message}"
        );
    }

    #[test]
    fn schemas_need_json_and_the_dead_letter_topic_defaults_to_the_prefix() {
        assert!(err(&["connector.schemas.enable=true"]).contains("unless format=json"));
        let cfg = load(
            GOOD,
            &["connector.format=json", "connector.schemas.enable=true"],
        )
        .unwrap();
        assert_eq!(cfg.connector.as_ref().unwrap().format, Format::Json);
        assert!(cfg.connector.as_ref().unwrap().schemas_enable);
        let prefix = &cfg.connector.as_ref().unwrap().topic_prefix;
        assert_eq!(
            cfg.connector.as_ref().unwrap().dead_letter_topic,
            format!("{prefix}.dlq")
        );
        let clash = format!(
            "connector.errors.deadletterqueue.topic.name={}",
            cfg.connector
                .as_ref()
                .unwrap()
                .internal_topic(&cfg.connector.as_ref().unwrap().topics[0])
        );
        assert!(err(&[&clash]).contains("a topic other than the internal topic"));
    }

    #[test]
    fn toml_syntax_errors_are_reported_with_a_hint_for_unquoted_nested_keys() {
        assert!(RawConfig::from_toml_str("data.dir = ").is_err());
        let message = RawConfig::from_toml_str("a.b = \"x\"\na.b.c = \"y\"\n").unwrap_err();
        assert!(message.contains("must be quoted"), "{message}");
    }
}
