//! kafka-direct: copies topics of an external Kafka-compatible cluster into internal
//! topics of another cluster, durably and exactly once per source offset.
//!
//! The pipeline is the module layout: `source` (fetch) → [`wal`] (durable log) →
//! `forward` (exactly-once produce), over one Kafka client layer (`kafka`), run per
//! connector (`connector`), wired by [`service`], configured by [`config`]. The library's
//! public surface is what the binary and the tests use. See `docs/ARCHITECTURE.md` for
//! the map and the exactly-once argument.
#![recursion_limit = "256"]
#![deny(unsafe_code, rust_2018_idioms, rustdoc::broken_intra_doc_links)]
#![warn(
    missing_debug_implementations,
    missing_docs,
    clippy::clone_on_ref_ptr,
    clippy::future_not_send,
    clippy::disallowed_methods
)]

pub mod api;
pub mod check;
pub mod cli;
pub mod config;
pub(crate) mod connector;
pub mod format;
pub(crate) mod forward;
pub(crate) mod metrics;
pub mod record;
pub mod service;
pub(crate) mod source;
pub mod state;
pub(crate) mod stop;
pub mod wal;

// The client layer is the crate's own; the benchmarks and fuzz targets measure pieces of
// it (record batch encoding and decoding) through the `unstable` feature.
#[cfg(feature = "unstable")]
pub mod kafka;
#[cfg(not(feature = "unstable"))]
pub(crate) mod kafka;
