//! The write-ahead log: fetched batches and per-partition offset checkpoints.
//!
//! A partition's log is split into a writer half for its fetcher ([`LogWriter`]: append,
//! commit, wait for room) and a reader half for its forwarder ([`LogReader`]: oldest
//! entries, release, align with the tail), so data moves one way through it
//! ([`PartitionLog::split`]). The metadata tree beside the logs is [`crate::state`]'s.
//!
//! sled holds the checkpoints and, per entry, a pointer into an append-only segment
//! file holding the entry's bytes (`segments`): sled keeps its values in memory, so
//! entries stored as sled values made the RSS grow with the unforwarded data.
//!
//! Guarantees:
//! - [`PartitionLog::append`] writes a batch's bytes to the active segment, then its
//!   pointer and the partition's new `fetched_next` in one atomic sled batch, so after
//!   any crash the checkpoint matches the stored data.
//! - An append is durable once a [`Wal::commit`] that started after it has returned
//!   (group commit: one flush covers every append made before it began). With
//!   [`SyncPolicy::Fsync`] the commit fsyncs the segments written since the last one
//!   before sled's flush, and the database file after it, because sled's own flush uses
//!   `sync_file_range`, which survives a process crash but not a power loss.
//! - Opening reads every entry once: a damaged one refuses the WAL; entries whose bytes
//!   a machine crash cut short were never committed and are fetched again.
//! - [`PartitionLog::release`] removes forwarded entries and advances `forwarded_next`
//!   atomically.
//! - Every value carries a version byte and a checksum ([`codec`]); damage is reported
//!   with the partition and offset, never handed on as data.
//! - One process at a time: opening a data dir another process holds fails with
//!   [`WalError::Locked`].
//!
//! The WAL knows nothing of Kafka clients.

pub mod codec;
mod segments;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{watch, Mutex, Notify};

use crate::record::{FetchedBatch, SourcePartition};
pub use codec::DecodeError;
use segments::{Pointer, Segments};

/// Errors of the WAL layer.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// Another process holds the data dir.
    #[error("data dir {path} is in use by another kafka-direct process (its lock is held); stop that process or choose another data.dir")]
    Locked {
        /// The data dir.
        path: PathBuf,
    },
    /// The data dir could not be opened.
    #[error("cannot open the WAL in {path}: {source}")]
    Open {
        /// The data dir.
        path: PathBuf,
        /// What sled reported.
        source: sled::Error,
    },
    /// sled found its own files damaged (failed checksums) when opening them.
    #[error("the WAL in {path} is damaged ({detail}); nothing in it is forwarded. To recover, stop, move the data dir aside and start again: the service resumes from the internal topics (docs/operations.md, \"Recovering from a damaged or lost WAL\")")]
    Damaged {
        /// The data dir.
        path: PathBuf,
        /// What sled reported.
        detail: String,
    },
    /// A sled operation failed (I/O error, disk full…).
    #[error("WAL storage error: {0}")]
    Storage(#[from] sled::Error),
    /// A segment file (entry bytes) could not be created, written, read or synced.
    #[error("WAL segment file in {path}: {source}")]
    Segment {
        /// The segments directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// fsync of the database file failed.
    #[error("fsync of {path} failed: {source}")]
    Sync {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An entry failed its checksum or did not decode.
    #[error("WAL entry of {partition} at offset {offset} (connector {connector}) is damaged: {reason}; run `kafka-direct wal check` and see docs/operations.md to rebuild from the last forwarded checkpoint")]
    Corrupt {
        /// Connector owning the partition.
        connector: String,
        /// The partition.
        partition: SourcePartition,
        /// First offset of the damaged entry.
        offset: i64,
        /// What is wrong.
        reason: DecodeError,
    },
    /// A checkpoint value has the wrong length.
    #[error("checkpoint {name} of {partition} (connector {connector}) is damaged ({len} bytes instead of 8)")]
    BadCheckpoint {
        /// Connector owning the partition.
        connector: String,
        /// The partition.
        partition: SourcePartition,
        /// Which checkpoint.
        name: &'static str,
        /// Stored length.
        len: usize,
    },
    /// A stored metadata value (schema, dead-letter bookkeeping) does not decode.
    #[error("WAL metadata {key:?} is damaged: {detail}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

impl WalError {
    /// Whether the storage under the WAL failed (I/O error, disk full, fsync): sled
    /// refuses further writes after one, so the process must stop and start again.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            WalError::Storage(_) | WalError::Sync { .. } | WalError::Segment { .. }
        )
    }
}

/// How far a commit goes to make appends durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// sled flush, then fsync of the database file: survives power loss.
    Fsync,
    /// sled flush only: survives a crash of the process, not of the machine.
    Flush,
}

/// Options for [`Wal::open`].
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// Durability of commits.
    pub sync: SyncPolicy,
    /// Cap on the encoded bytes of unforwarded entries; fetchers wait above it.
    pub max_bytes: u64,
    /// sled page cache size in bytes.
    pub cache_bytes: u64,
}

/// A closed segment is compacted no sooner than this after it was closed: under a
/// steady flow its last entries are forwarded within moments, and copying them would
/// be wasted.
const COMPACT_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// At most one compaction starts within this.
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

const FETCHED_NEXT: &[u8] = &[0, b'f'];
/// In sled's default tree: the last run stopped with no produce in doubt.
const CLEAN_STOP: &[u8] = b"clean-stop";
const FORWARDED_NEXT: &[u8] = &[0, b'w'];
const ENTRY_PREFIX: u8 = 1;
const TREE_PREFIX: &[u8] = b"partition\0";
/// The tree of metadata other than partitions: schemas, dead-letter bookkeeping.
const META_TREE: &[u8] = b"meta";

fn entry_key(first_offset: i64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    // Offsets are never negative, so the big-endian u64 sorts like the offset.
    key[1..].copy_from_slice(&(first_offset.max(0) as u64).to_be_bytes());
    key
}

fn entry_offset(key: &[u8]) -> Option<i64> {
    (key.len() == 9 && key[0] == ENTRY_PREFIX)
        .then(|| u64::from_be_bytes(key[1..].try_into().expect("8-byte slice")) as i64)
}

fn tree_name(connector: &str, partition: &SourcePartition) -> Vec<u8> {
    let mut name = TREE_PREFIX.to_vec();
    name.extend_from_slice(connector.as_bytes());
    name.push(0);
    name.extend_from_slice(partition.topic.as_bytes());
    name.push(0);
    name.extend_from_slice(partition.partition.to_string().as_bytes());
    name
}

