//! A Kafka cluster (external or internal): every call bounded in time ([`Cluster::bounded`]),
//! one classification of its failures ([`ClusterError::is_transient`]), and the topic
//! listing over our own connection. A caller that sees an error opens a new connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::kafka::connection::{topic_partitions, Connection, LeaderError, WireError};

/// Which of the two clusters, for messages.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// "external" or "internal".
    pub role: &'static str,
    /// The config key holding the servers.
    pub key: &'static str,
    /// `host:port` list.
    pub servers: Vec<String>,
    /// Bound on each call.
    pub timeout: Duration,
    /// Whether calls retry transient failures themselves ([`Cluster::topics`]); never on
    /// the internal cluster, whose callers decide (docs/ARCHITECTURE.md, step 5).
    pub internal_retries: bool,
    /// Kafka client id.
    pub client_id: String,
    /// Plaintext or TLS.
    pub transport: crate::kafka::tls::Transport,
}

/// A failed call to a cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No answer within the bound.
    #[error("{what} on the {role} cluster ({servers}) timed out after {timeout:?}")]
    Timeout {
        /// The operation.
        what: String,
        /// "external" or "internal".
        role: &'static str,
        /// The servers.
        servers: String,
        /// The bound.
        timeout: Duration,
    },
    /// A fetch answered without the record that must be there (below the high watermark).
    #[error("{what} on the {role} cluster: the broker returned no record at offset {offset}")]
    NoRecord {
        /// The operation.
        what: String,
        /// "external" or "internal".
        role: &'static str,
        /// The offset asked for.
        offset: i64,
    },
    /// A call on the fetch path's own connection failed (see [`crate::kafka::connection`]).
    #[error("{what} on the {role} cluster ({servers}) failed: {source}")]
    Wire {
        /// The operation.
        what: String,
        /// "external" or "internal".
        role: &'static str,
        /// The servers.
        servers: String,
        /// The failure.
        source: WireFailure,
    },
}

/// What failed on the fetch path's own connection.
#[derive(Debug, thiserror::Error)]
pub enum WireFailure {
    /// Connecting, framing or decoding.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Finding the partition's leader.
    #[error(transparent)]
    Leader(#[from] LeaderError),
    /// The broker answered with an error code.
    #[error("the broker answered {0}")]
    Broker(kafka_protocol::ResponseError),
    /// A fetched record batch cannot be read (damaged, or a pre-0.11 message format).
    #[error(transparent)]
    Batch(#[from] crate::kafka::batches::BatchError),
}

impl WireFailure {
    fn is_transient(&self) -> bool {
        match self {
            WireFailure::Wire(e) => e.is_transient(),
            WireFailure::Leader(e) => e.is_transient(),
            WireFailure::Broker(e) => e.is_retriable(),
            // Fetching the same bytes again gives the same answer.
            WireFailure::Batch(_) => false,
        }
    }
}

/// An error one of the [`Cluster::bounded`] calls can return.
pub trait CallError {
    /// Wraps the error with the operation and cluster it happened on.
    fn into_cluster_error(self, what: String, role: &'static str, servers: String) -> ClusterError;
}

macro_rules! wire_call_error {
    ($($t:ty),*) => {$(
        impl CallError for $t {
            fn into_cluster_error(
                self,
                what: String,
                role: &'static str,
                servers: String,
            ) -> ClusterError {
                ClusterError::Wire { what, role, servers, source: self.into() }
            }
        }
    )*};
}
wire_call_error!(
    WireError,
    LeaderError,
    WireFailure,
    crate::kafka::batches::BatchError
);

impl ClusterError {
    /// Whether retrying later can succeed (broker down, leader moving), as opposed to a
    /// refusal that needs the user (missing topic, authorization, bad request).
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Timeout { .. } | ClusterError::NoRecord { .. } => true,
            ClusterError::Wire { source, .. } => source.is_transient(),
        }
    }

    /// Whether the broker refused a produce as larger than the topic's
    /// `max.message.bytes` (Kafka checks each record batch against it; nothing of the
    /// batch was stored).
    pub fn is_message_too_large(&self) -> bool {
        match self {
            ClusterError::Wire {
                source: WireFailure::Broker(e),
                ..
            } => matches!(
                e,
                kafka_protocol::ResponseError::MessageTooLarge
                    | kafka_protocol::ResponseError::RecordListTooLarge
            ),
            _ => false,
        }
    }

    /// Whether the cluster did not answer (nothing listening, no answer in time, a
    /// broken connection, a broker not ready yet): what waiting for it can mend, unlike
    /// a refusal (SASL, a TLS handshake that failed on an open connection, a plaintext
    /// client on a TLS listener): a broker that accepted the connection is up, and
    /// its listener and the config do not match.
    pub fn is_unanswered(&self) -> bool {
        self.is_transient()
            && !matches!(
                self,
                ClusterError::Wire {
                    source: WireFailure::Wire(
                        WireError::FirstRequest { .. } | WireError::Handshake { .. }
                    ),
                    ..
                }
            )
    }

    /// Whether TLS itself refused the broker (its certificate not trusted, expired or
    /// naming another host, or an alert from the broker): retrying the same
    /// configuration cannot succeed before someone changes a certificate, unlike a
    /// handshake cut by the network.
    pub fn is_tls_refusal(&self) -> bool {
        match self {
            ClusterError::Wire {
                source: WireFailure::Wire(WireError::Handshake { source, .. }),
                ..
            } => source
                .get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()),
            _ => false,
        }
    }

