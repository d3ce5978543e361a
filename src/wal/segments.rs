//! Entry bytes in append-only segment files; sled keeps a small [`Pointer`] per entry.
//!
//! sled holds every value of a tree in memory (large ones also in a file of their
//! own), so a WAL whose entries were sled values used about 1.1× its unforwarded bytes
//! of RAM whatever its cache size. Here an entry's bytes are appended to the active
//! segment (`segments/<id>.seg`, a new one past [`SEGMENT_BYTES`]) and only the
//! pointer goes into sled, in the same atomic batch as the checkpoint.
//!
//! - Durability: a commit fsyncs the segments written since the last one *before* it
//!   flushes sled, so a durable pointer never points at bytes that are not.
//! - Space: each segment counts its live entries; one whose count falls to zero is
//!   deleted after the next commit, once the removal of its last pointer is durable
//!   (deleting it earlier could leave a recovered pointer to a missing file).
//! - Compaction: a segment closed for a while whose live entries fill at most half of it
//!   (the others forwarded, these held back by a slow or stuck partition) has them
//!   copied to the active segment ([`super::Wal::compact`]), so one partition cannot
//!   pin every segment written since it stalled.
//! - A segment is never appended to after a restart: the first append of a run opens a
//!   new one, so a torn tail left by a crash is never written over.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A segment is closed and a new one started once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 64 << 20;

/// First byte of a pointer value; an entry stored whole in sled (by builds before
/// segments) starts with the codec's version byte instead.
const POINTER_TAG: u8 = 0xfe;
const POINTER_LEN: usize = 1 + 8 + 8 + 4;

/// Where an entry's bytes lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// Segment id.
    pub segment: u64,
    /// Byte offset in the segment.
    pub at: u64,
    /// Length in bytes.
    pub len: u32,
}

impl Pointer {
    /// The sled value for this pointer.
    pub fn encode(&self) -> [u8; POINTER_LEN] {
        let mut out = [0u8; POINTER_LEN];
        out[0] = POINTER_TAG;
        out[1..9].copy_from_slice(&self.segment.to_be_bytes());
        out[9..17].copy_from_slice(&self.at.to_be_bytes());
        out[17..].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// The pointer in a sled value, or `None` for a value holding the entry itself.
    pub fn decode(value: &[u8]) -> Option<Self> {
        (value.len() == POINTER_LEN && value[0] == POINTER_TAG).then(|| Self {
            segment: u64::from_be_bytes(value[1..9].try_into().expect("8 bytes")),
            at: u64::from_be_bytes(value[9..17].try_into().expect("8 bytes")),
            len: u32::from_be_bytes(value[17..].try_into().expect("4 bytes")),
        })
    }
}

#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes written (for the active one) or found on disk.
    len: u64,
    /// Entries whose pointer is still in sled.
    live: u64,
    /// Their bytes.
    live_bytes: u64,
    /// When appends moved to a newer segment; `None` for the active one.
    closed_at: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    segments: BTreeMap<u64, Segment>,
    /// The segment appends go to; `None` until the first append of this run.
    active: Option<u64>,
    next_id: u64,
    /// Written since the last commit's fsync.
    unsynced: HashSet<u64>,
    /// No live entry left and not active: deleted after the next commit.
    doomed: Vec<u64>,
}

/// The segment files of one WAL.
#[derive(Debug)]
pub struct Segments {
    dir: PathBuf,
    inner: Mutex<Inner>,
}

fn file_name(id: u64) -> String {
    format!("{id:020}.seg")
}

fn parse_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