fn parse_tree_name(name: &[u8]) -> Option<(String, SourcePartition)> {
    let rest = name.strip_prefix(TREE_PREFIX)?;
    let mut parts = rest.split(|b| *b == 0);
    let connector = std::str::from_utf8(parts.next()?).ok()?;
    let topic = std::str::from_utf8(parts.next()?).ok()?;
    let partition = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then(|| (connector.to_owned(), SourcePartition::new(topic, partition)))
}

#[derive(Debug)]
struct Shared {
    db: sled::Db,
    /// The entries' bytes; sled holds a pointer per entry.
    segments: segments::Segments,
    segments_dir: PathBuf,
    db_file: File,
    db_file_path: PathBuf,
    options: WalOptions,
    /// Created by this open (no earlier run used this data dir).
    new: bool,
    /// Encoded bytes of all unforwarded entries.
    used_bytes: AtomicU64,
    space_freed: Notify,
    /// Number of appends whose write has completed.
    written: AtomicU64,
    /// Highest `written` count known durable.
    durable: watch::Sender<u64>,
    flush_lock: Mutex<()>,
    /// Held while entries are removed or moved: a removal reads the pointers it frees,
    /// and a compaction must not move an entry between that read and the removal.
    moving: std::sync::Mutex<()>,
    /// A compaction is running.
    compacting: std::sync::atomic::AtomicBool,
    /// When the last compaction started.
    compacted_at: std::sync::Mutex<std::time::Instant>,
    /// Duration of each sync (flush, and fsync under [`SyncPolicy::Fsync`]), seconds.
    sync_seconds: Histogram,
}

/// The write-ahead log of one data dir. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

/// A metadata key and its value ([`Wal::meta_scan`]).
pub type MetaEntry = (Vec<u8>, Vec<u8>);

/// Offsets checkpointed for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoints {
    /// Next source offset to fetch; `None` before the first committed batch.
    pub fetched_next: Option<i64>,
    /// Next source offset to forward; `None` before the first acknowledged produce.
    pub forwarded_next: Option<i64>,
}

