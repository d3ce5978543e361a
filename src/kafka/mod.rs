//! The Kafka client layer: what kafka-direct says to a broker, and nothing of the
//! pipeline. `source`, `forward`, `connector`, `service` and `check` reach the clusters
//! through it, and only through it: every connection is one of [`connection`]'s.
//!
//! One concept a file, from the bytes up:
//! - [`access`]: how a cluster is reached, as settings (TLS files, SASL credentials,
//!   SOCKS5 proxy), with no TLS code;
//! - [`oauth`]: OAUTHBEARER's tokens, from a token endpoint by the client-credentials
//!   grant, cached until 80 % of their lifetime;
//! - [`msk_iam`]: Amazon MSK's IAM tokens for OAUTHBEARER, SigV4-presigned from the AWS
//!   SDK's credentials as AWS's signers build them, cached the same way;
//! - [`tls`]: those settings made a [`tls::Transport`] (the rustls client
//!   configuration, SASL, the proxy dial), one per cluster;
//! - [`connection`]: one broker connection: framing, correlation ids, ApiVersions and
//!   version negotiation, SASL and its renewal (KIP-368), leader lookup, for messages of
//!   the `kafka-protocol` crate;
//! - [`cluster`]: a cluster: the bound on every call, error classification (one
//!   `is_transient`), our backoff, the broker-specific waits, the admin calls (topic
//!   listing and creation, CreatePartitions, DescribeConfigs);
//! - [`admin`]: topic configs read, set at creation and changed (DescribeConfigs,
//!   CreateTopics, IncrementalAlterConfigs) over our own connection to any broker;
//! - [`group`]: a consumer group's committed offsets, read, committed and deleted as a
//!   consumer outside the group does (FindCoordinator, OffsetFetch, OffsetCommit,
//!   OffsetDelete);
//! - [`records`]: the record batch codec (magic 2): headers as the list they are,
//!   duplicates and order kept, and the idempotent producer's fields (pure);
//! - [`batches`]: a fetch's record batches to the records to copy (markers skipped,
//!   aborted transactions dropped; pure);
//! - [`fetch`]: the connection to one partition's leader for reading (Fetch
//!   read-committed, ListOffsets, the high watermark);
//! - [`leaders`]: one connection per source broker shared by every partition it leads:
//!   the fetches its partitions ask for gathered into one Fetch request per round;
//! - [`produce`]: the connection to one partition's leader for writing (InitProducerId,
//!   the idempotent producer's sequences, Produce v3–12 with up to five requests in
//!   flight, each sent once, and the tail reads of the exactly-once check);
//! - [`producers`]: one pipelined produce connection per internal broker shared by
//!   every partition it leads: the batches waiting gathered into one Produce request;
//! - [`settle`]: the wait of that check where the broker cannot deduplicate: read an end
//!   until two reads 1.5 s apart agree.

pub mod access;
pub mod admin;
pub mod batches;
pub mod cluster;
pub mod connection;
pub mod fetch;
pub mod group;
pub mod leaders;
pub mod msk_iam;
pub mod oauth;
pub mod produce;
pub mod producers;
pub mod records;
pub mod settle;
pub mod tls;