    /// Whether the broker said the offset asked for is not in the partition (removed
    /// by retention, or beyond its end).
    pub fn is_offset_out_of_range(&self) -> bool {
        match self {
            ClusterError::Wire {
                source: WireFailure::Broker(e),
                ..
            } => *e == kafka_protocol::ResponseError::OffsetOutOfRange,
            _ => false,
        }
    }

    /// The error code a broker answered on one of our own connections, if that is what
    /// failed.
    pub fn broker_error(&self) -> Option<kafka_protocol::ResponseError> {
        match self {
            ClusterError::Wire {
                source: WireFailure::Broker(e),
                ..
            } => Some(*e),
            _ => None,
        }
    }
}

impl Cluster {
    fn servers_text(&self) -> String {
        self.servers.join(",")
    }

    /// Runs `call` bounded by the cluster's timeout, naming `what` in errors.
    pub async fn bounded<T, E, F>(
        &self,
        what: impl Into<String>,
        call: F,
    ) -> Result<T, ClusterError>
    where
        E: CallError,
        F: Future<Output = Result<T, E>>,
    {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into_cluster_error(what.into(), self.role, self.servers_text())),
            Err(_) => Err(ClusterError::Timeout {
                what: what.into(),
                role: self.role,
                servers: self.servers_text(),
                timeout: self.timeout,
            }),
        }
    }

    /// `e` as a failure of `what` on this cluster.
    pub fn error(&self, what: impl Into<String>, e: impl CallError) -> ClusterError {
        e.into_cluster_error(what.into(), self.role, self.servers_text())
    }

    /// Every topic with its partition count, read on a new connection from the first
    /// bootstrap server that answers. With `internal_retries`, transient failures are
    /// retried for up to the call bound; a refusal (authentication, TLS) is returned at
    /// once.
    pub async fn topics(&self, what: &str) -> Result<BTreeMap<String, usize>, ClusterError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut retry = Retry::new(Duration::from_secs(2));
        loop {
            let mut last = None;
            let mut all_refused = true;
            for server in &self.servers {
                let listed = self
                    .bounded(what.to_owned(), async {
                        let mut conn =
                            Connection::open(server, &self.client_id, &self.transport).await?;
                        conn.metadata_all().await
                    })
                    .await;
                match listed {
                    Ok(metadata) => return Ok(topic_partitions(&metadata)),
                    Err(e) if e.is_transient() => {
                        all_refused &= e.is_tls_refusal();
                        last = Some(e);
                    }
                    Err(e) => return Err(e),
                }
            }
            let e = last.expect("a cluster has at least one server");
            let delay = retry.delay();
            // When TLS refused every server, retrying only delays the same answer (this
            // listing is the external cluster's first contact at start).
            if all_refused
                || !self.internal_retries
                || tokio::time::Instant::now() + delay >= deadline
            {
                return Err(e);
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// `max_wait_ms` of fetches that only probe the current state (high watermark, last
/// record). Serves tansu 0.6, which answers a 0 ms fetch with an empty response
/// (docs/compatibility.md); harmless on Kafka, which answers a 1 ms probe at once when
/// records are there and after 1 ms when not.
pub const PROBE_WAIT_MS: i32 = 1;

/// The waits of successive reads that must find records known to exist. Serves tansu
/// 0.6, which sometimes answers a short fetch without records (or without the
/// partition); harmless on Kafka, where the first read finds them and the later waits
/// are spent only when the range is really empty.
pub const READ_WAITS_MS: [i32; 3] = [PROBE_WAIT_MS, 100, 500];

/// Exponential backoff for our own retry loops: 100 ms doubling up to `max`.
#[derive(Debug)]
pub struct Retry {
    next: Duration,
    max: Duration,
}

impl Retry {
    /// A fresh backoff.
    pub fn new(max: Duration) -> Self {
        Self {
            next: Duration::from_millis(100),
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    /// Back to the first delay after a success.
    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }
}