impl Segments {
    /// Opens the segments in `dir` (created if missing). `live` counts, per segment,
    /// the pointers sled holds and their bytes; a segment file without any is deleted
    /// (its entries were released, or never committed).
    pub fn open(dir: &Path, live: &BTreeMap<u64, (u64, u64)>) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        let mut next_id = 0;
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let Some(id) = item.file_name().to_str().and_then(parse_name) else {
                continue;
            };
            next_id = next_id.max(id + 1);
            match live.get(&id) {
                Some(&(count, bytes)) if count > 0 => {
                    let file = File::open(item.path())?;
                    let len = file.metadata()?.len();
                    segments.insert(
                        id,
                        Segment {
                            file: Arc::new(file),
                            len,
                            live: count,
                            live_bytes: bytes,
                            closed_at: Some(Instant::now()),
                        },
                    );
                }
                _ => std::fs::remove_file(item.path())?,
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
            inner: Mutex::new(Inner {
                segments,
                active: None,
                next_id,
                unsynced: HashSet::new(),
                doomed: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("segments lock")
    }

    /// Whether `p` lies within its segment as found on disk (false for a missing one).
    pub fn holds(&self, p: &Pointer) -> bool {
        self.lock()
            .segments
            .get(&p.segment)
            .is_some_and(|s| p.at + u64::from(p.len) <= s.len)
    }

    /// Appends `bytes` as one entry; the caller stores the pointer in sled, or calls
    /// [`Segments::release`] with it if that fails.
    pub fn append(&self, bytes: &[u8]) -> io::Result<Pointer> {
        let mut inner = self.lock();
        let full = inner
            .active
            .and_then(|id| inner.segments.get(&id))
            .is_none_or(|s| s.len >= SEGMENT_BYTES);
        if full {
            self.start_segment(&mut inner)?;
        }
        let id = inner.active.expect("a segment was just started");
        let segment = inner.segments.get_mut(&id).expect("the active segment");
        segment.file.write_all_at(bytes, segment.len)?;
        let pointer = Pointer {
            segment: id,
            at: segment.len,
            len: u32::try_from(bytes.len()).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "a WAL entry over 4 GiB")
            })?,
        };
        segment.len += bytes.len() as u64;
        segment.live += 1;
        segment.live_bytes += bytes.len() as u64;
        inner.unsynced.insert(id);
        Ok(pointer)
    }

    fn start_segment(&self, inner: &mut Inner) -> io::Result<()> {
        let id = inner.next_id;
        let path = self.dir.join(file_name(id));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // The new name must survive a power loss as the bytes in it will.
        File::open(&self.dir)?.sync_all()?;
        inner.next_id += 1;
        if let Some(old) = inner.active.replace(id) {
            if let Some(segment) = inner.segments.get_mut(&old) {
                segment.closed_at = Some(Instant::now());
                if segment.live == 0 {
                    inner.doomed.push(old);
                }
            }
        }
        inner.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                len: 0,
                live: 0,
                live_bytes: 0,
                closed_at: None,
            },
        );
        Ok(())
    }

    /// Reads the bytes `p` points at.
    pub fn read(&self, p: &Pointer) -> io::Result<Vec<u8>> {
        let file = self
            .lock()
            .segments
            .get(&p.segment)
            .map(|s| Arc::clone(&s.file))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("segment file {} is missing", file_name(p.segment)),
                )
            })?;
        let mut bytes = vec![0u8; p.len as usize];
        file.read_exact_at(&mut bytes, p.at)?;
        Ok(bytes)
    }

    /// Notes that sled no longer holds `pointers` (the removal is applied, not yet
    /// durable); segments left without live entries are deleted after the next commit.
    pub fn release(&self, pointers: &[Pointer]) {
        if pointers.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for p in pointers {
            let Some(segment) = inner.segments.get_mut(&p.segment) else {
                continue;
            };
            segment.live = segment.live.saturating_sub(1);
            segment.live_bytes = segment.live_bytes.saturating_sub(u64::from(p.len));
            if segment.live == 0 && inner.active != Some(p.segment) {
                inner.doomed.push(p.segment);
            }
        }
    }

    /// For a commit, before sled's flush: the segments to fsync (written since the last
    /// commit) and those to delete once the flush is done.
    pub fn begin_commit(&self) -> (Vec<Arc<File>>, Vec<u64>) {
        let mut inner = self.lock();
        let unsynced = std::mem::take(&mut inner.unsynced);
        let files = unsynced
            .iter()
            .filter_map(|id| inner.segments.get(id).map(|s| Arc::clone(&s.file)))
            .collect();
        (files, std::mem::take(&mut inner.doomed))
    }

    /// After a commit: deletes `doomed` segments still without live entries.
    pub fn delete(&self, doomed: Vec<u64>) -> io::Result<()> {
        let mut inner = self.lock();
        for id in doomed {
            let dead = inner
                .segments
                .get(&id)
                .is_some_and(|s| s.live == 0 && inner.active != Some(id));
            if dead {
                inner.segments.remove(&id);
                match std::fs::remove_file(self.dir.join(file_name(id))) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The closed segment, closed at least `min_age` ago, whose live entries take the
    /// smallest share of it, if that share is at most half.
    pub fn to_compact(&self, min_age: Duration) -> Option<u64> {
        self.lock()
            .segments
            .iter()
            .filter(|(_, s)| {
                s.live > 0
                    && s.live_bytes * 2 <= s.len
                    && s.closed_at.is_some_and(|at| at.elapsed() >= min_age)
            })
            .min_by_key(|(_, s)| s.live_bytes * 1000 / s.len.max(1))
            .map(|(id, _)| *id)
    }

    /// Bytes of the segment files.
    pub fn size_on_disk(&self) -> u64 {
        self.lock().segments.values().map(|s| s.len).sum()
    }

    /// Number of segment files.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.lock().segments.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_round_trip_and_whole_entries_are_not_pointers() {
        let p = Pointer {
            segment: 7,
            at: 1 << 40,
            len: 12345,
        };
        assert_eq!(Pointer::decode(&p.encode()), Some(p));
        let whole = crate::wal::codec::encode(&crate::record::FetchedBatch {
            records: vec![],
            next_offset: 0,
        });
        assert_eq!(Pointer::decode(&whole), None);
    }

    #[test]
    fn a_released_segment_is_deleted_after_the_commit_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let segments = Segments::open(dir.path(), &BTreeMap::new()).unwrap();
        let first = segments.append(b"one").unwrap();
        // Start a second segment so the first is no longer active.
        segments.lock().segments.get_mut(&0).unwrap().len = SEGMENT_BYTES;
        let second = segments.append(b"two").unwrap();
        assert_eq!((first.segment, second.segment), (0, 1));
        segments.release(&[first]);
        let path = dir.path().join(file_name(0));
        assert!(path.exists(), "kept until the removal is durable");
        let (synced, doomed) = segments.begin_commit();
        assert_eq!(synced.len(), 2);
        segments.delete(doomed).unwrap();
        assert!(!path.exists());
        assert_eq!(segments.read(&second).unwrap(), b"two");
        assert!(segments.read(&first).is_err());
    }

    #[test]
    fn open_deletes_segments_without_live_entries_and_never_appends_to_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, dropped) = {
            let segments = Segments::open(dir.path(), &BTreeMap::new()).unwrap();
            let kept = segments.append(b"kept").unwrap();
            segments.lock().segments.get_mut(&0).unwrap().len = SEGMENT_BYTES;
            let dropped = segments.append(b"never committed").unwrap();
            (kept, dropped)
        };
        let live = BTreeMap::from([(kept.segment, (1, 4))]);
        let segments = Segments::open(dir.path(), &live).unwrap();
        assert_eq!(segments.count(), 1);
        assert!(!segments.holds(&dropped));
        assert!(segments.holds(&kept));
        let next = segments.append(b"new").unwrap();
        assert_eq!(next.segment, 2);
        assert_eq!(segments.read(&kept).unwrap()[..4], *b"kept");
    }
}
