//! The produce requests of one forwarder that are not answered yet, oldest first.
//!
//! A batch is encoded once, with its producer id, epoch and sequence, and kept here as
//! bytes until its answer arrives. After an unknown outcome the same bytes are sent
//! again, so the broker sees the same sequence numbers and stores each batch once.
//! Answers arrive in the order the requests were sent (one connection), so the window
//! moves the partition's known end forward batch by batch, in order.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use crate::forward::Tail;
use crate::kafka::produce::{InFlight, ProducerSession};
use crate::kafka::records::Producer;

/// One produce request's batch.
#[derive(Debug)]
pub struct Batch {
    /// The encoded record batch, sent again as it is.
    pub bytes: Bytes,
    /// Its producer id, epoch and base sequence.
    pub producer: Producer,
    /// Records in it.
    pub records: usize,
    /// Source offset of its first record.
    pub first_source_offset: i64,
    /// Source offset of its last record.
    pub last_source_offset: i64,
    /// Its newest record's timestamp.
    pub max_timestamp: i64,
    /// The internal offset its first record gets if the broker stores it where the single
    /// writer expects.
    pub expected_base: i64,
    /// The records' timestamps (for the end-to-end latency).
    pub timestamps: Vec<i64>,
    /// Bytes of its records as fetched (for the forwarded-bytes figure).
    pub source_bytes: u64,
    /// When it was last sent.
    pub sent_at: Instant,
    /// The request on the current connection; `None` when it is to be sent (again).
    pub in_flight: Option<InFlight>,
}

impl Batch {
    /// The internal partition's tail once this batch is stored where expected.
    pub fn stored(&self) -> Tail {
        Tail {
            end: self.expected_base + self.records as i64,
            stored_next: Some(self.last_source_offset + 1),
        }
    }
}

/// The batches in flight, oldest first.
#[derive(Debug, Default)]
pub struct Window {
    batches: VecDeque<Batch>,
}

impl Window {
    /// Whether no batch is in flight.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Batches in flight.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// The source offset after the newest batch's last record.
    pub fn next_source_offset(&self) -> Option<i64> {
        self.batches.back().map(|b| b.last_source_offset + 1)
    }

    /// The internal partition's end once every batch is stored, from `end` (its end
    /// before them).
    pub fn end(&self, end: i64) -> i64 {
        self.batches
            .back()
            .map_or(end, |b| b.expected_base + b.records as i64)
    }

    /// Adds the newest batch; returns it, to be sent.
    pub fn push(&mut self, batch: Batch) -> &mut Batch {
        self.batches.push_back(batch);
        self.batches.back_mut().expect("just pushed")
    }

    /// The oldest batch.
    pub fn front_mut(&mut self) -> Option<&mut Batch> {
        self.batches.front_mut()
    }

    /// Removes the oldest batch (answered).
    pub fn pop_front(&mut self) -> Option<Batch> {
        self.batches.pop_front()
    }

    /// Whether every batch in flight satisfies `f`.
    pub fn all(&self, f: impl Fn(&Batch) -> bool) -> bool {
        self.batches.iter().all(f)
    }

    /// Every batch, oldest first.
    pub fn unsent_or_in_flight(&mut self) -> impl Iterator<Item = &mut Batch> {
        self.batches.iter_mut()
    }

    /// The batches to send on the current connection, oldest first.
    pub fn unsent(&mut self) -> impl Iterator<Item = &mut Batch> {
        self.batches.iter_mut().filter(|b| b.in_flight.is_none())
    }

    /// Whether a batch is to be sent (again) on the current connection.
    pub fn has_unsent(&self) -> bool {
        self.batches.iter().any(|b| b.in_flight.is_none())
    }

    /// The connection is gone: every batch is to be sent again.
    pub fn mark_unsent(&mut self) {
        for b in &mut self.batches {
            b.in_flight = None;
        }
    }

    /// Forgets every batch (their outcome is read from the partition instead).
    pub fn clear(&mut self) {
        self.batches.clear();
    }
}

/// How a forwarder produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producing {
    /// With an idempotent producer: up to the configured window in flight, batches
    /// re-sent as they are after an unknown outcome.
    Idempotent(ProducerSession),
    /// Idempotence wanted: a producer id is asked for on the next connection.
    Asking,
    /// Without (`internal.enable.idempotence=false`, or a broker without
    /// InitProducerId): one request in flight, the tail read settled after an unknown
    /// outcome.
    Plain,
}

impl Producing {
    /// How many batches may be in flight. Without idempotence one: a batch refused after
    /// a later one was stored would leave a gap the tail check cannot see.
    pub fn window(&self, max_in_flight: usize) -> usize {
        match self {
            Producing::Idempotent(_) => max_in_flight,
            _ => 1,
        }
    }

    /// The producer fields of the next batch of `records` records.
    pub fn next_batch(&mut self, records: usize) -> Producer {
        match self {
            Producing::Idempotent(session) => session.next_batch(records),
            _ => Producer::NONE,
        }
    }

    /// After the broker lost this producer's sequence state (`fenced`: refused its epoch):
    /// the next epoch of the same id, or a new id when fenced or out of epochs.
    pub fn renewed(self, fenced: bool) -> Producing {
        match self {
            Producing::Idempotent(session) if !fenced => session
                .bumped()
                .map_or(Producing::Asking, Producing::Idempotent),
            Producing::Plain => Producing::Plain,
            _ => Producing::Asking,
        }
    }
}