/// Figures for one partition, as `kafka-direct wal stats` prints them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartitionStats {
    /// Connector owning the partition.
    pub connector: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Unforwarded entries.
    pub entries: u64,
    /// Unforwarded records.
    pub records: u64,
    /// Encoded bytes of the entries.
    pub bytes: u64,
    /// Next offset to fetch.
    pub fetched_next: Option<i64>,
    /// Next offset to forward.
    pub forwarded_next: Option<i64>,
    /// Entries that failed their checksum or did not decode.
    pub damaged_entries: u64,
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, taking the data dir's lock.
    pub fn open(dir: &Path, options: WalOptions) -> Result<Self, WalError> {
        std::fs::create_dir_all(dir).map_err(|e| WalError::Open {
            path: dir.to_owned(),
            source: e.into(),
        })?;
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(options.cache_bytes)
            .open()
            .map_err(|source| match &source {
                sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
                    WalError::Locked {
                        path: dir.to_owned(),
                    }
                }
                sled::Error::Corruption { .. } => WalError::Damaged {
                    path: dir.to_owned(),
                    detail: source.to_string(),
                },
                _ => WalError::Open {
                    path: dir.to_owned(),
                    source,
                },
            })?;
        let db_file_path = dir.join("db");
        let db_file = File::open(&db_file_path).map_err(|e| WalError::Open {
            path: db_file_path.clone(),
            source: e.into(),
        })?;
        // Per segment, the entries sled points into; and the unforwarded bytes.
        let mut live = BTreeMap::new();
        let mut used = 0u64;
        for name in db.tree_names() {
            if parse_tree_name(&name).is_none() {
                continue;
            }
            for item in db.open_tree(name)?.range(entry_key(0)..) {
                let (_, value) = item?;
                if let Some(p) = Pointer::decode(&value) {
                    let (count, bytes) = live.entry(p.segment).or_insert((0u64, 0u64));
                    *count += 1;
                    *bytes += u64::from(p.len);
                }
                used += entry_len(&value);
            }
        }
        let segments_dir = dir.join("segments");
        let segments =
            Segments::open(&segments_dir, &live).map_err(|source| WalError::Segment {
                path: segments_dir.clone(),
                source,
            })?;
        let wal = Self {
            shared: Arc::new(Shared {
                new: !db.was_recovered(),
                db,
                segments,
                segments_dir,
                db_file,
                db_file_path,
                options,
                used_bytes: AtomicU64::new(0),
                space_freed: Notify::new(),
                written: AtomicU64::new(0),
                durable: watch::channel(0).0,
                flush_lock: Mutex::new(()),
                moving: std::sync::Mutex::new(()),
                compacting: std::sync::atomic::AtomicBool::new(false),
                compacted_at: std::sync::Mutex::new(std::time::Instant::now()),
                sync_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            }),
        };
        wal.shared.used_bytes.store(used, Ordering::Relaxed);
        wal.recover(dir)?;
        Ok(wal)
    }

    /// Reads every entry once, checking its checksum: a damaged one makes the WAL
    /// [`WalError::Damaged`], as sled's own damaged files do. An entry whose bytes are
    /// missing from its segment (cut short by a crash of the machine) was never
    /// committed, nor was any later entry of its partition (a commit fsyncs the
    /// segments before it flushes sled), or it was moved by a compaction not yet
    /// committed: those entries are dropped and `fetched_next` goes back to the first
    /// of them, so they are fetched again (the start-up alignment with the internal
    /// partition skips whatever of them is already stored).
    fn recover(&self, dir: &Path) -> Result<(), WalError> {
        let mut rolled_back = false;
        for (connector, partition) in self.partitions() {
            let log = self.partition(&connector, &partition)?;
            let mut torn_from = None;
            let mut write = sled::Batch::default();
            let (mut dropped, mut freed) = (Vec::new(), 0);
            for item in log.tree.range(entry_key(0)..) {
                let (key, value) = item?;
                let first = entry_offset(&key).unwrap_or(-1);
                let pointer = Pointer::decode(&value);
                if torn_from.is_none() && pointer.is_some_and(|p| !self.shared.segments.holds(&p)) {
                    torn_from = Some(first);
                }
                if torn_from.is_some() {
                    write.remove(key);
                    freed += entry_len(&value);
                    dropped.extend(pointer);
                    continue;
                }
                log.load(first, &value).map_err(|e| match e {
                    WalError::Corrupt { .. } => WalError::Damaged {
                        path: dir.to_owned(),
                        detail: e.to_string(),
                    },
                    other => other,
                })?;
            }
            if let Some(from) = torn_from {
                tracing::warn!(%connector, %partition, from, entries = dropped.len(),
                    "WAL entries whose bytes did not reach the disk before the machine stopped were never committed; fetching them again");
                write.insert(FETCHED_NEXT, &from.to_be_bytes());
                log.apply_removal(write, freed, &dropped)?;
                rolled_back = true;
            }
        }
        if rolled_back {
            self.shared.sync()?;
        }
        Ok(())
    }

    /// The log of one partition of one connector (created empty if new).
    pub fn partition(
        &self,
        connector: &str,
        partition: &SourcePartition,
    ) -> Result<PartitionLog, WalError> {
        let tree = self.shared.db.open_tree(tree_name(connector, partition))?;
        Ok(PartitionLog {
            wal: self.clone(),
            tree,
            connector: connector.to_owned(),
            partition: partition.clone(),
        })
    }

    /// Every (connector, partition) the WAL has a log for, sorted.
    pub fn partitions(&self) -> Vec<(String, SourcePartition)> {
        let mut out: Vec<_> = self
            .shared
            .db
            .tree_names()
            .iter()
            .filter_map(|name| parse_tree_name(name))
            .collect();
        out.sort();
        out
    }

    /// Deletes the log of one partition of a connector (its tree: entries and
    /// checkpoints). Durable with the next [`Wal::commit`].
    pub fn drop_partition(
        &self,
        connector: &str,
        partition: &SourcePartition,
    ) -> Result<(), WalError> {
        self.partition(connector, partition)?.reset(None)?;
        self.shared.db.drop_tree(tree_name(connector, partition))?;
        self.note_write();
        Ok(())
    }

    /// Encoded bytes of unforwarded entries.
    pub fn used_bytes(&self) -> u64 {
        self.shared.used_bytes.load(Ordering::Relaxed)
    }

    /// Waits until the WAL has room under its cap (backpressure; nothing is dropped).
    ///
    /// An empty WAL always has room, so a batch larger than the cap still gets through.
    pub async fn wait_for_room(&self) {
        loop {
            let notified = self.shared.space_freed.notified();
            if self.used_bytes() < self.shared.options.max_bytes {
                return;
            }
            notified.await;
        }
    }

    /// Whether the WAL is at or above its cap.
    pub fn is_full(&self) -> bool {
        self.used_bytes() >= self.shared.options.max_bytes
    }

    /// Makes every write that completed before this call durable (group commit).
    pub async fn commit(&self) -> Result<(), WalError> {
        self.commit_through(self.write_mark()).await
    }

    /// The number of writes completed so far: a mark for [`Wal::commit_through`].
    pub fn write_mark(&self) -> u64 {
        self.shared.written.load(Ordering::SeqCst)
    }

    /// Returns once every write counted in `mark` is durable, flushing (group commit)
    /// only if one is not yet; at once when they are.
    pub async fn commit_through(&self, mark: u64) -> Result<(), WalError> {
        let mine = mark;
        let mut durable = self.shared.durable.subscribe();
        loop {
            if *durable.borrow_and_update() >= mine {
                return Ok(());
            }
            let _guard = self.shared.flush_lock.lock().await;
            if *durable.borrow_and_update() >= mine {
                return Ok(());
            }
            // Every write counted here completed before the flush starts, so it is covered.
            let target = self.shared.written.load(Ordering::SeqCst);
            let shared = Arc::clone(&self.shared);
            tokio::task::spawn_blocking(move || shared.sync())
                .await
                .expect("the WAL flush task does not panic")?;
            self.shared.durable.send_replace(target);
            self.compact_in_background();
        }
    }

    /// Starts a compaction ([`Wal::compact`] of segments closed [`COMPACT_AFTER`] ago)
    /// unless one runs or one started within [`COMPACT_EVERY`].
    fn compact_in_background(&self) {
        {
            let mut at = self.shared.compacted_at.lock().expect("compaction clock");
            if at.elapsed() < COMPACT_EVERY || self.shared.compacting.swap(true, Ordering::SeqCst) {
                return;
            }
            *at = std::time::Instant::now();
        }
        let wal = self.clone();
        tokio::task::spawn_blocking(move || {
            match wal.compact(COMPACT_AFTER) {
                Ok(0) => {}
                Ok(moved) => tracing::debug!(moved, "WAL segment compacted"),
                // The next append meets the same storage failure and stops the service.
                Err(e) => tracing::warn!(error = %e, "WAL compaction failed"),
            }
            wal.shared.compacting.store(false, Ordering::SeqCst);
        });
    }

    /// Copies the live entries of the closed segment (closed at least `min_age` ago)
    /// whose live entries fill the smallest share of it, at most half, to the active
    /// segment, so it can be deleted. Returns the number of entries moved. The moves
    /// are durable with the next commit, which also deletes the emptied segment.
    pub fn compact(&self, min_age: std::time::Duration) -> Result<u64, WalError> {
        let shared = &self.shared;
        let Some(id) = shared.segments.to_compact(min_age) else {
            return Ok(0);
        };
        let mut moved = 0;
        for (connector, partition) in self.partitions() {
            let log = self.partition(&connector, &partition)?;
            for item in log.tree.range(entry_key(0)..) {
                let (key, value) = item?;
                let Some(old) = Pointer::decode(&value).filter(|p| p.segment == id) else {
                    continue;
                };
                let _moving = shared.moving.lock().expect("WAL move lock");
                let bytes = shared
                    .segments
                    .read(&old)
                    .map_err(|e| shared.segment_error(e))?;
                let new = shared
                    .segments
                    .append(&bytes)
                    .map_err(|e| shared.segment_error(e))?;
                match log
                    .tree
                    .compare_and_swap(&key, Some(&value), Some(&new.encode()[..]))?
                {
                    Ok(()) => {
                        shared.segments.release(&[old]);
                        moved += 1;
                    }
                    // Removed (forwarded) meanwhile.
                    Err(_) => shared.segments.release(&[new]),
                }
            }
        }
        self.note_write();
        Ok(moved)
    }

    /// Bytes the database's and the segments' files take on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0) + self.shared.segments.size_on_disk()
    }

    /// Durations of the WAL's syncs (group commits), in seconds.
    pub fn sync_seconds(&self) -> &Histogram {
        &self.shared.sync_seconds
    }

    /// Whether this open created the WAL (no earlier run used the data dir).
    pub fn is_new(&self) -> bool {
        self.shared.new
    }

    /// Records that this run stops with no produce in doubt; durable with the next sync
    /// (the service's final one).
    pub fn mark_clean_stop(&self) -> Result<(), WalError> {
        self.shared.db.insert(CLEAN_STOP, &[])?;
        Ok(())
    }

    /// Whether the previous run stopped cleanly ([`Wal::mark_clean_stop`]). Removes the
    /// mark and syncs before returning, so that a crash of this run is never taken for
    /// a clean stop. Blocking.
    pub fn take_clean_stop(&self) -> Result<bool, WalError> {
        let had = self.shared.db.remove(CLEAN_STOP)?.is_some();
        if had {
            self.shared.sync()?;
        }
        Ok(had)
    }

    /// Flushes (and fsyncs, under [`SyncPolicy::Fsync`]) from a blocking context.
    pub fn sync_blocking(&self) -> Result<(), WalError> {
        self.shared.sync()
    }

    /// Figures for every partition, decoding each entry to check it.
    pub fn stats(&self) -> Result<Vec<PartitionStats>, WalError> {
        let mut out = Vec::new();
        for (connector, partition) in self.partitions() {
            out.push(self.partition(&connector, &partition)?.stats()?);
        }
        Ok(out)
    }

    /// Stores `value` under `key` in the metadata tree (schemas, dead-letter
    /// bookkeeping); durable with the next [`Wal::commit`].
    pub fn meta_put(&self, key: &[u8], value: &[u8]) -> Result<(), WalError> {
        self.meta()?.insert(key, value)?;
        self.note_write();
        Ok(())
    }

    /// Removes the metadata value under `key`; durable with the next [`Wal::commit`].
    pub fn meta_remove(&self, key: &[u8]) -> Result<(), WalError> {
        self.meta()?.remove(key)?;
        self.note_write();
        Ok(())
    }

    /// The metadata value under `key`.
    pub fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, WalError> {
        Ok(self.meta()?.get(key)?.map(|v| v.to_vec()))
    }

    /// Every metadata entry whose key starts with `prefix`, in key order.
    pub fn meta_scan(&self, prefix: &[u8]) -> Result<Vec<MetaEntry>, WalError> {
        self.meta()?
            .scan_prefix(prefix)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn meta(&self) -> Result<sled::Tree, WalError> {
        Ok(self.shared.db.open_tree(META_TREE)?)
    }

    fn note_write(&self) {
        self.shared.written.fetch_add(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn sync(&self) -> Result<(), WalError> {
        let started = std::time::Instant::now();
        let (written, doomed) = self.segments.begin_commit();
        if self.options.sync == SyncPolicy::Fsync {
            for file in written {
                file.sync_data().map_err(|e| self.segment_error(e))?;
            }
        }
        self.db.flush()?;
        if self.options.sync == SyncPolicy::Fsync {
            self.db_file.sync_data().map_err(|source| WalError::Sync {
                path: self.db_file_path.clone(),
                source,
            })?;
        }
        self.sync_seconds.observe(started.elapsed().as_secs_f64());
        self.segments
            .delete(doomed)
            .map_err(|e| self.segment_error(e))
    }

    fn segment_error(&self, source: std::io::Error) -> WalError {
        WalError::Segment {
            path: self.segments_dir.clone(),
            source,
        }
    }
}

/// Encoded bytes of the entry a sled value holds or points at.
fn entry_len(value: &[u8]) -> u64 {
    Pointer::decode(value).map_or(value.len() as u64, |p| u64::from(p.len))
}

/// The log of one source partition: its entries and checkpoints, in one sled tree.
#[derive(Debug, Clone)]
pub struct PartitionLog {
    wal: Wal,
    tree: sled::Tree,
    connector: String,
    partition: SourcePartition,
}

impl PartitionLog {
    /// The partition this log belongs to.
    pub fn source_partition(&self) -> &SourcePartition {
        &self.partition
    }

    /// The two checkpoints.
    pub fn checkpoints(&self) -> Result<Checkpoints, WalError> {
        Ok(Checkpoints {
            fetched_next: self.read_checkpoint(FETCHED_NEXT, "fetched_next")?,
            forwarded_next: self.read_checkpoint(FORWARDED_NEXT, "forwarded_next")?,
        })
    }

    fn read_checkpoint(&self, key: &[u8], name: &'static str) -> Result<Option<i64>, WalError> {
        match self.tree.get(key)? {
            None => Ok(None),
            Some(v) => {
                let bytes: [u8; 8] =
                    v.as_ref().try_into().map_err(|_| WalError::BadCheckpoint {
                        connector: self.connector.clone(),
                        partition: self.partition.clone(),
                        name,
                        len: v.len(),
                    })?;
                Ok(Some(i64::from_be_bytes(bytes)))
            }
        }
    }

    /// Stores a fetched batch and advances `fetched_next` to its `next_offset`, atomically.
    ///
    /// Not durable until a later [`Wal::commit`] returns.
    pub fn append(&self, batch: &FetchedBatch) -> Result<(), WalError> {
        let shared = &self.wal.shared;
        let mut write = sled::Batch::default();
        let mut len = 0;
        let mut pointer = None;
        if !batch.records.is_empty() {
            let value = codec::encode(batch);
            len = value.len() as u64;
            let p = shared
                .segments
                .append(&value)
                .map_err(|e| shared.segment_error(e))?;
            write.insert(&entry_key(batch.first_offset()), &p.encode());
            pointer = Some(p);
        }
        write.insert(FETCHED_NEXT, &batch.next_offset.to_be_bytes());
        if let Err(e) = self.tree.apply_batch(write) {
            shared.segments.release(pointer.as_slice());
            return Err(e.into());
        }
        if !batch.records.is_empty() {
            self.wal.shared.used_bytes.fetch_add(len, Ordering::Relaxed);
        }
        self.wal.note_write();
        Ok(())
    }

    /// Reads the oldest entries, stopping after `max_records` records or `max_bytes`
    /// encoded bytes (at least one entry when any exists).
    pub fn oldest(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<FetchedBatch>, WalError> {
        self.entries_after(None, max_records, max_bytes)
    }

    /// As [`PartitionLog::oldest`], but only entries whose first offset is above `after`
    /// (the first offset of the last entry the caller already holds).
    pub fn entries_after(
        &self,
        after: Option<i64>,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<FetchedBatch>, WalError> {
        let start = after.map_or(entry_key(0), |a| entry_key(a.saturating_add(1)));
        let mut out = Vec::new();
        let (mut records, mut bytes) = (0, 0);
        for item in self.tree.range(start..) {
            let (key, value) = item?;
            let offset = entry_offset(&key).unwrap_or(-1);
            let len = entry_len(&value) as usize;
            if !out.is_empty() && (records >= max_records || bytes + len > max_bytes) {
                break;
            }
            let batch = self.load(offset, &value)?;
            records += batch.records.len();
            bytes += len;
            out.push(batch);
        }
        Ok(out)
    }

    /// Removes the entries starting at `first_offsets` (the caller decoded them and knows
    /// they are forwarded) and stores `forwarded_next`, atomically, without decoding.
    pub fn release_entries(
        &self,
        first_offsets: &[i64],
        forwarded_next: i64,
    ) -> Result<(), WalError> {
        let _moving = self.wal.shared.moving.lock().expect("WAL move lock");
        let mut write = sled::Batch::default();
        let (mut freed, mut pointers) = (0u64, Vec::new());
        for &first in first_offsets {
            let key = entry_key(first);
            if let Some(value) = self.tree.get(key)? {
                freed += entry_len(&value);
                pointers.extend(Pointer::decode(&value));
                write.remove(&key);
            }
        }
        write.insert(FORWARDED_NEXT, &forwarded_next.to_be_bytes());
        self.apply_removal(write, freed, &pointers)
    }

    /// Applies a batch that removes entries (`freed` bytes, the segment bytes at
    /// `pointers`), and wakes fetchers waiting for room.
    fn apply_removal(
        &self,
        write: sled::Batch,
        freed: u64,
        pointers: &[Pointer],
    ) -> Result<(), WalError> {
        self.tree.apply_batch(write)?;
        self.wal.shared.segments.release(pointers);
        self.wal
            .shared
            .used_bytes
            .fetch_sub(freed, Ordering::Relaxed);
        self.wal.note_write();
        if freed > 0 {
            self.wal.shared.space_freed.notify_waiters();
        }
        Ok(())
    }

    /// The batch a sled value (of the entry at `first_offset`) holds or points at.
    fn load(&self, first_offset: i64, value: &[u8]) -> Result<FetchedBatch, WalError> {
        let decoded = match Pointer::decode(value) {
            Some(p) => {
                let shared = &self.wal.shared;
                let bytes = match shared.segments.read(&p) {
                    Ok(bytes) => bytes,
                    // A compaction moved the entry and its old segment is gone since
                    // the value was read: read it where it is now.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        match self.tree.get(entry_key(first_offset))? {
                            Some(now) if *now != *value => return self.load(first_offset, &now),
                            _ => return Err(shared.segment_error(e)),
                        }
                    }
                    Err(e) => return Err(shared.segment_error(e)),
                };
                codec::decode(&bytes)
            }
            None => codec::decode(value),
        };
        decoded.map_err(|reason| self.corrupt(first_offset, reason))
    }

    fn corrupt(&self, offset: i64, reason: DecodeError) -> WalError {
        WalError::Corrupt {
            connector: self.connector.clone(),
            partition: self.partition.clone(),
            offset,
            reason,
        }
    }

    /// Removes every entry whose records all lie below `forwarded_next` and stores
    /// `forwarded_next`, atomically.
    pub fn release(&self, forwarded_next: i64) -> Result<(), WalError> {
        self.release_and_bump(forwarded_next, None)
    }

    /// Aligns the log with an internal partition that already stores every source
    /// record below `stored_next`: releases the entries below it, and moves
    /// `fetched_next` up to it if it is behind (for example after the data dir was
    /// lost), so nothing stored is fetched again. Atomic.
    pub fn resume_from(&self, stored_next: i64) -> Result<(), WalError> {
        let fetched_next = self.checkpoints()?.fetched_next;
        let bump = (fetched_next.is_none_or(|f| f < stored_next)).then_some(stored_next);
        self.release_and_bump(stored_next, bump)
    }

    fn release_and_bump(
        &self,
        forwarded_next: i64,
        fetched_next: Option<i64>,
    ) -> Result<(), WalError> {
        let _moving = self.wal.shared.moving.lock().expect("WAL move lock");
        let mut write = sled::Batch::default();
        let (mut freed, mut pointers) = (0u64, Vec::new());
        for item in self.tree.range(entry_key(0)..) {
            let (key, value) = item?;
            let first = entry_offset(&key).unwrap_or(i64::MAX);
            if first >= forwarded_next {
                break;
            }
            let batch = self.load(first, &value)?;
            if batch.next_offset > forwarded_next {
                break;
            }
            write.remove(key);
            freed += entry_len(&value);
            pointers.extend(Pointer::decode(&value));
        }
        write.insert(FORWARDED_NEXT, &forwarded_next.to_be_bytes());
        if let Some(next) = fetched_next {
            write.insert(FETCHED_NEXT, &next.to_be_bytes());
        }
        self.apply_removal(write, freed, &pointers)
    }

    /// Drops every entry and sets both checkpoints to `offset`, or removes them with
    /// `None` (the next fetch applies `auto.offset.reset`). Atomic; durable with the
    /// next [`Wal::commit`].
    pub fn reset(&self, offset: Option<i64>) -> Result<(), WalError> {
        let _moving = self.wal.shared.moving.lock().expect("WAL move lock");
        let mut write = sled::Batch::default();
        let (mut freed, mut pointers) = (0u64, Vec::new());
        for item in self.tree.range(entry_key(0)..) {
            let (key, value) = item?;
            if entry_offset(&key).is_none() {
                continue;
            }
            write.remove(key);
            freed += entry_len(&value);
            pointers.extend(Pointer::decode(&value));
        }
        match offset {
            Some(next) => {
                write.insert(FETCHED_NEXT, &next.to_be_bytes());
                write.insert(FORWARDED_NEXT, &next.to_be_bytes());
            }
            None => {
                write.remove(FETCHED_NEXT);
                write.remove(FORWARDED_NEXT);
            }
        }
        self.apply_removal(write, freed, &pointers)
    }

    /// Entry count, sizes and checkpoints; decodes every entry to count damage.
    pub fn stats(&self) -> Result<PartitionStats, WalError> {
        let cp = self.checkpoints()?;
        let mut stats = PartitionStats {
            connector: self.connector.clone(),
            topic: self.partition.topic.clone(),
            partition: self.partition.partition,
            entries: 0,
            records: 0,
            bytes: 0,
            fetched_next: cp.fetched_next,
            forwarded_next: cp.forwarded_next,
            damaged_entries: 0,
        };
        for item in self.tree.range(entry_key(0)..) {
            let (key, value) = item?;
            stats.entries += 1;
            stats.bytes += entry_len(&value);
            match self.load(entry_offset(&key).unwrap_or(-1), &value) {
                Ok(batch) => stats.records += batch.records.len() as u64,
                Err(WalError::Corrupt { .. }) => stats.damaged_entries += 1,
                Err(e) => return Err(e),
            }
        }
        Ok(stats)
    }

    /// Every damaged entry: its first offset and what is wrong.
    pub fn check(&self) -> Result<Vec<(i64, DecodeError)>, WalError> {
        let mut damaged = Vec::new();
        for item in self.tree.range(entry_key(0)..) {
            let (key, value) = item?;
            let first = entry_offset(&key).unwrap_or(-1);
            match self.load(first, &value) {
                Ok(_) => {}
                Err(WalError::Corrupt { reason, .. }) => damaged.push((first, reason)),
                Err(e) => return Err(e),
            }
        }
        Ok(damaged)
    }
}

impl PartitionLog {
    /// The log's two halves: the fetcher's [`LogWriter`] and the forwarder's
    /// [`LogReader`]. Data moves one way, from the writer through the log to the reader.
    pub fn split(self) -> (LogWriter, LogReader) {
        (LogWriter { log: self.clone() }, LogReader { log: self })
    }
}

/// The fetcher's half of a partition's log: append batches, commit them, wait for room.
#[derive(Debug)]
pub struct LogWriter {
    log: PartitionLog,
}

impl LogWriter {
    /// The partition this log belongs to.
    pub fn source_partition(&self) -> &SourcePartition {
        self.log.source_partition()
    }

    /// The offset after the last appended batch (`None`: nothing ever appended).
    pub fn fetched_next(&self) -> Result<Option<i64>, WalError> {
        Ok(self.log.checkpoints()?.fetched_next)
    }

    /// [`PartitionLog::append`].
    pub fn append(&self, batch: &FetchedBatch) -> Result<(), WalError> {
        self.log.append(batch)
    }

    /// [`Wal::commit`]: returns once every append made before the call is durable.
    pub async fn commit(&self) -> Result<(), WalError> {
        self.log.wal.commit().await
    }

    /// [`Wal::is_full`].
    pub fn is_full(&self) -> bool {
        self.log.wal.is_full()
    }

    /// [`Wal::used_bytes`].
    pub fn used_bytes(&self) -> u64 {
        self.log.wal.used_bytes()
    }

    /// [`Wal::wait_for_room`].
    pub async fn wait_for_room(&self) {
        self.log.wal.wait_for_room().await
    }
}

/// The forwarder's half of a partition's log: read the oldest entries, release them once
/// stored, align with what the internal partition stores.
#[derive(Debug)]
pub struct LogReader {
    log: PartitionLog,
}

impl LogReader {
    /// The partition this log belongs to.
    pub fn source_partition(&self) -> &SourcePartition {
        self.log.source_partition()
    }

    /// [`PartitionLog::checkpoints`].
    pub fn checkpoints(&self) -> Result<Checkpoints, WalError> {
        self.log.checkpoints()
    }

    /// [`PartitionLog::oldest`].
    pub fn oldest(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<FetchedBatch>, WalError> {
        self.log.oldest(max_records, max_bytes)
    }

    /// [`PartitionLog::entries_after`].
    pub fn entries_after(
        &self,
        after: Option<i64>,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<FetchedBatch>, WalError> {
        self.log.entries_after(after, max_records, max_bytes)
    }

    /// [`PartitionLog::release_entries`].
    pub fn release_entries(
        &self,
        first_offsets: &[i64],
        forwarded_next: i64,
    ) -> Result<(), WalError> {
        self.log.release_entries(first_offsets, forwarded_next)
    }

    /// [`PartitionLog::resume_from`].
    pub fn resume_from(&self, stored_next: i64) -> Result<(), WalError> {
        self.log.resume_from(stored_next)
    }

    /// [`Wal::commit_through`]: the metadata a record to be produced depends on (a schema
    /// version) is durable first.
    pub async fn commit_through(&self, mark: u64) -> Result<(), WalError> {
        self.log.wal.commit_through(mark).await
    }
}

#[cfg(test)]
impl Wal {
    /// Opens `dir` again in the same test process, waiting (10 s at most) for sled's
    /// flusher thread of an earlier open to let go of the lock.
    #[allow(clippy::disallowed_methods)] // plain tests, no async runtime to block
    pub(crate) fn open_when_unlocked(dir: &Path, options: WalOptions) -> Result<Wal, WalError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Wal::open(dir, options.clone()) {
                Err(WalError::Locked { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => return result,
            }
        }
    }

    /// [`Wal::open_when_unlocked`] with `wal.sync = flush` and room to spare: the WAL of
    /// the unit tests of the modules above it (state, schema registry).
    pub(crate) fn open_for_tests(dir: &Path) -> Wal {
        let options = WalOptions {
            sync: SyncPolicy::Flush,
            max_bytes: 1 << 30,
            cache_bytes: 1 << 20,
        };
        Wal::open_when_unlocked(dir, options).expect("the test WAL opens")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::record::SourceRecord;

    /// The WAL in `dir` and the log of partition t/0 of connector c.
    fn open_one(dir: &Path) -> (Wal, PartitionLog) {
        let wal = Wal::open(dir, options()).unwrap();
        let log = wal.partition("c", &SourcePartition::new("t", 0)).unwrap();
        (wal, log)
    }

    fn options() -> WalOptions {
        WalOptions {
            sync: SyncPolicy::Fsync,
            max_bytes: 1 << 20,
            cache_bytes: 8 << 20,
        }
    }

    fn try_reopen(dir: &Path) -> Result<Wal, WalError> {
        Wal::open_when_unlocked(dir, options())
    }

    fn reopen(dir: &Path) -> Wal {
        try_reopen(dir).unwrap()
    }

    /// The one segment file of the WAL in `dir`.
    fn only_segment(dir: &Path) -> PathBuf {
        let files = segment_files(dir);
        assert_eq!(files.len(), 1, "{files:?}");
        files.into_iter().next().unwrap()
    }

    /// The segment files of the WAL in `dir`.
    fn segment_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir.join("segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    }

    fn batch(offsets: &[i64], next: i64) -> FetchedBatch {
        FetchedBatch {
            records: offsets
                .iter()
                .map(|&offset| SourceRecord {
                    offset,
                    timestamp_ms: offset,
                    key: None,
                    value: Some(vec![offset as u8; 10]),
                    headers: vec![],
                })
                .collect(),
            next_offset: next,
        }
    }

    #[test]
    fn the_clean_stop_mark_counts_for_the_next_open_only() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Wal::open_when_unlocked(dir.path(), options()).unwrap();
        let wal = open();
        assert!(wal.is_new());
        assert!(!wal.take_clean_stop().unwrap());
        wal.mark_clean_stop().unwrap();
        wal.sync_blocking().unwrap();
        drop(wal);

        let wal = open();
        assert!(!wal.is_new());
        assert!(
            wal.take_clean_stop().unwrap(),
            "the mark of a clean stop is read"
        );
        drop(wal); // this run stops without marking a clean stop

        let wal = open();
        assert!(
            !wal.take_clean_stop().unwrap(),
            "taking the mark removed it durably"
        );
        assert!(wal.partitions().is_empty(), "the mark is not a partition");
    }

    #[tokio::test]
    async fn append_then_release_keeps_checkpoints_and_entries_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, log) = open_one(dir.path());
        assert_eq!(log.checkpoints().unwrap(), Checkpoints::default());

        log.append(&batch(&[0, 1, 2], 3)).unwrap();
        log.append(&batch(&[5, 6], 8)).unwrap();
        wal.commit().await.unwrap();
        assert_eq!(log.checkpoints().unwrap().fetched_next, Some(8));
        let oldest = log.oldest(usize::MAX, usize::MAX).unwrap();
        assert_eq!(oldest, vec![batch(&[0, 1, 2], 3), batch(&[5, 6], 8)]);
        assert!(wal.used_bytes() > 0);

        log.release(3).unwrap();
        assert_eq!(
            log.oldest(usize::MAX, usize::MAX).unwrap(),
            vec![batch(&[5, 6], 8)]
        );
        assert_eq!(log.checkpoints().unwrap().forwarded_next, Some(3));
        log.release(8).unwrap();
        assert!(log.oldest(usize::MAX, usize::MAX).unwrap().is_empty());
        assert_eq!(wal.used_bytes(), 0);
    }

    #[tokio::test]
    async fn reopen_restores_checkpoints_entries_and_size() {
        let dir = tempfile::tempdir().unwrap();
        let used;
        {
            let wal = Wal::open(dir.path(), options()).unwrap();
            let log = wal.partition("c", &SourcePartition::new("t", 3)).unwrap();
            log.append(&batch(&[10, 11], 12)).unwrap();
            wal.commit().await.unwrap();
            used = wal.used_bytes();
        }
        let wal = Wal::open_when_unlocked(dir.path(), options()).unwrap();
        assert_eq!(
            wal.partitions(),
            vec![("c".to_owned(), SourcePartition::new("t", 3))]
        );
        assert_eq!(wal.used_bytes(), used);
        let log = wal.partition("c", &SourcePartition::new("t", 3)).unwrap();
        assert_eq!(log.checkpoints().unwrap().fetched_next, Some(12));
        assert_eq!(log.oldest(10, 1 << 20).unwrap(), vec![batch(&[10, 11], 12)]);
    }

    #[test]
    fn second_open_of_a_data_dir_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Wal::open(dir.path(), options()).unwrap();
        let err = Wal::open(dir.path(), options()).unwrap_err();
        assert!(matches!(err, WalError::Locked { .. }), "{err}");
    }

    #[test]
    fn damaged_entry_is_reported_with_partition_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), options()).unwrap();
        let log = wal.partition("c", &SourcePartition::new("t", 1)).unwrap();
        log.append(&batch(&[4, 5], 6)).unwrap();
        log.append(&batch(&[6], 7)).unwrap();
        let segment = only_segment(dir.path());
        let mut bytes = std::fs::read(&segment).unwrap();
        bytes[10] ^= 0x55;
        std::fs::write(&segment, bytes).unwrap();

        let err = log.oldest(10, 1 << 20).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains("t/1") && message.contains("offset 4"),
            "{message}"
        );
        assert_eq!(log.check().unwrap().len(), 1);
        assert_eq!(log.stats().unwrap().damaged_entries, 1);
        drop((log, wal));

        // Reopened, the WAL refuses to start, naming the entry.
        let err = try_reopen(dir.path()).unwrap_err();
        assert!(matches!(err, WalError::Damaged { .. }), "{err}");
        assert!(err.to_string().contains("offset 4"), "{err}");
    }

    #[test]
    fn entries_cut_short_by_a_machine_crash_are_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (wal, log) = open_one(dir.path());
            log.append(&batch(&[0, 1], 2)).unwrap();
            log.append(&batch(&[2, 3], 4)).unwrap();
            log.append(&batch(&[4], 5)).unwrap();
            wal.sync_blocking().unwrap();
        }
        // The pointers reached the disk, the last entries' bytes did not.
        let segment = only_segment(dir.path());
        let len = std::fs::metadata(&segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        let first_len = codec::encode(&batch(&[0, 1], 2)).len() as u64;
        file.set_len(first_len + 3).unwrap();
        assert!(first_len + 3 < len);

        let wal = reopen(dir.path());
        let log = wal.partition("c", &SourcePartition::new("t", 0)).unwrap();
        assert_eq!(log.checkpoints().unwrap().fetched_next, Some(2));
        let kept = log.oldest(100, 1 << 20).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].next_offset, 2);
        assert_eq!(wal.used_bytes(), first_len);
        // Appending again reuses the offsets, in a new segment.
        log.append(&batch(&[2, 3, 4], 5)).unwrap();
        assert_eq!(log.oldest(100, 1 << 20).unwrap().len(), 2);
    }

    #[test]
    fn entries_stored_whole_in_sled_by_earlier_builds_are_read_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, log) = open_one(dir.path());
        let old = codec::encode(&batch(&[0, 1], 2));
        log.tree.insert(entry_key(0), old.clone()).unwrap();
        log.tree.insert(FETCHED_NEXT, &2i64.to_be_bytes()).unwrap();
        log.append(&batch(&[2], 3)).unwrap();
        drop((log, wal));

        let wal = reopen(dir.path());
        let log = wal.partition("c", &SourcePartition::new("t", 0)).unwrap();
        let entries = log.oldest(100, 1 << 20).unwrap();
        assert_eq!(entries, vec![batch(&[0, 1], 2), batch(&[2], 3)]);
        let new_len = codec::encode(&batch(&[2], 3)).len() as u64;
        assert_eq!(wal.used_bytes(), old.len() as u64 + new_len);
        log.release(3).unwrap();
        assert_eq!(wal.used_bytes(), 0);
        assert!(log.oldest(100, 1 << 20).unwrap().is_empty());
    }

    #[test]
    fn compaction_moves_a_stuck_partitions_entries_out_of_a_mostly_forwarded_segment() {
        let dir = tempfile::tempdir().unwrap();
        let (stuck, flowing) = (SourcePartition::new("t", 0), SourcePartition::new("t", 1));
        {
            let wal = Wal::open(dir.path(), options()).unwrap();
            let (a, b) = (
                wal.partition("c", &stuck).unwrap(),
                wal.partition("c", &flowing).unwrap(),
            );
            for i in 0..10 {
                a.append(&batch(&[i], i + 1)).unwrap();
                b.append(&batch(&[i * 3, i * 3 + 1, i * 3 + 2], i * 3 + 3))
                    .unwrap();
            }
            wal.sync_blocking().unwrap();
        }
        let wal = reopen(dir.path());
        let (a, b) = (
            wal.partition("c", &stuck).unwrap(),
            wal.partition("c", &flowing).unwrap(),
        );
        let used = wal.used_bytes();
        assert_eq!(
            wal.compact(Duration::ZERO).unwrap(),
            0,
            "more than half is live"
        );
        b.release(30).unwrap();
        let files = || segment_files(dir.path()).len();
        assert_eq!(
            wal.compact(Duration::from_secs(3600)).unwrap(),
            0,
            "closed too recently"
        );
        assert_eq!(wal.compact(Duration::ZERO).unwrap(), 10);
        assert_eq!(files(), 2);
        wal.sync_blocking().unwrap();
        assert_eq!(
            files(),
            1,
            "the old segment is deleted once the moves are durable"
        );
        let want: Vec<FetchedBatch> = (0..10).map(|i| batch(&[i], i + 1)).collect();
        assert_eq!(a.oldest(100, 1 << 20).unwrap(), want);
        let stuck_bytes: usize = want.iter().map(|b| codec::encode(b).len()).sum();
        assert_eq!(wal.used_bytes(), stuck_bytes as u64);
        assert!(used > wal.used_bytes());
        drop((a, b, wal));
        let wal = reopen(dir.path());
        let a = wal.partition("c", &stuck).unwrap();
        assert_eq!(a.oldest(100, 1 << 20).unwrap(), want);
    }

    #[test]
    fn a_segment_whose_entries_are_all_released_is_deleted_at_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, log) = open_one(dir.path());
        log.append(&batch(&[0], 1)).unwrap();
        wal.sync_blocking().unwrap();
        drop((log, wal));
        // A new run appends to a new segment; releasing the old run's entry frees its.
        let wal = reopen(dir.path());
        let log = wal.partition("c", &SourcePartition::new("t", 0)).unwrap();
        log.append(&batch(&[1], 2)).unwrap();
        let files = || segment_files(dir.path()).len();
        assert_eq!(files(), 2);
        log.release(1).unwrap();
        assert_eq!(files(), 2, "kept until the release is durable");
        wal.sync_blocking().unwrap();
        assert_eq!(files(), 1);
        assert_eq!(log.oldest(100, 1 << 20).unwrap(), vec![batch(&[1], 2)]);
    }

    #[test]
    fn entries_after_reads_only_newer_entries_and_release_entries_frees_them() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, log) = open_one(dir.path());
        log.append(&batch(&[0, 1], 2)).unwrap();
        log.append(&batch(&[2, 3], 4)).unwrap();
        log.append(&batch(&[6], 7)).unwrap();
        assert_eq!(
            log.entries_after(Some(0), 10, 1 << 20).unwrap(),
            vec![batch(&[2, 3], 4), batch(&[6], 7)]
        );
        assert_eq!(
            log.entries_after(Some(2), 1, 1 << 20).unwrap(),
            vec![batch(&[6], 7)]
        );
        log.release_entries(&[0, 2], 4).unwrap();
        assert_eq!(log.oldest(10, 1 << 20).unwrap(), vec![batch(&[6], 7)]);
        assert_eq!(log.checkpoints().unwrap().forwarded_next, Some(4));
        log.release_entries(&[6], 7).unwrap();
        assert_eq!(wal.used_bytes(), 0);
    }

    #[test]
    fn resume_from_releases_stored_entries_and_never_moves_fetched_next_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_wal, log) = open_one(dir.path());
        log.append(&batch(&[0, 1], 2)).unwrap();
        log.append(&batch(&[2, 3], 4)).unwrap();
        log.resume_from(3).unwrap();
        // [2, 3] is only half stored: it stays, the forwarder skips offset 2.
        assert_eq!(log.oldest(10, 1 << 20).unwrap(), vec![batch(&[2, 3], 4)]);
        assert_eq!(
            log.checkpoints().unwrap(),
            Checkpoints {
                fetched_next: Some(4),
                forwarded_next: Some(3)
            }
        );
    }

    #[test]
    fn resume_from_ahead_of_the_wal_moves_fetched_next_up() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, log) = open_one(dir.path());
        log.append(&batch(&[0, 1], 2)).unwrap();
        log.append(&batch(&[2, 3], 4)).unwrap();
        log.resume_from(9).unwrap();
        assert!(log.oldest(10, 1 << 20).unwrap().is_empty());
        assert_eq!(wal.used_bytes(), 0);
        assert_eq!(
            log.checkpoints().unwrap(),
            Checkpoints {
                fetched_next: Some(9),
                forwarded_next: Some(9)
            }
        );
        let fresh = wal.partition("c", &SourcePartition::new("t", 1)).unwrap();
        fresh.resume_from(5).unwrap();
        assert_eq!(fresh.checkpoints().unwrap().fetched_next, Some(5));
    }

    #[tokio::test]
    async fn wait_for_room_blocks_while_full_and_wakes_on_release() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(
            dir.path(),
            WalOptions {
                max_bytes: 10,
                ..options()
            },
        )
        .unwrap();
        let log = wal.partition("c", &SourcePartition::new("t", 0)).unwrap();
        log.append(&batch(&[0, 1], 2)).unwrap();
        assert!(wal.is_full());
        let waiter = tokio::spawn({
            let wal = wal.clone();
            async move { wal.wait_for_room().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a full WAL must make fetchers wait");
        log.release(2).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("release wakes the waiter")
            .unwrap();
    }
}
